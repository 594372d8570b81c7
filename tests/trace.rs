//! The eviction trace read back as an untrusted file: a good one gives the retained sets of
//! every step it reaches; a damaged or hostile one is refused with an error that names the
//! file, the line and what is wrong, and never panics (random mutations included).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use morphkv::engine::trace::{read, read_from};
use morphkv::engine::travel::held_at;

/// A trace of 2 layers × 1 KV head, budget 3, over 5 tokens (a 3-token prompt, then 2).
fn good() -> Vec<String> {
    vec![
        r#"{"kind":"header","format":"morphkv-trace","version":1,"model":"tiny","policy":"h2o","budget":3,"window":1,"effective_window":1,"sinks":0,"positions":"absolute","layers":2,"kv_heads":1,"kv_bytes_per_token":64,"profile_bytes_per_token":0,"tokens":5,"token_text":["a","b","c","d","e"],"prompts":[[0,3]],"evictions_dropped":0,"evictions_dropped_through_step":0}"#.into(),
        r#"{"kind":"evicted","step":4,"layer":0,"head":0,"pos":1,"score":0.5}"#.into(),
        r#"{"kind":"evicted","step":4,"layer":1,"head":0,"pos":0,"score":null}"#.into(),
        r#"{"kind":"evicted","step":5,"layer":0,"head":0,"pos":2,"score":0.25}"#.into(),
        r#"{"kind":"evicted","step":5,"layer":1,"head":0,"pos":1,"score":0.125}"#.into(),
        r#"{"kind":"retained","layer":0,"head":0,"positions":[0,3,4]}"#.into(),
        r#"{"kind":"retained","layer":1,"head":0,"positions":[4,2,3]}"#.into(),
    ]
}

fn parse(lines: &[String]) -> Result<morphkv::engine::trace::Trace, String> {
    let text = lines.join("\n") + "\n";
    read_from(text.as_bytes(), Path::new("bad.jsonl")).map_err(|e| e.to_string())
}

#[test]
fn a_good_trace_gives_every_step_it_reaches() {
    let t = parse(&good()).unwrap();
    assert_eq!(t.header.tokens, 5);
    assert_eq!(t.evictions.len(), 4);
    assert!(t.evictions[1].score.is_nan());
    assert_eq!(t.dropped_through, 0);
    let now: Vec<&[u32]> = t.retained.iter().map(Vec::as_slice).collect();
    let at = |s| held_at(s, &now, &t.evictions);
    assert_eq!(at(5), vec![vec![0, 3, 4], vec![2, 3, 4]]);
    assert_eq!(at(4), vec![vec![0, 2, 3], vec![1, 2, 3]]);
    assert_eq!(at(3), vec![vec![0, 1, 2], vec![0, 1, 2]]);
    assert_eq!(at(0), vec![Vec::<u32>::new(), Vec::new()]);
}

