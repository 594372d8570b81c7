//! How the attention profile stores its rows: [`ProfileType`] (`--profile`), exact scaled f16
//! or an 8-bit log code ([`ProfileType::Log8`]), one row per query head or one per KV head
//! (`f16-kv`, `log8-kv`: the group's rows pooled, see `super::profile`), the 8-bit codec,
//! and [`RingView`], the stored rows as a policy reads them.
//!
//! The log code: a probability `p > 0` is stored as the byte `c = 255 + round(8 · log2(p))`
//! (1..=255: 8 steps per octave, `2^-31.8 ≤ p ≤ 1`), 0 stands for 0 and for anything smaller.
//! A byte decodes to `2^((c - 255) / 8)` scaled by [`RING_SCALE`] and rounded to 11
//! significant bits (f16's), the 256 values of [`log8_table`]: the stored value is within
//! 4.5% of `p` (half a step, `2^(1/16) − 1` = 4.43%, plus the rounding, 0.03%). Both
//! directions work on the float's bits, without a table (see `crate::kernels::log8_encode`),
//! so that reading a code costs about what converting an f16 does. Decoded values are
//! multiples of 2^-27 below 2^16, so the old masses, f64 sums of them, stay exact as with
//! the f16 ring.
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use half::f16;
use serde::Serialize;

use crate::error::{Error, Result};

/// Scale of the ring's f16 values: a probability `p` is stored as `p · 2^15`, so that f16's
/// 11 significant bits cover probabilities down to 2^-39 (the ring is half the bytes of f32,
/// and it is read whole at every MorphKV step).
pub const RING_SCALE: f32 = 32768.0;

/// How the profile's rows are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum ProfileType {
    /// 2 bytes per value: the probability scaled by 2^15 as f16 (11 significant bits).
    #[serde(rename = "f16")]
    F16,
    /// 1 byte per value: a log2 code (8 steps per octave over 32 octaves, 0 for zero). At
    /// equal bytes (K/V plus profile) the budget it frees keeps MorphKV closer to the full
    /// cache than the exact ring does (`morphkv eval --profiles f16,log8 --equal-bytes ...`).
    #[serde(rename = "log8")]
    Log8,
    /// As [`ProfileType::F16`], one row per KV head: the group's query heads' rows pooled
    /// (each weighted by the inverse of its old mass when stored), `group` times fewer bytes.
    #[serde(rename = "f16-kv")]
    F16Kv,
    /// As [`ProfileType::Log8`], one row per KV head (see [`ProfileType::F16Kv`]). The
    /// default: at equal bytes MorphKV with it beats the per-query-head `log8` on every figure
    /// on four texts (`eval --profiles log8,log8-kv --equal-bytes ...`), and TOVA gains too.
    #[default]
    #[serde(rename = "log8-kv")]
    Log8Kv,
}

/// The values `--profile` takes, for help texts and errors.
pub const PROFILE_TYPE_LIST: &str = "f16, log8, f16-kv, log8-kv";

/// A profile storage in a config file (`profile = "f16"`), for serde
/// (`#[serde(default, deserialize_with = "...")]`): an unknown name is an error at its line.
pub fn deserialize_profile<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<ProfileType>, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    ProfileType::from_name(&s).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "`{s}` is not a profile storage: choose from {PROFILE_TYPE_LIST}"
        ))
    })
}

impl ProfileType {
    /// Every type, in the order of [`PROFILE_TYPE_LIST`].
    pub const ALL: [Self; 4] = [Self::F16, Self::Log8, Self::F16Kv, Self::Log8Kv];

