//! The K-quant kernels on tiled rows (`crate::kernels::quant::tiles`, whose layout they
//! read), one body for two register widths ([`Width`]): AVX-512 (BW, VNNI), where a
//! register's sixteen 32-bit lanes are a tile's sixteen rows, and AVX2, eight lanes, a group of
//! eight rows (half a tile) at a time. Each lane holds four consecutive values of its row.
//! Four activations are broadcast to every lane, `maddubs` multiplies them with a register's
//! rows at once (unsigned × signed, pairs summed to i16), the i16 pairs of a sub-block are
//! added (no overflow: at most 8·2·15·127 for Q4_K, 4·2·31·127 for Q5_K, 2·2·63·127 for Q6_K)
//! and `dpwssd` (AVX2: `madd` then an add, the same sums) applies the rows' scales of the
//! sub-block, pair by pair, into the rows' i32 sums. Once per super-block and token: the
//! Q4_K/Q5_K minimums (`dpwssd` of the rows' minimums with the token's sums of 16) and the
//! scaling into f32 lanes, one per row, by the rows' `d` and the token's scale; Q6_K's `−32`
//! joins the integer sums (`dpwssd` of −32 × its scales with the sums of 16). Nothing is
//! summed across lanes: each row ends in its own lane.

use std::arch::x86_64::*;

use super::{Acts, SUMS, SUPER};
use crate::kernels::quant::tiles::{q45_values, tile_bytes, Q5_HIGH, Q6_PAIR, Q6_PAIRS, TILE};
use crate::kernels::quant::{Packed, QKind};

