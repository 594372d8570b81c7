//! Every `unsafe` of the kernels: the AVX2 and AVX-512 VNNI versions of the plain kernels in
//! `quant`, `attention`, `f16`, `kv` and `log8`, and a prefetch hint.
//!
//! Soundness by construction: the `#[target_feature]` code runs only behind a safe function
//! that takes a CPU-feature token, [`Avx2`] or [`Vnni`], which only [`Avx2::detect`] and
//! [`Vnni::detect`] make, after `is_x86_feature_detected!` has said yes. Each safe function
//! also checks the shapes its kernel reads (an `assert!`), so no caller can make it read out
//! of bounds. The tests check every kernel here against its plain twin.

#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::arch::is_x86_feature_detected as has;

use half::f16;

use super::quant::{Packed, QActs, QKind};

mod kv16;
mod log8;
pub use kv16::{f16_to_f32, scores_f16, scores_q8_0, weighted_sum_f16, weighted_sum_q8_0};
pub use log8::{axpy_rows_log8, encode_log8};

/// Proof that this CPU runs AVX2, FMA and F16C: only [`Avx2::detect`] makes one.
#[derive(Debug, Clone, Copy)]
pub struct Avx2(());

impl Avx2 {
    /// The token, if this CPU runs AVX2, FMA and F16C.
    #[inline]
    pub fn detect() -> Option<Self> {
        (has!("avx2") && has!("fma") && has!("f16c")).then_some(Self(()))
    }
}

/// Proof that this CPU runs AVX-512 F/BW/DQ/VNNI besides [`Avx2`]'s features: only
/// [`Vnni::detect`] makes one.
#[derive(Debug, Clone, Copy)]
pub struct Vnni(());

