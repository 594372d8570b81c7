//! What the engine remembers of a conversation's evictions, for the panels and `/trace`, in
//! memory bounded by the cache's size rather than the conversation's length.
//!
//! Decoding evicts one token from every (layer, KV head) per step (90 at the default model),
//! so a complete record grows by that much with every token. Two bounded pieces replace it:
//!
//! - [`EvictionLog`]: the most recent evictions, at most [`HISTORY_BUDGETS`] × budget per
//!   (layer, KV head), in the order they happened: a ring, so `/trace` writes the last steps'
//!   evictions exactly and says how many earlier ones it no longer holds, and the inspector
//!   finds when (and with what score) a recent token left each head.
//! - [`Counts`]: per position, how many (layer, KV heads) still hold it, kept up to date from
//!   each step's evictions (a delta, not a recount of the cache): dense over the last
//!   [`RECENT`] positions, sparse over older ones, of which only those some head still holds
//!   are stored. Its size is bounded by [`RECENT`] plus the cache's slots, whatever the
//!   conversation's length; [`Retention`] is its owned copy for a step's event.

use std::collections::VecDeque;

use crate::cache::Eviction;

/// Evictions kept per (layer, KV head), in budgets: the history covers at least the last
/// `HISTORY_BUDGETS × budget` decoded tokens. At 16 bytes an eviction that is an eighth of
/// the bytes the cache's own f32 keys and values take at head size 64.
pub const HISTORY_BUDGETS: usize = 4;

/// Evictions kept per (layer, KV head) at least, whatever the budget.
pub const HISTORY_MIN: usize = 1024;

/// Newest positions whose retention counts are kept densely (two bytes each); older ones are
/// kept only while some head holds them.
pub const RECENT: usize = 2048;

/// One eviction: when (the conversation's length then), which token, its score, and which
/// (layer, KV head) as `layer * kv_heads + head`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record {
    pub step: u32,
    pub pos: u32,
    pub score: f32,
    pub pair: u32,
}

/// The most recent evictions of a conversation, oldest first, at most `cap` of them.
#[derive(Debug)]
pub struct EvictionLog {
    ring: VecDeque<Record>,
    cap: usize,
    kv_heads: usize,
    /// Evictions the ring has let go.
    dropped: usize,
    /// The step of the newest eviction let go (0: none).
    dropped_through: usize,
}

impl EvictionLog {
    /// A log for a cache of `layers × kv_heads` heads holding `budget` tokens each.
    pub fn new(layers: usize, kv_heads: usize, budget: usize) -> Self {
        let per_head = budget.saturating_mul(HISTORY_BUDGETS).max(HISTORY_MIN);
        Self {
            ring: VecDeque::new(),
            cap: per_head.saturating_mul(layers * kv_heads).max(1),
            kv_heads: kv_heads.max(1),
            dropped: 0,
            dropped_through: 0,
        }
    }

    /// Most evictions it holds.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Evictions it holds.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Evictions it has let go, oldest first.
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// The conversation's length at the newest eviction let go (0: none): any eviction it no
    /// longer holds happened at or before it.
    pub fn dropped_through(&self) -> usize {
        self.dropped_through
    }

    /// Which (layer, KV head) pair index `layer`, `head` is.
    pub fn pair(&self, layer: usize, head: usize) -> usize {
        layer * self.kv_heads + head
    }

    /// Adds an eviction that happened when the conversation had `step` tokens.
    pub fn push(&mut self, step: usize, e: &Eviction) {
        if self.ring.len() == self.cap {
            if let Some(old) = self.ring.pop_front() {
                self.dropped += 1;
                self.dropped_through = old.step as usize;
            }
        }
        self.ring.push_back(Record {
            step: u32::try_from(step).unwrap_or(u32::MAX),
            pos: e.pos,
            score: e.score,
            pair: u32::try_from(self.pair(e.layer, e.head)).unwrap_or(u32::MAX),
        });
    }

    /// The evictions it holds, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Record> {
        self.ring.iter()
    }

    /// The layer and KV head of a record.
    pub fn layer_head(&self, r: &Record) -> (usize, usize) {
        let p = r.pair as usize;
        (p / self.kv_heads, p % self.kv_heads)
    }
}

/// Per position, how many (layer, KV head) pairs hold it, updated from evictions.
#[derive(Debug)]
pub struct Counts {
    pairs: u16,
    /// Tokens the conversation has had.
    len: usize,
    /// The first position counted densely.
    from: usize,
    /// Counts of positions `from..len`.
    recent: VecDeque<u16>,
    /// Older positions some pair held when they left `recent`, ascending, with their counts
    /// (zeros linger until compacted).
    old: Vec<(u32, u16)>,
    /// Zero counts in `old`.
    zeros: usize,
}

