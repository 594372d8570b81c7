//! `full`: keep every token. The reference for every fidelity figure.

use super::policy::{Phase, Policy, ScoreCtx};

/// Never evicts; the cache grows with the conversation.
#[derive(Debug, Clone, Default)]
pub struct Full;

impl Policy for Full {
    fn name(&self) -> &'static str {
        "full"
    }

    fn evicts(&self, _phase: Phase) -> bool {
        false
    }

    fn score(&self, _ctx: &ScoreCtx<'_>, _out: &mut [f32]) {}
}
