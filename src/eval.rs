//! `morphkv eval`: how closely each bounded cache follows the full cache, and what it saves.
//!
//! The full cache, keys and values in f32 ([`reference_cache`]), is the reference for every
//! figure; a full cache of another KV type is measured against it like any other. Four
//! measurements:
//! - [`teacher_forced`]: a long text fed token by token under each cache; per position, the
//!   cache's next-token log-probability and distribution against full's (perplexity and its
//!   change, KL(full ‖ cache), top-1 agreement), overall and per bin of positions.
//! - long generation ([`long_generation`]): the full cache generates greedily, then each cache
//!   replays the same tokens teacher-forced; agreement with the model's own answer against
//!   length (the paper's long-response setting).
//! - [`recall`]: a fact stated early in a long conversation, asked for at its end: the answer's
//!   log-probability and whether greedy decoding produces it.
//! - [`fluency`]: each cache generates a long answer on its own (past the trained context if
//!   asked), and a fresh full cache judges its last tokens: is it still language?
//! - [`equal`]: the settings sized so that every policy's cache takes the same bytes
//!   (`--equal-bytes`), for the teacher-forced figures at equal memory.
//! - [`perplexity`]: llama.cpp's `llama-perplexity` procedure (independent chunks of `n_ctx`
//!   tokens, the second half of each scored), to check the full-cache number against that
//!   tool on the same GGUF and text.

pub mod equal;
mod fluency;
pub mod plot;
pub mod report;
mod suite;

use serde::{Deserialize, Serialize};

use crate::cache::{CacheConfig, KvType, PolicyKind};
use crate::chat::{encode_chat, ChatTemplate, Message};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::session::{GenerateOptions, Phase, Session};
use crate::tokenizer::Tokenizer;
use std::ops::ControlFlow;

pub use fluency::{distinct_ngrams, fluency, judge, Fluency, FluencyOptions};
pub use suite::{load_probes, load_prompts, Probe, Prompt, Text, DEFAULT_TEXTS};

/// The full cache every figure is measured against: keys and values in f32, whatever
/// `--kv-type` says.
pub fn reference_cache() -> CacheConfig {
    CacheConfig {
        kv_type: KvType::F32,
        ..CacheConfig::full()
    }
}

/// One cache setting under test, with a label for tables.
#[derive(Debug, Clone)]
pub struct Variant {
    pub label: String,
    pub cache: CacheConfig,
}

impl Variant {
    /// Labels a setting by its policy and the knobs that matter for it.
    pub fn new(cache: CacheConfig) -> Self {
        let mut label = cache.policy.name().to_string();
        if cache.policy != PolicyKind::Full {
            label.push_str(&format!(" b{}", cache.budget));
            if matches!(cache.policy, PolicyKind::MorphKv | PolicyKind::H2o) {
                label.push_str(&format!(" w{}", cache.window()));
            }
            if cache.policy == PolicyKind::MorphKv {
                label.push_str(&format!(" {:?}", cache.fusion).to_lowercase());
                if cache.history > 0 {
                    label.push_str(&format!(" h{}%", cache.history));
                    if cache.half_life != crate::cache::DEFAULT_HALF_LIFE {
                        label.push_str(&format!(" hl{}", cache.half_life));
                    }
                }
            }
            if cache.recent() > 0 {
                label.push_str(&format!(" r{}%", cache.recent()));
            }
            if cache.positions == crate::cache::Positions::Rebased {
                label.push_str(" rebased");
            }
        }
        // The KV type when it is not the default, and a full cache's when it is not the
        // reference's.
        let kv = cache.kv_type;
        if kv != KvType::default() || (cache.policy == PolicyKind::Full && kv != KvType::F32) {
            label.push_str(&format!(" {kv}"));
        }
        // The profile's storage when it is not the default and the policy keeps rows.
        let rows = cache.build_policy().needs().rows;
        if rows > 0 && cache.profile != crate::cache::ProfileType::default() {
            label.push_str(&format!(" profile {}", cache.profile));
        }
        Self { label, cache }
    }
}

