//! Shared test helpers.
#![allow(dead_code)]

use std::path::PathBuf;

/// The default model (SmolLM2-135M-Instruct GGUF), fetched on first use like a user's run.
pub fn default_model() -> PathBuf {
    morphkv::models::resolve(None, &mut |l| eprintln!("{l}")).expect("default model")
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
