//! A soak test of the chat: the engine thread on the real SmolLM2 at budget 300, its events
//! driving the chat's update function as in the TUI, over a conversation of at least 20,000
//! decoded tokens (several long replies, each turn feeding only its new tokens), with the
//! inspector following a token and the retention view focused on one (layer, KV head).
//!
//! Once the eviction history is full (four budgets after the budget filled: every bounded
//! record has reached its size), the heap in use may grow by under 256 bytes a token (the
//! conversation itself) and resident memory by under 10% (a reply's transient buffers), and the
//! time per token stays flat: the first 1,000 tokens decoded after the budget filled against
//! the last 1,000, by the median wall-clock time per token or, where other processes compete
//! for the cores (which slows the wall clock, not the work), by the process's CPU time per
//! token. At the end `/trace` still works, and the retention counts the chat was sent, kept
//! up to date from evictions, agree with what the cache holds.
//!
//! `MORPHKV_SOAK_TOKENS` and `MORPHKV_SOAK_REPLY` change the 20,000 tokens and the 4,000 per
//! reply, for a quicker look. Its own test binary, so no other test shares the process whose
//! memory it reads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use morphkv::cache::{CacheConfig, PolicyKind, Positions};
use morphkv::chat::{ChatTemplate, Message};
use morphkv::engine::{Command, Engine, Event, Settings};
use morphkv::sampling::SamplingParams;
use morphkv::tui::app::{App, Msg};

