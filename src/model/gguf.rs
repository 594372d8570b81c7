//! Loading a decoder from a GGUF file: the only code that knows GGUF tensor names and
//! quantization types.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use std::borrow::Cow;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Tensor};

use super::{linear, Arch, Config, Embedding, Layer, Linear, Model, Rope};

pub mod header;
pub mod writer;
use crate::error::{Error, Result};

/// How projection weights are kept in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// The file's own quantization, held once (`Native`), unless the file has Q5_0/Q5_1
    /// tensors, which have no fast kernel: then `Q8_0`.
    #[default]
    Auto,
    /// The file's quantization (else Q8_0) for decoding plus a dense f32 copy for long
    /// prompts: faster prompts for five times the memory. Not for the types whose prompts
    /// the CPU keeps in integers (`kernels::prompts_in_integers`), which are faster: those
    /// are held as `Native`.
    Hybrid,
    /// The file's quantization, held once: through our kernels (Q4_0, Q4_1, Q8_0 and the
    /// K-quants) for single tokens and prompts alike, through candle's for other types.
    Native,
    /// Dequantize everything to f32 at load.
    F32,
    /// Re-quantize every quantized tensor to Q8_0 (fast SIMD kernel, near-lossless).
    Q8_0,
}

impl FromStr for WeightFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "hybrid" => Ok(Self::Hybrid),
            "native" => Ok(Self::Native),
            "f32" => Ok(Self::F32),
            "q8_0" | "q8" => Ok(Self::Q8_0),
            _ => Err(Error::arg(
                "--weights",
                format!("`{s}` is not one of auto, hybrid, native, f32, q8_0"),
            )),
        }
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Hybrid => "hybrid",
            Self::Native => "native",
            Self::F32 => "f32",
            Self::Q8_0 => "q8_0",
        })
    }
}

/// A safetensors checkpoint's `Auto` keeps a dense f32 copy only up to this many parameters
/// (f32 weights of a 500M-parameter model take 2 GB).
pub(super) const AUTO_HYBRID_MAX_PARAMS: usize = 500_000_000;

