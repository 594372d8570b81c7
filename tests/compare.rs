//! Compare mode on the real SmolLM2: over a 2,000-token conversation the engine's second
//! cache (H2O b300, beside MorphKV b300) is exactly a separate H2O run on the same tokens, and
//! every divergence the strip shows is what a recomputation from those two runs gives.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::mpsc::channel;
use std::time::Duration;

use morphkv::cache::{CacheConfig, PolicyKind, Positions};
use morphkv::chat::{encode_chat, ChatTemplate, Message};
use morphkv::engine::{divergence_of, Command, Divergence, Engine, Event, Settings, StepInfo};
use morphkv::sampling::SamplingParams;
use morphkv::session::Session;

fn cfg(policy: PolicyKind, budget: usize) -> CacheConfig {
    CacheConfig {
        policy,
        budget,
        window: Some(30),
        positions: Positions::Rebased,
        ..CacheConfig::default()
    }
}

/// KL(P‖Q) of two logit rows, in f64, written out independently of the engine's.
fn kl_f64(p: &[f32], q: &[f32]) -> f64 {
    let soft = |x: &[f32]| {
        let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
        x.iter()
            .map(|&v| (v as f64 - m).exp() / z)
            .collect::<Vec<_>>()
    };
    let (p, q) = (soft(p), soft(q));
    p.iter()
        .zip(&q)
        .filter(|(a, _)| **a > 0.0)
        .map(|(a, b)| a * (a / b).ln())
        .sum()
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn the_second_cache_is_a_separate_run_and_the_strip_is_exact() {
    let (model, tok) = common::load_default();
    let template = ChatTemplate::for_tokenizer(&tok, None).unwrap();
    let main = cfg(PolicyKind::MorphKv, 300);
    let other = cfg(PolicyKind::H2o, 300);

    // A long passage to continue: about 1,750 prompt tokens and up to 400 generated.
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("eval/texts/alice-in-wonderland.txt"),
    )
    .unwrap();
    let words: Vec<&str> = text.split_whitespace().skip(200).take(1250).collect();
    let messages = vec![Message::user(format!(
        "{}\n\nContinue this story in the same style, at length.",
        words.join(" ")
    ))];
    let ids = encode_chat(&tok, &template.render(&messages, true).unwrap()).unwrap();

    let (tx, rx) = channel();
    let engine = Engine::spawn(
        model.clone(),
        tok.clone(),
        template,
        "smollm2".into(),
        Settings {
            cache: main.clone(),
            sampling: SamplingParams::greedy(),
            max_tokens: 400,
        },
        move |e| {
            let _ = tx.send(e);
        },
    )
    .unwrap();
    engine.send(Command::Compare(Some(other.clone())));
    engine.send(Command::Reply(messages));
    let mut divergences: Vec<Divergence> = Vec::new();
    let mut last_step: Option<StepInfo> = None;
    let mut comparing = None;
    loop {
        match rx.recv_timeout(Duration::from_secs(600)).unwrap() {
            Event::Comparing(label) => comparing = label,
            Event::Divergence(d) => divergences.push(d),
            Event::Step(s) => last_step = Some(*s),
            Event::Finished { .. } => break,
            Event::Failed(e) | Event::CompareFailed(e) => panic!("engine failed: {e}"),
            _ => {}
        }
    }
    engine.send(Command::Quit);
    assert_eq!(comparing.as_deref(), Some("h2o b300 w30"));
    let generated = divergences.len();
    assert!(
        ids.len() + generated >= 2000,
        "{} prompt + {generated} generated tokens",
        ids.len()
    );
    assert!(divergences.iter().enumerate().all(|(i, d)| d.index == i));

    // The same tokens through two separate sessions, fed as the engine fed them: the prompt
    // at once, then each generated token.
    let mut a = Session::greedy(&model, main).unwrap();
    let mut b = Session::greedy(&model, other.clone()).unwrap();
    let mut off = Session::greedy(&model, cfg(PolicyKind::H2o, 299)).unwrap();
    a.prefill(&ids).unwrap();
    b.prefill(&ids).unwrap();
    off.prefill(&ids).unwrap();
    let (mut differing, mut kl_max, mut off_equal) = (0, 0.0f64, 0);
    for (i, d) in divergences.iter().enumerate() {
        let (kl, top_a, top_b) = divergence_of(a.logits(), b.logits());
        // Bit-equal: the engine's second cache computed exactly these logits (and its main
        // cache exactly those of the separate MorphKV run).
        assert_eq!(
            (d.kl.to_bits(), d.main_top1, d.other_top1),
            (kl.to_bits(), top_a, top_b),
            "token {i}"
        );
        assert_eq!(d.other_text, tok.token_text(top_b));
        // And an independent recomputation agrees.
        let want = kl_f64(a.logits(), b.logits());
        assert!(
            (d.kl as f64 - want).abs() <= 1e-5 + 1e-4 * want,
            "token {i}: {} vs {want}",
            d.kl
        );
        assert_eq!(d.differs(), argmax(a.logits()) != argmax(b.logits()));
        // Greedy: the main cache chose its own top-1.
        assert_eq!(d.token, d.main_top1);
        differing += usize::from(d.differs());
        kl_max = kl_max.max(want);
        // A cache one token smaller is not the same run: the check can tell them apart.
        off_equal +=
            usize::from(divergence_of(a.logits(), off.logits()).0.to_bits() == d.kl.to_bits());
        if i + 1 < generated {
            a.feed(d.token).unwrap();
            b.feed(d.token).unwrap();
            off.feed(d.token).unwrap();
        }
    }
    assert!(kl_max > 1e-4, "the two policies never differed: {kl_max}");
    assert!(off_equal < generated / 2, "{off_equal} of {generated}");
    eprintln!("{generated} tokens, top-1 differs at {differing}, max KL {kl_max:.4}");

    // The panels' view of the second cache after the last step is the separate run's cache.
    let step = last_step.unwrap();
    let c = step.compare.expect("compare info in the step");
    assert_eq!(c.policy, "h2o");
    // The engine also fed the answer's last token; the separate run stopped before it.
    b.feed(divergences.last().unwrap().token).unwrap();
    let cache = b.cache();
    assert_eq!(c.step.seen, cache.seen());
    assert_eq!(c.step.retained, cache.retained());
    assert_eq!(c.step.kv_bytes, cache.kv_bytes());
    assert_eq!(c.step.profile_bytes, cache.profile_bytes());
    let mut counts = vec![0u16; cache.seen()];
    for l in 0..cache.n_layers() {
        for h in 0..3 {
            for &p in cache.layer(l).positions(h) {
                counts[p as usize] += 1;
            }
        }
    }
    let got: Vec<u16> = (0..cache.seen()).map(|p| c.step.retention[p]).collect();
    assert_eq!(got, counts);
    assert!(c.cost > 0.0);
}