    /// The name `--profile` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::Log8 => "log8",
            Self::F16Kv => "f16-kv",
            Self::Log8Kv => "log8-kv",
        }
    }

    /// Whether one row per KV head is stored (the group's query heads pooled), not one per
    /// query head.
    pub fn per_kv_head(self) -> bool {
        matches!(self, Self::F16Kv | Self::Log8Kv)
    }

    /// Rows stored per window query: one per query head (`n_head`), or one per KV head.
    pub fn row_heads(self, n_head: usize, n_kv_head: usize) -> usize {
        if self.per_kv_head() {
            n_kv_head
        } else {
            n_head
        }
    }

    /// The storage named `s` (case and surrounding space ignored).
    fn from_name(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s.trim().to_ascii_lowercase())
    }

    /// Bytes of one stored value.
    pub fn value_bytes(self) -> usize {
        match self {
            Self::F16 | Self::F16Kv => std::mem::size_of::<f16>(),
            Self::Log8 | Self::Log8Kv => 1,
        }
    }
}

impl fmt::Display for ProfileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ProfileType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| Error::arg("--profile", format!("`{s}` is not {PROFILE_TYPE_LIST}")))
    }
}

static TABLE: LazyLock<[f32; 256]> =
    LazyLock::new(|| std::array::from_fn(|c| crate::kernels::log8_decode(c as u8)));

/// What each log code stands for, in the ring's scaled units (code 0 is 0, code 255 is
/// [`RING_SCALE`]).
pub fn log8_table() -> &'static [f32; 256] {
    &TABLE
}

/// The log code of probability `p` (0 for `p ≤ 0`, NaN, and below the code's range).
#[inline]
pub fn log8_encode(p: f32) -> u8 {
    crate::kernels::log8_encode(p)
}

/// Stores probabilities `src` as log codes in `dst`; returns the exact f64 sum of the decoded
/// values (scaled units) whose slot's position (`pos`) lies in `old`.
pub fn encode_log8(src: &[f32], dst: &mut [u8], pos: &[u32], old: std::ops::Range<u32>) -> f64 {
    crate::kernels::encode_log8(src, dst, pos, old.start, old.end)
}

/// The rows of a profile's ring as stored (a whole ring, or one row of it).
#[derive(Debug, Clone, Copy)]
pub enum RingView<'a> {
    /// Scaled f16 values (see [`RING_SCALE`]).
    F16(&'a [f16]),
    /// Log codes (see [`log8_table`]).
    Log8(&'a [u8]),
}

impl<'a> RingView<'a> {
    /// Values `start..start + len`.
    pub fn slice(&self, start: usize, len: usize) -> RingView<'a> {
        match *self {
            Self::F16(r) => Self::F16(&r[start..start + len]),
            Self::Log8(r) => Self::Log8(&r[start..start + len]),
        }
    }

    /// Stored values.
    pub fn len(&self) -> usize {
        match self {
            Self::F16(r) => r.len(),
            Self::Log8(r) => r.len(),
        }
    }

    /// Whether no value is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `out.len()` values in scaled units (divide by [`RING_SCALE`] for
    /// probabilities).
    pub fn decode_into(&self, out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        match self {
            Self::F16(r) => r[..out.len()].convert_to_f32_slice(out),
            Self::Log8(r) => {
                let table = log8_table();
                for (o, &c) in out.iter_mut().zip(r.iter()) {
                    *o = table[usize::from(c)];
                }
            }
        }
    }

    /// Value `i` in scaled units.
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Self::F16(r) => r[i].to_f32(),
            Self::Log8(r) => log8_table()[usize::from(r[i])],
        }
    }
}

