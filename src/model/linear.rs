//! A projection `y = x·Wᵀ (+ b)` in the forms the decoder needs. On the CPU, a weight whose
//! type [`crate::kernels`] reads (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K) is held once, repacked from the file's blocks, and runs both
//! single rows (`matvec`) and prompts (`matmat`, 8-bit activations against the blocks, as
//! llama.cpp does); other types, and every weight on a GPU, stay in candle's form.
//! `--weights hybrid` adds a dense f32 copy for prompts, trading memory for prompt speed,
//! where it buys speed: not for the types whose prompts this CPU keeps in integers
//! ([`kernels::prompts_in_integers`]: the K-quants, and the others on AVX-512 VNNI).
//!
//! A projection can be several weights stacked along the output (q, k and v of a Q4_K_M
//! file, whose v is Q6_K where q and k are Q4_K): each part keeps its own type and kernel.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Storage, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

use super::WeightFormat;
use crate::error::{Error, Result};
use crate::kernels::{self, Packed, QActs, QKind};

/// Rows from which a part holding a dense copy uses it: a batched f32 GEMM beats the
/// quantized kernels on a long prompt, the quantized kernels win on a few rows.
const DENSE_MIN_ROWS: usize = 16;

/// Rows from which a packed part without a dense copy runs a prompt through
/// [`dequantized_gemm`] rather than [`kernels::matmat`]: never where the integer kernels win
/// at every length ([`kernels::prompts_in_integers`]: the K-quants, and every kind on a CPU
/// with AVX-512 VNNI); else (Q4_0, Q4_1 and Q8_0 in AVX2) from [`DENSE_MIN_ROWS`], where
/// the four-token kernel loses to the GEMM (SmolLM2 prompt 176-190 against 234-304 tok/s
/// on Zen 3).
fn gemm_min_rows(kind: QKind) -> usize {
    if kernels::prompts_in_integers(kind) {
        usize::MAX
    } else {
        DENSE_MIN_ROWS
    }
}

/// A projection `y = x·Wᵀ (+ b)`: one weight, or several stacked along the output.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    /// Never empty; outputs in this order.
    parts: Vec<Part>,
}

/// One weight of a [`Linear`], in one or two of its forms.
#[derive(Debug, Clone)]
struct Part {
    /// The weight repacked for [`kernels::matvec`] and [`kernels::matmat`] (CPU, a type they
    /// read): then the only copy unless `dense` is set.
    packed: Option<Arc<Packed>>,
    /// candle's form, where there is no packed one (other types, a GPU, f32 weights).
    w: Option<QMatMul>,
    /// A dense f32 copy for inputs of at least [`DENSE_MIN_ROWS`] rows (`--weights hybrid`).
    dense: Option<QMatMul>,
    /// The bias, (out).
    b: Option<Tensor>,
    /// Output features.
    out: usize,
}

/// The kernels' name for a GGML type they read.
pub(super) fn kind_of(dtype: GgmlDType) -> Option<QKind> {
    match dtype {
        GgmlDType::Q4_0 => Some(QKind::Q4_0),
        GgmlDType::Q4_1 => Some(QKind::Q4_1),
        GgmlDType::Q8_0 => Some(QKind::Q8_0),
        GgmlDType::Q4K => Some(QKind::Q4K),
        GgmlDType::Q5K => Some(QKind::Q5K),
        GgmlDType::Q6K => Some(QKind::Q6K),
        _ => None,
    }
}

/// `q` repacked for the kernels, if they read its type and it lives on the CPU.
pub(super) fn pack(q: &QTensor) -> Result<Option<Arc<Packed>>> {
    let Some(kind) = kind_of(q.dtype()) else {
        return Ok(None);
    };
    if !q.device().is_cpu() {
        return Ok(None);
    }
    let (rows, cols) = q.shape().dims2()?;
    Ok(Packed::from_ggml(kind, rows, cols, &q.data()?).map(Arc::new))
}