/// Fidelity figures over one range of positions.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Span {
    /// First and one-past-last position scored (positions of predicted tokens).
    pub from: usize,
    pub to: usize,
    /// Predictions scored.
    pub count: usize,
    /// Perplexity of the full cache and of this cache on the same tokens.
    pub ppl_full: f64,
    pub ppl: f64,
    /// (ppl / ppl_full − 1) · 100.
    pub ppl_change_pct: f64,
    /// Mean KL(full ‖ this cache) over the vocabulary, in nats.
    pub kl: f64,
    /// Fraction of positions where both caches' most likely next token is the same.
    pub top1: f64,
}

/// One cache's fidelity against the full cache, overall and per bin, with its memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fidelity {
    pub label: String,
    pub policy: String,
    pub budget: usize,
    pub window: usize,
    pub overall: Span,
    pub bins: Vec<Span>,
    /// Memory at the end of the run: this cache's KV and profile bytes, and a full cache's
    /// KV bytes for the same tokens.
    pub kv_bytes: usize,
    pub profile_bytes: usize,
    pub full_kv_bytes: usize,
    /// Tokens per KV head retained at the end.
    pub retained: usize,
}

impl Fidelity {
    /// (KV + profile bytes) as a fraction of the full cache's KV bytes.
    pub fn memory_ratio(&self) -> f64 {
        (self.kv_bytes + self.profile_bytes) as f64 / self.full_kv_bytes.max(1) as f64
    }
}

/// Per-position records of one cache against full, accumulated over texts.
#[derive(Debug, Clone, Default)]
struct Trace {
    /// (position, nll_full, nll, kl, same top-1)
    rows: Vec<(usize, f64, f64, f64, bool)>,
    kv_bytes: usize,
    profile_bytes: usize,
    full_kv_bytes: usize,
    retained: usize,
}

impl Trace {
    fn span(&self, from: usize, to: usize) -> Span {
        let rows: Vec<_> = self
            .rows
            .iter()
            .filter(|r| r.0 >= from && r.0 < to)
            .collect();
        let n = rows.len().max(1) as f64;
        let ppl_full = (rows.iter().map(|r| r.1).sum::<f64>() / n).exp();
        let ppl = (rows.iter().map(|r| r.2).sum::<f64>() / n).exp();
        Span {
            from,
            to,
            count: rows.len(),
            ppl_full,
            ppl,
            ppl_change_pct: (ppl / ppl_full - 1.0) * 100.0,
            kl: rows.iter().map(|r| r.3).sum::<f64>() / n,
            top1: rows.iter().filter(|r| r.4).count() as f64 / n,
        }
    }

    fn fidelity(&self, v: &Variant, bin: usize) -> Fidelity {
        let from = self.rows.iter().map(|r| r.0).min().unwrap_or(0);
        let to = self.rows.iter().map(|r| r.0 + 1).max().unwrap_or(0);
        let bin = bin.max(1);
        let bins = (from / bin * bin..to)
            .step_by(bin)
            .map(|b| self.span(b.max(from), (b + bin).min(to)))
            .filter(|s| s.count > 0)
            .collect();
        Fidelity {
            label: v.label.clone(),
            policy: v.cache.policy.name().to_string(),
            budget: v.cache.budget,
            window: v.cache.window(),
            overall: self.span(from, to),
            bins,
            kv_bytes: self.kv_bytes,
            profile_bytes: self.profile_bytes,
            full_kv_bytes: self.full_kv_bytes,
            retained: self.retained,
        }
    }
}

/// Log-softmax of one row of logits (the normaliser summed in f64: a vocabulary of ~50k
/// terms summed in f32 would shift every log-probability by ~1e-4).
fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| f64::from(x - max).exp()).sum();
    let lse = sum.ln() + f64::from(max);
    logits
        .iter()
        .map(|&x| (f64::from(x) - lse) as f32)
        .collect()
}

