//! A projection `y = x·Wᵀ (+ b)` in the forms the decoder needs: candle's (quantized, dense,
//! or both) for several rows, and the weight repacked for [`crate::kernels`] for one row.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Storage, Tensor};
use std::sync::Arc;

use super::WeightFormat;
use crate::error::{Error, Result};
use crate::kernels::{self, Packed, QActs, QKind};

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
    /// The bias, (out); the GGUF loader sets it on fused projections.
    pub(super) b: Option<Tensor>,
}

/// `q` repacked for the single-row kernels, if they have its type and it lives on the CPU.
fn pack(q: &QTensor) -> Result<Option<Arc<Packed>>> {
    let kind = match q.dtype() {
        GgmlDType::Q4_0 => QKind::Q4_0,
        GgmlDType::Q4_1 => QKind::Q4_1,
        GgmlDType::Q8_0 => QKind::Q8_0,
        GgmlDType::Q4K => QKind::Q4K,
        GgmlDType::Q5K => QKind::Q5K,
        GgmlDType::Q6K => QKind::Q6K,
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

    /// `y = x·Wᵀ (+ b)` for `x` (rows, in) → (rows, out): one CPU f32 row through
    /// [`Linear::forward_one`], a prompt through the dense copy where there is one.
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
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
    pub(super) fn forward_one(
        &self,
        x: &[f32],
        acts: &mut QActs,
        out: &mut Vec<f32>,
    ) -> Result<()> {
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
