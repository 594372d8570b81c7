//! `h2o`: Heavy-Hitter Oracle — Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient
//! Generative Inference of Large Language Models", NeurIPS 2023 (arXiv 2306.14048).
//!
//! Score = attention a token has received, summed over every query since it entered the cache
//! (and over the query heads of its KV head); the cache keeps this sum per slot, moves it with
//! the slot and restarts it when a slot is reused. The recent half of the budget is
//! protected, as the paper splits it (`--recent 50`; the window in any case).

use super::policy::Settings;
use super::registry::Entry;
use super::policy::{Needs, Policy, ScoreCtx};

/// `h2o`'s registry entry.
pub const ENTRY: Entry = Entry {
    name: "h2o",
    about: "heavy hitters: attention accumulated since each token entered, plus the recent half of the budget",
    sinks: 0,
    window: None,
    default_window: super::BASELINE_WINDOW,
    recent: 50,
    build,
};

fn build(_: &Settings) -> Box<dyn Policy> {
    Box::new(H2o)
}

/// Accumulated-attention scoring.
#[derive(Debug, Clone, Default)]
pub struct H2o;

impl Policy for H2o {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn needs(&self) -> Needs {
        Needs {
            accumulate: true,
            ..Needs::default()
        }
    }

    fn score(&self, ctx: &ScoreCtx<'_>, out: &mut [f32]) {
        for h in 0..ctx.n_kv {
            for s in 0..ctx.n {
                let i = ctx.at(h, s);
                out[i] = ctx.acc[i];
            }
        }
    }
}