/// Opens a GGUF file and reads its header: metadata and tensor index, no tensor data. Every
/// count, length and byte range in it is checked first (see [`header`]).
pub fn open_gguf(path: &Path) -> Result<(gguf_file::Content, BufReader<File>)> {
    let bad = |reason: String| Error::BadModel {
        path: path.to_path_buf(),
        reason,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::ModelNotFound {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    // A FIFO or a device would block or never end: only regular files are read.
    if !meta.is_file() {
        return Err(bad(
            "not a regular file: pass a GGUF file or a safetensors folder with -m".into(),
        ));
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::new(file);
    let content = header::read(&mut reader, meta.len()).map_err(|reason| {
        bad(format!(
            "{reason} (is it a GGUF file? download it again or pass another with -m)"
        ))
    })?;
    Ok((content, reader))
}

/// Checks that the file holds every tensor the config calls for, with the type and shape it
/// calls for, before any of them is read.
fn check_tensors(ct: &gguf_file::Content, cfg: &Config) -> std::result::Result<(), String> {
    let (h, d) = (cfg.hidden, cfg.head_dim);
    let embed = ct
        .tensor_infos
        .get("token_embd.weight")
        .ok_or("tensor token_embd.weight is missing")?;
    let vocab = embed.shape.dims().first().copied().unwrap_or(0);
    let mut want: Vec<(String, Vec<usize>)> = vec![
        ("token_embd.weight".into(), vec![vocab, h]),
        ("output_norm.weight".into(), vec![h]),
    ];
    if ct.tensor_infos.contains_key("output.weight") {
        want.push(("output.weight".into(), vec![vocab, h]));
    }
    if ct.tensor_infos.contains_key("rope_freqs.weight") {
        want.push(("rope_freqs.weight".into(), vec![d / 2]));
    }
    let (q, kv) = (cfg.n_head * d, cfg.n_kv_head * d);
    for i in 0..cfg.n_layer {
        let p = format!("blk.{i}");
        // Checked layer by layer, so a huge block_count fails at its first missing layer.
        if !ct
            .tensor_infos
            .contains_key(&format!("{p}.attn_norm.weight"))
        {
            return Err(format!(
                "tensor {p}.attn_norm.weight is missing (block_count says {} layers)",
                cfg.n_layer
            ));
        }
        want.extend([
            (format!("{p}.attn_norm.weight"), vec![h]),
            (format!("{p}.attn_q.weight"), vec![q, h]),
            (format!("{p}.attn_k.weight"), vec![kv, h]),
            (format!("{p}.attn_v.weight"), vec![kv, h]),
            (format!("{p}.attn_output.weight"), vec![h, q]),
            (format!("{p}.ffn_norm.weight"), vec![h]),
            (format!("{p}.ffn_gate.weight"), vec![cfg.ffn, h]),
            (format!("{p}.ffn_up.weight"), vec![cfg.ffn, h]),
            (format!("{p}.ffn_down.weight"), vec![h, cfg.ffn]),
        ]);
        if cfg.arch == Arch::Qwen2 {
            want.extend([
                (format!("{p}.attn_q.bias"), vec![q]),
                (format!("{p}.attn_k.bias"), vec![kv]),
                (format!("{p}.attn_v.bias"), vec![kv]),
            ]);
        }
    }
    for (name, dims) in &want {
        let t = ct
            .tensor_infos
            .get(name)
            .ok_or_else(|| format!("tensor {name} is missing"))?;
        if t.shape.dims() != dims.as_slice() {
            return Err(format!(
                "tensor {name} has shape {:?}, but the metadata calls for {dims:?}",
                t.shape.dims()
            ));
        }
    }
    let tokens = ct
        .metadata
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.to_vec().ok())
        .map_or(0, Vec::len);
    if vocab < cfg.vocab.max(tokens) {
        return Err(format!(
            "token_embd.weight has {vocab} rows, fewer than the vocabulary's {} tokens",
            cfg.vocab.max(tokens)
        ));
    }
    // Norms, biases and RoPE factors are read as f32; any type candle reads will do.
    Ok(())
}

impl Model {
    /// Builds the decoder from an opened GGUF file.
    pub fn from_gguf(
        ct: &gguf_file::Content,
        reader: &mut BufReader<File>,
        path: &Path,
        device: &Device,
        weights: WeightFormat,
    ) -> Result<Self> {
        let cfg = Config::from_gguf(ct, path)?;
        check_tensors(ct, &cfg).map_err(|reason| Error::BadModel {
            path: path.to_path_buf(),
            reason,
        })?;
        let mut loader = Loader {
            ct,
            reader,
            path,
            device,
            format: resolve_format(ct, weights),
        };
        let embed_q = loader.qtensor("token_embd.weight")?;
        let (vocab, hidden) = embed_q.shape().dims2()?;
        if hidden != cfg.hidden {
            return Err(loader.bad(format!(
                "token_embd.weight is {vocab}x{hidden}, expected width {}",
                cfg.hidden
            )));
        }
        // Held once, in the file's blocks, where the kernels read them (and shared with a
        // tied output layer); as f32 where they don't, or where f32 was asked for.
        let packed_embed = match loader.format {
            WeightFormat::F32 | WeightFormat::Hybrid => None,
            _ => linear::pack(&embed_q)?,
        };
        let embed = match &packed_embed {
            Some(p) => Embedding::Packed(p.clone()),
            None => {
                let e = embed_q.dequantize(device)?;
                loader.finite("token_embd.weight", &e)?;
                Embedding::Dense(e)
            }
        };
        // Tied embeddings: no output.weight means the embedding matrix is the LM head.
        let lm_head = if ct.tensor_infos.contains_key("output.weight") {
            loader.linear("output.weight", None)?
        } else if let Some(p) = packed_embed {
            Linear::from_packed(p, None)
        } else {
            loader.linear_from(Arc::new(embed_q), None)?
        };
        let norm = loader.dense("output_norm.weight")?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("blk.{i}");
            let bias = |name: &str| match cfg.arch {
                Arch::Qwen2 => Some(format!("{p}.{name}.bias")),
                Arch::Llama => None,
            };
            layers.push(Layer {
                attn_norm: loader.dense(&format!("{p}.attn_norm.weight"))?,
                wqkv: loader.fused(
                    &["attn_q", "attn_k", "attn_v"].map(|n| format!("{p}.{n}.weight")),
                    bias("attn_q")
                        .is_some()
                        .then(|| ["attn_q", "attn_k", "attn_v"].map(|n| format!("{p}.{n}.bias"))),
                )?,
                wo: loader.linear(&format!("{p}.attn_output.weight"), None)?,
                ffn_norm: loader.dense(&format!("{p}.ffn_norm.weight"))?,
                w_gate_up: loader.fused(
                    &["ffn_gate", "ffn_up"].map(|n| format!("{p}.{n}.weight")),
                    None,
                )?,
                w_down: loader.linear(&format!("{p}.ffn_down.weight"), None)?,
            });
        }
        // Llama 3's scaled RoPE: llama.cpp stores the frequency divisors as a tensor.
        let mut cfg = cfg;
        if ct.tensor_infos.contains_key("rope_freqs.weight") {
            let f = loader
                .dense("rope_freqs.weight")?
                .flatten_all()?
                .to_vec1::<f32>()?;
            if f.len() != cfg.head_dim / 2 {
                return Err(loader.bad(format!(
                    "rope_freqs.weight has {} values, expected {}",
                    f.len(),
                    cfg.head_dim / 2
                )));
            }
            cfg.rope_factors = Some(f);
        }
        let rope = Rope::new(&cfg, device)?;
        Ok(Self {
            weights: loader.format,
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            rope,
            device: device.clone(),
            source: path.to_path_buf(),
        })
    }
}

/// Picks the concrete format for `Auto`: the file's own quantization, held once, unless it
/// has Q5_0/Q5_1 tensors (no kernel of ours, candle's are slow), which are re-quantized to
/// Q8_0.
fn resolve_format(ct: &gguf_file::Content, asked: WeightFormat) -> WeightFormat {
    if asked != WeightFormat::Auto {
        return asked;
    }
    let slow = ct
        .tensor_infos
        .values()
        .any(|t| matches!(t.ggml_dtype, GgmlDType::Q5_0 | GgmlDType::Q5_1));
    if slow {
        WeightFormat::Q8_0
    } else {
        WeightFormat::Native
    }
}

/// Whether every block scale (and minimum) of GGML-typed `data` is finite: a NaN or an
/// infinity there is damage that would turn the output into noise. Types without scales
/// (f32, f16) and types not listed pass: their values are checked where they are read.
fn scales_finite(dtype: GgmlDType, data: &[u8]) -> bool {
    // (block bytes, offsets of the f16 scales within a block)
    let (bytes, at): (usize, &[usize]) = match dtype {
        GgmlDType::Q4_0 => (18, &[0]),
        GgmlDType::Q4_1 => (20, &[0, 2]),
        GgmlDType::Q5_0 => (22, &[0]),
        GgmlDType::Q5_1 => (24, &[0, 2]),
        GgmlDType::Q8_0 => (34, &[0]),
        GgmlDType::Q4K => (144, &[0, 2]),
        GgmlDType::Q5K => (176, &[0, 2]),
        GgmlDType::Q6K => (210, &[208]),
        _ => return true,
    };
    data.chunks_exact(bytes).all(|b| {
        at.iter()
            .all(|&i| half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).is_finite())
    })
}

