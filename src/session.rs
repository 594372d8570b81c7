//! One decoding session: a model, one cache, a sampler and the tokens fed so far. Every command
//! decodes through it (`generate`, the chat's engine, `eval`, `bench`), so the decode loop
//! exists once, in [`Session::generate`].
//!
//! ```text
//! prefill(ids) ─ chunks of the cache's prefill_chunk ─▶ model.forward ─▶ logits of the last
//! generate(opts, on_step):
//!   loop { token = sampler(logits, fed)          ─▶ on_step(Sampled)
//!          stop token?  ─▶ end (it is not fed)
//!          model.forward([token], cache) ─▶ logits ─▶ on_step(Fed)  (cache as the step left it)
//!          max tokens?  ─▶ end }
//! ```
//!
//! The model is borrowed (weights are immutable and shared by any number of sessions); the
//! cache and the sampler are owned, and can be replaced between turns.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{DType, Tensor};

use crate::cache::{CacheConfig, KvCache};
use crate::error::{Error, Result};
use crate::model::{Logits, Model};
use crate::sampling::{Sampler, SamplingParams};

/// Limits of one [`Session::generate`].
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Tokens to generate at most.
    pub max_new: usize,
    /// Tokens that end the answer (EOS, end of turn).
    pub stop: Vec<u32>,
    /// Keep going through stop tokens.
    pub ignore_eos: bool,
    /// Feed the last token of an answer cut at `max_new` into the cache too (a conversation
    /// goes on after it); otherwise its forward pass is skipped.
    pub feed_last: bool,
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

/// One generated token, as [`Session::generate`] reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub token: u32,
    /// Tokens generated so far, this one included.
    pub generated: usize,
    /// Seconds since the answer's first token was sampled.
    pub decode_secs: f64,
}

/// When [`Session::generate`] calls back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// The token was just sampled from [`Session::logits`]; not fed yet.
    Sampled(Step),
    /// The token went through the model: the cache (evictions included) is as its step
    /// left it, and [`Session::logits`] predicts the next one.
    Fed(Step),
}

/// What one [`Session::generate`] produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The generated tokens, the stop token excluded.
    pub tokens: Vec<u32>,
    pub decode_secs: f64,
    pub stop: StopReason,
}

/// Timings and sizes of one prompt + answer.
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

/// `n / secs`, 0 for no time.
pub fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// A model, one cache and a sampler decoding together.
pub struct Session<'m> {
    model: &'m Model,
    cache: KvCache,
    sampler: Sampler,
    /// Tokens fed into the cache, in order (the sampler's repetition penalty reads the tail).
    fed: Vec<u32>,
    /// Logits after the last token fed, (vocab); empty before the first.
    logits: Vec<f32>,
}

impl<'m> Session<'m> {
    pub fn new(model: &'m Model, cache: KvCache, sampler: Sampler) -> Self {
        Self {
            model,
            cache,
            sampler,
            fed: Vec::new(),
            logits: Vec::new(),
        }
    }

    /// A greedy session over an empty cache managed (and its keys and values stored) as
    /// `cache` says, on the model's device.
    pub fn greedy(model: &'m Model, cache: CacheConfig) -> Result<Self> {
        let cache = KvCache::from_config(model.config(), cache, model.device())?;
        Ok(Self::new(
            model,
            cache,
            Sampler::new(SamplingParams::greedy())?,
        ))
    }

    /// A copy that goes on from the same point on its own: the cache forked, the sampler
    /// cloned (its random state too).
    pub fn fork(&self) -> Result<Self> {
        Ok(Self {
            model: self.model,
            cache: self.cache.fork()?,
            sampler: self.sampler.clone(),
            fed: self.fed.clone(),
            logits: self.logits.clone(),
        })
    }

