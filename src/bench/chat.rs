//! `morphkv bench --chat`: the chat's decode speed against `generate`'s, on the same model,
//! prompt and cache settings, greedy, in one process and interleaved rep by rep.
//!
//! The chat side is the real one without a terminal: the engine on its thread, and on this
//! thread what the TUI does with each batch of events: `App::update`, then a draw of the whole
//! screen (the default panel showing) into an off-screen buffer. The `generate` side is the
//! `generate` command's loop: a [`Session`] and the streaming detokenizer.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Duration;

use candle_core::Device;
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use serde::Serialize;

use super::Rate;
use crate::cache::CacheConfig;
use crate::chat::{encode_chat, ChatTemplate, Message};
use crate::engine::{Engine, Event, Settings};
use crate::error::{Error, Result};
use crate::model::{Model, WeightFormat};
use crate::sampling::SamplingParams;
use crate::session::{GenerateOptions, Phase, Session};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::tui::app::{Action, App, Effect, Msg};
use crate::tui::pace::{streaming, Pacer};
use crate::tui::theme::Theme;
use crate::tui::view;

/// A request that asks for a long answer.
const PROMPT: &str = "Write a long, detailed story about a lighthouse keeper who finds a box \
of old letters in the lamp room, and what he learns about the people who wrote them.";

/// Screen size of the off-screen chat.
const SCREEN: (u16, u16) = (120, 40);

/// Both sides' speeds, per repetition and as medians.
#[derive(Debug, Clone, Serialize)]
pub struct ChatBench {
    pub prompt_tokens: usize,
    /// Tokens each side generated (the same greedy answer; the same count on both sides).
    pub generated: usize,
    pub generate_tps: Vec<f64>,
    pub chat_tps: Vec<f64>,
    /// Median chat tok/s over median generate tok/s.
    pub ratio: f64,
    /// The chat in compare mode (a second cache beside the first), when asked for.
    pub compare: Option<CompareBench>,
}

/// The chat with compare mode on, against the chat without it.
#[derive(Debug, Clone, Serialize)]
pub struct CompareBench {
    /// The second cache's policy and budget.
    pub against: String,
    pub chat_tps: Vec<f64>,
    /// Time per token with compare mode over time per token without (medians): 2.0 is twice
    /// as slow.
    pub cost: f64,
}

/// Measures `reps` times, alternating sides, `max_tokens` greedy tokens under `cache`; with
/// `compare`, a third side runs the chat in compare mode against that cache.
pub fn chat_vs_generate(
    path: &Path,
    weights: WeightFormat,
    device: &Device,
    cache: &CacheConfig,
    compare: Option<&CacheConfig>,
    max_tokens: usize,
    reps: usize,
) -> Result<ChatBench> {
    let (model, tok) = crate::model::load(path, device, weights)?;
    let template = ChatTemplate::for_model(&tok, None, Some(path))?;
    let messages = vec![Message::user(PROMPT)];
    let ids = encode_chat(&tok, &template.render(&messages, true)?)?;
    let (mut gen_tps, mut chat_tps, mut cmp_tps) = (Vec::new(), Vec::new(), Vec::new());
    let mut generated = 0;
    let agree = |n: usize, m: usize| {
        if n == m {
            Ok(())
        } else {
            Err(Error::arg(
                "bench --chat",
                format!("two sides generated {n} and {m} tokens: they should agree"),
            ))
        }
    };
    for _ in 0..reps.max(1) {
        let (n, tps) = generate_side(&model, &tok, cache, &ids, max_tokens)?;
        gen_tps.push(tps);
        let (m, tps) = chat_side(&model, &tok, path, cache, None, max_tokens)?;
        chat_tps.push(tps);
        agree(n, m)?;
        if let Some(c) = compare {
            let (m, tps) = chat_side(&model, &tok, path, cache, Some(c), max_tokens)?;
            cmp_tps.push(tps);
            agree(n, m)?;
        }
        generated = n;
    }
    let median = |v: &[f64]| Rate::of(v.to_vec()).median.max(1e-9);
    let ratio = median(&chat_tps) / median(&gen_tps);
    Ok(ChatBench {
        prompt_tokens: ids.len(),
        generated,
        generate_tps: gen_tps,
        ratio,
        compare: compare.map(|c| CompareBench {
            against: format!("{} b{}", c.policy.name(), c.budget),
            cost: median(&chat_tps) / median(&cmp_tps),
            chat_tps: cmp_tps,
        }),
        chat_tps,
    })
}

