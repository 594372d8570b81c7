//! The engine: a model, its tokenizer and one conversation's cache on a thread of their own.
//!
//! The UI sends [`Command`]s and receives [`Event`]s of plain owned data: no tensor crosses
//! the boundary, so the TUI neither depends on candle nor needs a model in its tests. The
//! conversation lives in the cache: each new turn feeds only the tokens after what the cache
//! has already seen; a conversation that changed earlier (regenerate, edit, a new policy
//! applied now) is prefilled again from the start.
//!
//! Its memory is bounded by the cache's size, not the conversation's length: a step's event
//! carries retention counts stored sparsely past the newest positions, and the eviction
//! history behind the inspector and `/trace` is a ring (see `engine/history.rs`).

use std::ops::ControlFlow;
use std::sync::mpsc::{Receiver, Sender};
use std::time::Instant;

use serde::{Deserialize, Serialize};

mod compare;
mod control;
mod history;
pub mod replay;
mod telemetry;
pub mod trace;
pub mod travel;

pub use compare::divergence_of;
use compare::Compare;
use control::Control;
pub use history::{Record, Retention};
use telemetry::Telemetry;
pub use travel::Travel;

use crate::cache::{CacheConfig, KvCache, LayerAttention};
use crate::chat::{ChatTemplate, Message, Role, Segment};
use crate::error::Result;
use crate::model::Model;
use crate::sampling::{Sampler, SamplingParams};
use crate::session::{rate, GenerateOptions, Phase, Session, StopReason};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// What the UI asks of the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Answer this conversation (its last message is the user's).
    Reply(Vec<Message>),
    /// Run the cache with these settings: at once (the conversation is prefilled again) or
    /// from the next turn that changes the conversation's start.
    SetCache { cache: CacheConfig, now: bool },
    /// Sample with these settings from now on.
    SetSampling(SamplingParams),
    /// Longest answer, in tokens.
    SetMaxTokens(usize),
    /// Which (layer, KV head) the retention view details (None: all).
    Focus(Option<(usize, usize)>),
    /// Which token the inspector details (None: none); every step then reports its fate.
    Inspect(Option<usize>),
    /// Write the conversation's eviction trace as JSON Lines to this file: every eviction the
    /// engine's bounded history still holds (the last four budgets' worth per (layer, KV
    /// head)), and what each pair retains now.
    ExportTrace(std::path::PathBuf),
    /// Time travel: answer with the panels' [`StepInfo`] as it was after this step (the
    /// conversation's length then), marked [`StepInfo::travel`]; None: the live step.
    Travel(Option<usize>),
    /// Forget the conversation.
    Reset,
    /// What the panels on screen need from each step (the rest is not computed).
    Watch(Watch),
    /// Compare mode: a second cache under these settings follows the conversation, fed the
    /// same tokens (None: off). It is fed the conversation so far at once.
    Compare(Option<CacheConfig>),
    /// Stop the answer being generated (nothing when none is).
    Cancel,
    /// Step mode on or off: while on, each token of an answer waits for an [`Command::Advance`].
    Pause(bool),
    /// In step mode, let one more token through.
    Advance,
    /// Stop the thread.
    Quit,
}

/// The per-step details the panels on screen need. Sizes, positions, the focused pair and
/// the inspected token are always reported; these cost per token and are computed only when
/// asked for (both are by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watch {
    /// Where each layer's attention went ([`StepInfo::attention`]).
    pub attention: bool,
    /// How many (layer, KV head) pairs retain each position ([`StepInfo::retention`]).
    pub retention: bool,
}

impl Default for Watch {
    fn default() -> Self {
        Self {
            attention: true,
            retention: true,
        }
    }
}

/// Tokens per second and sizes of one turn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TurnStats {
    pub prompt_tokens: usize,
    pub prompt_tps: f64,
    pub generated: usize,
    pub decode_tps: f64,
}