/// For row group `g` of a width's rows (`8g..` for AVX2's eight; AVX-512's one group of
/// sixteen is group 0): a shuffle of sixteen bytes (broadcast to every 128-bit lane) that
/// gives 32-bit lane `j` byte `8g + j` zero-extended in both its i16 halves, one row's scale
/// for both of a `maddubs` pair. A width reads the first `4 · ROWS` bytes.
const SPREAD: [[u8; 64]; 2] = {
    let mut t = [[0u8; 64]; 2];
    let mut g = 0;
    while g < 2 {
        let mut j = 0;
        while j < 16 {
            let b = (8 * g + j) as u8;
            t[g][4 * j] = b;
            t[g][4 * j + 1] = 0x80;
            t[g][4 * j + 2] = b;
            t[g][4 * j + 3] = 0x80;
            j += 1;
        }
        g += 1;
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

/// A register width of the tiled kernels: its integer and f32 registers and the operations
/// the kernels use, each one instruction (or two) of the width.
///
/// # Safety
///
/// Every method is `unsafe`: the CPU runs the width's features ([`Wide`]: AVX-512 F/BW/VNNI;
/// [`Narrow`]: AVX2; both FMA and F16C), and a method that reads memory reads the bytes its
/// documentation names.
trait Width {
    /// Rows per register: its 32-bit lanes.
    const ROWS: usize;
    /// An integer register.
    type I: Copy;
    /// An f32 register.
    type F: Copy;
    /// All zero bits.
    unsafe fn zero() -> Self::I;
    /// `x` in every byte.
    unsafe fn bytes(x: i8) -> Self::I;
    /// `4 · ROWS` bytes at `p`.
    unsafe fn load(p: *const u8) -> Self::I;
    /// The four bytes at `p` in every 32-bit lane.
    unsafe fn four(p: *const i8) -> Self::I;
    /// Sixteen bytes at `p` (broadcast to every 128-bit lane) shuffled by `pattern`.
    unsafe fn spread(p: *const u8, pattern: Self::I) -> Self::I;
    /// `2 · ROWS` i8 at `p` widened to i16.
    unsafe fn widen(p: *const u8) -> Self::I;
    unsafe fn and(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn or(a: Self::I, b: Self::I) -> Self::I;
    /// Each 16-bit lane shifted left by `n`.
    unsafe fn shl(a: Self::I, n: i32) -> Self::I;
    /// Each 16-bit lane shifted right (logically) by `n`.
    unsafe fn shr(a: Self::I, n: i32) -> Self::I;
    /// Bytes shuffled within 128-bit lanes.
    unsafe fn shuffle(a: Self::I, pattern: Self::I) -> Self::I;
    unsafe fn add16(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn sub16(a: Self::I, b: Self::I) -> Self::I;
    /// Unsigned bytes `w` × signed bytes `a`, adjacent products summed to i16.
    unsafe fn maddubs(w: Self::I, a: Self::I) -> Self::I;
    /// `acc + Σ pairs of i16 (p · sc)` into i32 lanes.
    unsafe fn dot(acc: Self::I, p: Self::I, sc: Self::I) -> Self::I;
    /// `ROWS` f16 at `p` as f32.
    unsafe fn halves(p: *const u16) -> Self::F;
    unsafe fn splat(x: f32) -> Self::F;
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    /// `c + a · b`.
    unsafe fn fma(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// `c − a · b`.
    unsafe fn fnma(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    unsafe fn float(a: Self::I) -> Self::F;
    unsafe fn zero_f() -> Self::F;
    /// The `ROWS` lanes of `a` to `p`.
    unsafe fn store(a: Self::F, p: *mut f32);
}

/// AVX-512 F/BW/VNNI: sixteen rows a register.
struct Wide;

/// AVX2: eight rows a register.
struct Narrow;

/// One [`Width`] method: its signature and its body, the body run in an `unsafe` block under
/// the trait's contract.
macro_rules! width_fn {
    ($name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        #[inline(always)]
        unsafe fn $name($($arg: $ty),*) {
            // SAFETY: the CPU runs this width's features and the writes are the ones the
            // method's documentation names ([`Width`]'s contract).
            unsafe { $body }
        }
    };
    ($name:ident($($arg:ident: $ty:ty),*) -> $out:ty $body:block) => {
        #[inline(always)]
        unsafe fn $name($($arg: $ty),*) -> $out {
            // SAFETY: the CPU runs this width's features and the reads are the ones the
            // method's documentation names ([`Width`]'s contract).
            unsafe { $body }
        }
    };
}

impl Width for Wide {
    const ROWS: usize = 16;
    type I = __m512i;
    type F = __m512;
    width_fn!(zero() -> __m512i { _mm512_setzero_si512() });
    width_fn!(bytes(x: i8) -> __m512i { _mm512_set1_epi8(x) });
    width_fn!(load(p: *const u8) -> __m512i { _mm512_loadu_si512(p.cast()) });
    width_fn!(four(p: *const i8) -> __m512i {
        _mm512_set1_epi32(p.cast::<i32>().read_unaligned())
    });
    width_fn!(spread(p: *const u8, pattern: __m512i) -> __m512i {
        _mm512_shuffle_epi8(_mm512_broadcast_i32x4(_mm_loadu_si128(p.cast())), pattern)
    });
    width_fn!(widen(p: *const u8) -> __m512i {
        _mm512_cvtepi8_epi16(_mm256_loadu_si256(p.cast()))
    });
    width_fn!(and(a: __m512i, b: __m512i) -> __m512i { _mm512_and_si512(a, b) });
    width_fn!(or(a: __m512i, b: __m512i) -> __m512i { _mm512_or_si512(a, b) });
    width_fn!(shl(a: __m512i, n: i32) -> __m512i { _mm512_sll_epi16(a, _mm_cvtsi32_si128(n)) });
    width_fn!(shr(a: __m512i, n: i32) -> __m512i { _mm512_srl_epi16(a, _mm_cvtsi32_si128(n)) });
    width_fn!(shuffle(a: __m512i, pattern: __m512i) -> __m512i {
        _mm512_shuffle_epi8(a, pattern)
    });
    width_fn!(add16(a: __m512i, b: __m512i) -> __m512i { _mm512_add_epi16(a, b) });
    width_fn!(sub16(a: __m512i, b: __m512i) -> __m512i { _mm512_sub_epi16(a, b) });
    width_fn!(maddubs(w: __m512i, a: __m512i) -> __m512i { _mm512_maddubs_epi16(w, a) });
    width_fn!(dot(acc: __m512i, p: __m512i, sc: __m512i) -> __m512i {
        _mm512_dpwssd_epi32(acc, p, sc)
    });
    width_fn!(halves(p: *const u16) -> __m512 { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) });
    width_fn!(splat(x: f32) -> __m512 { _mm512_set1_ps(x) });
    width_fn!(mul(a: __m512, b: __m512) -> __m512 { _mm512_mul_ps(a, b) });
    width_fn!(fma(a: __m512, b: __m512, c: __m512) -> __m512 { _mm512_fmadd_ps(a, b, c) });
    width_fn!(fnma(a: __m512, b: __m512, c: __m512) -> __m512 { _mm512_fnmadd_ps(a, b, c) });
    width_fn!(float(a: __m512i) -> __m512 { _mm512_cvtepi32_ps(a) });
    width_fn!(zero_f() -> __m512 { _mm512_setzero_ps() });
    width_fn!(store(a: __m512, p: *mut f32) { _mm512_storeu_ps(p, a) });
}

impl Width for Narrow {
    const ROWS: usize = 8;
    type I = __m256i;
    type F = __m256;
    width_fn!(zero() -> __m256i { _mm256_setzero_si256() });
    width_fn!(bytes(x: i8) -> __m256i { _mm256_set1_epi8(x) });
    width_fn!(load(p: *const u8) -> __m256i { _mm256_loadu_si256(p.cast()) });
    width_fn!(four(p: *const i8) -> __m256i {
        _mm256_set1_epi32(p.cast::<i32>().read_unaligned())
    });
    width_fn!(spread(p: *const u8, pattern: __m256i) -> __m256i {
        _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast())), pattern)
    });
    width_fn!(widen(p: *const u8) -> __m256i {
        _mm256_cvtepi8_epi16(_mm_loadu_si128(p.cast()))
    });
    width_fn!(and(a: __m256i, b: __m256i) -> __m256i { _mm256_and_si256(a, b) });
    width_fn!(or(a: __m256i, b: __m256i) -> __m256i { _mm256_or_si256(a, b) });
    width_fn!(shl(a: __m256i, n: i32) -> __m256i { _mm256_sll_epi16(a, _mm_cvtsi32_si128(n)) });
    width_fn!(shr(a: __m256i, n: i32) -> __m256i { _mm256_srl_epi16(a, _mm_cvtsi32_si128(n)) });
    width_fn!(shuffle(a: __m256i, pattern: __m256i) -> __m256i {
        _mm256_shuffle_epi8(a, pattern)
    });
    width_fn!(add16(a: __m256i, b: __m256i) -> __m256i { _mm256_add_epi16(a, b) });
    width_fn!(sub16(a: __m256i, b: __m256i) -> __m256i { _mm256_sub_epi16(a, b) });
    width_fn!(maddubs(w: __m256i, a: __m256i) -> __m256i { _mm256_maddubs_epi16(w, a) });
    width_fn!(dot(acc: __m256i, p: __m256i, sc: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, sc))
    });
    width_fn!(halves(p: *const u16) -> __m256 { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) });
    width_fn!(splat(x: f32) -> __m256 { _mm256_set1_ps(x) });
    width_fn!(mul(a: __m256, b: __m256) -> __m256 { _mm256_mul_ps(a, b) });
    width_fn!(fma(a: __m256, b: __m256, c: __m256) -> __m256 { _mm256_fmadd_ps(a, b, c) });
    width_fn!(fnma(a: __m256, b: __m256, c: __m256) -> __m256 { _mm256_fnmadd_ps(a, b, c) });
    width_fn!(float(a: __m256i) -> __m256 { _mm256_cvtepi32_ps(a) });
    width_fn!(zero_f() -> __m256 { _mm256_setzero_ps() });
    width_fn!(store(a: __m256, p: *mut f32) { _mm256_storeu_ps(p, a) });
}

