//! MorphKV's attention profile: a ring of the most recent queries' attention rows over one
//! layer's slots, and each row's *old mass* (its sum over the old slots), which policies score
//! from without another matmul (see `shared/design/morphkv.md`).
//!
//! The interface, which a device implementation must keep:
//! - [`Profile::observe`] stores rows as a step's queries produce them;
//! - [`Profile::advance_old`] moves the old/window edge (tokens leaving the window join every
//!   row's old mass) and [`Profile::evict_columns`] takes evicted columns out of the masses and
//!   follows the slot moves;
//! - [`Profile::ring`], [`Profile::rows`], [`Profile::len`] and [`Profile::old_mass`] are what
//!   a policy's [`ScoreCtx`](super::ScoreCtx) reads to score columns;
//! - [`Profile::bytes`] is its footprint beside the KV bytes.
//!
//! Slots are the layer's: the profile reads their positions (`pos[head * cap + slot]`, the
//! first `n` slots of each KV head used) but never moves them.
//!
//! Rows are stored as the cache's [`ProfileType`]: scaled f16 or 8-bit log codes (see
//! [`super::ring`]). Either way a stored value decodes to a value with f16's 11 significant
//! bits, no smaller than 2^-27, so the old masses (f64 sums of decoded values) are exact and
//! match what the scorer reads.
//!
//! One row per query head, or (`f16-kv`, `log8-kv`) one per KV head: the group's rows
//! pooled when stored, each query head's weighted by the inverse of its old mass then
//! ([`pool_rows`]). The scorer divides a row by its old mass, so until the window's edge
//! moves a pooled row scores exactly as the sum of its heads' normalised rows (over the
//! group size); as old columns join or leave, the pooled row is renormalised as a whole
//! where the exact rows would be renormalised head by head. With one query head per KV
//! head the pooled row is the head's row, bit for bit.

use std::ops::Range;

use half::f16;

use super::policy;
use super::ring::{self, ProfileType, RingView};

/// One stored value of a ring row.
trait Cell: Copy {
    const ZERO: Self;
    /// The value in the ring's scaled units.
    fn value(self) -> f64;
    /// Stores probabilities `src` in `dst`; returns the exact sum of the stored values whose
    /// `pos` lies in `old`.
    fn encode(src: &[f32], dst: &mut [Self], pos: &[u32], old: Range<u32>) -> f64;
}

impl Cell for f16 {
    const ZERO: Self = f16::ZERO;
    fn value(self) -> f64 {
        f64::from(self)
    }
    fn encode(src: &[f32], dst: &mut [Self], pos: &[u32], old: Range<u32>) -> f64 {
        policy::encode_row(src, dst, pos, old)
    }
}

impl Cell for u8 {
    const ZERO: Self = 0;
    fn value(self) -> f64 {
        f64::from(ring::log8_table()[usize::from(self)])
    }
    fn encode(src: &[f32], dst: &mut [Self], pos: &[u32], old: Range<u32>) -> f64 {
        ring::encode_log8(src, dst, pos, old)
    }
}

/// The stored rows, `[(head * rows + row) * cap + slot]` (`head`: a row head, see
/// [`Profile`]).
#[derive(Debug, Clone)]
enum Ring {
    F16(Vec<f16>),
    Log8(Vec<u8>),
}

/// Runs `$body` with `$r` bound to the ring's values (`&mut` when `$ring` is), whatever
/// their type.
macro_rules! each_ring {
    ($ring:expr, $r:ident => $body:expr) => {
        match $ring {
            Ring::F16($r) => $body,
            Ring::Log8($r) => $body,
        }
    };
}

