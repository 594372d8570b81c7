//! The K-quant kernels on tiled rows (`crate::kernels::quant::tiles`, whose layout
//! they read) in AVX-512 (BW, VNNI), and in AVX2 a half tile at a time: a register's sixteen
//! 32-bit lanes are a tile's sixteen rows (AVX2: eight), each lane four consecutive values of
//! its row. Four activations are broadcast to every
//! lane, `maddubs` multiplies them with sixteen rows' values at once (unsigned × signed, pairs
//! summed to i16), the i16 pairs of a sub-block are added (no overflow: at most 8·2·15·127
//! for Q4_K, 4·2·31·127 for Q5_K, 2·2·63·127 for Q6_K) and `dpwssd` applies the sixteen rows' scales of the
//! sub-block, pair by pair, into the rows' i32 sums. Once per super-block and token: Q4_K's
//! and Q5_K's minimums (`dpwssd` of the rows' minimums with the token's sums of 16) and the scaling into
//! sixteen f32 lanes, one per row, by the rows' `d` and the token's scale; Q6_K's `−32`
//! joins the integer sums (`dpwssd` of −32 × its scales with the sums of 16). Nothing is
//! summed across lanes: each row ends in its own lane. AVX2 has no `dpwssd`: `madd` then an
//! add in its place, the same integer sums.

use std::arch::x86_64::*;

use super::{Acts, SUMS, SUPER};
use crate::kernels::quant::tiles::{q45_values, tile_bytes, Q5_HIGH, Q6_PAIR, Q6_PAIRS, TILE};
use crate::kernels::quant::{Packed, QKind};

/// A shuffle of sixteen bytes (broadcast to the four 128-bit lanes) that gives 32-bit lane
/// `i` byte `i` zero-extended in both its i16 halves: one row's scale for both of a
/// `maddubs` pair.
const SPREAD: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 16 {
        t[4 * i] = i as u8;
        t[4 * i + 1] = 0x80;
        t[4 * i + 2] = i as u8;
        t[4 * i + 3] = 0x80;
        i += 1;
    }
    t
};

/// Shuffles of i16 pairs `(x, y)` in each 32-bit lane into `(x, x)` and into `(y, y)`.
const FIRST: [u8; 64] = dup_pairs(0);
const SECOND: [u8; 64] = dup_pairs(2);

const fn dup_pairs(at: u8) -> [u8; 64] {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        let base = (i % 16) as u8 & !3;
        t[i] = base + at + (i % 2) as u8;
        i += 1;
    }
    t
}

/// The four bytes at `p` in every 32-bit lane.
///
/// # Safety
///
/// The CPU runs AVX-512 F; four bytes at `p` are readable.
#[inline(always)]
unsafe fn four(p: *const i8) -> __m512i {
    // SAFETY: four bytes at `p`; the CPU runs AVX-512 F (the caller's contract).
    unsafe { _mm512_set1_epi32(p.cast::<i32>().read_unaligned()) }
}

/// Sixteen bytes at `p` spread by [`SPREAD`]: byte `i` in both i16 halves of lane `i`.
///
/// # Safety
///
/// The CPU runs AVX-512 F/BW; sixteen bytes at `p` are readable; `spread` is [`SPREAD`].
#[inline(always)]
unsafe fn spread16(p: *const u8, spread: __m512i) -> __m512i {
    // SAFETY: sixteen bytes at `p`; the CPU runs AVX-512 F/BW (the caller's contract).
    unsafe { _mm512_shuffle_epi8(_mm512_broadcast_i32x4(_mm_loadu_si128(p.cast())), spread) }
}

/// Six-bit values from their low four bits (`low`'s low nibbles) and top two (`top`'s bits
/// 4 and 5): `(low & low4) | (top & top2)`.
///
/// # Safety
///
/// The CPU runs AVX-512 F.
#[inline(always)]
unsafe fn six(low: __m512i, top: __m512i, low4: __m512i, top2: __m512i) -> __m512i {
    // SAFETY: the CPU runs AVX-512 F (the caller's contract).
    unsafe { _mm512_or_si512(_mm512_and_si512(low, low4), _mm512_and_si512(top, top2)) }
}

