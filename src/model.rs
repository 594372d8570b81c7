//! The llama-family decoder: weights loaded once and never mutated; all decoding state lives in
//! the [`KvCache`] passed to [`Model::forward`].
//!
//! One layer, for `T` new tokens (shapes without the batch dimension, which is always 1):
//!
//! ```text
//! x (T, hidden) ─ rms_norm ─ q,k,v projections ─ RoPE ─ cache.append(k, v)
//!   ─ attention over the cache's slots ─ cache.observe(probs) ─ o projection ─ + x
//!   ─ rms_norm ─ down(silu(gate(h)) · up(h)) ─ + x
//! ```

pub mod attention;
mod checkpoint;
pub mod config;
pub mod gguf;
mod random;
pub mod rope;
pub mod safetensors;

use candle_core::quantized::QMatMul;
use candle_core::{Device, Module, Tensor};

pub use checkpoint::{load, Checkpoint};
pub use config::{Arch, Config, RopeStyle};
pub use gguf::{open_gguf, WeightFormat};

use crate::cache::KvCache;
use crate::error::{Error, Result};
use attention::attention;
use rope::Rope;

/// Rows from which a [`Linear`] holding both forms uses the dense one: a batched GEMM beats the
/// quantized kernels on a prompt, the quantized kernels win on a single row (less memory read).
const DENSE_MIN_ROWS: usize = 16;

/// A projection `y = x·Wᵀ (+ b)`: quantized, dense, or both (dense for prompts).
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    w: QMatMul,
    /// A dense f32 copy used for inputs of at least [`DENSE_MIN_ROWS`] rows.
    dense: Option<QMatMul>,
    b: Option<Tensor>,
}

impl Linear {
    /// A projection from a dense (out, in) f32 weight, kept as `format` says: Q8_0 for
    /// decoding (where the input width allows Q8_0's 32-value blocks), a dense copy for
    /// prompts (`Hybrid`), or dense only (`F32`, `Native`). `Auto` must be resolved first.
    pub(crate) fn from_dense(w: Tensor, b: Option<Tensor>, format: WeightFormat) -> Result<Self> {
        let q8 = |w: &Tensor| -> Result<Option<QMatMul>> {
            if w.dim(1)? % 32 != 0 {
                return Ok(None);
            }
            let q = candle_core::quantized::QTensor::quantize(
                w,
                candle_core::quantized::GgmlDType::Q8_0,
            )?;
            Ok(Some(QMatMul::QTensor(std::sync::Arc::new(q))))
        };
        let (w, dense) = match format {
            WeightFormat::F32 | WeightFormat::Native => (QMatMul::Tensor(w), None),
            WeightFormat::Q8_0 | WeightFormat::Auto => match q8(&w)? {
                Some(q) => (q, None),
                None => (QMatMul::Tensor(w), None),
            },
            WeightFormat::Hybrid => match q8(&w)? {
                Some(q) => (q, Some(QMatMul::Tensor(w))),
                None => (QMatMul::Tensor(w), None),
            },
        };
        Ok(Self { w, dense, b })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = match &self.dense {
            Some(d) if x.dims()[0] >= DENSE_MIN_ROWS => d,
            _ => &self.w,
        };
        let y = w.forward(x)?;
        Ok(match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// Weights of one transformer block.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    attn_norm: Tensor,
    /// q, k and v projections fused into one: output (T, (H_q + 2·H_kv)·d).
    wqkv: Linear,
    wo: Linear,
    ffn_norm: Tensor,
    /// gate and up projections fused into one: output (T, 2·ffn).
    w_gate_up: Linear,
    w_down: Linear,
}

/// Which logits [`Model::forward`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position's: (vocab).
    Last,
    /// Every position's: (T, vocab), for teacher-forced scoring.
    All,
}

/// An immutable llama-family decoder.
#[derive(Debug, Clone)]
pub struct Model {
    cfg: Config,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    rope: Rope,
    device: Device,
    weights: WeightFormat,
}

impl Model {
    /// The decoder's shapes and constants.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// How the projection weights are stored in memory.
    pub fn weight_format(&self) -> WeightFormat {
        self.weights
    }

    /// Runs `ids` (new tokens, after everything already in `cache`) through the decoder,
    /// writing their keys and values into `cache`, and returns logits as asked.
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache, which: Logits) -> Result<Tensor> {
        let t = ids.len();
        if t == 0 {
            return Err(Error::arg("forward", "no tokens to run"));
        }
        let step = cache.begin(t)?;
        let (cos, sin) = self.rope.tables(&step.rope_positions, &self.device)?;
        let (n_head, n_kv, d) = (self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim);

        let ids_t = Tensor::new(ids, &self.device)?;
        // (T) → (T, hidden)
        let mut x = self.embed.index_select(&ids_t, 0)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.cfg.rms_eps as f32)?;
            // (T, (H_q + 2·H_kv)·d) → q (T, H_q·d), k and v (T, H_kv·d)
            let qkv = layer.wqkv.forward(&h)?;
            let (nq, nk) = (n_head * d, n_kv * d);
            // (T, H·d) → (T, H, d) → (H, T, d)
            let q = qkv
                .narrow(1, 0, nq)?
                .reshape((t, n_head, d))?
                .transpose(0, 1)?;
            let k = qkv
                .narrow(1, nq, nk)?
                .reshape((t, n_kv, d))?
                .transpose(0, 1)?;
            let v = qkv
                .narrow(1, nq + nk, nk)?
                .reshape((t, n_kv, d))?
                .transpose(0, 1)?;
            let q = self.rope.apply(&q, &cos, &sin)?;
            // Re-based positions: keys are cached before RoPE and rotated at their rank.
            let k = if step.rotate_keys {
                k.contiguous()?
            } else {
                self.rope.apply(&k, &cos, &sin)?
            };
            // (H_kv, past + T, d) views of the used slots, the new tokens last.
            let (k_all, v_all) = cache.layer_mut(l).append(&k, &v.contiguous()?)?;
            let k_all = if step.rotate_keys {
                self.rope
                    .apply_at(&k_all, &cache.key_ranks(l, &self.device)?)?
            } else {
                k_all
            };
            // (H_q, T, d); each block's probabilities go to the cache.
            let out = attention(&q, &k_all, &v_all, |row, probs| {
                cache.observe(l, t, row, probs)
            })?;
            // (H_q, T, d) → (T, H_q, d) → (T, H_q·d)
            let out = out.transpose(0, 1)?.reshape((t, n_head * d))?;
            x = (layer.wo.forward(&out)? + x)?;

            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.cfg.rms_eps as f32)?;
            // (T, 2·ffn) → gate, up (T, ffn)
            let gate_up = layer.w_gate_up.forward(&h)?;
            let gate = candle_nn::ops::silu(&gate_up.narrow(1, 0, self.cfg.ffn)?)?;
            let up = gate_up.narrow(1, self.cfg.ffn, self.cfg.ffn)?;
            x = (layer.w_down.forward(&(gate * up)?)? + x)?;
        }
        cache.end()?;
        let x = match which {
            Logits::Last => x.narrow(0, t - 1, 1)?,
            Logits::All => x,
        };
        let x = candle_nn::ops::rms_norm(&x, &self.norm, self.cfg.rms_eps as f32)?;
        // (T', hidden) → (T', vocab)
        let logits = self.lm_head.forward(&x)?;
        Ok(match which {
            Logits::Last => logits.squeeze(0)?,
            Logits::All => logits,
        })
    }
}
