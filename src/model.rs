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
//!
//! This file holds the weights ([`Model`], `Layer`) and [`Model::forward`], which picks a
//! backend per step. The layer itself is in `model/forward.rs`, its tensor backend (any `T`,
//! any device) and its host backend (one token on the CPU, through [`crate::kernels`]) side by
//! side; the projections are `model/linear.rs`'s `Linear`; attention is [`attention`].

pub mod attention;
mod checkpoint;
pub mod config;
mod embedding;
mod forward;
pub mod gguf;
mod linear;
mod random;
pub mod rope;
pub mod safetensors;

use candle_core::{Device, Tensor};

pub use checkpoint::{load, Checkpoint};
pub use config::{Arch, Config, RopeStyle};
pub use gguf::{open_gguf, WeightFormat};

use crate::cache::KvCache;
use crate::error::{Error, Result};
use embedding::Embedding;
use linear::Linear;
use rope::Rope;

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
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    rope: Rope,
    device: Device,
    weights: WeightFormat,
    /// The file or folder the weights came from (named in errors about them).
    source: std::path::PathBuf,
}

impl Model {
    /// The file or folder the weights came from.
    pub fn source(&self) -> &std::path::Path {
        &self.source
    }

    /// Non-finite logits, or logits that are all equal, come from damaged weights (a NaN
    /// scale, zeroed blocks): an error instead of a silent end of sequence.
    fn check_logits(&self, logits: &[f32]) -> Result<()> {
        let (mut lo, mut hi, mut finite) = (f32::INFINITY, f32::NEG_INFINITY, true);
        for &x in logits {
            finite &= x.is_finite();
            lo = lo.min(x);
            hi = hi.max(x);
        }
        let what = if !finite {
            "not a number (NaN or infinite)"
        } else if lo == hi {
            "the same for every token"
        } else {
            return Ok(());
        };
        Err(Error::CorruptOutput {
            path: self.source.clone(),
            what,
        })
    }

    /// The decoder's shapes and constants.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes of weights held in memory: every form of every projection, the embedding
    /// (once, if the output layer shares it), norms and RoPE factors.
    pub fn weight_bytes(&self) -> usize {
        let shared = self.embed.packed();
        self.layer_bytes(|p| p.bytes(None))
            + self.embed.bytes()
            + self.lm_head.bytes(shared)
            + linear::tensor_bytes(&self.norm)
    }

    /// Bytes of weights one decoded token reads: every projection once in the form single
    /// tokens use, the output layer whole (tied to the embedding or not), one row of the
    /// embedding, the norms. Decoding is bound by this over the memory's read rate.
    pub fn token_bytes(&self) -> usize {
        let embed_row = self.embed.bytes() / self.cfg.vocab.max(1);
        self.layer_bytes(Linear::token_bytes)
            + self.lm_head.token_bytes()
            + embed_row
            + linear::tensor_bytes(&self.norm)
    }

    /// The layers' bytes: each projection's as `projection` counts them, and the norms.
    fn layer_bytes(&self, projection: impl Fn(&Linear) -> usize) -> usize {
        let t = linear::tensor_bytes;
        self.layers
            .iter()
            .map(|l| {
                [&l.wqkv, &l.wo, &l.w_gate_up, &l.w_down]
                    .into_iter()
                    .map(&projection)
                    .sum::<usize>()
                    + t(&l.attn_norm)
                    + t(&l.ffn_norm)
            })
            .sum()
    }

    /// How the projection weights are stored in memory.
    pub fn weight_format(&self) -> WeightFormat {
        self.weights
    }

    /// Runs `ids` (new tokens, after everything already in `cache`) through the decoder,
    /// writing their keys and values into `cache`, and returns logits as asked.
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache, which: Logits) -> Result<Tensor> {
        // On a thread of the rayon pool, the kernels' parallel loops run here and on one more
        // thread, instead of waking every pool thread while this one sleeps.
        if rayon::current_thread_index().is_none() {
            return rayon::scope(|_| self.forward_pooled(ids, cache, which));
        }
        self.forward_pooled(ids, cache, which)
    }

    /// [`Model::forward`] on the current thread: opens the step, runs it on the host backend
    /// where it fits (one token on the CPU), else on the tensor backend.
    fn forward_pooled(&self, ids: &[u32], cache: &mut KvCache, which: Logits) -> Result<Tensor> {
        let t = ids.len();
        if t == 0 {
            return Err(Error::arg("forward", "no tokens to run"));
        }
        let step = cache.begin(t)?;
        if self.host_step_fits(t, &step, cache) {
            let logits = self.forward_host(ids[0], &step, cache)?;
            cache.end()?;
            self.check_logits(&logits)?;
            let vocab = logits.len();
            let logits = Tensor::from_vec(logits, vocab, &self.device)?;
            return Ok(match which {
                Logits::Last => logits,
                Logits::All => logits.unsqueeze(0)?,
            });
        }
        self.forward_tensor(ids, &step, cache, which)
    }
}
