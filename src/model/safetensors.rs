//! Loading a decoder from a Hugging Face checkpoint folder: `config.json` plus one or more
//! `*.safetensors` files (f32, f16 or bf16), the only code that knows those tensor names.
//!
//! Safetensors llama weights pair RoPE dimensions half-split (i, i + d/2); GGUF's converter
//! permutes q/k rows to pair them (2i, 2i + 1). Both load into the same decoder, each with its
//! own [`RopeStyle`], and give the same logits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::config::llama3_rope_factors;
use super::{Arch, Config, Embedding, Layer, Linear, Model, Rope, RopeStyle, WeightFormat};
use crate::error::{Error, Result};

/// The fields of `config.json` the decoder reads.
#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f32>,
    #[serde(default)]
    tie_word_embeddings: bool,
    rope_scaling: Option<serde_json::Value>,
    attention_bias: Option<bool>,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadModel {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads `dir/config.json` into the decoder's config, and whether q/k/v carry biases and
/// the embedding doubles as the LM head.
pub fn read_config(dir: &Path) -> Result<(Config, bool, bool)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let hf: HfConfig = serde_json::from_str(&text).map_err(|e| {
        bad(
            &path,
            format!("not a model config.json: {e}; download it again"),
        )
    })?;
    let model_type = hf.model_type.clone().unwrap_or_default();
    let arch = match model_type.as_str() {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        other => {
            return Err(Error::UnsupportedArch {
                path,
                arch: if other.is_empty() {
                    "(no model_type)".into()
                } else {
                    other.into()
                },
                supported: Arch::SUPPORTED.into(),
            })
        }
    };
    let n_head = hf.num_attention_heads;
    let n_kv_head = hf.num_key_value_heads.unwrap_or(n_head);
    if n_head == 0 || n_kv_head == 0 || !n_head.is_multiple_of(n_kv_head) {
        return Err(bad(
            &path,
            format!("inconsistent heads: {n_head} query heads, {n_kv_head} KV heads"),
        ));
    }
    let head_dim = hf.head_dim.unwrap_or(hf.hidden_size / n_head);
    if head_dim == 0 || !head_dim.is_multiple_of(2) || head_dim > super::config::MAX_HEAD_DIM {
        return Err(bad(
            &path,
            format!(
                "head dimension {head_dim} must be even and at most {}",
                super::config::MAX_HEAD_DIM
            ),
        ));
    }
    let rope_base = hf.rope_theta.unwrap_or(10_000.0);
    let rope_factors = match &hf.rope_scaling {
        None | Some(serde_json::Value::Null) => None,
        Some(s) => {
            let kind = s
                .get("rope_type")
                .or_else(|| s.get("type"))
                .and_then(|v| v.as_str())
                .unwrap_or("");
            let num = |k: &str, default: f32| -> f32 {
                s.get(k)
                    .and_then(|v| v.as_f64())
                    .map_or(default, |v| v as f32)
            };
            match kind {
                "llama3" => Some(llama3_rope_factors(
                    head_dim,
                    rope_base,
                    num("factor", 8.0),
                    num("low_freq_factor", 1.0),
                    num("high_freq_factor", 4.0),
                    num("original_max_position_embeddings", 8192.0),
                )),
                "linear" => Some(vec![num("factor", 1.0); head_dim / 2]),
                "default" => None,
                other => {
                    return Err(bad(
                        &path,
                        format!(
                        "rope_scaling type `{other}` is not supported (supported: llama3, linear)"
                    ),
                    ))
                }
            }
        }
    };
    let bias = hf.attention_bias.unwrap_or(arch == Arch::Qwen2);
    let cfg = Config {
        arch,
        n_layer: hf.num_hidden_layers,
        n_head,
        n_kv_head,
        head_dim,
        hidden: hf.hidden_size,
        ffn: hf.intermediate_size,
        vocab: hf.vocab_size,
        context_len: hf.max_position_embeddings.unwrap_or(4096),
        rope_base,
        rope_style: RopeStyle::HalfSplit,
        rope_factors,
        rms_eps: hf.rms_norm_eps.unwrap_or(1e-5),
    };
    cfg.check().map_err(|reason| bad(&path, reason))?;
    Ok((cfg, bias, hf.tie_word_embeddings))
}

/// The weight files of a checkpoint folder: the shards its index names, else every
/// `*.safetensors` in it.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(&index, format!("not valid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad(&index, "no weight_map"))?;
        let mut shards: Vec<String> = map
            .values()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect();
        shards.sort();
        shards.dedup();
        let files: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        if let Some(missing) = files.iter().find(|f| !f.exists()) {
            return Err(bad(
                dir,
                format!(
                    "shard {} named in model.safetensors.index.json is missing: download it again",
                    missing.display()
                ),
            ));
        }
        return Ok(files);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(bad(
            dir,
            "no *.safetensors file in the folder: download the model's weights into it",
        ));
    }
    Ok(files)
}

