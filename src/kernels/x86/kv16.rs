//! The AVX2 versions of `super::super::kv`'s attention kernels over cached keys and values
//! stored as f16 (converted by F16C) or as Q8_0 blocks (signed bytes widened to f32, times
//! the block's f16 scale).
//!
//! As in the parent module: each safe function takes the [`Avx2`] token, which exists only on
//! a CPU that runs AVX2, FMA and F16C, and asserts the shapes its kernel reads. The tests in
//! `kernels::kv` check each against its plain twin.

#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use half::f16;

use super::Avx2;
use crate::kernels::{Q8_BLOCK, Q8_BLOCK_BYTES};

/// `scores_kv` over f16 keys in AVX2. Panics unless `q.len() % 8 == 0` and `k` holds
/// `out.len()` rows of `q.len()`.
#[inline]
pub fn scores_f16(_cpu: Avx2, q: &[f32], k: &[f16], scale: f32, out: &mut [f32]) {
    assert!(q.len().is_multiple_of(8) && k.len() >= out.len() * q.len());
    // SAFETY: the token proves AVX2, FMA and F16C; the shapes are asserted.
    unsafe { imp::scores_f16(q, k, scale, out) }
}

/// `weighted_sum_kv` over f16 values in AVX2. Panics unless `out.len() % 64 == 0` and `v`
/// holds `p.len()` rows of `out.len()`.
#[inline]
pub fn weighted_sum_f16(_cpu: Avx2, p: &[f32], v: &[f16], out: &mut [f32]) {
    assert!(out.len().is_multiple_of(64) && v.len() >= p.len() * out.len());
    // SAFETY: the token proves AVX2, FMA and F16C; the shapes are asserted.
    unsafe { imp::weighted_sum_f16(p, v, out) }
}

/// `scores_kv` over Q8_0 keys in AVX2. Panics unless `q.len() % 32 == 0` and `k` holds
/// `out.len()` Q8_0 rows of `q.len()` values.
#[inline]
pub fn scores_q8_0(_cpu: Avx2, q: &[f32], k: &[u8], scale: f32, out: &mut [f32]) {
    let d = q.len();
    assert!(d.is_multiple_of(Q8_BLOCK) && k.len() >= out.len() * (d / Q8_BLOCK * Q8_BLOCK_BYTES));
    // SAFETY: the token proves AVX2, FMA and F16C; the shapes are asserted.
    unsafe { imp::scores_q8_0(q, k, scale, out) }
}

/// `weighted_sum_kv` over Q8_0 values in AVX2. Panics unless `out.len() % 32 == 0` and `v`
/// holds `p.len()` Q8_0 rows of `out.len()` values.
#[inline]
pub fn weighted_sum_q8_0(_cpu: Avx2, p: &[f32], v: &[u8], out: &mut [f32]) {
    let d = out.len();
    assert!(d.is_multiple_of(Q8_BLOCK) && v.len() >= p.len() * (d / Q8_BLOCK * Q8_BLOCK_BYTES));
    // SAFETY: the token proves AVX2, FMA and F16C; the shapes are asserted.
    unsafe { imp::weighted_sum_q8_0(p, v, out) }
}

/// `decode_kv` of f16 rows in AVX2/F16C. Panics unless `x` and `out` have the same length.
#[inline]
pub fn f16_to_f32(_cpu: Avx2, x: &[f16], out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    // SAFETY: the token proves AVX2 and F16C; the lengths are asserted.
    unsafe { imp::f16_to_f32(x, out) }
}

/// The `#[target_feature]` kernels.
mod imp {
    use crate::kernels::{Q8_BLOCK, Q8_BLOCK_BYTES};
    use half::f16;
    use std::arch::x86_64::*;

