//! llama.cpp's K-quants (Q4_K, Q5_K, Q6_K: 256-value super-blocks) repacked for the kernels,
//! their dequantization, and their dot product with 8-bit activations in plain Rust (the
//! portable twin of `super::super::x86::kquant`).
//!
//! A super-block keeps its file layout but for the scales: each row's `d` (and the Q4_K/Q5_K
//! `dmin`) go to [`super::Packed`]'s scale arrays, the rest to its values, as
//! - Q4_K: `[sc: u8; 8] [m: u8; 8] [qs: u8; 128]` (144 bytes): the twelve bytes of 6-bit
//!   scales and minimums decoded, one byte each; `qs[32j + l]` holds value `64j + l` in its
//!   low nibble and `64j + 32 + l` in its high one (sub-blocks `2j` and `2j + 1`).
//! - Q5_K: `[sc; 8] [m; 8] [qh: u8; 32] [qs; 128]` (176 bytes): as Q4_K, and bit `s` of
//!   `qh[l]` is the fifth bit (16) of value `l` of sub-block `s`.
//! - Q6_K: `[sc: i8; 16] [ql: u8; 128] [qh: u8; 64]` (208 bytes): in half `h` (128 values),
//!   32-value block `k` (0..4) takes its low four bits from `ql[64h + 32(k & 1) + l]` (low
//!   nibble for `k < 2`, high one otherwise) and its top two from bits `2k, 2k + 1` of
//!   `qh[32h + l]`; scale `sc[i]` covers values `16i..16i + 16`.
//!
//! The dot product takes activations in llama.cpp's Q8_K form (one scale `da` per 256
//! values, the sums of each 16) and sums each super-block in integers: see [`dot_plain`].

use half::f16;

use super::{QActs, QKind, BLOCK};

/// Values per super-block.
pub const SUPER: usize = 256;

/// Bytes of the decoded scales (and minimums) at the start of a repacked super-block.
pub(in crate::kernels) const SCALES: usize = 16;

/// Repacked bytes per super-block (besides `d` and `dmin`).
pub(in crate::kernels) fn packed_bytes(kind: QKind) -> usize {
    match kind {
        QKind::Q4K => SCALES + 128,
        QKind::Q5K => SCALES + 32 + 128,
        _ => SCALES + 128 + 64,
    }
}

fn half_at(b: &[u8], at: usize) -> f16 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Scale and minimum `j` (0..8) of Q4_K/Q5_K's twelve bytes of 6-bit values.
fn scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// One GGML super-block `blk` of `kind` (a K-quant) in the layout above: all but its scale
/// (and Q4_K/Q5_K `dmin`, which the caller takes from bytes 2..4) written to `qs`
/// ([`packed_bytes`] bytes); its scale returned.
pub(super) fn repack(kind: QKind, blk: &[u8], qs: &mut [u8]) -> f16 {
    match kind {
        QKind::Q4K | QKind::Q5K => {
            let scales = &blk[4..16];
            for j in 0..8 {
                (qs[j], qs[8 + j]) = scale_min(j, scales);
            }
            // Q5_K: qh then qs, as in the file.
            qs[SCALES..].copy_from_slice(&blk[16..]);
            half_at(blk, 0)
        }
        _ => {
            qs[..SCALES].copy_from_slice(&blk[192..208]);
            qs[SCALES..].copy_from_slice(&blk[..192]);
            half_at(blk, 208)
        }
    }
}

/// Value `i` (0..256) of a repacked super-block `sb`: Q4_K/Q5_K's unsigned `q` (0..16 or
/// 0..32), Q6_K's `q − 32`.
#[inline]
fn value(kind: QKind, sb: &[u8], i: usize) -> i32 {
    match kind {
        QKind::Q4K | QKind::Q5K => {
            let (j, l, high) = (i / 64, i % 32, (i / 32) % 2 == 1);
            let off = if kind == QKind::Q5K {
                SCALES + 32
            } else {
                SCALES
            };
            let byte = sb[off + 32 * j + l];
            let nib = if high { byte >> 4 } else { byte & 0xF } as i32;
            if kind == QKind::Q5K {
                nib | (((sb[SCALES + l] >> (i / 32)) & 1) as i32) << 4
            } else {
                nib
            }
        }
        _ => {
            let (h, k, l) = (i / 128, (i / 32) % 4, i % 32);
            let byte = sb[SCALES + 64 * h + 32 * (k & 1) + l];
            let low = if k < 2 { byte & 0xF } else { byte >> 4 } as i32;
            let top = ((sb[SCALES + 128 + 32 * h + l] >> (2 * k)) & 3) as i32;
            (low | top << 4) - 32
        }
    }
}

