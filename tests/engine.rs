//! The chat's engine thread on the real SmolLM2: a multi-turn conversation of more than 3,000
//! tokens at budget 300 keeps KV bytes flat, each turn feeds only its new tokens, and a
//! policy change applied at once reads the conversation again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use candle_core::Device;
use morphkv::cache::{CacheConfig, PolicyKind, Positions};
use morphkv::chat::{ChatTemplate, Message};
use morphkv::engine::{Command, Engine, Event, Settings};
use morphkv::model::{open_gguf, Model, WeightFormat};
use morphkv::sampling::SamplingParams;
use morphkv::tokenizer::Tokenizer;

fn start(cache: CacheConfig, max_tokens: usize) -> (Engine, Receiver<Event>) {
    let path = common::default_model();
    let (ct, mut reader) = open_gguf(&path).unwrap();
    let model =
        Model::from_gguf(&ct, &mut reader, &path, &Device::Cpu, WeightFormat::Auto).unwrap();
    let tok = Tokenizer::from_gguf(&ct, &path).unwrap();
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
        tx,
        |e| e,
    )
    .unwrap();
    match rx.recv_timeout(Duration::from_secs(60)).unwrap() {
        Event::Ready { layers, .. } => assert_eq!(layers, 30),
        e => panic!("expected Ready, got {e:?}"),
    }
    (engine, rx)
}

/// Events until the turn ends: (fed tokens, the answer, every step's (seen, retained, kv)).
fn turn(rx: &Receiver<Event>) -> (usize, String, Vec<(usize, usize, usize)>) {
    let (mut fed, mut steps) = (0, Vec::new());
    loop {
        match rx.recv_timeout(Duration::from_secs(300)).unwrap() {
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
        window: 30,
        positions: Positions::Rebased,
        ..CacheConfig::default()
    };
    let (engine, rx) = start(cache, 700);
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
        let (fed, answer, steps) = turn(&rx);
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
    let (fed, answer, steps) = turn(&rx);
    assert!(
        fed < 30,
        "after the re-read only the new turn is fed ({fed})"
    );
    assert!(!answer.is_empty());
    assert!(steps.iter().all(|s| s.1 <= budget));
    engine.commands.send(Command::Quit).unwrap();
}
