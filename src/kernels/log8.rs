//! MorphKV's 8-bit log code for attention probabilities, in plain Rust: the codec, the row
//! encoder (with an exact f64 sum of part of what it stored) and the probability-weighted sum
//! of code rows. [`encode_log8_plain`] and [`axpy_rows_log8_plain`] are the portable twins of
//! the x86 kernels in `super::x86`, which the facade's [`super::encode_log8`] and
//! [`super::axpy_rows_log8`] pick where the CPU runs them.
//!
//! The code: a probability `p > 0` is stored as `c = 255 + round(8 · log2(p))` clamped to
//! 0..=255 (8 steps per octave, `2^-31.8 ≤ p ≤ 1` for the codes 1..=255; 0 stands for 0, for
//! NaN and for anything smaller). Both directions work on the float's bits, with no table:
//! - encode: `8 · log2(p)` is 8 × the exponent plus `round(8 · log2(1 + f))` for the
//!   mantissa `f`, which is how many of [`THRESHOLDS`] the mantissa bits reach;
//! - decode: `c = 8e + j` stands for `2^15 · 2^((c - 255) / 8) = 2^(e - 17) · 2^((j + 1) / 8)`
//!   (in the ring's units, scaled by 2^15), with `2^((j + 1) / 8)` rounded to 11 significant
//!   bits (f16's): the f32 whose bits are `(c << 20) + OFFSETS[j]`.
//!
//! Decoded values have 11 significant bits and are multiples of 2^-27, at most 2^15: f64 sums
//! of them are exact, in any order.

/// The mantissa bits (of an f32) at which `round(8 · log2(1 + f))` reaches `j` = 1..=8:
/// `ceil((2^((j - 0.5) / 8) - 1) · 2^23)` (no threshold lies near a tie: the test recomputes
/// them).
pub const THRESHOLDS: [u32; 8] = [
    371_396, 1_164_244, 2_028_851, 2_971_711, 3_999_908, 5_121_165, 6_343_903, 7_677_310,
];

/// What [`decode`] adds to `c << 20` for `c & 7 == j`: the bits of `2^((j + 1) / 8)` rounded
/// to 11 significant bits, less `j << 20`, less 17 octaves (`17 << 23`).
pub const OFFSETS: [u32; 8] = [
    0x370b_a000,
    0x3708_4000,
    0x3706_0000,
    0x3705_0000,
    0x3705_6000,
    0x3707_4000,
    0x370a_c000,
    0x3710_0000,
];

/// `8 ·` the biased exponent of 1.0, less 255: the code of 1.0 is 255.
const CODE_BIAS: i32 = 127 * 8 - 255;

/// The code of probability `p` (0 for `p ≤ 0`, NaN, and below the code's range; 255 for
/// `p ≥ 1`).
#[inline]
pub fn encode(p: f32) -> u8 {
    if p.is_nan() || p <= 0.0 {
        return 0;
    }
    let bits = p.to_bits();
    let m = bits & 0x7f_ffff;
    let j = THRESHOLDS.iter().filter(|&&t| m >= t).count() as i32;
    let c = (bits >> 23) as i32 * 8 + j - CODE_BIAS;
    c.clamp(0, 255) as u8
}

/// The value code `c` stands for, in the ring's units (probability × 2^15): 0 for code 0.
#[inline]
pub fn decode(c: u8) -> f32 {
    if c == 0 {
        return 0.0;
    }
    let c = u32::from(c);
    f32::from_bits((c << 20).wrapping_add(OFFSETS[(c & 7) as usize]))
}

/// [`super::encode_log8`] in plain Rust: stores the codes of `src` in `dst` and returns the
/// f64 sum of the decoded values whose `pos` lies in `lo..hi`.
pub(super) fn encode_log8_plain(
    src: &[f32],
    dst: &mut [u8],
    pos: &[u32],
    (lo, hi): (u32, u32),
) -> f64 {
    let mut sum = 0f64;
    for ((&x, d), &p) in src.iter().zip(dst.iter_mut()).zip(pos) {
        *d = encode(x);
        if (lo..hi).contains(&p) {
            sum += f64::from(decode(*d));
        }
    }
    sum
}

