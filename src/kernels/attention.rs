//! Attention over one query and the activation functions, in plain Rust: scores `q · k_s`,
//! softmax, the probability-weighted sum of values, `silu`, and a branch-free `e^x` that loops
//! turn into SIMD. [`scores_plain`], [`softmax_plain`] and [`weighted_sum_plain`] are the
//! portable twins of the x86 kernels in `super::x86`, which the facade's [`super::scores`],
//! [`super::softmax`] and [`super::weighted_sum`] pick where the CPU runs them.

use super::quant::dot_f32;

/// [`super::scores`] in plain Rust: `out[s] = scale · (q · k_s)`, `k` row-major (n, d) with
/// `n = out.len()`, `d = q.len()`.
pub(super) fn scores_plain(q: &[f32], k: &[f32], scale: f32, out: &mut [f32]) {
    for (o, ks) in out.iter_mut().zip(k.chunks_exact(q.len())) {
        *o = dot_f32(q, ks) * scale;
    }
}

/// [`super::weighted_sum`] in plain Rust: `out = Σ_s p[s] · v_s`, `v` row-major (n, d) with
/// `n = p.len()`, `d = out.len()`.
pub(super) fn weighted_sum_plain(p: &[f32], v: &[f32], out: &mut [f32]) {
    out.fill(0.0);
    for (&w, vs) in p.iter().zip(v.chunks_exact(out.len())) {
        axpy(w, vs, out);
    }
}

/// [`super::softmax`] in plain Rust, `e^x` by [`exp_nonpositive`].
pub(super) fn softmax_plain(p: &mut [f32]) {
    let max = p
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    for x in p.iter_mut() {
        *x = exp_nonpositive(*x - max);
    }
    let inv = 1.0 / p.iter().sum::<f32>();
    for x in p.iter_mut() {
        *x *= inv;
    }
}

/// `y += a · x`.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// `silu(x) = x · sigmoid(x)` through [`exp_nonpositive`] (branch-free, so loops over it
/// become SIMD): `e = e^-|x|`, `sigmoid(x) = 1 / (1 + e)` for `x >= 0`, `e / (1 + e)` below.
#[inline]
pub fn silu(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    let sigmoid = if x >= 0.0 { 1.0 } else { e } / (1.0 + e);
    x * sigmoid
}

/// `e^x` for `x <= 0` (softmax after subtracting the maximum), within 2 ulp of `f32::exp`
/// and branch-free, so a loop over it becomes SIMD: `x = k·ln 2 + r`, `e^r` by Cephes' degree
/// 6 polynomial, `2^k` by building the exponent bits.
#[inline]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Below -87, e^x is under f32's smallest normal: 0 (the clamp keeps `2^k` normal).
    let tiny = x < -87.0;
    let x = x.max(-87.0);
    let k = (x * std::f32::consts::LOG2_E).round();
    let r = x - k * LN2_HI - k * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let y = e * f32::from_bits(((k as i32 + 127) as u32) << 23);
    if tiny {
        0.0
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{random_vec, scores, softmax, weighted_sum};

    #[test]
    fn fast_exp_matches_the_library_exp() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -(i as f32) * 4.35e-4;
            let (got, want) = (exp_nonpositive(x), x.exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-200.0), 0.0);
    }

    #[test]
    fn attention_kernels_match_plain_loops() {
        for (d, n) in [(64, 37), (128, 8), (64, 3), (24, 5)] {
            let (q, k, v) = (
                random_vec(d, 8),
                random_vec(n * d, 9),
                random_vec(n * d, 10),
            );
            let mut got = vec![0f32; n];
            scores(&q, &k, 0.125, &mut got);
            for (s, g) in got.iter().enumerate() {
                let want: f32 = q.iter().zip(&k[s * d..]).map(|(a, b)| a * b).sum::<f32>() * 0.125;
                assert!(
                    (g - want).abs() < 1e-4 * want.abs().max(1.0),
                    "d {d} slot {s}"
                );
            }
            let p = random_vec(n, 11);
            let mut out = vec![7f32; d];
            weighted_sum(&p, &v, &mut out);
            for (i, o) in out.iter().enumerate() {
                let want: f32 = (0..n).map(|s| p[s] * v[s * d + i]).sum();
                assert!(
                    (o - want).abs() < 1e-4 * want.abs().max(1.0),
                    "d {d} value {i}"
                );
            }
        }
    }

    #[test]
    fn causal_softmax_masks_and_normalises_each_query_row() {
        let (group, rows, past, visible) = (3, 5, 4, 9);
        let scores = random_vec(group * rows * visible, 11);
        let mut got = scores.clone();
        crate::kernels::causal_softmax(&mut got, visible, rows, past, 0.125);
        for (r, (g, s)) in got.chunks(visible).zip(scores.chunks(visible)).enumerate() {
            let seen = past + r % rows + 1;
            let max = s[..seen].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let sum: f32 = s[..seen].iter().map(|x| ((x - max) * 0.125).exp()).sum();
            for (c, (&g, &x)) in g.iter().zip(s).enumerate() {
                let want = if c < seen {
                    ((x - max) * 0.125).exp() / sum
                } else {
                    0.0
                };
                assert!(
                    (g - want).abs() <= 1e-6,
                    "row {r} column {c}: {g} vs {want}"
                );
            }
        }
    }

    #[test]
    fn softmax_matches_the_library_exp() {
        for n in [1, 5, 8, 600, 603] {
            let mut p: Vec<f32> = random_vec(n, 12).iter().map(|x| x * 20.0).collect();
            p[0] = -150.0;
            let max = p.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let sum: f32 = p.iter().map(|x| (x - max).exp()).sum();
            let want: Vec<f32> = p.iter().map(|x| (x - max).exp() / sum).collect();
            softmax(&mut p);
            for (g, w) in p.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-6 * w.max(1e-30) + 1e-37,
                    "n {n}: {g} vs {w}"
                );
            }
            assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn silu_matches_its_definition() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.05;
            let want = x / (1.0 + (-x).exp());
            assert!((silu(x) - want).abs() <= 1e-6 * want.abs().max(1e-3), "{x}");
        }
    }
}