impl Counts {
    /// Counts for a cache of `pairs` (layer, KV head) pairs.
    pub fn new(pairs: usize) -> Self {
        Self {
            pairs: u16::try_from(pairs).unwrap_or(u16::MAX),
            len: 0,
            from: 0,
            recent: VecDeque::new(),
            old: Vec::new(),
            zeros: 0,
        }
    }

    /// Forgets everything: a new conversation.
    pub fn clear(&mut self) {
        self.len = 0;
        self.from = 0;
        self.recent.clear();
        self.old.clear();
        self.zeros = 0;
    }

    /// Entries stored (dense and sparse): bounded by [`RECENT`] plus the positions the cache
    /// holds (twice that while zeros wait to be compacted).
    #[cfg(test)]
    pub fn stored(&self) -> usize {
        self.recent.len() + self.old.len()
    }

    /// The conversation now has `seen` tokens; the new ones entered every pair.
    pub fn grow(&mut self, seen: usize) {
        while self.len < seen {
            self.recent.push_back(self.pairs);
            self.len += 1;
        }
        while self.recent.len() > RECENT {
            if let Some(c) = self.recent.pop_front() {
                if c > 0 {
                    self.old
                        .push((u32::try_from(self.from).unwrap_or(u32::MAX), c));
                }
            }
            self.from += 1;
        }
    }

    /// One pair let go of the token at `pos`.
    pub fn evict(&mut self, pos: u32) {
        let p = pos as usize;
        if p >= self.len {
            return;
        }
        if p >= self.from {
            if let Some(c) = self.recent.get_mut(p - self.from) {
                *c = c.saturating_sub(1);
            }
            return;
        }
        if let Ok(i) = self.old.binary_search_by_key(&pos, |e| e.0) {
            let c = &mut self.old[i].1;
            if *c > 0 {
                *c -= 1;
                if *c == 0 {
                    self.zeros += 1;
                }
            }
        }
        if self.zeros > 64 && self.zeros * 2 > self.old.len() {
            self.old.retain(|e| e.1 > 0);
            self.zeros = 0;
        }
    }

    /// An owned copy for an event.
    pub fn retention(&self) -> Retention {
        Retention {
            len: self.len,
            from: self.from,
            recent: self.recent.iter().copied().collect(),
            old: self.old.iter().copied().filter(|e| e.1 > 0).collect(),
        }
    }
}

/// Per position of the conversation, how many (layer, KV head) pairs retain it. Stored densely
/// for the newest positions and sparsely (only those still retained somewhere) for older ones,
/// so its size is bounded by the cache's, not the conversation's. Index it like a slice.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    len: usize,
    from: usize,
    recent: Vec<u16>,
    old: Vec<(u32, u16)>,
}

impl Retention {
    /// Positions it covers: the conversation's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it covers no position.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many pairs retain the token at `pos` (None past the conversation's end).
    pub fn get(&self, pos: usize) -> Option<u16> {
        self.slot(pos).copied()
    }

    fn slot(&self, pos: usize) -> Option<&u16> {
        if pos >= self.len {
            None
        } else if pos >= self.from {
            self.recent.get(pos - self.from)
        } else {
            let p = u32::try_from(pos).ok()?;
            Some(
                self.old
                    .binary_search_by_key(&p, |e| e.0)
                    .map_or(&0, |i| &self.old[i].1),
            )
        }
    }

    /// Entries stored: at most 2,048 (the newest positions, densely) plus the positions the
    /// cache holds.
    pub fn stored(&self) -> usize {
        self.recent.len() + self.old.len()
    }

    /// The counts of a conversation of `len` tokens whose pairs hold `held` (positions past
    /// `len` are ignored): stored like the engine's, in space bounded by what is held.
    pub fn from_held(len: usize, held: &[Vec<u32>]) -> Self {
        let from = len.saturating_sub(RECENT);
        let mut recent = vec![0u16; len - from];
        let mut old: Vec<u32> = Vec::new();
        for &p in held.iter().flatten() {
            let q = p as usize;
            if q >= len {
                continue;
            }
            if q >= from {
                recent[q - from] = recent[q - from].saturating_add(1);
            } else {
                old.push(p);
            }
        }
        old.sort_unstable();
        let mut runs: Vec<(u32, u16)> = Vec::new();
        for p in old {
            match runs.last_mut() {
                Some((q, c)) if *q == p => *c = c.saturating_add(1),
                _ => runs.push((p, 1)),
            }
        }
        Self {
            len,
            from,
            recent,
            old: runs,
        }
    }
}