/// One layer's ring of attention rows and their old masses.
///
/// Rows are kept per *row head*: a query head, or a KV head where [`ProfileType::per_kv_head`]
/// (then its query heads' rows are pooled into one).
#[derive(Debug, Clone)]
pub struct Profile {
    /// Rows as [`ProfileType`] says: `[(head * rows + row) * cap + slot]`.
    ring: Ring,
    kind: ProfileType,
    /// Row heads, and per KV head (the query heads' group, or 1).
    n_head: usize,
    group: usize,
    /// Query heads per KV head.
    qgroup: usize,
    /// Rows kept per query head (0: no profile).
    rows: usize,
    /// Slot stride (the layer's capacity).
    cap: usize,
    /// Valid rows.
    len: usize,
    /// The row the next query writes.
    next: usize,
    /// Per row, the end of the columns that may be nonzero (`[head * rows + row]`): a row
    /// written over another clears only up to it.
    dirty: Vec<u32>,
    /// Position of the query whose rows ring row `r` holds (`[row]`, for every query head):
    /// a row never saw tokens after it, so it holds 0 in their columns.
    qpos: Vec<u32>,
    /// Each row's old mass: the sum of its stored values over the head's old slots, those
    /// with `sinks <= position < old_to` (`[head * rows + row]`). Kept exactly (see
    /// [`ScoreCtx::old_mass`](super::ScoreCtx::old_mass)): set when the row is written,
    /// raised when tokens leave the window, lowered by evicted columns.
    old_mass: Vec<f64>,
    /// The window's lower edge (a position) at the last scoring: tokens below it and at or
    /// above the sinks are old.
    old_to: u32,
}

impl Profile {
    /// An empty profile of `rows` rows per row head over `cap` slots, stored as `kind`, for
    /// `n_head` query heads, `group` per KV head.
    pub fn new(n_head: usize, group: usize, rows: usize, cap: usize, kind: ProfileType) -> Self {
        let qgroup = group.max(1);
        let (n_head, group) = if kind.per_kv_head() {
            (n_head.div_ceil(qgroup), 1)
        } else {
            (n_head, qgroup)
        };
        let n = n_head * rows * cap;
        Self {
            ring: match kind.value_bytes() {
                1 => Ring::Log8(vec![0; n]),
                _ => Ring::F16(vec![f16::ZERO; n]),
            },
            kind,
            n_head,
            group,
            qgroup,
            rows,
            cap,
            len: 0,
            next: 0,
            dirty: vec![0; n_head * rows],
            qpos: vec![0; rows],
            old_mass: vec![0.0; n_head * rows],
            old_to: 0,
        }
    }

