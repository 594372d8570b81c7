//! The K-quants' (Q4_K, Q5_K, Q6_K) row kernels in AVX2: weight rows against one row of
//! activations in the K-quants' form (llama.cpp's Q8_K: decoding) or a group of eight
//! interleaved by super-block (`KGroup`: a prompt, each super-block unpacked once for the
//! eight, read from one base at fixed offsets). `crate::kernels::quant::kquant::dot_plain`
//! is their plain twin and describes the repacked layout read here.
//!
//! Within a super-block everything is integer: per 32 values the weights unpacked to 32
//! unsigned bytes in the activations' order, multiplied with them by `maddubs` (unsigned ×
//! signed) into i16 pairs, summed to i32 by `madd` with the sub-block's scale (Q6_K: its two
//! 16-value scales), added into i32 lanes. Once per super-block: the Q4_K/Q5_K minimums
//! (`Σ m·sum of 32 activations`) or the Q6_K offset (`32·Σ sc·sum of 16`) from the
//! activations' sums of 16, one conversion and one multiply-add by `d·da` into f32 lanes.

use std::arch::x86_64::*;

use half::f16;

use super::avx2::hsum;
use super::{Avx2, Vnni};
use crate::kernels::quant::kquant::{packed_bytes, SCALES, SUPER};
use crate::kernels::quant::{KGroup, Packed, QActs, QKind, BLOCK, KGROUP};

mod tiled;
mod wide;

/// 32-value sub-blocks per super-block.
const SUBS: usize = SUPER / BLOCK;

/// Sums of 16 activations per super-block.
const SUMS: usize = SUPER / 16;

/// Rows `r0..r0 + out.len()` of `w` (a K-quant) · the activations `a`: a decoding step's
/// share of a projection, in one call. Panics unless `w` is a K-quant, the rows exist and
/// `a` holds `w.cols()` activations in the K-quants' form.
pub fn dot_rows(_cpu: Avx2, w: &Packed, r0: usize, a: &QActs, out: &mut [f32]) {
    let acts = one_token(w, a);
    // SAFETY: the token proves AVX2, FMA and F16C; `one_token` checked `a`'s reads, `rows`
    // checks the rows'.
    unsafe { rows::<1, false>(w, r0, acts, out.as_chunks_mut::<1>().0) };
}

/// [`dot_rows`] on a CPU with AVX-512 VNNI (which runs AVX2, FMA and F16C: the [`Vnni`]
/// token is made only from an [`Avx2`] one), through the AVX-512 kernels ([`wide`]).
pub fn dot_rows_vnni(_cpu: Vnni, w: &Packed, r0: usize, a: &QActs, out: &mut [f32]) {
    let acts = one_token(w, a);
    // SAFETY: the token proves AVX-512 F/BW/DQ/VNNI, AVX2, FMA and F16C; `one_token` checked
    // `a`'s reads, `rows` checks the rows'.
    unsafe { rows::<1, true>(w, r0, acts, out.as_chunks_mut::<1>().0) };
}

/// Rows `r0..r0 + out.len()` of `w` (a K-quant) · each of the group's tokens, each
/// super-block unpacked once for the group: a prompt's product. Panics unless `w` is a
/// K-quant, the rows exist and `g` holds `w.cols()` activations a token.
pub fn tile(_cpu: Avx2, w: &Packed, r0: usize, g: &KGroup, out: &mut [[f32; KGROUP]]) {
    let acts = group(w, g);
    // SAFETY: the token proves AVX2, FMA and F16C; `group` checked the group's reads, `rows`
    // checks the rows'.
    unsafe { rows::<KGROUP, false>(w, r0, acts, out) };
}

/// [`tile`] on a CPU with AVX-512 VNNI, through the AVX-512 kernels ([`wide`]).
pub fn tile_vnni(_cpu: Vnni, w: &Packed, r0: usize, g: &KGroup, out: &mut [[f32; KGROUP]]) {
    let acts = group(w, g);
    // SAFETY: the token proves AVX-512 F/BW/DQ/VNNI, AVX2, FMA and F16C; `group` checked the
    // group's reads, `rows` checks the rows'.
    unsafe { rows::<KGROUP, true>(w, r0, acts, out) };
}

