//! Time travel: the cache as it was after an earlier step, rebuilt from what each (layer, KV
//! head) pair holds now and the evictions the bounded history holds.
//!
//! After step `t` (the conversation then had `t` tokens) a pair held every position `p < t`
//! that it still holds now or that it evicted at a step after `t`. That needs every eviction
//! after `t`: the history lets the oldest go first, and each it lets go happened at or before
//! its `dropped_through` step, so the steps from there to now are reachable
//! ([`Travel::oldest`]); older ones are not. A prompt is read in one go and its evictions
//! taken at its end: a step inside one shows the prompt's tokens read so far, before the
//! cache compressed them.

use super::history::{Record, Retention};
use super::StepInfo;

/// Marks a [`StepInfo`] that is not the live step but the cache as it was after `step`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Travel {
    /// The step shown: the conversation's length then.
    pub step: usize,
    /// The live step's conversation length.
    pub latest: usize,
    /// The oldest step the eviction history reaches.
    pub oldest: usize,
}

/// What the panels' numbers need besides the retained positions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sizes {
    pub budget: usize,
    /// The window in effect.
    pub window: usize,
    /// The recent tokens kept whatever their scores (the window or the recent share).
    pub protected: usize,
    pub sinks: usize,
    pub kv_heads: usize,
    pub pairs: usize,
    pub kv_bytes_per_token: usize,
    pub profile_bytes_per_token: usize,
}

impl Sizes {
    /// The panels' sizes after step `t`, with `retained` tokens per pair and `evicted` at
    /// that step; no retention, focus or attention.
    pub fn step(&self, t: usize, retained: usize, evicted: usize) -> StepInfo {
        StepInfo {
            seen: t,
            retained,
            budget: self.budget,
            kv_bytes: retained * self.kv_bytes_per_token,
            profile_bytes: retained * self.profile_bytes_per_token,
            full_kv_bytes: t * self.kv_bytes_per_token,
            window_from: t.saturating_sub(self.window),
            protected_from: t.saturating_sub(self.protected),
            sinks: self.sinks,
            evicted,
            pairs: self.pairs,
            ..StepInfo::default()
        }
    }
}

/// The positions each pair held after step `t`, ascending: those of `now[pair]` before `t`
/// and those `log` says the pair evicted after `t`. Exact for `t` at or after the step the
/// log's oldest let-go eviction happened at.
pub fn held_at<'r>(
    t: usize,
    now: &[&[u32]],
    log: impl IntoIterator<Item = &'r Record>,
) -> Vec<Vec<u32>> {
    let mut held: Vec<Vec<u32>> = now
        .iter()
        .map(|ps| ps.iter().copied().filter(|&p| (p as usize) < t).collect())
        .collect();
    for r in log {
        if r.step as usize > t && (r.pos as usize) < t {
            if let Some(v) = held.get_mut(r.pair as usize) {
                v.push(r.pos);
            }
        }
    }
    for v in &mut held {
        v.sort_unstable();
        v.dedup();
    }
    held
}

/// Evictions `log` holds that happened at step `t` (over all pairs).
pub fn evicted_at<'r>(t: usize, log: impl IntoIterator<Item = &'r Record>) -> usize {
    log.into_iter().filter(|r| r.step as usize == t).count()
}

/// The panels' step after `t`, from what each pair `held` then: retention counts when
/// `retention`, the `focus`ed pair's positions, the sizes; no attention (it is not kept).
pub fn step_info(
    t: usize,
    held: &[Vec<u32>],
    evicted: usize,
    sizes: &Sizes,
    focus: Option<(usize, usize)>,
    retention: bool,
) -> StepInfo {
    let retained = held.first().map_or(0, Vec::len);
    let focus = focus.and_then(|(l, h)| {
        let pair = l.checked_mul(sizes.kv_heads)?.checked_add(h)?;
        (h < sizes.kv_heads)
            .then(|| held.get(pair))
            .flatten()
            .map(|v| (l, h, v.clone()))
    });
    StepInfo {
        retention: if retention {
            Retention::from_held(t, held)
        } else {
            Retention::default()
        },
        focus,
        ..sizes.step(t, retained, evicted)
    }
}