impl Vnni {
    /// The token, if this CPU (which runs AVX2, FMA and F16C: `_cpu`) also runs AVX-512
    /// F/BW/DQ/VNNI.
    pub fn detect(_cpu: Avx2) -> Option<Self> {
        (has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vnni"))
            .then_some(Self(()))
    }
}

/// Row `r` of `w` · the activations `a`: [`super::quant::dot_plain`] in AVX2. Panics for
/// the K-quants, whose rows go through [`dot_rows`] or the tiled kernels.
pub fn dot(_cpu: Avx2, w: &Packed, r: usize, a: &QActs) -> f32 {
    let (d, m, q, nb) = avx2::row_parts(w, r, a);
    // SAFETY: the token proves AVX2, FMA and F16C; `row_parts` checked every read is in
    // bounds, for `w`'s kind, which picks `KIND`.
    unsafe {
        match w.kind() {
            QKind::Q4_0 => avx2::row::<0>(d, m, q, a, nb),
            QKind::Q4_1 => avx2::row::<1>(d, m, q, a, nb),
            QKind::Q8_0 => avx2::row::<2>(d, m, q, a, nb),
            QKind::Q4K | QKind::Q5K | QKind::Q6K => unreachable!("refused by row_parts"),
        }
    }
}

/// Row `r` of `w` · the activations `a`: [`super::quant::dot_plain`] in AVX-512 VNNI. Panics
/// for the K-quants, as [`dot`].
pub fn dot_vnni(_cpu: Vnni, w: &Packed, r: usize, a: &QActs) -> f32 {
    let (d, m, q, nb) = avx2::row_parts(w, r, a);
    // SAFETY: the token proves AVX-512 F/BW/DQ/VNNI, AVX2, FMA and F16C; `row_parts` checked
    // every read is in bounds, for `w`'s kind, which picks `KIND`.
    unsafe {
        match w.kind() {
            QKind::Q4_0 => avx512::row::<0>(d, m, q, a, nb),
            QKind::Q4_1 => avx512::row::<1>(d, m, q, a, nb),
            QKind::Q8_0 => avx512::row::<2>(d, m, q, a, nb),
            QKind::Q4K | QKind::Q5K | QKind::Q6K => unreachable!("refused by row_parts"),
        }
    }
}

/// [`super::scores`] in AVX2. Panics unless `q.len() % 8 == 0` and `k` holds `out.len()`
/// rows of `q.len()`.
#[inline]
pub fn scores(_cpu: Avx2, q: &[f32], k: &[f32], scale: f32, out: &mut [f32]) {
    assert!(q.len().is_multiple_of(8) && k.len() >= out.len() * q.len());
    // SAFETY: the token proves AVX2 and FMA; the shapes are asserted.
    unsafe { avx2::scores(q, k, scale, out) }
}

/// [`super::weighted_sum`] in AVX2. Panics unless `out.len() % 64 == 0` and `v` holds
/// `p.len()` rows of `out.len()`.
#[inline]
pub fn weighted_sum(_cpu: Avx2, p: &[f32], v: &[f32], out: &mut [f32]) {
    assert!(out.len().is_multiple_of(64) && v.len() >= p.len() * out.len());
    // SAFETY: the token proves AVX2 and FMA; the shapes are asserted.
    unsafe { avx2::weighted_sum(p, v, out) }
}

/// [`super::softmax`] in AVX2.
#[inline]
pub fn softmax(_cpu: Avx2, p: &mut [f32]) {
    // SAFETY: the token proves AVX2 and FMA.
    unsafe { avx2::softmax(p) }
}

/// [`super::axpy_rows_f16`] in AVX2. Panics unless `w.len() == rows.len()` and every row is
/// at least `y.len()` long.
#[inline]
pub fn axpy_rows_f16(_cpu: Avx2, w: &[f32], rows: &[&[f16]], y: &mut [f32]) {
    assert!(w.len() == rows.len() && rows.iter().all(|r| r.len() >= y.len()));
    // SAFETY: the token proves AVX2, FMA and F16C; the shapes are asserted.
    unsafe { avx2::axpy_rows_f16(w, rows, y) }
}

/// [`super::encode_f16`] in AVX2. Panics unless `src`, `dst` and `pos` have the same length.
#[inline]
pub fn encode_f16(
    _cpu: Avx2,
    src: &[f32],
    scale: f32,
    dst: &mut [f16],
    pos: &[u32],
    lo_hi: (u32, u32),
) -> f64 {
    assert!(src.len() == dst.len() && src.len() == pos.len());
    // SAFETY: the token proves AVX2 and F16C; the lengths are asserted.
    unsafe { avx2::encode_f16(src, scale, dst, pos, lo_hi) }
}

/// [`super::prefetch`]: a hint to load the cache line holding `x[at]`; nothing out of bounds.
#[inline]
pub fn prefetch<T>(x: &[T], at: usize) {
    if let Some(v) = x.get(at) {
        // SAFETY: SSE is part of x86-64; a prefetch never faults and does not change memory,
        // and `v` is a valid reference.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                std::ptr::from_ref(v).cast(),
            )
        };
    }
}

mod gemm;
mod kquant;
pub use gemm::{dot4, dot4_vnni};
pub use kquant::{
    dot_rows, dot_rows_vnni, tile, tile_vnni, tiled_group, tiled_group_vnni, tiled_rows,
    tiled_rows_vnni,
};

/// The AVX2 kernels (and the row dot product's shared body).
mod avx2 {
    use crate::kernels::quant::{p_values, Packed, QActs, QKind, BLOCK};
    use half::f16;
    use std::arch::x86_64::*;

