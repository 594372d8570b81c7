//! `morphkv`: Ghadia, Kumar, Jain, Nair, Das, "Dialogue Without Limits: Constant-Sized KV
//! Caches for Extended Responses in LLMs", ICML 2025 (arXiv 2503.00979).
//!
//! The cache protects the `R` most recent tokens (the window). Every older token `j` is scored
//! by the window's attention to it: for each window query `i` and query head `h`, its
//! probability renormalised over the older tokens only (a softmax over old columns equals the
//! full softmax divided by the old columns' sum), aggregated over the query heads of the KV
//! head (sum, as in the paper's Algorithm 1, or max, as in the authors' code) and fused over
//! the window (sum or max). The window's rows are the rows each query produced when it was
//! decoded, kept by the cache as a ring: no extra matmul per step.

use super::policy::{Fusion, GroupAgg, Needs, Policy, ScoreCtx};

/// Window-attention scoring.
#[derive(Debug, Clone)]
pub struct MorphKv {
    pub window: usize,
    pub fusion: Fusion,
    pub group_agg: GroupAgg,
}

impl Policy for MorphKv {
    fn name(&self) -> &'static str {
        "morphkv"
    }

    fn needs(&self) -> Needs {
        Needs {
            rows: self.window,
            ..Needs::default()
        }
    }

    fn score(&self, ctx: &ScoreCtx<'_>, out: &mut [f32]) {
        let mut agg = vec![0f32; ctx.n];
        for h in 0..ctx.n_kv {
            let old = |s: usize| ctx.candidate[ctx.at(h, s)];
            for s in 0..ctx.n {
                out[ctx.at(h, s)] = 0.0;
            }
            for r in 0..ctx.ring_len {
                agg.iter_mut().for_each(|a| *a = 0.0);
                for g in 0..ctx.group {
                    let row = ctx.row(h * ctx.group + g, r);
                    let denom: f32 = (0..ctx.n).filter(|&s| old(s)).map(|s| row[s]).sum();
                    if denom <= 0.0 {
                        continue;
                    }
                    for s in (0..ctx.n).filter(|&s| old(s)) {
                        let a = row[s] / denom;
                        agg[s] = match self.group_agg {
                            GroupAgg::Sum => agg[s] + a,
                            GroupAgg::Max => agg[s].max(a),
                        };
                    }
                }
                for s in (0..ctx.n).filter(|&s| old(s)) {
                    let o = &mut out[ctx.at(h, s)];
                    *o = match self.fusion {
                        Fusion::Sum => *o + agg[s],
                        Fusion::Max => o.max(agg[s]),
                    };
                }
            }
        }
    }
}