/// Tiles ahead whose lines the kernels ask for while they read a tile. A decoding step
/// streams the weights from memory once, and on its own the hardware prefetcher falls behind
/// on these tiles: on Zen 5, 8,192 × 2,048 Q4_K rows read from memory ran at 33 GB/s without
/// asking, 58-62 asking one to four tiles ahead (`examples/kquant_speed.rs --memory`).
const AHEAD: usize = 2;

/// Asks for the cache line at `p` (a hint: never faults, whatever the address).
///
/// # Safety
///
/// The CPU runs SSE (every x86-64 does).
#[inline(always)]
unsafe fn prefetch(p: *const u8) {
    // SAFETY: a prefetch reads nothing and never faults; SSE is the x86-64 baseline.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
}

/// Row tiles `r0 / 16..` of `w` (a tiled K-quant) · a group of `N` tokens' activations
/// at `acts`, into `out` (`out.len()` rows), after checking every read of the rows.
///
/// With `WIDE` through the AVX-512 kernels, else through the AVX2 ones (each tile as two
/// halves of eight rows: eight 32-bit lanes).
///
/// # Safety
///
/// The CPU runs AVX2, FMA and F16C (with `WIDE`, AVX-512 F/BW/VNNI too); `acts` holds
/// `w.cols() / 256` super-blocks of `N` tokens ([`crate::kernels::quant::KGroup`]'s layout).
pub(super) unsafe fn rows<const N: usize, const WIDE: bool>(
    w: &Packed,
    r0: usize,
    acts: Acts,
    out: &mut [[f32; N]],
) {
    let kind = w.kind();
    assert!(
        r0.is_multiple_of(TILE) && out.len().is_multiple_of(TILE) && r0 + out.len() <= w.rows(),
        "rows {r0}.. ({}) are not whole tiles of {kind:?} × {}",
        out.len(),
        w.rows()
    );
    let (nt, ns, tb) = (out.len() / TILE, w.cols() / SUPER, tile_bytes(kind));
    let (d, m, qs) = w.tiles(r0 / TILE, nt);
    assert!(d.len() == nt * ns * TILE && qs.len() == nt * ns * tb);
    assert!(m.len() == if kind == QKind::Q6K { 0 } else { d.len() });
    let (d, m, q) = (
        d.as_ptr().cast::<u16>(),
        m.as_ptr().cast::<u16>(),
        qs.as_ptr(),
    );
    for (t, o) in out.chunks_exact_mut(TILE).enumerate() {
        // SAFETY: tile row `t` of the ones checked above: `ns` tiles from `t·ns` (their `d`,
        // Q4_K's `dmin`, `tb` bytes each); the CPU and `acts` as the caller's contract. Q6_K
        // has no `dmin`: `m` (an empty slice's pointer) is only offset, never read.
        unsafe {
            let (d, m, q) = (
                d.add(t * ns * TILE),
                m.wrapping_add(t * ns * TILE),
                q.add(t * ns * tb),
            );
            match (kind, WIDE) {
                (QKind::Q4K, true) => q4k::<N, false>(d, m, q, acts, ns, o),
                (QKind::Q5K, true) => q4k::<N, true>(d, m, q, acts, ns, o),
                (_, true) => q6k::<N>(d, q, acts, ns, o),
                (QKind::Q4K, false) => q4k_halves::<N, false>(d, m, q, acts, ns, o),
                (QKind::Q5K, false) => q4k_halves::<N, true>(d, m, q, acts, ns, o),
                (_, false) => q6k_halves::<N>(d, q, acts, ns, o),
            }
        }
    }
}

/// Rows per half tile: the AVX2 kernels' eight 32-bit lanes.
const HALF: usize = TILE / 2;