    pub fn model(&self) -> &'m Model {
        self.model
    }

    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    pub fn cache_mut(&mut self) -> &mut KvCache {
        &mut self.cache
    }

    /// Starts over with `cache` (empty, or a fork of another session's): what was fed is
    /// forgotten.
    pub fn set_cache(&mut self, cache: KvCache) {
        self.cache = cache;
        self.fed.clear();
        self.logits.clear();
    }

    /// Samples with `sampler` from now on.
    pub fn set_sampler(&mut self, sampler: Sampler) {
        self.sampler = sampler;
    }

    /// The tokens fed, in order.
    pub fn fed(&self) -> &[u32] {
        &self.fed
    }

    /// The logits after the last token fed, (vocab); empty before anything was fed.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Runs one forward pass over `ids` (new tokens after everything fed so far).
    fn forward(&mut self, ids: &[u32]) -> Result<()> {
        let l = self.model.forward(ids, &mut self.cache, Logits::Last)?;
        self.logits = row_f32(&l)?;
        self.fed.extend_from_slice(ids);
        Ok(())
    }

    /// Feeds `ids` in chunks of the cache's `prefill_chunk` tokens (the cache compresses after
    /// each); [`Session::logits`] then predicts the token after them.
    pub fn prefill(&mut self, ids: &[u32]) -> Result<()> {
        self.prefill_with(ids, |_, _| {})
    }

    /// [`Session::prefill`], calling `progress(done, total)` after each chunk.
    pub fn prefill_with(
        &mut self,
        ids: &[u32],
        mut progress: impl FnMut(usize, usize),
    ) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::arg("prompt", "the prompt is empty: give some text"));
        }
        let chunk = self.cache.config().prefill_chunk.max(1);
        let mut done = 0;
        for part in ids.chunks(chunk) {
            self.forward(part)?;
            done += part.len();
            progress(done, ids.len());
        }
        Ok(())
    }

    /// Feeds one known token (teacher forcing): [`Session::logits`] then predicts the next.
    pub fn feed(&mut self, id: u32) -> Result<&[f32]> {
        self.forward(&[id])?;
        Ok(&self.logits)
    }

    /// Feeds `ids` in one forward pass and returns the logits of every position,
    /// (T, vocab): row `i` predicts the token after `ids[i]`.
    pub fn score(&mut self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        let rows = self
            .model
            .forward(ids, &mut self.cache, Logits::All)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        if let Some(last) = rows.last() {
            self.logits.clone_from(last);
        }
        self.fed.extend_from_slice(ids);
        Ok(rows)
    }

    /// The next token, drawn from [`Session::logits`] with the tokens fed as history.
    pub fn sample(&mut self) -> u32 {
        self.sampler.sample(&self.logits, &self.fed)
    }

    /// The decode loop: samples a token from the current logits, feeds it, and so on, until a
    /// stop token, `opts.max_new` tokens, or `on_step` breaks. `on_step` sees each token twice:
    /// sampled, then fed (see [`Phase`]). Something must have been fed first.
    pub fn generate(
        &mut self,
        opts: &GenerateOptions,
        mut on_step: impl FnMut(Phase, &mut Self) -> ControlFlow<()>,
    ) -> Result<Outcome> {
        if opts.max_new == 0 {
            return Err(Error::arg(
                "-n",
                "0 tokens requested: give a positive number",
            ));
        }
        if self.logits.is_empty() {
            return Err(Error::arg("prompt", "nothing was fed to answer"));
        }
        let mut tokens = Vec::new();
        let mut stop = StopReason::Length;
        let t0 = Instant::now();
        loop {
            let token = self.sample();
            if !opts.ignore_eos && opts.stop.contains(&token) {
                stop = StopReason::Eos;
                break;
            }
            tokens.push(token);
            let step = |t0: Instant| Step {
                token,
                generated: tokens.len(),
                decode_secs: t0.elapsed().as_secs_f64(),
            };
            if on_step(Phase::Sampled(step(t0)), self).is_break() {
                stop = StopReason::Cancelled;
                break;
            }
            let last = tokens.len() >= opts.max_new;
            if last && !opts.feed_last {
                break;
            }
            self.forward(&[token])?;
            if on_step(Phase::Fed(step(t0)), self).is_break() {
                stop = StopReason::Cancelled;
                break;
            }
            if last {
                break;
            }
        }
        Ok(Outcome {
            tokens,
            decode_secs: t0.elapsed().as_secs_f64(),
            stop,
        })
    }

    /// Prefills `prompt`, then [`Session::generate`]s: the `generate` command's whole run.
    pub fn run(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_step: impl FnMut(Phase, &mut Self) -> ControlFlow<()>,
    ) -> Result<(Vec<u32>, Stats)> {
        let t0 = Instant::now();
        self.prefill(prompt)?;
        let prompt_secs = t0.elapsed().as_secs_f64();
        let out = self.generate(opts, on_step)?;
        let c = &self.cache;
        let stats = Stats {
            prompt_tokens: prompt.len(),
            prompt_secs,
            generated: out.tokens.len(),
            decode_secs: out.decode_secs,
            retained: c.retained(),
            kv_bytes: c.kv_bytes(),
            profile_bytes: c.profile_bytes(),
            full_kv_bytes: c.full_kv_bytes(),
            stop: out.stop,
        };
        Ok((out.tokens, stats))
    }
}

/// A (vocab) logits tensor as f32 values.
fn row_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}