    /// The rows as stored: `[(head * rows + row) * cap + slot]`.
    pub fn ring(&self) -> RingView<'_> {
        match &self.ring {
            Ring::F16(r) => RingView::F16(r),
            Ring::Log8(r) => RingView::Log8(r),
        }
    }

    /// How the rows are stored.
    pub fn kind(&self) -> ProfileType {
        self.kind
    }

    /// Row heads per KV head: the query heads' group, or 1 where rows are pooled per KV
    /// head.
    pub fn group(&self) -> usize {
        self.group
    }

    /// Rows kept per row head.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Valid rows per row head (in no particular order).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Each row's old mass, `[head * rows + row]`.
    pub fn old_mass(&self) -> &[f64] {
        &self.old_mass
    }

    /// The window's lower edge at the last scoring.
    pub fn old_to(&self) -> u32 {
        self.old_to
    }

    /// Bytes of the rows over `retained` slots per KV head, as stored.
    pub fn bytes(&self, retained: usize) -> usize {
        self.kind().value_bytes() * self.n_head * self.rows * retained
    }

    /// Forgets every row (a new conversation).
    pub fn clear(&mut self) {
        self.len = 0;
        self.next = 0;
        self.old_to = 0;
        // Rows written later must read 0 in columns their tokens never saw.
        each_ring!(&mut self.ring, r => r.fill(Cell::ZERO));
    }

    /// Follows the layer to `cap` slots, of which the first `len` are used.
    pub fn grow(&mut self, cap: usize, len: usize) {
        let old = self.cap;
        each_ring!(&mut self.ring, r => *r = remap(r, r.len() / old, Cell::ZERO, old, cap, len));
        self.dirty
            .iter_mut()
            .for_each(|e| *e = (*e).min(len as u32));
        self.cap = cap;
    }

    /// Stores rows `block` of a block of attention probabilities `probs`, (H_q, rows, visible)
    /// row-major, as ring rows (overwriting the oldest): row `i`'s query sits at position
    /// `qpos0 + i`, `pos` holds the slots' positions and the old slots are those at or above
    /// `sinks` and below the current edge. Pooled rows weight each query head by its old
    /// mass at the edge the next scoring uses: the current one, or after a prompt chunk
    /// the one its last `rows` queries leave.
    pub fn observe(
        &mut self,
        probs: &[f32],
        (n_head, rows, visible): (usize, usize, usize),
        block: Range<usize>,
        qpos0: u32,
        pos: &[u32],
        sinks: u32,
    ) {
        let (lo, hi) = (sinks, self.old_to);
        let (cap, group, qgroup) = (self.cap, self.group, self.qgroup);
        let pooled = self.kind.per_kv_head();
        let next_edge = hi.max((qpos0 + rows as u32).saturating_sub(self.rows as u32));
        let mut pool = vec![0f32; if pooled { visible } else { 0 }];
        for i in block {
            let r = self.next;
            self.qpos[r] = qpos0 + i as u32;
            for qh in 0..self.n_head {
                let pos = &pos[(qh / group) * cap..][..visible];
                let row = |q: usize| &probs[(q * rows + i) * visible..(q * rows + i + 1) * visible];
                let src = if pooled {
                    let heads = (qh * qgroup..((qh + 1) * qgroup).min(n_head)).map(row);
                    pool_rows(heads, pos, lo..next_edge, &mut pool);
                    &pool[..]
                } else {
                    row(qh)
                };
                let start = (qh * self.rows + r) * cap;
                let dirty = &mut self.dirty[qh * self.rows + r];
                self.old_mass[qh * self.rows + r] = each_ring!(&mut self.ring, ring => {
                    let dst = &mut ring[start..start + cap];
                    // Columns past `visible` are tokens this query never saw.
                    if (*dirty as usize) > visible {
                        dst[visible..*dirty as usize].fill(Cell::ZERO);
                    }
                    Cell::encode(src, &mut dst[..visible], pos, lo..hi)
                });
                *dirty = visible as u32;
            }
            self.next = (r + 1) % self.rows;
            self.len = (self.len + 1).min(self.rows);
        }
    }

    /// Moves the old/window edge up to `to`: the tokens that left the window since the last
    /// scoring (at or above the sinks) become old, and every row's old mass takes their
    /// columns (a gather per row). Decoding one token at a time this finds nothing left to
    /// do: the previous eviction already added the token that was about to leave (see
    /// [`Profile::evict_columns`]); it catches up after steps that did not evict. `pos` holds
    /// the positions of `n_kv` heads' slots, `n` used each.
    pub fn advance_old(&mut self, pos: &[u32], n: usize, n_kv: usize, sinks: u32, to: u32) {
        if to < self.old_to {
            // The edge moved back (not on any path the cache takes): recount from the rows.
            self.recount_old(pos, n, sinks, to);
            return;
        }
        let from = self.old_to.max(sinks);
        if to <= from || self.len == 0 {
            self.old_to = to;
            return;
        }
        let cap = self.cap;
        let mut slots = Vec::new();
        for h in 0..n_kv {
            slots.clear();
            let pos = &pos[h * cap..h * cap + n];
            slots.extend((0..n).filter(|&s| (from..to).contains(&pos[s])));
            if slots.is_empty() {
                continue;
            }
            for q in h * self.group..(h + 1) * self.group {
                for r in 0..self.len {
                    let add = each_ring!(&self.ring, ring => {
                        let row = &ring[(q * self.rows + r) * cap..][..n];
                        slots.iter().map(|&s| row[s].value()).sum::<f64>()
                    });
                    self.old_mass[q * self.rows + r] += add;
                }
            }
        }
        self.old_to = to;
    }

    /// Raises the edge to `to` without touching the masses (their columns were already
    /// counted, by [`Profile::evict_columns`]'s `ahead`).
    pub fn raise_edge(&mut self, to: u32) {
        self.old_to = self.old_to.max(to);
    }

    /// Sets every valid row's old mass to its sum over `sinks <= position < to`, read from
    /// the rows.
    fn recount_old(&mut self, pos: &[u32], n: usize, sinks: u32, to: u32) {
        for q in 0..self.n_head {
            for r in 0..self.len {
                self.old_mass[q * self.rows + r] = self.counted_old(pos, n, q, r, sinks..to);
            }
        }
        self.old_to = to;
    }

    /// Row `r` of query head `q` summed, from the row, over the slots whose positions lie in
    /// `old`.
    fn counted_old(&self, pos: &[u32], n: usize, q: usize, r: usize, old: Range<u32>) -> f64 {
        let cap = self.cap;
        let pos = &pos[(q / self.group) * cap..][..n];
        each_ring!(&self.ring, ring => {
            let row = &ring[(q * self.rows + r) * cap..][..n];
            (0..n)
                .filter(|&s| old.contains(&pos[s]))
                .map(|s| row[s].value())
                .sum()
        })
    }

    /// Largest |maintained − recomputed| old mass over the valid rows (exact arithmetic makes
    /// it 0; tests check the bookkeeping with it).
    pub fn old_mass_error(&self, pos: &[u32], n: usize, sinks: u32) -> f64 {
        let mut worst = 0f64;
        for q in 0..self.n_head {
            for r in 0..self.len {
                let sum = self.counted_old(pos, n, q, r, sinks..self.old_to);
                worst = worst.max((sum - self.old_mass[q * self.rows + r]).abs());
            }
        }
        worst
    }

    /// The profile's side of evicting `victims` from KV head `h` (`pos`: the head's `n` used
    /// slots' positions, before the moves): each row of the head's query heads loses the
    /// victims' old mass and gains that of the `ahead` slots (tokens turning old before the
    /// next scoring), takes the `moves` (src, dst) and clears the freed columns
    /// `keep_len..n`, which later tokens reuse and which rows written before them never saw.
    /// Columns of tokens newer than a row's query hold 0 in it: moving or clearing them needs
    /// no read (decoding, the tail slot that fills the victim's hole holds the newest token,
    /// which only the newest row saw).
    pub fn evict_columns(
        &mut self,
        h: usize,
        pos: &[u32],
        victims: &[usize],
        ahead: &[usize],
        moves: &[(usize, usize)],
        keep_len: usize,
    ) {
        let (cap, n) = (self.cap, pos.len());
        // The scoring sweep read the rows without keeping them in L2 (see
        // `kernels::axpy_rows_f16`): ask for the few lines each row needs here, all at once,
        // before touching any.
        let (rows, len, group) = (self.rows, self.len, self.group);
        let (qpos, old_mass, dirty) = (&self.qpos, &mut self.old_mass, &mut self.dirty);
        each_ring!(&mut self.ring, ring => {
            for q in h * group..(h + 1) * group {
                for r in 0..len {
                    let (row, seen) = (&ring[(q * rows + r) * cap..][..n], qpos[r]);
                    for &s in victims.iter().chain(ahead) {
                        crate::kernels::prefetch(row, s);
                    }
                    for &(s, _) in moves.iter().filter(|&&(s, _)| pos[s] <= seen) {
                        crate::kernels::prefetch(row, s);
                    }
                    if keep_len < n && pos[keep_len..].iter().any(|&p| p <= seen) {
                        crate::kernels::prefetch(row, keep_len);
                    }
                }
            }
            for q in h * group..(h + 1) * group {
                for r in 0..len {
                    let seen = qpos[r];
                    let row = &mut ring[(q * rows + r) * cap..][..n];
                    let gone: f64 = victims.iter().map(|&s| row[s].value()).sum();
                    let turned: f64 = ahead.iter().map(|&s| row[s].value()).sum();
                    old_mass[q * rows + r] += turned - gone;
                    for &(s, t) in moves {
                        row[t] = if pos[s] <= seen { row[s] } else { Cell::ZERO };
                    }
                    for (v, &p) in row[keep_len..].iter_mut().zip(&pos[keep_len..]) {
                        if p <= seen {
                            *v = Cell::ZERO;
                        }
                    }
                    let d = &mut dirty[q * rows + r];
                    *d = (*d).min(keep_len as u32);
                }
            }
        });
    }
}