    /// Row `r` of `w` as the raw pointers the row kernels read (scales, minimums, values)
    /// and its block count, after checking that every read they make is in bounds: `nb`
    /// blocks of values of `w`'s kind, `nb` minimums for Q4_1 (none otherwise), and `nb`
    /// blocks of activations. Panics for a K-quant.
    pub(super) fn row_parts(w: &Packed, r: usize, a: &QActs) -> RowParts {
        assert!(
            !w.kind().is_k(),
            "{:?} rows go through the K-quant kernels",
            w.kind()
        );
        let (d, m, qs) = w.row(r);
        let nb = d.len();
        assert!(a.q.len() >= nb * BLOCK && a.d.len() >= nb && a.ds.len() >= nb);
        let minimums = if w.kind() == QKind::Q4_1 { nb } else { 0 };
        assert!(qs.len() == nb * p_values(w.kind()) && m.len() == minimums);
        (d.as_ptr().cast(), m.as_ptr().cast(), qs.as_ptr(), nb)
    }

    /// Scales, minimums, packed values (pointers to their first elements) and block count.
    pub(super) type RowParts = (*const u16, *const u16, *const u8, usize);

    /// One row's dot product with the activations, compiled for AVX2, FMA and F16C. `KIND`:
    /// 0 Q4_0, 1 Q4_1, 2 Q8_0.
    ///
    /// # Safety
    ///
    /// The CPU runs AVX2, FMA and F16C, and the pointers and `nb` are [`row_parts`]' for a
    /// row of `KIND` and `a`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn row<const KIND: u8>(
        d: *const u16,
        m: *const u16,
        q: *const u8,
        a: &QActs,
        nb: usize,
    ) -> f32 {
        // SAFETY: the caller's contract, passed on.
        unsafe { dot_row::<KIND, false>(d, m, q, a, nb) }
    }

    /// Σ over one block of (weight values) × (8-bit activations), as 8 f32 lanes. `KIND`: 0
    /// Q4_0, 1 Q4_1 (16 bytes of nibbles at `q`), 2 Q8_0 (32 signed bytes).
    ///
    /// # Safety
    ///
    /// The CPU runs AVX2 and FMA; `q` points to one block's packed values (16 bytes for
    /// `KIND` 0 and 1, 32 for 2) and `qa` to 32 activations.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block<const KIND: u8>(q: *const u8, qa: *const i8) -> __m256 {
        // SAFETY: the caller's contract, passed on.
        unsafe { block_unpacked::<KIND>(unpack::<KIND>(q), qa) }
    }

    /// One block's weight values as 32 bytes in the activations' order: Q4_0/Q4_1 nibbles
    /// (0..16) as unsigned bytes, Q8_0 values as they are.
    ///
    /// # Safety
    ///
    /// The CPU runs AVX2; `q` points to one block's packed values (16 bytes for `KIND` 0 and
    /// 1, 32 for 2).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn unpack<const KIND: u8>(q: *const u8) -> __m256i {
        if KIND == 2 {
            // SAFETY: 32 bytes at `q` (the caller's contract).
            unsafe { _mm256_loadu_si256(q.cast()) }
        } else {
            // SAFETY: 16 bytes at `q` (the caller's contract).
            let qs = unsafe { _mm_loadu_si128(q.cast()) };
            let low4 = _mm_set1_epi8(0xF);
            let lo = _mm_and_si128(qs, low4);
            let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), low4);
            // Values 0..16 in the low lane, 16..32 in the high lane, as in the activations.
            _mm256_set_m128i(hi, lo)
        }
    }

    /// Σ over one block of [`unpack`]ed weight values `w` × (8-bit activations at `qa`), as
    /// 8 f32 lanes.
    ///
    /// # Safety
    ///
    /// The CPU runs AVX2 and FMA; `qa` points to 32 activations.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block_unpacked<const KIND: u8>(w: __m256i, qa: *const i8) -> __m256 {
        // SAFETY: 32 activations at `qa` (the caller's contract).
        let x = unsafe { _mm256_loadu_si256(qa.cast()) };
        let pairs = if KIND == 2 {
            // |w| · (x with w's sign): unsigned × signed, as maddubs needs.
            _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
        } else {
            _mm256_maddubs_epi16(w, x)
        };
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    /// One row: eight blocks' scales (and minimums) converted and multiplied at once, the
    /// Q4_0/Q4_1 offsets as one 8-wide product with the activations' `ds`; the last
    /// `nb % 8` blocks one by one. `WIDE`: pairs of blocks through AVX-512 VNNI.
    ///
    /// Inlined into [`row`] and `avx512::row`, which carry the CPU features.
    ///
    /// # Safety
    ///
    /// Called only from a function compiled for AVX2, FMA and F16C (and, with `WIDE`, AVX-512
    /// F/BW/DQ/VNNI) on a CPU that runs them; the pointers and `nb` are [`row_parts`]' for a
    /// row of `KIND` and `a`.
    #[inline(always)]
    pub(super) unsafe fn dot_row<const KIND: u8, const WIDE: bool>(
        d: *const u16,
        m: *const u16,
        q: *const u8,
        a: &QActs,
        nb: usize,
    ) -> f32 {
        let v = if KIND == 2 { 32 } else { 16 };
        let qa = a.q.as_ptr();
        let (ad, ads) = (a.d.as_ptr(), a.ds.as_ptr());
        // SAFETY: the caller runs with AVX2 (this function's contract).
        let (mut acc0, mut acc1) = unsafe { (_mm256_setzero_ps(), _mm256_setzero_ps()) };
        // SAFETY: as above.
        let mut off = unsafe { _mm256_setzero_ps() };
        let mut scale = [0f32; 8];
        let mut wide = super::avx512::Acc::default();
        let groups = nb / 8;
        for g in 0..groups {
            let b = g * 8;
            // SAFETY: blocks `b..b + 8` exist in this row (the caller's contract), and the
            // CPU runs the features the caller was compiled for; with `WIDE`, AVX-512 VNNI.
            unsafe {
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(d.add(b).cast()));
                let dsv = _mm256_loadu_ps(ads.add(b));
                match KIND {
                    0 => off = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(-8.0)), dsv, off),
                    1 => {
                        let mw = _mm256_cvtph_ps(_mm_loadu_si128(m.add(b).cast()));
                        off = _mm256_fmadd_ps(mw, dsv, off);
                    }
                    _ => {}
                }
                _mm256_storeu_ps(
                    scale.as_mut_ptr(),
                    _mm256_mul_ps(dw, _mm256_loadu_ps(ad.add(b))),
                );
                let mut i = 0;
                while i < 8 {
                    let (b0, b1) = (b + i, b + i + 1);
                    if WIDE {
                        super::avx512::pair::<KIND>(
                            &mut wide,
                            q.add(b0 * v),
                            qa.add(b0 * BLOCK),
                            scale[i],
                            scale[i + 1],
                        );
                    } else {
                        let s0 = block::<KIND>(q.add(b0 * v), qa.add(b0 * BLOCK));
                        let s1 = block::<KIND>(q.add(b1 * v), qa.add(b1 * BLOCK));
                        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(scale[i]), s0, acc0);
                        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(scale[i + 1]), s1, acc1);
                    }
                    i += 2;
                }
            }
        }
        let mut tail = 0f32;
        for b in groups * 8..nb {
            // SAFETY: block `b` exists in this row; the CPU runs AVX2 and FMA.
            unsafe {
                let dw = f16::from_bits(*d.add(b)).to_f32();
                let s0 = block::<KIND>(q.add(b * v), qa.add(b * BLOCK));
                acc0 = _mm256_fmadd_ps(_mm256_set1_ps(dw * *ad.add(b)), s0, acc0);
                tail += match KIND {
                    0 => -8.0 * dw * *ads.add(b),
                    1 => f16::from_bits(*m.add(b)).to_f32() * *ads.add(b),
                    _ => 0.0,
                };
            }
        }
        // SAFETY: the CPU runs AVX2 and FMA (the caller's contract); with `WIDE`, AVX-512
        // F/DQ.
        unsafe {
            let mut total = _mm256_add_ps(_mm256_add_ps(acc0, acc1), off);
            if WIDE {
                total = _mm256_add_ps(total, super::avx512::fold(&wide));
            }
            hsum(total) + tail
        }
    }

    /// [`crate::kernels::scores`]: four keys at a time on independent accumulators.
    ///
    /// # Safety
    ///
    /// The CPU runs AVX2 and FMA; `q.len() % 8 == 0` and `k` holds `out.len()` rows of
    /// `q.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scores(q: &[f32], k: &[f32], scale: f32, out: &mut [f32]) {
        let (d, n) = (q.len(), out.len());
        let (qp, kp) = (q.as_ptr(), k.as_ptr());
        let mut s = 0;
        while s + 4 <= n {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut c = 0;
            while c < d {
                // SAFETY: `c + 8 <= d`, and rows `s..s + 4` exist (the caller's contract).
                unsafe {
                    let qc = _mm256_loadu_ps(qp.add(c));
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(qc, _mm256_loadu_ps(kp.add((s + j) * d + c)), *a);
                    }
                }
                c += 8;
            }
            for (j, a) in acc.iter().enumerate() {
                out[s + j] = hsum(*a) * scale;
            }
            s += 4;
        }
        while s < n {
            let mut a = _mm256_setzero_ps();
            let mut c = 0;
            while c < d {
                // SAFETY: as above, for row `s`.
                unsafe {
                    a = _mm256_fmadd_ps(
                        _mm256_loadu_ps(qp.add(c)),
                        _mm256_loadu_ps(kp.add(s * d + c)),
                        a,
                    );
                }
                c += 8;
            }
            out[s] = hsum(a) * scale;
            s += 1;
        }
    }

    /// [`crate::kernels::weighted_sum`]: 64 output values at a time held in registers over
    /// all rows.
    ///
    /// # Safety
    ///
    /// The CPU runs AVX2 and FMA; `out.len() % 64 == 0` and `v` holds `p.len()` rows of
    /// `out.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weighted_sum(p: &[f32], v: &[f32], out: &mut [f32]) {
        let d = out.len();
        let vp = v.as_ptr();
        let mut c0 = 0;
        while c0 < d {
            let mut acc = [_mm256_setzero_ps(); 8];
            for (s, &w) in p.iter().enumerate() {
                let w = _mm256_set1_ps(w);
                for (r, a) in acc.iter_mut().enumerate() {
                    // SAFETY: row `s` exists and `c0 + 64 <= d` (the caller's contract).
                    *a = _mm256_fmadd_ps(
                        w,
                        unsafe { _mm256_loadu_ps(vp.add(s * d + c0 + 8 * r)) },
                        *a,
                    );
                }
            }
            for (r, a) in acc.iter().enumerate() {
                // SAFETY: `c0 + 8·r + 8 <= d = out.len()`.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c0 + 8 * r), *a) };
            }
            c0 += 64;
        }
    }

    /// [`crate::kernels::softmax`], eight values at a time; `e^x` as
    /// [`crate::kernels::exp_nonpositive`].
    ///
    /// # Safety
    ///
    /// The CPU runs AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax(p: &mut [f32]) {
        let n = p.len();
        let body = n - n % 8;
        let ptr = p.as_mut_ptr();
        let mut m8 = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        while i < body {
            // SAFETY: `i + 8 <= body <= n`.
            m8 = _mm256_max_ps(m8, unsafe { _mm256_loadu_ps(ptr.add(i)) });
            i += 8;
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 values.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m8) };
        let max = lanes
            .iter()
            .chain(&p[body..])
            .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
        let (mx, mut sum8) = (_mm256_set1_ps(max), _mm256_setzero_ps());
        i = 0;
        while i < body {
            // SAFETY: `i + 8 <= body <= n`.
            unsafe {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(ptr.add(i)), mx));
                _mm256_storeu_ps(ptr.add(i), e);
                sum8 = _mm256_add_ps(sum8, e);
            }
            i += 8;
        }
        let mut sum = hsum(sum8);
        for x in &mut p[body..] {
            *x = crate::kernels::exp_nonpositive(*x - max);
            sum += *x;
        }
        let inv = 1.0 / sum;
        let inv8 = _mm256_set1_ps(inv);
        i = 0;
        while i < body {
            // SAFETY: `i + 8 <= body <= n`.
            unsafe {
                _mm256_storeu_ps(ptr.add(i), _mm256_mul_ps(_mm256_loadu_ps(ptr.add(i)), inv8))
            };
            i += 8;
        }
        for x in &mut p[body..] {
            *x *= inv;
        }
    }

    /// `e^x` of eight values `x <= 0`: [`crate::kernels::exp_nonpositive`]'s arithmetic.
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        let tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0), _CMP_LT_OQ);
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let k = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let e = _mm256_add_ps(
            _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r),
            _mm256_set1_ps(1.0),
        );
        let bits = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)),
            23,
        );
        let y = _mm256_mul_ps(e, _mm256_castsi256_ps(bits));
        _mm256_andnot_ps(tiny, y)
    }

    /// [`crate::kernels::axpy_rows_f16`], eight columns at a time.
    ///
    /// # Safety
    ///
    /// The CPU runs AVX2, FMA and F16C; `w.len() == rows.len()` and every row is at least
    /// `y.len()` long.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn axpy_rows_f16(w: &[f32], rows: &[&[f16]], y: &mut [f32]) {
        let n = y.len();
        let body = n - n % 8;
        let yp = y.as_mut_ptr();
        // Four rows per sweep over `y`: four sequential streams, which the hardware prefetcher
        // follows (the rows come from memory, `y` stays in L1).
        let mut i = 0;
        while i + 4 <= rows.len() {
            let (r0, r1, r2, r3) = (rows[i], rows[i + 1], rows[i + 2], rows[i + 3]);
            let (w0, w1) = (_mm256_set1_ps(w[i]), _mm256_set1_ps(w[i + 1]));
            let (w2, w3) = (_mm256_set1_ps(w[i + 2]), _mm256_set1_ps(w[i + 3]));
            let mut c = 0;
            while c < body {
                // SAFETY: `c + 8 <= n`, within `y` and within every row (the caller's contract).
                unsafe {
                    // The ring is read once a step, whole (~10 MB for a 30-layer model):
                    // non-temporal prefetches keep it from pushing the weights and K/V out
                    // of L2/L3 (without them the matrix kernels measured ~20% slower under
                    // MorphKV). A prefetch past a row's end reads nothing and cannot fault.
                    if c % 32 == 0 {
                        _mm_prefetch::<_MM_HINT_NTA>(r0.as_ptr().wrapping_add(c + 256).cast());
                        _mm_prefetch::<_MM_HINT_NTA>(r1.as_ptr().wrapping_add(c + 256).cast());
                        _mm_prefetch::<_MM_HINT_NTA>(r2.as_ptr().wrapping_add(c + 256).cast());
                        _mm_prefetch::<_MM_HINT_NTA>(r3.as_ptr().wrapping_add(c + 256).cast());
                    }
                    let x0 = _mm256_cvtph_ps(_mm_loadu_si128(r0.as_ptr().add(c).cast()));
                    let x1 = _mm256_cvtph_ps(_mm_loadu_si128(r1.as_ptr().add(c).cast()));
                    let x2 = _mm256_cvtph_ps(_mm_loadu_si128(r2.as_ptr().add(c).cast()));
                    let x3 = _mm256_cvtph_ps(_mm_loadu_si128(r3.as_ptr().add(c).cast()));
                    let mut acc = _mm256_loadu_ps(yp.add(c));
                    acc = _mm256_fmadd_ps(w0, x0, acc);
                    acc = _mm256_fmadd_ps(w1, x1, acc);
                    acc = _mm256_fmadd_ps(w2, x2, acc);
                    acc = _mm256_fmadd_ps(w3, x3, acc);
                    _mm256_storeu_ps(yp.add(c), acc);
                }
                c += 8;
            }
            i += 4;
        }
        for (&a, r) in w[i..].iter().zip(&rows[i..]) {
            let wa = _mm256_set1_ps(a);
            let mut c = 0;
            while c < body {
                // SAFETY: as above.
                unsafe {
                    let x = _mm256_cvtph_ps(_mm_loadu_si128(r.as_ptr().add(c).cast()));
                    let acc = _mm256_fmadd_ps(wa, x, _mm256_loadu_ps(yp.add(c)));
                    _mm256_storeu_ps(yp.add(c), acc);
                }
                c += 8;
            }
        }
        for (a, r) in w.iter().zip(rows) {
            for (y, x) in y[body..].iter_mut().zip(&r[body..n]) {
                *y += a * x.to_f32();
            }
        }
    }

    /// [`crate::kernels::encode_f16`], eight values at a time.
    ///
    /// # Safety
    ///
    /// The CPU runs AVX2 and F16C; `src`, `dst` and `pos` have the same length.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn encode_f16(
        src: &[f32],
        scale: f32,
        dst: &mut [f16],
        pos: &[u32],
        (lo, hi): (u32, u32),
    ) -> f64 {
        let n = src.len();
        let (sp, dp, pp) = (src.as_ptr(), dst.as_mut_ptr().cast::<u16>(), pos.as_ptr());
        let k = _mm256_set1_ps(scale);
        // Unsigned `lo <= p < hi` as signed compares after flipping the sign bit.
        let flip = _mm256_set1_epi32(i32::MIN);
        let lo_v = _mm256_set1_epi32((lo ^ 0x8000_0000) as i32);
        let hi_v = _mm256_set1_epi32((hi ^ 0x8000_0000) as i32);
        let (mut s0, mut s1) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        // Streaming (non-temporal) stores need 16-byte alignment: values before the first
        // boundary go through the plain twin. They skip reading the lines first: a ring row is written
        // whole and read again only at the next step's scoring, from memory anyway.
        let first = dp.align_offset(16).min(n);
        let body = first + (n - first) / 8 * 8;
        let mut i = first;
        while i < body {
            // SAFETY: `i + 8 <= n`, within all three slices; `dp.add(i)` is 16-byte aligned
            // (`first` aligns it and `i - first` is a multiple of 8 u16s).
            unsafe {
                let h = _mm256_cvtps_ph(_mm256_mul_ps(_mm256_loadu_ps(sp.add(i)), k), 0);
                _mm_stream_si128(dp.add(i).cast(), h);
                let stored = _mm256_cvtph_ps(h);
                let p = _mm256_xor_si256(_mm256_loadu_si256(pp.add(i).cast()), flip);
                let below_lo = _mm256_cmpgt_epi32(lo_v, p);
                let below_hi = _mm256_cmpgt_epi32(hi_v, p);
                let keep = _mm256_andnot_si256(below_lo, below_hi);
                let v = _mm256_and_ps(stored, _mm256_castsi256_ps(keep));
                s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
                s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
            }
            i += 8;
        }
        // Streaming stores are weakly ordered: fence them before the row is handed on.
        _mm_sfence();
        let mut lanes = [0f64; 4];
        // SAFETY: `lanes` holds four f64.
        unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(s0, s1)) };
        lanes.iter().sum::<f64>()
            + crate::kernels::f16::encode_f16_plain(
                &src[..first],
                scale,
                &mut dst[..first],
                &pos[..first],
                (lo, hi),
            )
            + crate::kernels::f16::encode_f16_plain(
                &src[body..],
                scale,
                &mut dst[body..],
                &pos[body..],
                (lo, hi),
            )
    }

    /// Sum of the 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn hsum(v: __m256) -> f32 {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)))
    }
}

