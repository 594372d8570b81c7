//! `morphkv`: Ghadia, Kumar, Jain, Nair, Das, "Dialogue Without Limits: Constant-Sized KV
//! Caches for Extended Responses in LLMs", ICML 2025 (arXiv 2503.00979).
//!
//! The cache protects the `R` most recent tokens (the window). Every older token `j` is scored
//! by the window's attention to it: for each window query `i` and query head `h`, its
//! probability renormalised over the older tokens only (a softmax over old columns equals the
//! full softmax divided by the old columns' sum), aggregated over the query heads of the KV
//! head (sum, as in the paper's Algorithm 1, or max, as in the authors' code) and fused over
//! the window (sum or max). The window's rows are the rows each query produced when it was
//! decoded, kept by the cache as a ring: no extra matmul per step, O(H_q · R · n) work. The
//! ring stores f16 (probabilities scaled by 2^15, 11 significant bits), since it is read whole
//! at every step: scores match an f32 computation to about 1e-3 relative, so only tokens whose
//! scores tie to that precision may be ranked differently.

use half::f16;
use half::slice::HalfFloatSliceExt;

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
        let mut agg = vec![0f32; n];
        // One row converted from the ring's f16 (scaled units: the scale cancels in p / D).
        let mut row = vec![0f32; n];
        let mut protected = Vec::new();
        for h in 0..ctx.n_kv {
            let cand = &ctx.candidate[ctx.at(h, 0)..ctx.at(h, n)];
            // The window and sinks: few slots, so a row's old mass is its mass minus theirs.
            protected.clear();
            protected.extend((0..n).filter(|&s| !cand[s]));
            let fused = &mut out[ctx.at(h, 0)..ctx.at(h, n)];
            fused.fill(0.0);
            for r in 0..ctx.ring_len {
                let sum_sum = self.group_agg == GroupAgg::Sum && self.fusion == Fusion::Sum;
                if !sum_sum {
                    agg.fill(0.0);
                }
                for g in 0..ctx.group {
                    let q = h * ctx.group + g;
                    let raw = ctx.row(q, r);
                    let denom = old_mass(raw, ctx.row_mass(q, r), &protected, cand, &mut row);
                    if denom <= 0.0 {
                        continue;
                    }
                    let inv = 1.0 / denom;
                    if sum_sum {
                        // Sum over heads and window: straight from the ring into the scores.
                        crate::kernels::axpy_f16(inv, raw, fused);
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
        }
    }
}

/// A ring row's probability mass over old (candidate) slots: its mass over all used slots
/// minus the protected slots' part. When the protected slots hold nearly all of it, the
/// subtraction would cancel digits, so the old slots are summed directly instead (`buf` is
/// scratch of the row's length).
fn old_mass(raw: &[f16], mass: f32, protected: &[usize], cand: &[bool], buf: &mut [f32]) -> f32 {
    let kept: f32 = protected.iter().map(|&s| raw[s].to_f32()).sum();
    let old = mass - kept;
    if old >= 0.125 * mass {
        return old;
    }
    raw.convert_to_f32_slice(buf);
    let mut acc = [0f32; 8];
    let (rc, cc) = (buf.chunks_exact(8), cand.chunks_exact(8));
    let tail: f32 = rc
        .remainder()
        .iter()
        .zip(cc.remainder())
        .map(|(p, &c)| if c { *p } else { 0.0 })
        .sum();
    for (r, c) in rc.zip(cc) {
        for i in 0..8 {
            acc[i] += if c[i] { r[i] } else { 0.0 };
        }
    }
    acc.iter().sum::<f32>() + tail
}
