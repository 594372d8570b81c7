//! The KV cache the decoder writes into: per layer, a preallocated buffer of slots per KV head
//! holding post-RoPE keys, values and each token's absolute position.
//!
//! Slots, not shifting: a layer's used slots are always `0..len` for every KV head, but each
//! head may hold a different token in a given slot (eviction policies keep different tokens per
//! head). Attention does not care about slot order, so new tokens are written in place and an
//! evicted slot is refilled rather than compacting the buffer.
//!
//! The model calls [`KvCache::begin`] before a forward pass (make room, positions of the new
//! tokens), [`LayerCache::append`] and [`KvCache::observe`] per layer, and [`KvCache::end`]
//! after it.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::model::Config;

/// Slots allocated up front when the cache can grow without bound.
const INITIAL_SLOTS: usize = 256;

/// What [`KvCache::begin`] tells the model about the tokens it is about to run.
#[derive(Debug, Clone)]
pub struct Step {
    /// RoPE position of each new token.
    pub positions: Vec<u32>,
    /// Used slots before the new tokens (the new ones go to `past..past + T`).
    pub past: usize,
}

/// One layer's slots.
#[derive(Debug)]
pub struct LayerCache {
    /// (H_kv, capacity, d)
    k: Tensor,
    /// (H_kv, capacity, d)
    v: Tensor,
    /// Used slots per KV head (the same for every head).
    len: usize,
    /// Absolute token position held by each slot: `pos[head * capacity + slot]`.
    pos: Vec<u32>,
}

impl LayerCache {
    fn new(n_kv: usize, cap: usize, d: usize, dtype: DType, dev: &Device) -> Result<Self> {
        Ok(Self {
            k: Tensor::zeros((n_kv, cap, d), dtype, dev)?,
            v: Tensor::zeros((n_kv, cap, d), dtype, dev)?,
            len: 0,
            pos: vec![0; n_kv * cap],
        })
    }

    fn capacity(&self) -> usize {
        self.pos.len() / self.n_kv()
    }

    fn n_kv(&self) -> usize {
        self.k.dims()[0]
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
        self.pos[head * self.capacity() + slot]
    }

    /// Reallocates to `cap` slots, keeping the used ones.
    fn grow(&mut self, cap: usize) -> Result<()> {
        let (n_kv, old_cap, d) = self.k.dims3()?;
        let k = Tensor::zeros((n_kv, cap, d), self.k.dtype(), self.k.device())?;
        let v = Tensor::zeros((n_kv, cap, d), self.v.dtype(), self.v.device())?;
        if self.len > 0 {
            k.slice_set(&self.k.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
            v.slice_set(&self.v.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
        }
        let mut pos = vec![0; n_kv * cap];
        for h in 0..n_kv {
            pos[h * cap..h * cap + self.len]
                .copy_from_slice(&self.pos[h * old_cap..h * old_cap + self.len]);
        }
        (self.k, self.v, self.pos) = (k, v, pos);
        Ok(())
    }

    /// Writes new keys and values, (H_kv, T, d) each, into slots `len..len + T` of every head
    /// (in place) and returns views of all used slots, (H_kv, len + T, d) each.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dims()[1];
        if self.len + t > self.capacity() {
            return Err(Error::arg(
                "cache",
                format!(
                    "{} slots used + {t} new > capacity {}: call KvCache::begin first",
                    self.len,
                    self.capacity()
                ),
            ));
        }
        self.k.slice_set(&k.contiguous()?, 1, self.len)?;
        self.v.slice_set(&v.contiguous()?, 1, self.len)?;
        self.len += t;
        Ok((
            self.k.narrow(1, 0, self.len)?,
            self.v.narrow(1, 0, self.len)?,
        ))
    }
}

/// The whole cache: one [`LayerCache`] per layer plus the conversation's bookkeeping.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    n_kv_head: usize,
    head_dim: usize,
    dtype: DType,
    /// Absolute position of the next token.
    next_pos: u32,
    /// Tokens of the step in flight (between `begin` and `end`).
    pending: usize,
}

impl KvCache {
    /// An empty cache shaped for `cfg`, storing K/V as `dtype` on `device`.
    pub fn new(cfg: &Config, dtype: DType, device: &Device) -> Result<Self> {
        let layers = (0..cfg.n_layer)
            .map(|_| LayerCache::new(cfg.n_kv_head, INITIAL_SLOTS, cfg.head_dim, dtype, device))
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            n_kv_head: cfg.n_kv_head,
            head_dim: cfg.head_dim,
            dtype,
            next_pos: 0,
            pending: 0,
        })
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
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

    /// Bytes a cache that never evicts would hold for the same conversation.
    pub fn full_kv_bytes(&self) -> usize {
        self.bytes_per_token() * self.seen()
    }

    /// Forgets everything: a new conversation.
    pub fn clear(&mut self) {
        for l in &mut self.layers {
            l.len = 0;
        }
        self.next_pos = 0;
        self.pending = 0;
    }

    /// Makes room for `t` new tokens in every layer and returns their positions.
    pub fn begin(&mut self, t: usize) -> Result<Step> {
        let past = self.retained();
        for layer in &mut self.layers {
            let need = layer.len + t;
            if need > layer.capacity() {
                layer.grow(need.next_power_of_two().max(INITIAL_SLOTS))?;
            }
        }
        self.pending = t;
        let positions = (0..t as u32).map(|i| self.next_pos + i).collect::<Vec<_>>();
        for layer in &mut self.layers {
            let cap = layer.capacity();
            for h in 0..self.n_kv_head {
                for (i, &p) in positions.iter().enumerate() {
                    layer.pos[h * cap + past + i] = p;
                }
            }
        }
        Ok(Step { positions, past })
    }

    /// Receives attention probabilities of one layer for new-token rows
    /// `first_row..first_row + rows` of a step of `t` tokens: (H_q, rows, visible slots).
    pub fn observe(
        &mut self,
        _layer: usize,
        _t: usize,
        _first_row: usize,
        _probs: &Tensor,
    ) -> Result<()> {
        Ok(())
    }

    /// Closes the step opened by [`KvCache::begin`].
    pub fn end(&mut self) -> Result<()> {
        self.next_pos += self.pending as u32;
        self.pending = 0;
        Ok(())
    }
}
