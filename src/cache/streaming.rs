//! `streaming`: StreamingLLM — Xiao, Tian, Chen, Han, Lewis, "Efficient Streaming Language
//! Models with Attention Sinks", ICLR 2024 (arXiv 2309.17453).
//!
//! Keep the first `sinks` tokens (attention sinks, protected by the cache) and the most recent
//! ones: among candidates, newer scores higher.

use super::policy::{Policy, ScoreCtx};

/// Attention sinks + a sliding window.
#[derive(Debug, Clone, Default)]
pub struct Streaming;

impl Policy for Streaming {
    fn name(&self) -> &'static str {
        "streaming"
    }

    fn score(&self, ctx: &ScoreCtx<'_>, out: &mut [f32]) {
        for h in 0..ctx.n_kv {
            for s in 0..ctx.n {
                let i = ctx.at(h, s);
                out[i] = ctx.pos[i] as f32;
            }
        }
    }
}