    /// Eight f16 at `p` as f32.
    ///
    /// # Safety
    ///
    /// The CPU runs AVX2 and F16C; `p` points to 8 readable f16.
    #[inline(always)]
    unsafe fn load8_f16(p: *const f16) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }

    /// Eight signed bytes at `p` as f32.
    ///
    /// # Safety
    ///
    /// The CPU runs AVX2; `p` points to 8 readable bytes.
    #[inline(always)]
    unsafe fn load8_i8(p: *const u8) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast()))) }
    }

    /// The f16 scale at the start of a Q8_0 block.
    ///
    /// # Safety
    ///
    /// `p` points to 2 readable bytes.
    #[inline(always)]
    unsafe fn block_scale(p: *const u8) -> f32 {
        // SAFETY: the caller's contract; an unaligned read of two bytes.
        f16::from_bits(u16::from_le(unsafe { p.cast::<u16>().read_unaligned() })).to_f32()
    }

    /// Scores over f16 keys: four keys at a time on independent accumulators.
    ///
    /// # Safety
    ///
    /// The CPU runs AVX2, FMA and F16C; `q.len() % 8 == 0` and `k` holds `out.len()` rows
    /// of `q.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn scores_f16(q: &[f32], k: &[f16], scale: f32, out: &mut [f32]) {
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
                        *a = _mm256_fmadd_ps(qc, load8_f16(kp.add((s + j) * d + c)), *a);
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
                        load8_f16(kp.add(s * d + c)),
                        a,
                    );
                }
                c += 8;
            }
            out[s] = hsum(a) * scale;
            s += 1;
        }
    }

    /// Weighted sum of f16 values: 64 output values at a time held in registers over all
    /// rows.
    ///
    /// # Safety
    ///
    /// The CPU runs AVX2, FMA and F16C; `out.len() % 64 == 0` and `v` holds `p.len()` rows
    /// of `out.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn weighted_sum_f16(p: &[f32], v: &[f16], out: &mut [f32]) {
        let d = out.len();
        let vp = v.as_ptr();
        let mut c0 = 0;
        while c0 < d {
            let mut acc = [_mm256_setzero_ps(); 8];
            for (s, &w) in p.iter().enumerate() {
                let w = _mm256_set1_ps(w);
                for (r, a) in acc.iter_mut().enumerate() {
                    // SAFETY: row `s` exists and `c0 + 64 <= d` (the caller's contract).
                    *a = _mm256_fmadd_ps(w, unsafe { load8_f16(vp.add(s * d + c0 + 8 * r)) }, *a);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                // SAFETY: `c0 + 8·r + 8 <= d = out.len()`.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c0 + 8 * r), *a) };
            }
            c0 += 64;
        }
    }

    /// Scores over Q8_0 keys: per block, the 32 bytes widened to f32 against the query,
    /// times the block's scale.
    ///
    /// # Safety
    ///
    /// The CPU runs AVX2, FMA and F16C; `q.len() % 32 == 0` and `k` holds `out.len()` Q8_0
    /// rows of `q.len()` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn scores_q8_0(q: &[f32], k: &[u8], scale: f32, out: &mut [f32]) {
        let (d, n) = (q.len(), out.len());
        let (nb, row) = (d / Q8_BLOCK, d / Q8_BLOCK * Q8_BLOCK_BYTES);
        let (qp, kp) = (q.as_ptr(), k.as_ptr());
        for (s, o) in out.iter_mut().enumerate().take(n) {
            let mut tot = _mm256_setzero_ps();
            for b in 0..nb {
                // SAFETY: block `b` of row `s` (34 bytes at `at`) and query values
                // `32·b..32·b + 32` exist (the caller's contract).
                unsafe {
                    let at = kp.add(s * row + b * Q8_BLOCK_BYTES);
                    let qb = qp.add(b * Q8_BLOCK);
                    let mut a = _mm256_mul_ps(_mm256_loadu_ps(qb), load8_i8(at.add(2)));
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(qb.add(8)), load8_i8(at.add(10)), a);
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(qb.add(16)), load8_i8(at.add(18)), a);
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(qb.add(24)), load8_i8(at.add(26)), a);
                    tot = _mm256_fmadd_ps(_mm256_set1_ps(block_scale(at)), a, tot);
                }
            }
            *o = hsum(tot) * scale;
        }
    }

    /// Weighted sum of Q8_0 values: one block's 32 output values at a time held in registers
    /// over all rows, each row's bytes widened to f32 times `p[s]` · its block's scale.
    ///
    /// # Safety
    ///
    /// The CPU runs AVX2, FMA and F16C; `out.len() % 32 == 0` and `v` holds `p.len()` Q8_0
    /// rows of `out.len()` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn weighted_sum_q8_0(p: &[f32], v: &[u8], out: &mut [f32]) {
        let d = out.len();
        let (nb, row) = (d / Q8_BLOCK, d / Q8_BLOCK * Q8_BLOCK_BYTES);
        let vp = v.as_ptr();
        for b in 0..nb {
            let mut acc = [_mm256_setzero_ps(); 4];
            for (s, &w) in p.iter().enumerate() {
                // SAFETY: block `b` of row `s` (34 bytes at `at`) exists (the caller's
                // contract).
                unsafe {
                    let at = vp.add(s * row + b * Q8_BLOCK_BYTES);
                    let w = _mm256_set1_ps(w * block_scale(at));
                    for (r, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(w, load8_i8(at.add(2 + 8 * r)), *a);
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                // SAFETY: `32·b + 8·r + 8 <= d = out.len()`.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(b * Q8_BLOCK + 8 * r), *a) };
            }
        }
    }

    /// f16 to f32, eight values at a time, the rest one by one.
    ///
    /// # Safety
    ///
    /// The CPU runs AVX2 and F16C; `x` and `out` have the same length.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn f16_to_f32(x: &[f16], out: &mut [f32]) {
        let n = x.len();
        let body = n - n % 8;
        let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
        let mut i = 0;
        while i < body {
            // SAFETY: `i + 8 <= n`, within both slices (the caller's contract).
            unsafe { _mm256_storeu_ps(op.add(i), load8_f16(xp.add(i))) };
            i += 8;
        }
        for (o, v) in out[body..].iter_mut().zip(&x[body..]) {
            *o = v.to_f32();
        }
    }

    /// Sum of the 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)))
    }
}
