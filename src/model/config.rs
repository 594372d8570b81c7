//! Decoder hyper-parameters, read from GGUF metadata or a Hugging Face `config.json`.

use std::path::Path;

use candle_core::quantized::gguf_file;

use crate::error::{Error, Result};

/// Model families the decoder implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, SmolLM, Mistral-style dense decoders.
    Llama,
    /// Qwen2 / Qwen2.5: llama with biases on the q/k/v projections and half-split RoPE.
    Qwen2,
}

impl Arch {
    /// Architecture names accepted in `general.architecture`.
    pub const SUPPORTED: &'static str = "llama, qwen2";
    /// Parses an architecture name (`general.architecture`, a preset's `arch`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }

    /// The GGUF metadata key prefix for this architecture.
    pub fn key(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
        }
    }
}

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (0,1), (2,3), …: GGUF llama weights (their q/k rows are permuted at conversion).
    Interleaved,
    /// Pairs (i, i + d/2): GPT-NeoX style, safetensors llama weights and GGUF qwen2.
    HalfSplit,
}

/// Shapes and constants of one decoder.
#[derive(Debug, Clone)]
pub struct Config {
    pub arch: Arch,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub vocab: usize,
    /// Trained context length (tokens).
    pub context_len: usize,
    pub rope_base: f32,
    pub rope_style: RopeStyle,
    /// Per-frequency divisors of the RoPE frequencies (d/2 values): Llama 3's long-context
    /// scaling (GGUF `rope_freqs.weight`, or `rope_scaling` in `config.json`). None = plain RoPE.
    pub rope_factors: Option<Vec<f32>>,
    pub rms_eps: f64,
}

/// Largest sizes a config may declare: well past any published llama-family model, and small
/// enough that a crafted file cannot ask for an allocation the machine cannot make.
pub const MAX_LAYERS: usize = 1024;
pub const MAX_HEADS: usize = 1024;
pub const MAX_HEAD_DIM: usize = 1024;
pub const MAX_WIDTH: usize = 1 << 17;
pub const MAX_FFN: usize = 1 << 20;
pub const MAX_VOCAB: usize = 1 << 22;
pub const MAX_CONTEXT: usize = 1 << 24;