fn argmax(xs: &[f32]) -> usize {
    crate::sampling::argmax(xs) as usize
}

/// KL(p ‖ q) from log-probabilities, in nats.
fn kl(lp: &[f32], lq: &[f32]) -> f64 {
    lp.iter()
        .zip(lq)
        .map(|(&a, &b)| {
            let p = f64::from(a).exp();
            if p > 0.0 {
                p * f64::from(a - b)
            } else {
                0.0
            }
        })
        .sum::<f64>()
        .max(0.0)
}

/// How the full cache's reference predictions are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reference {
    /// Token by token, exactly as the caches under test run: `full` against itself and any
    /// cache whose budget holds the whole text give exactly full's figures.
    #[default]
    Exact,
    /// In chunks of 128 tokens (much faster on long texts, since the full cache's decode
    /// slows with length); differs from token-by-token only by float rounding (~1e-5).
    Fast,
}

/// Scores `tokens[score_from..]` under every variant against the full cache. The prefix
/// `tokens[..score_from]` is prefilled (in each cache's chunks, compressing after each, as a
/// prompt is); every later token is fed one at a time, so bounded caches evict exactly as
/// they do while decoding. `progress(done, total)` is called as positions are scored.
fn trace_tokens(
    model: &Model,
    tokens: &[u32],
    score_from: usize,
    variants: &[Variant],
    reference: Reference,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Trace>> {
    let score_from = score_from.max(1);
    if tokens.len() <= score_from {
        return Err(Error::arg(
            "--tokens",
            format!(
                "a text of {} tokens leaves nothing to score after the first {score_from}",
                tokens.len()
            ),
        ));
    }
    let mut full = Session::greedy(model, reference_cache())?;
    let mut sessions = variants
        .iter()
        .map(|v| Session::greedy(model, v.cache.clone()))
        .collect::<Result<Vec<_>>>()?;
    for s in &mut sessions {
        s.prefill(&tokens[..score_from])?;
    }
    // Exact: the full cache's current logits, advanced one token at a time.
    if reference == Reference::Exact {
        full.prefill(&tokens[..score_from])?;
    } else if score_from > 1 {
        full.prefill(&tokens[..score_from - 1])?;
    }
    let mut traces = vec![Trace::default(); variants.len()];
    let total = tokens.len() - score_from;
    const CHUNK: usize = 128;
    let mut j = score_from;
    while j < tokens.len() {
        let end = (j + CHUNK).min(tokens.len());
        // Fast: rows r predict tokens[j + r] from tokens[.. j + r].
        let chunk_rows = if reference == Reference::Fast {
            full.score(&tokens[j - 1..end - 1])?
        } else {
            Vec::new()
        };
        for pos in j..end {
            let target = tokens[pos] as usize;
            let row = match reference {
                Reference::Fast => &chunk_rows[pos - j],
                Reference::Exact => full.logits(),
            };
            let lf = log_softmax(row);
            let top_full = argmax(row);
            for (trace, s) in traces.iter_mut().zip(&mut sessions) {
                let lg = s.logits();
                let lq = log_softmax(lg);
                trace.rows.push((
                    pos,
                    -f64::from(lf[target]),
                    -f64::from(lq[target]),
                    kl(&lf, &lq),
                    argmax(lg) == top_full,
                ));
                if pos + 1 < tokens.len() {
                    s.feed(tokens[pos])?;
                }
            }
            if reference == Reference::Exact && pos + 1 < tokens.len() {
                full.feed(tokens[pos])?;
            }
            progress(pos + 1 - score_from, total);
        }
        j = end;
    }
    for (trace, s) in traces.iter_mut().zip(&sessions) {
        let cache = s.cache();
        trace.kv_bytes = cache.kv_bytes();
        trace.profile_bytes = cache.profile_bytes();
        trace.full_kv_bytes = cache.full_kv_bytes();
        trace.retained = cache.retained();
    }
    Ok(traces)
}

/// Teacher-forced fidelity over `texts` (each already tokenized), per variant: the texts'
/// positions are pooled, bins are `bin` positions wide.
pub fn teacher_forced(
    model: &Model,
    texts: &[Vec<u32>],
    variants: &[Variant],
    bin: usize,
    reference: Reference,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Fidelity>> {
    let total: usize = texts.iter().map(|t| t.len().saturating_sub(1)).sum();
    let mut done = 0;
    let mut pooled = vec![Trace::default(); variants.len()];
    for text in texts {
        let traces = trace_tokens(model, text, 1, variants, reference, &mut |d, _| {
            progress(done + d, total)
        })?;
        done += text.len().saturating_sub(1);
        merge(&mut pooled, traces);
    }
    Ok(pooled
        .iter()
        .zip(variants)
        .map(|(t, v)| t.fidelity(v, bin))
        .collect())
}

fn merge(pooled: &mut [Trace], traces: Vec<Trace>) {
    for (p, t) in pooled.iter_mut().zip(traces) {
        p.rows.extend(t.rows);
        // Memory: the largest conversation's figures (all texts end at similar lengths).
        if t.full_kv_bytes >= p.full_kv_bytes {
            (p.kv_bytes, p.profile_bytes, p.full_kv_bytes, p.retained) =
                (t.kv_bytes, t.profile_bytes, t.full_kv_bytes, t.retained);
        }
    }
}

/// The full cache's greedy answer to one prompt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub prompt: String,
    pub prompt_tokens: usize,
    pub generated: usize,
    /// The first characters of the answer, for the report.
    pub preview: String,
}

/// Long generation: for each prompt, the full cache answers greedily with `n` tokens
/// (end-of-turn ignored), then every variant replays prompt + answer teacher-forced.
/// Positions are counted from the start of the answer; bins are `bin` tokens of answer.
#[allow(clippy::too_many_arguments)]
pub fn long_generation(
    model: &Model,
    tok: &Tokenizer,
    template: &ChatTemplate,
    prompts: &[Prompt],
    n: usize,
    variants: &[Variant],
    bin: usize,
    reference: Reference,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<Fidelity>, Vec<Answer>)> {
    let total = prompts.len() * n * 2;
    let mut done = 0;
    let mut pooled = vec![Trace::default(); variants.len()];
    let mut answers = Vec::new();
    for p in prompts {
        let segments = template.render(&[Message::user(p.text.clone())], true)?;
        let prompt = encode_chat(tok, &segments)?;
        let mut session = Session::greedy(model, reference_cache())?;
        session.prefill(&prompt)?;
        let opts = GenerateOptions {
            max_new: n,
            stop: Vec::new(),
            ignore_eos: true,
            feed_last: false,
        };
        let answer = session
            .generate(&opts, |phase, _| {
                if let Phase::Sampled(_) = phase {
                    done += 1;
                    progress(done, total);
                }
                ControlFlow::Continue(())
            })?
            .tokens;
        let text: Vec<u32> = prompt.iter().chain(&answer).copied().collect();
        let base = done;
        let mut traces = trace_tokens(
            model,
            &text,
            prompt.len(),
            variants,
            reference,
            &mut |d, _| progress(base + d, total),
        )?;
        done += n;
        for t in &mut traces {
            for r in &mut t.rows {
                r.0 -= prompt.len();
            }
        }
        merge(&mut pooled, traces);
        let preview: String = tok.decode(&answer)?.chars().take(160).collect();
        answers.push(Answer {
            prompt: p.name.clone(),
            prompt_tokens: prompt.len(),
            generated: answer.len(),
            preview,
        });
    }
    let fid = pooled
        .iter()
        .zip(variants)
        .map(|(t, v)| t.fidelity(v, bin))
        .collect();
    Ok((fid, answers))
}

/// One recall probe under one cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecallResult {
    pub label: String,
    pub probe: String,
    /// Tokens between the fact and the question.
    pub distance: usize,
    /// Log-probability of the answer's tokens after the question (teacher-forced).
    pub answer_logprob: f64,
    /// Whether the greedy reply contains the answer.
    pub recalled: bool,
    /// The greedy reply (short).
    pub reply: String,
}