impl std::ops::Index<usize> for Retention {
    type Output = u16;

    /// Panics past the conversation's end, like a slice.
    fn index(&self, pos: usize) -> &u16 {
        match self.slot(pos) {
            Some(c) => c,
            None => panic!(
                "position {pos} is past the conversation's {} tokens",
                self.len
            ),
        }
    }
}

/// Dense counts from position 0.
impl FromIterator<u16> for Retention {
    fn from_iter<I: IntoIterator<Item = u16>>(iter: I) -> Self {
        let recent: Vec<u16> = iter.into_iter().collect();
        Self {
            len: recent.len(),
            from: 0,
            recent,
            old: Vec::new(),
        }
    }
}

/// Equal when every position's count is, however stored.
impl PartialEq for Retention {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && (0..self.len).all(|p| self.get(p) == other.get(p))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn eviction(layer: usize, head: usize, pos: u32) -> Eviction {
        Eviction {
            layer,
            head,
            pos,
            score: pos as f32 * 0.5,
        }
    }

    /// A cache of `budget` slots per pair driven for `steps` decoded tokens, evicting one
    /// token per pair per step (chosen by a xorshift), through both records; the brute-force
    /// retention is compared at every step.
    #[test]
    fn counts_follow_the_evictions_and_stay_bounded() {
        let (layers, heads, budget, steps) = (3, 2, 40, 6000);
        let pairs = layers * heads;
        let mut held: Vec<Vec<u32>> = vec![Vec::new(); pairs];
        let mut counts = Counts::new(pairs);
        let mut log = EvictionLog::new(layers, heads, budget);
        let mut seed = 5u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut max_stored = 0;
        for seen in 1..=steps {
            counts.grow(seen);
            for (i, h) in held.iter_mut().enumerate() {
                h.push(seen as u32 - 1);
                if h.len() > budget {
                    // Keep the 4 oldest (sinks) and the newest 8 (window) most of the time.
                    let at = 4 + next() as usize % (h.len() - 12);
                    let pos = h.remove(at);
                    counts.evict(pos);
                    log.push(seen, &eviction(i / heads, i % heads, pos));
                }
            }
            let r = counts.retention();
            max_stored = max_stored.max(counts.stored());
            if seen % 97 == 0 || seen == steps {
                let mut want = vec![0u16; seen];
                for h in &held {
                    for &p in h {
                        want[p as usize] += 1;
                    }
                }
                let got: Vec<u16> = (0..seen).map(|p| r[p]).collect();
                assert_eq!(got, want, "after {seen} tokens");
                assert_eq!(r.get(seen), None);
                assert_eq!(r, want.iter().copied().collect::<Retention>());
            }
        }
        // Bounded by the dense part plus what the cache holds (twice, with zeros pending),
        // not by the 6,000 tokens.
        assert!(
            max_stored <= RECENT + 2 * pairs * budget + 64,
            "{max_stored} entries"
        );
        // The log holds the newest evictions only, in order, and says what it let go.
        let evictions = pairs * (steps - budget);
        assert_eq!(log.len(), log.capacity());
        assert_eq!(log.capacity(), pairs * HISTORY_MIN);
        assert_eq!(log.dropped(), evictions - log.capacity());
        let steps_held: Vec<u32> = log.iter().map(|r| r.step).collect();
        assert!(steps_held.windows(2).all(|w| w[0] <= w[1]));
        assert!(log.dropped_through() <= steps_held[0] as usize);
        let r = log.iter().last().unwrap();
        assert_eq!(r.step as usize, steps);
        assert_eq!(log.layer_head(r), (layers - 1, heads - 1));
    }

    /// The history's memory stays put however long the conversation runs: the old engine's
    /// list of every eviction grew by one record per (layer, KV head) per token.
    #[test]
    fn the_eviction_log_is_bounded_by_the_budget() {
        let (layers, heads, budget) = (30, 3, 300);
        let mut log = EvictionLog::new(layers, heads, budget);
        let cap = layers * heads * budget * HISTORY_BUDGETS;
        assert_eq!(log.capacity(), cap);
        for step in 0..20_000u32 {
            for l in 0..layers {
                for h in 0..heads {
                    log.push(step as usize + 1, &eviction(l, h, step));
                }
            }
            assert!(log.ring.capacity() <= 2 * cap);
        }
        assert_eq!(log.len(), cap);
        assert_eq!(log.dropped(), 20_000 * layers * heads - cap);
        // 16 bytes an eviction: under 4 MiB at budget 300 on the default model's shape.
        assert!(log.ring.capacity() * std::mem::size_of::<Record>() <= 4 << 20);
    }
}