/// Row tiles `r0 / 16..` of `w` (a tiled K-quant) · a group of `N` tokens' activations
/// at `acts`, into `out` (`out.len()` rows), after checking every read of the rows; with
/// `WIDE` through the AVX-512 kernels, else through the AVX2 ones.
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
        // Q4_K's and Q5_K's `dmin`, `tb` bytes each); the CPU and `acts` as the caller's
        // contract. Q6_K has no `dmin`: `m` (an empty slice's pointer) is only offset, never
        // read.
        unsafe {
            let tile = Tile {
                d: d.add(t * ns * TILE),
                m: m.wrapping_add(t * ns * TILE),
                q: q.add(t * ns * tb),
                ns,
            };
            match (kind, WIDE) {
                (QKind::Q4K, true) => wide::<N, 4>(tile, acts, o),
                (QKind::Q5K, true) => wide::<N, 5>(tile, acts, o),
                (_, true) => wide::<N, 6>(tile, acts, o),
                (QKind::Q4K, false) => narrow::<N, 4>(tile, acts, o),
                (QKind::Q5K, false) => narrow::<N, 5>(tile, acts, o),
                (_, false) => narrow::<N, 6>(tile, acts, o),
            }
        }
    }
}

/// One row tile's `ns` super-blocks: their sixteen `d` each, `dmin` (Q4_K, Q5_K) and bytes.
#[derive(Clone, Copy)]
struct Tile {
    d: *const u16,
    m: *const u16,
    q: *const u8,
    ns: usize,
}

