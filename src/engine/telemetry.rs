//! What the panels are told after each step: the conversation's eviction history, retention
//! counts, the focused (layer, KV head) and the inspected token, read from the cache in place.

use std::collections::VecDeque;

use super::history::{Counts, EvictionLog};
use super::travel::{self, Sizes, Travel};
use super::{HeadFate, Retention, StepInfo, TokenFate, Watch};
use crate::cache::KvCache;

/// What the panels are told after each step: the conversation's eviction history, retention
/// counts, the focused (layer, KV head) and the inspected token.
pub(super) struct Telemetry {
    pub(super) watch: Watch,
    pub(super) focus: Option<(usize, usize)>,
    pub(super) inspect: Option<usize>,
    /// The conversation's recent evictions (for the inspector and the trace).
    pub(super) log: EvictionLog,
    /// Per position, how many (layer, KV head) pairs hold it.
    pub(super) counts: Counts,
    /// Per (layer, KV head) pair, when and with what score it evicted the inspected token:
    /// found in `log` when the token is chosen, then kept up to date step by step, so the
    /// token being followed never loses its record.
    pub(super) inspected: Vec<Option<(usize, f32)>>,
    /// The conversation's length at the last step, and the stretches read in one go.
    pub(super) seen: usize,
    pub(super) prompts: VecDeque<(usize, usize)>,
}

impl Telemetry {
    pub(super) fn new(layers: usize, kv_heads: usize, budget: usize) -> Self {
        Self {
            watch: Watch::default(),
            focus: None,
            inspect: None,
            log: EvictionLog::new(layers, kv_heads, budget),
            counts: Counts::new(layers * kv_heads),
            inspected: vec![None; layers * kv_heads],
            seen: 0,
            prompts: VecDeque::new(),
        }
    }

    /// Forgets the conversation (the focus and the inspected position stay chosen).
    pub(super) fn clear(&mut self, layers: usize, kv_heads: usize, budget: usize) {
        self.log = EvictionLog::new(layers, kv_heads, budget);
        self.counts.clear();
        self.seen = 0;
        self.prompts.clear();
        self.follow();
    }

    /// Finds the inspected token's evictions in the log.
    pub(super) fn follow(&mut self) {
        self.inspected.fill(None);
        let Some(p) = self.inspect else { return };
        for r in self.log.iter().filter(|r| r.pos as usize == p) {
            if let Some(c) = self.inspected.get_mut(r.pair as usize) {
                *c = Some((r.step as usize, r.score));
            }
        }
    }

    /// Moves the cache's new evictions into the conversation's log and retention counts;
    /// returns how many.
    pub(super) fn log_evictions(&mut self, cache: &mut KvCache) -> usize {
        let step = cache.seen();
        super::trace::note_prompt(&mut self.prompts, self.seen, step);
        self.seen = step;
        self.counts.grow(step);
        let new = cache.take_evictions();
        for e in &new {
            self.counts.evict(e.pos);
            self.log.push(step, e);
            if self.inspect == Some(e.pos as usize) {
                let pair = self.log.pair(e.layer, e.head);
                if let Some(c) = self.inspected.get_mut(pair) {
                    *c = Some((step, e.score));
                }
            }
        }
        new.len()
    }

    /// The cache after a step, read in place (no copy of the cache): retention from the
    /// counts the evictions keep up to date, the focused pair's and the inspected token's
    /// details only when asked for.
    pub(super) fn step_info(&self, c: &KvCache, kv_heads: usize, evicted: usize) -> StepInfo {
        let cfg = c.config();
        let seen = c.seen();
        let layers = c.n_layers();
        let focus = self
            .focus
            .filter(|&(l, h)| l < layers && h < kv_heads)
            .map(|(l, h)| {
                let mut kept = c.layer(l).positions(h).to_vec();
                kept.sort_unstable();
                (l, h, kept)
            });
        let inspect = self.inspect.filter(|&p| p < seen).map(|p| TokenFate {
            pos: p,
            heads: (0..layers)
                .map(|l| {
                    let layer = c.layer(l);
                    (0..kv_heads)
                        .map(|h| {
                            if let Some(i) =
                                layer.positions(h).iter().position(|&q| q as usize == p)
                            {
                                return HeadFate::Kept(
                                    layer.scores(h).get(i).copied().unwrap_or(f32::NAN),
                                );
                            }
                            match self.inspected.get(self.log.pair(l, h)).copied().flatten() {
                                Some((step, score)) => HeadFate::Evicted { step, score },
                                None => HeadFate::Forgotten {
                                    by: self.log.dropped_through(),
                                },
                            }
                        })
                        .collect()
                })
                .collect(),
        });
        StepInfo {
            seen,
            retained: c.retained(),
            budget: cfg.budget,
            kv_bytes: c.kv_bytes(),
            profile_bytes: c.profile_bytes(),
            full_kv_bytes: c.full_kv_bytes(),
            window_from: seen.saturating_sub(cfg.effective_window()),
            protected_from: seen.saturating_sub(cfg.protected()),
            sinks: cfg.sinks(),
            evicted,
            retention: if self.watch.retention {
                self.counts.retention()
            } else {
                Retention::default()
            },
            pairs: layers * kv_heads,
            focus,
            attention: if self.watch.attention {
                c.last_attention().to_vec()
            } else {
                Vec::new()
            },
            decode_tps: 0.0,
            inspect,
            compare: None,
            travel: None,
            history_from: self.log.dropped_through(),
        }
    }

    /// The panels' step as it was after step `t` (clamped to the steps the history reaches),
    /// marked as travelled; the live step for None.
    pub(super) fn travel_info(&self, c: &KvCache, kv_heads: usize, t: Option<usize>) -> StepInfo {
        let Some(t) = t else {
            return self.step_info(c, kv_heads, 0);
        };
        let (latest, oldest) = (c.seen(), self.log.dropped_through());
        let t = t.clamp(oldest, latest.max(oldest));
        let now: Vec<&[u32]> = (0..c.n_layers())
            .flat_map(|l| (0..kv_heads).map(move |h| c.layer(l).positions(h)))
            .collect();
        let held = travel::held_at(t, &now, self.log.iter());
        let mut info = travel::step_info(
            t,
            &held,
            travel::evicted_at(t, self.log.iter()),
            &self.sizes(c, kv_heads),
            self.focus,
            true,
        );
        info.travel = Some(Travel {
            step: t,
            latest,
            oldest,
        });
        info.history_from = oldest;
        info
    }

    /// The cache's sizes, for rebuilt steps.
    fn sizes(&self, c: &KvCache, kv_heads: usize) -> Sizes {
        let cfg = c.config();
        Sizes {
            budget: cfg.budget,
            window: cfg.effective_window(),
            protected: cfg.protected(),
            sinks: cfg.sinks(),
            kv_heads,
            pairs: c.n_layers() * kv_heads,
            kv_bytes_per_token: c.bytes_per_token(),
            profile_bytes_per_token: c.profile_bytes() / c.retained().max(1),
        }
    }
}
