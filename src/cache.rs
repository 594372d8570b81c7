//! The KV cache the decoder writes into, kept at a fixed budget by an eviction policy.
//!
//! Storage: per layer, a preallocated buffer of slots per KV head holding post-RoPE keys,
//! values and each token's absolute position. A layer's used slots are always `0..len` for
//! every KV head, but each head may hold a different token in a given slot: different KV
//! heads keep different tokens, all heads hold the same count, so tensors stay rectangular.
//!
//! Eviction: a [`Policy`] only scores slots. The cache protects the window (the `window` most
//! recent tokens) and the sinks (the first `sinks` tokens), takes the lowest-scoring
//! candidates per KV head, and refills their slots with the last used slots (a few row copies,
//! never a compaction of the whole buffer), so slot order changes and attention, being
//! permutation-invariant over slots, does not care.
//!
//! Budget: `budget` counts every token a KV head holds, the token being decoded included. A
//! decode step that would exceed it first evicts `evict_every` tokens (at least one); a
//! prefilled chunk may exceed it by up to the chunk's length until the step ends, when the
//! cache is compressed back to the budget. `full` never evicts; `snapkv` compresses prompts
//! only, so its cache grows while it decodes.
//!
//! The model calls [`KvCache::begin`] before a forward pass, [`LayerCache::append`] and
//! [`KvCache::observe`] per layer, and [`KvCache::end`] after it.

mod full;
mod h2o;
pub mod limits;
mod morphkv;
pub mod policy;
mod snapkv;
mod streaming;
mod tova;

use std::str::FromStr;
use std::time::Instant;

use candle_core::{DType, Device, Storage, Tensor};
use half::f16;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::Config;
pub use policy::{encode_row, Fusion, GroupAgg, Needs, Phase, Policy, ScoreCtx, RING_SCALE};
pub use snapkv::{OBS_WINDOW as SNAPKV_OBS_WINDOW, POOL as SNAPKV_POOL};

/// Prompt tokens run per forward pass during prefill.
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

/// Slots allocated up front when the cache can grow without bound.
const INITIAL_SLOTS: usize = 256;

/// The registered policies, in the order the CLI lists them.
pub const POLICIES: [&str; 6] = ["full", "streaming", "h2o", "tova", "snapkv", "morphkv"];

/// Which eviction policy runs the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    Full,
    Streaming,
    H2o,
    Tova,
    SnapKv,
    MorphKv,
}

impl PolicyKind {
    /// Registry name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Streaming => "streaming",
            Self::H2o => "h2o",
            Self::Tova => "tova",
            Self::SnapKv => "snapkv",
            Self::MorphKv => "morphkv",
        }
    }
}

impl FromStr for PolicyKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "full" => Self::Full,
            "streaming" => Self::Streaming,
            "h2o" => Self::H2o,
            "tova" => Self::Tova,
            "snapkv" => Self::SnapKv,
            "morphkv" => Self::MorphKv,
            _ => {
                return Err(Error::arg(
                    "--policy",
                    format!("unknown policy `{s}` (known: {})", POLICIES.join(", ")),
                ))
            }
        })
    }
}

/// Which positions RoPE sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    /// Each token keeps its position in the conversation (as the paper does). Past the
    /// model's trained context, RoPE sees distances it was never trained on.
    #[default]
    Absolute,
    /// Positions are re-assigned inside the cache: a KV head's retained tokens are numbered
    /// 0..n in conversation order (StreamingLLM's remedy), so distances never exceed the cache
    /// size and a conversation can run past the trained context. Keys are stored before RoPE
    /// and rotated at their current rank when attended.
    Rebased,
}

impl FromStr for Positions {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "absolute" => Ok(Self::Absolute),
            "rebased" => Ok(Self::Rebased),
            _ => Err(Error::arg(
                "--positions",
                format!("`{s}` is not absolute or rebased"),
            )),
        }
    }
}

/// Cache settings: policy, budget and the policies' knobs.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub policy: PolicyKind,
    /// Tokens kept per KV head per layer, the token being decoded included.
    pub budget: usize,
    /// Most recent tokens always kept (MorphKV's `R`; H2O's recent window).
    pub window: usize,
    /// First tokens always kept; `None`: 4 for streaming, 0 for the others.
    pub sinks: Option<usize>,
    pub fusion: Fusion,
    pub group_agg: GroupAgg,
    /// Evict this many tokens at once when the cache is full (the paper's cheaper variant).
    pub evict_every: usize,
    /// Prompt tokens per forward pass; the cache compresses after each.
    pub prefill_chunk: usize,
    /// Absolute or re-based RoPE positions.
    pub positions: Positions,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            policy: PolicyKind::MorphKv,
            budget: 600,
            window: 30,
            sinks: None,
            fusion: Fusion::Sum,
            group_agg: GroupAgg::Sum,
            evict_every: 1,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
            positions: Positions::Absolute,
        }
    }
}

impl CacheConfig {
    /// A cache that keeps everything.
    pub fn full() -> Self {
        Self {
            policy: PolicyKind::Full,
            ..Self::default()
        }
    }

    /// Sinks in effect.
    pub fn sinks(&self) -> usize {
        self.sinks.unwrap_or(match self.policy {
            PolicyKind::Streaming => 4,
            _ => 0,
        })
    }

    /// Protected recent tokens in effect (TOVA keeps only the newest).
    pub fn effective_window(&self) -> usize {
        match self.policy {
            PolicyKind::Tova => 1,
            _ => self.window,
        }
    }

    /// Checks the settings, naming the flag of the first bad one.
    pub fn validate(&self) -> Result<()> {
        self.validate_with(&|name| format!("--{name}"))
    }

    /// Checks every setting against its [`limits`] and against each other, with overflow-safe
    /// arithmetic. `origin` names where a setting came from (`budget` → `--budget`, or
    /// `budget in config.toml`), and the error names it.
    pub fn validate_with(&self, origin: &dyn Fn(&str) -> String) -> Result<()> {
        let checks = [
            (limits::BUDGET, self.budget),
            (limits::WINDOW, self.window),
            (limits::SINKS, self.sinks.unwrap_or(0)),
            (limits::EVICT_EVERY, self.evict_every),
            (limits::PREFILL_CHUNK, self.prefill_chunk),
        ];
        for (limit, v) in checks {
            limit
                .check(v)
                .map_err(|reason| Error::arg(origin(limit.name), reason))?;
        }
        // In range, so no sum below can overflow.
        let floor = self.effective_window() + self.sinks() + 1;
        if self.policy != PolicyKind::Full && self.budget < floor {
            return Err(Error::arg(
                origin("budget"),
                format!(
                    "{} is smaller than window {} + sinks {} + 1: raise the budget to at least {floor} or lower the window/sinks",
                    self.budget,
                    self.effective_window(),
                    self.sinks()
                ),
            ));
        }
        Ok(())
    }

