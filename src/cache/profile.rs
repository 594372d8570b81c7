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

/// The stored rows, `[(qhead * rows + row) * cap + slot]`.
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
#[derive(Debug, Clone)]
pub struct Profile {
    /// Rows as [`ProfileType`] says: `[(qhead * rows + row) * cap + slot]`.
    ring: Ring,
    /// Query heads, and per KV head.
    n_head: usize,
    group: usize,
    /// Rows kept per query head (0: no profile).
    rows: usize,
    /// Slot stride (the layer's capacity).
    cap: usize,
    /// Valid rows.
    len: usize,
    /// The row the next query writes.
    next: usize,
    /// Per row, the end of the columns that may be nonzero (`[qhead * rows + row]`): a row
    /// written over another clears only up to it.
    dirty: Vec<u32>,
    /// Position of the query whose rows ring row `r` holds (`[row]`, for every query head):
    /// a row never saw tokens after it, so it holds 0 in their columns.
    qpos: Vec<u32>,
    /// Each row's old mass: the sum of its stored values over the head's old slots, those
    /// with `sinks <= position < old_to` (`[qhead * rows + row]`). Kept exactly (see
    /// [`ScoreCtx::old_mass`](super::ScoreCtx::old_mass)): set when the row is written,
    /// raised when tokens leave the window, lowered by evicted columns.
    old_mass: Vec<f64>,
    /// The window's lower edge (a position) at the last scoring: tokens below it and at or
    /// above the sinks are old.
    old_to: u32,
}

impl Profile {
    /// An empty profile of `rows` rows per query head (`n_head` of them, `group` per KV head)
    /// over `cap` slots, stored as `kind`.
    pub fn new(n_head: usize, group: usize, rows: usize, cap: usize, kind: ProfileType) -> Self {
        let n = n_head * rows * cap;
        Self {
            ring: match kind {
                ProfileType::F16 => Ring::F16(vec![f16::ZERO; n]),
                ProfileType::Log8 => Ring::Log8(vec![0; n]),
            },
            n_head,
            group,
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

    /// The rows as stored: `[(qhead * rows + row) * cap + slot]`.
    pub fn ring(&self) -> RingView<'_> {
        match &self.ring {
            Ring::F16(r) => RingView::F16(r),
            Ring::Log8(r) => RingView::Log8(r),
        }
    }

    /// How the rows are stored.
    pub fn kind(&self) -> ProfileType {
        match self.ring {
            Ring::F16(_) => ProfileType::F16,
            Ring::Log8(_) => ProfileType::Log8,
        }
    }

    /// Rows kept per query head.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Valid rows per query head (in no particular order).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Each row's old mass, `[qhead * rows + row]`.
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
    /// `sinks` and below the current edge.
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
        let (cap, group) = (self.cap, self.group);
        for i in block {
            let r = self.next;
            self.qpos[r] = qpos0 + i as u32;
            for qh in 0..n_head {
                let src = &probs[(qh * rows + i) * visible..(qh * rows + i + 1) * visible];
                let start = (qh * self.rows + r) * cap;
                let pos = &pos[(qh / group) * cap..][..visible];
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
