//! The AVX2 versions of `super::super::log8`'s kernels over MorphKV's 8-bit log codes: the
//! row encoder and the probability-weighted sum of code rows. Both work on the float's bits
//! as the plain codec does (see `kernels::log8`): encoding counts the mantissa thresholds
//! passed, decoding is a shift and an add of one of eight offsets (a lane permute), so a code
//! costs about what an f16 conversion does.
//!
//! As in the parent module: each safe function takes the [`Avx2`] token, which exists only on
//! a CPU that runs AVX2, FMA and F16C, and asserts the shapes its kernel reads. The tests in
//! `kernels::log8` check each against its plain twin.

#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use super::Avx2;

/// `axpy_rows_log8` in AVX2. Panics unless `w.len() == rows.len()` and every row is at least
/// `y.len()` long.
#[inline]
pub fn axpy_rows_log8(_cpu: Avx2, w: &[f32], rows: &[&[u8]], y: &mut [f32]) {
    assert!(w.len() == rows.len() && rows.iter().all(|r| r.len() >= y.len()));
    // SAFETY: the token proves AVX2 and FMA; the shapes are asserted.
    unsafe { imp::axpy_rows_log8(w, rows, y) }
}

/// `encode_log8` in AVX2. Panics unless `src`, `dst` and `pos` have the same length.
#[inline]
pub fn encode_log8(_cpu: Avx2, src: &[f32], dst: &mut [u8], pos: &[u32], lo_hi: (u32, u32)) -> f64 {
    assert!(src.len() == dst.len() && src.len() == pos.len());
    // SAFETY: the token proves AVX2; the lengths are asserted.
    unsafe { imp::encode_log8(src, dst, pos, lo_hi) }
}

/// The `#[target_feature]` kernels.
mod imp {
    use crate::kernels::log8::{self, OFFSETS, THRESHOLDS};
    use std::arch::x86_64::*;

    /// The codes in `c` (eight i32 lanes, 0..=255) decoded (see `log8::decode`): `(c << 20) +
    /// offsets[c & 7]`, 0 where `c` is 0.
    ///
    /// # Safety
    ///
    /// The CPU runs AVX2.
    #[inline(always)]
    unsafe fn decode8(c: __m256i, offsets: __m256i) -> __m256 {
        // SAFETY: the caller's contract (AVX2); no memory is touched.
        unsafe {
            // `permutevar8x32` reads the low 3 bits of each index: `c & 7`.
            let bits = _mm256_add_epi32(
                _mm256_slli_epi32::<20>(c),
                _mm256_permutevar8x32_epi32(offsets, c),
            );
            let zero = _mm256_cmpeq_epi32(c, _mm256_setzero_si256());
            _mm256_andnot_ps(_mm256_castsi256_ps(zero), _mm256_castsi256_ps(bits))
        }
    }