/// [`SPREAD`] for AVX2 and half `h` of a tile: in each 128-bit lane `l`, 32-bit lane `i` gets
/// byte `8h + 4l + i` (of sixteen broadcast to both) in both its i16 halves.
const SPREAD_HALF: [[u8; 32]; 2] = {
    let mut t = [[0u8; 32]; 2];
    let mut h = 0;
    while h < 2 {
        let mut i = 0;
        while i < 8 {
            let b = (8 * h + i) as u8;
            t[h][4 * i] = b;
            t[h][4 * i + 1] = 0x80;
            t[h][4 * i + 2] = b;
            t[h][4 * i + 3] = 0x80;
            i += 1;
        }
        h += 1;
    }
    t
};

/// The sixteen rows' f32 lanes of each token into `out` (rows × tokens).
///
/// # Safety
///
/// The CPU runs AVX-512 F; `out` has [`TILE`] rows.
#[inline(always)]
unsafe fn store<const N: usize>(acc: &[__m512; N], out: &mut [[f32; N]]) {
    let mut lanes = [0f32; TILE];
    for (n, a) in acc.iter().enumerate() {
        // SAFETY: sixteen f32 at `lanes`; the CPU runs AVX-512 F (the caller's contract).
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *a) };
        for (o, l) in out.iter_mut().zip(lanes) {
            o[n] = l;
        }
    }
}

/// One row tile of Q4_K (`FIVE` false) or Q5_K · a group of `N` tokens.
///
/// # Safety
///
/// The CPU runs AVX-512 F/BW/VNNI, AVX2, FMA and F16C; `d` and `m` point to `ns · 16` f16
/// values, `q` to `ns` tiles, `acts` to `ns` super-blocks of `N` tokens; `out` has 16 rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn q4k<const N: usize, const FIVE: bool>(
    d: *const u16,
    m: *const u16,
    q: *const u8,
    (aq, ad, asum): Acts,
    ns: usize,
    out: &mut [[f32; N]],
) {
    let kind = if FIVE { QKind::Q5K } else { QKind::Q4K };
    let (tb, qs) = (tile_bytes(kind), q45_values(kind));
    let (low4, bit4) = (_mm512_set1_epi8(0xF), _mm512_set1_epi8(0x10));
    let mut acc = [_mm512_setzero_ps(); N];
    // SAFETY: every read below is within super-block `i` of the tile (`d[16i..]`,
    // `m[16i..]`, `tb` bytes at `q + i·tb`) or of the group (`N` tokens' values, scales, sums
    // from `N·i`), which exist (the caller's contract); the CPU runs AVX-512 F/BW/VNNI and
    // F16C.
    unsafe {
        let spread = _mm512_loadu_si512(SPREAD.as_ptr().cast());
        for i in 0..ns {
            let t = q.add(i * tb);
            for line in 0..4 {
                prefetch(t.wrapping_add(AHEAD * tb + 64 * line));
            }
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(d.add(i * TILE).cast()));
            let dm = _mm512_cvtph_ps(_mm256_loadu_si256(m.add(i * TILE).cast()));
            let mut isum = [_mm512_setzero_si512(); N];
            for s in 0..8 {
                let sc = spread16(t.add(TILE * s), spread);
                let mut part = [_mm512_setzero_si512(); N];
                let qh = if FIVE {
                    prefetch(t.wrapping_add(AHEAD * tb + Q5_HIGH + 64 * s));
                    _mm512_loadu_si512(t.add(Q5_HIGH + 64 * s).cast())
                } else {
                    _mm512_setzero_si512()
                };
                for k in 0..4 {
                    let at = qs + 256 * s + 64 * k;
                    let packed = _mm512_loadu_si512(t.add(at).cast());
                    prefetch(t.wrapping_add(AHEAD * tb + at));
                    let mut lo = _mm512_and_si512(packed, low4);
                    let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(packed), low4);
                    if FIVE {
                        // Bits k and 4 + k of `qh` moved to bit 4 (16-bit shifts: what
                        // crosses into the other byte is masked off).
                        let up = _mm512_sll_epi16(qh, _mm_cvtsi32_si128(4 - k as i32));
                        let down = _mm512_srl_epi16(qh, _mm_cvtsi32_si128(k as i32));
                        lo = _mm512_or_si512(lo, _mm512_and_si512(up, bit4));
                        hi = _mm512_or_si512(hi, _mm512_and_si512(down, bit4));
                    }
                    for (n, p) in part.iter_mut().enumerate() {
                        let a = aq.add((N * i + n) * SUPER + 32 * s + 4 * k);
                        let x = _mm512_maddubs_epi16(lo, four(a));
                        let y = _mm512_maddubs_epi16(hi, four(a.add(16)));
                        *p = _mm512_add_epi16(*p, _mm512_add_epi16(x, y));
                    }
                    // Q5_K's values reach 31: its i16 sums take two steps of k, not four.
                    if k == 3 || (FIVE && k == 1) {
                        for (sum, p) in isum.iter_mut().zip(&mut part) {
                            *sum = _mm512_dpwssd_epi32(*sum, *p, sc);
                            *p = _mm512_setzero_si512();
                        }
                    }
                }
            }
            let mut mn = [_mm512_setzero_si512(); 8];
            for (s, mn) in mn.iter_mut().enumerate() {
                *mn = spread16(t.add(128 + TILE * s), spread);
            }
            for (n, (a, sum)) in acc.iter_mut().zip(isum).enumerate() {
                // Σ_s m_s·(the two sums of 16 of sub-block s).
                let sums = asum.add((N * i + n) * SUMS);
                let mut msum = _mm512_setzero_si512();
                for (s, mn) in mn.iter().enumerate() {
                    let pair = _mm512_set1_epi32(sums.add(2 * s).cast::<i32>().read_unaligned());
                    msum = _mm512_dpwssd_epi32(msum, *mn, pair);
                }
                let da = _mm512_set1_ps(*ad.add(N * i + n));
                *a = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(sum), *a);
                *a = _mm512_fnmadd_ps(_mm512_mul_ps(dm, da), _mm512_cvtepi32_ps(msum), *a);
            }
        }
        store(&acc, out);
    }
}