/// The cache after one step, summarised for the panels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepInfo {
    /// Tokens the conversation has had (positions 0..seen).
    pub seen: usize,
    /// Tokens each KV head holds.
    pub retained: usize,
    pub budget: usize,
    pub kv_bytes: usize,
    pub profile_bytes: usize,
    /// What a full cache would hold now.
    pub full_kv_bytes: usize,
    /// Positions from here on are in the window.
    pub window_from: usize,
    /// Positions from here on are kept whatever their scores (the window, or the recent
    /// share where it is larger).
    pub protected_from: usize,
    pub sinks: usize,
    /// Tokens evicted by this step, over all layers and KV heads.
    pub evicted: usize,
    /// Per position: how many (layer, KV head) pairs retain it, of `pairs` (stored in space
    /// bounded by the cache's size).
    pub retention: Retention,
    pub pairs: usize,
    /// The focused (layer, KV head), if one is focused, and the positions it retains,
    /// ascending.
    pub focus: Option<(usize, usize, Vec<u32>)>,
    /// Per layer: where the last decoded token's attention went.
    pub attention: Vec<LayerAttention>,
    /// Decode speed of the answer so far (0 outside an answer).
    pub decode_tps: f64,
    /// The inspected token's fate in every (layer, KV head), if one is inspected.
    pub inspect: Option<TokenFate>,
    /// The second cache, in compare mode.
    pub compare: Option<Box<CompareStep>>,
    /// Set when this is not the live step but the cache as it was after an earlier one
    /// (answering [`Command::Travel`]).
    pub travel: Option<Travel>,
    /// The oldest step time travel reaches (the bounded eviction history covers the later
    /// ones).
    pub history_from: usize,
}

/// The second cache of compare mode after a step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompareStep {
    /// Its policy's name.
    pub policy: String,
    /// Its decoding time over the main cache's during this answer (1.0: it doubles the time
    /// per token).
    pub cost: f64,
    /// Its sizes, retention and focused pair, as [`StepInfo`] gives the main cache's
    /// (attention and the inspector are the main cache's only).
    pub step: StepInfo,
}

/// How the two caches of compare mode differ on one generated token: over the distributions
/// the token was drawn from (the model's, before temperature and filters).
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    /// Which token of the answer (0: the first).
    pub index: usize,
    /// The token the main cache's sampler chose.
    pub token: u32,
    /// KL(main ‖ second), in nats.
    pub kl: f32,
    /// Each cache's most likely token.
    pub main_top1: u32,
    pub other_top1: u32,
    /// Each cache's most likely token, as text.
    pub main_text: String,
    pub other_text: String,
}

impl Divergence {
    /// Whether the two caches' most likely tokens differ.
    pub fn differs(&self) -> bool {
        self.main_top1 != self.other_top1
    }
}

/// What became of one token in one KV head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeadFate {
    /// Still cached, with its latest score (NaN: not scored yet, e.g. in the window).
    Kept(f32),
    /// Evicted when the conversation had `step` tokens, with this score.
    Evicted { step: usize, score: f32 },
    /// Evicted when the conversation had at most `by` tokens: so long ago that the bounded
    /// eviction history no longer says when, nor with what score.
    Forgotten { by: usize },
}

/// One token's fate across the cache: `heads[layer][kv_head]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenFate {
    pub pos: usize,
    pub heads: Vec<Vec<HeadFate>>,
}

/// What the engine tells the UI.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The model is loaded.
    Ready {
        model: String,
        device: String,
        layers: usize,
        kv_heads: usize,
        context: usize,
    },
    /// Prompt tokens were fed: their text, in order (for the retention view).
    Fed(Vec<String>),
    /// Prefill progress of a long turn.
    Progress { done: usize, total: usize },
    /// One sampled token: its id's text and the readable text it completes (may be empty
    /// until a multi-byte character is whole).
    Token { token: String, text: String },
    /// The cache after the step.
    Step(Box<StepInfo>),
    /// The answer is complete (or was stopped: `cancelled`).
    Finished {
        text: String,
        stats: TurnStats,
        cancelled: bool,
    },
    /// The conversation was read again under new cache settings (no answer generated).
    Prefilled { tokens: usize },
    /// Something failed; the conversation is left as it was.
    Failed(String),
    /// The eviction trace was written to this file.
    Exported(String),
    /// Compare mode is on against this cache (its policy, budget and window), or off.
    Comparing(Option<String>),
    /// Compare mode: how the two caches differ on the token just sent.
    Divergence(Divergence),
    /// Compare mode stopped because its cache failed (the answer goes on without it).
    CompareFailed(String),
}

/// Engine settings at start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cache: CacheConfig,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
}

/// Handle to the engine thread: every command goes through `commands`, every event comes
/// back through the sink given to [`Engine::spawn`].
pub struct Engine {
    pub commands: Sender<Command>,
    pub thread: std::thread::JoinHandle<()>,
}

