//! The chat's engine thread on the real SmolLM2, its events driving the chat's update function
//! as in the TUI: a multi-turn conversation of more than 3,000 tokens at budget 300 keeps KV
//! bytes flat (in the engine's steps, the chat's cache chart and its status bar), each turn
//! feeds only its new tokens, and a policy change applied at once reads the conversation
//! again; the inspector follows a token and the eviction trace records every eviction.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use morphkv::cache::{CacheConfig, PolicyKind, Positions};
use morphkv::chat::{ChatTemplate, Message};
use morphkv::engine::{Command, Engine, Event, Settings};
use morphkv::sampling::SamplingParams;
use morphkv::tui::app::{App, Msg};
use morphkv::tui::theme::Theme;
use morphkv::tui::view;
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn start(cache: CacheConfig, max_tokens: usize) -> (Engine, Receiver<Event>) {
    let (model, tok) = common::load_default();
    let template = ChatTemplate::for_tokenizer(&tok, None).unwrap();
    let (tx, rx) = channel();
    let engine = Engine::spawn(
        model,
        tok,
        template,
        "smollm2".into(),
        Settings {
            cache,
            sampling: SamplingParams::greedy(),
            max_tokens,
        },
        move |e| {
            let _ = tx.send(e);
        },
    )
    .unwrap();
    match rx.recv_timeout(Duration::from_secs(60)).unwrap() {
        Event::Ready { layers, .. } => assert_eq!(layers, 30),
        e => panic!("expected Ready, got {e:?}"),
    }
    (engine, rx)
}

/// Events until the turn ends: (fed tokens, the answer, every step's (seen, retained, kv)).
/// Every event also goes through the chat's update function, as in the TUI.
fn turn(rx: &Receiver<Event>, app: &mut App) -> (usize, String, Vec<(usize, usize, usize)>) {
    let (mut fed, mut steps) = (0, Vec::new());
    loop {
        let event = rx.recv_timeout(Duration::from_secs(300)).unwrap();
        app.update(Msg::Engine(event.clone()));
        match event {
            Event::Fed(t) => fed += t.len(),
            Event::Step(s) => steps.push((s.seen, s.retained, s.kv_bytes)),
            Event::Finished { text, .. } => return (fed, text, steps),
            Event::Failed(e) => panic!("engine failed: {e}"),
            _ => {}
        }
    }
}

#[test]
fn a_long_conversation_keeps_kv_bytes_flat_and_feeds_only_new_tokens() {
    let budget = 300;
    let cache = CacheConfig {
        policy: PolicyKind::MorphKv,
        budget,
        window: Some(30),
        positions: Positions::Rebased,
        ..CacheConfig::default()
    };
    let (engine, rx) = start(cache.clone(), 700);
    let mut app = App::new(cache, SamplingParams::greedy(), 700);
    app.update(Msg::Engine(Event::Ready {
        model: "smollm2".into(),
        device: "cpu".into(),
        layers: 30,
        kv_heads: 3,
        context: 8192,
    }));
    let prompts = [
        "Write a long story about a lighthouse keeper who finds old letters.",
        "Continue the story: what happens the next winter?",
        "Now tell the same story from the point of view of the letters' author.",
        "Write an epilogue, set fifty years later.",
        "Summarise everything so far in detail.",
        "Write a poem about the lighthouse.",
    ];
    let mut messages = Vec::new();
    let mut all_steps = Vec::new();
    let mut seen_before = 0;
    for p in prompts {
        messages.push(Message::user(p));
        engine
            .commands
            .send(Command::Reply(messages.clone()))
            .unwrap();
        let (fed, answer, steps) = turn(&rx, &mut app);
        assert!(!answer.is_empty());
        // Only the new turn is fed: far fewer tokens than the conversation so far.
        let prompt_len = p.split_whitespace().count();
        assert!(
            fed < prompt_len * 3 + 30,
            "turn fed {fed} tokens for a {prompt_len}-word message (conversation {seen_before})"
        );
        seen_before = steps.last().unwrap().0;
        all_steps.extend(steps);
        messages.push(Message::assistant(answer));
        if seen_before >= 3000 {
            break;
        }
    }
    let seen = all_steps.last().unwrap().0;
    assert!(seen >= 3000, "the conversation reached {seen} tokens");
    let full_at = all_steps.iter().position(|s| s.1 >= budget).unwrap();
    let kv = all_steps[full_at].2;
    for s in &all_steps[full_at..] {
        assert!(s.1 <= budget, "retained {} > budget", s.1);
    }
    // Decoding keeps the cache at the budget; a fed turn may exceed it until compressed,
    // so KV bytes at the end of every step stay at the budget's.
    let flat = all_steps[full_at..].iter().filter(|s| s.2 == kv).count();
    assert!(
        flat * 100 >= (all_steps.len() - full_at) * 95,
        "KV bytes flat in {flat} of {} steps",
        all_steps.len() - full_at
    );
    // The chat saw the same: its cache chart is flat from the point the budget filled, and
    // its status bar reports the budget's tokens of the whole conversation.
    let chart = &app.history;
    let from = chart.iter().position(|p| p.retained >= budget).unwrap();
    let flat = chart[from..].iter().filter(|p| p.kv_bytes == kv).count();
    assert!(flat * 100 >= (chart.len() - from) * 95);
    let mut term = Terminal::new(TestBackend::new(120, 40)).unwrap();
    term.draw(|f| view::draw(f, &app, &Theme::dark())).unwrap();
    let buf = term.backend().buffer().clone();
    let status: String = (0..120)
        .map(|x| buf[(x, 38)].symbol().to_string())
        .collect();
    assert!(
        status.contains(&format!("{budget}/{seen} tok kept")),
        "status bar: {status}"
    );
    // A policy change applied now reads the conversation again, then the chat continues.
    let streaming = CacheConfig {
        policy: PolicyKind::Streaming,
        budget,
        ..CacheConfig::default()
    };
    engine
        .commands
        .send(Command::SetCache {
            cache: streaming,
            now: true,
        })
        .unwrap();
    loop {
        match rx.recv_timeout(Duration::from_secs(300)).unwrap() {
            Event::Prefilled { tokens } => {
                assert!(tokens > 2000, "re-read {tokens} tokens");
                break;
            }
            Event::Failed(e) => panic!("{e}"),
            _ => {}
        }
    }
    messages.push(Message::user("Thank you!"));
    engine.commands.send(Command::Reply(messages)).unwrap();
    let (fed, answer, steps) = turn(&rx, &mut app);
    assert!(
        fed < 30,
        "after the re-read only the new turn is fed ({fed})"
    );
    assert!(!answer.is_empty());
    assert!(steps.iter().all(|s| s.1 <= budget));
    engine.commands.send(Command::Quit).unwrap();
}

