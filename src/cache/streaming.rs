//! `streaming`: StreamingLLM — Xiao, Tian, Chen, Han, Lewis, "Efficient Streaming Language
//! Models with Attention Sinks", ICLR 2024 (arXiv 2309.17453).
//!
//! Keep the first `sinks` tokens (attention sinks, protected by the cache) and the most recent
//! ones: among candidates, newer scores higher.

use super::policy::Settings;
use super::registry::Entry;
use super::policy::{Policy, ScoreCtx};

/// `streaming`'s registry entry.
pub const ENTRY: Entry = Entry {
    name: "streaming",
    about: "attention sinks plus the most recent tokens (StreamingLLM)",
    sinks: 4,
    window: None,
    default_window: super::BASELINE_WINDOW,
    recent: 0,
    build,
};

fn build(_: &Settings) -> Box<dyn Policy> {
    Box::new(Streaming)
}

/// Attention sinks + a sliding window.
#[derive(Debug, Clone, Default)]
pub struct Streaming;

impl Policy for Streaming {
    fn name(&self) -> &'static str {
        ENTRY.name
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
