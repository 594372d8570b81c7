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
mod step;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Storage, Tensor};
use std::sync::Arc;

pub use checkpoint::{load, Checkpoint};
pub use config::{Arch, Config, RopeStyle};
pub use gguf::{open_gguf, WeightFormat};

use crate::cache::KvCache;
use crate::error::{Error, Result};
use crate::kernels::{self, Packed, QActs, QKind};
use attention::attention;
use rope::Rope;

/// Rows from which a [`Linear`] holding both forms uses the dense one: a batched GEMM beats the
/// quantized kernels on a prompt, the quantized kernels win on a single row (less memory read).
const DENSE_MIN_ROWS: usize = 16;

/// A projection `y = x·Wᵀ (+ b)`: candle's form for inputs of several rows (quantized, dense,
/// or both, the dense one for prompts) and a repacked form for the single-row kernels.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    w: QMatMul,
    /// A dense f32 copy used for inputs of at least [`DENSE_MIN_ROWS`] rows.
    dense: Option<QMatMul>,
    /// The weight repacked for [`kernels::matvec`] (CPU, Q4_0/Q4_1/Q8_0), used for one row.
    packed: Option<Arc<Packed>>,
    b: Option<Tensor>,
}

/// `q` repacked for the single-row kernels, if they have its type and it lives on the CPU.
fn pack(q: &QTensor) -> Result<Option<Arc<Packed>>> {
    let kind = match q.dtype() {
        GgmlDType::Q4_0 => QKind::Q4_0,
        GgmlDType::Q4_1 => QKind::Q4_1,
        GgmlDType::Q8_0 => QKind::Q8_0,
        _ => return Ok(None),
    };
    if !q.device().is_cpu() {
        return Ok(None);
    }
    let (rows, cols) = q.shape().dims2()?;
    Ok(Packed::from_ggml(kind, rows, cols, &q.data()?).map(Arc::new))
}

impl Linear {
    /// A projection kept in candle's form `w` (with an optional dense copy for prompts) plus,
    /// where the kernels read `w`'s type, a repacked copy for single rows.
    pub(crate) fn new(w: QMatMul, dense: Option<QMatMul>, b: Option<Tensor>) -> Result<Self> {
        let packed = match &w {
            QMatMul::QTensor(q) => pack(q)?,
            _ => None,
        };
        Ok(Self {
            w,
            dense,
            b,
            packed,
        })
    }

    /// Single rows from the repacked `q`, several rows from the dense `dense`: `q` itself is
    /// not kept.
    pub(crate) fn packed_and_dense(q: &QTensor, dense: Tensor, b: Option<Tensor>) -> Result<Self> {
        Ok(Self {
            w: QMatMul::Tensor(dense),
            dense: None,
            packed: pack(q)?,
            b,
        })
    }

    /// A projection from a dense (out, in) f32 weight, kept as `format` says: Q8_0 for
    /// decoding (where the input width allows Q8_0's 32-value blocks), a dense copy for
    /// prompts (`Hybrid`), or dense only (`F32`, `Native`). `Auto` must be resolved first.
    pub(crate) fn from_dense(w: Tensor, b: Option<Tensor>, format: WeightFormat) -> Result<Self> {
        let q8 = |w: &Tensor| -> Result<Option<QTensor>> {
            if w.dim(1)? % 32 != 0 {
                return Ok(None);
            }
            Ok(Some(QTensor::quantize(w, GgmlDType::Q8_0)?))
        };
        match format {
            WeightFormat::F32 | WeightFormat::Native => Self::new(QMatMul::Tensor(w), None, b),
            WeightFormat::Q8_0 | WeightFormat::Auto => match q8(&w)? {
                Some(q) => Self::new(QMatMul::QTensor(Arc::new(q)), None, b),
                None => Self::new(QMatMul::Tensor(w), None, b),
            },
            WeightFormat::Hybrid => match q8(&w)? {
                Some(q) => Self::packed_and_dense(&q, w, b),
                None => Self::new(QMatMul::Tensor(w), None, b),
            },
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.dims()[0];
        if rows == 1 && x.device().is_cpu() && x.dtype() == DType::F32 {
            let x = x.flatten_all()?.to_vec1::<f32>()?;
            let mut y = Vec::new();
            self.forward_one(&x, &mut QActs::default(), &mut y)?;
            let n = y.len();
            return Ok(Tensor::from_vec(y, (1, n), &Device::Cpu)?);
        }
        let w = match &self.dense {
            Some(d) if rows >= DENSE_MIN_ROWS => d,
            _ => &self.w,
        };
        let y = w.forward(x)?;
        Ok(match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// `out = W·x (+ b)` for one row on the CPU, through [`kernels`] (`acts` is scratch for
    /// the quantized input) where it can, else through candle.
    fn forward_one(&self, x: &[f32], acts: &mut QActs, out: &mut Vec<f32>) -> Result<()> {
        match (&self.packed, &self.w) {
            (Some(p), _) => {
                acts.quantize(x);
                out.resize(p.rows(), 0.0);
                kernels::matvec(p, acts, out);
            }
            (None, QMatMul::Tensor(w)) if w.device().is_cpu() && w.dtype() == DType::F32 => {
                out.resize(w.dim(0)?, 0.0);
                with_f32(w, |w| kernels::matvec_f32(w, x, out))?;
            }
            (None, other) => {
                let xt = Tensor::from_slice(x, (1, x.len()), &Device::Cpu)?;
                *out = other.forward(&xt)?.flatten_all()?.to_vec1::<f32>()?;
            }
        }
        if let Some(b) = &self.b {
            with_f32(b, |b| {
                for (y, b) in out.iter_mut().zip(b) {
                    *y += b;
                }
            })?;
        }
        Ok(())
    }
}

/// Runs `f` on the values of a contiguous f32 tensor in host memory.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(Error::arg("forward", "the tensor is not in host memory"));
    };
    let all = cpu.as_slice::<f32>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| Error::arg("forward", "the tensor is not contiguous"))?;
    Ok(f(&all[start..end]))
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
        let logits = match which {
            Logits::Last => logits.squeeze(0)?,
            Logits::All => logits,
        };
        if which == Logits::Last && logits.device().is_cpu() {
            with_f32(&logits.contiguous()?, |v| self.check_logits(v))??;
        } else if !logits.sum_all()?.to_scalar::<f32>()?.is_finite() {
            self.check_logits(&[f32::NAN])?;
        }
        Ok(logits)
    }
}