/// A row tile (`BITS`: 4 Q4_K, 5 Q5_K, 6 Q6_K) · a group of `N` tokens in AVX-512.
///
/// # Safety
///
/// The CPU runs AVX-512 F/BW/VNNI, AVX2, FMA and F16C; the tile's `d` (and `dmin`) hold
/// `16 · ns` f16, its `q` `ns` tiles of the kind, `acts` `ns` super-blocks of `N` tokens; `out`
/// has 16 rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn wide<const N: usize, const BITS: u8>(tile: Tile, acts: Acts, out: &mut [[f32; N]]) {
    // SAFETY: the caller's contract, passed on; AVX-512 is [`Wide`]'s width.
    unsafe { groups::<Wide, N, BITS>(tile, acts, out) }
}

/// [`wide`] in AVX2: each tile as two groups of eight rows.
///
/// # Safety
///
/// As [`wide`], but the CPU need only run AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn narrow<const N: usize, const BITS: u8>(tile: Tile, acts: Acts, out: &mut [[f32; N]]) {
    // SAFETY: the caller's contract, passed on; AVX2 is [`Narrow`]'s width.
    unsafe { groups::<Narrow, N, BITS>(tile, acts, out) }
}

/// A row tile · a group of `N` tokens, a group of `W::ROWS` rows at a time. One token
/// (decoding, the weights streamed from memory) takes each super-block's groups in turn, so
/// every cache line read is used at once; a group of tokens takes one row group through every
/// super-block, then the next (the tile's bytes are then in the L2 cache).
///
/// # Safety
///
/// As [`wide`], the CPU running `W`'s width.
#[inline(always)]
unsafe fn groups<W: Width, const N: usize, const BITS: u8>(
    tile: Tile,
    acts: Acts,
    out: &mut [[f32; N]],
) {
    // SAFETY: the CPU runs `W`'s width; every super-block and row group exists (the
    // caller's contract).
    unsafe {
        let mut acc = [[W::zero_f(); N]; 2];
        let spread = [W::load(SPREAD[0].as_ptr()), W::load(SPREAD[1].as_ptr())];
        let rgroups = TILE / W::ROWS;
        if N == 1 {
            for i in 0..tile.ns {
                for (g, acc) in acc.iter_mut().enumerate().take(rgroups) {
                    super_block::<W, N, BITS>(tile, acts, i, g, spread[g], acc);
                }
            }
        } else {
            for (g, acc) in acc.iter_mut().enumerate().take(rgroups) {
                for i in 0..tile.ns {
                    super_block::<W, N, BITS>(tile, acts, i, g, spread[g], acc);
                }
            }
        }
        for (g, acc) in acc.iter().enumerate().take(rgroups) {
            let mut lanes = [0f32; TILE];
            for (n, a) in acc.iter().enumerate() {
                W::store(*a, lanes.as_mut_ptr());
                for (o, l) in out[g * W::ROWS..(g + 1) * W::ROWS].iter_mut().zip(lanes) {
                    o[n] = l;
                }
            }
        }
    }
}

/// Super-block `i` of row group `g` of a row tile of `BITS` ([`wide`]'s) · a group of `N`
/// tokens: [`q45`] or [`q6`].
///
/// # Safety
///
/// As [`q45`].
#[inline(always)]
unsafe fn super_block<W: Width, const N: usize, const BITS: u8>(
    tile: Tile,
    acts: Acts,
    i: usize,
    g: usize,
    spread: W::I,
    acc: &mut [W::F; N],
) {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        if BITS == 6 {
            q6::<W, N>(tile, acts, i, g, acc)
        } else {
            q45::<W, N, BITS>(tile, acts, i, g, spread, acc)
        }
    }
}