/// One row tile of Q6_K · a group of `N` tokens.
///
/// # Safety
///
/// The CPU runs AVX-512 F/BW/VNNI, AVX2, FMA and F16C; `d` points to `ns · 16` f16 values,
/// `q` to `ns` tiles, `acts` to `ns` super-blocks of `N` tokens; `out` has 16 rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn q6k<const N: usize>(
    d: *const u16,
    q: *const u8,
    (aq, ad, asum): Acts,
    ns: usize,
    out: &mut [[f32; N]],
) {
    let tb = tile_bytes(QKind::Q6K);
    let (low4, top2) = (_mm512_set1_epi8(0xF), _mm512_set1_epi8(0x30));
    let mut acc = [_mm512_setzero_ps(); N];
    // SAFETY: as [`q4k`]: every read is within super-block `i` of the tile or of the group
    // (the caller's contract); the CPU runs AVX-512 F/BW/VNNI and F16C.
    unsafe {
        let first = _mm512_loadu_si512(FIRST.as_ptr().cast());
        let second = _mm512_loadu_si512(SECOND.as_ptr().cast());
        for i in 0..ns {
            let t = q.add(i * tb);
            for line in 0..4 {
                prefetch(t.wrapping_add(AHEAD * tb + 64 * line));
            }
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(d.add(i * TILE).cast()));
            // Pair p's two scales per row, as i16: (sc[2p], sc[2p + 1]).
            let mut scp = [_mm512_setzero_si512(); 8];
            for (p, scp) in scp.iter_mut().enumerate() {
                *scp = _mm512_cvtepi8_epi16(_mm256_loadu_si256(t.add(32 * p).cast()));
            }
            let mut isum = [_mm512_setzero_si512(); N];
            for (p, scp) in scp.iter().enumerate() {
                let (sa, sb) = (
                    _mm512_shuffle_epi8(*scp, first),
                    _mm512_shuffle_epi8(*scp, second),
                );
                let pair = t.add(Q6_PAIRS + Q6_PAIR * p);
                for line in 0..Q6_PAIR / 64 {
                    prefetch(pair.wrapping_add(AHEAD * tb + 64 * line));
                }
                for h in 0..2 {
                    let hb = _mm512_loadu_si512(pair.add(256 + 64 * h).cast());
                    let q0 = _mm512_loadu_si512(pair.add(128 * h).cast());
                    let q1 = _mm512_loadu_si512(pair.add(128 * h + 64).cast());
                    // 16-bit shifts: what crosses into the other byte is masked off.
                    let a0 = six(q0, _mm512_slli_epi16::<4>(hb), low4, top2);
                    let a1 = six(q1, _mm512_slli_epi16::<2>(hb), low4, top2);
                    let b0 = six(_mm512_srli_epi16::<4>(q0), hb, low4, top2);
                    let b1 = six(
                        _mm512_srli_epi16::<4>(q1),
                        _mm512_srli_epi16::<2>(hb),
                        low4,
                        top2,
                    );
                    for (n, sum) in isum.iter_mut().enumerate() {
                        let a = aq.add((N * i + n) * SUPER + 32 * p + 8 * h);
                        let x = _mm512_add_epi16(
                            _mm512_maddubs_epi16(a0, four(a)),
                            _mm512_maddubs_epi16(a1, four(a.add(4))),
                        );
                        let y = _mm512_add_epi16(
                            _mm512_maddubs_epi16(b0, four(a.add(16))),
                            _mm512_maddubs_epi16(b1, four(a.add(20))),
                        );
                        *sum = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(*sum, x, sa), y, sb);
                    }
                }
            }
            // The −32 of every value: −32·sc per pair of scales, with the sums of 16.
            let mut off = [_mm512_setzero_si512(); 8];
            for (off, scp) in off.iter_mut().zip(scp) {
                *off = _mm512_sub_epi16(_mm512_setzero_si512(), _mm512_slli_epi16::<5>(scp));
            }
            for (n, (a, mut sum)) in acc.iter_mut().zip(isum).enumerate() {
                let sums = asum.add((N * i + n) * SUMS);
                for (p, off) in off.iter().enumerate() {
                    let pair = _mm512_set1_epi32(sums.add(2 * p).cast::<i32>().read_unaligned());
                    sum = _mm512_dpwssd_epi32(sum, *off, pair);
                }
                let da = _mm512_set1_ps(*ad.add(N * i + n));
                *a = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(sum), *a);
            }
        }
        store(&acc, out);
    }
}

