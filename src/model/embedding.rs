//! The token embedding: a dense matrix, or (on the CPU, for a type the kernels read) the
//! file's quantized rows, dequantized one token at a time and shared with a tied output
//! layer, so the largest matrix of a small model is held once and at its file size.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::linear::with_f32;
use crate::error::{Error, Result};
use crate::kernels::Packed;

/// The token embedding, (vocab, hidden).
#[derive(Debug, Clone)]
pub(crate) enum Embedding {
    /// f32 rows on the model's device.
    Dense(Tensor),
    /// Quantized rows in host memory.
    Packed(Arc<Packed>),
}

impl Embedding {
    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Self::Dense(t) => super::linear::tensor_bytes(t),
            Self::Packed(p) => p.bytes(),
        }
    }

    /// The quantized rows, if held so (to recognise a tied output layer sharing them).
    pub(crate) fn packed(&self) -> Option<&Arc<Packed>> {
        match self {
            Self::Packed(p) => Some(p),
            Self::Dense(_) => None,
        }
    }

    /// Rows in the table.
    fn vocab(&self) -> Result<usize> {
        Ok(match self {
            Self::Dense(t) => t.dim(0)?,
            Self::Packed(p) => p.rows(),
        })
    }

    fn check(&self, id: u32) -> Result<usize> {
        let vocab = self.vocab()?;
        if id as usize >= vocab {
            return Err(Error::arg(
                "forward",
                format!("token id {id} is outside the embedding's {vocab} rows"),
            ));
        }
        Ok(id as usize)
    }

    /// Token `id`'s row into `out`, (hidden).
    pub(crate) fn row_into(&self, id: u32, out: &mut [f32]) -> Result<()> {
        let id = self.check(id)?;
        match self {
            Self::Dense(t) => {
                let h = out.len();
                with_f32(t, |e| out.copy_from_slice(&e[id * h..(id + 1) * h]))?;
            }
            Self::Packed(p) => p.dequantize_row(id, out),
        }
        Ok(())
    }

    /// The rows of `ids`: (T) → (T, hidden), on `device`.
    pub(crate) fn rows(&self, ids: &[u32], hidden: usize, device: &Device) -> Result<Tensor> {
        match self {
            Self::Dense(t) => {
                for &id in ids {
                    self.check(id)?;
                }
                Ok(t.index_select(&Tensor::new(ids, device)?, 0)?)
            }
            Self::Packed(_) => {
                let mut x = vec![0f32; ids.len() * hidden];
                for (&id, row) in ids.iter().zip(x.chunks_exact_mut(hidden)) {
                    self.row_into(id, row)?;
                }
                Ok(Tensor::from_vec(x, (ids.len(), hidden), device)?)
            }
        }
    }
}
