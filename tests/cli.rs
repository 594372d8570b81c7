//! Bad input to the binary: a one-line error naming the problem, a non-zero exit, no panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("morphkv-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the binary; returns (exit code, stderr).
fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_morphkv"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a failing run printed one error line containing every `needle`.
fn assert_fails(args: &[&str], needles: &[&str]) {
    let (code, err) = run(args);
    assert_ne!(code, 0, "{args:?} should fail; stderr: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert!(!err.contains("stack backtrace"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {err:?} should mention {n:?}");
    }
}

fn gen<'a>(model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["generate", "-m", model, "-p", "hello", "-n", "4"];
    v.extend_from_slice(extra);
    v
}

#[test]
fn missing_model_file() {
    assert_fails(
        &gen("/no/such/dir/model.gguf", &[]),
        &["/no/such/dir/model.gguf", "does not exist"],
    );
}

#[test]
fn file_that_is_not_gguf() {
    let p = tmpdir("notgguf").join("notes.gguf");
    std::fs::write(&p, "these are my notes, not a model\n".repeat(100)).unwrap();
    assert_fails(
        &gen(p.to_str().unwrap(), &[]),
        &[p.to_str().unwrap(), "not a usable model", "GGUF"],
    );
}

#[test]
fn truncated_gguf() {
    let src = common::default_model();
    let bytes = std::fs::read(&src).unwrap();
    let p = tmpdir("truncated").join("half.gguf");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(
        &gen(p.to_str().unwrap(), &[]),
        &[p.to_str().unwrap(), "truncated"],
    );
}

fn write_gguf(path: &Path, arch: &str) {
    let t = QTensor::quantize(
        &Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let md = [("general.architecture", Value::String(arch.to_string()))];
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &[("token_embd.weight", &t)]).unwrap();
}

#[test]
fn unsupported_architecture() {
    let p = tmpdir("arch").join("gpt2.gguf");
    write_gguf(&p, "gpt2");
    assert_fails(
        &gen(p.to_str().unwrap(), &[]),
        &["`gpt2`", "not supported", "llama"],
    );
}

#[test]
fn unknown_preset() {
    assert_fails(
        &gen("llama-9000b", &[]),
        &["unknown model `llama-9000b`", "smollm2-135m-instruct"],
    );
}

#[test]
fn empty_prompt() {
    assert_fails(&["generate", "-p", "  ", "-n", "4"], &["prompt is empty"]);
}

#[test]
fn zero_tokens() {
    assert_fails(&["generate", "-p", "hi", "-n", "0"], &["-n", "positive"]);
}

#[test]
fn invalid_sampling_values() {
    assert_fails(&["generate", "-p", "hi", "--temp", "-1"], &["--temp"]);
    assert_fails(&["generate", "-p", "hi", "--top-p", "1.5"], &["--top-p"]);
    assert_fails(&["generate", "-p", "hi", "--min-p", "2"], &["--min-p"]);
    assert_fails(
        &["generate", "-p", "hi", "--repeat-penalty", "0"],
        &["--repeat-penalty"],
    );
    assert_fails(
        &["generate", "-p", "hi", "--weights", "q3"],
        &["--weights", "q3"],
    );
}