/// The four bytes at `p` in every 32-bit lane of 256 bits.
///
/// # Safety
///
/// The CPU runs AVX; four bytes at `p` are readable.
#[inline(always)]
unsafe fn four8(p: *const i8) -> __m256i {
    // SAFETY: four bytes at `p`; the CPU runs AVX (the caller's contract).
    unsafe { _mm256_set1_epi32(p.cast::<i32>().read_unaligned()) }
}

/// Sixteen bytes at `p` spread by `spread` ([`SPREAD_HALF`]): in AVX2's eight 32-bit lanes,
/// one half tile's bytes, each in both i16 halves of its lane.
///
/// # Safety
///
/// The CPU runs AVX2; sixteen bytes at `p` are readable.
#[inline(always)]
unsafe fn spread8(p: *const u8, spread: __m256i) -> __m256i {
    // SAFETY: sixteen bytes at `p`; the CPU runs AVX2 (the caller's contract).
    unsafe {
        _mm256_shuffle_epi8(
            _mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast())),
            spread,
        )
    }
}

/// A row tile of Q4_K (`FIVE` false) or Q5_K · a group of `N` tokens in AVX2, a half tile
/// (eight rows, eight lanes) at a time: [`q4k`] with `madd` and an add where it has `dpwssd`. One token (decoding,
/// the weights streamed from memory) takes both halves of each super-block in turn, so every
/// cache line read is used at once; a group takes one half through every super-block, then
/// the other (the tile's bytes are then in the L2 cache).
///
/// # Safety
///
/// The CPU runs AVX2, FMA and F16C; as [`q4k`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_halves<const N: usize, const FIVE: bool>(
    d: *const u16,
    m: *const u16,
    q: *const u8,
    acts: Acts,
    ns: usize,
    out: &mut [[f32; N]],
) {
    let mut acc = [[_mm256_setzero_ps(); N]; 2];
    // SAFETY: the CPU runs AVX2, FMA and F16C; super-blocks `0..ns` of the tile and of the
    // group exist (the caller's contract).
    unsafe {
        let spread = [0, 1].map(|h| _mm256_loadu_si256(SPREAD_HALF[h].as_ptr().cast()));
        if N == 1 {
            for i in 0..ns {
                for (half, acc) in acc.iter_mut().enumerate() {
                    q4k_super::<N, FIVE>(d, m, q, acts, i, half, spread[half], acc);
                }
            }
        } else {
            for (half, acc) in acc.iter_mut().enumerate() {
                for i in 0..ns {
                    q4k_super::<N, FIVE>(d, m, q, acts, i, half, spread[half], acc);
                }
            }
        }
        let (lo, hi) = out.split_at_mut(HALF);
        store_half(&acc[0], lo);
        store_half(&acc[1], hi);
    }
}

