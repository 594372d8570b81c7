//! `morphkv`: Ghadia, Kumar, Jain, Nair, Das, "Dialogue Without Limits: Constant-Sized KV
//! Caches for Extended Responses in LLMs", ICML 2025 (arXiv 2503.00979).
//!
//! The cache protects the `R` most recent tokens (the window); by default it also keeps the
//! most recent three quarters of the budget whatever their scores (`--recent 75`, this
//! project's choice: on SmolLM2-135M recency is the better guide there; `--recent 0` is the
//! paper's method). Every older token `j` is scored by the window's attention to it: for each
//! window query `i` and query head `h`, its probability renormalised over the older tokens
//! only (a softmax over old columns equals the full softmax divided by the old columns' sum),
//! aggregated over the query heads of the KV head (sum, as in the paper's Algorithm 1, or max,
//! as in the authors' code) and fused over the window (sum or max). The window's rows are the rows each query produced when it was
//! decoded, kept by the cache as a ring: no extra matmul per step, O(H_q · R · n) work. By
//! default the ring stores 8-bit log codes (each value within 4.5%, see `super::ring`): at
//! equal bytes the budget it frees is worth more than the exact ranking. With `--profile f16`
//! it stores f16 (probabilities scaled by 2^15, 11 significant bits): scores match an f32
//! computation to about 1e-3 relative, so only tokens whose scores tie to that precision may
//! be ranked differently. With `--profile log8-kv` (or `f16-kv`) the ring keeps one row per
//! KV head, its query heads' rows pooled as `super::profile` describes: the group
//! aggregation is then the pooling's sum, whatever `--group-agg` says.
//!
//! `--history PERCENT` (100 by default; 0 is the paper's method) adds to each older token's
//! score that weight of the attention it has received since it entered the cache, summed over
//! the KV head's query heads as H2O scores but fading with `--half-life` (512 tokens by
//! default: a query's attention counts half as much 512 tokens later). The cache keeps that
//! sum per slot, one number, so it is a window of every past query at no profile cost; a
//! token the short window ignores but the conversation kept returning to can stay. With it
//! the window's rows can be few (`--window 4` by default, the paper's 30 with `--window 30
//! --recent 0 --history 0`): at equal bytes the budget their rows would take is worth more.

use super::policy::Settings;
use super::registry::Entry;
use super::policy::{Fusion, GroupAgg, Needs, Policy, ScoreCtx};

/// `morphkv`'s registry entry.
pub const ENTRY: Entry = Entry {
    name: "morphkv",
    about: "the window's attention, and the fading sum of all past attention, re-rank older tokens every step beside the budget's recent 3/4",
    sinks: 0,
    window: None,
    default_window: super::DEFAULT_WINDOW,
    recent: 75,
    build,
};

/// Builds the scorer from the settings' window, fusion and group aggregation.
fn build(cfg: &Settings) -> Box<dyn Policy> {
    Box::new(MorphKv {
        window: cfg.window,
        fusion: cfg.fusion,
        group_agg: cfg.group_agg,
        history: cfg.history as f32 / 100.0,
        half_life: cfg.half_life,
    })
}

/// Window-attention scoring.
#[derive(Debug, Clone)]
pub struct MorphKv {
    pub window: usize,
    pub fusion: Fusion,
    pub group_agg: GroupAgg,
    /// Weight of each slot's accumulated attention in its score (0: not kept, not used).
    pub history: f32,
    /// Half-life of the accumulated attention, in tokens (0: it never fades).
    pub half_life: usize,
}

impl Policy for MorphKv {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn needs(&self) -> Needs {
        Needs {
            rows: self.window,
            accumulate: self.history > 0.0,
            half_life: self.half_life,
        }
    }

    fn score(&self, ctx: &ScoreCtx<'_>, out: &mut [f32]) {
        let n = ctx.n;
        let sum_sum = self.group_agg == GroupAgg::Sum && self.fusion == Fusion::Sum;
        // The other combinations' buffers: the aggregate over the group, and one row
        // converted from the ring's f16 (scaled units: the scale cancels in p / D).
        let len = if sum_sum { 0 } else { n };
        let (mut agg, mut row) = (vec![0f32; len], vec![0f32; len]);
        // Sum over heads and window (the default): every row of the KV head, weighted by its
        // inverse old mass, added into the scores in one pass over the columns.
        let (mut weights, mut rows) = (Vec::new(), Vec::new());
        for h in 0..ctx.n_kv {
            let fused = &mut out[ctx.at(h, 0)..ctx.at(h, n)];
            fused.fill(0.0);
            weights.clear();
            rows.clear();
            for r in 0..ctx.ring_len {
                if !sum_sum {
                    agg.fill(0.0);
                }
                for g in 0..ctx.row_group {
                    let q = h * ctx.row_group + g;
                    let raw = ctx.row(q, r);
                    // The row's softmax over old slots is its stored values over their sum.
                    let denom = ctx.old_mass(q, r);
                    if denom <= 0.0 {
                        continue;
                    }
                    let inv = (1.0 / denom) as f32;
                    if sum_sum {
                        weights.push(inv);
                        rows.push(raw);
                        continue;
                    }
                    ctx.row_into(q, r, &mut row);
                    match self.group_agg {
                        GroupAgg::Sum => agg.iter_mut().zip(&row).for_each(|(a, p)| *a += p * inv),
                        GroupAgg::Max => agg
                            .iter_mut()
                            .zip(&row)
                            .for_each(|(a, p)| *a = a.max(p * inv)),
                    }
                }
                if sum_sum {
                    continue;
                }
                match self.fusion {
                    Fusion::Sum => fused.iter_mut().zip(&agg).for_each(|(f, a)| *f += a),
                    Fusion::Max => fused.iter_mut().zip(&agg).for_each(|(f, a)| *f = f.max(*a)),
                }
            }
            if sum_sum {
                super::ring::axpy_rows(&weights, &rows, fused);
            }
            if self.history > 0.0 {
                let acc = &ctx.acc[ctx.at(h, 0)..ctx.at(h, n)];
                for (f, a) in fused.iter_mut().zip(acc) {
                    *f += self.history * a;
                }
            }
        }
    }
}