/// A row of a K-quant as f32: `d`, `m` and `qs` as [`super::Packed::row`] gives them.
pub(super) fn dequantize(kind: QKind, d: &[f16], m: &[f16], qs: &[u8], out: &mut [f32]) {
    let pb = packed_bytes(kind);
    for (i, out) in out.chunks_exact_mut(SUPER).enumerate() {
        let (sb, dw) = (&qs[i * pb..(i + 1) * pb], d[i].to_f32());
        if kind == QKind::Q6K {
            for (v, o) in out.iter_mut().enumerate() {
                *o = dw * (sb[v / 16] as i8) as f32 * value(kind, sb, v) as f32;
            }
        } else {
            let dm = m[i].to_f32();
            for (v, o) in out.iter_mut().enumerate() {
                let (sc, mn) = (sb[v / 32] as f32, sb[8 + v / 32] as f32);
                *o = dw * sc * value(kind, sb, v) as f32 - dm * mn;
            }
        }
    }
}

/// A row of a K-quant · the activations `a` (in the K-quants' form, [`QActs::quantize_k`]),
/// in plain Rust: `d`, `m` and `qs` as [`super::Packed::row`] gives them. Per super-block
/// `i`, in integers: Q4_K/Q5_K `Σ sc·Σ(q·a)` and `Σ m·(sum of the 32 activations)`, Q6_K
/// `Σ sc·Σ(q·a) − 32·Σ sc·(sum of the 16 activations)` (its `q` unsigned, 0..64), then in
/// f32 `da·(d·isum − dmin·msum)` (Q6_K `d·da·isum`).
pub(super) fn dot_plain(kind: QKind, d: &[f16], m: &[f16], qs: &[u8], a: &QActs) -> f32 {
    assert!(a.k, "the K-quants need activations in their form");
    dot_plain_with(kind, d, m, qs, |i| {
        (
            &a.q[i * SUPER..(i + 1) * SUPER],
            a.d[i],
            &a.s16[i * 16..(i + 1) * 16],
        )
    })
}