    /// Eight codes at `p`, decoded.
    ///
    /// # Safety
    ///
    /// The CPU runs AVX2; `p` points to 8 readable bytes.
    #[inline(always)]
    unsafe fn load8(p: *const u8, offsets: __m256i) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { decode8(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast())), offsets) }
    }

    /// [`crate::kernels::axpy_rows_log8`], eight columns at a time: as the f16 kernel
    /// (`super::super::avx2::axpy_rows_f16`), four rows per sweep over `y`, with
    /// non-temporal prefetches.
    ///
    /// # Safety
    ///
    /// The CPU runs AVX2 and FMA; `w.len() == rows.len()` and every row is at least
    /// `y.len()` long.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpy_rows_log8(w: &[f32], rows: &[&[u8]], y: &mut [f32]) {
        let n = y.len();
        let body = n - n % 8;
        let yp = y.as_mut_ptr();
        // SAFETY: `OFFSETS` holds eight u32.
        let offsets = unsafe { _mm256_loadu_si256(OFFSETS.as_ptr().cast()) };
        let mut i = 0;
        while i + 4 <= rows.len() {
            let (r0, r1, r2, r3) = (rows[i], rows[i + 1], rows[i + 2], rows[i + 3]);
            let (w0, w1) = (_mm256_set1_ps(w[i]), _mm256_set1_ps(w[i + 1]));
            let (w2, w3) = (_mm256_set1_ps(w[i + 2]), _mm256_set1_ps(w[i + 3]));
            let mut c = 0;
            while c < body {
                // SAFETY: `c + 8 <= n`, within `y` and within every row (the caller's contract).
                unsafe {
                    // As the f16 kernel: keep the ring, read once a step, out of L2/L3 (a
                    // prefetch past a row's end reads nothing and cannot fault).
                    if c % 64 == 0 {
                        _mm_prefetch::<_MM_HINT_NTA>(r0.as_ptr().wrapping_add(c + 512).cast());
                        _mm_prefetch::<_MM_HINT_NTA>(r1.as_ptr().wrapping_add(c + 512).cast());
                        _mm_prefetch::<_MM_HINT_NTA>(r2.as_ptr().wrapping_add(c + 512).cast());
                        _mm_prefetch::<_MM_HINT_NTA>(r3.as_ptr().wrapping_add(c + 512).cast());
                    }
                    let x0 = load8(r0.as_ptr().add(c), offsets);
                    let x1 = load8(r1.as_ptr().add(c), offsets);
                    let x2 = load8(r2.as_ptr().add(c), offsets);
                    let x3 = load8(r3.as_ptr().add(c), offsets);
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
                    let x = load8(r.as_ptr().add(c), offsets);
                    let acc = _mm256_fmadd_ps(wa, x, _mm256_loadu_ps(yp.add(c)));
                    _mm256_storeu_ps(yp.add(c), acc);
                }
                c += 8;
            }
        }
        for (a, r) in w.iter().zip(rows) {
            for (y, &x) in y[body..].iter_mut().zip(&r[body..n]) {
                *y += a * log8::decode(x);
            }
        }
    }

    /// The codes of the eight probabilities in `x` (i32 lanes, 0..=255), as `log8::encode`.
    ///
    /// # Safety
    ///
    /// The CPU runs AVX2.
    #[inline(always)]
    unsafe fn encode8(x: __m256) -> __m256i {
        // SAFETY: the caller's contract (AVX2); no memory is touched.
        unsafe {
            let bits = _mm256_castps_si256(x);
            let m = _mm256_and_si256(bits, _mm256_set1_epi32(0x7f_ffff));
            // 8 × the biased exponent (the sign is masked out below), less the bias.
            let e8 = _mm256_and_si256(_mm256_srli_epi32::<20>(bits), _mm256_set1_epi32(0x7f8));
            let mut c = _mm256_sub_epi32(e8, _mm256_set1_epi32(127 * 8 - 255));
            // Each threshold passed adds one (`m >= t` as `m > t - 1`: both below 2^23).
            for t in THRESHOLDS {
                let passed = _mm256_cmpgt_epi32(m, _mm256_set1_epi32(t as i32 - 1));
                c = _mm256_sub_epi32(c, passed);
            }
            let c = _mm256_min_epi32(
                _mm256_max_epi32(c, _mm256_setzero_si256()),
                _mm256_set1_epi32(255),
            );
            // 0 unless `x > 0` (false for NaN).
            let positive = _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_setzero_ps());
            _mm256_and_si256(c, _mm256_castps_si256(positive))
        }
    }

    /// [`crate::kernels::encode_log8`], sixteen values at a time.
    ///
    /// # Safety
    ///
    /// The CPU runs AVX2; `src`, `dst` and `pos` have the same length.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn encode_log8(
        src: &[f32],
        dst: &mut [u8],
        pos: &[u32],
        (lo, hi): (u32, u32),
    ) -> f64 {
        let n = src.len();
        let (sp, dp, pp) = (src.as_ptr(), dst.as_mut_ptr(), pos.as_ptr());
        // SAFETY: `OFFSETS` holds eight u32.
        let offsets = unsafe { _mm256_loadu_si256(OFFSETS.as_ptr().cast()) };
        // Unsigned `lo <= p < hi` as signed compares after flipping the sign bit.
        let flip = _mm256_set1_epi32(i32::MIN);
        let lo_v = _mm256_set1_epi32((lo ^ 0x8000_0000) as i32);
        let hi_v = _mm256_set1_epi32((hi ^ 0x8000_0000) as i32);
        let (mut s0, mut s1) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        // Streaming stores, as the f16 encoder's (see `super::super::avx2::encode_f16`), need
        // 16-byte alignment: values before the first boundary go through the plain twin.
        let first = dp.align_offset(16).min(n);
        let body = first + (n - first) / 16 * 16;
        let mut i = first;
        while i < body {
            // SAFETY: `i + 16 <= n`, within all three slices; `dp.add(i)` is 16-byte aligned
            // (`first` aligns it and `i - first` is a multiple of 16).
            unsafe {
                let c0 = encode8(_mm256_loadu_ps(sp.add(i)));
                let c1 = encode8(_mm256_loadu_ps(sp.add(i + 8)));
                // Eight i32 each, 0..=255: the saturating packs keep them, in order.
                let w0 = _mm_packus_epi32(
                    _mm256_castsi256_si128(c0),
                    _mm256_extracti128_si256::<1>(c0),
                );
                let w1 = _mm_packus_epi32(
                    _mm256_castsi256_si128(c1),
                    _mm256_extracti128_si256::<1>(c1),
                );
                _mm_stream_si128(dp.add(i).cast(), _mm_packus_epi16(w0, w1));
                for (c, at) in [(c0, i), (c1, i + 8)] {
                    let v = decode8(c, offsets);
                    let p = _mm256_xor_si256(_mm256_loadu_si256(pp.add(at).cast()), flip);
                    let below_lo = _mm256_cmpgt_epi32(lo_v, p);
                    let below_hi = _mm256_cmpgt_epi32(hi_v, p);
                    let keep = _mm256_andnot_si256(below_lo, below_hi);
                    let v = _mm256_and_ps(v, _mm256_castsi256_ps(keep));
                    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
                    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)));
                }
            }
            i += 16;
        }
        // Streaming stores are weakly ordered: fence them before the row is handed on.
        _mm_sfence();
        let mut lanes = [0f64; 4];
        // SAFETY: `lanes` holds four f64.
        unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(s0, s1)) };
        let plain = |r: std::ops::Range<usize>, dst: &mut [u8]| {
            crate::kernels::log8::encode_log8_plain(
                &src[r.clone()],
                &mut dst[r.clone()],
                &pos[r],
                (lo, hi),
            )
        };
        lanes.iter().sum::<f64>() + plain(0..first, dst) + plain(body..n, dst)
    }
}