/// Super-block `i` of row group `g` of a Q4_K (`BITS` 4) or Q5_K row tile · a group of `N`
/// tokens, added into the group's lanes of each token in `acc`.
///
/// # Safety
///
/// The CPU runs `W`'s width; super-block `i` of the tile and of the group exist (as [`wide`]);
/// `g` < 16 / `W::ROWS`, `spread` is `SPREAD[g]`'s first `4 · W::ROWS` bytes.
#[inline(always)]
unsafe fn q45<W: Width, const N: usize, const BITS: u8>(
    tile: Tile,
    (aq, ad, asum): Acts,
    i: usize,
    g: usize,
    spread: W::I,
    acc: &mut [W::F; N],
) {
    let five = BITS == 5;
    let kind = if five { QKind::Q5K } else { QKind::Q4K };
    let (tb, qs, lane) = (tile_bytes(kind), q45_values(kind), 4 * W::ROWS * g);
    // SAFETY: every read is within super-block `i` of the tile (`d[16i..]`, `m[16i..]`, `tb`
    // bytes at `q + i·tb`) or of the group (`N` tokens' values, scales, sums from `N·i`),
    // which exist (the caller's contract); the CPU runs `W`'s width.
    unsafe {
        let (low4, bit4) = (W::bytes(0xF), W::bytes(0x10));
        let t = tile.q.add(i * tb);
        if g == 0 {
            // The scales and minimums (the rest as they are read).
            for line in 0..4 {
                prefetch(t.wrapping_add(AHEAD * tb + 64 * line));
            }
        }
        let rows = i * TILE + W::ROWS * g;
        let (dw, dm) = (W::halves(tile.d.add(rows)), W::halves(tile.m.add(rows)));
        let mut isum = [W::zero(); N];
        for s in 0..8 {
            let sc = W::spread(t.add(TILE * s), spread);
            let mut part = [W::zero(); N];
            let qh = if five {
                let at = Q5_HIGH + 64 * s + lane;
                prefetch(t.wrapping_add(AHEAD * tb + at));
                W::load(t.add(at))
            } else {
                W::zero()
            };
            for k in 0..4 {
                let at = qs + 256 * s + 64 * k + lane;
                prefetch(t.wrapping_add(AHEAD * tb + at));
                let packed = W::load(t.add(at));
                let mut lo = W::and(packed, low4);
                let mut hi = W::and(W::shr(packed, 4), low4);
                if five {
                    // Bits k and 4 + k of `qh` moved to bit 4 (16-bit shifts: what crosses
                    // into the other byte is masked off).
                    lo = W::or(lo, W::and(W::shl(qh, 4 - k as i32), bit4));
                    hi = W::or(hi, W::and(W::shr(qh, k as i32), bit4));
                }
                for (n, p) in part.iter_mut().enumerate() {
                    let a = aq.add((N * i + n) * SUPER + 32 * s + 4 * k);
                    let x = W::maddubs(lo, W::four(a));
                    let y = W::maddubs(hi, W::four(a.add(16)));
                    *p = W::add16(*p, W::add16(x, y));
                }
                // Q5_K's values reach 31: its i16 sums take two steps of k, not four.
                if k == 3 || (five && k == 1) {
                    for (sum, p) in isum.iter_mut().zip(&mut part) {
                        *sum = W::dot(*sum, *p, sc);
                        *p = W::zero();
                    }
                }
            }
        }
        let mut mn = [W::zero(); 8];
        for (s, mn) in mn.iter_mut().enumerate() {
            *mn = W::spread(t.add(128 + TILE * s), spread);
        }
        for (n, (a, sum)) in acc.iter_mut().zip(isum).enumerate() {
            // Σ_s m_s·(the two sums of 16 of sub-block s).
            let sums = asum.add((N * i + n) * SUMS);
            let mut msum = W::zero();
            for (s, mn) in mn.iter().enumerate() {
                msum = W::dot(msum, *mn, W::four(sums.add(2 * s).cast()));
            }
            let da = W::splat(*ad.add(N * i + n));
            *a = W::fma(W::mul(dw, da), W::float(sum), *a);
            *a = W::fnma(W::mul(dm, da), W::float(msum), *a);
        }
    }
}

