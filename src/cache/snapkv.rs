//! `snapkv`: Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation",
//! NeurIPS 2024 (arXiv 2404.14469).
//!
//! Compresses a prompt once it is prefilled: each older token's score is the attention it got
//! from the prompt's last `OBS_WINDOW` queries, summed over them (and over the query heads of
//! its KV head), then average-pooled with a kernel of `POOL` along the sequence so that
//! neighbours of important tokens survive too; top-k per KV head. Decoded tokens are never
//! evicted, as the paper ran it: the cache grows during generation.

use super::policy::Settings;
use super::registry::Entry;
use super::policy::{Needs, Phase, Policy, ScoreCtx, RING_SCALE};

/// `snapkv`'s registry entry.
pub const ENTRY: Entry = Entry {
    name: "snapkv",
    about: "compresses each prompt by its last queries' pooled attention; decoded tokens stay",
    sinks: 0,
    window: None,
    default_window: super::BASELINE_WINDOW,
    recent: 0,
    build,
};

fn build(_: &Settings) -> Box<dyn Policy> {
    Box::new(SnapKv)
}

/// Queries whose attention votes (the observation window).
pub const OBS_WINDOW: usize = 32;
/// Width of the 1-D average pooling.
pub const POOL: usize = 5;

/// Prompt compression by observation-window voting.
#[derive(Debug, Clone, Default)]
pub struct SnapKv;

impl Policy for SnapKv {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn needs(&self) -> Needs {
        Needs {
            rows: OBS_WINDOW,
            ..Needs::default()
        }
    }

    fn evicts(&self, phase: Phase) -> bool {
        phase == Phase::Prefill
    }

    fn score(&self, ctx: &ScoreCtx<'_>, out: &mut [f32]) {
        for h in 0..ctx.n_kv {
            let mut votes = vec![0f32; ctx.n];
            let mut row = vec![0f32; ctx.n];
            for g in 0..ctx.row_group {
                for r in 0..ctx.ring_len {
                    ctx.row_into(h * ctx.row_group + g, r, &mut row);
                    for (v, p) in votes.iter_mut().zip(&row) {
                        *v += p / RING_SCALE;
                    }
                }
            }
            // Candidates in sequence order, pooled over their neighbours (zero padding, as
            // PyTorch's avg_pool1d counts it).
            let mut order: Vec<usize> = (0..ctx.n)
                .filter(|&s| ctx.candidate[ctx.at(h, s)])
                .collect();
            order.sort_by_key(|&s| ctx.pos[ctx.at(h, s)]);
            let half = POOL / 2;
            for (k, &s) in order.iter().enumerate() {
                let lo = k.saturating_sub(half);
                let hi = (k + half + 1).min(order.len());
                let sum: f32 = order[lo..hi].iter().map(|&j| votes[j]).sum();
                out[ctx.at(h, s)] = sum / POOL as f32;
            }
        }
    }
}