/// Rows `r0..r0 + out.len()` of `w` (a tiled K-quant, whole tiles) · the activations
/// `a`: [`dot_rows`] on the tiled layout. Panics unless `w` is tiled, the rows are whole
/// tiles that exist and `a` holds `w.cols()` activations in the K-quants' form.
pub fn tiled_rows(_cpu: Avx2, w: &Packed, r0: usize, a: &QActs, out: &mut [f32]) {
    let acts = one_token(w, a);
    // SAFETY: the token proves AVX2, FMA and F16C; `one_token` checked `a`'s reads,
    // `tiled::rows` checks the rows'.
    unsafe { tiled::rows::<1, false>(w, r0, acts, out.as_chunks_mut::<1>().0) };
}

/// [`tiled_rows`] on a CPU with AVX-512 VNNI, through the AVX-512 kernels.
pub fn tiled_rows_vnni(_cpu: Vnni, w: &Packed, r0: usize, a: &QActs, out: &mut [f32]) {
    let acts = one_token(w, a);
    // SAFETY: the token proves AVX-512 F/BW/DQ/VNNI, AVX2, FMA and F16C; `one_token` checked
    // `a`'s reads, `tiled::rows` checks the rows'.
    unsafe { tiled::rows::<1, true>(w, r0, acts, out.as_chunks_mut::<1>().0) };
}

/// [`tile`] on the tiled layout: rows `r0..r0 + out.len()` (whole tiles) of `w` · each of
/// the group's tokens.
pub fn tiled_group(_cpu: Avx2, w: &Packed, r0: usize, g: &KGroup, out: &mut [[f32; KGROUP]]) {
    let acts = group(w, g);
    // SAFETY: the token proves AVX2, FMA and F16C; `group` checked the group's reads,
    // `tiled::rows` checks the rows'.
    unsafe { tiled::rows::<KGROUP, false>(w, r0, acts, out) };
}

/// [`tiled_group`] on a CPU with AVX-512 VNNI, through the AVX-512 kernels.
pub fn tiled_group_vnni(_cpu: Vnni, w: &Packed, r0: usize, g: &KGroup, out: &mut [[f32; KGROUP]]) {
    let acts = group(w, g);
    // SAFETY: the token proves AVX-512 F/BW/DQ/VNNI, AVX2, FMA and F16C; `group` checked the
    // group's reads, `tiled::rows` checks the rows'.
    unsafe { tiled::rows::<KGROUP, true>(w, r0, acts, out) };
}

/// The pointers to one token's activations (values, scales, sums of 16: a group of one),
/// after checking they hold `w.cols()` values in the K-quants' form.
fn one_token(w: &Packed, a: &QActs) -> Acts {
    let ns = w.cols() / SUPER;
    assert!(a.is_k(), "the K-quants need activations in their form");
    assert!(a.q.len() >= ns * SUPER && a.d.len() >= ns && a.s16.len() >= ns * SUMS);
    (a.q.as_ptr(), a.d.as_ptr(), a.s16.as_ptr())
}

/// The pointers to a group's activations, after checking they hold `w.cols()` values a
/// token.
fn group(w: &Packed, g: &KGroup) -> Acts {
    let ns = w.cols() / SUPER;
    assert!(g.supers() == ns && g.q.len() == ns * KGROUP * SUPER);
    assert!(g.s16.len() == ns * KGROUP * SUMS);
    (g.q.as_ptr(), g.d.as_ptr(), g.s16.as_ptr())
}

/// Activations as the kernels read them: values, scales and sums of 16, laid out as
/// [`KGroup`]'s.
type Acts = (*const i8, *const f32, *const i16);