#[test]
fn damaged_traces_are_refused_with_the_line_and_the_fault() {
    let with = |i: usize, line: &str| {
        let mut l = good();
        l[i] = line.into();
        l
    };
    let header = good()[0].clone();
    let cases: Vec<(Vec<String>, &[&str])> = vec![
        (
            with(2, r#"{"kind":"evicted","#),
            &["line 3", "not a trace line"],
        ),
        (
            with(2, r#"{"kind":"bogus","x":1}"#),
            &["line 3", "unknown kind"],
        ),
        (
            with(
                0,
                r#"{"kind":"retained","layer":0,"head":0,"positions":[]}"#,
            ),
            &["line 1", "not a header"],
        ),
        (
            with(
                1,
                r#"{"kind":"evicted","step":4,"layer":5,"head":0,"pos":1,"score":0.5}"#,
            ),
            &["line 2", "layer 5 head 0 is out of range"],
        ),
        (
            with(
                1,
                r#"{"kind":"evicted","step":4,"layer":0,"head":3,"pos":1,"score":0.5}"#,
            ),
            &["line 2", "out of range"],
        ),
        (
            with(
                1,
                r#"{"kind":"evicted","step":4,"layer":0,"head":0,"pos":4,"score":0.5}"#,
            ),
            &["line 2", "before it arrived"],
        ),
        (
            with(
                1,
                r#"{"kind":"evicted","step":9,"layer":0,"head":0,"pos":1,"score":0.5}"#,
            ),
            &["line 2", "step 9 is out of range"],
        ),
        (
            with(
                3,
                r#"{"kind":"evicted","step":3,"layer":0,"head":0,"pos":2,"score":0.5}"#,
            ),
            &["line 4", "out of order"],
        ),
        (
            with(
                1,
                r#"{"kind":"evicted","step":-4,"layer":0,"head":0,"pos":1,"score":0.5}"#,
            ),
            &["line 2", "not a trace line"],
        ),
        (
            with(
                1,
                r#"{"kind":"evicted","step":"four","layer":0,"head":0,"pos":1,"score":0.5}"#,
            ),
            &["line 2", "not a trace line"],
        ),
        (
            with(
                3,
                r#"{"kind":"evicted","step":5,"layer":0,"head":0,"pos":1,"score":0.5}"#,
            ),
            &["evicted twice"],
        ),
        (
            with(
                5,
                r#"{"kind":"retained","layer":0,"head":0,"positions":[0,3,9]}"#,
            ),
            &["line 6", "position 9 is past"],
        ),
        (
            with(
                6,
                r#"{"kind":"retained","layer":0,"head":0,"positions":[0,3,4]}"#,
            ),
            &["line 7", "a second `retained` line"],
        ),
        (
            good()[..6].to_vec(),
            &["no `retained` line for layer 1 head 0"],
        ),
        (with(6, &header), &["line 7", "a second header"]),
        (
            with(0, &header.replace(r#""layers":2"#, r#""layers":100000"#)),
            &["line 1", "layers 100000 is out of range"],
        ),
        (
            with(
                0,
                &header
                    .replace(r#""kv_heads":1"#, r#""kv_heads":1000"#)
                    .replace(r#""layers":2"#, r#""layers":1000"#),
            ),
            &["line 1", "layers × kv_heads"],
        ),
        (
            with(
                0,
                &header.replace(r#""tokens":5"#, r#""tokens":1099511627776"#),
            ),
            &["line 1", "tokens 1099511627776 is out of range"],
        ),
        (
            with(0, &header.replace(r#""budget":3"#, r#""budget":0"#)),
            &["line 1", "budget"],
        ),
        (
            with(0, &header.replace(r#""tokens":5"#, r#""tokens":4"#)),
            &["line 1", "token_text has 5 entries for 4 tokens"],
        ),
        (
            with(
                0,
                &header.replace(r#""sinks":0"#, r#""history":1001,"sinks":0"#),
            ),
            &["line 1", "history must be between 0 and 1000"],
        ),
        (
            with(0, &header.replace(r#""version":1"#, r#""version":7"#)),
            &["line 1", "newer"],
        ),
        (
            with(0, &header.replace(r#"[[0,3]]"#, r#"[[3,1]]"#)),
            &["line 1", "prompt [3, 1)"],
        ),
        (
            with(0, &header.replace(r#""layers":2,"#, "")),
            &["line 1", "missing field `layers`"],
        ),
        (vec![String::new()], &["empty"]),
    ];
    for (lines, needles) in cases {
        let e = parse(&lines).expect_err(&format!("{lines:?} was read"));
        assert!(e.starts_with("bad.jsonl: "), "{e}");
        for n in needles {
            assert!(e.contains(n), "missing {n:?} in {e}");
        }
    }
    // Not UTF-8; a line past the bound.
    let mut bytes = good().join("\n").into_bytes();
    bytes[30] = 0xff;
    let e = read_from(bytes.as_slice(), Path::new("x.jsonl")).unwrap_err();
    assert!(e.to_string().contains("line 1: not UTF-8"), "{e}");
    let long = format!("{}\n{}\n", good()[0], " ".repeat(33 << 20));
    let e = read_from(long.as_bytes(), Path::new("x.jsonl")).unwrap_err();
    assert!(e.to_string().contains("line 2: longer than 32 MiB"), "{e}");
    // A folder, a missing file.
    let dir = std::env::temp_dir();
    assert!(read(&dir)
        .unwrap_err()
        .to_string()
        .contains("not a regular file"));
    let e = read(&dir.join("no-such-trace.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no-such-trace.jsonl"), "{e}");
}

/// Random byte changes, deletions and line swaps: each read ends in a trace or an error.
#[test]
fn mutated_traces_never_panic() {
    let base = good().join("\n").into_bytes();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"0123456789-,:[]{}\"e.\n ";
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..3000 {
        let mut b = base.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() as usize) % b.len();
            match next() % 3 {
                0 => b[i] = alphabet[(next() as usize) % alphabet.len()],
                1 => {
                    b.remove(i);
                }
                _ => b.insert(i, alphabet[(next() as usize) % alphabet.len()]),
            }
        }
        match read_from(b.as_slice(), Path::new("m.jsonl")) {
            Ok(t) => {
                ok += 1;
                // What was read is consistent enough to travel through.
                let now: Vec<&[u32]> = t.retained.iter().map(Vec::as_slice).collect();
                for s in t.dropped_through..=t.header.tokens {
                    let held = held_at(s, &now, &t.evictions);
                    assert_eq!(held.len(), t.header.pairs());
                }
            }
            Err(e) => {
                refused += 1;
                assert!(e.to_string().starts_with("m.jsonl"), "{e}");
            }
        }
    }
    assert!(ok > 0 && refused > 0, "{ok} read, {refused} refused");
}

/// `morphkv replay` refuses a damaged trace on one line, before it takes the terminal.
#[test]
fn replay_refuses_a_damaged_trace_on_one_line() {
    let dir = std::env::temp_dir().join(format!("morphkv-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("damaged.jsonl");
    let mut lines = good();
    lines[1] = r#"{"kind":"evicted","step":4,"layer":9,"head":0,"pos":1,"score":0.5}"#.into();
    std::fs::write(&p, lines.join("\n")).unwrap();
    for (file, needles) in [
        (
            p.clone(),
            vec!["damaged.jsonl", "line 2", "layer 9 head 0 is out of range"],
        ),
        (dir.join("missing.jsonl"), vec!["missing.jsonl"]),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_morphkv"))
            .arg("replay")
            .arg(&file)
            .env("MORPHKV_CONFIG_DIR", dir.join("config"))
            .env("MORPHKV_DATA_DIR", dir.join("data"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        for n in needles {
            assert!(err.contains(n), "missing {n:?} in {err}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