struct Loader<'a> {
    ct: &'a gguf_file::Content,
    reader: &'a mut BufReader<File>,
    path: &'a Path,
    device: &'a Device,
    format: WeightFormat,
}

impl Loader<'_> {
    fn bad(&self, reason: String) -> Error {
        Error::BadModel {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        if !self.ct.tensor_infos.contains_key(name) {
            return Err(self.bad(format!("tensor {name} is missing")));
        }
        let q = self
            .ct
            .tensor(self.reader, name, self.device)
            .map_err(|e| Error::BadModel {
                path: self.path.to_path_buf(),
                reason: format!(
                    "cannot read tensor {name}: {} (the file may be truncated: download it again)",
                    crate::error::candle_message(&e)
                ),
            })?;
        if self.device.is_cpu() && !scales_finite(q.dtype(), &q.data()?) {
            return Err(self.bad(format!(
                "tensor {name} has block scales that are not finite (NaN or infinite): the file is damaged, download it again"
            )));
        }
        Ok(q)
    }

    /// A small tensor (norm weights, biases) as dense f32.
    fn dense(&mut self, name: &str) -> Result<candle_core::Tensor> {
        let t = self.qtensor(name)?.dequantize(self.device)?;
        self.finite(name, &t)?;
        Ok(t)
    }

    /// A NaN or infinity in a weight the decoder reads as f32 (norms, biases, the embedding)
    /// is damage: refused by name rather than left to turn the output into noise.
    fn finite(&self, name: &str, t: &Tensor) -> Result<()> {
        // A sum propagates any NaN or infinity (real weights are far from overflowing it).
        if t.sum_all()?.to_scalar::<f32>()?.is_finite() {
            return Ok(());
        }
        Err(self.bad(format!(
            "tensor {name} holds values that are not finite (NaN or infinite): the file is damaged, download it again"
        )))
    }

    /// Projections stacked along their output dimension into one (one GEMM instead of
    /// several). Quantized rows are independent, so tensors of one type are joined byte for
    /// byte; tensors of mixed types (a Q4_K_M file's Q6_K v beside Q4_K q and k) stay parts
    /// of their own types, each through its own kernel.
    fn fused<const N: usize>(
        &mut self,
        names: &[String; N],
        biases: Option<[String; N]>,
    ) -> Result<Linear> {
        let parts = names
            .iter()
            .map(|n| self.qtensor(n))
            .collect::<Result<Vec<_>>>()?;
        let cols = parts[0].shape().dims2()?.1;
        let rows: usize = parts
            .iter()
            .map(|q| q.shape().dims2().map(|d| d.0))
            .sum::<candle_core::Result<usize>>()?;
        let dtype = parts[0].dtype();
        let mut linear = if parts.iter().all(|q| q.dtype() == dtype) {
            let mut bytes = Vec::new();
            for q in &parts {
                bytes.extend_from_slice(&q.data()?);
            }
            drop(parts);
            let storage = QStorage::from_data(Cow::Owned(bytes), self.device, dtype)?;
            self.linear_from(Arc::new(QTensor::new(storage, (rows, cols))?), None)?
        } else {
            let parts = parts
                .into_iter()
                .map(|q| self.linear_from(Arc::new(q), None))
                .collect::<Result<Vec<_>>>()?;
            Linear::stacked(parts)?
        };
        if let Some(names) = biases {
            let b = names
                .iter()
                .map(|n| self.dense(n))
                .collect::<Result<Vec<_>>>()?;
            linear.set_bias(Tensor::cat(&b, 0)?)?;
        }
        Ok(linear)
    }

    fn linear(&mut self, name: &str, bias: Option<String>) -> Result<Linear> {
        let q = self.qtensor(name)?;
        self.linear_from(Arc::new(q), bias)
    }

    fn linear_from(&mut self, q: Arc<QTensor>, bias: Option<String>) -> Result<Linear> {
        let dense_type = matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        let to_q8 = |q: Arc<QTensor>, device: &Device| -> Result<QMatMul> {
            Ok(if q.dtype() == GgmlDType::Q8_0 {
                QMatMul::QTensor(q)
            } else {
                let dense = q.dequantize(device)?;
                QMatMul::QTensor(Arc::new(QTensor::quantize(&dense, GgmlDType::Q8_0)?))
            })
        };
        let b = match bias {
            Some(name) => Some(self.dense(&name)?),
            None => None,
        };
        match self.format {
            _ if dense_type => Linear::new(QMatMul::Tensor(q.dequantize(self.device)?), None, b),
            WeightFormat::F32 => Linear::new(QMatMul::Tensor(q.dequantize(self.device)?), None, b),
            WeightFormat::Native => Linear::new(QMatMul::QTensor(q), None, b),
            WeightFormat::Q8_0 | WeightFormat::Auto => Linear::new(to_q8(q, self.device)?, None, b),
            WeightFormat::Hybrid => {
                // No f32 copy where the integer prompt kernels beat it (`native`).
                if let Some(kind) = linear::kind_of(q.dtype()) {
                    if self.device.is_cpu() && crate::kernels::prompts_in_integers(kind) {
                        return Linear::new(QMatMul::QTensor(q), None, b);
                    }
                }
                let dense = q.dequantize(self.device)?;
                // The kernels read some types as they are in the file.
                match linear::kind_of(q.dtype()) {
                    Some(_) => Linear::packed_and_dense(&q, dense, b),
                    None => match to_q8(q, self.device)? {
                        QMatMul::QTensor(q8) => Linear::packed_and_dense(&q8, dense, b),
                        other => Linear::new(other, Some(QMatMul::Tensor(dense)), b),
                    },
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_non_finite_block_scale_is_found() {
        let t = Tensor::rand(-1f32, 1f32, (4, 256), &Device::Cpu).unwrap();
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
        ] {
            let mut data = QTensor::quantize(&t, dtype)
                .unwrap()
                .data()
                .unwrap()
                .to_vec();
            assert!(scales_finite(dtype, &data), "{dtype:?}");
            // The last block's scale (the first field of every block of these types).
            let bytes = dtype.type_size();
            let at = data.len() - bytes;
            data[at..at + 2].copy_from_slice(&half::f16::NAN.to_bits().to_le_bytes());
            assert!(!scales_finite(dtype, &data), "{dtype:?}");
        }
        let mut q6 = QTensor::quantize(&t, GgmlDType::Q6K)
            .unwrap()
            .data()
            .unwrap()
            .to_vec();
        let n = q6.len();
        q6[n - 2..].copy_from_slice(&half::f16::INFINITY.to_bits().to_le_bytes());
        assert!(!scales_finite(GgmlDType::Q6K, &q6));
    }
}