/// Super-block `i` of half `half` of a Q4_K (Q5_K) row tile · a group of `N` tokens, added into the
/// half's eight lanes of each token in `acc`.
///
/// # Safety
///
/// The CPU runs AVX2, FMA and F16C; super-block `i` of the tile and of the group exist (as
/// [`q4k`]); `half` < 2 and `spread` is `SPREAD_HALF[half]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn q4k_super<const N: usize, const FIVE: bool>(
    d: *const u16,
    m: *const u16,
    q: *const u8,
    (aq, ad, asum): Acts,
    i: usize,
    half: usize,
    spread: __m256i,
    acc: &mut [__m256; N],
) {
    let kind = if FIVE { QKind::Q5K } else { QKind::Q4K };
    let (tb, qs) = (tile_bytes(kind), q45_values(kind));
    // SAFETY: every read is within super-block `i` of the tile (`d[16i..]`, `m[16i..]`, `tb`
    // bytes at `q + i·tb`) or of the group (the caller's contract); the CPU runs AVX2, FMA
    // and F16C.
    unsafe {
        let (low4, bit4) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(0x10));
        let t = q.add(i * tb);
        prefetch(t.wrapping_add(AHEAD * tb + 256 * half));
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(d.add(i * TILE + HALF * half).cast()));
        let dm = _mm256_cvtph_ps(_mm_loadu_si128(m.add(i * TILE + HALF * half).cast()));
        let mut isum = [_mm256_setzero_si256(); N];
        for s in 0..8 {
            let sc = spread8(t.add(TILE * s), spread);
            let mut part = [_mm256_setzero_si256(); N];
            let qh = if FIVE {
                let at = Q5_HIGH + 64 * s + 32 * half;
                prefetch(t.wrapping_add(AHEAD * tb + at));
                _mm256_loadu_si256(t.add(at).cast())
            } else {
                _mm256_setzero_si256()
            };
            for k in 0..4 {
                let at = qs + 256 * s + 64 * k + 32 * half;
                prefetch(t.wrapping_add(AHEAD * tb + at));
                let packed = _mm256_loadu_si256(t.add(at).cast());
                let mut lo = _mm256_and_si256(packed, low4);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), low4);
                if FIVE {
                    // As the AVX-512 kernel: bits k and 4 + k of `qh` to bit 4.
                    let up = _mm256_sll_epi16(qh, _mm_cvtsi32_si128(4 - k as i32));
                    let down = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(k as i32));
                    lo = _mm256_or_si256(lo, _mm256_and_si256(up, bit4));
                    hi = _mm256_or_si256(hi, _mm256_and_si256(down, bit4));
                }
                for (n, p) in part.iter_mut().enumerate() {
                    let a = aq.add((N * i + n) * SUPER + 32 * s + 4 * k);
                    let x = _mm256_maddubs_epi16(lo, four8(a));
                    let y = _mm256_maddubs_epi16(hi, four8(a.add(16)));
                    *p = _mm256_add_epi16(*p, _mm256_add_epi16(x, y));
                }
                if k == 3 || (FIVE && k == 1) {
                    for (sum, p) in isum.iter_mut().zip(&mut part) {
                        *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(*p, sc));
                        *p = _mm256_setzero_si256();
                    }
                }
            }
        }
        for (n, (a, sum)) in acc.iter_mut().zip(isum).enumerate() {
            let sums = asum.add((N * i + n) * SUMS);
            let mut msum = _mm256_setzero_si256();
            for s in 0..8 {
                let pair = _mm256_set1_epi32(sums.add(2 * s).cast::<i32>().read_unaligned());
                let mn = spread8(t.add(128 + TILE * s), spread);
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(mn, pair));
            }
            let da = _mm256_set1_ps(*ad.add(N * i + n));
            *a = _mm256_fmadd_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(sum), *a);
            *a = _mm256_fnmadd_ps(_mm256_mul_ps(dm, da), _mm256_cvtepi32_ps(msum), *a);
        }
    }
}