/// Rows `r0..r0 + out.len()` of `w` · a group of `N` tokens' activations at `acts` (values,
/// scales, sums of 16, laid out as [`KGroup`]'s), after checking every read of the rows.
///
/// # Safety
///
/// The CPU runs AVX2, FMA and F16C (with `WIDE`, AVX-512 F/BW/VNNI too); `acts` holds
/// `w.cols() / 256` super-blocks of `N` tokens.
unsafe fn rows<const N: usize, const WIDE: bool>(
    w: &Packed,
    r0: usize,
    acts: Acts,
    out: &mut [[f32; N]],
) {
    let kind = w.kind();
    assert!(kind.is_k(), "{kind:?} is not a K-quant");
    let (n, ns, pb) = (out.len(), w.cols() / SUPER, packed_bytes(kind));
    assert!(r0 + n <= w.rows());
    let (d, m, qs) = w.row_range(r0, n);
    assert!(d.len() == n * ns && qs.len() == n * ns * pb);
    assert!(m.len() == if kind == QKind::Q6K { 0 } else { n * ns });
    let (d, m, q) = (
        d.as_ptr().cast::<u16>(),
        m.as_ptr().cast::<u16>(),
        qs.as_ptr(),
    );
    // SAFETY: the CPU runs AVX2, FMA and F16C and `acts` holds `ns` super-blocks of `N`
    // tokens (the caller's contract); the asserts above bound the reads of the rows: `n`
    // rows of `ns` super-blocks of `kind`'s repacked bytes, and their `dmin`s where the
    // kernel reads them.
    unsafe {
        match kind {
            QKind::Q4K => rows_of::<N, 4, WIDE>(d, m, q, acts, ns, out),
            QKind::Q5K => rows_of::<N, 5, WIDE>(d, m, q, acts, ns, out),
            _ => rows_of::<N, 6, WIDE>(d, m, q, acts, ns, out),
        }
    }
}

/// The kernel of each row in turn (`BITS`: 4 Q4_K, 5 Q5_K, 6 Q6_K; `WIDE`: AVX-512's).
///
/// # Safety
///
/// As [`q45`] and [`q6`] (with `WIDE`, [`wide::q45`] and [`wide::q6`]) for each of
/// `out.len()` consecutive rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_of<const N: usize, const BITS: u8, const WIDE: bool>(
    d: *const u16,
    m: *const u16,
    q: *const u8,
    acts: Acts,
    ns: usize,
    out: &mut [[f32; N]],
) {
    let pb = packed_bytes(match BITS {
        4 => QKind::Q4K,
        5 => QKind::Q5K,
        _ => QKind::Q6K,
    });
    for (i, o) in out.iter_mut().enumerate() {
        // SAFETY: row `i` of the caller's rows: `ns` super-blocks from `i·ns` (their
        // `d`, `dmin`, and `pb` bytes each); the CPU and `acts` as the caller's contract.
        // Q6_K has no `dmin`: `m` (an empty slice's pointer) is only offset, never read, so
        // by `wrapping_add`.
        unsafe {
            let (d, m, q) = (d.add(i * ns), m.wrapping_add(i * ns), q.add(i * ns * pb));
            *o = match (BITS, WIDE) {
                (4, false) => q45::<N, false>(d, m, q, acts, ns),
                (5, false) => q45::<N, true>(d, m, q, acts, ns),
                (_, false) => q6::<N>(d, q, acts, ns),
                (4, true) => wide::q45::<N, false>(d, m, q, acts, ns),
                (5, true) => wide::q45::<N, true>(d, m, q, acts, ns),
                (_, true) => wide::q6::<N>(d, q, acts, ns),
            };
        }
    }
}

/// For sub-block `s` (0..8) of a Q4_K/Q5_K super-block, a shuffle of its eight scales as
/// i16 (in both 128-bit lanes) into every i16 lane.
const PICK45: [[u8; 32]; SUBS] = {
    let mut t = [[0u8; 32]; SUBS];
    let mut s = 0;
    while s < SUBS {
        let mut i = 0;
        while i < 16 {
            t[s][2 * i] = 2 * s as u8;
            t[s][2 * i + 1] = 2 * s as u8 + 1;
            i += 1;
        }
        s += 1;
    }
    t
};