#[test]
fn the_inspector_follows_one_token_and_the_trace_records_every_eviction() {
    let cache = CacheConfig {
        policy: PolicyKind::MorphKv,
        budget: 64,
        window: Some(8),
        ..CacheConfig::default()
    };
    let (engine, rx) = start(cache, 120);
    engine.commands.send(Command::Inspect(Some(20))).unwrap();
    engine
        .commands
        .send(Command::Reply(vec![Message::user(
            "Tell me about lighthouses, their keepers and their lamps.",
        )]))
        .unwrap();
    let (mut evicted, mut last) = (0, None);
    loop {
        match rx.recv_timeout(Duration::from_secs(300)).unwrap() {
            Event::Step(s) => {
                evicted += s.evicted;
                last = Some(s);
            }
            Event::Finished { .. } => break,
            Event::Failed(e) => panic!("engine failed: {e}"),
            _ => {}
        }
    }
    let last = last.unwrap();
    let fate = last.inspect.as_ref().expect("the inspected token's fate");
    assert_eq!(fate.pos, 20);
    assert_eq!(fate.heads.len(), 30);
    let cells: Vec<_> = fate.heads.iter().flatten().collect();
    assert_eq!(cells.len(), 90);
    // Its fate agrees with the retention counts, and evictions happened after it arrived.
    let kept = cells
        .iter()
        .filter(|h| matches!(h, morphkv::engine::HeadFate::Kept(_)))
        .count();
    assert_eq!(kept, usize::from(last.retention[20]));
    for h in &cells {
        if let morphkv::engine::HeadFate::Evicted { step, score } = h {
            assert!(*step > 20 && *step <= last.seen, "evicted at {step}");
            assert!(score.is_finite());
        }
    }
    assert!(kept < 90, "a budget of 64 evicted token 20 somewhere");

    let dir = std::env::temp_dir().join(format!("morphkv-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("trace.jsonl");
    engine
        .commands
        .send(Command::ExportTrace(path.clone()))
        .unwrap();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)).unwrap() {
            Event::Exported(p) => {
                assert_eq!(p, path.display().to_string());
                break;
            }
            Event::Failed(e) => panic!("export failed: {e}"),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["kind"], "header");
    assert_eq!(lines[0]["tokens"].as_u64().unwrap() as usize, last.seen);
    let n_evicted = lines.iter().filter(|l| l["kind"] == "evicted").count();
    assert_eq!(n_evicted, evicted);
    let retained: Vec<_> = lines.iter().filter(|l| l["kind"] == "retained").collect();
    assert_eq!(retained.len(), 90);
    for r in retained {
        assert_eq!(r["positions"].as_array().unwrap().len(), last.retained);
    }
    let _ = std::fs::remove_dir_all(&dir);
    engine.commands.send(Command::Quit).unwrap();
}