/// `y[s] += Σ_r w[r] · rows[r][s]` over the first `y.len()` values of each row, in scaled
/// units: the f16 kernel where every row is f16, the log-code kernel where every row is log8.
pub fn axpy_rows(w: &[f32], rows: &[RingView<'_>], y: &mut [f32]) {
    let f16_rows: Option<Vec<&[f16]>> = rows
        .iter()
        .map(|r| match r {
            RingView::F16(r) => Some(*r),
            RingView::Log8(_) => None,
        })
        .collect();
    if let Some(f16_rows) = f16_rows {
        return crate::kernels::axpy_rows_f16(w, &f16_rows, y);
    }
    let log8_rows: Option<Vec<&[u8]>> = rows
        .iter()
        .map(|r| match r {
            RingView::Log8(r) => Some(*r),
            RingView::F16(_) => None,
        })
        .collect();
    if let Some(log8_rows) = log8_rows {
        return crate::kernels::axpy_rows_log8(w, &log8_rows, y);
    }
    let table = log8_table();
    for (&a, row) in w.iter().zip(rows) {
        match row {
            RingView::F16(r) => y
                .iter_mut()
                .zip(r.iter())
                .for_each(|(y, x)| *y += a * x.to_f32()),
            RingView::Log8(r) => {
                // The weighted table once per row: one lookup per column.
                let scaled: [f32; 256] = std::array::from_fn(|c| a * table[c]);
                y.iter_mut()
                    .zip(r.iter())
                    .for_each(|(y, &c)| *y += scaled[usize::from(c)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoding the code of `p` gives `p` within 4.5% over the code's range (and 5% below
    /// 2^-29, where the f16 ring's values are subnormals); zero, negative and NaN store 0;
    /// tiny values round to 0; the table is increasing and made of values with f16's 11
    /// significant bits, multiples of 2^-27 (so f64 sums of them are exact).
    #[test]
    fn log8_round_trips_within_its_bound() {
        let t = log8_table();
        assert_eq!(t[0], 0.0);
        assert_eq!(t[255], RING_SCALE);
        assert!(t.windows(2).all(|w| w[0] < w[1]));
        assert!(t.iter().all(|&v| v.to_bits() & 0xfff == 0));
        assert!(t.iter().all(|&v| (v * 2f32.powi(27)).fract() == 0.0));
        for p in [0.0f32, -0.5, f32::NAN, 1e-12, 2f32.powi(-33)] {
            assert_eq!(log8_encode(p), 0, "{p}");
        }
        let (mut worst, mut worst_low) = (0f32, 0f32);
        let mut p = 1.0f32;
        while p > 2f32.powf(-31.8) {
            let back = t[usize::from(log8_encode(p))] / RING_SCALE;
            let err = (back / p - 1.0).abs();
            if p >= 2f32.powi(-29) {
                worst = worst.max(err);
            } else {
                worst_low = worst_low.max(err);
            }
            p *= 0.9973;
        }
        assert!(worst < 0.045, "worst relative error {worst}");
        assert!(
            worst_low < 0.05,
            "worst relative error below 2^-29: {worst_low}"
        );
        assert!(worst > 0.03, "the bound is half a step: {worst}");
        assert_eq!(log8_encode(1.0), 255);
    }

    /// The row encoder's old sum is the exact sum of the decoded old values.
    #[test]
    fn log8_rows_sum_their_decoded_old_values() {
        let src: Vec<f32> = (0..97).map(|i| ((i * 37) % 101) as f32 / 5000.0).collect();
        let pos: Vec<u32> = (0..97).map(|i| (i * 13) % 97).collect();
        let mut dst = vec![7u8; 97];
        let sum = encode_log8(&src, &mut dst, &pos, 10..60);
        let t = log8_table();
        let want: f64 = (0..97)
            .filter(|&s| (10..60).contains(&pos[s]))
            .map(|s| f64::from(t[usize::from(dst[s])]))
            .sum();
        assert_eq!(sum, want);
        assert_eq!(dst[0], 0, "zero stays zero");
        let mut out = vec![0f32; 97];
        RingView::Log8(&dst).decode_into(&mut out);
        let mut y = vec![1f32; 97];
        axpy_rows(&[2.0], &[RingView::Log8(&dst)], &mut y);
        for s in 0..97 {
            assert_eq!(y[s], 1.0 + 2.0 * out[s]);
            assert_eq!(out[s], RingView::Log8(&dst).get(s));
        }
    }

    #[test]
    fn profile_types_parse_by_name() {
        for t in ProfileType::ALL {
            assert_eq!(t.name().parse::<ProfileType>().unwrap(), t);
        }
        let e = "u4".parse::<ProfileType>().unwrap_err().to_string();
        assert!(e.contains("--profile") && e.contains("log8"), "{e}");
    }
}
