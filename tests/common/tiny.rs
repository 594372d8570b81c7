//! A tiny random-weight model written to disk the way real ones are published: a safetensors
//! checkpoint (config.json, model.safetensors, tokenizer.json, tokenizer_config.json) and the
//! GGUF llama.cpp's converter would make of the same weights.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Shapes and options of the tiny model.
#[derive(Debug, Clone)]
pub struct Tiny {
    pub arch: &'static str,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub tied: bool,
    /// Llama 3 RoPE scaling (factor, low, high, original context).
    pub llama3_rope: Option<(f32, f32, f32, f32)>,
    pub seed: u64,
    /// GGUF tensor types by name fragment (the first fragment in a tensor's name wins);
    /// tensors matching none, and every 1-D tensor, are written as f32.
    pub quant: &'static [(&'static str, GgmlDType)],
}

impl Tiny {
    pub fn llama() -> Self {
        Self {
            arch: "llama",
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            ffn: 128,
            vocab: 260,
            tied: false,
            llama3_rope: None,
            seed: 11,
            quant: &[],
        }
    }

    pub fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }

    /// HF-named weights, f32.
    pub fn weights(&self) -> HashMap<String, Tensor> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut mat = |shape: &[usize], scale: f32| -> Tensor {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
                .collect();
            Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
        };
        let (h, d) = (self.hidden(), self.head_dim);
        let mut w = HashMap::new();
        w.insert(
            "model.embed_tokens.weight".into(),
            mat(&[self.vocab, h], 1.0),
        );
        if !self.tied {
            w.insert("lm_head.weight".into(), mat(&[self.vocab, h], 0.2));
        }
        // Norm weights near 1, not exactly, so that a swapped norm shows.
        let norm = |m: &mut dyn FnMut(&[usize], f32) -> Tensor| (m(&[h], 0.1) + 1.0).unwrap();
        w.insert("model.norm.weight".into(), norm(&mut mat));
        for i in 0..self.layers {
            let p = format!("model.layers.{i}");
            let s = 1.0 / (h as f32).sqrt();
            w.insert(format!("{p}.input_layernorm.weight"), norm(&mut mat));
            w.insert(
                format!("{p}.post_attention_layernorm.weight"),
                norm(&mut mat),
            );
            w.insert(
                format!("{p}.self_attn.q_proj.weight"),
                mat(&[self.heads * d, h], s),
            );
            w.insert(
                format!("{p}.self_attn.k_proj.weight"),
                mat(&[self.kv_heads * d, h], s),
            );
            w.insert(
                format!("{p}.self_attn.v_proj.weight"),
                mat(&[self.kv_heads * d, h], s),
            );
            w.insert(
                format!("{p}.self_attn.o_proj.weight"),
                mat(&[h, self.heads * d], s),
            );
            if self.arch == "qwen2" {
                w.insert(
                    format!("{p}.self_attn.q_proj.bias"),
                    mat(&[self.heads * d], 0.1),
                );
                w.insert(
                    format!("{p}.self_attn.k_proj.bias"),
                    mat(&[self.kv_heads * d], 0.1),
                );
                w.insert(
                    format!("{p}.self_attn.v_proj.bias"),
                    mat(&[self.kv_heads * d], 0.1),
                );
            }
            w.insert(format!("{p}.mlp.gate_proj.weight"), mat(&[self.ffn, h], s));
            w.insert(format!("{p}.mlp.up_proj.weight"), mat(&[self.ffn, h], s));
            w.insert(
                format!("{p}.mlp.down_proj.weight"),
                mat(&[h, self.ffn], 1.0 / (self.ffn as f32).sqrt()),
            );
        }
        w
    }

    pub fn config_json(&self) -> serde_json::Value {
        let mut c = serde_json::json!({
            "architectures": [if self.arch == "qwen2" { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
            "model_type": self.arch,
            "hidden_size": self.hidden(),
            "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": 512,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": self.tied,
            "torch_dtype": "float32",
            "bos_token_id": 256,
            "eos_token_id": 257,
        });
        if let Some((factor, low, high, orig)) = self.llama3_rope {
            c["rope_scaling"] = serde_json::json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low,
                "high_freq_factor": high,
                "original_max_position_embeddings": orig,
            });
        }
        c
    }

    /// Writes the safetensors checkpoint (weights in `dtype`) with its tokenizer files.
    pub fn write_safetensors(&self, dir: &Path, dtype: DType) {
        std::fs::create_dir_all(dir).unwrap();
        let w: HashMap<String, Tensor> = self
            .weights()
            .into_iter()
            .map(|(k, v)| (k, v.to_dtype(dtype).unwrap()))
            .collect();
        candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&self.config_json()).unwrap(),
        )
        .unwrap();
        write_tokenizer(dir);
    }

    /// Writes the GGUF llama.cpp's converter would make: q/k rows permuted for llama's
    /// interleaved RoPE, Llama 3 scaling as `rope_freqs.weight`.
    pub fn write_gguf(&self, path: &Path) {
        let w = self.weights();
        let (h, d) = (self.hidden(), self.head_dim);
        let permute = |t: &Tensor, heads: usize| -> Tensor {
            if self.arch != "llama" {
                return t.clone();
            }
            // GGUF row head·d + 2j + s holds HF row head·d + s·d/2 + j.
            let idx: Vec<u32> = (0..heads * d)
                .map(|r| {
                    let (head, within) = (r / d, r % d);
                    let (j, s) = (within / 2, within % 2);
                    (head * d + s * d / 2 + j) as u32
                })
                .collect();
            let idx = Tensor::new(idx.as_slice(), &Device::Cpu).unwrap();
            t.index_select(&idx, 0).unwrap()
        };
        let mut tensors: Vec<(String, Tensor)> = vec![
            (
                "token_embd.weight".into(),
                w["model.embed_tokens.weight"].clone(),
            ),
            ("output_norm.weight".into(), w["model.norm.weight"].clone()),
        ];
        if !self.tied {
            tensors.push(("output.weight".into(), w["lm_head.weight"].clone()));
        }
        for i in 0..self.layers {
            let p = format!("model.layers.{i}");
            let b = format!("blk.{i}");
            let g = |n: &str| w[&format!("{p}.{n}")].clone();
            tensors.push((format!("{b}.attn_norm.weight"), g("input_layernorm.weight")));
            tensors.push((
                format!("{b}.ffn_norm.weight"),
                g("post_attention_layernorm.weight"),
            ));
            tensors.push((
                format!("{b}.attn_q.weight"),
                permute(&g("self_attn.q_proj.weight"), self.heads),
            ));
            tensors.push((
                format!("{b}.attn_k.weight"),
                permute(&g("self_attn.k_proj.weight"), self.kv_heads),
            ));
            tensors.push((format!("{b}.attn_v.weight"), g("self_attn.v_proj.weight")));
            tensors.push((
                format!("{b}.attn_output.weight"),
                g("self_attn.o_proj.weight"),
            ));
            if self.arch == "qwen2" {
                tensors.push((format!("{b}.attn_q.bias"), g("self_attn.q_proj.bias")));
                tensors.push((format!("{b}.attn_k.bias"), g("self_attn.k_proj.bias")));
                tensors.push((format!("{b}.attn_v.bias"), g("self_attn.v_proj.bias")));
            }
            tensors.push((format!("{b}.ffn_gate.weight"), g("mlp.gate_proj.weight")));
            tensors.push((format!("{b}.ffn_up.weight"), g("mlp.up_proj.weight")));
            tensors.push((format!("{b}.ffn_down.weight"), g("mlp.down_proj.weight")));
        }
        if let Some((factor, low, high, orig)) = self.llama3_rope {
            let f =
                morphkv::model::config::llama3_rope_factors(d, 10000.0, factor, low, high, orig);
            tensors.push((
                "rope_freqs.weight".into(),
                Tensor::new(f.as_slice(), &Device::Cpu).unwrap(),
            ));
        }
        let q: Vec<(String, QTensor)> = tensors
            .into_iter()
            .map(|(n, t)| {
                let dtype = match self.quant.iter().find(|(frag, _)| n.contains(frag)) {
                    Some(&(_, dtype)) if t.rank() == 2 => dtype,
                    _ => GgmlDType::F32,
                };
                let q = QTensor::quantize(&t, dtype).unwrap();
                (n, q)
            })
            .collect();
        let a = self.arch;
        let u = |x: usize| gguf_file::Value::U32(x as u32);
        let meta: Vec<(String, gguf_file::Value)> = vec![
            (
                "general.architecture".into(),
                gguf_file::Value::String(a.into()),
            ),
            (format!("{a}.block_count"), u(self.layers)),
            (format!("{a}.attention.head_count"), u(self.heads)),
            (format!("{a}.attention.head_count_kv"), u(self.kv_heads)),
            (format!("{a}.embedding_length"), u(h)),
            (format!("{a}.feed_forward_length"), u(self.ffn)),
            (format!("{a}.context_length"), u(512)),
            (format!("{a}.vocab_size"), u(self.vocab)),
            (
                format!("{a}.rope.freq_base"),
                gguf_file::Value::F32(10000.0),
            ),
            (
                format!("{a}.attention.layer_norm_rms_epsilon"),
                gguf_file::Value::F32(1e-5),
            ),
        ];
        let meta_refs: Vec<(&str, &gguf_file::Value)> =
            meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let q_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut f = std::fs::File::create(path).unwrap();
        gguf_file::write(&mut f, &meta_refs, &q_refs).unwrap();
    }
}

/// GPT-2's byte-to-character table: every byte as a printable character.
fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!'..=b'~')
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .map(u32::from)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in bs.iter().zip(&cs) {
        table[*b as usize] = char::from_u32(*c).unwrap();
    }
    table
}

/// A byte-level BPE tokenizer without merges (ids 0..256 are bytes), with ChatML's two
/// control tokens at 256 and 257: enough to run the chat template end to end.
pub fn write_tokenizer(dir: &Path) {
    let vocab: serde_json::Map<String, serde_json::Value> = byte_chars()
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), serde_json::json!(i)))
        .chain([
            ("<|im_start|>".to_string(), serde_json::json!(256)),
            ("<|im_end|>".to_string(), serde_json::json!(257)),
        ])
        .collect();
    let added = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let tok = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [added(256, "<|im_start|>"), added(257, "<|im_end|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []}
    });
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_string(&tok).unwrap(),
    )
    .unwrap();
    let chatml = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    let cfg = serde_json::json!({
        "bos_token": null,
        "eos_token": "<|im_end|>",
        "add_bos_token": false,
        "chat_template": chatml,
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
}