    /// The scorer these settings describe.
    pub fn build_policy(&self) -> Box<dyn Policy> {
        match self.policy {
            PolicyKind::Full => Box::new(full::Full),
            PolicyKind::Streaming => Box::new(streaming::Streaming),
            PolicyKind::H2o => Box::new(h2o::H2o),
            PolicyKind::Tova => Box::new(tova::Tova),
            PolicyKind::SnapKv => Box::new(snapkv::SnapKv),
            PolicyKind::MorphKv => Box::new(morphkv::MorphKv {
                window: self.window,
                fusion: self.fusion,
                group_agg: self.group_agg,
            }),
        }
    }

    /// Whether the policy keeps the cache at `budget` (capacity allocated once).
    fn bounded(&self) -> bool {
        !matches!(self.policy, PolicyKind::Full | PolicyKind::SnapKv)
    }
}

/// What [`KvCache::begin`] tells the model about the tokens it is about to run.
#[derive(Debug, Clone)]
pub struct Step {
    /// Conversation position of each new token.
    pub positions: Vec<u32>,
    /// The position RoPE gives each new token's query (and key, unless keys are rotated at
    /// attention time): its conversation position, or its rank in the cache when re-based.
    pub rope_positions: Vec<u32>,
    /// Whether keys are stored before RoPE and rotated by [`KvCache::key_ranks`] when
    /// attended.
    pub rotate_keys: bool,
    /// Used slots before the new tokens (the new ones go to `past..past + T`).
    pub past: usize,
}

/// One evicted token, for traces and the UI.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Eviction {
    pub layer: usize,
    pub head: usize,
    /// The token's position in the conversation.
    pub pos: u32,
    /// Its score when it was evicted.
    pub score: f32,
}

/// Where one layer's attention went for the last decoded token (averaged over query heads).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LayerAttention {
    /// Probability mass on the window, on the sinks and on older retained tokens.
    pub window: f32,
    pub sinks: f32,
    pub old: f32,
    /// The most attended positions and their mass, highest first.
    pub top: Vec<(u32, f32)>,
}

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