impl Engine {
    /// Starts the engine thread on a loaded model; its events go to `sink`, called on the
    /// engine's thread.
    pub fn spawn(
        model: Model,
        tok: Tokenizer,
        template: ChatTemplate,
        name: String,
        settings: Settings,
        sink: impl Fn(Event) + Send + 'static,
    ) -> Result<Self> {
        tune_allocator();
        let (tx, rx) = std::sync::mpsc::channel();
        let cache = new_cache(&model, &settings.cache, Watch::default())?;
        let sampler = Sampler::new(settings.sampling.clone())?;
        let thread = std::thread::Builder::new()
            .name("morphkv-engine".into())
            .spawn(move || {
                let cfg = model.config();
                let mut w = Worker {
                    name: name.clone(),
                    tel: Telemetry::new(cfg.n_layer, cfg.n_kv_head, settings.cache.budget),
                    session: Session::new(&model, cache, sampler),
                    tok,
                    template,
                    settings,
                    fed_messages: Vec::new(),
                    pending_cache: None,
                    control: Control::default(),
                    compare: None,
                };
                sink(Event::Ready {
                    model: name,
                    device: crate::device::name(model.device()),
                    layers: cfg.n_layer,
                    kv_heads: cfg.n_kv_head,
                    context: cfg.context_len,
                });
                w.run(&rx, &sink);
            })
            .map_err(|e| crate::error::Error::io("engine thread", e))?;
        Ok(Self {
            commands: tx,
            thread,
        })
    }

    /// Sends `cmd`; false when the engine has stopped.
    pub fn send(&self, cmd: Command) -> bool {
        self.commands.send(cmd).is_ok()
    }
}

/// An empty cache for `model` under `cfg`, recording what the panels show.
fn new_cache(model: &Model, cfg: &CacheConfig, watch: Watch) -> Result<KvCache> {
    let mut cache = KvCache::from_config(model.config(), cfg.clone(), model.device())?;
    cache.record_attention(watch.attention);
    cache.record_evictions(true);
    Ok(cache)
}

struct Worker<'m> {
    /// The model's name, for traces.
    name: String,
    /// The model, the conversation's cache and the sampler; `session.fed()` is every token
    /// fed into the cache, in order.
    session: Session<'m>,
    tok: Tokenizer,
    template: ChatTemplate,
    settings: Settings,
    /// The messages whose tokens the session holds (the last one may be the answer in
    /// progress).
    fed_messages: Vec<Message>,
    /// Cache settings to apply when the conversation is next prefilled from the start.
    pending_cache: Option<CacheConfig>,
    tel: Telemetry,
    control: Control,
    /// Compare mode's second cache.
    compare: Option<Compare<'m>>,
}

