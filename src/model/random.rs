//! Random-weight decoders: tiny ones for tests, and real shapes for speed measurements, where
//! the values do not matter.

use candle_core::quantized::QMatMul;
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Config, Embedding, Layer, Linear, Model, Rope, WeightFormat};
use crate::error::Result;

impl Model {
    /// A decoder with `cfg`'s shapes and seeded random weights (dense f32), with biases on
    /// q/k/v when the architecture has them. Values are drawn on the host, so one seed gives
    /// the same weights on every device.
    pub fn random(cfg: Config, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        Self::random_with(cfg, device, |rows, cols, scale| {
            let data: Vec<f32> = (0..rows * cols)
                .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
                .collect();
            Ok(Tensor::from_vec(data, (rows, cols), device)?)
        })
    }

    /// The same with values drawn on `device` itself, unseeded: fast for billion-parameter
    /// shapes, for speed measurements where values do not matter.
    pub fn random_fast(cfg: Config, device: &Device) -> Result<Self> {
        Self::random_with(cfg, device, |rows, cols, scale| {
            Ok(Tensor::rand(-scale, scale, (rows, cols), device)?)
        })
    }

    fn random_with(
        cfg: Config,
        device: &Device,
        mut mat: impl FnMut(usize, usize, f32) -> Result<Tensor>,
    ) -> Result<Self> {
        let has_bias = cfg.arch == super::Arch::Qwen2;
        let (h, d, nq, nkv, f) = (cfg.hidden, cfg.head_dim, cfg.n_head, cfg.n_kv_head, cfg.ffn);
        let mut lin = |out: usize, inp: usize, bias: bool| -> Result<Linear> {
            let scale = 1.0 / (inp as f32).sqrt();
            let b = if bias {
                Some(mat(1, out, 0.1)?.squeeze(0)?)
            } else {
                None
            };
            Linear::new(QMatMul::Tensor(mat(out, inp, scale)?), None, b)
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for _ in 0..cfg.n_layer {
            layers.push(Layer {
                attn_norm: Tensor::ones(h, candle_core::DType::F32, device)?,
                wqkv: lin((nq + 2 * nkv) * d, h, has_bias)?,
                wo: lin(h, nq * d, false)?,
                ffn_norm: Tensor::ones(h, candle_core::DType::F32, device)?,
                w_gate_up: lin(2 * f, h, false)?,
                w_down: lin(h, f, false)?,
            });
        }
        let lm_head = lin(cfg.vocab, h, false)?;
        let embed = Embedding::Dense(mat(cfg.vocab, h, 1.0)?);
        Ok(Self {
            rope: Rope::new(&cfg, device)?,
            norm: Tensor::ones(h, candle_core::DType::F32, device)?,
            embed,
            layers,
            lm_head,
            device: device.clone(),
            source: "(random weights)".into(),
            weights: WeightFormat::F32,
            cfg,
        })
    }
}

impl Config {
    /// A tiny llama-shaped config for tests: 2 layers, 4 query / 2 KV heads of 16 dims.
    pub fn tiny() -> Self {
        Self {
            arch: super::Arch::Llama,
            n_layer: 2,
            n_head: 4,
            n_kv_head: 2,
            head_dim: 16,
            hidden: 64,
            ffn: 128,
            vocab: 97,
            context_len: 512,
            rope_base: 10_000.0,
            rope_style: super::RopeStyle::Interleaved,
            rope_factors: None,
            rms_eps: 1e-5,
        }
    }
}