#[test]
fn generates_text_from_the_default_model() {
    common::default_model();
    let out = Command::new(env!("CARGO_BIN_EXE_morphkv"))
        .args([
            "generate",
            "-p",
            "Name three colours.",
            "-n",
            "24",
            "--temp",
            "0",
            "-sys",
            "Answer briefly.",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.split_whitespace().count() >= 3, "{stdout:?}");
    assert!(
        stderr.contains("decode:") && stderr.contains("tok/s"),
        "{stderr}"
    );
    // The default model's preset leaves the window to the policy: MorphKV's 4.
    assert!(
        stderr.contains("kv cache: morphkv budget 600 window 4 |"),
        "{stderr}"
    );
}

#[test]
fn invalid_cache_settings() {
    assert_fails(
        &["generate", "-p", "hi", "--budget", "20", "--window", "30"],
        &["--budget", "window 30"],
    );
    // H2O's default window is 30, MorphKV's 4: the same budget fails for one only.
    assert_fails(
        &["generate", "-p", "hi", "--policy", "h2o", "--budget", "20"],
        &["--budget", "window 30"],
    );
    assert_fails(&["generate", "-p", "hi", "--window", "0"], &["--window"]);
    assert_fails(
        &["generate", "-p", "hi", "--policy", "lru"],
        &["--policy", "lru", "morphkv"],
    );
    assert_fails(
        &["generate", "-p", "hi", "--fusion", "mean"],
        &["--fusion", "mean"],
    );
    assert_fails(
        &["generate", "-p", "hi", "--group-agg", "avg"],
        &["--group-agg", "avg"],
    );
    assert_fails(
        &["generate", "-p", "hi", "--evict-every", "0"],
        &["--evict-every"],
    );
    assert_fails(
        &[
            "generate",
            "-p",
            "hi",
            "--policy",
            "streaming",
            "--budget",
            "10",
            "--window",
            "6",
        ],
        &["--budget", "sinks 4"],
    );
}

#[test]
fn trace_records_every_eviction() {
    common::default_model();
    let p = tmpdir("trace").join("trace.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_morphkv"))
        .args([
            "generate",
            "-p",
            "Count from one to fifty in words.",
            "-n",
            "40",
            "--temp",
            "0",
        ])
        .args(["--ignore-eos", "--budget", "48", "--window", "8", "--trace"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The chat's trace format (engine/trace.rs): a header, every eviction with its step,
    // what each (layer, KV head) retains at the end; read back by the same module.
    let text = std::fs::read_to_string(&p).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["kind"], "header");
    assert_eq!(lines[0]["budget"], 48);
    // MorphKV's default recent share: three quarters of 48.
    assert_eq!(lines[0]["recent"], 75);
    assert_eq!(lines[0]["protected"], 36);
    let tokens = lines[0]["tokens"].as_u64().unwrap();
    let prompt = lines[0]["prompts"][0][1].as_u64().unwrap();
    // Every generated token but the last went through the model.
    assert_eq!(tokens, prompt + 40 - 1, "one step per generated token");
    let mut evictions = 0;
    for l in lines.iter().filter(|l| l["kind"] == "evicted") {
        let step = l["step"].as_u64().unwrap();
        // 30 layers x 3 KV heads; never a protected token (the window, the recent share).
        assert!(l["layer"].as_u64().unwrap() < 30 && l["head"].as_u64().unwrap() < 3);
        assert!(
            l["pos"].as_u64().unwrap() + 36 < step,
            "{l} evicted from the protected recent tokens at {step}"
        );
        assert!(l["score"].as_f64().is_some());
        evictions += 1;
    }
    let retained: Vec<_> = lines.iter().filter(|l| l["kind"] == "retained").collect();
    assert_eq!(retained.len(), 90);
    assert!(retained
        .iter()
        .all(|r| r["positions"].as_array().unwrap().len() <= 48));
    // The prompt fills the budget early: from then on every layer and head evicts each step.
    assert!(
        evictions >= 30 * 3 * 20,
        "only {evictions} evictions traced"
    );
    let t = morphkv::engine::trace::read(&p).unwrap();
    assert_eq!(t.evictions.len(), evictions);
}

/// Runs `morphkv chat ARGS` with its own config and data folders.
fn chat_with_config(config: &str, args: &[&str]) -> (i32, String) {
    let dir = tmpdir(&format!("chat-{}", args.join("-").replace(['/', '.'], "_")));
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(dir.join("config").join("config.toml"), config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_morphkv"))
        .arg("chat")
        .args(args)
        .env("MORPHKV_CONFIG_DIR", dir.join("config"))
        .env("MORPHKV_DATA_DIR", dir.join("data"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A resumed chat's saved settings are read as untrusted: one that is out of range or
/// unknown is refused before the model loads, naming the chat's file and the flag that
/// replaces it; the flag given, the chat resumes past that check.
#[test]
fn a_resumed_chats_bad_settings_name_its_file() {
    let chat = |policy: &str, budget: usize| {
        format!(
            r#"{{"version": 1, "id": "20261201-100000-0002", "title": "t", "created": 1,
              "updated": 2, "model": "m", "policy": "{policy}", "budget": {budget},
              "window": 20, "messages": []}}"#
        )
    };
    for (json, flags, needles) in [
        (
            chat("h2o", 10),
            &[][..],
            &[
                "the saved chat's budget",
                "20261201-100000-0002.json",
                "--budget",
                "window 20",
            ][..],
        ),
        (
            chat("lru", 300),
            &[],
            &["20261201-100000-0002.json", "policy", "lru", "--policy"],
        ),
        (
            chat("h2o", 0),
            &[
                "--budget",
                "30",
                "--window",
                "4",
                "-m",
                "/nonexistent/model.gguf",
            ],
            &["/nonexistent/model.gguf"],
        ),
    ] {
        let dir = tmpdir(&format!("resume-bad-{}", needles[0].len() + flags.len()));
        let chats = dir.join("data").join("chats");
        std::fs::create_dir_all(&chats).unwrap();
        std::fs::write(chats.join("20261201-100000-0002.json"), &json).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_morphkv"))
            .args(["chat", "--resume", "20261201-100000-0002"])
            .args(flags)
            .env("MORPHKV_CONFIG_DIR", dir.join("config"))
            .env("MORPHKV_DATA_DIR", dir.join("data"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && !err.contains("panicked"), "{err}");
        for n in needles {
            assert!(err.contains(n), "{flags:?}: `{n}` in {err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A KV type the model cannot take is refused once the model is read, before the chat
/// opens, in one line naming where the type came from: the config file or the flag.
#[test]
fn chat_refuses_a_kv_type_the_model_cannot_take_naming_its_origin() {
    let ckpt = tmpdir("kv-q8-tiny");
    // Head size 16: q8_0 keeps blocks of 32.
    common::tiny::Tiny::llama().write_safetensors(&ckpt, candle_core::DType::F32);
    let m = ckpt.to_str().unwrap();
    for (config, args, needles) in [
        (
            "kv_type = \"q8_0\"\n",
            vec!["-m", m],
            ["kv_type in", "config.toml"],
        ),
        (
            "",
            vec!["-m", m, "--kv-type", "q8_0"],
            ["--kv-type", "q8_0"],
        ),
    ] {
        let (code, err) = chat_with_config(config, &args);
        assert_ne!(code, 0, "{config:?} {args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        for n in needles.iter().chain(&["multiple of 32, not 16", "f16"]) {
            assert!(
                err.contains(n),
                "{config:?} {args:?}: missing {n:?} in {err}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&ckpt);
}

#[test]
fn chat_bad_config_theme_and_settings() {
    let cases: [(&str, &[&str], &[&str]); 10] = [
        (
            "kv_type = \"q4\"\n",
            &["--list"],
            &["config.toml:1:11", "`q4` is not a KV type", "q8_0"],
        ),
        (
            "[keys]\nregenrate = \"ctrl+g\"\n",
            &[],
            &["config.toml", "[keys] regenrate", "not an action"],
        ),
        (
            "[keys]\nquit = \"ctrl+\"\n",
            &[],
            &["config.toml", "[keys] quit", "not a key"],
        ),
        (
            "budget = \"lots\"\n",
            &["--list"],
            &["config.toml", "budget"],
        ),
        (
            "colour = \"red\"\n",
            &["--list"],
            &["config.toml", "unknown field `colour`"],
        ),
        (
            "",
            &["--theme", "neon"],
            &["--theme", "unknown theme `neon`", "dark"],
        ),
        ("policy = \"lru\"\n", &[], &["unknown policy `lru`"]),
        (
            "weights = \"q3\"\n",
            &["--list"],
            &["config.toml:1:11", "`q3` is not one of"],
        ),
        // A device this build cannot open names the file, not the flag.
        (
            "device = \"metal\"\n",
            &[],
            &["device in", "config.toml", "built without Metal"],
        ),
        (
            "",
            &["--resume", "nope"],
            &["no saved chat `nope`", "--list"],
        ),
    ];
    for (config, args, needles) in cases {
        let (code, err) = chat_with_config(config, args);
        assert_ne!(code, 0, "{config:?} {args:?} should fail: {err}");
        assert!(!err.contains("panicked"), "{err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{config:?} {args:?}: {err}");
        for n in needles {
            assert!(
                err.contains(n),
                "{config:?} {args:?}: missing {n:?} in {err}"
            );
        }
    }
    // A malformed theme file.
    let dir = tmpdir("badtheme");
    let theme = dir.join("mine.toml");
    std::fs::write(&theme, "name = \"mine\"\nforeground = \"#zzzzzz\"\n").unwrap();
    let (code, err) = chat_with_config("", &["--theme", theme.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("mine.toml"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_device() {
    assert_fails(
        &gen("/no/such/model.gguf", &["--device", "gpu"]),
        &["--device", "`gpu`", "cuda:N"],
    );
    #[cfg(not(feature = "cuda"))]
    assert_fails(
        &gen("/no/such/model.gguf", &["--device", "cuda:1"]),
        &["--device", "--features cuda", "--device cpu"],
    );
}

/// `morphkv bench --random-weights smollm2-135m-instruct --device cpu --reps 1 ARGS`, its
/// JSON report.
fn random_bench(name: &str, args: &[&str]) -> serde_json::Value {
    let json = tmpdir(name).join("bench.json");
    let mut all = vec![
        "bench",
        "--random-weights",
        "smollm2-135m-instruct",
        "--device",
        "cpu",
        "--reps",
        "1",
        "--json",
        json.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let (code, err) = run(&all);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

#[test]
fn bench_with_random_weights() {
    // Each policy's settings are checked before anything runs: H2O's window of 30 does not
    // fit a budget of 20 that MorphKV's 4 does.
    assert_fails(
        &[
            "bench",
            "--random-weights",
            "smollm2-135m-instruct",
            "--policies",
            "morphkv,h2o",
            "--budget",
            "20",
        ],
        &["--budget (with policy h2o)", "window 30"],
    );
    assert_fails(
        &["bench", "--random-weights", "smollm2-135m-instruc"],
        &[
            "--random-weights",
            "smollm2-135m-instruc",
            "did you mean",
            "llama3.2-1b-instruct",
        ],
    );
    let report = random_bench(
        "random-bench",
        &[
            "--policies",
            "full,morphkv",
            "--budget",
            "40",
            "--window",
            "8",
            "--contexts",
            "16,64",
            "--decode-tokens",
            "4",
        ],
    );
    assert_eq!(report["device"], "cpu");
    assert!(report["model"].as_str().unwrap().contains("random weights"));
    let rows = report["rows"].as_array().unwrap();
    // Ours only (no reference on random weights): 2 policies × 2 contexts.
    assert_eq!(rows.len(), 4, "{report}");
    for r in rows {
        assert_eq!(r["decoder"], "ours");
        assert!(r["decode_tps"]["median"].as_f64().unwrap() > 0.0);
        let (ctx, held) = (
            r["context"].as_u64().unwrap(),
            r["retained"].as_u64().unwrap(),
        );
        match r["policy"].as_str().unwrap() {
            "full" => assert_eq!(held, ctx + 4),
            _ => assert!(held <= 40 && (ctx < 40 || held >= 33), "{r}"),
        }
    }
}

/// `--roofline` measures the memory's read rate and the bytes a token reads: on the default
/// model (a tied Q4_1 file, every weight packed) a token reads the file's tensors once.
#[test]
fn bench_roofline_reads_the_whole_file_per_token() {
    let model = common::default_model();
    let json = tmpdir("bench-roofline").join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_morphkv"))
        .args([
            "bench",
            "--roofline",
            "--no-reference",
            "--policies",
            "full,morphkv",
            "--contexts",
            "32",
            "--decode-tokens",
            "4",
            "--reps",
            "1",
            "--json",
            json.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("memory read rate") && stdout.contains("roof %"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rates = report["memory_read_rates"].as_array().unwrap();
    assert_eq!(rates.len(), 2, "{report}");
    assert!(rates.iter().all(|r| r.as_f64().unwrap() > 1e8), "{report}");
    // The tensors are all of the file but its header and tokenizer (a few per cent).
    let file = std::fs::metadata(&model).unwrap().len() as f64;
    let token = report["token_bytes"].as_f64().unwrap();
    assert!(token > 0.95 * file && token < file, "{token} of {file}");
    for r in report["rows"].as_array().unwrap() {
        let read = r["read_bytes"].as_f64().unwrap();
        assert!(read > token + r["kv_bytes"].as_f64().unwrap() - 1.0, "{r}");
        let rate = read * r["decode_tps"]["median"].as_f64().unwrap();
        assert!(
            (r["read_rate"].as_f64().unwrap() / rate - 1.0).abs() < 1e-9,
            "{r}"
        );
    }
}

#[test]
fn bench_runs_each_kv_type_side_by_side() {
    let report = random_bench(
        "random-bench-kv",
        &[
            "--policies",
            "full",
            "--kv-types",
            "f32,q8_0",
            "--contexts",
            "32",
            "--decode-tokens",
            "2",
        ],
    );
    let rows = report["rows"].as_array().unwrap();
    let bytes = |label: &str| {
        let r = rows.iter().find(|r| r["policy"] == label);
        r.unwrap_or_else(|| panic!("no row `{label}` in {report}"))["kv_bytes"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(rows.len(), 2, "{report}");
    // Both hold the same tokens: q8_0 stores 34 bytes per 32 values where f32 stores 128.
    let ratio = bytes("full f32") / bytes("full q8_0");
    assert!(
        (ratio - 128.0 / 34.0).abs() < 0.01,
        "f32/q8_0 bytes {ratio}"
    );
}

#[test]
fn models_random_writes_a_file_that_runs() {
    common::default_model();
    let dir = tmpdir("models-random");
    let path = dir.join("random.gguf");
    let _ = std::fs::remove_file(&path);
    let p = path.to_str().unwrap();
    let args = [
        "models",
        "random",
        "smollm2-135m-instruct",
        "--type",
        "q4_k_m",
        "-o",
        p,
    ];
    let (code, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    // Typed as llama-quantize types Q4_K_M, with its fallbacks for rows of 576 values
    // (not a multiple of 256): Q4_K → Q5_0, Q6_K → Q8_0; ffn_down's rows of 1,536 keep
    // K-quants. Of 30 layers, 4 has the base type and 5 more bits.
    let (ct, _) = morphkv::model::open_gguf(&path).unwrap();
    let dtype = |n: &str| ct.tensor_infos[n].ggml_dtype;
    assert_eq!(dtype("blk.4.attn_q.weight"), GgmlDType::Q5_0);
    assert_eq!(dtype("blk.4.attn_v.weight"), GgmlDType::Q5_0);
    assert_eq!(dtype("blk.5.attn_v.weight"), GgmlDType::Q8_0);
    assert_eq!(dtype("blk.4.ffn_down.weight"), GgmlDType::Q4K);
    assert_eq!(dtype("blk.5.ffn_down.weight"), GgmlDType::Q6K);
    assert_eq!(dtype("token_embd.weight"), GgmlDType::Q8_0);
    assert_eq!(dtype("blk.4.attn_norm.weight"), GgmlDType::F32);
    assert!(ct.metadata.contains_key("tokenizer.ggml.tokens"));
    // It opens as a whole model (its Q5_0 tensors held as Q8_0) and generates.
    let (code, err) = run(&gen(p, &["--temp", "0"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("weights q8_0"), "{err}");
    // An existing file is never overwritten, and a type it doesn't know is named.
    assert_fails(&args, &["-o", p, "exists"]);
    assert_fails(
        &[
            "models",
            "random",
            "smollm2-135m-instruct",
            "--type",
            "q3_k_s",
            "-o",
            p,
        ],
        &["--type", "q3_k_s", "q4_k_m"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}