impl Worker<'_> {
    fn run(&mut self, rx: &Receiver<Command>, send: &dyn Fn(Event)) {
        loop {
            let cmd = match self.control.deferred.pop_front() {
                Some(cmd) => cmd,
                None if self.control.quit => return,
                None => match rx.recv() {
                    Ok(cmd) => cmd,
                    Err(_) => return,
                },
            };
            let Some(cmd) = self.control.take(cmd) else {
                continue;
            };
            let result = match cmd {
                Command::Quit => return,
                Command::Cancel | Command::Pause(_) | Command::Advance => Ok(()),
                Command::Reply(messages) => self.reply(messages, rx, send),
                Command::SetCache { cache, now } => self.set_cache(cache, now, send),
                Command::SetSampling(p) => {
                    self.settings.sampling = p;
                    Ok(())
                }
                Command::SetMaxTokens(n) => {
                    self.settings.max_tokens = n.max(1);
                    Ok(())
                }
                Command::Watch(w) => {
                    self.watch(w);
                    Ok(())
                }
                Command::Focus(f) => {
                    self.focus(f);
                    send(Event::Step(Box::new(self.step_info(0))));
                    Ok(())
                }
                Command::Compare(cfg) => self.set_compare(cfg, send),
                Command::Inspect(p) => {
                    self.tel.inspect = p;
                    self.tel.follow();
                    send(Event::Step(Box::new(self.step_info(0))));
                    Ok(())
                }
                Command::ExportTrace(path) => self.export_trace(&path, send),
                Command::Travel(t) => {
                    let kv_heads = self.session.model().config().n_kv_head;
                    let info = self.tel.travel_info(self.session.cache(), kv_heads, t);
                    send(Event::Step(Box::new(info)));
                    Ok(())
                }
                Command::Reset => self.reset(),
            };
            if let Err(e) = result {
                // The cache may hold part of a turn: the next one reads the conversation
                // again from the start.
                let _ = self.reset();
                send(Event::Failed(e.to_string()));
            }
        }
    }

    fn step_info(&self, evicted: usize) -> StepInfo {
        let kv_heads = self.session.model().config().n_kv_head;
        let mut info = self.tel.step_info(self.session.cache(), kv_heads, evicted);
        info.compare = self.compare.as_ref().map(|c| Box::new(c.step()));
        info
    }

    fn watch(&mut self, w: Watch) {
        watch(
            &mut self.tel,
            &mut self.compare,
            self.session.cache_mut(),
            w,
        );
    }

    fn focus(&mut self, f: Option<(usize, usize)>) {
        self.tel.focus = f;
        if let Some(c) = &mut self.compare {
            c.tel.focus = f;
        }
    }

    /// Compare mode on (a second cache fed the conversation so far) or off.
    fn set_compare(&mut self, cfg: Option<CacheConfig>, send: &dyn Fn(Event)) -> Result<()> {
        self.compare = None;
        release_free_memory();
        let Some(cfg) = cfg else {
            send(Event::Comparing(None));
            send(Event::Step(Box::new(self.step_info(0))));
            return Ok(());
        };
        // A full cache has no budget or window to name.
        let label = if cfg.policy == crate::cache::PolicyKind::Full {
            cfg.policy.name().to_string()
        } else {
            format!(
                "{} b{} w{}",
                cfg.policy.name(),
                cfg.budget,
                cfg.effective_window()
            )
        };
        // A long conversation is read in chunks: the chat shows how far along it is.
        let chunked = self.session.fed().len() > cfg.prefill_chunk.max(1);
        let mut c = Compare::new(
            self.session.model(),
            cfg,
            self.tel.watch,
            self.session.fed(),
            self.session.logits(),
            |done, total| {
                if chunked {
                    send(Event::Progress { done, total });
                }
            },
        )?;
        c.tel.focus = self.tel.focus;
        self.compare = Some(c);
        send(Event::Comparing(Some(label)));
        send(Event::Step(Box::new(self.step_info(0))));
        Ok(())
    }

    fn reset(&mut self) -> Result<()> {
        if let Some(cfg) = self.pending_cache.take() {
            self.settings.cache = cfg;
        }
        let model = self.session.model();
        self.session
            .set_cache(new_cache(model, &self.settings.cache, self.tel.watch)?);
        self.fed_messages.clear();
        let cfg = model.config();
        self.tel
            .clear(cfg.n_layer, cfg.n_kv_head, self.settings.cache.budget);
        if let Some(c) = &mut self.compare {
            c.reset()?;
        }
        Ok(())
    }

    /// The eviction trace (see `engine/trace.rs`): a header with the settings, sizes and
    /// tokens, the evictions the history holds, the retained positions per (layer, KV head).
    fn export_trace(&self, path: &std::path::Path, send: &dyn Fn(Event)) -> Result<()> {
        let cache = self.session.cache();
        let text = self.session.fed().iter().map(|&t| self.tok.token_text(t));
        let header = trace::Header::of(
            cache,
            self.session.model().config().n_kv_head,
            &self.name,
            text.collect(),
            &self.tel.log,
            &self.tel.prompts,
        );
        trace::write(path, &header, &self.tel.log, cache)?;
        send(Event::Exported(path.display().to_string()));
        Ok(())
    }

    fn set_cache(&mut self, cache: CacheConfig, now: bool, send: &dyn Fn(Event)) -> Result<()> {
        cache.validate()?;
        if !now {
            self.pending_cache = Some(cache);
            return Ok(());
        }
        self.pending_cache = Some(cache);
        let messages = std::mem::take(&mut self.fed_messages);
        self.reset()?;
        if !messages.is_empty() {
            // Prefill the conversation again under the new cache; no answer is generated.
            let segments = self.template.render(&messages, false)?;
            let ids = crate::chat::encode_chat(&self.tok, &segments)?;
            self.feed(&ids, send)?;
            self.fed_messages = messages;
        }
        release_free_memory();
        send(Event::Step(Box::new(self.step_info(0))));
        send(Event::Prefilled {
            tokens: self.session.fed().len(),
        });
        Ok(())
    }

    /// Tokens to feed so that the cache holds `messages` plus the opening of an answer.
    fn delta(&mut self, messages: &[Message]) -> Result<Vec<u32>> {
        let segments = self.template.render(messages, true)?;
        let continues = !self.fed_messages.is_empty()
            && messages.len() > self.fed_messages.len()
            && messages[..self.fed_messages.len()] == self.fed_messages[..];
        let contents = segments
            .iter()
            .filter(|s| matches!(s, Segment::Content(_)))
            .count();
        if continues && contents == messages.len() {
            // Everything after the content of the last message already fed.
            let mut seen = 0;
            let at = segments.iter().position(|s| {
                if matches!(s, Segment::Content(_)) {
                    seen += 1;
                }
                seen == self.fed_messages.len()
            });
            if let Some(at) = at {
                let parts: Vec<(&str, bool)> = segments[at + 1..]
                    .iter()
                    .map(|s| match s {
                        Segment::Template(t) => (t.as_str(), true),
                        Segment::Content(c) => (c.as_str(), false),
                    })
                    .collect();
                return self.tok.encode_mixed(&parts);
            }
        }
        // The conversation changed before its end (or this is its start): from scratch.
        self.reset()?;
        crate::chat::encode_chat(&self.tok, &segments)
    }

    /// Feeds prompt tokens in the cache's prefill chunks, reporting progress.
    fn feed(&mut self, ids: &[u32], send: &dyn Fn(Event)) -> Result<()> {
        send(Event::Fed(
            ids.iter().map(|&i| self.tok.token_text(i)).collect(),
        ));
        let chunked = ids.len() > self.session.cache().config().prefill_chunk.max(1);
        self.session.prefill_with(ids, |done, total| {
            if chunked {
                send(Event::Progress { done, total });
            }
        })?;
        if let Some(c) = &mut self.compare {
            c.prefill(ids, self.session.logits())?;
        }
        let evicted = self.tel.log_evictions(self.session.cache_mut());
        send(Event::Step(Box::new(self.step_info(evicted))));
        Ok(())
    }

    fn reply(
        &mut self,
        messages: Vec<Message>,
        rx: &Receiver<Command>,
        send: &dyn Fn(Event),
    ) -> Result<()> {
        self.control.cancelled = false;
        let ids = self.delta(&messages)?;
        self.fed_messages = messages.clone();
        if ids.is_empty() {
            return Err(crate::error::Error::arg("chat", "nothing new to answer"));
        }
        let t0 = Instant::now();
        self.feed(&ids, send)?;
        let prompt_secs = t0.elapsed().as_secs_f64();
        self.session
            .set_sampler(Sampler::new(self.settings.sampling.clone())?);
        let opts = GenerateOptions {
            max_new: self.settings.max_tokens,
            stop: self.tok.stop_ids().to_vec(),
            ignore_eos: false,
            // Every token of the answer goes into the cache, the last one of an answer cut
            // at max tokens too: the next turn feeds only what follows the answer's text.
            feed_last: true,
        };
        let mut stream = StreamDecoder::default();
        let mut text = String::new();
        let mut failed = None;
        let (tok, tel, control) = (&self.tok, &mut self.tel, &mut self.control);
        let compare = &mut self.compare;
        if let Some(c) = compare.as_mut() {
            c.start_answer();
        }
        let mut compare_failed = None;
        let kv_heads = self.session.model().config().n_kv_head;
        let cache = self.session.cache();
        let first = control.gate_with(rx, &mut |cmd| {
            answer_travel(tel, cache, kv_heads, cmd, send)
        });
        let out = if first.is_break() {
            None
        } else {
            Some(self.session.generate(&opts, |phase, s| match phase {
                Phase::Sampled(step) => match stream.push(tok, step.token) {
                    Ok(piece) => {
                        let piece = piece.unwrap_or_default();
                        text.push_str(&piece);
                        send(Event::Token {
                            token: tok.token_text(step.token),
                            text: piece,
                        });
                        if let Some(c) = compare.as_ref() {
                            if let Some(d) = c.divergence(step.generated - 1, step.token, tok) {
                                send(Event::Divergence(d));
                            }
                        }
                        ControlFlow::Continue(())
                    }
                    Err(e) => {
                        failed = Some(e);
                        ControlFlow::Break(())
                    }
                },
                Phase::Fed(step) => {
                    if let Some(c) = compare.as_mut() {
                        if let Err(e) = c.feed(step.token, s.logits()) {
                            // The second cache missed a token: compare mode ends, the
                            // answer goes on.
                            *compare = None;
                            compare_failed = Some(e);
                        }
                    }
                    let evicted = tel.log_evictions(s.cache_mut());
                    let mut info = tel.step_info(s.cache(), kv_heads, evicted);
                    let secs = step.decode_secs.max(1e-9);
                    info.decode_tps = step.generated as f64 / secs;
                    info.compare = compare.as_mut().map(|c| {
                        c.timed(secs);
                        Box::new(c.step())
                    });
                    send(Event::Step(Box::new(info)));
                    if step.generated == 1 {
                        // The cache has just given back the room the prompt's chunk took.
                        release_free_memory();
                    }
                    if step.generated >= opts.max_new {
                        return ControlFlow::Continue(());
                    }
                    // Time travel is answered at once, in step mode's pauses too.
                    let flow = control.gate_with(rx, &mut |cmd| {
                        answer_travel(tel, s.cache(), kv_heads, cmd, send)
                    });
                    // What the panels want changes at once, from the next step on.
                    control.deferred.retain(|cmd| match cmd {
                        Command::Watch(w) => {
                            watch(tel, compare, s.cache_mut(), *w);
                            false
                        }
                        Command::Focus(f) => {
                            tel.focus = *f;
                            if let Some(c) = compare.as_mut() {
                                c.tel.focus = *f;
                            }
                            false
                        }
                        Command::Inspect(p) => {
                            tel.inspect = *p;
                            tel.follow();
                            false
                        }
                        _ => true,
                    });
                    flow
                }
            })?)
        };
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some(e) = compare_failed {
            send(Event::CompareFailed(e.to_string()));
        }
        text.push_str(&stream.finish(&self.tok)?);
        let (generated, decode_secs, cancelled) = match &out {
            Some(o) => (
                o.tokens.len(),
                o.decode_secs,
                o.stop == StopReason::Cancelled,
            ),
            None => (0, 0.0, true),
        };
        self.fed_messages.push(Message::assistant(text.clone()));
        send(Event::Finished {
            text,
            stats: TurnStats {
                prompt_tokens: ids.len(),
                prompt_tps: rate(ids.len(), prompt_secs),
                generated,
                decode_tps: rate(generated, decode_secs),
            },
            cancelled,
        });
        Ok(())
    }
}

