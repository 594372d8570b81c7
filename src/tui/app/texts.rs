//! The token texts the panels show (the retention view, the inspector's title, the attention
//! panel's top tokens), in memory bounded by the cache's size rather than the conversation's
//! length.
//!
//! A position's text is kept while some view can still show it:
//! - every position from the oldest step time travel reaches ([`StepInfo::history_from`]) on,
//!   and at least the newest [`MIN_RECENT`], densely: a step shown there has them all;
//! - older positions only while some (layer, KV head) still holds them, or held them at a step
//!   time travel reaches, or the inspector follows them.
//!
//! Everything else has been evicted by every head before any step a view can show, so no view
//! draws it. Its length is still the conversation's: positions are never renumbered.

use std::collections::{BTreeMap, VecDeque};

use crate::engine::StepInfo;

/// The newest positions whose texts are kept whatever the history reaches.
pub const MIN_RECENT: usize = 1024;

/// Token texts by position, bounded as the module says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenTexts {
    /// Positions `from..from + recent.len()`, every one.
    recent: VecDeque<String>,
    from: usize,
    /// Older positions still worth showing: (text, the last step some head held it at).
    older: BTreeMap<usize, (String, usize)>,
}

impl TokenTexts {
    /// Positions the conversation has had (not the texts stored).
    pub fn len(&self) -> usize {
        self.from + self.recent.len()
    }

    /// Whether the conversation has no position yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Texts stored: bounded by the history's reach plus what the cache holds.
    pub fn stored(&self) -> usize {
        self.recent.len() + self.older.len()
    }

    /// The text of the token at `pos`, if it is still kept.
    pub fn get(&self, pos: usize) -> Option<&str> {
        if pos >= self.from {
            self.recent.get(pos - self.from).map(String::as_str)
        } else {
            self.older.get(&pos).map(|(t, _)| t.as_str())
        }
    }

    /// The next position's text.
    pub fn push(&mut self, text: String) {
        self.recent.push_back(text);
    }

    /// Forgets every position from `len` on (a conversation read again from the start).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.from {
            self.recent.truncate(len - self.from);
        } else {
            self.recent.clear();
            self.from = len;
            self.older.split_off(&len);
        }
    }

    /// Forgets the conversation.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The kept texts, by ascending position.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &str)> {
        let older = self.older.iter().map(|(&p, (t, _))| (p, t.as_str()));
        let recent = self.recent.iter().enumerate();
        older.chain(recent.map(|(i, t)| (self.from + i, t.as_str())))
    }

    /// After a live step: lets go of the texts no view can show any more. `inspect` is the
    /// position the inspector follows, whose text stays.
    pub fn prune(&mut self, step: &StepInfo, inspect: Option<usize>) {
        let len = self.len();
        let dense_from = step
            .history_from
            .min(len.saturating_sub(MIN_RECENT))
            .min(step.seen);
        let held = |p: usize| step.retention.get(p).is_some_and(|c| c > 0) || inspect == Some(p);
        while self.from < dense_from {
            let Some(text) = self.recent.pop_front() else {
                break;
            };
            if held(self.from) {
                self.older.insert(self.from, (text, step.seen));
            }
            self.from += 1;
        }
        self.older.retain(|&p, (_, last)| {
            if held(p) {
                *last = step.seen;
            }
            *last >= step.history_from
        });
    }
}

impl Extend<String> for TokenTexts {
    fn extend<I: IntoIterator<Item = String>>(&mut self, iter: I) {
        self.recent.extend(iter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Retention;

    /// A step of a conversation of `seen` tokens whose pairs hold `held`, the history
    /// reaching back to `history_from`.
    fn step(seen: usize, held: &[u32], history_from: usize) -> StepInfo {
        StepInfo {
            seen,
            retention: Retention::from_held(seen, &[held.to_vec()]),
            history_from,
            ..StepInfo::default()
        }
    }

    fn texts(n: usize) -> TokenTexts {
        let mut t = TokenTexts::default();
        t.extend((0..n).map(|p| format!("t{p}")));
        t
    }

    #[test]
    fn a_long_conversation_keeps_what_is_held_and_the_reach_of_the_history() {
        let mut t = texts(0);
        let budget = 300;
        let reach = 1200;
        // Every step holds the 4 sinks, one old heavy hitter (position 10), and the newest
        // `budget - 5` positions.
        for seen in 1..=50_000usize {
            t.push(format!("t{}", seen - 1));
            let mut held: Vec<u32> = vec![0, 1, 2, 3, 10];
            held.extend((seen.saturating_sub(budget - 5)..seen).map(|p| p as u32));
            held.sort_unstable();
            held.dedup();
            t.prune(&step(seen, &held, seen.saturating_sub(reach)), Some(20));
            assert_eq!(t.len(), seen);
            assert!(
                t.stored() <= reach.max(MIN_RECENT) + 6,
                "{} stored",
                t.stored()
            );
        }
        for p in [0, 3, 10, 20, 48_800, 49_999] {
            assert_eq!(t.get(p), Some(format!("t{p}").as_str()), "position {p}");
        }
        // Evicted by every head before the history's reach, and not inspected: gone.
        assert_eq!(t.get(11), None);
        assert_eq!(t.get(30_000), None);
        assert_eq!(t.get(50_000), None);
        let kept: Vec<usize> = t.iter().map(|(p, _)| p).collect();
        assert!(kept.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(kept[..6], [0, 1, 2, 3, 10, 20]);
        assert_eq!(kept.len(), t.stored());
    }

    #[test]
    fn a_token_evicted_inside_the_reach_stays_until_the_reach_passes_it() {
        let mut t = texts(3000);
        // Position 5 held at step 3000, the history reaching back to 1000.
        t.prune(&step(3000, &[5], 1000), None);
        assert_eq!(t.get(5), Some("t5"));
        assert_eq!(t.get(6), None);
        assert_eq!(t.get(999), None);
        assert_eq!(t.get(1000), Some("t1000"));
        // Evicted since: time travel to step 3000 still shows it while the history reaches it.
        t.extend((3000..4000).map(|p| format!("t{p}")));
        t.prune(&step(4000, &[], 3000), None);
        assert_eq!(t.get(5), Some("t5"));
        t.extend((4000..4100).map(|p| format!("t{p}")));
        t.prune(&step(4100, &[], 3001), None);
        assert_eq!(t.get(5), None);
    }

    #[test]
    fn a_full_cache_keeps_every_text_and_truncating_forgets_the_tail() {
        let mut t = texts(5000);
        // A full cache's history reaches the start.
        t.prune(&step(5000, &[], 0), None);
        assert_eq!(t.stored(), 5000);
        t.prune(&step(5000, &[7], 4500), None);
        assert_eq!((t.len(), t.get(7), t.get(8)), (5000, Some("t7"), None));
        assert_eq!(t.get(3976), Some("t3976"), "the newest MIN_RECENT stay");
        assert_eq!(t.get(3975), None);
        t.truncate(4000);
        assert_eq!(
            (t.len(), t.get(3999), t.get(4000)),
            (4000, Some("t3999"), None)
        );
        t.truncate(5);
        assert_eq!((t.len(), t.get(4), t.get(7)), (5, None, None));
        t.push("again".into());
        assert_eq!(t.get(5), Some("again"));
        t.clear();
        assert!(t.is_empty());
    }
}