/// A shuffle of eight bytes into byte pairs: `[0, 0, 1, 1, …, 7, 7]`.
const DUP: [u8; 16] = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7];

/// `maddubs(w, 32 activations at qa)` (unsigned weights below 64 × signed activations,
/// adjacent products summed to i16 without saturation: at most 2·63·127), then `madd` with
/// the i16 scales `sc`: eight i32 lanes.
///
/// # Safety
///
/// The CPU runs AVX2; `qa` points to 32 activations.
#[inline(always)]
unsafe fn scaled_sum(w: __m256i, qa: *const i8, sc: __m256i) -> __m256i {
    // SAFETY: 32 activations at `qa` (the caller's contract); the CPU runs AVX2.
    unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(w, _mm256_loadu_si256(qa.cast())), sc) }
}

/// A Q4_K (`FIVE` false) or Q5_K row · a group of `N` tokens.
///
/// # Safety
///
/// The CPU runs AVX2, FMA and F16C; `d`, `m` point to `ns` f16 values, `q` to `ns` repacked
/// super-blocks of the kind, `acts` to `ns` super-blocks of `N` tokens' values, scales and
/// sums of 16 ([`KGroup`]'s layout).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q45<const N: usize, const FIVE: bool>(
    d: *const u16,
    m: *const u16,
    q: *const u8,
    (aq, ad, asum): Acts,
    ns: usize,
) -> [f32; N] {
    let pb = packed_bytes(if FIVE { QKind::Q5K } else { QKind::Q4K });
    let mut acc = [_mm256_setzero_ps(); N];
    // SAFETY: 16 bytes of `DUP`.
    let dup = unsafe { _mm_loadu_si128(DUP.as_ptr().cast()) };
    let (low4, bit4) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(0x10));
    for i in 0..ns {
        // SAFETY: super-block `i` (`pb` bytes at `q + i·pb`, `d[i]`, `m[i]`) and the
        // group's super-block `i` (`N` tokens' values, scales and sums from `N·i`) exist
        // (the caller's contract); the CPU runs AVX2, FMA and F16C.
        unsafe {
            let sb = q.add(i * pb);
            let (dw, dm, sc, mn) = head45(sb, d.add(i), m.add(i), dup);
            let sc = _mm256_broadcastsi128_si256(sc);
            let mut isum = [_mm256_setzero_si256(); N];
            // Q5_K: bits 2j, 2j + 1 of each `qh` byte shifted down to bits 0, 1 for pair `j`.
            let mut qh = if FIVE {
                _mm256_loadu_si256(sb.add(SCALES).cast())
            } else {
                _mm256_setzero_si256()
            };
            let qs = sb.add(if FIVE { SCALES + 32 } else { SCALES });
            for j in 0..SUBS / 2 {
                let packed = _mm256_loadu_si256(qs.add(32 * j).cast());
                let mut lo = _mm256_and_si256(packed, low4);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4);
                if FIVE {
                    // 16-bit shifts: what crosses into the other byte is masked off.
                    lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(qh, 4), bit4));
                    hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(qh, 3), bit4));
                    qh = _mm256_srli_epi16(qh, 2);
                }
                let pick = |s: usize| _mm256_loadu_si256(PICK45[s].as_ptr().cast());
                let (sc0, sc1) = (
                    _mm256_shuffle_epi8(sc, pick(2 * j)),
                    _mm256_shuffle_epi8(sc, pick(2 * j + 1)),
                );
                for (n, sum) in isum.iter_mut().enumerate() {
                    let qa = aq.add((N * i + n) * SUPER + 2 * j * BLOCK);
                    let s0 = scaled_sum(lo, qa, sc0);
                    let s1 = scaled_sum(hi, qa.add(BLOCK), sc1);
                    *sum = _mm256_add_epi32(*sum, _mm256_add_epi32(s0, s1));
                }
            }
            for n in 0..N {
                let (da, sums) = (*ad.add(N * i + n), asum.add((N * i + n) * SUMS));
                finish45(&mut acc[n], isum[n], mn, sums, dw * da, dm * da);
            }
        }
    }
    let mut out = [0f32; N];
    for (o, a) in out.iter_mut().zip(acc) {
        *o = hsum(a);
    }
    out
}