/// Resident memory of this process, in KiB, once glibc has given back the free pages it keeps
/// (`malloc_trim`, which the engine itself runs at every turn).
fn rss_kib() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointers and touches only glibc's own free lists.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Bytes the program holds on the heap (every arena, mapped chunks included): what its records
/// take, without the allocator's free pages. None where glibc does not say.
fn heap_bytes() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallinfo2` takes no arguments and reads glibc's own counters.
        #[allow(unsafe_code)]
        let m = unsafe { libc::mallinfo2() };
        Some(m.uordblks + m.hblkhd)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// CPU time this process has used (user + system, all threads), in milliseconds: the
/// 14th and 15th fields of /proc/self/stat, in clock ticks (USER_HZ, 100 on Linux).
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which may hold spaces; the state is field 3.
    let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
    ticks as f64 * 10.0
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const PROMPTS: [&str; 8] = [
    "Write a long story about a lighthouse keeper who finds old letters.",
    "Continue the story: what happens the next winter?",
    "Now tell the same story from the point of view of the letters' author.",
    "Write an epilogue, set fifty years later.",
    "Explain in detail how a lighthouse lamp and its lenses work.",
    "Write a long letter from the keeper to his sister.",
    "Describe the island, its birds and its storms, season by season.",
    "Tell the story of the ship that the lighthouse once saved.",
];

#[test]
fn soak_twenty_thousand_tokens_at_budget_300_keep_memory_and_time_per_token_flat() {
    let target = env_or("MORPHKV_SOAK_TOKENS", 20_000);
    let max_tokens = env_or("MORPHKV_SOAK_REPLY", 4000);
    let budget = 300;
    let block = 1000.min(target / 4).max(2);
    let cache = CacheConfig {
        policy: PolicyKind::MorphKv,
        budget,
        window: Some(30),
        positions: Positions::Rebased,
        ..CacheConfig::default()
    };
    let (model, tok) = common::load_default();
    let template = ChatTemplate::for_tokenizer(&tok, None).unwrap();
    let (tx, rx) = channel();
    let engine = Engine::spawn(
        model,
        tok,
        template,
        "smollm2".into(),
        Settings {
            cache: cache.clone(),
            sampling: SamplingParams::greedy(),
            max_tokens,
        },
        move |e| {
            let _ = tx.send(e);
        },
    )
    .unwrap();
    let mut app = App::new(cache, SamplingParams::greedy(), max_tokens);
    let recv = |rx: &Receiver<Event>| rx.recv_timeout(Duration::from_secs(600)).unwrap();
    let ready = recv(&rx);
    assert!(
        matches!(ready, Event::Ready { layers: 30, .. }),
        "{ready:?}"
    );
    app.update(Msg::Engine(ready));
    // The inspector follows an early token, the retention view one (layer, KV head): both
    // are reported with every step.
    for cmd in [Command::Inspect(Some(40)), Command::Focus(Some((29, 2)))] {
        engine.commands.send(cmd).unwrap();
    }

    let mut messages = Vec::new();
    // Per token decoded after the budget filled: milliseconds since the previous token of the
    // same reply (a reply's first token also waits for its prompt: none there), and the
    // process's CPU time when it arrived.
    // (Reserved up front: growing them would move the test's own memory under the figures.)
    let reserve = target + 2 * max_tokens;
    let (mut ms, mut cpu) = (Vec::with_capacity(reserve), Vec::with_capacity(reserve));
    // (tokens decoded, RSS in KiB): when the budget filled, every `block` tokens and at the
    // end of each reply.
    let mut rss = Vec::new();
    // (tokens decoded, heap bytes in use): when the history filled and at the end.
    let mut heap = Vec::new();
    let (mut generated, mut full, mut seen) = (0, false, 0);
    let started = Instant::now();
    for turn in 0.. {
        assert!(turn < 400, "{generated} tokens in {turn} replies");
        messages.push(Message::user(PROMPTS[turn % PROMPTS.len()]));
        engine
            .commands
            .send(Command::Reply(messages.clone()))
            .unwrap();
        let mut last: Option<Instant> = None;
        let answer = loop {
            let event = recv(&rx);
            let is_token = matches!(event, Event::Token { .. });
            let step = match &event {
                Event::Step(s) => Some((s.seen, s.retained, s.history_from)),
                _ => None,
            };
            let done = match &event {
                Event::Finished { text, .. } => Some(text.clone()),
                Event::Failed(e) => panic!("engine failed: {e}"),
                _ => None,
            };
            app.update(Msg::Engine(event));
            if let Some((s, retained, history_from)) = step {
                seen = s;
                if !full && retained >= budget {
                    full = true;
                }
                // The base: once the eviction history is full (it lets its oldest go), when
                // every bounded record has reached its size.
                if full && rss.is_empty() && history_from > 0 {
                    rss.push((generated, rss_kib()));
                    heap.push((generated, heap_bytes()));
                }
            }
            if is_token {
                let now = Instant::now();
                if full {
                    cpu.push(cpu_ms());
                    if let Some(t) = last {
                        ms.push(now.duration_since(t).as_secs_f64() * 1e3);
                    }
                }
                last = Some(now);
                generated += 1;
                if !rss.is_empty() && generated % block == 0 {
                    rss.push((generated, rss_kib()));
                }
            }
            if let Some(text) = done {
                break text;
            }
        };
        messages.push(Message::assistant(answer));
        if !rss.is_empty() {
            rss.push((generated, rss_kib()));
        }
        if generated >= target {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    heap.push((generated, heap_bytes()));

    // `/trace` still works after 20,000 tokens, and what the cache retains agrees with the
    // retention counts the chat was sent.
    let dir = std::env::temp_dir().join(format!("morphkv-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("trace.jsonl");
    engine
        .commands
        .send(Command::ExportTrace(path.clone()))
        .unwrap();
    loop {
        match recv(&rx) {
            Event::Exported(_) => break,
            Event::Failed(e) => panic!("export failed: {e}"),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    engine.commands.send(Command::Quit).unwrap();
    engine.thread.join().unwrap();
    assert_eq!(lines[0]["tokens"].as_u64().unwrap() as usize, seen);
    let held = lines.iter().filter(|l| l["kind"] == "evicted").count();
    let dropped = lines[0]["evictions_dropped"].as_u64().unwrap() as usize;
    let mut want = vec![0u16; seen];
    for l in lines.iter().filter(|l| l["kind"] == "retained") {
        for p in l["positions"].as_array().unwrap() {
            want[p.as_u64().unwrap() as usize] += 1;
        }
    }
    let got: Vec<u16> = (0..seen).map(|p| app.step.retention[p]).collect();
    assert!(got == want, "the retention counts disagree with the cache");

    assert!(full && ms.len() >= 2 * block, "{} timed tokens", ms.len());
    let (early, late) = (&ms[..block], &ms[ms.len() - block..]);
    let (early_med, late_med) = (median(early), median(late));
    let n = cpu.len();
    let early_cpu = (cpu[block] - cpu[0]) / block as f64;
    let late_cpu = (cpu[n - 1] - cpu[n - 1 - block]) / block as f64;
    assert!(!rss.is_empty(), "the eviction history never filled");
    let base = rss[0].1;
    let peak = rss.iter().map(|r| r.1).max().unwrap();
    let mib = |k: usize| k / 1024;
    eprintln!(
        "soak: {generated} tokens decoded in {} replies, conversation {seen} tokens, {secs:.0} s\n\
         soak: ms/token, first {block} after the budget filled: median {early_med:.2} mean {:.2} CPU {early_cpu:.2}; last {block}: median {late_med:.2} mean {:.2} CPU {late_cpu:.2}\n\
         soak: RSS {} MiB when the eviction history filled, {} MiB at the end, {} MiB at most ({:+.1}%)\n\
         soak: (tokens, RSS MiB) every {block} tokens and at the end of each reply: {:?}\n\
         soak: median ms/token of each {block}: {:?}\n\
         soak: trace of {} lines ({held} evictions held, {dropped} earlier ones let go); the last step's retention stored in {} entries",
        messages.len() / 2,
        mean(early),
        mean(late),
        mib(base),
        mib(rss.last().unwrap().1),
        mib(peak),
        100.0 * (peak as f64 / base as f64 - 1.0),
        rss.iter().map(|&(t, k)| (t, mib(k))).collect::<Vec<_>>(),
        ms.chunks(block)
            .map(|c| (median(c) * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        lines.len(),
        app.step.retention.stored()
    );
    assert!(generated >= target);
    // The chat kept up: its token texts cover every position of the conversation, stored
    // only where a view can show them (the history's reach, at least the newest 1,024, and
    // what the cache holds), and a bounded chart.
    assert_eq!(app.tokens.len(), seen);
    let reach = (seen - app.step.history_from.min(seen)).max(1024);
    assert!(
        app.tokens.stored() <= reach + app.step.retention.stored(),
        "{} token texts stored for a history reaching {reach} back",
        app.tokens.stored()
    );
    assert!(app.history.len() <= 4096);
    // From when every bounded record is full, what the program holds grows only by the
    // conversation itself (its messages and token ids, a few bytes a token, several copies):
    // under 256 bytes a token decoded, where per-position records of the panels (the old
    // defect) took 0.5 KiB.
    if let [(t0, Some(h0)), (t1, Some(h1))] = heap[..] {
        let per_token = (h1 as f64 - h0 as f64) / (t1 - t0).max(1) as f64;
        eprintln!(
            "soak: heap in use {} -> {} KiB, {per_token:.0} bytes a token",
            h0 / 1024,
            h1 / 1024
        );
        assert!(
            per_token < 256.0,
            "the heap grew by {per_token:.0} bytes a token once the history was full"
        );
    }
    // Resident memory may rise by a reply's transient buffers (glibc's arenas keep their
    // high-water mark while a reply runs, a few MiB up and down between replies) but not with
    // the conversation's length.
    assert!(
        peak as f64 <= base as f64 * 1.1,
        "resident memory grew from {base} KiB to {peak} KiB (over 10%) once the history was full"
    );
    assert!(
        late_med <= early_med * 1.3 || late_cpu <= early_cpu * 1.3,
        "time per token grew from {early_med:.2} ms to {late_med:.2} ms (CPU {early_cpu:.2} to {late_cpu:.2})"
    );
}
