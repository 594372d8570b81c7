//! `morphkv eval` on the real SmolLM2: exact agreement where nothing is evicted, the
//! perplexity mode against a hand computation, the JSON's fields, and bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use candle_core::{DType, Device};
use morphkv::cache::{CacheConfig, KvCache, KvType, PolicyKind, POLICIES};
use morphkv::eval::{self, Reference, Text, Variant};
use morphkv::model::{open_gguf, Logits, Model, WeightFormat};
use morphkv::tokenizer::Tokenizer;

fn load() -> (Model, Tokenizer) {
    load_as(WeightFormat::Auto)
}

fn load_as(weights: WeightFormat) -> (Model, Tokenizer) {
    let path = common::default_model();
    let (ct, mut reader) = open_gguf(&path).unwrap();
    let model = Model::from_gguf(&ct, &mut reader, &path, &Device::Cpu, weights).unwrap();
    let tok = Tokenizer::from_gguf(&ct, &path).unwrap();
    (model, tok)
}

fn text_tokens(tok: &Tokenizer, n: usize) -> Vec<u32> {
    let text = &Text::load(&[] as &[&str]).unwrap()[0].body;
    let mut ids = tok.encode_plain(text).unwrap();
    ids.truncate(n);
    ids
}

#[test]
fn where_nothing_is_evicted_every_cache_equals_full_exactly() {
    let (model, tok) = load();
    let ids = text_tokens(&tok, 90);
    // `full` against itself, and every policy with a budget above the text's length, all
    // with the reference's f32 keys and values (f16 would round them).
    let mut variants = vec![Variant::new(CacheConfig {
        kv_type: KvType::F32,
        ..CacheConfig::full()
    })];
    for p in POLICIES.iter().skip(1) {
        variants.push(Variant::new(CacheConfig {
            policy: p.parse().unwrap(),
            budget: 200,
            window: Some(8),
            kv_type: KvType::F32,
            ..CacheConfig::default()
        }));
    }
    let fids = eval::teacher_forced(
        &model,
        &[ids],
        &variants,
        32,
        Reference::Exact,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(fids.len(), POLICIES.len());
    for f in &fids {
        assert_eq!(f.overall.count, 89, "{}", f.label);
        assert_eq!(f.overall.ppl_change_pct, 0.0, "{}", f.label);
        assert_eq!(f.overall.kl, 0.0, "{}", f.label);
        assert_eq!(f.overall.top1, 1.0, "{}", f.label);
        assert!(
            f.overall.ppl > 1.0 && f.overall.ppl < 1000.0,
            "{}",
            f.overall.ppl
        );
        assert_eq!(f.bins.len(), 3);
    }
    // And with a small budget the bounded caches do lose something.
    let small = vec![Variant::new(CacheConfig {
        policy: PolicyKind::Streaming,
        budget: 24,
        window: Some(8),
        ..CacheConfig::default()
    })];
    let ids = text_tokens(&tok, 90);
    let f =
        eval::teacher_forced(&model, &[ids], &small, 32, Reference::Exact, &mut |_, _| {}).unwrap();
    assert!(f[0].overall.kl > 0.0 && f[0].overall.top1 < 1.0);
    assert!(f[0].memory_ratio() < 0.5, "{}", f[0].memory_ratio());
}

#[test]
fn perplexity_matches_a_hand_computation() {
    let (model, tok) = load();
    let ids = text_tokens(&tok, 200);
    let n_ctx = 64;
    let p = eval::perplexity(&model, &tok, &ids, n_ctx, &mut |_, _| {}).unwrap();
    assert_eq!(p.chunks, 3);
    // By hand: each chunk from an empty cache, the second half's next-token log-probs.
    let (mut sum, mut count) = (0f64, 0usize);
    for c in 0..3 {
        let mut chunk = ids[c * n_ctx..(c + 1) * n_ctx].to_vec();
        if tok.add_bos() {
            chunk[0] = tok.bos_id().unwrap();
        }
        let mut cache = KvCache::new(model.config(), DType::F32, &Device::Cpu).unwrap();
        let rows = model
            .forward(&chunk, &mut cache, Logits::All)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for j in n_ctx / 2..n_ctx - 1 {
            let row: Vec<f64> = rows[j].iter().map(|&x| f64::from(x)).collect();
            let max = row.iter().copied().fold(f64::MIN, f64::max);
            let lse = row.iter().map(|x| (x - max).exp()).sum::<f64>().ln() + max;
            sum += lse - row[chunk[j + 1] as usize];
            count += 1;
        }
    }
    let want = (sum / count as f64).exp();
    assert!(
        (p.ppl - want).abs() < 1e-4 * want,
        "perplexity {} vs by hand {want}",
        p.ppl
    );
    assert_eq!(p.running.len(), 3);
    assert!(p.stderr > 0.0);
}

#[test]
fn fluency_judge_equals_the_generating_full_cache_when_it_sees_everything() {
    // One weight form for one-token steps and whole passes alike (auto mixes two).
    let (model, tok) = load_as(WeightFormat::F32);
    let template = morphkv::chat::ChatTemplate::for_tokenizer(&tok, None).unwrap();
    let opts = eval::FluencyOptions {
        tokens: 48,
        judged: 20,
        // More than prompt + answer: the judge sees exactly what the generating cache saw.
        context: 10_000,
        sampling: morphkv::sampling::SamplingParams::default(),
    };
    // The full cache with the judge's f32 keys and values (f16 would round them).
    let variants = vec![
        Variant::new(CacheConfig {
            kv_type: KvType::F32,
            ..CacheConfig::full()
        }),
        Variant::new(CacheConfig {
            policy: PolicyKind::Streaming,
            budget: 24,
            window: Some(4),
            ..CacheConfig::full()
        }),
    ];
    let out = eval::fluency(
        &model,
        &tok,
        &template,
        "Tell me a long story about a lighthouse.",
        &variants,
        &opts,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(out.len(), 2);
    let full = &out[0];
    assert_eq!(full.generated, 48);
    assert_eq!(full.context, full.prompt_tokens + 48 - 20);
    let rel = (full.judge_ppl - full.self_ppl).abs() / full.self_ppl;
    assert!(
        rel < 1e-3,
        "judge {} vs own {}",
        full.judge_ppl,
        full.self_ppl
    );
    // A cache that keeps 24 tokens saw less than the judge: its own perplexity differs.
    let small = &out[1];
    assert!(small.kv_bytes < full.kv_bytes);
    assert!((small.judge_ppl - small.self_ppl).abs() / small.self_ppl > 1e-3);
    assert!(full.distinct4 > 0.0 && full.distinct4 <= 1.0);
}

fn eval_cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_morphkv"))
        .arg("eval")
        .arg("-m")
        .arg(common::default_model())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--recents` runs each share for the policies that score (H2O and MorphKV here), once for
/// StreamingLLM, and the shares change what is kept.
#[test]
fn recents_run_each_share_on_the_policies_that_score() {
    let (ok, stdout, stderr) = eval_cli(&[
        "--task",
        "text",
        "--policies",
        "streaming,h2o,morphkv",
        "--budgets",
        "40",
        "--window",
        "8",
        "--recents",
        "0,50",
        "--tokens",
        "96",
        "--bin",
        "48",
        "--markdown",
    ]);
    assert!(ok, "{stderr}");
    // The first table's rows: label → KL.
    let rows: Vec<(String, String)> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("### teacher-forced"))
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].to_string(), cells[6].to_string())
        })
        .collect();
    let labels: Vec<&str> = rows.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(
        labels,
        [
            "streaming b40",
            "h2o b40 w8",
            "h2o b40 w8 r50%",
            "morphkv b40 w8 sum h100%",
            "morphkv b40 w8 sum h100% r50%"
        ],
        "{stdout}"
    );
    assert_ne!(
        rows[1].1, rows[2].1,
        "h2o's share changed nothing: {stdout}"
    );
    assert_ne!(
        rows[3].1, rows[4].1,
        "morphkv's share changed nothing: {stdout}"
    );
}

#[test]
fn the_json_has_every_documented_field() {
    let dir = std::env::temp_dir().join(format!("morphkv-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("out.json");
    let plots = dir.join("plots");
    let (ok, stdout, stderr) = eval_cli(&[
        "--task",
        "text,perplexity",
        "--policies",
        "streaming,morphkv",
        "--budgets",
        "24,40",
        "--window",
        "8",
        "--tokens",
        "80",
        "--bin",
        "40",
        "-c",
        "32",
        "--json",
        json.to_str().unwrap(),
        "--plots",
        plots.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("morphkv b24 w8 sum") && stdout.contains("Final estimate: PPL"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let text = v["text"].as_array().unwrap();
    assert_eq!(text.len(), 4);
    for f in text {
        for key in [
            "label",
            "policy",
            "budget",
            "window",
            "overall",
            "bins",
            "kv_bytes",
            "profile_bytes",
            "full_kv_bytes",
            "retained",
        ] {
            assert!(f.get(key).is_some(), "missing {key}");
        }
        for key in [
            "from",
            "to",
            "count",
            "ppl_full",
            "ppl",
            "ppl_change_pct",
            "kl",
            "top1",
        ] {
            assert!(f["overall"].get(key).is_some(), "missing overall.{key}");
        }
    }
    assert!(v["perplexity"]["ppl"].as_f64().unwrap() > 1.0);
    for svg in [
        "text-ppl-by-position.svg",
        "text-top1-by-position.svg",
        "text-ppl-by-budget.svg",
    ] {
        let body = std::fs::read_to_string(plots.join(svg)).unwrap();
        assert!(body.starts_with("<svg") && body.len() < 200_000, "{svg}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_gets_one_clear_line() {
    let dir = std::env::temp_dir().join(format!("morphkv-evalbad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let missing = dir.join("nope.txt");
    let short = dir.join("short.txt");
    std::fs::write(&short, "Just a few words here.").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--text", empty.to_str().unwrap()], "is empty"),
        (vec!["--text", missing.to_str().unwrap()], "cannot read"),
        (vec!["--budgets", "12x"], "invalid value '12x'"),
        (
            vec!["--text", short.to_str().unwrap(), "--budgets", "64"],
            "no more than the largest budget",
        ),
        (vec!["--policies", "lru"], "unknown policy `lru`"),
        (vec!["--task", "vibes"], "invalid value for --task"),
        (vec!["--suite", "huge"], "invalid value for --suite"),
    ];
    for (args, want) in cases {
        let (ok, _, stderr) = eval_cli(&args);
        assert!(!ok, "{args:?} should fail");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn equal_bytes_picks_the_largest_budget_that_fits_and_reports_its_bytes() {
    let dir = std::env::temp_dir().join(format!("morphkv-evaleq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("out.json");
    let plots = dir.join("plots");
    let (ok, stdout, stderr) = eval_cli(&[
        "--equal-bytes",
        "2MiB,3MB,50KB",
        // The sizes below are f32 K/V's.
        "--kv-type",
        "f32",
        "--policies",
        "morphkv,streaming,tova,snapkv",
        "--window",
        "8",
        "--tokens",
        "160",
        "--bin",
        "80",
        "--json",
        json.to_str().unwrap(),
        "--plots",
        plots.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("at equal memory"), "{stdout}");
    // Left out, one line per policy: SnapKV (unbounded while decoding), and every policy at
    // 50 KB (below its smallest budget).
    assert!(
        stdout.contains("not run: snapkv: left out of --equal-bytes"),
        "{stdout}"
    );
    for p in ["morphkv", "streaming", "tova"] {
        assert!(
            stdout.contains(&format!("not run: {p}: invalid value for --equal-bytes: 48.83 KiB (50000 B) is too small for {p}")),
            "{p}: {stdout}"
        );
    }
    let (model, _) = load();
    let shape = morphkv::cache::Shape::from(model.config());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = v["equal_bytes"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "{rows:?}");
    let mut seen = Vec::new();
    for r in rows {
        let (bytes, budget) = (
            r["bytes"].as_u64().unwrap() as usize,
            r["budget"].as_u64().unwrap() as usize,
        );
        let policy: PolicyKind = r["policy"].as_str().unwrap().parse().unwrap();
        seen.push((bytes, policy.name()));
        let at = |budget| {
            CacheConfig {
                policy,
                budget,
                window: Some(8),
                kv_type: KvType::F32,
                ..CacheConfig::default()
            }
            .bytes_at(&shape)
        };
        let want = at(budget);
        // The cache's own bytes at the end of the run equal the formula's, and fit.
        assert_eq!(r["kv_bytes"].as_u64().unwrap() as usize, want.kv, "{r}");
        assert_eq!(
            r["profile_bytes"].as_u64().unwrap() as usize,
            want.profile,
            "{r}"
        );
        assert_eq!(
            r["total_bytes"].as_u64().unwrap() as usize,
            want.total(),
            "{r}"
        );
        assert!(want.total() <= bytes, "{r}");
        assert!(at(budget + 1).total() > bytes, "{r}: one more token fits");
        assert_eq!(want.profile > 0, policy != PolicyKind::Streaming, "{r}");
    }
    assert_eq!(
        seen,
        [2 << 20, 3_000_000]
            .iter()
            .flat_map(|&b| ["morphkv", "streaming", "tova"].map(|p| (b, p)))
            .collect::<Vec<_>>()
    );
    for svg in ["text-top1-by-bytes.svg", "text-ppl-by-bytes.svg"] {
        let body = std::fs::read_to_string(plots.join(svg)).unwrap();
        assert!(
            body.starts_with("<svg") && body.matches("<polyline").count() == 3,
            "{svg}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();

    // Bad sizes and conflicting flags: one clear line naming the flag and the value.
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--equal-bytes", "12x"],
            "invalid value '12x' for '--equal-bytes <BYTES>'",
        ),
        (vec!["--equal-bytes", "0"], "out of range"),
        (
            vec!["--equal-bytes", "8MiB", "--budgets", "64"],
            "cannot be used with",
        ),
        (
            vec!["--equal-bytes", "1KB", "--policies", "morphkv"],
            "no cache fits any of the sizes given",
        ),
    ];
    for (args, want) in cases {
        let (ok, _, stderr) = eval_cli(&args);
        assert!(!ok, "{args:?} should fail");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