/// What a Q4_K/Q5_K super-block holds for all its rows' tokens, read once: its `d` and `dmin`
/// as f32, its eight sub-block scales as i16 (128 bits), and its minimums spread for
/// [`finish45`] (minimum `s` in i16 lanes 2s and 2s + 1, to meet the two sums of 16 of
/// sub-block s). Shared by the AVX2 and AVX-512 kernels.
///
/// # Safety
///
/// The CPU runs AVX2 and F16C; `sb` points to the super-block's repacked bytes, `d` and `m`
/// to its two f16 scales; `dup` is [`DUP`].
#[inline(always)]
unsafe fn head45(
    sb: *const u8,
    d: *const u16,
    m: *const u16,
    dup: __m128i,
) -> (f32, f32, __m128i, __m256i) {
    // SAFETY: the super-block's first 16 bytes (scales, minimums) and its two f16 scales are
    // readable; the CPU runs AVX2 and F16C (the caller's contract).
    unsafe {
        let dw = f16::from_bits(*d).to_f32();
        let dm = f16::from_bits(*m).to_f32();
        let sc = _mm_cvtepu8_epi16(_mm_loadl_epi64(sb.cast()));
        let mn = _mm_shuffle_epi8(_mm_loadl_epi64(sb.add(8).cast()), dup);
        (dw, dm, sc, _mm256_cvtepu8_epi16(mn))
    }
}

/// Adds a Q4_K/Q5_K super-block's integer sums for one token into `acc`:
/// `dd·isum − dmm·Σ_s m_s·(the sum of sub-block s's 32 activations)`, `mn` the minimums as
/// [`q45`] spreads them (minimum `s` in i16 lanes 2s and 2s + 1), `sums` the token's sixteen
/// sums of 16. Shared by the AVX2 and AVX-512 kernels.
///
/// # Safety
///
/// The CPU runs AVX2 and FMA; `sums` points to 16 i16.
#[inline(always)]
unsafe fn finish45(
    acc: &mut __m256,
    isum: __m256i,
    mn: __m256i,
    sums: *const i16,
    dd: f32,
    dmm: f32,
) {
    // SAFETY: 16 sums at `sums`; the CPU runs AVX2 and FMA (the caller's contract).
    unsafe {
        *acc = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(isum), *acc);
        // Lane s: m_s · (the sum of sub-block s's 32 activations).
        let sums = _mm256_loadu_si256(sums.cast());
        let msum = _mm256_cvtepi32_ps(_mm256_madd_epi16(mn, sums));
        *acc = _mm256_fnmadd_ps(_mm256_set1_ps(dmm), msum, *acc);
    }
}

/// Adds a Q6_K super-block's integer sums for one token into `acc`: `dd·(isum − 32·Σ
/// sc·(sum of 16))`, `sc16` its sixteen scales as i16, `sums` the token's sixteen sums of 16.
/// Shared by the AVX2 and AVX-512 kernels.
///
/// # Safety
///
/// The CPU runs AVX2 and FMA; `sums` points to 16 i16.
#[inline(always)]
unsafe fn finish6(acc: &mut __m256, isum: __m256i, sc16: __m256i, sums: *const i16, dd: f32) {
    // SAFETY: 16 sums at `sums`; the CPU runs AVX2 and FMA (the caller's contract).
    unsafe {
        // Lane c: sc[2c]·(sum of 16) + sc[2c + 1]·(the next sum), times 32.
        let sums = _mm256_loadu_si256(sums.cast());
        let off = _mm256_slli_epi32(_mm256_madd_epi16(sc16, sums), 5);
        let tot = _mm256_cvtepi32_ps(_mm256_sub_epi32(isum, off));
        *acc = _mm256_fmadd_ps(_mm256_set1_ps(dd), tot, *acc);
    }
}

