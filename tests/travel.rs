//! Time travel on the real SmolLM2 with a cache that evicts (H2O, budget 32): the retained
//! sets rebuilt for an earlier step from the bounded history equal the cache's own snapshot
//! taken at that step, through the trace's writer and reader (every (layer, KV head) pair)
//! and through the engine's `Command::Travel` (a focused pair and every retention count);
//! `replay` of the engine's trace gives the same steps and draws the same panels.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ops::ControlFlow;
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use morphkv::cache::{CacheConfig, PolicyKind};
use morphkv::chat::{encode_chat, ChatTemplate, Message};
use morphkv::engine::replay::Replay;
use morphkv::engine::trace::{self, Recorder};
use morphkv::engine::travel::held_at;
use morphkv::engine::{Command, Engine, Event, Settings, StepInfo};
use morphkv::sampling::SamplingParams;
use morphkv::session::{GenerateOptions, Phase, Session};
use morphkv::tui::app::{Action, App, Msg, Panel};
use morphkv::tui::theme::Theme;
use morphkv::tui::view;
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn cache() -> CacheConfig {
    CacheConfig {
        policy: PolicyKind::H2o,
        budget: 32,
        window: Some(4),
        recent: Some(40),
        history: 250,
        half_life: 77,
        ..CacheConfig::default()
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("morphkv-travel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// 50 steps spread over `steps`.
fn sample(steps: &[usize]) -> Vec<usize> {
    assert!(steps.len() >= 50, "only {} steps", steps.len());
    (0..50).map(|i| steps[i * (steps.len() - 1) / 49]).collect()
}

#[test]
fn rebuilt_steps_equal_the_snapshots_taken_during_the_run() {
    let (model, tok) = common::load_default();
    let template = ChatTemplate::for_tokenizer(&tok, None).unwrap();
    let ids = encode_chat(
        &tok,
        &template
            .render(
                &[Message::user(
                    "Tell me a long story about a lighthouse keeper.",
                )],
                true,
            )
            .unwrap(),
    )
    .unwrap();
    let mut session = Session::greedy(&model, cache()).unwrap();
    let kv_heads = model.config().n_kv_head;
    let mut rec = Recorder::new(session.cache_mut(), kv_heads);
    session.prefill(&ids).unwrap();
    let snapshot = |s: &Session| -> Vec<Vec<u32>> {
        let c = s.cache().snapshot();
        c.layers
            .iter()
            .flatten()
            .map(|h| {
                let mut p = h.positions.clone();
                p.sort_unstable();
                p
            })
            .collect()
    };
    let mut snaps = vec![(session.cache().seen(), snapshot(&session))];
    rec.step(session.cache_mut());
    let opts = GenerateOptions {
        max_new: 90,
        stop: Vec::new(),
        ignore_eos: true,
        feed_last: true,
    };
    session
        .generate(&opts, |phase, s| {
            rec.step(s.cache_mut());
            if let Phase::Fed(_) = phase {
                snaps.push((s.cache().seen(), snapshot(s)));
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    let path = tmp("session.jsonl");
    let text = session.fed().iter().map(|&t| tok.token_text(t)).collect();
    rec.write(&path, session.cache_mut(), "smollm2", text)
        .unwrap();
    let t = trace::read(&path).unwrap();
    assert_eq!(t.header.tokens, ids.len() + 90);
    assert_eq!(t.header.prompts, vec![(0, ids.len())]);
    assert_eq!(t.dropped_through, 0);
    assert!(
        t.evictions.len() >= 90 * 60,
        "{} evictions",
        t.evictions.len()
    );
    let now: Vec<&[u32]> = t.retained.iter().map(Vec::as_slice).collect();
    let steps: Vec<usize> = snaps.iter().map(|s| s.0).collect();
    for step in sample(&steps) {
        let want = &snaps.iter().find(|s| s.0 == step).unwrap().1;
        assert_eq!(&held_at(step, &now, &t.evictions), want, "step {step}");
    }
    let _ = std::fs::remove_file(&path);
}

fn start() -> (Engine, Receiver<Event>) {
    let (model, tok) = common::load_default();
    let template = ChatTemplate::for_tokenizer(&tok, None).unwrap();
    let (tx, rx) = channel();
    let engine = Engine::spawn(
        model,
        tok,
        template,
        "smollm2".into(),
        Settings {
            cache: cache(),
            sampling: SamplingParams::greedy(),
            max_tokens: 80,
        },
        move |e| {
            let _ = tx.send(e);
        },
    )
    .unwrap();
    (engine, rx)
}

fn next(rx: &Receiver<Event>) -> Event {
    match rx.recv_timeout(Duration::from_secs(300)).unwrap() {
        Event::Failed(e) => panic!("engine failed: {e}"),
        e => e,
    }
}

/// The travel answer to `Travel(Some(t))`.
fn travel(engine: &Engine, rx: &Receiver<Event>, t: usize) -> StepInfo {
    engine.send(Command::Travel(Some(t)));
    loop {
        if let Event::Step(s) = next(rx) {
            return *s;
        }
    }
}

fn panels(app: &App, panel: Panel) -> Vec<String> {
    let mut app = app.clone();
    app.panel = Some(panel);
    let mut term = Terminal::new(TestBackend::new(120, 40)).unwrap();
    term.draw(|f| view::draw(f, &app, &Theme::dark())).unwrap();
    let buf = term.backend().buffer().clone();
    // The side panels (and the slider under them), above the input box.
    (0..35)
        .map(|y| (70..120).map(|x| buf[(x, y)].symbol()).collect())
        .collect()
}

#[test]
fn the_engine_travels_back_and_replay_shows_the_same() {
    let (engine, rx) = start();
    assert!(matches!(next(&rx), Event::Ready { .. }));
    let focus = (3, 1);
    engine.send(Command::Focus(Some(focus)));
    assert!(matches!(next(&rx), Event::Step(_)));
    // The chat's app sees the conversation's events, as in the TUI.
    let mut app = App::new(cache(), SamplingParams::greedy(), 80);
    app.update(Msg::Engine(Event::Ready {
        model: "smollm2".into(),
        device: "cpu".into(),
        layers: 30,
        kv_heads: 3,
        context: 8192,
    }));
    let mut live: Vec<StepInfo> = Vec::new();
    let mut messages = Vec::new();
    for q in [
        "Tell me a long story about a lighthouse keeper.",
        "Now tell me what the keeper ate for dinner.",
    ] {
        messages.push(Message::user(q));
        engine.send(Command::Reply(messages.clone()));
        loop {
            let e = next(&rx);
            app.update(Msg::Engine(e.clone()));
            match e {
                Event::Step(s) => live.push(*s),
                Event::Finished { text, .. } => {
                    messages.push(Message::assistant(text));
                    break;
                }
                _ => {}
            }
        }
    }
    let latest = live.last().unwrap().seen;
    // Decode steps (one token each) and prompt ends, all past the budget.
    let steps: Vec<usize> = live.iter().map(|s| s.seen).filter(|&s| s > 40).collect();
    for t in sample(&steps) {
        let want = live.iter().rev().find(|s| s.seen == t).unwrap();
        let got = travel(&engine, &rx, t);
        let mark = got.travel.expect("a travelled step is marked");
        assert_eq!((mark.step, mark.latest, mark.oldest), (t, latest, 0));
        assert_eq!(got.focus, want.focus, "focused pair at step {t}");
        assert_eq!(
            got.retention, want.retention,
            "retention counts at step {t}"
        );
        assert_eq!(
            (
                got.seen,
                got.retained,
                got.kv_bytes,
                got.full_kv_bytes,
                got.evicted
            ),
            (
                want.seen,
                want.retained,
                want.kv_bytes,
                want.full_kv_bytes,
                want.evicted
            ),
            "step {t}"
        );
        assert_eq!(
            (got.window_from, got.protected_from),
            (want.window_from, want.protected_from)
        );
    }
    // None: the live step again; out of range: clamped.
    engine.send(Command::Travel(None));
    let Event::Step(now) = next(&rx) else {
        panic!("a step")
    };
    assert_eq!((now.travel, now.seen), (None, latest));
    assert_eq!(travel(&engine, &rx, latest + 50).seen, latest);

    // The engine's trace, replayed.
    let path = tmp("engine.jsonl");
    engine.send(Command::ExportTrace(path.clone()));
    while !matches!(next(&rx), Event::Exported(_)) {}
    let mut replay = Replay::open(&path).unwrap();
    replay.answer(Command::Focus(Some(focus)), &|_| {});
    // The trace carries the settings the status bar names.
    let settings = replay.settings().unwrap().cache;
    let want = cache();
    assert_eq!(
        (settings.recent(), settings.history, settings.half_life),
        (want.recent(), want.history, want.half_life)
    );
    let mut shown = App::new(settings, SamplingParams::greedy(), 1);
    for e in replay.opening() {
        shown.update(Msg::Engine(e));
    }
    assert_eq!(shown.tokens, app.tokens);
    // The replay's last step is the engine's live one (bar the attention it did not keep).
    let s = &shown.step;
    assert_eq!(
        (
            s.seen,
            s.retained,
            &s.retention,
            &s.focus,
            s.kv_bytes,
            s.window_from,
            s.protected_from
        ),
        (
            now.seen,
            now.retained,
            &now.retention,
            &now.focus,
            now.kv_bytes,
            now.window_from,
            now.protected_from
        )
    );
    assert_eq!(s.evicted, live.last().unwrap().evicted);
    for t in [steps[0], steps[steps.len() / 2], latest - 1] {
        let from_engine = travel(&engine, &rx, t);
        assert_eq!(replay.step_at(Some(t)), from_engine, "step {t}");
        // Both chats travel there: the same Retention and Cache panels, slider included.
        for (a, answer) in [(&mut app, from_engine.clone()), (&mut shown, from_engine)] {
            let fx = a.update(Msg::Action(Action::TravelTo(t)));
            assert_eq!(
                fx,
                vec![morphkv::tui::app::Effect::Engine(Command::Travel(Some(t)))]
            );
            a.update(Msg::Engine(Event::Step(Box::new(answer))));
        }
        for p in [Panel::Retention, Panel::Cache] {
            let (live_screen, replayed) = (panels(&app, p), panels(&shown, p));
            assert_eq!(live_screen, replayed, "{p:?} at step {t}");
            assert!(live_screen
                .concat()
                .contains(&format!("step {t} of {latest}")));
        }
    }
    // A message to a replay is refused, politely.
    for c in "hello".chars() {
        shown.update(Msg::Action(Action::Insert(c)));
    }
    assert!(shown.update(Msg::Action(Action::Submit)).is_empty());
    let _ = std::fs::remove_file(&path);
    engine.send(Command::Quit);
}

/// In step mode, a travel is answered while the answer waits for its next token.
#[test]
fn travel_is_answered_while_step_mode_waits() {
    let (engine, rx) = start();
    assert!(matches!(next(&rx), Event::Ready { .. }));
    engine.send(Command::Pause(true));
    engine.send(Command::Reply(vec![Message::user("Name three colours.")]));
    // The prompt's step; then the answer waits before its first token.
    let prompt = loop {
        if let Event::Step(s) = next(&rx) {
            break s.seen;
        }
    };
    let got = travel(&engine, &rx, prompt - 5);
    assert_eq!(got.travel.map(|t| t.step), Some(prompt - 5));
    engine.send(Command::Advance);
    let seen = loop {
        if let Event::Step(s) = next(&rx) {
            assert!(s.travel.is_none());
            break s.seen;
        }
    };
    assert_eq!(seen, prompt + 1);
    let got = travel(&engine, &rx, prompt);
    assert_eq!(
        got.travel.map(|t| (t.step, t.latest)),
        Some((prompt, prompt + 1))
    );
    engine.send(Command::Cancel);
    while !matches!(next(&rx), Event::Finished { .. }) {}
    engine.send(Command::Quit);
}