/// Below this old mass (a probability) a query head's weight in a pooled row stops growing:
/// a head that gives its old tokens nothing yet (no old tokens, or all its attention on the
/// window) weighs as one that gives them 0.1%.
const POOL_MIN_MASS: f64 = 1e-3;

/// Pools one KV head's query heads' rows of probabilities (`heads`, over slots at positions
/// `pos`) into `out`: the mean of the rows weighted by the inverse of each one's old mass,
/// its sum over the slots whose position lies in `old` (at least [`POOL_MIN_MASS`]). The
/// weights sum to 1, so the pooled row is a distribution too, and its old mass is the group
/// size over the weights' unnormalised sum: divided by it, as the scorer does, the pooled
/// row is the sum of the heads' rows each divided by its own old mass, over the group size.
/// A single row comes back unchanged.
pub fn pool_rows<'a>(
    heads: impl Iterator<Item = &'a [f32]> + Clone,
    pos: &[u32],
    old: Range<u32>,
    out: &mut [f32],
) {
    let inv = |row: &[f32]| {
        let mass: f64 = row
            .iter()
            .zip(pos)
            .filter(|(_, p)| old.contains(p))
            .map(|(&x, _)| f64::from(x))
            .sum();
        1.0 / mass.max(POOL_MIN_MASS)
    };
    let total: f64 = heads.clone().map(inv).sum();
    out.fill(0.0);
    for row in heads {
        let w = (inv(row) / total) as f32;
        out.iter_mut().zip(row).for_each(|(o, &x)| *o += w * x);
    }
}

