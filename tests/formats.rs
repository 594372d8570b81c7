//! One tiny random model written both as a safetensors checkpoint and as the GGUF llama.cpp's
//! converter makes of it: both load into the same decoder and give the same logits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use common::max_abs_diff;
use common::tiny::Tiny;
use morphkv::cache::KvCache;
use morphkv::model::{load, open_gguf, Checkpoint, Logits, Model, WeightFormat};

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("morphkv-formats-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn logits(m: &Model, ids: &[u32]) -> Vec<f32> {
    let mut cache = KvCache::new(m.config(), DType::F32, &Device::Cpu).unwrap();
    m.forward(ids, &mut cache, Logits::All)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Writes `t` both ways, loads both (f32), and returns the largest logit difference.
fn both_ways(t: &Tiny, name: &str) -> (f32, f32) {
    let dir = tmp(name);
    let st = dir.join("st");
    t.write_safetensors(&st, DType::F32);
    let gguf = dir.join("tiny.gguf");
    t.write_gguf(&gguf);
    assert_eq!(
        Checkpoint::detect(&st).unwrap(),
        Checkpoint::Safetensors(st.clone())
    );
    assert_eq!(
        Checkpoint::detect(&gguf).unwrap(),
        Checkpoint::Gguf(gguf.clone())
    );
    let (a, _) = load(&st, &Device::Cpu, WeightFormat::F32).unwrap();
    // The tiny GGUF has no tokenizer in it: load its decoder alone.
    let (ct, mut reader) = open_gguf(&gguf).unwrap();
    let b = Model::from_gguf(&ct, &mut reader, &gguf, &Device::Cpu, WeightFormat::F32).unwrap();
    // Long enough that RoPE's lower frequencies (the ones Llama 3 scales) matter.
    let ids: Vec<u32> = (0..200u32).map(|i| (i * 37 + 11) % 256).collect();
    let (la, lb) = (logits(&a, &ids), logits(&b, &ids));
    let spread = la.iter().fold(0f32, |m, x| m.max(x.abs()));
    let _ = std::fs::remove_dir_all(&dir);
    (max_abs_diff(&la, &lb), spread)
}

#[test]
fn llama_safetensors_and_gguf_give_the_same_logits() {
    let (diff, spread) = both_ways(&Tiny::llama(), "llama");
    assert!(spread > 0.5, "logits too flat to compare: {spread}");
    assert!(diff < 1e-4, "max |Δlogit| = {diff}");
}

#[test]
fn llama3_rope_scaling_and_tied_embeddings_match_across_formats() {
    let t = Tiny {
        tied: true,
        llama3_rope: Some((8.0, 1.0, 4.0, 64.0)),
        ..Tiny::llama()
    };
    let (diff, _) = both_ways(&t, "llama3");
    assert!(diff < 1e-4, "max |Δlogit| = {diff}");
}

#[test]
fn qwen2_biases_match_across_formats() {
    let t = Tiny {
        arch: "qwen2",
        ..Tiny::llama()
    };
    let (diff, _) = both_ways(&t, "qwen2");
    assert!(diff < 1e-4, "max |Δlogit| = {diff}");
}

#[test]
fn rope_scaling_changes_the_logits() {
    // The scaled model must differ from the plain one, or the tests above prove nothing
    // about scaling.
    let dir = tmp("scaling");
    let plain = Tiny::llama();
    let scaled = Tiny {
        llama3_rope: Some((8.0, 1.0, 4.0, 64.0)),
        ..Tiny::llama()
    };
    plain.write_safetensors(&dir.join("a"), DType::F32);
    scaled.write_safetensors(&dir.join("b"), DType::F32);
    let (a, _) = load(&dir.join("a"), &Device::Cpu, WeightFormat::F32).unwrap();
    let (b, _) = load(&dir.join("b"), &Device::Cpu, WeightFormat::F32).unwrap();
    let ids: Vec<u32> = (0..200u32).map(|i| (i * 37 + 11) % 256).collect();
    assert!(max_abs_diff(&logits(&a, &ids), &logits(&b, &ids)) > 1e-3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn half_precision_checkpoints_load() {
    let dir = tmp("half");
    let t = Tiny::llama();
    t.write_safetensors(&dir.join("f32"), DType::F32);
    let (reference, _) = load(&dir.join("f32"), &Device::Cpu, WeightFormat::F32).unwrap();
    let ids: Vec<u32> = (0..40u32).collect();
    let want = logits(&reference, &ids);
    for dtype in [DType::F16, DType::BF16] {
        let d = dir.join(format!("{dtype:?}"));
        t.write_safetensors(&d, dtype);
        let (m, tok) = load(&d, &Device::Cpu, WeightFormat::F32).unwrap();
        let got = logits(&m, &ids);
        let diff = max_abs_diff(&want, &got);
        assert!(diff < 0.1, "{dtype:?}: max |Δlogit| = {diff}");
        assert_eq!(
            tok.decode(&tok.encode_plain("héllo").unwrap()).unwrap(),
            "héllo"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn broken_checkpoints_are_named() {
    let dir = tmp("broken");
    let t = Tiny::llama();
    t.write_safetensors(&dir, DType::F32);
    // A corrupt weights file.
    std::fs::write(dir.join("model.safetensors"), b"not safetensors").unwrap();
    let e = load(&dir, &Device::Cpu, WeightFormat::F32)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("download it again"),
        "{e}"
    );
    // No config.json.
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = load(&dir, &Device::Cpu, WeightFormat::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("config.json"), "{e}");
    // An architecture the decoder lacks.
    let mut c = t.config_json();
    c["model_type"] = serde_json::json!("gpt_neox");
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    let e = load(&dir, &Device::Cpu, WeightFormat::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gpt_neox") && e.contains("supported"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_file_of_mixed_quantized_types_runs_each_through_its_own_kernel() {
    // q and k Q4_0 beside a Q8_0 v (as a Q4_K_M file's Q4_K q/k beside its Q6_K v): the
    // fused projection keeps each part in its own type instead of one f32 matrix. The
    // embedding is Q4_1 and tied to the output layer, so it is held once in its blocks.
    let t = Tiny {
        tied: true,
        quant: &[
            ("attn_q", GgmlDType::Q4_0),
            ("attn_k", GgmlDType::Q4_0),
            ("attn_v", GgmlDType::Q8_0),
            ("attn_output", GgmlDType::Q8_0),
            ("ffn_gate", GgmlDType::Q4_1),
            ("ffn_up", GgmlDType::Q4_0),
            ("ffn_down", GgmlDType::Q4_1),
            ("token_embd", GgmlDType::Q4_1),
        ],
        ..Tiny::llama()
    };
    let dir = tmp("mixed");
    let gguf = dir.join("mixed.gguf");
    t.write_gguf(&gguf);
    let open = |format| {
        let (ct, mut reader) = open_gguf(&gguf).unwrap();
        Model::from_gguf(&ct, &mut reader, &gguf, &Device::Cpu, format).unwrap()
    };
    // f32: every weight dequantized, the exact arithmetic the kernels approximate with
    // 8-bit activations.
    let (exact, native) = (open(WeightFormat::F32), open(WeightFormat::Auto));
    assert_eq!(native.weight_format(), WeightFormat::Native);
    // Held at the file's size: no f32 matrix for the mixed q/k/v, one copy of the tied
    // embedding, no dense copies (f32 holds about 4 / 0.6 times as much).
    let file: usize = {
        let (ct, _) = open_gguf(&gguf).unwrap();
        ct.tensor_infos
            .values()
            .map(|t| t.shape.elem_count() / t.ggml_dtype.block_size() * t.ggml_dtype.type_size())
            .sum()
    };
    assert!(
        native.weight_bytes() <= file && native.weight_bytes() * 4 > file * 3,
        "{} bytes held for {file} in the file",
        native.weight_bytes()
    );
    assert!(exact.weight_bytes() > 5 * file);
    // 40 tokens: a prompt long enough for the dequantizing GEMM (16 rows and more), then
    // 5 through the 8-bit GEMM, then 3 one at a time (the single-row kernels).
    let ids: Vec<u32> = (0..48u32).map(|i| (i * 37 + 11) % 256).collect();
    let want = logits(&exact, &ids);
    let mut cache = KvCache::new(native.config(), DType::F32, &Device::Cpu).unwrap();
    let mut got = Vec::new();
    for part in [
        &ids[..40],
        &ids[40..45],
        &ids[45..46],
        &ids[46..47],
        &ids[47..],
    ] {
        let l = native.forward(part, &mut cache, Logits::All).unwrap();
        got.extend(l.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    assert_eq!(got.len(), want.len());
    let spread = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = max_abs_diff(&want, &got);
    assert!(diff < 0.05 * spread, "max diff {diff} of spread {spread}");
    // And the difference is the activations' rounding, not nothing: the kernels ran.
    assert!(diff > 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}