/// A row tile of Q6_K · a group of `N` tokens in AVX2, a half tile at a time, the halves in
/// the order of [`q4k_halves`]: [`q6k`] in eight lanes.
///
/// # Safety
///
/// The CPU runs AVX2, FMA and F16C; as [`q6k`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_halves<const N: usize>(
    d: *const u16,
    q: *const u8,
    acts: Acts,
    ns: usize,
    out: &mut [[f32; N]],
) {
    let mut acc = [[_mm256_setzero_ps(); N]; 2];
    // SAFETY: the CPU runs AVX2, FMA and F16C; super-blocks `0..ns` of the tile and of the
    // group exist (the caller's contract).
    unsafe {
        if N == 1 {
            for i in 0..ns {
                for (half, acc) in acc.iter_mut().enumerate() {
                    q6k_super::<N>(d, q, acts, i, half, acc);
                }
            }
        } else {
            for (half, acc) in acc.iter_mut().enumerate() {
                for i in 0..ns {
                    q6k_super::<N>(d, q, acts, i, half, acc);
                }
            }
        }
        let (lo, hi) = out.split_at_mut(HALF);
        store_half(&acc[0], lo);
        store_half(&acc[1], hi);
    }
}

/// Super-block `i` of half `half` of a Q6_K row tile · a group of `N` tokens, added into the
/// half's eight lanes of each token in `acc`.
///
/// # Safety
///
/// The CPU runs AVX2, FMA and F16C; super-block `i` of the tile and of the group exist (as
/// [`q6k`]); `half` < 2.
#[inline(always)]
unsafe fn q6k_super<const N: usize>(
    d: *const u16,
    q: *const u8,
    (aq, ad, asum): Acts,
    i: usize,
    half: usize,
    acc: &mut [__m256; N],
) {
    let tb = tile_bytes(QKind::Q6K);
    // SAFETY: as [`q4k_super`]: every read is within super-block `i` of the tile or of the
    // group (the caller's contract); the CPU runs AVX2, FMA and F16C.
    unsafe {
        let (low4, top2) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(0x30));
        let first = _mm256_loadu_si256(FIRST.as_ptr().cast());
        let second = _mm256_loadu_si256(SECOND.as_ptr().cast());
        let six8 = |low: __m256i, top: __m256i| {
            _mm256_or_si256(_mm256_and_si256(low, low4), _mm256_and_si256(top, top2))
        };
        let t = q.add(i * tb);
        prefetch(t.wrapping_add(AHEAD * tb + 128 * half));
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(d.add(i * TILE + HALF * half).cast()));
        // This half's rows' two scales of pair p, as i16: (sc[2p], sc[2p + 1]).
        let scp =
            |p: usize| _mm256_cvtepi8_epi16(_mm_loadu_si128(t.add(32 * p + 16 * half).cast()));
        let mut isum = [_mm256_setzero_si256(); N];
        for p in 0..8 {
            let (sa, sb) = (
                _mm256_shuffle_epi8(scp(p), first),
                _mm256_shuffle_epi8(scp(p), second),
            );
            let pair = t.add(Q6_PAIRS + Q6_PAIR * p);
            for line in 0..Q6_PAIR / 128 {
                prefetch(pair.wrapping_add(AHEAD * tb + 64 * (2 * line + half)));
            }
            for hh in 0..2 {
                let hb = _mm256_loadu_si256(pair.add(256 + 64 * hh + 32 * half).cast());
                let q0 = _mm256_loadu_si256(pair.add(128 * hh + 32 * half).cast());
                let q1 = _mm256_loadu_si256(pair.add(128 * hh + 64 + 32 * half).cast());
                // 16-bit shifts: what crosses into the other byte is masked off.
                let a0 = six8(q0, _mm256_slli_epi16::<4>(hb));
                let a1 = six8(q1, _mm256_slli_epi16::<2>(hb));
                let b0 = six8(_mm256_srli_epi16::<4>(q0), hb);
                let b1 = six8(_mm256_srli_epi16::<4>(q1), _mm256_srli_epi16::<2>(hb));
                for (n, sum) in isum.iter_mut().enumerate() {
                    let a = aq.add((N * i + n) * SUPER + 32 * p + 8 * hh);
                    let x = _mm256_add_epi16(
                        _mm256_maddubs_epi16(a0, four8(a)),
                        _mm256_maddubs_epi16(a1, four8(a.add(4))),
                    );
                    let y = _mm256_add_epi16(
                        _mm256_maddubs_epi16(b0, four8(a.add(16))),
                        _mm256_maddubs_epi16(b1, four8(a.add(20))),
                    );
                    let xy = _mm256_add_epi32(_mm256_madd_epi16(x, sa), _mm256_madd_epi16(y, sb));
                    *sum = _mm256_add_epi32(*sum, xy);
                }
            }
        }
        for (n, (a, mut sum)) in acc.iter_mut().zip(isum).enumerate() {
            let sums = asum.add((N * i + n) * SUMS);
            for p in 0..8 {
                // The −32 of every value: −32·sc with the sums of 16.
                let off = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16::<5>(scp(p)));
                let pair = _mm256_set1_epi32(sums.add(2 * p).cast::<i32>().read_unaligned());
                sum = _mm256_add_epi32(sum, _mm256_madd_epi16(off, pair));
            }
            let da = _mm256_set1_ps(*ad.add(N * i + n));
            *a = _mm256_fmadd_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(sum), *a);
        }
    }
}

/// Eight rows' f32 lanes of each token into `out` (rows × tokens).
///
/// # Safety
///
/// The CPU runs AVX; `out` has eight rows.
#[inline(always)]
unsafe fn store_half<const N: usize>(acc: &[__m256; N], out: &mut [[f32; N]]) {
    let mut lanes = [0f32; HALF];
    for (n, a) in acc.iter().enumerate() {
        // SAFETY: eight f32 at `lanes`; the CPU runs AVX (the caller's contract).
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *a) };
        for (o, l) in out.iter_mut().zip(lanes) {
            o[n] = l;
        }
    }
}