impl Config {
    /// Checks every size and constant for range and finiteness; the error says which key is
    /// wrong and what it holds (the caller names the file).
    pub fn check(&self) -> std::result::Result<(), String> {
        let sizes = [
            ("block_count (layers)", self.n_layer, MAX_LAYERS),
            ("head_count", self.n_head, MAX_HEADS),
            ("head_count_kv", self.n_kv_head, MAX_HEADS),
            ("head dimension", self.head_dim, MAX_HEAD_DIM),
            ("feed_forward_length", self.ffn, MAX_FFN),
            ("vocabulary size", self.vocab, MAX_VOCAB),
            ("context_length", self.context_len, MAX_CONTEXT),
        ];
        for (what, v, max) in sizes {
            if v == 0 || v > max {
                return Err(format!("{what} is {v}: it must be between 1 and {max}"));
            }
        }
        if !self.n_head.is_multiple_of(self.n_kv_head) || !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "inconsistent heads: {} query heads, {} KV heads of dimension {}",
                self.n_head, self.n_kv_head, self.head_dim
            ));
        }
        if self.hidden == 0 || self.hidden > MAX_WIDTH {
            return Err(format!(
                "embedding_length is {}: it must be between 1 and {MAX_WIDTH}",
                self.hidden
            ));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 1.0) {
            return Err(format!(
                "rope.freq_base is {}: it must be a finite number above 1",
                self.rope_base
            ));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0 && self.rms_eps < 1.0) {
            return Err(format!(
                "layer_norm_rms_epsilon is {}: it must be between 0 and 1",
                self.rms_eps
            ));
        }
        if let Some(f) = &self.rope_factors {
            if let Some(x) = f.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                return Err(format!(
                    "a RoPE frequency factor is {x}: they must be finite and positive"
                ));
            }
        }
        Ok(())
    }

    /// Query heads per KV head (GQA group size).
    pub fn group(&self) -> usize {
        self.n_head / self.n_kv_head
    }

    /// Reads the config from GGUF metadata, naming `path` in every error.
    pub fn from_gguf(ct: &gguf_file::Content, path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::BadModel {
            path: path.to_path_buf(),
            reason,
        };
        let arch_name = ct
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| bad("metadata has no general.architecture".into()))?;
        let arch = Arch::parse(&arch_name).ok_or_else(|| Error::UnsupportedArch {
            path: path.to_path_buf(),
            arch: arch_name.clone(),
            supported: Arch::SUPPORTED.into(),
        })?;
        let p = arch.key();
        let get_u = |k: &str| -> Result<usize> {
            let key = format!("{p}.{k}");
            let v = ct
                .metadata
                .get(&key)
                .ok_or_else(|| bad(format!("metadata key {key} is missing")))?;
            v.to_u32()
                .map(|x| x as usize)
                .or_else(|_| v.to_u64().map(|x| x as usize))
                .map_err(|e| {
                    bad(format!(
                        "metadata key {key}: {}",
                        crate::error::candle_message(&e)
                    ))
                })
        };
        let get_f = |k: &str| -> Option<f32> {
            ct.metadata
                .get(&format!("{p}.{k}"))
                .and_then(|v| v.to_f32().ok())
        };
        let n_head = get_u("attention.head_count")?;
        let n_kv_head = get_u("attention.head_count_kv").unwrap_or(n_head);
        let hidden = get_u("embedding_length")?;
        if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 || hidden % n_head != 0 {
            return Err(bad(format!(
                "inconsistent heads: {n_head} query heads, {n_kv_head} KV heads, width {hidden}"
            )));
        }
        let head_dim = hidden / n_head;
        if let Ok(rope_dim) = get_u("rope.dimension_count") {
            if rope_dim != head_dim {
                return Err(bad(format!(
                    "partial rotary embeddings (rope dim {rope_dim} < head dim {head_dim}) are not supported"
                )));
            }
        }
        let vocab = match get_u("vocab_size") {
            Ok(v) => v,
            Err(_) => ct
                .metadata
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok())
                .map(Vec::len)
                .ok_or_else(|| bad("no vocab_size and no tokenizer.ggml.tokens".into()))?,
        };
        let cfg = Self {
            arch,
            n_layer: get_u("block_count")?,
            n_head,
            n_kv_head,
            head_dim,
            hidden,
            ffn: get_u("feed_forward_length")?,
            vocab,
            context_len: get_u("context_length").unwrap_or(4096),
            rope_base: get_f("rope.freq_base").unwrap_or(10_000.0),
            rope_style: match arch {
                Arch::Llama => RopeStyle::Interleaved,
                Arch::Qwen2 => RopeStyle::HalfSplit,
            },
            rope_factors: None,
            rms_eps: f64::from(get_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5)),
        };
        cfg.check().map_err(bad)?;
        Ok(cfg)
    }
}

/// Llama 3's RoPE scaling as per-frequency divisors (what llama.cpp stores as
/// `rope_freqs.weight`): long wavelengths are slowed by `factor`, short ones kept, and the band
/// between blended smoothly.
pub fn llama3_rope_factors(
    head_dim: usize,
    base: f32,
    factor: f32,
    low_freq_factor: f32,
    high_freq_factor: f32,
    original_context: f32,
) -> Vec<f32> {
    let low_wavelen = original_context / low_freq_factor;
    let high_wavelen = original_context / high_freq_factor;
    (0..head_dim)
        .step_by(2)
        .map(|i| {
            let freq = 1f32 / base.powf(i as f32 / head_dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (original_context / wavelen - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

impl From<&Config> for crate::cache::Shape {
    fn from(c: &Config) -> Self {
        Self {
            n_layer: c.n_layer,
            n_head: c.n_head,
            n_kv_head: c.n_kv_head,
            head_dim: c.head_dim,
        }
    }
}
