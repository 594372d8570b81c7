//! Cached keys and values stored as f16 or as GGML's Q8_0 blocks, in plain Rust: one query's
//! scores over such rows, the probability-weighted sum of such rows, and Q8_0's encoding and
//! decoding. The score and sum functions are the portable twins of the x86 kernels in
//! `super::x86::kv16`, which the facade's [`super::scores_kv`] and [`super::weighted_sum_kv`]
//! pick where the CPU runs them.
//!
//! A Q8_0 row of `d` values is `d / 32` blocks of [`Q8_BLOCK_BYTES`]: the block's scale as
//! f16 (little-endian), then 32 signed bytes; value `i` is `scale · q[i]` (llama.cpp's
//! `block_q8_0`, quantized as its `quantize_row_q8_0_ref`).

use half::f16;

use super::attention::axpy;
use super::quant::dot_f32;

/// Values per Q8_0 block.
pub const Q8_BLOCK: usize = 32;
/// Bytes per Q8_0 block: an f16 scale and 32 signed bytes.
pub const Q8_BLOCK_BYTES: usize = 2 + Q8_BLOCK;

/// Rows of cached keys or values as stored: `(n, d)` row-major, `d` values per row (a Q8_0
/// row takes `d / 32 · 34` bytes).
#[derive(Debug, Clone, Copy)]
pub enum KvRows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Q8_0(&'a [u8]),
}

impl<'a> KvRows<'a> {
    /// Rows `from..from + n` of rows holding `d` values each.
    pub fn rows(self, from: usize, n: usize, d: usize) -> Self {
        match self {
            Self::F32(x) => Self::F32(&x[from * d..(from + n) * d]),
            Self::F16(x) => Self::F16(&x[from * d..(from + n) * d]),
            Self::Q8_0(x) => {
                let r = d / Q8_BLOCK * Q8_BLOCK_BYTES;
                Self::Q8_0(&x[from * r..(from + n) * r])
            }
        }
    }
}

/// Encodes `x` (a multiple of 32 values) as Q8_0 blocks into `out` (`x.len() / 32 · 34`
/// bytes), as llama.cpp does: per block `scale = max|x| / 127`, `q = round(x / scale)`.
pub fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    assert!(x.len().is_multiple_of(Q8_BLOCK) && out.len() == x.len() / Q8_BLOCK * Q8_BLOCK_BYTES);
    for (xb, ob) in x
        .chunks_exact(Q8_BLOCK)
        .zip(out.chunks_exact_mut(Q8_BLOCK_BYTES))
    {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        ob[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        for (o, v) in ob[2..].iter_mut().zip(xb) {
            *o = ((v * id).round() as i8) as u8;
        }
    }
}

/// Decodes Q8_0 blocks (`q`) into `out`, 32 values per block.
pub fn dequantize_q8_0(q: &[u8], out: &mut [f32]) {
    assert!(out.len().is_multiple_of(Q8_BLOCK) && q.len() == out.len() / Q8_BLOCK * Q8_BLOCK_BYTES);
    for (qb, ob) in q
        .chunks_exact(Q8_BLOCK_BYTES)
        .zip(out.chunks_exact_mut(Q8_BLOCK))
    {
        let d = f16::from_le_bytes([qb[0], qb[1]]).to_f32();
        for (o, &v) in ob.iter_mut().zip(&qb[2..]) {
            *o = d * f32::from(v as i8);
        }
    }
}

/// [`super::decode_kv`] of f16 rows in plain Rust.
pub(super) fn f16_to_f32_plain(x: &[f16], out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = v.to_f32();
    }
}

/// [`super::scores_kv`] over f16 keys in plain Rust: `out[s] = scale · (q · k_s)`.
pub(super) fn scores_f16_plain(q: &[f32], k: &[f16], scale: f32, out: &mut [f32]) {
    for (o, ks) in out.iter_mut().zip(k.chunks_exact(q.len())) {
        *o = q.iter().zip(ks).map(|(a, b)| a * b.to_f32()).sum::<f32>() * scale;
    }
}

/// [`super::weighted_sum_kv`] over f16 values in plain Rust: `out = Σ_s p[s] · v_s`.
pub(super) fn weighted_sum_f16_plain(p: &[f32], v: &[f16], out: &mut [f32]) {
    out.fill(0.0);
    for (&w, vs) in p.iter().zip(v.chunks_exact(out.len())) {
        for (o, x) in out.iter_mut().zip(vs) {
            *o += w * x.to_f32();
        }
    }
}

/// [`super::scores_kv`] over Q8_0 keys in plain Rust: per block, `scale_b · (q · k_b)`.
pub(super) fn scores_q8_0_plain(q: &[f32], k: &[u8], scale: f32, out: &mut [f32]) {
    let row = q.len() / Q8_BLOCK * Q8_BLOCK_BYTES;
    let mut buf = vec![0f32; q.len()];
    for (o, ks) in out.iter_mut().zip(k.chunks_exact(row)) {
        dequantize_q8_0(ks, &mut buf);
        *o = dot_f32(q, &buf) * scale;
    }
}