/// For 32-value block `c` (0..8) of a Q6_K super-block, a shuffle of its sixteen i8 scales
/// into `sc[2c]` eight times then `sc[2c + 1]` eight times: widened to i16, the low 128-bit
/// lane scales values 0..16 of the block, the high one values 16..32.
const PICK6: [[u8; 16]; SUBS] = {
    let mut t = [[0u8; 16]; SUBS];
    let mut c = 0;
    while c < SUBS {
        let mut i = 0;
        while i < 8 {
            t[c][i] = 2 * c as u8;
            t[c][8 + i] = 2 * c as u8 + 1;
            i += 1;
        }
        c += 1;
    }
    t
};

/// A Q6_K row · a group of `N` tokens. Each 32-value block's unsigned `q` (0..64) × the
/// activations in `maddubs`, then `madd` with its two 16-value scales; the `−32` of every
/// value once per super-block, from the activations' sums of 16.
///
/// # Safety
///
/// The CPU runs AVX2, FMA and F16C; `d` points to `ns` f16 values, `q` to `ns` repacked Q6_K
/// super-blocks, `acts` to `ns` super-blocks of `N` tokens' values, scales and sums of 16
/// ([`KGroup`]'s layout).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6<const N: usize>(
    d: *const u16,
    q: *const u8,
    (aq, ad, asum): Acts,
    ns: usize,
) -> [f32; N] {
    let pb = packed_bytes(QKind::Q6K);
    let mut acc = [_mm256_setzero_ps(); N];
    let (low4, top2) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(0x30));
    for i in 0..ns {
        // SAFETY: super-block `i` (`pb` bytes at `q + i·pb`, `d[i]`) and the group's
        // super-block `i` (`N` tokens' values, scales and sums from `N·i`) exist (the
        // caller's contract); the CPU runs AVX2, FMA and F16C.
        unsafe {
            let sb = q.add(i * pb);
            let dw = f16::from_bits(*d.add(i)).to_f32();
            let scales = _mm_loadu_si128(sb.cast());
            let mut isum = [_mm256_setzero_si256(); N];
            for h in 0..2 {
                let ql0 = _mm256_loadu_si256(sb.add(SCALES + 64 * h).cast());
                let ql1 = _mm256_loadu_si256(sb.add(SCALES + 64 * h + 32).cast());
                let qh = _mm256_loadu_si256(sb.add(SCALES + 128 + 32 * h).cast());
                // 16-bit shifts: what crosses into the other byte is masked off.
                let qk = [
                    (ql0, _mm256_slli_epi16(qh, 4)),
                    (ql1, _mm256_slli_epi16(qh, 2)),
                    (_mm256_srli_epi16(ql0, 4), qh),
                    (_mm256_srli_epi16(ql1, 4), _mm256_srli_epi16(qh, 2)),
                ];
                for (k, (low, top)) in qk.into_iter().enumerate() {
                    let w =
                        _mm256_or_si256(_mm256_and_si256(low, low4), _mm256_and_si256(top, top2));
                    let c = 4 * h + k;
                    let pick = _mm_loadu_si128(PICK6[c].as_ptr().cast());
                    let sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pick));
                    for (n, sum) in isum.iter_mut().enumerate() {
                        let qa = aq.add((N * i + n) * SUPER + c * BLOCK);
                        *sum = _mm256_add_epi32(*sum, scaled_sum(w, qa, sc));
                    }
                }
            }
            let sc16 = _mm256_cvtepi8_epi16(scales);
            for n in 0..N {
                let sums = asum.add((N * i + n) * SUMS);
                finish6(&mut acc[n], isum[n], sc16, sums, dw * *ad.add(N * i + n));
            }
        }
    }
    let mut out = [0f32; N];
    for (o, a) in out.iter_mut().zip(acc) {
        *o = hsum(a);
    }
    out
}
