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
//!
//! This file is the facade: [`KvCache`], its step (`begin`, `observe`, `end`) and the
//! registry's table. The rest, by concern (some add `impl KvCache` blocks for their part):
//! - `config`: [`CacheConfig`], [`Positions`], defaults, validation; [`limits`]: bounds;
//! - `kv_type`: [`KvType`], how keys and values are stored (f32, f16, Q8_0) and their bytes;
//! - `footprint`: a config's [`Bytes`] at its budget without a cache, the budget that fits
//!   a byte size, and byte sizes' parsing;
//! - `registry`: [`PolicyKind`], [`Entry`] and the lists and help texts derived from the
//!   table; [`policy`]: the [`Policy`] trait; one file per policy;
//! - `slots`: [`LayerCache`], slot storage and its in-place ops (and `fork`, `portable`);
//! - `profile`: MorphKV's ring of attention rows and their old masses, its own type;
//!   `ring`: [`ProfileType`], how its rows are stored (f16 or 8-bit log codes), and the codec;
//! - `evict`: choosing and removing victims, layer by layer, in parallel;
//! - `telemetry`: [`Eviction`]s, [`LayerAttention`], [`Snapshot`], byte counts, timing.

mod config;
mod evict;
mod footprint;
mod kv_type;
pub mod limits;
pub mod policy;
mod profile;
mod registry;
mod ring;
mod shape;
mod slots;
mod telemetry;

// The policy registry: one line per policy (`Const => module`, a file beside this one).
registry::policies! {
    Full => full,
    Streaming => streaming,
    H2o => h2o,
    Tova => tova,
    SnapKv => snapkv,
    MorphKv => morphkv,
    #[cfg(test)]
    Recent => recent,
}

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
pub use config::{
    CacheConfig, Positions, BASELINE_WINDOW, DEFAULT_HALF_LIFE, DEFAULT_HISTORY,
    DEFAULT_PREFILL_CHUNK, DEFAULT_WINDOW,
};
pub use footprint::{format_bytes, parse_bytes, Bytes};
pub use kv_type::{deserialize_kv_type, KvType, KV_TYPE_LIST};
pub use policy::{encode_row, Fusion, GroupAgg, Needs, Phase, Policy, ScoreCtx, RING_SCALE};
pub use registry::{Entry, PolicyKind, EVICTING_POLICIES, POLICIES, POLICY_LIST};
pub use ring::{
    axpy_rows, deserialize_profile, encode_log8, log8_encode, log8_table, ProfileType, RingView,
    PROFILE_TYPE_LIST,
};
pub use shape::Shape;
pub use slots::LayerCache;
use slots::INITIAL_SLOTS;
pub use snapkv::{OBS_WINDOW as SNAPKV_OBS_WINDOW, POOL as SNAPKV_POOL};
pub use telemetry::{Eviction, HeadSnapshot, LayerAttention, Snapshot};

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

/// The whole cache: one [`LayerCache`] per layer plus the conversation's bookkeeping.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    cfg: CacheConfig,
    policy: Box<dyn Policy>,
    needs: Needs,
    n_kv_head: usize,
    head_dim: usize,
    kv: KvType,
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

impl KvCache {
    /// An empty cache that keeps every token (the `full` policy), its keys and values
    /// stored as `dtype` (f32 or f16).
    pub fn new(shape: impl Into<Shape>, dtype: DType, device: &Device) -> Result<Self> {
        Self::with_config(shape, CacheConfig::full(), dtype, device)
    }

    /// An empty cache shaped for `model`, managed as `cache` says, its keys and values
    /// stored as `dtype` (f32 or f16) whatever `cache.kv_type` says (the config it keeps
    /// says `dtype`).
    pub fn with_config(
        shape: impl Into<Shape>,
        cache: CacheConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let kv_type = KvType::from_dtype(dtype)?;
        Self::from_config(shape, CacheConfig { kv_type, ..cache }, device)
    }

    /// An empty cache shaped for `model`, managed as `cache` says, its keys and values
    /// stored as `cache.kv_type`.
    pub fn from_config(
        shape: impl Into<Shape>,
        cache: CacheConfig,
        device: &Device,
    ) -> Result<Self> {
        let model = &shape.into();
        cache.validate()?;
        let kv = cache.kv_type;
        kv.check(model.head_dim, device)?;
        let policy = cache.build_policy();
        let needs = policy.needs();
        // A policy that evicts while decoding keeps the cache at the budget.
        let cap = if policy.evicts(Phase::Decode) {
            cache.budget + cache.prefill_chunk
        } else {
            INITIAL_SLOTS
        };
        let sizes = (cap, cache.budget, cache.prefill_chunk);
        let ring = (needs.rows, cache.profile);
        limits::check_first_allocation(model, sizes, ring, kv)?;
        let layers = (0..model.n_layer)
            .map(|_| LayerCache::new(model, cap, ring, kv, device))
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            cfg: cache,
            policy,
            needs,
            n_kv_head: model.n_kv_head,
            head_dim: model.head_dim,
            kv,
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

    /// The element type of the tensors holding the keys and values (u8 for Q8_0's bytes).
    pub fn dtype(&self) -> DType {
        self.kv.dtype()
    }

    /// How the keys and values are stored.
    pub fn kv_type(&self) -> KvType {
        self.kv
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

    /// Forgets everything: a new conversation.
    pub fn clear(&mut self) {
        for l in &mut self.layers {
            l.len = 0;
            l.profile.clear();
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
        // Whether the policy evicts while decoding, keeping the cache at the budget.
        let bounded = self.policy.evicts(Phase::Decode);
        if t == 1 && len + 1 > self.cfg.budget && bounded {
            let m = self.cfg.evict_every.max(len + 1 - self.cfg.budget);
            // Before the token is appended: the next scoring comes with the next token.
            self.evict(m, 1)?;
        }
        // Making room is the cache's storage, not the policy: the clock stops for it.
        self.policy_secs += clock.elapsed().as_secs_f64();
        // Decoding under a policy that holds the budget, the room a prompt chunk needed goes:
        // slots, their K/V and the ring's rows then lie without gaps, which the hardware
        // would otherwise stream too (measured: ~7% of MorphKV's scoring).
        let tight = (t == 1 && bounded).then_some(self.cfg.budget);
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
            layer.open(past, &positions);
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
        self.layers[l].ranks(device)
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
        let layer = &mut self.layers[l];
        if self.needs.accumulate {
            layer.accumulate(probs, dims, self.needs.half_life);
        }
        // Rows of this block among the step's last `keep` rows go to the profile.
        let (keep, rows) = (self.needs.rows, dims.1);
        let from = (t.saturating_sub(keep)).max(first_row);
        if keep > 0 && from < first_row + rows {
            let block = from - first_row..rows;
            let qpos0 = self.next_pos + first_row as u32;
            let sinks = self.cfg.sinks() as u32;
            let (profile, pos) = (&mut layer.profile, &layer.pos);
            profile.observe(probs, dims, block, qpos0, pos, sinks);
        }
        self.policy_secs += clock.elapsed().as_secs_f64();
        Ok(())
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
}