/// Tensors by name, converted to f32 one at a time as they are taken.
struct Weights<'a> {
    dir: &'a Path,
    tensors: HashMap<String, Tensor>,
}

impl Weights<'_> {
    fn take(&mut self, name: &str) -> Result<Tensor> {
        let t = self.tensors.remove(name).ok_or_else(|| {
            bad(
                self.dir,
                format!("tensor {name} is missing from the safetensors files"),
            )
        })?;
        Ok(t.to_dtype(DType::F32)?)
    }

    fn take_opt(&mut self, name: &str) -> Result<Option<Tensor>> {
        if self.tensors.contains_key(name) {
            self.take(name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A (rows, cols) matrix, checked.
    fn mat(&mut self, name: &str, rows: usize, cols: usize) -> Result<Tensor> {
        let t = self.take(name)?;
        if t.dims() != [rows, cols] {
            return Err(bad(
                self.dir,
                format!("tensor {name} is {:?}, expected [{rows}, {cols}]", t.dims()),
            ));
        }
        Ok(t)
    }
}

/// Picks the concrete format for `Auto` by parameter count, at GGUF's threshold (dense
/// weights have no slow quantization to avoid, so above it they are Q8_0).
fn resolve_format(asked: WeightFormat, params: usize) -> WeightFormat {
    match asked {
        WeightFormat::Auto if params <= super::gguf::AUTO_HYBRID_MAX_PARAMS => WeightFormat::Hybrid,
        WeightFormat::Auto => WeightFormat::Q8_0,
        other => other,
    }
}

impl Model {
    /// Builds the decoder from a checkpoint folder (`config.json` + `*.safetensors`).
    pub fn from_safetensors(dir: &Path, device: &Device, weights: WeightFormat) -> Result<Self> {
        let (cfg, bias, tied) = read_config(dir)?;
        let mut tensors = HashMap::new();
        for f in weight_files(dir)? {
            let part = candle_core::safetensors::load(&f, device).map_err(|e| {
                bad(
                    &f,
                    format!(
                        "cannot read safetensors: {} (the file may be truncated: download it again)",
                        crate::error::candle_message(&e)
                    ),
                )
            })?;
            tensors.extend(part);
        }
        let params: usize = tensors.values().map(|t| t.elem_count()).sum();
        let format = resolve_format(weights, params);
        let mut w = Weights { dir, tensors };
        let (h, d, nq, nkv, f) = (cfg.hidden, cfg.head_dim, cfg.n_head, cfg.n_kv_head, cfg.ffn);
        let embed = w.mat("model.embed_tokens.weight", cfg.vocab, h)?;
        let lm_head = match w.take_opt("lm_head.weight")? {
            Some(t) => t,
            None if tied => embed.clone(),
            None => {
                return Err(bad(
                    dir,
                    "no lm_head.weight and tie_word_embeddings is not set in config.json",
                ))
            }
        };
        let lm_head = Linear::from_dense(lm_head, None, format)?;
        let norm = w.take("model.norm.weight")?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("model.layers.{i}");
            // (H_q·d + 2·H_kv·d, hidden): q, k, v stacked as the GGUF loader does.
            let q = w.mat(&format!("{p}.self_attn.q_proj.weight"), nq * d, h)?;
            let k = w.mat(&format!("{p}.self_attn.k_proj.weight"), nkv * d, h)?;
            let v = w.mat(&format!("{p}.self_attn.v_proj.weight"), nkv * d, h)?;
            let b = if bias {
                let names =
                    ["q_proj", "k_proj", "v_proj"].map(|n| format!("{p}.self_attn.{n}.bias"));
                let parts = names
                    .iter()
                    .map(|n| w.take(n))
                    .collect::<Result<Vec<_>>>()?;
                Some(Tensor::cat(&parts, 0)?)
            } else {
                None
            };
            let wqkv = Linear::from_dense(Tensor::cat(&[q, k, v], 0)?, b, format)?;
            let wo = w.mat(&format!("{p}.self_attn.o_proj.weight"), h, nq * d)?;
            let gate = w.mat(&format!("{p}.mlp.gate_proj.weight"), f, h)?;
            let up = w.mat(&format!("{p}.mlp.up_proj.weight"), f, h)?;
            let down = w.mat(&format!("{p}.mlp.down_proj.weight"), h, f)?;
            layers.push(Layer {
                attn_norm: w.take(&format!("{p}.input_layernorm.weight"))?,
                wqkv,
                wo: Linear::from_dense(wo, None, format)?,
                ffn_norm: w.take(&format!("{p}.post_attention_layernorm.weight"))?,
                w_gate_up: Linear::from_dense(Tensor::cat(&[gate, up], 0)?, None, format)?,
                w_down: Linear::from_dense(down, None, format)?,
            });
        }
        let rope = Rope::new(&cfg, device)?;
        Ok(Self {
            weights: format,
            cfg,
            embed: Embedding::Dense(embed),
            layers,
            norm,
            lm_head,
            rope,
            device: device.clone(),
            source: dir.to_path_buf(),
        })
    }
}
