//! morphkv: local language models with a constant-size KV cache (MorphKV, arXiv 2503.00979).
//!
//! Module map (each module has one owner and one job):
//! - [`model`]: config, GGUF loading, weights and the explicit decoder `forward`; knows tensors
//!   and file formats, never policies.
//! - [`kernels`]: CPU kernels for single-token decoding (quantized and f32 matrix × vector,
//!   attention over one query, f16 rows), a safe facade that picks the fastest version the CPU
//!   runs.
//! - [`device`]: `--device`: parsing it and opening the best device a build supports.
//! - [`cache`]: the slot KV cache the decoder writes into and reads from; owns storage,
//!   positions and the attention rows the eviction policies score.
//! - [`tokenizer`]: tokenizers built from GGUF metadata or `tokenizer.json`, incremental
//!   detokenizing for streaming.
//! - [`chat`]: chat templates (Jinja via minijinja) and messages; templates from model files
//!   render with a budget, in a child process with memory and time limits ([`chat::sandbox`]).
//! - [`sampling`]: greedy, temperature, top-k, top-p, min-p, repetition penalty, seeded.
//! - [`session`]: one model + cache + sampler decoding: prefill and the one decode loop, which
//!   every command drives.
//! - [`models`]: presets (`models.toml`) and resolving `-m` (path, preset or Hub repo).
//! - [`hub`]: Hugging Face Hub downloads into the shared cache: progress, resume, hash checks.
//! - [`bench`]: speed of our decoder against candle-transformers' reference.
//! - [`eval`]: fidelity of each cache against the full cache (tables, JSON, plots).
//! - [`engine`]: model + tokenizer + one conversation's cache on their own thread, speaking
//!   plain-data commands and events.
//! - [`tui`]: the terminal chat (state, update, view, themes, saved chats); no candle in it.
//! - [`error`]: the library's one error type.
//!
//! `unsafe` is denied crate-wide (`Cargo.toml`) and allowed in three places only: the private
//! `kernels::x86` module (the AVX2 / AVX-512 intrinsics, reached through safe functions that
//! take a CPU-feature token), two `rlimit` calls in [`chat::sandbox`], and two glibc allocator
//! settings in [`engine`] (pages of big blocks go back to the OS).

pub mod bench;
pub mod cache;
pub mod chat;
pub mod device;
pub mod engine;
pub mod error;
pub mod eval;
pub mod hub;
pub mod kernels;
pub mod model;
pub mod models;
pub mod sampling;
pub mod session;
pub mod tokenizer;
pub mod tui;

pub use error::{Error, Result};
