//! `morphkv`: Ghadia, Kumar, Jain, Nair, Das, "Dialogue Without Limits: Constant-Sized KV
//! Caches for Extended Responses in LLMs", ICML 2025 (arXiv 2503.00979).
//!
//! The cache protects the `R` most recent tokens (the window). Every older token `j` is scored
//! by the window's attention to it: for each window query `i` and query head `h`, its
//! probability renormalised over the older tokens only (a softmax over old columns equals the
//! full softmax divided by the old columns' sum), aggregated over the query heads of the KV
//! head (sum, as in the paper's Algorithm 1, or max, as in the authors' code) and fused over
//! the window (sum or max). The window's rows are the rows each query produced when it was
//! decoded, kept by the cache as a ring: no extra matmul per step, O(H_q · R · n) work.

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
        let n = ctx.n;
        // Dense loops over all slots with a 0/1 mask of old slots: they vectorise.
        let mut old = vec![0f32; n];
        let mut agg = vec![0f32; n];
        for h in 0..ctx.n_kv {
            for (o, &c) in old
                .iter_mut()
                .zip(&ctx.candidate[ctx.at(h, 0)..ctx.at(h, n)])
            {
                *o = f32::from(u8::from(c));
            }
            let fused = &mut out[ctx.at(h, 0)..ctx.at(h, n)];
            fused.fill(0.0);
            for r in 0..ctx.ring_len {
                agg.fill(0.0);
                for g in 0..ctx.group {
                    let row = ctx.row(h * ctx.group + g, r);
                    let denom = masked_sum(row, &old);
                    if denom <= 0.0 {
                        continue;
                    }
                    let inv = 1.0 / denom;
                    match self.group_agg {
                        GroupAgg::Sum => agg.iter_mut().zip(row).for_each(|(a, p)| *a += p * inv),
                        GroupAgg::Max => agg
                            .iter_mut()
                            .zip(row)
                            .for_each(|(a, p)| *a = a.max(p * inv)),
                    }
                }
                match self.fusion {
                    Fusion::Sum => fused.iter_mut().zip(&agg).for_each(|(f, a)| *f += a),
                    Fusion::Max => fused.iter_mut().zip(&agg).for_each(|(f, a)| *f = f.max(*a)),
                }
            }
        }
    }
}

/// `Σ row[s]·mask[s]` with eight independent accumulators, so the compiler vectorises it (a
/// single float accumulator must be summed in order and stays scalar).
fn masked_sum(row: &[f32], mask: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (rc, mc) = (row.chunks_exact(8), mask.chunks_exact(8));
    let tail: f32 = rc
        .remainder()
        .iter()
        .zip(mc.remainder())
        .map(|(p, m)| p * m)
        .sum();
    for (r, m) in rc.zip(mc) {
        for i in 0..8 {
            acc[i] += r[i] * m[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
