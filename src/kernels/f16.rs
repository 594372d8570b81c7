//! f16 rows in plain Rust: the probability-weighted sum of f16 rows (MorphKV's fused attention
//! profile) and f32 → f16 encoding with an exact f64 sum of part of what was stored (its ring
//! of attention rows). [`axpy_rows_f16_plain`] and [`encode_f16_plain`] are the portable twins
//! of the x86 kernels in `super::x86`, which the facade's [`super::axpy_rows_f16`] and
//! [`super::encode_f16`] pick where the CPU runs them.

use half::f16;

/// [`super::axpy_rows_f16`] in plain Rust: `y[s] += Σ_r w[r] · rows[r][s]`.
pub(super) fn axpy_rows_f16_plain(w: &[f32], rows: &[&[f16]], y: &mut [f32]) {
    for (a, x) in w.iter().zip(rows) {
        for (y, x) in y.iter_mut().zip(x.iter()) {
            *y += a * x.to_f32();
        }
    }
}

/// [`super::encode_f16`] in plain Rust: stores `src · scale` as f16 in `dst` and returns the
/// f64 sum of the stored values whose `pos` lies in `lo..hi`.
pub(super) fn encode_f16_plain(
    src: &[f32],
    scale: f32,
    dst: &mut [f16],
    pos: &[u32],
    (lo, hi): (u32, u32),
) -> f64 {
    let mut sum = 0f64;
    for ((x, d), &p) in src.iter().zip(dst.iter_mut()).zip(pos) {
        *d = f16::from_f32(x * scale);
        if (lo..hi).contains(&p) {
            sum += f64::from(*d);
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{axpy_rows_f16, encode_f16, random_vec};

    #[test]
    fn f16_row_sums_match_plain_arithmetic() {
        let n = 603;
        let data: Vec<Vec<f16>> = (0..5)
            .map(|r| {
                random_vec(n + r, 20 + r as u64)
                    .iter()
                    .map(|&v| f16::from_f32(v))
                    .collect()
            })
            .collect();
        let rows: Vec<&[f16]> = data.iter().map(|r| &r[..]).collect();
        let w = [0.5, -1.0, 2.0, 0.0, 0.25];
        let y0 = random_vec(n, 30);
        let mut y = y0.clone();
        axpy_rows_f16(&w, &rows, &mut y);
        for s in 0..n {
            let want = y0[s] + (0..5).map(|r| w[r] * rows[r][s].to_f32()).sum::<f32>();
            assert!(
                (y[s] - want).abs() < 1e-5 * want.abs().max(1.0),
                "column {s}"
            );
        }
    }

    #[test]
    fn f16_encoding_and_old_sums_match_plain_arithmetic() {
        for n in [5, 16, 603] {
            let src: Vec<f32> = random_vec(n, 40).iter().map(|v| v.abs() * 1e-3).collect();
            let pos: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % 1000).collect();
            for (lo, hi) in [(0, 0), (4, 500), (0, u32::MAX), (3_000_000_000, u32::MAX)] {
                // Destinations starting at every 2-byte offset from a 16-byte boundary (the
                // aligned part uses streaming stores, the rest the plain code).
                for skip in 0..8 {
                    let (mut a, mut b) = (vec![f16::ZERO; n + 8], vec![f16::ZERO; n]);
                    let got = encode_f16(&src, 32768.0, &mut a[skip..skip + n], &pos, lo, hi);
                    let want = encode_f16_plain(&src, 32768.0, &mut b, &pos, (lo, hi));
                    assert_eq!(a[skip..skip + n], b, "n {n} skip {skip}");
                    assert_eq!(got, want, "n {n} skip {skip} {lo}..{hi}");
                }
            }
        }
    }
}