impl Part {
    /// The output width of candle's form `w`.
    fn width(w: &QMatMul) -> Result<usize> {
        Ok(match w {
            QMatMul::QTensor(q) => q.shape().dims2()?.0,
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.dim(0)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.dims()[0];
        let y = match (&self.dense, &self.packed, &self.w) {
            (Some(d), _, _) if rows >= DENSE_MIN_ROWS => d.forward(x)?,
            (_, Some(p), _) if x.device().is_cpu() && rows >= gemm_min_rows(p.kind()) => {
                dequantized_gemm(p, &x.to_dtype(DType::F32)?.contiguous()?)?
            }
            (_, Some(p), _) if x.device().is_cpu() => {
                let x = x.to_dtype(DType::F32)?.contiguous()?;
                let cols = p.cols();
                let acts = with_f32(&x, |x| {
                    x.par_chunks(cols)
                        .map(|row| {
                            let mut a = QActs::default();
                            a.quantize_for(p.kind(), row);
                            a
                        })
                        .collect::<Vec<_>>()
                })?;
                let mut y = vec![0f32; rows * p.rows()];
                kernels::matmat(p, &acts, &mut y);
                Tensor::from_vec(y, (rows, p.rows()), &Device::Cpu)?
            }
            (_, _, Some(w)) => w.forward(x)?,
            _ => return Err(Error::arg("forward", "a projection holds no weight")),
        };
        Ok(match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// `out = W·x (+ b)` for one row on the CPU. `held`: the form `acts` already holds `x`
    /// in (`Some(true)` the K-quants'), if a part before this one quantized it.
    fn forward_one(
        &self,
        x: &[f32],
        acts: &mut QActs,
        held: &mut Option<bool>,
        out: &mut [f32],
    ) -> Result<()> {
        match (&self.packed, &self.w) {
            (Some(p), _) => {
                let k = p.kind().is_k();
                if *held != Some(k) {
                    acts.quantize_for(p.kind(), x);
                    *held = Some(k);
                }
                kernels::matvec(p, acts, out);
            }
            (None, Some(QMatMul::Tensor(w))) if w.device().is_cpu() && w.dtype() == DType::F32 => {
                with_f32(w, |w| kernels::matvec_f32(w, x, out))?;
            }
            (None, Some(other)) => {
                let xt = Tensor::from_slice(x, (1, x.len()), &Device::Cpu)?;
                let y = other.forward(&xt)?.flatten_all()?.to_vec1::<f32>()?;
                if y.len() != out.len() {
                    return Err(Error::arg(
                        "forward",
                        "a projection's output has the wrong width",
                    ));
                }
                out.copy_from_slice(&y);
            }
            (None, None) => return Err(Error::arg("forward", "a projection holds no weight")),
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

impl Linear {
    fn one(part: Part) -> Self {
        Self { parts: vec![part] }
    }

    /// A projection from candle's form `w` (with an optional dense copy for prompts). A
    /// quantized `w` of a type the kernels read is repacked for them and not kept.
    pub(crate) fn new(w: QMatMul, dense: Option<QMatMul>, b: Option<Tensor>) -> Result<Self> {
        let out = Part::width(&w)?;
        let packed = match &w {
            QMatMul::QTensor(q) => pack(q)?,
            _ => None,
        };
        let w = if packed.is_some() { None } else { Some(w) };
        Ok(Self::one(Part {
            packed,
            w,
            dense,
            b,
            out,
        }))
    }

    /// A projection from an already repacked weight (shared, as a tied embedding is with the
    /// output layer).
    pub(crate) fn from_packed(p: Arc<Packed>, b: Option<Tensor>) -> Self {
        Self::one(Part {
            out: p.rows(),
            packed: Some(p),
            w: None,
            dense: None,
            b,
        })
    }

    /// Single rows and short prompts from the repacked `q`, long prompts from the dense
    /// `dense`: `q` itself is not kept.
    pub(crate) fn packed_and_dense(q: &QTensor, dense: Tensor, b: Option<Tensor>) -> Result<Self> {
        let out = dense.dim(0)?;
        let packed = pack(q)?;
        let (w, dense) = match packed {
            Some(_) => (None, Some(QMatMul::Tensor(dense))),
            None => (Some(QMatMul::Tensor(dense)), None),
        };
        Ok(Self::one(Part {
            packed,
            w,
            dense,
            b,
            out,
        }))
    }

    /// Projections stacked along their output: one [`Linear`] whose parts keep their forms.
    pub(crate) fn stacked(parts: Vec<Linear>) -> Result<Self> {
        let parts: Vec<Part> = parts.into_iter().flat_map(|l| l.parts).collect();
        if parts.is_empty() {
            return Err(Error::arg("forward", "a stacked projection needs a part"));
        }
        Ok(Self { parts })
    }

    /// Sets the bias, (out), split across the parts.
    pub(super) fn set_bias(&mut self, b: Tensor) -> Result<()> {
        let mut at = 0;
        for p in &mut self.parts {
            p.b = Some(b.narrow(0, at, p.out)?);
            at += p.out;
        }
        Ok(())
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
                // No f32 copy where the integer prompt kernels beat it.
                Some(q) if w.device().is_cpu() && kernels::prompts_in_integers(QKind::Q8_0) => {
                    Self::new(QMatMul::QTensor(Arc::new(q)), None, b)
                }
                Some(q) => Self::packed_and_dense(&q, w, b),
                None => Self::new(QMatMul::Tensor(w), None, b),
            },
        }
    }

    /// Bytes of weights held (every form of every part, biases included), counting a
    /// repacked weight shared with `shared` (a tied embedding) as nothing.
    pub(super) fn bytes(&self, shared: Option<&Arc<Packed>>) -> usize {
        let form = |w: &Option<QMatMul>| match w {
            Some(QMatMul::QTensor(q)) => q.storage_size_in_bytes(),
            Some(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => tensor_bytes(t),
            None => 0,
        };
        self.parts
            .iter()
            .map(|p| {
                let packed = match (&p.packed, shared) {
                    (Some(a), Some(b)) if Arc::ptr_eq(a, b) => 0,
                    (Some(a), _) => a.bytes(),
                    (None, _) => 0,
                };
                packed + form(&p.w) + form(&p.dense) + p.b.as_ref().map_or(0, tensor_bytes)
            })
            .sum()
    }

    /// Bytes one decoded token reads: each part in the form a single row runs through (the
    /// repacked blocks where there are some, else candle's form; never the dense copy).
    pub(super) fn token_bytes(&self) -> usize {
        self.parts
            .iter()
            .map(|p| {
                let w = match (&p.packed, &p.w) {
                    (Some(packed), _) => packed.bytes(),
                    (None, Some(QMatMul::QTensor(q))) => q.storage_size_in_bytes(),
                    (None, Some(QMatMul::Tensor(t) | QMatMul::TensorF16(t))) => tensor_bytes(t),
                    (None, None) => 0,
                };
                w + p.b.as_ref().map_or(0, tensor_bytes)
            })
            .sum()
    }

    /// Output features (every part's together).
    fn out(&self) -> usize {
        self.parts.iter().map(|p| p.out).sum()
    }

    /// `y = x·Wᵀ (+ b)` for `x` (rows, in) → (rows, out): one CPU f32 row through
    /// [`Linear::forward_one`], a prompt through the kernels' GEMM or a dense copy.
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.dims()[0];
        if rows == 1 && x.device().is_cpu() && x.dtype() == DType::F32 {
            let x = x.flatten_all()?.to_vec1::<f32>()?;
            let mut y = Vec::new();
            self.forward_one(&x, &mut QActs::default(), &mut y)?;
            let n = y.len();
            return Ok(Tensor::from_vec(y, (1, n), &Device::Cpu)?);
        }
        if let [p] = self.parts.as_slice() {
            return p.forward(x);
        }
        let ys = self
            .parts
            .iter()
            .map(|p| p.forward(x))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&ys, 1)?)
    }

    /// `out = W·x (+ b)` for one row on the CPU, through [`kernels`] (`acts` is scratch for
    /// the quantized input) where it can, else through candle.
    pub(super) fn forward_one(
        &self,
        x: &[f32],
        acts: &mut QActs,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        out.resize(self.out(), 0.0);
        let (mut at, mut held) = (0, None);
        for p in &self.parts {
            p.forward_one(x, acts, &mut held, &mut out[at..at + p.out])?;
            at += p.out;
        }
        Ok(())
    }
}

/// Weight rows dequantized at a time by [`dequantized_gemm`]: a tile of a few MB, reused by
/// every row of the prompt.
const TILE_ROWS: usize = 256;

/// `x·Wᵀ` for a prompt `x` (T, cols) on the CPU: `W` dequantized a tile of [`TILE_ROWS`]
/// rows at a time into f32, each tile a dense GEMM. The prompt's speed of a dense copy
/// without holding one: dequantizing costs one pass over the weights, the GEMM T.
fn dequantized_gemm(p: &Packed, x: &Tensor) -> Result<Tensor> {
    let cols = p.cols();
    let mut tiles = Vec::with_capacity(p.rows().div_ceil(TILE_ROWS));
    let mut start = 0;
    while start < p.rows() {
        let n = TILE_ROWS.min(p.rows() - start);
        let mut w = vec![0f32; n * cols];
        w.par_chunks_mut(cols)
            .enumerate()
            .for_each(|(i, row)| p.dequantize_row(start + i, row));
        // (T, cols) × (cols, n) → (T, n)
        let w = Tensor::from_vec(w, (n, cols), &Device::Cpu)?;
        tiles.push(x.matmul(&w.t()?)?);
        start += n;
    }
    Ok(Tensor::cat(&tiles, 1)?)
}

/// Bytes of a tensor's values.
pub(super) fn tensor_bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// `hybrid` keeps an f32 copy for prompts only where it is faster than the integer
    /// kernels: with them (Q8_0 prompts on AVX-512 VNNI) it holds what `q8_0` holds, without
    /// them the copy besides; either way it computes what `q8_0` does, within rounding.
    #[test]
    fn hybrid_keeps_an_f32_copy_only_where_it_is_faster() {
        let w = Tensor::rand(-1f32, 1f32, (64, 256), &Device::Cpu).unwrap();
        let x = Tensor::rand(-1f32, 1f32, (DENSE_MIN_ROWS + 3, 256), &Device::Cpu).unwrap();
        let hybrid = Linear::from_dense(w.clone(), None, WeightFormat::Hybrid).unwrap();
        let q8 = Linear::from_dense(w.clone(), None, WeightFormat::Q8_0).unwrap();
        let dense = 64 * 256 * 4;
        if kernels::prompts_in_integers(QKind::Q8_0) {
            assert_eq!(hybrid.bytes(None), q8.bytes(None));
        } else {
            assert_eq!(hybrid.bytes(None), q8.bytes(None) + dense);
        }
        let (a, b) = (hybrid.forward(&x).unwrap(), q8.forward(&x).unwrap());
        let diff: f32 = (a - &b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        let top: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert!(diff <= 0.02 * top, "{diff} against {top}");
    }
}
