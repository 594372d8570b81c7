//! Eviction: a [`Policy`] scores one layer's candidate slots (neither sinks nor window), the
//! lowest-scoring ones per KV head go, and survivors from the tail refill their holes. Layers
//! evict in parallel; each keeps its ranks (re-based positions) and its profile in step.

use super::policy::{Policy, ScoreCtx};
use super::slots::LayerCache;
use super::telemetry::Eviction;
use super::{KvCache, Positions};
use crate::error::Result;

/// The candidate slot with the lowest score, ties going to the older token: the first of the
/// order the general selection uses, found in one branch-free pass. A slot's key packs its
/// score's total-order bits above its position, so one integer minimum decides both, and the
/// position (unique within a head) finds the slot again.
fn lowest(scores: &[f32], candidate: &[bool], pos: &[u32]) -> Option<usize> {
    let key = |(&s, (&c, &p)): (&f32, (&bool, &u32))| {
        let bits = s.to_bits() as i32;
        // `f32::total_cmp`'s key: negative values' magnitude bits flipped.
        let ordered = bits ^ (((bits >> 31) as u32) >> 1) as i32;
        if c {
            (i64::from(ordered) << 32) | i64::from(p)
        } else {
            i64::MAX
        }
    };
    // (Without candidates the minimum is `i64::MAX`, and no candidate matches below.)
    let at = scores
        .iter()
        .zip(candidate.iter().zip(pos))
        .map(key)
        .min()? as u32;
    (0..scores.len()).find(|&s| candidate[s] && pos[s] == at)
}

/// One eviction round, the same for every layer.
#[derive(Debug, Clone, Copy)]
struct Round {
    /// Tokens to evict per KV head (at most).
    m: usize,
    /// Positions below it are sinks (protected).
    sinks: u32,
    /// Positions from it on are protected: the window, or the budget's recent share.
    protected_from: u32,
    /// The window's lower edge: the profile's old columns end here (at or after
    /// `protected_from`, which is what protects).
    recent_from: u32,
    /// The window's lower edge at the next scoring.
    next_from: u32,
    /// Whether to keep the slots' ranks (re-based positions).
    ranks: bool,
    /// Whether to return the evictions (the cache records them).
    record: bool,
}

/// Closes the gaps that evicting the slots `victims` leaves in one head's `ranks` (its used
/// slots'; victims' own entries become meaningless).
fn close_ranks(ranks: &mut [u32], victims: &[usize]) {
    let mut gone: Vec<u32> = victims.iter().map(|&s| ranks[s]).collect();
    gone.sort_unstable();
    if gone.len() <= 4 {
        // A few victims (decoding): one branch-free sweep per victim, highest rank first, so
        // that each compares with ranks the later ones have not moved.
        for &g in gone.iter().rev() {
            ranks.iter_mut().for_each(|r| *r -= u32::from(*r > g));
        }
    } else {
        for r in ranks {
            *r -= gone.partition_point(|&g| g < *r) as u32;
        }
    }
}

