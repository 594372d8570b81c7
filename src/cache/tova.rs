//! `tova`: Token Omission Via Attention — Oren, Hassid, Yarden, Adi, Schwartz, "Transformers
//! are Multi-State RNNs", 2024 (arXiv 2401.06104).
//!
//! Score = the current query's attention to each token, averaged over the query heads that
//! share the KV head (the paper averages over all heads of a layer; with GQA we keep one
//! decision per KV head). Only the newest token is protected: a window of 1.

use super::policy::Settings;
use super::registry::Entry;
use super::policy::{Needs, Policy, ScoreCtx, RING_SCALE};

/// `tova`'s registry entry.
pub const ENTRY: Entry = Entry {
    name: "tova",
    about: "the current query's attention; only the newest token is protected",
    sinks: 0,
    window: Some(1),
    default_window: super::BASELINE_WINDOW,
    recent: 0,
    build,
};

fn build(_: &Settings) -> Box<dyn Policy> {
    Box::new(Tova)
}

/// Latest-query attention scoring.
#[derive(Debug, Clone, Default)]
pub struct Tova;

impl Policy for Tova {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn needs(&self) -> Needs {
        Needs {
            rows: 1,
            ..Needs::default()
        }
    }

    fn score(&self, ctx: &ScoreCtx<'_>, out: &mut [f32]) {
        for h in 0..ctx.n_kv {
            for s in 0..ctx.n {
                out[ctx.at(h, s)] = 0.0;
            }
            if ctx.ring_len == 0 {
                continue;
            }
            let mut row = vec![0f32; ctx.n];
            let unit = 1.0 / (RING_SCALE * ctx.row_group as f32);
            for g in 0..ctx.row_group {
                ctx.row_into(h * ctx.row_group + g, 0, &mut row);
                for (s, p) in row.iter().enumerate() {
                    out[ctx.at(h, s)] += p * unit;
                }
            }
        }
    }
}