/// Where one decoded token's attention went in `layer`, from its rows (H_q, 1, visible) over
/// the used slots: the mass on the sinks, the window and older tokens, and the five most
/// attended positions, each query head weighing 1/H_q. A token sits in different slots of
/// different KV heads, so masses meet by position in a small open-addressing table: one probe
/// per (KV head, slot), then plain array adds per row entry, in query-head order.
///
/// `slots` holds each KV head's slot positions at a stride of `cap`; query head `q` reads KV
/// head `q / group`; `sinks` and `window_from` are the positions the sinks end and the window
/// starts at.
fn summarize_rows(
    (slots, cap, group): (&[u32], usize, usize),
    rows: &[f32],
    (n_head, visible): (usize, usize),
    (sinks, window_from): (u32, u32),
) -> LayerAttention {
    let group = group.max(1);
    let n_kv = n_head.div_ceil(group);
    let bits = (2 * n_kv * visible)
        .max(16)
        .next_power_of_two()
        .trailing_zeros();
    let size = 1usize << bits;
    let (mut keys, mut full, mut mass) = (vec![0u32; size], vec![false; size], vec![0f32; size]);
    let mut used = Vec::with_capacity(n_kv * visible);
    // Table index of each (KV head, slot).
    let mut at = vec![0u32; n_kv * visible];
    for h in 0..n_kv {
        let pos = &slots[h * cap..h * cap + visible];
        for (a, &p) in at[h * visible..(h + 1) * visible].iter_mut().zip(pos) {
            // Fibonacci hashing; linear probing.
            let mut i = (u64::from(p).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize;
            while full[i] && keys[i] != p {
                i = (i + 1) & (size - 1);
            }
            if !full[i] {
                (full[i], keys[i]) = (true, p);
                used.push(i);
            }
            *a = i as u32;
        }
    }
    // Sinks, old tokens, window.
    let mut class = [0f32; 3];
    let share = 1.0 / n_head as f32;
    for qh in 0..n_head {
        let h = qh / group;
        let pos = &slots[h * cap..h * cap + visible];
        let at = &at[h * visible..(h + 1) * visible];
        let row = &rows[qh * visible..(qh + 1) * visible];
        for ((&p, &position), &i) in row.iter().zip(pos).zip(at) {
            let p = p * share;
            let c = usize::from(position >= sinks) * (1 + usize::from(position >= window_from));
            class[c] += p;
            mass[i as usize] += p;
        }
    }
    // Highest mass first, then the older token.
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(6);
    for &i in &used {
        let e = (keys[i], mass[i]);
        if top.len() < 5 || top.last().is_some_and(|last| order(&e, last).is_lt()) {
            let k = top.partition_point(|x| order(x, &e).is_lt());
            top.insert(k, e);
            top.truncate(5);
        }
    }
    LayerAttention {
        window: class[2],
        sinks: class[0],
        old: class[1],
        top,
    }
}

/// One eviction round, the same for every layer.
#[derive(Debug, Clone, Copy)]
struct Round {
    /// Tokens to evict per KV head (at most).
    m: usize,
    /// Positions below it are sinks (protected).
    sinks: u32,
    /// The window's lower edge: positions from it on are protected.
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

/// One layer's slots and the attention statistics its policy scores from.
#[derive(Debug)]
pub struct LayerCache {
    /// (H_kv, capacity, d)
    k: Tensor,
    /// (H_kv, capacity, d)
    v: Tensor,
    /// Used slots per KV head (the same for every head).
    len: usize,
    cap: usize,
    n_kv: usize,
    group: usize,
    /// Token position of each slot: `[head * cap + slot]`.
    pos: Vec<u32>,
    /// Attention received since the token entered: `[head * cap + slot]` (if needed).
    acc: Vec<f32>,
    /// Latest score of each slot (NaN: not scored yet): `[head * cap + slot]`.
    score: Vec<f32>,
    /// Rank of each slot's token among its head's retained tokens, in conversation order
    /// (the re-based RoPE position): `[head * cap + slot]`. Kept up to date only when
    /// positions are re-based.
    rank: Vec<u32>,
    /// Ring of recent query rows, scaled f16 (see [`policy::RING_SCALE`]):
    /// `[(qhead * ring_cap + row) * cap + slot]`.
    ring: Vec<f16>,
    ring_cap: usize,
    ring_len: usize,
    ring_next: usize,
    /// Per ring row, the end of the columns that may be nonzero (`[qhead * ring_cap + row]`):
    /// a row written over another clears only up to it.
    ring_dirty: Vec<u32>,
    /// Position of the query whose rows ring row `r` holds (`[row]`, for every query head):
    /// a row never saw tokens after it, so it holds 0 in their columns.
    ring_qpos: Vec<u32>,
    /// Each ring row's old mass: the sum of its stored values over the head's old slots,
    /// those with `sinks <= position < old_to` (`[qhead * ring_cap + row]`). Kept exactly
    /// (see [`ScoreCtx::old_mass`]): set when the row is written, raised when tokens leave the
    /// window, lowered by evicted columns.
    old_mass: Vec<f64>,
    /// The window's lower edge (a position) at the last scoring: tokens below it and at or
    /// above the sinks are old.
    old_to: u32,
    /// Tensor ops only, as on a GPU, even on the CPU (see [`KvCache::set_portable`]).
    portable: bool,
    /// Scratch for eviction rounds: whether each slot is a candidate.
    candidate: Vec<bool>,
}

impl LayerCache {
    fn new(cfg: &Config, cap: usize, ring_cap: usize, dtype: DType, dev: &Device) -> Result<Self> {
        let (n_kv, d) = (cfg.n_kv_head, cfg.head_dim);
        Ok(Self {
            k: Tensor::zeros((n_kv, cap, d), dtype, dev)?,
            v: Tensor::zeros((n_kv, cap, d), dtype, dev)?,
            len: 0,
            cap,
            n_kv,
            group: cfg.group(),
            pos: vec![0; n_kv * cap],
            acc: vec![0.0; n_kv * cap],
            score: vec![f32::NAN; n_kv * cap],
            rank: vec![0; n_kv * cap],
            ring: vec![f16::ZERO; cfg.n_head * ring_cap * cap],
            ring_cap,
            ring_len: 0,
            ring_next: 0,
            ring_dirty: vec![0; cfg.n_head * ring_cap],
            ring_qpos: vec![0; ring_cap],
            old_mass: vec![0.0; cfg.n_head * ring_cap],
            old_to: 0,
            portable: false,
            candidate: Vec::new(),
        })
    }

    /// Used slots per KV head.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no slot is used.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Position of the token in `slot` of KV head `head`.
    pub fn position(&self, head: usize, slot: usize) -> u32 {
        self.pos[head * self.cap + slot]
    }

    /// Positions held by KV head `head`, in slot order.
    pub fn positions(&self, head: usize) -> &[u32] {
        &self.pos[head * self.cap..head * self.cap + self.len]
    }

    /// Latest scores of the tokens KV head `head` holds, in slot order (NaN: not scored yet,
    /// e.g. in the window).
    pub fn scores(&self, head: usize) -> &[f32] {
        &self.score[head * self.cap..head * self.cap + self.len]
    }

    /// Keys and values of the used slots, (H_kv, len, d) each.
    pub fn kv(&self) -> Result<(Tensor, Tensor)> {
        Ok((
            self.k.narrow(1, 0, self.len)?,
            self.v.narrow(1, 0, self.len)?,
        ))
    }

    /// Runs `f` on the host values of the keys and values, (H_kv, capacity, d) each, of which
    /// the first [`LayerCache::len`] slots per head are used. Errors unless they are f32 in
    /// host memory.
    pub fn with_kv_host<R>(&self, f: impl FnOnce(&[f32], &[f32]) -> R) -> Result<R> {
        let (ks, kl) = self.k.storage_and_layout();
        let (vs, vl) = self.v.storage_and_layout();
        match (&*ks, &*vs) {
            (Storage::Cpu(k), Storage::Cpu(v)) => {
                let (k, v) = (k.as_slice::<f32>()?, v.as_slice::<f32>()?);
                let n = self.k.elem_count();
                let (k0, v0) = (kl.start_offset(), vl.start_offset());
                Ok(f(&k[k0..k0 + n], &v[v0..v0 + n]))
            }
            _ => Err(Error::arg(
                "cache",
                "keys and values are not in host memory",
            )),
        }
    }

    /// Slots per KV head.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// A deep copy (tensors are shared by reference when cloned; these are written in place).
    fn fork(&self) -> Result<Self> {
        Ok(Self {
            k: self.k.copy()?,
            v: self.v.copy()?,
            len: self.len,
            cap: self.cap,
            n_kv: self.n_kv,
            group: self.group,
            pos: self.pos.clone(),
            acc: self.acc.clone(),
            score: self.score.clone(),
            rank: self.rank.clone(),
            ring: self.ring.clone(),
            ring_cap: self.ring_cap,
            ring_len: self.ring_len,
            ring_next: self.ring_next,
            ring_dirty: self.ring_dirty.clone(),
            ring_qpos: self.ring_qpos.clone(),
            old_mass: self.old_mass.clone(),
            old_to: self.old_to,
            portable: self.portable,
            candidate: Vec::new(),
        })
    }

    /// Reallocates to `cap` slots (more or fewer, at least the used ones), keeping the used
    /// ones and their statistics.
    fn grow(&mut self, cap: usize) -> Result<()> {
        let (n_kv, _, d) = self.k.dims3()?;
        let k = Tensor::zeros((n_kv, cap, d), self.k.dtype(), self.k.device())?;
        let v = Tensor::zeros((n_kv, cap, d), self.v.dtype(), self.v.device())?;
        if self.len > 0 {
            k.slice_set(&self.k.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
            v.slice_set(&self.v.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
        }
        let old = self.cap;
        fn remap<T: Copy>(
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
        let remap_u32 = |src: &[u32]| {
            let mut dst = vec![0; n_kv * cap];
            for h in 0..n_kv {
                dst[h * cap..h * cap + self.len].copy_from_slice(&src[h * old..h * old + self.len]);
            }
            dst
        };
        let pos = remap_u32(&self.pos);
        self.rank = remap_u32(&self.rank);
        let len = self.len;
        self.acc = remap(&self.acc, n_kv, 0.0, old, cap, len);
        self.score = remap(&self.score, n_kv, f32::NAN, old, cap, len);
        self.ring = remap(&self.ring, self.ring.len() / old, f16::ZERO, old, cap, len);
        self.ring_dirty
            .iter_mut()
            .for_each(|e| *e = (*e).min(len as u32));
        (self.k, self.v, self.pos, self.cap) = (k, v, pos, cap);
        Ok(())
    }

    /// Writes new keys and values, (H_kv, T, d) each, into slots `len..len + T` of every head
    /// (in place) and returns views of all used slots, (H_kv, len + T, d) each.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dims()[1];
        if self.len + t > self.cap {
            return Err(Error::arg(
                "cache",
                format!(
                    "{} slots used + {t} new > capacity {}: call KvCache::begin first",
                    self.len, self.cap
                ),
            ));
        }
        self.k.slice_set(&k.contiguous()?, 1, self.len)?;
        self.v.slice_set(&v.contiguous()?, 1, self.len)?;
        self.len += t;
        self.kv()
    }

    /// Scores this layer's candidates with `policy` and evicts up to `round.m` per KV head.
    fn evict(&mut self, l: usize, policy: &dyn Policy, round: &Round) -> Result<Vec<Eviction>> {
        let Round {
            m,
            sinks,
            recent_from,
            next_from,
            ranks,
            record,
        } = *round;
        let (n, cap) = (self.len, self.cap);
        self.advance_old(sinks, recent_from);
        // Reused between rounds (entries past `n` are stale and unread).
        let mut candidate = std::mem::take(&mut self.candidate);
        candidate.resize(self.n_kv * cap, false);
        for h in 0..self.n_kv {
            let at = h * cap;
            for (c, &p) in candidate[at..at + n].iter_mut().zip(&self.pos[at..at + n]) {
                *c = p >= sinks && p < recent_from;
            }
            // The policy scores straight into the slots' latest scores.
            self.score[at..at + n].fill(0.0);
        }
        let ctx = ScoreCtx {
            n_kv: self.n_kv,
            group: self.group,
            n,
            cap,
            pos: &self.pos,
            candidate: &candidate,
            acc: &self.acc,
            ring: &self.ring,
            ring_cap: self.ring_cap,
            ring_len: self.ring_len,
            old_mass: &self.old_mass,
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
            let lo = self.old_to.max(sinks);
            let ahead: Vec<usize> = (0..n)
                .filter(|&s| (lo..next_from).contains(&pos[base + s]))
                .collect();
            columns.push((victims.to_vec(), ahead, keep_len));
            moves.push(head_moves);
            new_len = keep_len;
        }
        for (h, (victims, ahead, keep_len)) in columns.iter().enumerate() {
            self.evict_columns(h, victims, ahead, &moves[h], *keep_len);
        }
        self.candidate = candidate;
        self.move_slots(&moves)?;
        self.len = new_len;
        self.old_to = self.old_to.max(next_from);
        Ok(evicted)
    }

    /// Moves the old/window edge up to `to`: the tokens that left the window since the last
    /// scoring (at or above the sinks) become old, and every ring row's old mass takes their
    /// columns (a gather per row). Decoding one token at a time this finds nothing left to
    /// do: the previous eviction already added the token that was about to leave (see
    /// [`LayerCache::evict_columns`]); it catches up after steps that did not evict.
    fn advance_old(&mut self, sinks: u32, to: u32) {
        if to < self.old_to {
            // The edge moved back (not on any path the cache takes): recount from the rows.
            self.recount_old(sinks, to);
            return;
        }
        let from = self.old_to.max(sinks);
        if to <= from || self.ring_len == 0 {
            self.old_to = to;
            return;
        }
        let (n, cap) = (self.len, self.cap);
        let mut slots = Vec::new();
        for h in 0..self.n_kv {
            slots.clear();
            let pos = &self.pos[h * cap..h * cap + n];
            slots.extend((0..n).filter(|&s| (from..to).contains(&pos[s])));
            if slots.is_empty() {
                continue;
            }
            for q in h * self.group..(h + 1) * self.group {
                for r in 0..self.ring_len {
                    let row = &self.ring[(q * self.ring_cap + r) * cap..][..n];
                    let add: f64 = slots.iter().map(|&s| f64::from(row[s])).sum();
                    self.old_mass[q * self.ring_cap + r] += add;
                }
            }
        }
        self.old_to = to;
    }

    /// Sets every valid row's old mass to its sum over `sinks <= position < to`, read from
    /// the rows.
    fn recount_old(&mut self, sinks: u32, to: u32) {
        for q in 0..self.old_mass.len() / self.ring_cap.max(1) {
            for r in 0..self.ring_len {
                self.old_mass[q * self.ring_cap + r] = self.counted_old(q, r, sinks..to);
            }
        }
        self.old_to = to;
    }

    /// Ring row `r` of query head `q` summed, from the row, over the slots whose positions lie
    /// in `old`.
    fn counted_old(&self, q: usize, r: usize, old: std::ops::Range<u32>) -> f64 {
        let (n, cap) = (self.len, self.cap);
        let pos = &self.pos[(q / self.group) * cap..][..n];
        let row = &self.ring[(q * self.ring_cap + r) * cap..][..n];
        (0..n)
            .filter(|&s| old.contains(&pos[s]))
            .map(|s| f64::from(row[s]))
            .sum()
    }

    /// Largest |maintained − recomputed| old mass over the valid ring rows (exact arithmetic
    /// makes it 0; tests check the bookkeeping with it).
    #[doc(hidden)]
    pub fn old_mass_error(&self, sinks: u32) -> f64 {
        let mut worst = 0f64;
        for q in 0..self.old_mass.len() / self.ring_cap.max(1) {
            for r in 0..self.ring_len {
                let sum = self.counted_old(q, r, sinks..self.old_to);
                worst = worst.max((sum - self.old_mass[q * self.ring_cap + r]).abs());
            }
        }
        worst
    }

    /// The ring's side of evicting `victims` from KV head `h` (slots `0..len` used): each row
    /// of the head's query heads loses the victims' old mass and gains that of the `ahead`
    /// slots (tokens turning old before the next scoring), takes the `moves` (src, dst) and
    /// clears the freed columns `keep_len..len`, which later tokens reuse and which rows
    /// written before them never saw. Columns of tokens newer than a row's query hold 0 in
    /// it: moving or clearing them needs no read (decoding, the tail slot that fills the
    /// victim's hole holds the newest token, which only the newest row saw).
    fn evict_columns(
        &mut self,
        h: usize,
        victims: &[usize],
        ahead: &[usize],
        moves: &[(usize, usize)],
        keep_len: usize,
    ) {
        let (cap, n) = (self.cap, self.len);
        // Slot positions before the moves.
        let pos = &self.pos[h * cap..h * cap + n];
        // The scoring sweep read the rows without keeping them in L2 (see
        // `kernels::axpy_rows_f16`): ask for the few lines each row needs here, all at once,
        // before touching any.
        for q in h * self.group..(h + 1) * self.group {
            for r in 0..self.ring_len {
                let (row, seen) = (
                    &self.ring[(q * self.ring_cap + r) * cap..][..n],
                    self.ring_qpos[r],
                );
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
        for q in h * self.group..(h + 1) * self.group {
            for r in 0..self.ring_len {
                let seen = self.ring_qpos[r];
                let row = &mut self.ring[(q * self.ring_cap + r) * cap..][..n];
                let gone: f64 = victims.iter().map(|&s| f64::from(row[s])).sum();
                let turned: f64 = ahead.iter().map(|&s| f64::from(row[s])).sum();
                self.old_mass[q * self.ring_cap + r] += turned - gone;
                for &(s, t) in moves {
                    row[t] = if pos[s] <= seen { row[s] } else { f16::ZERO };
                }
                for (v, &p) in row[keep_len..].iter_mut().zip(&pos[keep_len..]) {
                    if p <= seen {
                        *v = f16::ZERO;
                    }
                }
                let dirty = &mut self.ring_dirty[q * self.ring_cap + r];
                *dirty = (*dirty).min(keep_len as u32);
            }
        }
    }

    /// Moves slot `src` to `dst` for each pair of each KV head: device rows and host stats.
    fn move_slots(&mut self, moves: &[Vec<(usize, usize)>]) -> Result<()> {
        let m = moves.iter().map(Vec::len).max().unwrap_or(0);
        if m == 0 {
            return Ok(());
        }
        let d = self.k.dims()[2];
        if self.k.device().is_cpu() && !self.portable {
            let op = SlotCopy {
                moves,
                cap: self.cap,
                d,
            };
            self.k.inplace_op1(&op)?;
            self.v.inplace_op1(&op)?;
            self.move_bookkeeping(moves);
            return Ok(());
        }
        let (mut src, mut dst) = (Vec::with_capacity(self.n_kv * m * d), Vec::new());
        dst.reserve(self.n_kv * m * d);
        for mv in moves {
            // Heads with fewer moves repeat one of theirs (or copy slot 0 onto itself).
            let pad = mv.first().copied().unwrap_or((0, 0));
            for i in 0..m {
                let (s, t) = mv.get(i).copied().unwrap_or(pad);
                src.extend(std::iter::repeat_n(s as u32, d));
                dst.extend(std::iter::repeat_n(t as u32, d));
            }
        }
        let dev = self.k.device().clone();
        let src = Tensor::from_vec(src, (self.n_kv, m, d), &dev)?;
        let dst = Tensor::from_vec(dst, (self.n_kv, m, d), &dev)?;
        for buf in [&self.k, &self.v] {
            // Gather every source before writing: sources and destinations are disjoint.
            let rows = buf.gather(&src, 1)?;
            buf.scatter_set(&dst, &rows, 1)?;
        }
        self.move_bookkeeping(moves);
        Ok(())
    }

    /// The per-slot bookkeeping's side of [`LayerCache::move_slots`].
    fn move_bookkeeping(&mut self, moves: &[Vec<(usize, usize)>]) {
        let cap = self.cap;
        for (h, mv) in moves.iter().enumerate() {
            for &(s, t) in mv {
                self.pos[h * cap + t] = self.pos[h * cap + s];
                self.acc[h * cap + t] = self.acc[h * cap + s];
                self.score[h * cap + t] = self.score[h * cap + s];
                self.rank[h * cap + t] = self.rank[h * cap + s];
            }
        }
    }

    /// Writes one token's keys and values, (H_kv, d) host values each, into slot `len` of
    /// every head (in place, host memory only): [`LayerCache::append`] without tensors.
    pub fn append_host(&mut self, k: &[f32], v: &[f32]) -> Result<()> {
        if self.len + 1 > self.cap {
            return Err(Error::arg(
                "cache",
                format!("{} slots used + 1 new > capacity {}", self.len, self.cap),
            ));
        }
        let (cap, slot) = (self.cap, self.len);
        self.k.inplace_op1(&SlotWrite { rows: k, cap, slot })?;
        self.v.inplace_op1(&SlotWrite { rows: v, cap, slot })?;
        self.len += 1;
        Ok(())
    }
}

/// Copies whole slots within a (H_kv, cap, d) buffer in host memory: `moves[h]` holds the
/// (source, destination) slot pairs of head `h`, sources and destinations disjoint.
struct SlotCopy<'a> {
    moves: &'a [Vec<(usize, usize)>],
    cap: usize,
    d: usize,
}

impl SlotCopy<'_> {
    fn apply<T: Copy>(&self, buf: &mut [T]) {
        for (h, mv) in self.moves.iter().enumerate() {
            let base = h * self.cap * self.d;
            for &(s, t) in mv {
                let from = base + s * self.d;
                buf.copy_within(from..from + self.d, base + t * self.d);
            }
        }
    }
}

impl candle_core::InplaceOp1 for SlotCopy<'_> {
    fn name(&self) -> &'static str {
        "slot-copy"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        use candle_core::CpuStorage as S;
        let o = layout.start_offset();
        match storage {
            S::F32(b) => self.apply(&mut b[o..]),
            S::F16(b) => self.apply(&mut b[o..]),
            S::BF16(b) => self.apply(&mut b[o..]),
            _ => candle_core::bail!("slot-copy: keys and values must be f32, f16 or bf16"),
        }
        Ok(())
    }
}

/// Writes one token's rows, (H_kv, d) f32, into slot `slot` of each head of a (H_kv, cap, d)
/// f32 buffer in host memory.
struct SlotWrite<'a> {
    rows: &'a [f32],
    cap: usize,
    slot: usize,
}

impl candle_core::InplaceOp1 for SlotWrite<'_> {
    fn name(&self) -> &'static str {
        "slot-write"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let candle_core::CpuStorage::F32(buf) = storage else {
            candle_core::bail!("slot-write: keys and values must be f32");
        };
        let (n_kv, cap, d) = layout.shape().dims3()?;
        if cap != self.cap || self.rows.len() != n_kv * d {
            candle_core::bail!(
                "slot-write: {} values for {n_kv} heads of {d}",
                self.rows.len()
            );
        }
        let o = layout.start_offset();
        for (h, row) in self.rows.chunks_exact(d).enumerate() {
            let at = o + (h * cap + self.slot) * d;
            buf[at..at + d].copy_from_slice(row);
        }
        Ok(())
    }
}

