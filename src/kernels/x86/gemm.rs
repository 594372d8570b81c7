//! The prompt kernel of Q4_0, Q4_1 and Q8_0 in AVX2 (the K-quants' is `kquant::tile`): one
//! weight row against four rows of 8-bit activations, each weight block unpacked once and
//! multiplied four times (the row kernel unpacks it once per token).
//! [`super::super::quant::dot4_plain`] is its plain twin.

use std::arch::x86_64::*;

use half::f16;

use super::avx2::{block_unpacked, hsum, row_parts, unpack};
use super::{Avx2, Vnni};
use crate::kernels::quant::{Packed, QActs, QKind, BLOCK};

/// Row `r` of `w` · each of the four activations `a`: four [`super::dot`]s for the price of
/// one weight read. Panics if `w` is a K-quant or some `a[i]` does not hold `w.cols()`
/// activations.
pub fn dot4(_cpu: Avx2, w: &Packed, r: usize, a: [&QActs; 4]) -> [f32; 4] {
    let (d, m, q, nb) = parts4(w, r, a);
    // SAFETY: the token proves AVX2, FMA and F16C; `parts4` checked every read of the row and
    // of the activations; `w`'s kind picks `KIND`.
    unsafe {
        match w.kind() {
            QKind::Q4_0 => rows4::<0>(d, m, q, a, nb),
            QKind::Q4_1 => rows4::<1>(d, m, q, a, nb),
            QKind::Q8_0 => rows4::<2>(d, m, q, a, nb),
            QKind::Q4K | QKind::Q5K | QKind::Q6K => unreachable!("refused above"),
        }
    }
}

/// Row `r` of `w` as the raw pointers the kernels read, after checking that every read of
/// the row and of the four activations is in bounds (`row_parts` for the first).
fn parts4(w: &Packed, r: usize, a: [&QActs; 4]) -> super::avx2::RowParts {
    assert!(!w.kind().is_k(), "the K-quants' prompts go through `tile`");
    let parts = row_parts(w, r, a[0]);
    let nb = parts.3;
    for x in &a[1..] {
        assert!(x.q.len() >= nb * BLOCK && x.d.len() >= nb && x.ds.len() >= nb);
    }
    parts
}

/// The body of [`dot4`]. `KIND`: 0 Q4_0, 1 Q4_1, 2 Q8_0.
///
/// # Safety
///
/// The CPU runs AVX2, FMA and F16C; the pointers and `nb` are `row_parts`' for a row of
/// `KIND`, and each of `a` holds `nb` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows4<const KIND: u8>(
    d: *const u16,
    m: *const u16,
    q: *const u8,
    a: [&QActs; 4],
    nb: usize,
) -> [f32; 4] {
    let v = if KIND == 2 { 32 } else { 16 };
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut off = [0f32; 4];
    for b in 0..nb {
        // SAFETY: block `b` exists in the row and in every activation (the caller's
        // contract); the CPU runs AVX2, FMA and F16C.
        unsafe {
            let dw = f16::from_bits(*d.add(b)).to_f32();
            let w = unpack::<KIND>(q.add(b * v));
            let bias = match KIND {
                0 => -8.0 * dw,
                1 => f16::from_bits(*m.add(b)).to_f32(),
                _ => 0.0,
            };
            for (i, x) in a.iter().enumerate() {
                let s = block_unpacked::<KIND>(w, x.q.as_ptr().add(b * BLOCK));
                acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(dw * *x.d.get_unchecked(b)), s, acc[i]);
                off[i] += bias * *x.ds.get_unchecked(b);
            }
        }
    }
    [0, 1, 2, 3].map(|i| hsum(acc[i]) + off[i])
}

/// [`dot4`] on a CPU with AVX-512 VNNI: pairs of blocks per dot-product instruction, each
/// pair unpacked once for the four tokens.
pub fn dot4_vnni(_cpu: Vnni, w: &Packed, r: usize, a: [&QActs; 4]) -> [f32; 4] {
    let (d, m, q, nb) = parts4(w, r, a);
    // SAFETY: the token proves AVX-512 F/BW/DQ/VNNI, AVX2, FMA and F16C; `parts4` checked
    // every read of the row and of the activations; `w`'s kind picks `KIND`.
    unsafe {
        match w.kind() {
            QKind::Q4_0 => rows4_wide::<0>(d, m, q, a, nb),
            QKind::Q4_1 => rows4_wide::<1>(d, m, q, a, nb),
            QKind::Q8_0 => rows4_wide::<2>(d, m, q, a, nb),
            QKind::Q4K | QKind::Q5K | QKind::Q6K => unreachable!("refused above"),
        }
    }
}