/// Builds the probe conversation: the fact, then `filler` tokens of text in turns of about
/// 400 tokens ("read this"), then the question; returns the prompt tokens and the distance.
fn probe_prompt(
    tok: &Tokenizer,
    template: &ChatTemplate,
    probe: &Probe,
    filler: &[u32],
) -> Result<(Vec<u32>, usize)> {
    let mut messages = Vec::new();
    let mut first = true;
    for part in filler.chunks(400) {
        let passage = tok.decode(part)?;
        let intro = if first {
            format!(
                "{}\n\nNow please read this passage; I will ask you something later.\n\n",
                probe.fact
            )
        } else {
            "Here is the next part of the passage.\n\n".to_string()
        };
        first = false;
        messages.push(Message::user(format!("{intro}{passage}")));
        messages.push(Message::assistant("I have read it."));
    }
    if first {
        messages.push(Message::user(probe.fact.clone()));
        messages.push(Message::assistant("Noted."));
    }
    let before = encode_chat(tok, &template.render(&messages, false)?)?.len();
    messages.push(Message::user(probe.question.clone()));
    let ids = encode_chat(tok, &template.render(&messages, true)?)?;
    Ok((ids, before))
}

/// Recall probes: each probe's conversation (fact, `filler_tokens` of `filler`, question) is
/// prefilled under every variant (and the full cache); the answer's log-probability is
/// scored teacher-forced and a greedy reply of up to `reply_tokens` is checked for it.
#[allow(clippy::too_many_arguments)]
pub fn recall(
    model: &Model,
    tok: &Tokenizer,
    template: &ChatTemplate,
    probes: &[Probe],
    filler: &[u32],
    filler_tokens: usize,
    variants: &[Variant],
    reply_tokens: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<RecallResult>> {
    let mut all = vec![Variant::new(reference_cache())];
    all.extend(
        variants
            .iter()
            .filter(|v| v.cache.policy != PolicyKind::Full)
            .cloned(),
    );
    let filler = &filler[..filler_tokens.min(filler.len())];
    let total = probes.len() * all.len();
    let mut out = Vec::new();
    for (i, probe) in probes.iter().enumerate() {
        let (prompt, distance) = probe_prompt(tok, template, probe, filler)?;
        let answer = tok.encode_plain(&probe.answer)?;
        for (k, v) in all.iter().enumerate() {
            let mut session = Session::greedy(model, v.cache.clone())?;
            session.prefill(&prompt)?;
            // Teacher-forced answer log-probability, on a fork of the prompt's session.
            let mut scoring = session.fork()?;
            let mut lp = log_softmax(session.logits());
            let mut logprob = 0.0;
            for (n, &a) in answer.iter().enumerate() {
                logprob += f64::from(lp[a as usize]);
                if n + 1 < answer.len() {
                    lp = log_softmax(scoring.feed(a)?);
                }
            }
            // Greedy reply.
            let reply = if reply_tokens == 0 {
                Vec::new()
            } else {
                let opts = GenerateOptions {
                    max_new: reply_tokens,
                    stop: tok.stop_ids().to_vec(),
                    ignore_eos: false,
                    feed_last: false,
                };
                session
                    .generate(&opts, |_, _| ControlFlow::Continue(()))?
                    .tokens
            };
            let reply = tok.decode(&reply)?;
            out.push(RecallResult {
                label: v.label.clone(),
                probe: probe.name.clone(),
                distance,
                answer_logprob: logprob,
                recalled: reply.contains(&probe.answer),
                reply: reply.trim().chars().take(80).collect(),
            });
            progress(i * all.len() + k + 1, total);
        }
    }
    Ok(out)
}

/// The result of llama.cpp's perplexity procedure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Perplexity {
    pub n_ctx: usize,
    pub chunks: usize,
    /// Running estimate after each chunk, as `llama-perplexity` prints it.
    pub running: Vec<f64>,
    pub ppl: f64,
    /// Standard error of the estimate (llama.cpp's formula).
    pub stderr: f64,
}