/// The whole cache: one [`LayerCache`] per layer plus the conversation's bookkeeping.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    cfg: CacheConfig,
    policy: Box<dyn Policy>,
    needs: Needs,
    n_kv_head: usize,
    n_head: usize,
    head_dim: usize,
    dtype: DType,
    /// Absolute position of the next token.
    next_pos: u32,
    /// Tokens of the step in flight (between `begin` and `end`).
    pending: usize,
    /// Evictions since the last [`KvCache::take_evictions`], while recording.
    evicted: Vec<Eviction>,
    /// Whether evictions are recorded (off by default, so a long run does not accumulate
    /// them).
    record: bool,
    /// Seconds spent on the policy's side of the cache: observing attention rows, scoring,
    /// choosing and moving victims.
    policy_secs: f64,
    /// Per layer, the last decoded token's attention summary, while recording.
    attention: Option<Vec<LayerAttention>>,
}

/// Bytes a cache of `cap` slots per KV head takes in all layers: K and V, the per-slot
/// records, and the profile's ring. None if the product overflows.
fn first_allocation(model: &Config, cap: usize, ring_rows: usize, dtype: DType) -> Option<u64> {
    let kv = (model.n_kv_head * model.head_dim).checked_mul(2 * dtype.size_in_bytes())?;
    let records = model.n_kv_head.checked_mul(16)?;
    let ring = model.n_head.checked_mul(ring_rows)?.checked_mul(2)?;
    let per_slot = kv.checked_add(records)?.checked_add(ring)?;
    let bytes = per_slot.checked_mul(cap)?.checked_mul(model.n_layer)?;
    u64::try_from(bytes).ok()
}

