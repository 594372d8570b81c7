//! `full`: keep every token. The reference for every fidelity figure.

use super::policy::Settings;
use super::registry::Entry;
use super::policy::{Phase, Policy, ScoreCtx};

/// `full`'s registry entry.
pub const ENTRY: Entry = Entry {
    name: "full",
    about: "keeps every token (the reference)",
    sinks: 0,
    window: None,
    default_window: super::BASELINE_WINDOW,
    recent: 0,
    build,
};

fn build(_: &Settings) -> Box<dyn Policy> {
    Box::new(Full)
}

/// Never evicts; the cache grows with the conversation.
#[derive(Debug, Clone, Default)]
pub struct Full;

impl Policy for Full {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn evicts(&self, _phase: Phase) -> bool {
        false
    }

    fn score(&self, _ctx: &ScoreCtx<'_>, _out: &mut [f32]) {}
}