/// The AVX-512 VNNI row kernel: two blocks per dot-product instruction.
mod avx512 {
    use super::avx2;
    use crate::kernels::quant::QActs;
    use std::arch::x86_64::*;

    /// Sixteen f32 lanes: the first eight accumulate even blocks, the last eight odd ones.
    pub(super) struct Acc(__m512);

    impl Default for Acc {
        fn default() -> Self {
            // SAFETY: all zero bits are a valid `__m512` (sixteen 0.0 lanes); no instruction
            // beyond x86-64's writes them.
            Self(unsafe { std::mem::zeroed() })
        }
    }

    /// One row's dot product with the activations, compiled for AVX-512 VNNI: pairs of blocks
    /// per instruction. `KIND`: 0 Q4_0, 1 Q4_1, 2 Q8_0.
    ///
    /// # Safety
    ///
    /// The CPU runs AVX-512 F/BW/DQ/VNNI, AVX2, FMA and F16C, and the pointers and `nb` are
    /// [`avx2::row_parts`]' for a row of `KIND` and `a`.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn row<const KIND: u8>(
        d: *const u16,
        m: *const u16,
        q: *const u8,
        a: &QActs,
        nb: usize,
    ) -> f32 {
        // SAFETY: the caller's contract, passed on.
        unsafe { avx2::dot_row::<KIND, true>(d, m, q, a, nb) }
    }

    /// Adds blocks `b` and `b + 1` (values at `q`, activations at `qa`, scales `s0`, `s1`)
    /// into `acc`: one VNNI dot product for both.
    ///
    /// # Safety
    ///
    /// The CPU runs AVX-512 F/BW/DQ/VNNI, AVX2 and FMA; `q` points to the two blocks' packed
    /// values (32 bytes for `KIND` 0 and 1, 64 for 2) and `qa` to their 64 activations.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,avx2,fma")]
    pub(super) unsafe fn pair<const KIND: u8>(
        acc: &mut Acc,
        q: *const u8,
        qa: *const i8,
        s0: f32,
        s1: f32,
    ) {
        // SAFETY: the caller passes two consecutive blocks' values at `q` (32 or 64 bytes)
        // and their 64 activations at `qa`.
        let x = unsafe { _mm512_loadu_si512(qa.cast()) };
        let sums = if KIND == 2 {
            // SAFETY: as above.
            let w = unsafe { _mm512_loadu_si512(q.cast()) };
            // |w| · (x with w's sign): unsigned × signed, as VNNI needs.
            let negative = _mm512_movepi8_mask(w);
            let sx = _mm512_mask_sub_epi8(x, negative, _mm512_setzero_si512(), x);
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), sx)
        } else {
            // SAFETY: as above: 16 bytes of nibbles per block, the two blocks adjacent.
            let qs = unsafe { _mm256_loadu_si256(q.cast()) };
            let low4 = _mm256_set1_epi8(0xF);
            let lo = _mm256_and_si256(qs, low4);
            let hi = _mm256_and_si256(_mm256_srli_epi16(qs, 4), low4);
            // [lo0, lo1, hi0, hi1] → [lo0, hi0, lo1, hi1]: each block's 32 values in order.
            let w = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            let w = _mm512_shuffle_i64x2(w, w, 0b11_01_10_00);
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x)
        };
        let scale = _mm512_insertf32x8(_mm512_set1_ps(s0), _mm256_set1_ps(s1), 1);
        acc.0 = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(sums), acc.0);
    }

    /// The two halves of `acc` added: 8 lanes.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) fn fold(acc: &Acc) -> __m256 {
        _mm256_add_ps(
            _mm512_castps512_ps256(acc.0),
            _mm512_extractf32x8_ps(acc.0, 1),
        )
    }
}