/// Per step from `from` to `to` (both included): (step, tokens a pair retained, evictions at
/// that step over all pairs), in one pass backwards from `retained_now` (what pair 0 holds at
/// `to`): a step adds its token and gives back what it evicted, as the cache does.
pub fn retained_by_step<'r>(
    from: usize,
    to: usize,
    retained_now: usize,
    log: impl DoubleEndedIterator<Item = &'r Record>,
) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::with_capacity(to.saturating_sub(from) + 1);
    let mut log = log.rev().peekable();
    let mut retained = retained_now;
    let mut t = to;
    loop {
        // Evictions logged at step t (the log is in step order).
        let (mut all, mut pair0) = (0, 0);
        while let Some(r) = log.next_if(|r| r.step as usize >= t) {
            if r.step as usize == t {
                all += 1;
                pair0 += usize::from(r.pair == 0);
            }
        }
        out.push((t, retained, all));
        if t <= from || t == 0 {
            break;
        }
        retained = (retained + pair0).saturating_sub(1);
        t -= 1;
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A cache of 2 pairs, budget 4, driven for 30 steps evicting a pseudo-random old token;
    /// every step's held set is rebuilt from the end state and the log and equals the one
    /// recorded at that step.
    #[test]
    fn the_past_is_rebuilt_from_the_present_and_the_log() {
        let (pairs, budget) = (2, 4);
        let mut held: Vec<Vec<u32>> = vec![Vec::new(); pairs];
        let mut log = Vec::new();
        let mut snapshots = vec![held.clone()];
        for t in 1..=30usize {
            for (i, h) in held.iter_mut().enumerate() {
                h.push(t as u32 - 1);
                if h.len() > budget {
                    let at = (t * 7 + i * 3) % (h.len() - 1);
                    let pos = h.remove(at);
                    log.push(Record {
                        step: t as u32,
                        pos,
                        score: 0.5,
                        pair: i as u32,
                    });
                }
            }
            let mut s = held.clone();
            s.iter_mut().for_each(|v| v.sort_unstable());
            snapshots.push(s);
        }
        let now: Vec<&[u32]> = held.iter().map(Vec::as_slice).collect();
        for (t, want) in snapshots.iter().enumerate() {
            assert_eq!(&held_at(t, &now, &log), want, "step {t}");
        }
        let by_step = retained_by_step(0, 30, held[0].len(), log.iter());
        assert_eq!(by_step.len(), 31);
        for (t, retained, evicted) in by_step {
            assert_eq!(retained, snapshots[t][0].len(), "step {t}");
            assert_eq!(evicted, evicted_at(t, &log));
        }
        let sizes = Sizes {
            budget,
            window: 2,
            protected: 5,
            sinks: 0,
            kv_heads: 2,
            pairs,
            kv_bytes_per_token: 10,
            profile_bytes_per_token: 1,
        };
        let s = step_info(20, &snapshots[20], 2, &sizes, Some((0, 1)), true);
        assert_eq!(
            (s.seen, s.retained, s.kv_bytes, s.full_kv_bytes),
            (20, 4, 40, 200)
        );
        assert_eq!((s.window_from, s.protected_from), (18, 15));
        assert_eq!(s.focus, Some((0, 1, snapshots[20][1].clone())));
        let counts: usize = (0..20).map(|p| usize::from(s.retention[p])).sum();
        assert_eq!(counts, 8);
    }

    /// Once the bounded log lets evictions go, every step from its `dropped_through` on is
    /// still rebuilt exactly.
    #[test]
    fn steps_the_bounded_log_still_covers_are_exact() {
        use crate::cache::Eviction;
        use crate::engine::history::EvictionLog;
        let (budget, steps) = (8, 3000);
        let mut log = EvictionLog::new(1, 2, budget);
        let mut held: Vec<Vec<u32>> = vec![Vec::new(); 2];
        let mut snapshots = Vec::new();
        for t in 1..=steps {
            for (i, h) in held.iter_mut().enumerate() {
                h.push(t as u32 - 1);
                if h.len() > budget {
                    let pos = h.remove((t * 5 + i) % (h.len() - 2));
                    let e = Eviction {
                        layer: 0,
                        head: i,
                        pos,
                        score: 1.0,
                    };
                    log.push(t, &e);
                }
            }
            let mut s = held.clone();
            s.iter_mut().for_each(|v| v.sort_unstable());
            snapshots.push(s);
        }
        let oldest = log.dropped_through();
        assert!(log.dropped() > 0 && oldest > 1000, "{oldest}");
        let now: Vec<&[u32]> = held.iter().map(Vec::as_slice).collect();
        for t in oldest..=steps {
            assert_eq!(held_at(t, &now, log.iter()), snapshots[t - 1], "step {t}");
        }
    }
}
