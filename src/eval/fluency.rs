//! Fluency of long generation: each cache generates on its own from the same prompt (seeded
//! sampling, end-of-turn ignored), and a fresh full cache judges the last tokens it produced.
//!
//! The judge sees only the `context` tokens just before the judged ones, so it stays inside
//! the model's trained context however long the generation ran: its perplexity says whether
//! the text is still language, whatever positions the generating cache used. The distinct
//! 4-gram share catches the other failure, a loop, which a judge finds easy to predict.

use std::collections::HashSet;
use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};

use super::{log_softmax, Variant};
use crate::cache::KvCache;
use crate::chat::{encode_chat, ChatTemplate, Message};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::sampling::{Sampler, SamplingParams};
use crate::session::{GenerateOptions, Phase, Session};
use crate::tokenizer::Tokenizer;

/// How long to generate and how to judge it.
#[derive(Debug, Clone)]
pub struct FluencyOptions {
    /// Tokens each cache generates.
    pub tokens: usize,
    /// Tokens at the end that are judged.
    pub judged: usize,
    /// Tokens before them that the judge sees.
    pub context: usize,
    pub sampling: SamplingParams,
}

/// One cache's long generation, judged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fluency {
    pub label: String,
    pub prompt_tokens: usize,
    pub generated: usize,
    pub judged: usize,
    pub context: usize,
    /// Perplexity of the judged tokens under a fresh full cache given `context` tokens.
    pub judge_ppl: f64,
    /// The generating cache's own perplexity of the judged tokens (before sampling filters).
    pub self_ppl: f64,
    /// Distinct 4-grams over all 4-grams of the judged tokens (1 = no repetition).
    pub distinct4: f64,
    pub decode_tps: f64,
    pub kv_bytes: usize,
    pub full_kv_bytes: usize,
    /// The last characters of the generation.
    pub tail: String,
}

/// Distinct n-grams over all n-grams of `ids` (1 when there are none).
pub fn distinct_ngrams(ids: &[u32], n: usize) -> f64 {
    if n == 0 || ids.len() < n {
        return 1.0;
    }
    let grams: Vec<&[u32]> = ids.windows(n).collect();
    let set: HashSet<&[u32]> = grams.iter().copied().collect();
    set.len() as f64 / grams.len() as f64
}

/// Perplexity of `ids[from..]` given `ids[..from]`, under a fresh full cache (one pass).
pub fn judge(model: &Model, ids: &[u32], from: usize) -> Result<f64> {
    if from == 0 || from >= ids.len() {
        return Err(Error::arg(
            "--judge-tokens",
            "nothing to judge: the judged span must follow at least one token of context",
        ));
    }
    let rows = Session::greedy(model, super::reference_cache())?.score(&ids[..ids.len() - 1])?;
    let nll: f64 = (from..ids.len())
        .map(|j| -f64::from(log_softmax(&rows[j - 1])[ids[j] as usize]))
        .sum();
    Ok((nll / (ids.len() - from) as f64).exp())
}

/// Each variant generates `opts.tokens` tokens answering `prompt`; the last `opts.judged` are
/// judged. Every variant samples with the same seed.
pub fn fluency(
    model: &Model,
    tok: &Tokenizer,
    template: &ChatTemplate,
    prompt: &str,
    variants: &[Variant],
    opts: &FluencyOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Fluency>> {
    if opts.judged == 0 || opts.judged > opts.tokens {
        return Err(Error::arg(
            "--judge-tokens",
            format!(
                "{} is not between 1 and the tokens generated ({})",
                opts.judged, opts.tokens
            ),
        ));
    }
    let segments = template.render(&[Message::user(prompt.to_string())], true)?;
    let prompt_ids = encode_chat(tok, &segments)?;
    let total = variants.len() * opts.tokens;
    let mut out = Vec::new();
    for (vi, v) in variants.iter().enumerate() {
        let cache = KvCache::from_config(model.config(), v.cache.clone(), model.device())?;
        let mut session = Session::new(model, cache, Sampler::new(opts.sampling.clone())?);
        session.prefill(&prompt_ids)?;
        let first_judged = opts.tokens - opts.judged;
        let mut self_nll = 0f64;
        let gen = GenerateOptions {
            max_new: opts.tokens,
            stop: Vec::new(),
            ignore_eos: true,
            feed_last: false,
        };
        let answer = session.generate(&gen, |phase, s| {
            if let Phase::Sampled(step) = phase {
                let i = step.generated - 1;
                if i >= first_judged {
                    self_nll -= f64::from(log_softmax(s.logits())[step.token as usize]);
                }
                progress(vi * opts.tokens + i + 1, total);
            }
            ControlFlow::Continue(())
        })?;
        let secs = answer.decode_secs;
        let mut history = prompt_ids.clone();
        history.extend_from_slice(&answer.tokens);
        let cache = session.cache();
        let end = history.len();
        let start = end.saturating_sub(opts.judged + opts.context);
        let judged = &history[end - opts.judged..];
        let judge_ppl = judge(model, &history[start..], end - opts.judged - start)?;
        let text = tok.decode(judged)?;
        let chars: Vec<char> = text.chars().collect();
        let tail: String = chars[chars.len().saturating_sub(240)..].iter().collect();
        out.push(Fluency {
            label: v.label.clone(),
            prompt_tokens: prompt_ids.len(),
            generated: opts.tokens,
            judged: opts.judged,
            context: end - opts.judged - start,
            judge_ppl,
            self_ppl: (self_nll / opts.judged as f64).exp(),
            distinct4: distinct_ngrams(judged, 4),
            decode_tps: if secs > 0.0 {
                opts.tokens as f64 / secs
            } else {
                0.0
            },
            kv_bytes: cache.kv_bytes(),
            full_kv_bytes: cache.full_kv_bytes(),
            tail,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_ngrams_counts_repeats() {
        assert_eq!(distinct_ngrams(&[1, 2, 3, 4, 5], 4), 1.0);
        // A loop of period 2: only two distinct 4-grams among six.
        let looped = [1, 2, 1, 2, 1, 2, 1, 2, 1];
        assert!((distinct_ngrams(&looped, 4) - 2.0 / 6.0).abs() < 1e-12);
        assert_eq!(distinct_ngrams(&[1, 2], 4), 1.0);
    }
}