/// `generate`'s loop: (tokens, decode tok/s).
fn generate_side(
    model: &Model,
    tok: &Tokenizer,
    cache: &CacheConfig,
    ids: &[u32],
    max_tokens: usize,
) -> Result<(usize, f64)> {
    let mut session = Session::greedy(model, cache.clone())?;
    let opts = GenerateOptions {
        max_new: max_tokens,
        stop: tok.stop_ids().to_vec(),
        ignore_eos: false,
        feed_last: false,
    };
    let (mut stream, mut text, mut failed) = (StreamDecoder::default(), String::new(), None);
    let (out, stats) = session.run(ids, &opts, |phase, _| {
        if let Phase::Sampled(s) = phase {
            match stream.push(tok, s.token) {
                Ok(piece) => text.push_str(&piece.unwrap_or_default()),
                Err(e) => {
                    failed = Some(e);
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    Ok((out.len(), stats.decode_tps()))
}

/// The chat: engine thread, and update + draw here. (tokens, decode tok/s as the engine
/// reports it).
fn chat_side(
    model: &Model,
    tok: &Tokenizer,
    path: &Path,
    cache: &CacheConfig,
    compare: Option<&CacheConfig>,
    max_tokens: usize,
) -> Result<(usize, f64)> {
    let template = ChatTemplate::for_model(tok, None, Some(path))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let engine = Engine::spawn(
        model.clone(),
        tok.clone(),
        template,
        "bench".into(),
        Settings {
            cache: cache.clone(),
            sampling: SamplingParams::greedy(),
            max_tokens,
        },
        move |e| {
            let _ = tx.send(e);
        },
    )?;
    let theme = Theme::dark();
    let mut app = App::new(cache.clone(), SamplingParams::greedy(), max_tokens);
    app.size = SCREEN;
    let mut term = Terminal::new(TestBackend::new(SCREEN.0, SCREEN.1))
        .map_err(|e| Error::io("bench screen", std::io::Error::other(e.to_string())))?;
    let gone = || Error::arg("bench --chat", "the engine stopped without an answer");
    // The model is ready before anything is typed, as in the chat.
    let ready = rx
        .recv_timeout(Duration::from_secs(600))
        .map_err(|_| gone())?;
    app.update(Msg::Engine(ready));
    // What the panel on screen needs, as the chat tells it.
    engine.send(crate::engine::Command::Watch(app.watch()));
    if let Some(c) = compare {
        // As `chat --compare` does it: before anything is typed.
        engine.send(crate::engine::Command::Compare(Some(c.clone())));
    }
    let mut effects = Vec::new();
    for c in PROMPT.chars() {
        effects.extend(app.update(Msg::Action(Action::Insert(c))));
    }
    effects.extend(app.update(Msg::Action(Action::Submit)));
    for fx in effects {
        if let Effect::Engine(cmd) = fx {
            engine.send(cmd);
        }
    }
    // Drawn as the chat draws: at once for the end of the answer, once a frame for tokens.
    let mut pacer = Pacer::default();
    let result = loop {
        let wait = pacer.due().map_or(Duration::from_secs(600), |t| {
            t.saturating_duration_since(std::time::Instant::now())
        });
        let first = match rx.recv_timeout(wait) {
            Ok(ev) => Some(ev),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if pacer.due().is_some() => None,
            Err(_) => return Err(gone()),
        };
        let mut done = None;
        for ev in first.into_iter().chain(rx.try_iter()) {
            match &ev {
                Event::Finished { stats, .. } => done = Some((stats.generated, stats.decode_tps)),
                Event::Failed(m) => return Err(Error::arg("bench --chat", m.clone())),
                _ => {}
            }
            pacer.changed(!streaming(&ev));
            for fx in app.update(Msg::Engine(ev)) {
                if let Effect::Engine(cmd) = fx {
                    engine.send(cmd);
                }
            }
        }
        if pacer.ready() || done.is_some() {
            term.draw(|f| view::draw(f, &app, &theme))
                .map_err(|e| Error::io("bench screen", std::io::Error::other(e.to_string())))?;
            pacer.drawn();
        }
        if let Some(d) = done {
            break d;
        }
    };
    engine.send(crate::engine::Command::Quit);
    let _ = engine.thread.join();
    Ok(result)
}