/// [`dot_plain`] with the activations of super-block `i` from `acts(i)`: its 256 values,
/// scale and sums of 16.
pub(super) fn dot_plain_with<'a>(
    kind: QKind,
    d: &[f16],
    m: &[f16],
    qs: &[u8],
    acts: impl Fn(usize) -> (&'a [i8], f32, &'a [i16]),
) -> f32 {
    let pb = packed_bytes(kind);
    let mut acc = 0f32;
    for (i, &dw) in d.iter().enumerate() {
        let (sb, dw) = (&qs[i * pb..(i + 1) * pb], dw.to_f32());
        let (qa, da, sums) = acts(i);
        let dot = |from: usize| -> i32 {
            (from..from + 16)
                .map(|v| value(kind, sb, v) * qa[v] as i32)
                .sum()
        };
        if kind == QKind::Q6K {
            let mut isum = 0i32;
            for (c, &sc) in sb[..16].iter().enumerate() {
                let sc = (sc as i8) as i32;
                // `value` is q − 32: Σ(q − 32)·a = Σ q·a − 32·(sum of the 16), exactly.
                isum += sc * dot(16 * c);
            }
            acc += dw * da * isum as f32;
        } else {
            let (mut isum, mut msum) = (0i32, 0i32);
            for s in 0..SUPER / BLOCK {
                isum += sb[s] as i32 * (dot(32 * s) + dot(32 * s + 16));
                msum += sb[8 + s] as i32 * (sums[2 * s] as i32 + sums[2 * s + 1] as i32);
            }
            acc += da * (dw * isum as f32 - m[i].to_f32() * msum as f32);
        }
    }
    acc
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(super) mod tests {
    use super::super::Packed;
    use super::*;
    use crate::kernels::random_vec;
    use candle_core::quantized::{GgmlDType, QStorage, QTensor};
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};
    use std::borrow::Cow;

    fn dtype(kind: QKind) -> GgmlDType {
        match kind {
            QKind::Q4K => GgmlDType::Q4K,
            QKind::Q5K => GgmlDType::Q5K,
            QKind::Q6K => GgmlDType::Q6K,
            _ => unreachable!("not a K-quant"),
        }
    }

    /// Random values, each row at its own scale, quantized by candle: (rows, cols) of
    /// `kind`'s GGML blocks.
    pub(in crate::kernels) fn random_blocks(
        kind: QKind,
        rows: usize,
        cols: usize,
        seed: u64,
    ) -> Vec<u8> {
        let mut x = random_vec(rows * cols, seed);
        for (r, row) in x.chunks_exact_mut(cols).enumerate() {
            let (k, shift) = (0.02 + 0.03 * (r % 5) as f32, 0.05 * (r % 3) as f32);
            row.iter_mut().for_each(|v| *v = *v * k + shift);
        }
        let t = Tensor::from_vec(x, (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, dtype(kind)).unwrap();
        q.data().unwrap().into_owned()
    }

    /// Random bytes as `kind`'s blocks, but for finite `d` and `dmin`: every bit pattern of
    /// the scales and values.
    pub(in crate::kernels) fn random_bytes(
        kind: QKind,
        rows: usize,
        cols: usize,
        seed: u64,
    ) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let nb = rows * cols / SUPER;
        let mut data: Vec<u8> = (0..nb * kind.block_bytes()).map(|_| rng.random()).collect();
        for blk in data.chunks_exact_mut(kind.block_bytes()) {
            let mut half = |at: usize, v: f32| {
                blk[at..at + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes())
            };
            if kind == QKind::Q6K {
                half(208, rng.random_range(0.0001..0.01));
            } else {
                half(0, rng.random_range(0.0001..0.01));
                half(2, rng.random_range(0.0001..0.01));
            }
        }
        data
    }

    fn candle_rows(kind: QKind, rows: usize, cols: usize, data: &[u8]) -> Vec<f32> {
        let storage = QStorage::from_data(Cow::Borrowed(data), &Device::Cpu, dtype(kind));
        let q = QTensor::new(storage.unwrap(), (rows, cols)).unwrap();
        let t = q.dequantize(&Device::Cpu).unwrap();
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn rows_dequantize_as_candle_does() {
        for kind in [QKind::Q4K, QKind::Q5K, QKind::Q6K] {
            let (rows, cols) = (5, 768);
            for data in [
                random_blocks(kind, rows, cols, 20),
                random_bytes(kind, rows, cols, 21),
            ] {
                let want = candle_rows(kind, rows, cols, &data);
                let w = Packed::from_ggml(kind, rows, cols, &data).unwrap();
                let mut got = vec![0f32; cols];
                for r in 0..rows {
                    w.dequantize_row(r, &mut got);
                    assert_eq!(got, want[r * cols..(r + 1) * cols], "{kind:?} row {r}");
                }
            }
        }
    }

    #[test]
    fn repacked_k_quants_keep_the_file_size_and_refuse_partial_super_blocks() {
        for kind in [QKind::Q4K, QKind::Q5K, QKind::Q6K] {
            let (rows, cols) = (3, 512);
            let file = rows * cols / SUPER * kind.block_bytes();
            let w = Packed::from_ggml(kind, rows, cols, &vec![0; file]).unwrap();
            // Q4_K/Q5_K: four more bytes per super-block (the decoded scales); Q6_K the same.
            assert!(
                w.bytes() >= file && w.bytes() * 100 <= file * 103,
                "{kind:?}"
            );
            let row_bytes = 2 * kind.block_bytes();
            assert!(Packed::from_ggml(kind, 2, 288, &vec![0; row_bytes]).is_none());
            assert!(Packed::from_ggml(kind, 2, 256, &vec![0; row_bytes + 1]).is_none());
        }
    }
    #[test]
    fn k_activations_round_trip_within_half_a_step_with_sums_of_16() {
        let x = random_vec(512, 30);
        let mut a = QActs::default();
        a.quantize_k(&x);
        assert!(a.is_k() && a.d.len() == 2 && a.s16.len() == 32);
        for (i, v) in x.iter().enumerate() {
            let back = a.q[i] as f32 * a.d[i / SUPER];
            assert!((back - v).abs() <= 0.51 * a.d[i / SUPER] + 1e-6);
        }
        for (g, &s) in a.s16.iter().enumerate() {
            let want: i32 = a.q[16 * g..16 * g + 16].iter().map(|&q| q as i32).sum();
            assert_eq!(s as i32, want);
        }
        a.quantize_k(&[0.0; 256]);
        assert!(a.d == [0.0] && a.q.iter().all(|&q| q == 0));
    }

    /// Every bit pattern of scales and values against activations at full scale (±127 in
    /// places): the SIMD kernels' integer sums neither saturate nor overflow where the plain
    /// ones do not, for one activation row and for four.
    #[test]
    fn simd_kernels_match_plain_on_extreme_bytes() {
        for kind in [QKind::Q4K, QKind::Q5K, QKind::Q6K] {
            let (rows, cols) = (9, 2048);
            let data = random_bytes(kind, rows, cols, 31);
            let w = Packed::from_ggml(kind, rows, cols, &data).unwrap();
            let acts: Vec<QActs> = (0..5)
                .map(|t| {
                    let mut x = random_vec(cols, 40 + t);
                    // Runs of the extremes: the largest products and sums of 16.
                    for (i, v) in x.iter_mut().enumerate() {
                        if (i / 16 + t as usize).is_multiple_of(3) {
                            *v = if t % 2 == 0 { 1.0 } else { -1.0 };
                        }
                    }
                    let mut a = QActs::default();
                    a.quantize_k(&x);
                    a
                })
                .collect();
            let mut fast = vec![0f32; acts.len() * rows];
            crate::kernels::matmat(&w, &acts, &mut fast);
            for (t, a) in acts.iter().enumerate() {
                let mut one = vec![0f32; rows];
                crate::kernels::matvec(&w, a, &mut one);
                for r in 0..rows {
                    let (d, m, qs) = w.row(r);
                    let p = dot_plain(kind, d, m, qs, a);
                    for f in [one[r], fast[t * rows + r]] {
                        assert!(
                            (p - f).abs() <= 1e-4 * p.abs().max(1.0),
                            "{kind:?} row {t},{r}: {p} vs {f}"
                        );
                    }
                }
            }
        }
    }
}
