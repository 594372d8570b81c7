//! The policy abstraction: a policy only scores slots. The cache does everything else —
//! storage, window and sink protection, top-k, overwriting victims, bookkeeping — as in
//! NVIDIA kvpress, where every compression method is a scoring function.

use std::fmt::Debug;
use std::str::FromStr;

use half::f16;

use super::ring::RingView;
use crate::error::{Error, Result};

/// What a policy's constructor reads from the cache's settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Recent tokens always kept (MorphKV's window of queries).
    pub window: usize,
    pub fusion: Fusion,
    pub group_agg: GroupAgg,
    /// MorphKV: per cent weight of the accumulated attention in the score.
    pub history: usize,
    /// MorphKV: half-life of the accumulated attention, in tokens (0: it never fades).
    pub half_life: usize,
}

/// When the cache asks a policy to choose victims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// After a prompt chunk was prefilled and the cache is over budget.
    Prefill,
    /// Before a decoded token is written into a full cache.
    Decode,
}

/// What a policy scores from: one layer's used slots and the attention the cache kept.
///
/// Slots are indexed `head * cap + slot` for per-KV-head data; ring rows are indexed
/// `(rhead * rows_cap + row) * cap + slot`, where the row heads are the query heads
/// (`row_group == group`) or, with a pooled profile (`--profile log8-kv`), the KV heads
/// (`row_group == 1`).
pub struct ScoreCtx<'a> {
    /// KV heads.
    pub n_kv: usize,
    /// Query heads per KV head.
    pub group: usize,
    /// Ring row heads per KV head: `group`, or 1 where the profile pools each KV head's
    /// query heads into one row (see `super::profile::pool_rows`).
    pub row_group: usize,
    /// Used slots per KV head.
    pub n: usize,
    /// Slot stride of the per-slot arrays (the layer's capacity).
    pub cap: usize,
    /// Token position of each slot.
    pub pos: &'a [u32],
    /// Whether each slot may be evicted (not a sink, not in the window or the budget's
    /// protected recent share).
    pub candidate: &'a [bool],
    /// Attention each slot received, summed over the KV head's query heads and over every
    /// query since the token entered the cache (H2O's statistic).
    pub acc: &'a [f32],
    /// The ring of the most recent query rows (attention probabilities over slots, stored as
    /// f16 scaled by [`RING_SCALE`] or as log codes decoding to such values), per row head;
    /// `ring_len` of `ring_cap` rows are valid, in no particular order.
    pub ring: RingView<'a>,
    pub ring_cap: usize,
    pub ring_len: usize,
    /// Each ring row's old mass: the sum of its stored values (scaled units) over the KV
    /// head's slots between the sinks and the window (a protected recent share's included),
    /// `[rhead * ring_cap + row]`. The cache keeps it up to date without re-reading rows (a
    /// row is read whole only when written), in f64, where sums of what every stored value
    /// decodes to (11 significant bits, multiples of 2^-27) are exact: no cancellation however
    /// much of a row the window holds.
    pub old_mass: &'a [f64],
}

impl<'a> ScoreCtx<'a> {
    /// Index of `slot` of KV head `head` in per-slot arrays.
    pub fn at(&self, head: usize, slot: usize) -> usize {
        head * self.cap + slot
    }

    /// Old mass of one ring row (see [`ScoreCtx::old_mass`]).
    pub fn old_mass(&self, rhead: usize, row: usize) -> f64 {
        self.old_mass[rhead * self.ring_cap + row]
    }

    /// One ring row of row head `rhead` as stored: scaled probabilities over slots `0..n`.
    pub fn row(&self, rhead: usize, row: usize) -> RingView<'a> {
        let start = (rhead * self.ring_cap + row) * self.cap;
        self.ring.slice(start, self.n)
    }

    /// Converts one ring row into `out` (length `n`), in the ring's scaled units: divide by
    /// [`RING_SCALE`] for probabilities.
    pub fn row_into(&self, rhead: usize, row: usize, out: &mut [f32]) {
        self.row(rhead, row).decode_into(out);
    }
}

pub use super::ring::RING_SCALE;

/// Stores probabilities `src` as a ring row: f16 scaled by [`RING_SCALE`] (round to nearest
/// even). Returns the row's old mass: the exact sum of the stored values whose slot's position
/// (`pos`) lies in `old`.
pub fn encode_row(src: &[f32], dst: &mut [f16], pos: &[u32], old: std::ops::Range<u32>) -> f64 {
    crate::kernels::encode_f16(src, RING_SCALE, dst, pos, old.start, old.end)
}

/// What a policy needs the cache to keep from each attention step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// Most recent query rows to keep per layer (0: none).
    pub rows: usize,
    /// Keep, per slot, the attention it received since it entered (H2O; MorphKV with a
    /// history weight).
    pub accumulate: bool,
    /// Half-life of that sum in queries: each query's attention counts half as much this
    /// many queries later (0: never fades, H2O's plain sum).
    pub half_life: usize,
}

/// An eviction policy: scores candidate slots, higher = keep.
pub trait Policy: Debug + Send + Sync {
    /// Registry name.
    fn name(&self) -> &'static str;

    /// What the cache must keep for [`Policy::score`].
    fn needs(&self) -> Needs {
        Needs::default()
    }

    /// Whether the policy evicts in this phase at all (`full` never does; `snapkv` only
    /// compresses prompts).
    fn evicts(&self, _phase: Phase) -> bool {
        true
    }

    /// Scores every candidate slot of one layer into `out[ctx.at(head, slot)]`; entries of
    /// non-candidates are ignored.
    fn score(&self, ctx: &ScoreCtx<'_>, out: &mut [f32]);
}

/// How MorphKV fuses the window's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fusion {
    #[default]
    Sum,
    Max,
}

/// How MorphKV aggregates the query heads that share a KV head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupAgg {
    #[default]
    Sum,
    Max,
}

fn sum_or_max(flag: &str, s: &str) -> Result<bool> {
    match s {
        "sum" => Ok(false),
        "max" => Ok(true),
        _ => Err(Error::arg(flag, format!("`{s}` is not sum or max"))),
    }
}

impl FromStr for Fusion {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(if sum_or_max("--fusion", s)? {
            Self::Max
        } else {
            Self::Sum
        })
    }
}

impl FromStr for GroupAgg {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(if sum_or_max("--group-agg", s)? {
            Self::Max
        } else {
            Self::Sum
        })
    }
}