impl KvCache {
    /// An empty cache that keeps every token (the `full` policy).
    pub fn new(cfg: &Config, dtype: DType, device: &Device) -> Result<Self> {
        Self::with_config(cfg, CacheConfig::full(), dtype, device)
    }

    /// An empty cache shaped for `model`, managed as `cache` says.
    pub fn with_config(
        model: &Config,
        cache: CacheConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        cache.validate()?;
        let policy = cache.build_policy();
        let needs = policy.needs();
        let cap = if cache.bounded() {
            cache.budget + cache.prefill_chunk
        } else {
            INITIAL_SLOTS
        };
        let bytes = first_allocation(model, cap, needs.rows, dtype);
        let total = limits::total_memory();
        if let (Some(total), Some(bytes)) = (total, bytes) {
            if bytes > total {
                return Err(Error::arg(
                    "--budget",
                    format!(
                        "a cache of {} slots per KV head ({} budget + {} prefill chunk) needs {:.1} GiB for this model, more than this machine's {:.1} GiB: lower --budget or --prefill-chunk",
                        cap,
                        cache.budget,
                        cache.prefill_chunk,
                        bytes as f64 / f64::from(1u32 << 30),
                        total as f64 / f64::from(1u32 << 30)
                    ),
                ));
            }
        } else if bytes.is_none() {
            return Err(Error::arg("--budget", "the cache would not fit in memory"));
        }
        let layers = (0..model.n_layer)
            .map(|_| LayerCache::new(model, cap, needs.rows, dtype, device))
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            cfg: cache,
            policy,
            needs,
            n_kv_head: model.n_kv_head,
            n_head: model.n_head,
            head_dim: model.head_dim,
            dtype,
            next_pos: 0,
            pending: 0,
            evicted: Vec::new(),
            record: false,
            policy_secs: 0.0,
            attention: None,
        })
    }

    /// The settings this cache runs with.
    pub fn config(&self) -> &CacheConfig {
        &self.cfg
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// The element type of the stored keys and values.
    pub fn dtype(&self) -> DType {
        self.layers.first().map_or(DType::F32, |l| l.k.dtype())
    }

    /// One layer's slots.
    pub fn layer(&self, l: usize) -> &LayerCache {
        &self.layers[l]
    }

    /// One layer's slots, for the model to write into.
    pub fn layer_mut(&mut self, l: usize) -> &mut LayerCache {
        &mut self.layers[l]
    }

    /// Tokens seen so far in this conversation (the next token's absolute position).
    pub fn seen(&self) -> usize {
        self.next_pos as usize
    }

    /// Tokens retained per KV head per layer (the same in every layer).
    pub fn retained(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    /// Bytes of one token's K and V across all layers and KV heads.
    pub fn bytes_per_token(&self) -> usize {
        2 * self.dtype.size_in_bytes() * self.head_dim * self.n_kv_head * self.layers.len()
    }

    /// Bytes of the retained keys and values.
    pub fn kv_bytes(&self) -> usize {
        self.bytes_per_token() * self.retained()
    }

    /// Bytes of the attention rows kept for scoring (MorphKV's profile: H_q · R · budget per
    /// layer, f32).
    pub fn profile_bytes(&self) -> usize {
        let per_layer = self.n_head * self.needs.rows * self.retained();
        std::mem::size_of::<f16>() * per_layer * self.layers.len()
    }

    /// Bytes a cache that never evicts would hold for the same conversation.
    pub fn full_kv_bytes(&self) -> usize {
        self.bytes_per_token() * self.seen()
    }

    /// Starts or stops recording evictions for [`KvCache::take_evictions`]; a recorder must
    /// take them regularly (e.g. after every step).
    pub fn record_evictions(&mut self, on: bool) {
        self.record = on;
        if !on {
            self.evicted.clear();
        }
    }

    /// Evictions since the last call, oldest first (empty unless recording).
    pub fn take_evictions(&mut self) -> Vec<Eviction> {
        std::mem::take(&mut self.evicted)
    }

    /// An independent copy of this cache: the same conversation, to continue two ways (e.g.
    /// score an answer, then decode one, from the same prompt).
    pub fn fork(&self) -> Result<Self> {
        Ok(Self {
            layers: self
                .layers
                .iter()
                .map(LayerCache::fork)
                .collect::<Result<_>>()?,
            cfg: self.cfg.clone(),
            policy: self.cfg.build_policy(),
            needs: self.needs,
            n_kv_head: self.n_kv_head,
            n_head: self.n_head,
            head_dim: self.head_dim,
            dtype: self.dtype,
            next_pos: self.next_pos,
            pending: self.pending,
            evicted: self.evicted.clone(),
            record: self.record,
            policy_secs: self.policy_secs,
            attention: self.attention.clone(),
        })
    }

    /// Tensor ops only, even on the CPU: the decoder and the cache take the path a GPU takes
    /// (no host kernels, no in-place slot ops), so tests can check that path against the host
    /// one on machines without a GPU. Off by default.
    pub fn set_portable(&mut self, on: bool) {
        for l in &mut self.layers {
            l.portable = on;
        }
    }

    /// Whether [`KvCache::set_portable`] is on.
    pub fn portable(&self) -> bool {
        self.layers.first().is_some_and(|l| l.portable)
    }

    /// Keep, per layer, where each decoded token's attention went (for the UI; off by
    /// default).
    pub fn record_attention(&mut self, on: bool) {
        self.attention = on.then(|| vec![LayerAttention::default(); self.layers.len()]);
    }

    /// Per layer, where the last decoded token's attention went (empty unless recording).
    pub fn last_attention(&self) -> &[LayerAttention] {
        self.attention.as_deref().unwrap_or(&[])
    }

    /// Summarises a decode step's attention row of layer `l`, (H_q, 1, visible).
    fn summarize_attention(
        &mut self,
        l: usize,
        rows: &[f32],
        (n_head, _, visible): (usize, usize, usize),
    ) {
        let sinks = self.cfg.sinks() as u32;
        let window_from = self
            .next_pos
            .saturating_sub(self.cfg.effective_window() as u32);
        let layer = &self.layers[l];
        let sum = summarize_rows(
            (&layer.pos, layer.cap, layer.group),
            rows,
            (n_head, visible),
            (sinks, window_from),
        );
        if let Some(a) = self.attention.as_mut() {
            a[l] = sum;
        }
    }

    /// Seconds this cache has spent on its policy so far: observing attention, scoring,
    /// choosing and moving victims (the part of a step that `full` does not pay).
    pub fn policy_secs(&self) -> f64 {
        self.policy_secs
    }

    /// Forgets everything: a new conversation.
    pub fn clear(&mut self) {
        for l in &mut self.layers {
            l.len = 0;
            l.ring_len = 0;
            l.ring_next = 0;
            l.old_to = 0;
            // Rows written later must read 0 in columns their tokens never saw.
            l.ring.fill(f16::ZERO);
        }
        self.next_pos = 0;
        self.pending = 0;
        self.evicted.clear();
    }

    /// Makes room for `t` new tokens in every layer (evicting first when one decoded token
    /// would exceed the budget) and returns their positions.
    pub fn begin(&mut self, t: usize) -> Result<Step> {
        let clock = Instant::now();
        let len = self.retained();
        if t == 1 && len + 1 > self.cfg.budget && self.policy.evicts(Phase::Decode) {
            let m = self.cfg.evict_every.max(len + 1 - self.cfg.budget);
            // Before the token is appended: the next scoring comes with the next token.
            self.evict(m, 1)?;
        }
        // Making room is the cache's storage, not the policy: the clock stops for it.
        self.policy_secs += clock.elapsed().as_secs_f64();
        let bounded = self.cfg.bounded();
        // Decoding under a policy that holds the budget, the room a prompt chunk needed goes:
        // slots, their K/V and the ring's rows then lie without gaps, which the hardware
        // would otherwise stream too (measured: ~7% of MorphKV's scoring).
        let tight =
            (t == 1 && bounded && self.policy.evicts(Phase::Decode)).then_some(self.cfg.budget);
        for layer in &mut self.layers {
            let need = layer.len + t;
            if need > layer.cap {
                let cap = if bounded {
                    need.max(self.cfg.budget + self.cfg.prefill_chunk)
                } else {
                    need.next_power_of_two().max(INITIAL_SLOTS)
                };
                layer.grow(cap)?;
            } else if let Some(cap) = tight.filter(|&c| c < layer.cap && need <= c) {
                layer.grow(cap)?;
            }
        }
        let clock = Instant::now();
        let past = self.retained();
        self.pending = t;
        let positions = (0..t as u32).map(|i| self.next_pos + i).collect::<Vec<_>>();
        for layer in &mut self.layers {
            let cap = layer.cap;
            for h in 0..self.n_kv_head {
                for (i, &p) in positions.iter().enumerate() {
                    let at = h * cap + past + i;
                    layer.pos[at] = p;
                    layer.acc[at] = 0.0;
                    layer.score[at] = f32::NAN;
                    layer.rank[at] = (past + i) as u32;
                }
            }
        }
        self.policy_secs += clock.elapsed().as_secs_f64();
        let rotate_keys = self.cfg.positions == Positions::Rebased;
        let rope_positions = if rotate_keys {
            (past..past + t).map(|r| r as u32).collect()
        } else {
            positions.clone()
        };
        Ok(Step {
            positions,
            rope_positions,
            rotate_keys,
            past,
        })
    }

    /// Re-based RoPE positions of layer `l`'s used slots, (H_kv, len) as u32, for rotating
    /// keys stored before RoPE (kept only when the cache's positions are re-based).
    pub fn key_ranks(&self, l: usize, device: &Device) -> Result<Tensor> {
        let layer = &self.layers[l];
        let mut ranks = Vec::with_capacity(layer.n_kv * layer.len);
        for h in 0..layer.n_kv {
            ranks.extend_from_slice(&layer.rank[h * layer.cap..h * layer.cap + layer.len]);
        }
        Ok(Tensor::from_vec(ranks, (layer.n_kv, layer.len), device)?)
    }

    /// Receives attention probabilities of layer `l` for rows `first_row..first_row + rows`
    /// of a step of `t` new tokens: (H_q, rows, visible slots).
    pub fn observe(&mut self, l: usize, t: usize, first_row: usize, probs: &Tensor) -> Result<()> {
        if !self.wants_probs(t) {
            return Ok(());
        }
        let dims = probs.dims3()?;
        let data = probs.flatten_all()?.to_vec1::<f32>()?;
        self.observe_slice(l, t, first_row, &data, dims)
    }

    /// Whether [`KvCache::observe`] does anything with a step of `t` tokens (the policy keeps
    /// attention, or the UI asked for its summary).
    pub fn wants_probs(&self, t: usize) -> bool {
        (t == 1 && self.attention.is_some()) || self.needs.accumulate || self.needs.rows > 0
    }

    /// [`KvCache::observe`] on host values: `probs` is (H_q, rows, visible) row-major, its
    /// shape `dims`.
    pub fn observe_slice(
        &mut self,
        l: usize,
        t: usize,
        first_row: usize,
        probs: &[f32],
        dims: (usize, usize, usize),
    ) -> Result<()> {
        if probs.len() != dims.0 * dims.1 * dims.2 {
            return Err(Error::arg(
                "observe",
                format!("{} values for shape {dims:?}", probs.len()),
            ));
        }
        if t == 1 && self.attention.is_some() {
            self.summarize_attention(l, probs, dims);
        }
        if !self.needs.accumulate && self.needs.rows == 0 {
            return Ok(());
        }
        let clock = Instant::now();
        self.observe_rows(l, t, first_row, probs, dims);
        self.policy_secs += clock.elapsed().as_secs_f64();
        Ok(())
    }

    fn observe_rows(
        &mut self,
        l: usize,
        t: usize,
        first_row: usize,
        probs: &[f32],
        (n_head, rows, visible): (usize, usize, usize),
    ) {
        let layer = &mut self.layers[l];
        let group = layer.group;
        let cap = layer.cap;
        if self.needs.accumulate {
            // (H_q, rows, visible): attention received, summed over rows and query heads.
            for qh in 0..n_head {
                let h = qh / group;
                for r in 0..rows {
                    let row = &probs[(qh * rows + r) * visible..(qh * rows + r + 1) * visible];
                    for (acc, p) in layer.acc[h * cap..h * cap + visible].iter_mut().zip(row) {
                        *acc += p;
                    }
                }
            }
        }
        let keep = self.needs.rows;
        // Rows of this block among the step's last `keep` rows.
        let from = (t.saturating_sub(keep)).max(first_row);
        if keep == 0 || from >= first_row + rows {
            return;
        }
        let (lo, hi) = (self.cfg.sinks() as u32, layer.old_to);
        for i in from - first_row..rows {
            let r = layer.ring_next;
            layer.ring_qpos[r] = self.next_pos + (first_row + i) as u32;
            for qh in 0..n_head {
                let src = &probs[(qh * rows + i) * visible..(qh * rows + i + 1) * visible];
                let start = (qh * layer.ring_cap + r) * cap;
                let dst = &mut layer.ring[start..start + cap];
                let pos = &layer.pos[(qh / group) * cap..][..visible];
                layer.old_mass[qh * layer.ring_cap + r] =
                    policy::encode_row(src, &mut dst[..visible], pos, lo..hi);
                // Columns past `visible` are tokens this query never saw.
                let dirty = &mut layer.ring_dirty[qh * layer.ring_cap + r];
                if (*dirty as usize) > visible {
                    dst[visible..*dirty as usize].fill(f16::ZERO);
                }
                *dirty = visible as u32;
            }
            layer.ring_next = (r + 1) % layer.ring_cap;
            layer.ring_len = (layer.ring_len + 1).min(layer.ring_cap);
        }
    }

    /// Closes the step opened by [`KvCache::begin`]; compresses a prefilled chunk that left
    /// the cache over budget.
    pub fn end(&mut self) -> Result<()> {
        self.next_pos += self.pending as u32;
        let t = std::mem::take(&mut self.pending);
        let len = self.retained();
        if t > 1 && len > self.cfg.budget && self.policy.evicts(Phase::Prefill) {
            let clock = Instant::now();
            // After the chunk: the next scoring (the next token's) sees the same window.
            self.evict(len - self.cfg.budget, 0)?;
            self.policy_secs += clock.elapsed().as_secs_f64();
        }
        Ok(())
    }

    /// Evicts up to `m` tokens per KV head in every layer (layers in parallel: each one's
    /// scoring is independent). `ahead` is how many tokens later the next scoring's window
    /// starts (1 before a decoded token, 0 after a chunk).
    fn evict(&mut self, m: usize, ahead: u32) -> Result<()> {
        use rayon::prelude::*;
        let window = self.cfg.effective_window() as u32;
        let sinks = self.cfg.sinks() as u32;
        let recent_from = self.next_pos.saturating_sub(window);
        // The window's edge at the next scoring, if it comes one decoded token later.
        let next_from = (self.next_pos + ahead).saturating_sub(window);
        let policy = &*self.policy;
        let round = Round {
            m,
            sinks,
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

    /// An owned picture of the cache for the UI and tools.
    pub fn snapshot(&self) -> Snapshot {
        let window = self.cfg.effective_window();
        Snapshot {
            policy: self.policy.name().to_string(),
            budget: self.cfg.budget,
            window,
            sinks: self.cfg.sinks(),
            seen: self.seen(),
            retained: self.retained(),
            window_from: self.next_pos.saturating_sub(window as u32),
            kv_bytes: self.kv_bytes(),
            profile_bytes: self.profile_bytes(),
            full_kv_bytes: self.full_kv_bytes(),
            layers: self
                .layers
                .iter()
                .map(|l| {
                    (0..l.n_kv)
                        .map(|h| HeadSnapshot {
                            positions: l.positions(h).to_vec(),
                            scores: l.score[h * l.cap..h * l.cap + l.len].to_vec(),
                        })
                        .collect()
                })
                .collect(),
        }
    }
}

/// What one KV head holds.
#[derive(Debug, Clone, Serialize)]
pub struct HeadSnapshot {
    /// Positions of the retained tokens, in slot order.
    pub positions: Vec<u32>,
    /// Their latest scores (NaN: not scored yet, e.g. window tokens).
    pub scores: Vec<f32>,
}

/// An owned picture of the cache: per layer, per KV head, what is retained.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub policy: String,
    pub budget: usize,
    pub window: usize,
    pub sinks: usize,
    pub seen: usize,
    pub retained: usize,
    /// Tokens at or after this position are in the protected window.
    pub window_from: u32,
    pub kv_bytes: usize,
    pub profile_bytes: usize,
    pub full_kv_bytes: usize,
    /// `layers[l][h]`.
    pub layers: Vec<Vec<HeadSnapshot>>,
}

#[cfg(test)]
mod tests {
    use super::{lowest, summarize_rows, LayerAttention};

    /// The attention summary merges positions across KV heads exactly as summing them in a
    /// map, query head by query head, would: the same masses, bit for bit, and the same top.
    #[test]
    fn attention_summaries_match_a_map_by_position() {
        let mut seed = 3u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (n_head, group, cap) = (6, 3, 50);
        for (visible, sinks, window_from) in [(1, 0, 0), (37, 4, 90), (50, 4, 2), (50, 0, 400)] {
            // Each KV head holds distinct positions, many shared with the other head.
            let mut slots = vec![0u32; 2 * cap];
            for h in 0..2 {
                let mut p: Vec<u32> = (0..120).collect();
                for i in (1..p.len()).rev() {
                    p.swap(i, next() as usize % (i + 1));
                }
                slots[h * cap..(h + 1) * cap].copy_from_slice(&p[..cap]);
            }
            let rows: Vec<f32> = (0..n_head * visible)
                .map(|_| (next() % 1000) as f32 / 997.0)
                .collect();
            let mut want = LayerAttention::default();
            let mut by_pos = std::collections::HashMap::<u32, f32>::new();
            let share = 1.0 / n_head as f32;
            for qh in 0..n_head {
                for s in 0..visible {
                    let pos = slots[(qh / group) * cap + s];
                    let p = rows[qh * visible + s] * share;
                    if pos < sinks {
                        want.sinks += p;
                    } else if pos >= window_from {
                        want.window += p;
                    } else {
                        want.old += p;
                    }
                    *by_pos.entry(pos).or_default() += p;
                }
            }
            let mut top: Vec<(u32, f32)> = by_pos.into_iter().collect();
            top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            top.truncate(5);
            want.top = top;
            let got = summarize_rows(
                (&slots, cap, group),
                &rows,
                (n_head, visible),
                (sinks, window_from),
            );
            assert_eq!(got, want, "visible {visible}");
        }
    }

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