/// Super-block `i` of row group `g` of a Q6_K row tile · a group of `N` tokens, added into
/// the group's lanes of each token in `acc`.
///
/// # Safety
///
/// As [`q45`].
#[inline(always)]
unsafe fn q6<W: Width, const N: usize>(
    tile: Tile,
    (aq, ad, asum): Acts,
    i: usize,
    g: usize,
    acc: &mut [W::F; N],
) {
    let (tb, lane) = (tile_bytes(QKind::Q6K), 4 * W::ROWS * g);
    // SAFETY: as [`q45`]: every read is within super-block `i` of the tile or of the group
    // (the caller's contract); the CPU runs `W`'s width.
    unsafe {
        let (low4, top2) = (W::bytes(0xF), W::bytes(0x30));
        let (first, second) = (W::load(FIRST.as_ptr()), W::load(SECOND.as_ptr()));
        // Six-bit values: the low four bits from `low`'s low nibbles, the top two from
        // `top`'s bits 4 and 5.
        let six = |low: W::I, top: W::I| W::or(W::and(low, low4), W::and(top, top2));
        let t = tile.q.add(i * tb);
        if g == 0 {
            // The scales, then each pair's lines as it is read.
            for line in 0..4 {
                prefetch(t.wrapping_add(AHEAD * tb + 64 * line));
            }
        }
        let dw = W::halves(tile.d.add(i * TILE + W::ROWS * g));
        // The group's rows' two scales of pair p, as i16: (sc[2p], sc[2p + 1]).
        let mut scp = [W::zero(); 8];
        for (p, scp) in scp.iter_mut().enumerate() {
            *scp = W::widen(t.add(32 * p + 2 * W::ROWS * g));
        }
        let mut isum = [W::zero(); N];
        for (p, scp) in scp.iter().enumerate() {
            let (sa, sb) = (W::shuffle(*scp, first), W::shuffle(*scp, second));
            let pair = t.add(Q6_PAIRS + Q6_PAIR * p);
            if g == 0 {
                for line in 0..Q6_PAIR / 64 {
                    prefetch(pair.wrapping_add(AHEAD * tb + 64 * line));
                }
            }
            for h in 0..2 {
                let hb = W::load(pair.add(256 + 64 * h + lane));
                let q0 = W::load(pair.add(128 * h + lane));
                let q1 = W::load(pair.add(128 * h + 64 + lane));
                // 16-bit shifts: what crosses into the other byte is masked off.
                let a0 = six(q0, W::shl(hb, 4));
                let a1 = six(q1, W::shl(hb, 2));
                let b0 = six(W::shr(q0, 4), hb);
                let b1 = six(W::shr(q1, 4), W::shr(hb, 2));
                for (n, sum) in isum.iter_mut().enumerate() {
                    let a = aq.add((N * i + n) * SUPER + 32 * p + 8 * h);
                    let x = W::add16(
                        W::maddubs(a0, W::four(a)),
                        W::maddubs(a1, W::four(a.add(4))),
                    );
                    let y = W::add16(
                        W::maddubs(b0, W::four(a.add(16))),
                        W::maddubs(b1, W::four(a.add(20))),
                    );
                    *sum = W::dot(W::dot(*sum, x, sa), y, sb);
                }
            }
        }
        // The −32 of every value: −32·sc per pair of scales, with the sums of 16.
        let mut off = [W::zero(); 8];
        for (off, scp) in off.iter_mut().zip(scp) {
            *off = W::sub16(W::zero(), W::shl(scp, 5));
        }
        for (n, (a, mut sum)) in acc.iter_mut().zip(isum).enumerate() {
            let sums = asum.add((N * i + n) * SUMS);
            for (p, off) in off.iter().enumerate() {
                sum = W::dot(sum, *off, W::four(sums.add(2 * p).cast()));
            }
            let da = W::splat(*ad.add(N * i + n));
            *a = W::fma(W::mul(dw, da), W::float(sum), *a);
        }
    }
}
