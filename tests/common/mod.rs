//! Shared test helpers.
#![allow(dead_code)]

use std::path::PathBuf;

/// The default model (SmolLM2-135M-Instruct GGUF), fetched on first use like a user's run.
pub fn default_model() -> PathBuf {
    morphkv::models::resolve(None, &mut |l| eprintln!("{l}")).expect("default model")
}

/// The default model and its tokenizer, loaded on the CPU as the chat loads them.
pub fn load_default() -> (morphkv::model::Model, morphkv::tokenizer::Tokenizer) {
    let path = default_model();
    let (ct, mut reader) = morphkv::model::open_gguf(&path).expect("open the default model");
    let model = morphkv::model::Model::from_gguf(
        &ct,
        &mut reader,
        &path,
        &candle_core::Device::Cpu,
        morphkv::model::WeightFormat::Auto,
    )
    .expect("load the default model");
    let tok = morphkv::tokenizer::Tokenizer::from_gguf(&ct, &path).expect("its tokenizer");
    (model, tok)
}

/// Largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub mod gguf_edit;
pub mod tiny;