/// `rows` rows of `len` used entries at a stride of `old`, copied to a stride of `cap` (the
/// rest `fill`).
pub(super) fn remap<T: Copy>(
    src: &[T],
    rows: usize,
    fill: T,
    old: usize,
    cap: usize,
    len: usize,
) -> Vec<T> {
    let mut dst = vec![fill; rows * cap];
    for r in 0..rows {
        dst[r * cap..r * cap + len].copy_from_slice(&src[r * old..r * old + len]);
    }
    dst
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cache::morphkv::MorphKv;
    use crate::cache::policy::{Fusion, GroupAgg, Policy, ScoreCtx};

    /// Rows of probabilities `(n_head, rows, visible)`, random-ish, each summing to 1.
    fn probs(n_head: usize, rows: usize, visible: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        let mut out: Vec<f32> = (0..n_head * rows * visible)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                // Skewed, as attention is: a few large values, many small.
                ((x % 1000) as f32 / 1000.0).powi(6) + 1e-4
            })
            .collect();
        for row in out.chunks_mut(visible) {
            let s: f32 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= s);
        }
        out
    }

    /// MorphKV's scores (sum over heads and window) of every slot, old or not, from `p`.
    fn scores(p: &Profile, pos: &[u32], n_kv: usize, group: usize, n: usize) -> Vec<f32> {
        let candidate = vec![true; n_kv * n];
        let acc = vec![0f32; n_kv * n];
        let ctx = ScoreCtx {
            n_kv,
            group,
            row_group: p.group(),
            n,
            cap: n,
            pos,
            candidate: &candidate,
            acc: &acc,
            ring: p.ring(),
            ring_cap: p.rows(),
            ring_len: p.len(),
            old_mass: p.old_mass(),
        };
        let policy = MorphKv {
            window: p.rows(),
            fusion: Fusion::Sum,
            group_agg: GroupAgg::Sum,
            history: 0.0,
            half_life: 0,
        };
        let mut out = vec![0f32; n_kv * n];
        policy.score(&ctx, &mut out);
        out
    }

    /// Slots `0..n` of each of `n_kv` heads hold positions `0..n` (heads in a different
    /// order, so a mix-up of heads shows).
    fn positions(n_kv: usize, n: usize) -> Vec<u32> {
        (0..n_kv)
            .flat_map(|h| (0..n).map(move |s| ((s * (2 * h + 1)) % n) as u32))
            .collect()
    }

    #[test]
    fn pooling_one_row_returns_it_unchanged() {
        let row = probs(1, 1, 40, 3);
        let pos: Vec<u32> = (0..40).collect();
        let mut out = vec![9f32; 40];
        pool_rows(std::iter::once(&row[..]), &pos, 2..30, &mut out);
        assert_eq!(out, row);
        // No old slot at all: still the row.
        pool_rows(std::iter::once(&row[..]), &pos, 50..60, &mut out);
        assert_eq!(out, row);
    }

    /// Divided by its old mass, the pooled row is the mean of the heads' rows each divided
    /// by its own old mass (what the per-query-head scorer sums, over the group size).
    #[test]
    fn pooled_row_over_its_old_mass_is_the_normalised_heads_mean() {
        let (g, n) = (3, 50);
        let rows = probs(g, 1, n, 5);
        let pos: Vec<u32> = (0..n as u32).rev().collect();
        let old = 4..35;
        let mut out = vec![0f32; n];
        pool_rows(rows.chunks(n), &pos, old.clone(), &mut out);
        let in_old = |s: usize| old.contains(&pos[s]);
        let mass = |r: &[f32]| (0..n).filter(|&s| in_old(s)).map(|s| r[s]).sum::<f32>();
        let pooled_mass = mass(&out);
        assert!((out.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        for s in 0..n {
            let want: f32 = rows.chunks(n).map(|r| r[s] / mass(r)).sum::<f32>() / g as f32;
            let got = out[s] / pooled_mass;
            assert!(
                (got - want).abs() <= 1e-5 * want.max(1.0),
                "{s}: {got} {want}"
            );
        }
    }

    /// One query head per KV head: the pooled profile stores the same rows and masses as
    /// the per-query-head one, so it scores the same, through edge moves and evictions.
    #[test]
    fn kv_rows_equal_query_rows_with_one_head_per_group() {
        let (n_kv, n, rows) = (3, 40, 6);
        let pos = positions(n_kv, n);
        for (query, kv) in [
            (ProfileType::Log8, ProfileType::Log8Kv),
            (ProfileType::F16, ProfileType::F16Kv),
        ] {
            let mut a = Profile::new(n_kv, 1, rows, n, query);
            let mut b = Profile::new(n_kv, 1, rows, n, kv);
            assert_eq!(b.group(), 1);
            for (step, p) in [(0u32, 10u32), (1, 10), (2, 12), (3, 13)] {
                let block = probs(n_kv, 2, n, 11 + step);
                for x in [&mut a, &mut b] {
                    x.observe(&block, (n_kv, 2, n), 0..2, 30 + 2 * step, &pos, 2);
                    x.advance_old(&pos, n, n_kv, 2, p);
                }
                assert_eq!(a.old_mass(), b.old_mass());
                assert_eq!(scores(&a, &pos, n_kv, 1, n), scores(&b, &pos, n_kv, 1, n));
            }
            let (victims, ahead, moves) = ([3usize, 7], [13usize], [(39usize, 3usize)]);
            for x in [&mut a, &mut b] {
                x.evict_columns(1, &pos[n..2 * n], &victims, &ahead, &moves, n - 2);
            }
            assert_eq!(a.old_mass(), b.old_mass());
            assert_eq!(a.bytes(n), b.bytes(n));
        }
    }

    /// Three query heads per KV head: a third of the bytes; until the edge moves, the pooled
    /// scores are the per-query-head scores over the group size (up to the f16 rounding);
    /// after it moves they still rank the old slots nearly alike, and the old masses stay
    /// exact.
    #[test]
    fn kv_rows_score_as_query_rows_over_the_group_until_the_edge_moves() {
        let (n_kv, g, n, rows) = (2, 3, 60, 5);
        let n_head = n_kv * g;
        let pos = positions(n_kv, n);
        let mut a = Profile::new(n_head, g, rows, n, ProfileType::F16);
        let mut b = Profile::new(n_head, g, rows, n, ProfileType::F16Kv);
        assert_eq!(3 * b.bytes(n), a.bytes(n));
        // Rows of queries at 55..60, old slots at 1..50 (the edge the next scoring uses).
        for x in [&mut a, &mut b] {
            x.advance_old(&pos, n, n_kv, 1, 50);
            x.observe(
                &probs(n_head, rows, n, 21),
                (n_head, rows, n),
                0..rows,
                50,
                &pos,
                1,
            );
            assert_eq!(x.old_mass_error(&pos, n, 1), 0.0);
        }
        let (sa, sb) = (scores(&a, &pos, n_kv, g, n), scores(&b, &pos, n_kv, 1, n));
        for i in 0..n_kv * n {
            if !(1..50).contains(&pos[i]) {
                continue;
            }
            let want = sa[i] / g as f32;
            assert!(
                (sb[i] - want).abs() <= 2e-3 * want + 1e-6,
                "slot {i}: {} vs {want}",
                sb[i]
            );
        }
        // The edge moves on by 5: the ranking of old slots stays close.
        for x in [&mut a, &mut b] {
            x.advance_old(&pos, n, n_kv, 1, 55);
            assert_eq!(x.old_mass_error(&pos, n, 1), 0.0);
        }
        let (sa, sb) = (scores(&a, &pos, n_kv, g, n), scores(&b, &pos, n_kv, 1, n));
        for h in 0..n_kv {
            let top = |s: &[f32]| {
                let mut old: Vec<usize> = (0..n)
                    .filter(|&j| (1..55).contains(&pos[h * n + j]))
                    .collect();
                old.sort_by(|&x, &y| s[h * n + y].total_cmp(&s[h * n + x]));
                old.truncate(20);
                old.sort_unstable();
                old
            };
            let (ta, tb) = (top(&sa), top(&sb));
            let shared = ta.iter().filter(|j| tb.contains(j)).count();
            assert!(shared >= 16, "head {h}: {shared} of the top 20 shared");
        }
    }
}
