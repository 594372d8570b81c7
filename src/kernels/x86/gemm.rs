//! The prompt kernel of Q4_0, Q4_1 and Q8_0 in AVX2 (the K-quants' is `kquant::tile`): one
//! weight row against four rows of 8-bit activations, each weight block unpacked once and
//! multiplied four times (the row kernel unpacks it once per token).
//! [`super::super::quant::dot4_plain`] is its plain twin.

use std::arch::x86_64::*;

use half::f16;

use super::avx2::{block_unpacked, hsum, row_parts, unpack};
use super::Avx2;
use crate::kernels::quant::{Packed, QActs, QKind, BLOCK};

/// Row `r` of `w` · each of the four activations `a`: four [`super::dot`]s for the price of
/// one weight read. Panics if `w` is a K-quant or some `a[i]` does not hold `w.cols()`
/// activations.
pub fn dot4(_cpu: Avx2, w: &Packed, r: usize, a: [&QActs; 4]) -> [f32; 4] {
    assert!(!w.kind().is_k(), "the K-quants' prompts go through `tile`");
    let (d, m, q, nb) = row_parts(w, r, a[0]);
    for x in &a[1..] {
        assert!(x.q.len() >= nb * BLOCK && x.d.len() >= nb && x.ds.len() >= nb);
    }
    // SAFETY: the token proves AVX2, FMA and F16C; `row_parts` checked every read of the row
    // and of `a[0]` is in bounds, the loop above those of the other activations; `w`'s kind
    // picks `KIND`.
    unsafe {
        match w.kind() {
            QKind::Q4_0 => rows4::<0>(d, m, q, a, nb),
            QKind::Q4_1 => rows4::<1>(d, m, q, a, nb),
            QKind::Q8_0 => rows4::<2>(d, m, q, a, nb),
            QKind::Q4K | QKind::Q5K | QKind::Q6K => unreachable!("refused above"),
        }
    }
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
