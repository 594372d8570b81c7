//! The decoding loop: prefill a prompt in chunks, then sample one token at a time until a stop
//! token or the length limit, reporting each token as it is produced.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::Tensor;

use crate::cache::KvCache;
use crate::error::{Error, Result};
use crate::model::{Logits, Model};
use crate::sampling::Sampler;

/// Prompt tokens run per forward pass during prefill (the cache's setting).
pub use crate::cache::DEFAULT_PREFILL_CHUNK;

/// Limits of one generation.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Tokens to generate at most.
    pub max_new: usize,
    /// Tokens that end the answer (EOS, end of turn).
    pub stop: Vec<u32>,
    /// Keep going through stop tokens.
    pub ignore_eos: bool,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token was sampled (it is not part of the output).
    Eos,
    /// `max_new` tokens were generated.
    Length,
    /// The caller asked to stop.
    Cancelled,
}

/// Timings and sizes of one generation.
#[derive(Debug, Clone)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub prompt_secs: f64,
    pub generated: usize,
    pub decode_secs: f64,
    pub retained: usize,
    pub kv_bytes: usize,
    pub profile_bytes: usize,
    pub full_kv_bytes: usize,
    pub stop: StopReason,
}

impl Stats {
    /// Prompt tokens per second.
    pub fn prompt_tps(&self) -> f64 {
        rate(self.prompt_tokens, self.prompt_secs)
    }

    /// Generated tokens per second (the first token's prefill excluded).
    pub fn decode_tps(&self) -> f64 {
        rate(self.generated, self.decode_secs)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Runs `ids` through the model in chunks of the cache's `prefill_chunk` tokens (the cache
/// compresses after each) and returns the last logits (vocab).
pub fn prefill(model: &Model, cache: &mut KvCache, ids: &[u32]) -> Result<Tensor> {
    if ids.is_empty() {
        return Err(Error::arg("prompt", "the prompt is empty: give some text"));
    }
    let chunk = cache.config().prefill_chunk;
    let mut last = None;
    for part in ids.chunks(chunk) {
        last = Some(model.forward(part, cache, Logits::Last)?);
    }
    last.ok_or_else(|| Error::arg("prompt", "the prompt is empty"))
}

/// Prefills `prompt` after whatever `cache` holds, then samples up to `opts.max_new` tokens,
/// calling `on_token` with each one as soon as it is sampled, and the cache as that token's
/// step left it (return `Break` to stop early).
/// Returns the generated tokens (stop token excluded) and the run's statistics.
pub fn generate(
    model: &Model,
    cache: &mut KvCache,
    sampler: &mut Sampler,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32, &mut KvCache) -> ControlFlow<()>,
) -> Result<(Vec<u32>, Stats)> {
    if opts.max_new == 0 {
        return Err(Error::arg(
            "-n",
            "0 tokens requested: give a positive number",
        ));
    }
    let t0 = Instant::now();
    let mut logits = prefill(model, cache, prompt)?;
    let prompt_secs = t0.elapsed().as_secs_f64();

    let mut history = prompt.to_vec();
    let mut out = Vec::new();
    let mut stop = StopReason::Length;
    let t1 = Instant::now();
    loop {
        let row = logits.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        let next = sampler.sample(&row, &history);
        if !opts.ignore_eos && opts.stop.contains(&next) {
            stop = StopReason::Eos;
            break;
        }
        out.push(next);
        history.push(next);
        if on_token(next, cache).is_break() {
            stop = StopReason::Cancelled;
            break;
        }
        if out.len() >= opts.max_new {
            break;
        }
        logits = model.forward(&[next], cache, Logits::Last)?;
    }
    let stats = Stats {
        prompt_tokens: prompt.len(),
        prompt_secs,
        generated: out.len(),
        decode_secs: t1.elapsed().as_secs_f64(),
        retained: cache.retained(),
        kv_bytes: cache.kv_bytes(),
        profile_bytes: cache.profile_bytes(),
        full_kv_bytes: cache.full_kv_bytes(),
        stop,
    };
    Ok((out, stats))
}