/// The body of [`dot4_vnni`]. Per eight blocks: their scales converted once and multiplied
/// by each token's, the Q4_0/Q4_1 offsets as one 8-wide product with the token's `ds`; per
/// pair of blocks: the weights unpacked into one 512-bit register (the first block's 32
/// values in the low half), one `dpbusd` per token, its two halves scaled by their blocks'
/// products (spread by a permute). The last `nb % 8` blocks one at a time, in AVX2.
///
/// # Safety
///
/// The CPU runs AVX-512 F/BW/DQ/VNNI, AVX2, FMA and F16C; the pointers and `nb` are
/// `row_parts`' for a row of `KIND`, and each of `a` holds `nb` blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn rows4_wide<const KIND: u8>(
    d: *const u16,
    m: *const u16,
    q: *const u8,
    a: [&QActs; 4],
    nb: usize,
) -> [f32; 4] {
    let v = if KIND == 2 { 32 } else { 16 };
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut off = [_mm256_setzero_ps(); 4];
    // Pair k of eight blocks: block 2k's product in the low eight lanes, 2k + 1's in the high.
    let pair = |k: i32| {
        _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_set1_epi32(2 * k)),
            _mm256_set1_epi32(2 * k + 1),
        )
    };
    let spread = [pair(0), pair(1), pair(2), pair(3)];
    let low4 = _mm256_set1_epi8(0xF);
    let groups = nb / 8;
    for g in 0..groups {
        let b = g * 8;
        // SAFETY: blocks `b..b + 8` exist in the row and in every activation (the caller's
        // contract); the CPU runs AVX-512 F/BW/DQ/VNNI, AVX2, FMA and F16C.
        unsafe {
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(d.add(b).cast()));
            let bias = match KIND {
                0 => _mm256_mul_ps(dw, _mm256_set1_ps(-8.0)),
                1 => _mm256_cvtph_ps(_mm_loadu_si128(m.add(b).cast())),
                _ => _mm256_setzero_ps(),
            };
            let mut scale = [_mm512_setzero_ps(); 4];
            for (i, x) in a.iter().enumerate() {
                if KIND != 2 {
                    off[i] = _mm256_fmadd_ps(bias, _mm256_loadu_ps(x.ds.as_ptr().add(b)), off[i]);
                }
                scale[i] =
                    _mm512_castps256_ps512(_mm256_mul_ps(dw, _mm256_loadu_ps(x.d.as_ptr().add(b))));
            }
            for (k, spread) in spread.iter().enumerate() {
                let b0 = b + 2 * k;
                let w = if KIND == 2 {
                    _mm512_loadu_si512(q.add(b0 * v).cast())
                } else {
                    let qs = _mm256_loadu_si256(q.add(b0 * v).cast());
                    let lo = _mm256_and_si256(qs, low4);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(qs), low4);
                    // [lo0, lo1, hi0, hi1] → [lo0, hi0, lo1, hi1]: each block's values in order.
                    let w = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                    _mm512_shuffle_i64x2::<0b11_01_10_00>(w, w)
                };
                // Q8_0: |w| · (x with w's sign), unsigned × signed as VNNI needs.
                let (uw, negative) = if KIND == 2 {
                    (_mm512_abs_epi8(w), _mm512_movepi8_mask(w))
                } else {
                    (w, 0)
                };
                for (i, x) in a.iter().enumerate() {
                    let mut xv = _mm512_loadu_si512(x.q.as_ptr().add(b0 * BLOCK).cast());
                    if KIND == 2 {
                        xv = _mm512_mask_sub_epi8(xv, negative, _mm512_setzero_si512(), xv);
                    }
                    let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), uw, xv);
                    let s = _mm512_permutexvar_ps(*spread, scale[i]);
                    acc[i] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(sums), acc[i]);
                }
            }
        }
    }
    let mut out = [0f32; 4];
    for (i, x) in a.iter().enumerate() {
        let folded = _mm256_add_ps(
            _mm512_castps512_ps256(acc[i]),
            _mm512_extractf32x8_ps::<1>(acc[i]),
        );
        let mut total = _mm256_add_ps(folded, off[i]);
        let mut tail = 0f32;
        for b in groups * 8..nb {
            // SAFETY: block `b` exists in the row and in `x` (the caller's contract); the CPU
            // runs AVX2, FMA and F16C.
            unsafe {
                let dw = f16::from_bits(*d.add(b)).to_f32();
                let s = block_unpacked::<KIND>(
                    unpack::<KIND>(q.add(b * v)),
                    x.q.as_ptr().add(b * BLOCK),
                );
                total = _mm256_fmadd_ps(_mm256_set1_ps(dw * *x.d.as_ptr().add(b)), s, total);
                tail += match KIND {
                    0 => -8.0 * dw * *x.ds.as_ptr().add(b),
                    1 => f16::from_bits(*m.add(b)).to_f32() * *x.ds.as_ptr().add(b),
                    _ => 0.0,
                };
            }
        }
        out[i] = hsum(total) + tail;
    }
    out
}