/// Perplexity as `llama-perplexity` computes it: the tokens are cut into chunks of `n_ctx`;
/// each chunk runs from an empty cache, its first token replaced by BOS when the model adds
/// one; the second half of each chunk is scored. Full cache (a chunk is one forward pass).
pub fn perplexity(
    model: &Model,
    tok: &Tokenizer,
    tokens: &[u32],
    n_ctx: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Perplexity> {
    if n_ctx < 16 {
        return Err(Error::arg("--ctx-size", "must be at least 16"));
    }
    let chunks = tokens.len() / n_ctx;
    if chunks == 0 {
        return Err(Error::arg(
            "--ctx-size",
            format!(
                "the text has {} tokens, fewer than one chunk of {n_ctx}: give a longer text or a smaller --ctx-size",
                tokens.len()
            ),
        ));
    }
    let first = n_ctx / 2;
    let (mut sum, mut sum2, mut count) = (0f64, 0f64, 0usize);
    let mut running = Vec::new();
    for c in 0..chunks {
        let mut ids = tokens[c * n_ctx..(c + 1) * n_ctx].to_vec();
        if tok.add_bos() {
            if let Some(bos) = tok.bos_id() {
                ids[0] = bos;
            }
        }
        let rows = Session::greedy(model, reference_cache())?.score(&ids)?;
        for j in first..n_ctx - 1 {
            let nll = -f64::from(log_softmax(&rows[j])[ids[j + 1] as usize]);
            sum += nll;
            sum2 += nll * nll;
            count += 1;
        }
        running.push((sum / count as f64).exp());
        progress(c + 1, chunks);
    }
    let mean = sum / count as f64;
    let var = (sum2 / count as f64 - mean * mean).max(0.0);
    let ppl = mean.exp();
    Ok(Perplexity {
        n_ctx,
        chunks,
        running,
        ppl,
        stderr: ppl * (var / (count as f64 - 1.0).max(1.0)).sqrt(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_normalises_and_kl_of_equal_is_zero() {
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let total: f32 = lp.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!(kl(&lp, &lp).abs() < 1e-9);
        let lq = log_softmax(&[3.0, 2.0, 1.0]);
        assert!(kl(&lp, &lq) > 0.1);
    }

    #[test]
    fn spans_pool_positions_into_bins() {
        let mut t = Trace::default();
        for pos in 1..11 {
            // nll_full = 1, nll = 1 + pos/10, agree on even positions
            t.rows
                .push((pos, 1.0, 1.0 + pos as f64 / 10.0, 0.5, pos % 2 == 0));
        }
        let v = Variant::new(CacheConfig::full());
        let f = t.fidelity(&v, 4);
        assert_eq!(f.overall.count, 10);
        assert!((f.overall.ppl_full - 1f64.exp()).abs() < 1e-9);
        assert!((f.overall.top1 - 0.5).abs() < 1e-9);
        assert_eq!(
            f.bins.iter().map(|b| (b.from, b.to)).collect::<Vec<_>>(),
            vec![(1, 4), (4, 8), (8, 11)]
        );
        // Later bins lose more against full.
        assert!(f.bins[2].ppl_change_pct > f.bins[0].ppl_change_pct);
    }
}