/// [`super::weighted_sum_kv`] over Q8_0 values in plain Rust: `out = Σ_s p[s] · v_s`.
pub(super) fn weighted_sum_q8_0_plain(p: &[f32], v: &[u8], out: &mut [f32]) {
    let row = out.len() / Q8_BLOCK * Q8_BLOCK_BYTES;
    let mut buf = vec![0f32; out.len()];
    out.fill(0.0);
    for (&w, vs) in p.iter().zip(v.chunks_exact(row)) {
        dequantize_q8_0(vs, &mut buf);
        axpy(w, &buf, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{random_vec, scores, scores_kv, weighted_sum, weighted_sum_kv};

    /// `x` stored as each type, and what each stores (the values decoded back to f32).
    fn stored(x: &[f32]) -> (Vec<f16>, Vec<u8>, Vec<f32>, Vec<f32>) {
        let h: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
        let mut q = vec![0u8; x.len() / Q8_BLOCK * Q8_BLOCK_BYTES];
        quantize_q8_0(x, &mut q);
        let mut dq = vec![0f32; x.len()];
        dequantize_q8_0(&q, &mut dq);
        (h.clone(), q, h.iter().map(|v| v.to_f32()).collect(), dq)
    }

    #[test]
    fn q8_0_round_trips_within_half_a_step() {
        let mut x = random_vec(96, 50);
        x[32..64].fill(0.0);
        let (_, q, _, back) = stored(&x);
        for (b, (xb, yb)) in x.chunks(32).zip(back.chunks(32)).enumerate() {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, y) in xb.iter().zip(yb) {
                assert!(
                    (a - y).abs() <= amax / 127.0 * 0.5 + amax * 1e-3,
                    "block {b}"
                );
            }
        }
        // The zero block: scale 0, values 0.
        assert!(q[34..68].iter().all(|&b| b == 0));
    }

    #[test]
    fn f16_and_q8_0_attention_kernels_match_f32_on_the_stored_values() {
        for (d, n) in [(64, 37), (128, 8), (64, 3), (32, 5), (96, 4)] {
            let (q, k, v) = (
                random_vec(d, 51),
                random_vec(n * d, 52),
                random_vec(n * d, 53),
            );
            let p = random_vec(n, 54);
            let (k16, k8, k16f, k8f) = stored(&k);
            let (v16, v8, v16f, v8f) = stored(&v);
            for (kr, kf, vr, vf) in [
                (KvRows::F16(&k16), &k16f, KvRows::F16(&v16), &v16f),
                (KvRows::Q8_0(&k8), &k8f, KvRows::Q8_0(&v8), &v8f),
                (KvRows::F32(&k), &k, KvRows::F32(&v), &v),
            ] {
                let (mut got, mut want) = (vec![0f32; n], vec![0f32; n]);
                scores_kv(&q, kr, 0.125, &mut got);
                scores(&q, kf, 0.125, &mut want);
                for (s, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!((g - w).abs() < 1e-4 * w.abs().max(1.0), "d {d} slot {s}");
                }
                let (mut got, mut want) = (vec![7f32; d], vec![0f32; d]);
                weighted_sum_kv(&p, vr, &mut got);
                weighted_sum(&p, vf, &mut want);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!((g - w).abs() < 1e-4 * w.abs().max(1.0), "d {d} value {i}");
                }
            }
        }
    }

    #[test]
    fn simd_kv_kernels_match_their_plain_twins() {
        #[cfg(target_arch = "x86_64")]
        if let Some(cpu) = crate::kernels::x86::Avx2::detect() {
            use crate::kernels::x86;
            for (d, n) in [(64, 37), (128, 8), (64, 3), (32, 5), (96, 4), (64, 0)] {
                let (q, k, p) = (random_vec(d, 61), random_vec(n * d, 62), random_vec(n, 63));
                let (k16, k8, _, _) = stored(&k);
                let close = |a: &[f32], b: &[f32], what: &str| {
                    for (i, (x, y)) in a.iter().zip(b).enumerate() {
                        assert!(
                            (x - y).abs() < 1e-4 * y.abs().max(1.0),
                            "{what} d {d} at {i}"
                        );
                    }
                };
                let (mut got, mut want) = (vec![0f32; n], vec![0f32; n]);
                x86::scores_f16(cpu, &q, &k16, 0.3, &mut got);
                scores_f16_plain(&q, &k16, 0.3, &mut want);
                close(&got, &want, "scores f16");
                x86::scores_q8_0(cpu, &q, &k8, 0.3, &mut got);
                scores_q8_0_plain(&q, &k8, 0.3, &mut want);
                close(&got, &want, "scores q8_0");
                let (mut got, mut want) = (vec![7f32; d], vec![0f32; d]);
                if d.is_multiple_of(64) {
                    x86::weighted_sum_f16(cpu, &p, &k16, &mut got);
                    weighted_sum_f16_plain(&p, &k16, &mut want);
                    close(&got, &want, "weighted sum f16");
                }
                x86::weighted_sum_q8_0(cpu, &p, &k8, &mut got);
                weighted_sum_q8_0_plain(&p, &k8, &mut want);
                close(&got, &want, "weighted sum q8_0");
                // Every length, to cover the tail after the last 8 values.
                for n in [0, 1, 7, 8, 9, 63, k16.len()] {
                    let n = n.min(k16.len());
                    let (mut got, mut want) = (vec![0f32; n], vec![1f32; n]);
                    x86::f16_to_f32(cpu, &k16[..n], &mut got);
                    f16_to_f32_plain(&k16[..n], &mut want);
                    assert_eq!(got, want, "f16 to f32, {n} values");
                }
            }
        }
    }
}
