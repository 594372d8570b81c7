//! Rotary position embeddings, computed for the exact positions of each forward pass.
//!
//! The cos/sin tables are built on the host per call (T × d/2 values, shared by all layers), so
//! any position works: consecutive ones during plain decoding, or re-based ones when the cache
//! re-assigns positions. The frequencies are computed in f32 the same way candle-transformers
//! does, so results match its reference decoder bit for bit.

use candle_core::{Device, Tensor};

use super::config::{Config, RopeStyle};
use crate::error::Result;

/// Inverse frequencies of one head, the pairing convention, and cos/sin tables for positions
/// `0..table_len` (used to rotate cached keys at per-slot positions).
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    style: RopeStyle,
    /// (table_len, d/2) each.
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// RoPE for `cfg`'s heads, base, pairing and frequency scaling, with tables up to its
    /// trained context.
    pub fn new(cfg: &Config, device: &Device) -> Result<Self> {
        let d = cfg.head_dim;
        let inv_freq: Vec<f32> = (0..d)
            .step_by(2)
            .enumerate()
            .map(|(j, i)| {
                let f = 1f32 / cfg.rope_base.powf(i as f32 / d as f32);
                match &cfg.rope_factors {
                    Some(div) => f / div.get(j).copied().unwrap_or(1.0),
                    None => f,
                }
            })
            .collect();
        // The table covers the trained context up to 64 MiB (Llama 3.1's 128K positions at
        // head dim 128); positions past it are computed when needed.
        const MAX_TABLE_BYTES: usize = 64 << 20;
        let per_position = (inv_freq.len() * 2 * std::mem::size_of::<f32>()).max(1);
        let table_len = cfg.context_len.min(MAX_TABLE_BYTES / per_position);
        let style = cfg.rope_style;
        let mut rope = Self {
            inv_freq,
            style,
            cos: Tensor::zeros(1, candle_core::DType::F32, device)?,
            sin: Tensor::zeros(1, candle_core::DType::F32, device)?,
        };
        let all: Vec<u32> = (0..table_len as u32).collect();
        (rope.cos, rope.sin) = rope.tables(&all, device)?;
        Ok(rope)
    }

    /// Rotates `x`: (H, n, d), each row at its own position `pos`: (H, n) u32.
    pub fn apply_at(&self, x: &Tensor, pos: &Tensor) -> Result<Tensor> {
        let (h, n, d) = x.dims3()?;
        let flat = pos.flatten_all()?;
        let max = flat.max(0)?.to_scalar::<u32>()? as usize;
        let (cos, sin) = if max < self.cos.dims()[0] {
            // (H·n) → (H·n, d/2) → (H, n, d/2)
            (
                self.cos.index_select(&flat, 0)?.reshape((h, n, d / 2))?,
                self.sin.index_select(&flat, 0)?.reshape((h, n, d / 2))?,
            )
        } else {
            let (c, s) = self.tables(&flat.to_vec1::<u32>()?, x.device())?;
            (c.reshape((h, n, d / 2))?, s.reshape((h, n, d / 2))?)
        };
        // candle's kernels take (B, H, T, d) with per-batch tables (B, T, d/2): B = heads.
        let x4 = x.contiguous()?.unsqueeze(1)?;
        let y = match self.style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x4, &cos, &sin)?,
            RopeStyle::HalfSplit => candle_nn::rotary_emb::rope(&x4, &cos, &sin)?,
        };
        Ok(y.squeeze(1)?)
    }

    /// cos and sin tables, each (T, d/2), for the given token positions.
    pub fn tables(&self, positions: &[u32], device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let shape = (positions.len(), half);
        Ok((
            Tensor::from_vec(cos, shape, device)?,
            Tensor::from_vec(sin, shape, device)?,
        ))
    }

    /// cos and sin of each frequency at position `pos`, (d/2) each: one row of
    /// [`Rope::tables`], for [`Rope::rotate_host`].
    pub fn angles(&self, pos: u32) -> (Vec<f32>, Vec<f32>) {
        self.inv_freq
            .iter()
            .map(|&f| {
                let angle = pos as f32 * f;
                (angle.cos(), angle.sin())
            })
            .unzip()
    }

    /// Rotates `x`: (H, d) host values of one token, in place, with one row of tables from
    /// [`Rope::angles`]; the same arithmetic as candle's kernels.
    pub fn rotate_host(&self, x: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = cos.len();
        for head in x.chunks_exact_mut(2 * half) {
            for i in 0..half {
                let (a, b) = match self.style {
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    RopeStyle::HalfSplit => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos[i] - x1 * sin[i];
                head[b] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }

    /// Rotates `x`: (H, T, d) → (H, T, d), with tables from [`Rope::tables`].
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        // candle's kernels take (B, H, T, d) and need a contiguous input.
        let x4 = x.contiguous()?.unsqueeze(0)?;
        let y = match self.style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x4, cos, sin)?,
            RopeStyle::HalfSplit => candle_nn::rotary_emb::rope(&x4, cos, sin)?,
        };
        Ok(y.squeeze(0)?)
    }
}