/// [`super::axpy_rows_log8`] in plain Rust: `y[s] += Σ_r w[r] · decode(rows[r][s])`.
pub(super) fn axpy_rows_log8_plain(w: &[f32], rows: &[&[u8]], y: &mut [f32]) {
    for (&a, r) in w.iter().zip(rows) {
        for (y, &c) in y.iter_mut().zip(r.iter()) {
            *y += a * decode(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{axpy_rows_log8, encode_log8, random_vec};

    /// The constants are what their docs say: thresholds from f64 (none near a tie), offsets
    /// from f16's rounding of `2^((j + 1) / 8)`.
    #[test]
    fn log8_constants_follow_their_definition() {
        for (j, &t) in THRESHOLDS.iter().enumerate() {
            let b = ((j as f64 + 0.5) / 8.0).exp2() - 1.0;
            let x = b * f64::from(1u32 << 23);
            assert!(x.ceil() - x > 0.01, "{j}: {x} near a tie");
            assert_eq!(t, x.ceil() as u32, "{j}");
        }
        for (j, &d) in OFFSETS.iter().enumerate() {
            let m = half::f16::from_f64(((j as f64 + 1.0) / 8.0).exp2()).to_f32();
            assert_eq!(d, m.to_bits() - ((j as u32) << 20) - (17 << 23), "{j}");
        }
    }

    /// The bit-level encoder rounds `8 · log2(p)` to nearest, as f64 arithmetic does, and
    /// decoding gives `2^15 · 2^((c - 255) / 8)` to 11 significant bits.
    #[test]
    fn log8_codec_matches_its_arithmetic_definition() {
        let mut p = 1.5f32;
        while p > 1e-11 {
            let l = 8.0 * f64::from(p).log2();
            // Skip values within 1e-9 of a tie, where f64's log2 cannot tell.
            if (l - l.floor() - 0.5).abs() > 1e-9 {
                let want = (255.0 + l.round()).clamp(0.0, 255.0) as u8;
                assert_eq!(encode(p), want, "{p:e}");
            }
            p = f32::from_bits(p.to_bits() - 997);
        }
        for (p, c) in [
            (0.0, 0),
            (-0.0, 0),
            (-1.0, 0),
            (f32::NAN, 0),
            (f32::INFINITY, 255),
        ] {
            assert_eq!(encode(p), c, "{p}");
        }
        assert_eq!(encode(f32::MIN_POSITIVE / 4.0), 0, "subnormal");
        assert_eq!(encode(1.0), 255);
        assert_eq!(decode(255), 32768.0);
        assert_eq!(decode(0), 0.0);
        for c in 1..=255u8 {
            let x = (f64::from(c) - 255.0) / 8.0 + 15.0;
            let e = x.floor();
            let sig = half::f16::from_f64((x - e).exp2()).to_f64();
            assert_eq!(f64::from(decode(c)), sig * e.exp2(), "code {c}");
            assert_eq!(decode(c).to_bits() & 0xfff, 0, "11 significant bits");
            assert_eq!(encode(decode(c) / 32768.0), c, "round trip {c}");
        }
    }

    #[test]
    fn log8_rows_match_plain_arithmetic() {
        let n = 603;
        let data: Vec<Vec<u8>> = (0..7)
            .map(|r| {
                random_vec(n + r, 50 + r as u64)
                    .iter()
                    .map(|&v| (v * 90.0).abs() as u8)
                    .collect()
            })
            .collect();
        for k in [0, 1, 3, 4, 5, 7] {
            let rows: Vec<&[u8]> = data[..k].iter().map(|r| &r[..]).collect();
            let w = &[0.5, -1.0, 2.0, 0.0, 0.25, 3.0, 1e-3][..k];
            let y0 = random_vec(n, 60);
            let (mut y, mut want) = (y0.clone(), y0.clone());
            axpy_rows_log8(w, &rows, &mut y);
            axpy_rows_log8_plain(w, &rows, &mut want);
            for s in 0..n {
                let tol = 1e-5 * want[s].abs().max(1.0);
                assert!((y[s] - want[s]).abs() <= tol, "{k} rows, column {s}");
            }
        }
    }

    #[test]
    fn log8_encoding_and_old_sums_match_plain_arithmetic() {
        for n in [5, 16, 17, 603] {
            let mut src: Vec<f32> = random_vec(n, 70)
                .iter()
                .map(|v| (v * 9.0).exp2() * 1e-3)
                .collect();
            // Zero, NaN, negative, past 1, and below the range, among them.
            for (i, v) in [0.0, f32::NAN, -0.25, 1.5, 1e-12].into_iter().enumerate() {
                if i * 3 < n {
                    src[i * 3] = v;
                }
            }
            let pos: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % 1000).collect();
            for (lo, hi) in [(0, 0), (4, 500), (0, u32::MAX), (3_000_000_000, u32::MAX)] {
                // Destinations at every byte offset from a 16-byte boundary (the aligned part
                // uses streaming stores, the rest the plain code).
                for skip in 0..16 {
                    let (mut a, mut b) = (vec![7u8; n + 16], vec![7u8; n]);
                    let got = encode_log8(&src, &mut a[skip..skip + n], &pos, lo, hi);
                    let want = encode_log8_plain(&src, &mut b, &pos, (lo, hi));
                    assert_eq!(a[skip..skip + n], b, "n {n} skip {skip}");
                    assert_eq!(got, want, "n {n} skip {skip} {lo}..{hi}");
                }
            }
        }
    }
}
