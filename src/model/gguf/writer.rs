//! Writes a GGUF file with random weights at a config's shapes, in the file types people
//! download (`q4_k_m`, `q5_k_m`, `q8_0`, ...), each tensor's type picked as llama.cpp's
//! `llama-quantize` picks it, so tests, benches and llama.cpp itself can run 1B and 8B shapes
//! without the Hub. Speed does not depend on the values; only their types and shapes matter.

use std::path::Path;
use std::str::FromStr;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::model::{Arch, Config};

/// A whole file's quantization, by llama.cpp's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    F16,
    Q8_0,
    Q4_0,
    Q4_1,
    /// Q4_K, with Q6_K for the output layer and for `attn_v` and `ffn_down` in the layers
    /// llama.cpp gives more bits.
    Q4KM,
    /// Q5_K, with Q6_K where `Q4KM` has it.
    Q5KM,
}

impl FromStr for FileType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f16" => Self::F16,
            "q8_0" => Self::Q8_0,
            "q4_0" => Self::Q4_0,
            "q4_1" => Self::Q4_1,
            "q4_k_m" => Self::Q4KM,
            "q5_k_m" => Self::Q5KM,
            _ => {
                return Err(Error::arg(
                    "--type",
                    format!("`{s}` is not one of f16, q8_0, q4_0, q4_1, q4_k_m, q5_k_m"),
                ))
            }
        })
    }
}

impl FileType {
    /// llama.cpp's `general.file_type` number for it.
    fn number(self) -> u32 {
        match self {
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 7,
            Self::Q4KM => 15,
            Self::Q5KM => 17,
        }
    }

    /// The type of most matrices.
    fn base(self) -> GgmlDType {
        match self {
            Self::F16 => GgmlDType::F16,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q4KM => GgmlDType::Q4K,
            Self::Q5KM => GgmlDType::Q5K,
        }
    }

    /// The type of a 2-D tensor: `role` is its name without the `blk.N.` prefix, `layer`
    /// its layer (if any) of `layers`, `cols` its row width.
    fn of(self, role: &str, layer: Option<usize>, layers: usize, cols: usize) -> GgmlDType {
        let k = matches!(self, Self::Q4KM | Self::Q5KM);
        // llama.cpp's use_more_bits: the first and last eighth, and every third between.
        let more = |i: usize| i < layers / 8 || i >= 7 * layers / 8 || (i - layers / 8) % 3 == 2;
        let t = match (role, layer) {
            ("output.weight", _) if k => GgmlDType::Q6K,
            ("attn_v.weight" | "ffn_down.weight", Some(i)) if k && more(i) => GgmlDType::Q6K,
            _ => self.base(),
        };
        // K-quant blocks hold 256 values: narrower rows take llama.cpp's fallbacks.
        match t {
            GgmlDType::Q4K if !cols.is_multiple_of(256) => GgmlDType::Q5_0,
            GgmlDType::Q5K if !cols.is_multiple_of(256) => GgmlDType::Q5_1,
            GgmlDType::Q6K if !cols.is_multiple_of(256) => GgmlDType::Q8_0,
            t => t,
        }
    }
}