impl LayerCache {
    /// Scores this layer's candidates with `policy` and evicts up to `round.m` per KV head.
    fn evict(&mut self, l: usize, policy: &dyn Policy, round: &Round) -> Result<Vec<Eviction>> {
        let Round {
            m,
            sinks,
            protected_from,
            recent_from,
            next_from,
            ranks,
            record,
        } = *round;
        let (n, cap) = (self.len, self.cap);
        self.profile
            .advance_old(&self.pos, n, self.n_kv, sinks, recent_from);
        // Reused between rounds (entries past `n` are stale and unread).
        let mut candidate = std::mem::take(&mut self.candidate);
        candidate.resize(self.n_kv * cap, false);
        for h in 0..self.n_kv {
            let at = h * cap;
            for (c, &p) in candidate[at..at + n].iter_mut().zip(&self.pos[at..at + n]) {
                *c = p >= sinks && p < protected_from;
            }
            // The policy scores straight into the slots' latest scores.
            self.score[at..at + n].fill(0.0);
        }
        let ctx = ScoreCtx {
            n_kv: self.n_kv,
            group: self.group,
            row_group: self.profile.group(),
            n,
            cap,
            pos: &self.pos,
            candidate: &candidate,
            acc: &self.acc,
            ring: self.profile.ring(),
            ring_cap: self.profile.rows(),
            ring_len: self.profile.len(),
            old_mass: self.profile.old_mass(),
        };
        policy.score(&ctx, &mut self.score);
        let scores = &self.score;
        let mut evicted = Vec::new();
        let mut moves = Vec::with_capacity(self.n_kv);
        // Per head: victims, slots turning old, the length kept (the ring's side, below).
        let mut columns = Vec::with_capacity(self.n_kv);
        let mut new_len = n;
        let mut cands = Vec::with_capacity(n);
        for h in 0..self.n_kv {
            let base = h * cap;
            let pos = &self.pos;
            let (head_scores, head_cand) = (&scores[base..base + n], &candidate[base..base + n]);
            cands.clear();
            if m == 1 {
                // The decode step's case, in one pass.
                cands.extend(lowest(head_scores, head_cand, &pos[base..base + n]));
            } else {
                cands.extend((0..n).filter(|&s| head_cand[s]));
                let take = m.min(cands.len());
                // Lowest score first; ties evict the older token (a total order, so the set
                // of victims is deterministic).
                let order = |a: &usize, b: &usize| {
                    head_scores[*a]
                        .total_cmp(&head_scores[*b])
                        .then(pos[base + a].cmp(&pos[base + b]))
                };
                if take > 0 && take < cands.len() {
                    cands.select_nth_unstable_by(take - 1, order);
                }
                cands.truncate(take);
            }
            let take = cands.len();
            let victims = &mut cands[..];
            victims.sort_unstable();
            if record {
                evicted.extend(victims.iter().map(|&s| Eviction {
                    layer: l,
                    head: h,
                    pos: pos[base + s],
                    score: scores[base + s],
                }));
            }
            // Survivors' ranks close the gaps the victims leave (re-based positions).
            if ranks {
                close_ranks(&mut self.rank[base..base + n], victims);
            }
            // Refill holes below the new length with survivors from the tail.
            let keep_len = n - take;
            let holes = victims.iter().copied().filter(|&s| s < keep_len);
            let tail = (keep_len..n).filter(|s| victims.binary_search(s).is_err());
            let head_moves = tail.zip(holes).collect::<Vec<_>>();
            // Tokens that leave the window before the next scoring turn old then: their
            // columns join the old mass now (slots before the moves).
            let lo = self.profile.old_to().max(sinks);
            let ahead: Vec<usize> = (0..n)
                .filter(|&s| (lo..next_from).contains(&pos[base + s]))
                .collect();
            columns.push((victims.to_vec(), ahead, keep_len));
            moves.push(head_moves);
            new_len = keep_len;
        }
        for (h, (victims, ahead, keep_len)) in columns.iter().enumerate() {
            let pos = &self.pos[h * cap..h * cap + n];
            self.profile
                .evict_columns(h, pos, victims, ahead, &moves[h], *keep_len);
        }
        self.candidate = candidate;
        self.move_slots(&moves)?;
        self.len = new_len;
        self.profile.raise_edge(next_from);
        Ok(evicted)
    }
}

impl KvCache {
    /// Evicts up to `m` tokens per KV head in every layer (layers in parallel: each one's
    /// scoring is independent). `ahead` is how many tokens later the next scoring's window
    /// starts (1 before a decoded token, 0 after a chunk).
    pub(super) fn evict(&mut self, m: usize, ahead: u32) -> Result<()> {
        use rayon::prelude::*;
        let window = self.cfg.effective_window() as u32;
        let sinks = self.cfg.sinks() as u32;
        // At least the window (`protected` ≥ the window): the profile's edges stay the window's.
        let protected_from = self.next_pos.saturating_sub(self.cfg.protected() as u32);
        let recent_from = self.next_pos.saturating_sub(window);
        // The window's edge at the next scoring, if it comes one decoded token later.
        let next_from = (self.next_pos + ahead).saturating_sub(window);
        let policy = &*self.policy;
        let round = Round {
            m,
            sinks,
            protected_from,
            recent_from,
            next_from,
            ranks: self.cfg.positions == Positions::Rebased,
            record: self.record,
        };
        let evicted = self
            .layers
            .par_iter_mut()
            .enumerate()
            .map(|(l, layer)| layer.evict(l, policy, &round))
            .collect::<Result<Vec<_>>>()?;
        if self.record {
            self.evicted.extend(evicted.into_iter().flatten());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::lowest;

    /// `lowest` picks what the general selection picks first: the minimum by score's total
    /// order, then by position, among candidates only.
    #[test]
    fn lowest_matches_the_total_order() {
        let mut seed = 7u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let values = [-1.5f32, -0.0, 0.0, 0.25, 0.25, 3.0, f32::INFINITY, f32::NAN];
        for n in [0usize, 1, 2, 7, 64, 601] {
            for _ in 0..50 {
                let scores: Vec<f32> = (0..n).map(|_| values[next() as usize % 8]).collect();
                let candidate: Vec<bool> = (0..n).map(|_| next() % 4 != 0).collect();
                // Distinct positions in shuffled order.
                let mut pos: Vec<u32> = (0..n as u32).map(|p| p * 3 + 1).collect();
                for i in (1..n).rev() {
                    pos.swap(i, next() as usize % (i + 1));
                }
                let want = (0..n)
                    .filter(|&s| candidate[s])
                    .min_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(pos[a].cmp(&pos[b])));
                assert_eq!(lowest(&scores, &candidate, &pos), want, "n {n}");
            }
        }
    }
}