/// What the panels on screen need, for both caches.
fn watch(tel: &mut Telemetry, compare: &mut Option<Compare>, cache: &mut KvCache, w: Watch) {
    tel.watch = w;
    cache.record_attention(w.attention);
    if let Some(c) = compare {
        c.tel.watch = Watch {
            attention: false,
            ..w
        };
    }
}

/// Blocks of 256 KiB and more get pages of their own, returned to the OS when freed. Once a
/// turn the cache reallocates tens of megabytes in such blocks (it grows by a prompt chunk's
/// room to read a prompt, and gives that back on the first decoded token); glibc would raise
/// its threshold after the first free and serve them from its arenas from then on, which keep
/// the pages: resident memory then ratchets up by that much over a conversation's first
/// turns. Decoding allocates nothing that large per token at the default model (its logits
/// are 192 KiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_allocator() {
    // SAFETY: `mallopt` takes two integers and only sets one of glibc's tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// Gives the free pages glibc's arenas hold back to the OS (the smaller blocks a turn frees).
/// Under a millisecond, once a turn.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_free_memory() {
    // SAFETY: `malloc_trim` takes no pointers and touches only glibc's own free lists, under
    // each arena's lock; any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

/// Answers a [`Command::Travel`] arriving while an answer is generated (false for any
/// other command).
fn answer_travel(
    tel: &Telemetry,
    cache: &KvCache,
    kv_heads: usize,
    cmd: &Command,
    send: &dyn Fn(Event),
) -> bool {
    let Command::Travel(t) = cmd else {
        return false;
    };
    send(Event::Step(Box::new(tel.travel_info(cache, kv_heads, *t))));
    true
}

/// Whether a message list is a conversation the engine can answer: non-empty, its last
/// message the user's.
pub fn answerable(messages: &[Message]) -> bool {
    messages.last().is_some_and(|m| m.role == Role::User)
}