/// Writes `path`: random weights at `cfg`'s shapes in `ftype`, with `tokenizer`'s
/// `tokenizer.*` metadata (a GGUF whose vocabulary sets the embedding's rows) so that
/// morphkv and llama.cpp open it as a whole model. Returns the bytes written.
pub fn write_random(
    path: &Path,
    cfg: &Config,
    ftype: FileType,
    tokenizer: Option<&gguf_file::Content>,
    seed: u64,
) -> Result<u64> {
    let tok_meta: Vec<(String, gguf_file::Value)> = tokenizer
        .map(|c| {
            c.metadata
                .iter()
                .filter(|(k, _)| k.starts_with("tokenizer."))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let vocab = tokenizer
        .and_then(|c| c.metadata.get("tokenizer.ggml.tokens"))
        .and_then(|v| v.to_vec().ok())
        .map_or(cfg.vocab, Vec::len);
    let (h, d, f) = (cfg.hidden, cfg.head_dim, cfg.ffn);
    let (q, kv) = (cfg.n_head * d, cfg.n_kv_head * d);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut add = |name: String, role: &str, layer: Option<usize>, rows: usize, cols: usize| {
        let scale = if rows == 0 {
            1.0
        } else {
            1.0 / (cols as f32).sqrt()
        };
        let (shape, dtype, values): (Vec<usize>, GgmlDType, Vec<f32>) = if rows == 0 {
            // A norm: ones, with a little noise.
            let v = (0..cols)
                .map(|_| 1.0 + rng.random_range(-0.1..0.1))
                .collect();
            (vec![cols], GgmlDType::F32, v)
        } else {
            let v = (0..rows * cols)
                .map(|_| rng.random_range(-scale..scale))
                .collect();
            let dtype = ftype.of(role, layer, cfg.n_layer, cols);
            (vec![rows, cols], dtype, v)
        };
        let t = Tensor::from_vec(values, shape, &Device::Cpu)?;
        tensors.push((name, QTensor::quantize(&t, dtype)?));
        Ok::<(), Error>(())
    };
    // Tied: the embedding is the output layer, and is typed as one.
    add("token_embd.weight".into(), "output.weight", None, vocab, h)?;
    add("output_norm.weight".into(), "", None, 0, h)?;
    for i in 0..cfg.n_layer {
        let p = |n: &str| format!("blk.{i}.{n}");
        for (role, rows, cols) in [
            ("attn_norm.weight", 0, h),
            ("attn_q.weight", q, h),
            ("attn_k.weight", kv, h),
            ("attn_v.weight", kv, h),
            ("attn_output.weight", h, q),
            ("ffn_norm.weight", 0, h),
            ("ffn_gate.weight", f, h),
            ("ffn_up.weight", f, h),
            ("ffn_down.weight", h, f),
        ] {
            add(p(role), role, Some(i), rows, cols)?;
        }
        if cfg.arch == Arch::Qwen2 {
            for (role, n) in [("attn_q.bias", q), ("attn_k.bias", kv), ("attn_v.bias", kv)] {
                add(p(role), role, Some(i), 0, n)?;
            }
        }
    }
    let a = match cfg.arch {
        Arch::Llama => "llama",
        Arch::Qwen2 => "qwen2",
    };
    let u = |x: usize| gguf_file::Value::U32(x as u32);
    let mut meta: Vec<(String, gguf_file::Value)> = vec![
        (
            "general.architecture".into(),
            gguf_file::Value::String(a.into()),
        ),
        (
            "general.name".into(),
            gguf_file::Value::String("morphkv random weights".into()),
        ),
        (
            "general.file_type".into(),
            gguf_file::Value::U32(ftype.number()),
        ),
        (format!("{a}.block_count"), u(cfg.n_layer)),
        (format!("{a}.context_length"), u(cfg.context_len)),
        (format!("{a}.embedding_length"), u(h)),
        (format!("{a}.feed_forward_length"), u(f)),
        (format!("{a}.attention.head_count"), u(cfg.n_head)),
        (format!("{a}.attention.head_count_kv"), u(cfg.n_kv_head)),
        (format!("{a}.rope.dimension_count"), u(d)),
        (format!("{a}.vocab_size"), u(vocab)),
        (
            format!("{a}.rope.freq_base"),
            gguf_file::Value::F32(cfg.rope_base),
        ),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            gguf_file::Value::F32(cfg.rms_eps as f32),
        ),
    ];
    meta.extend(tok_meta);
    let meta_refs: Vec<(&str, &gguf_file::Value)> =
        meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let io = |e: std::io::Error| Error::io(path, e);
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    gguf_file::write(&mut file, &meta_refs, &refs)?;
    std::io::Write::flush(&mut file).map_err(io)?;
    Ok(std::fs::metadata(path).map_err(io)?.len())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_m_types_follow_llama_cpp() {
        let t = FileType::Q4KM;
        // 16 layers: more bits in 0, 1, 4, 7, 10, 13, 14, 15.
        let more: Vec<usize> = (0..16)
            .filter(|&i| t.of("attn_v.weight", Some(i), 16, 2048) == GgmlDType::Q6K)
            .collect();
        assert_eq!(more, vec![0, 1, 4, 7, 10, 13, 14, 15]);
        assert_eq!(t.of("attn_q.weight", Some(0), 16, 2048), GgmlDType::Q4K);
        assert_eq!(t.of("output.weight", None, 16, 2048), GgmlDType::Q6K);
        // Rows of 576 values do not hold 256-value blocks.
        assert_eq!(t.of("attn_q.weight", Some(3), 16, 576), GgmlDType::Q5_0);
        assert_eq!(t.of("output.weight", None, 16, 576), GgmlDType::Q8_0);
        assert!("q3_k_s".parse::<FileType>().is_err());
    }
}
