//! Untrusted input to the binary: crafted model files, out-of-range settings from every source,
//! odd arguments and files. Each case must end in one error line that names the file, flag or
//! value at fault: never a panic, an abort, a hang, or a silent empty answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::gguf_edit::Gguf;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("morphkv-untrusted-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the binary with a deadline; returns (exit code, stderr). A run past the deadline is
/// killed and fails the test as a hang.
fn run_with(cmd: &mut Command, deadline: Duration) -> (i32, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} still running after {deadline:?}: a hang");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(args: &[&str]) -> (i32, String) {
    run_with(
        Command::new(env!("CARGO_BIN_EXE_morphkv")).args(args),
        Duration::from_secs(120),
    )
}

/// Asserts a run failed cleanly: exit 1 or 2 (not a panic's 101 or an abort's 134), one line
/// starting `error:`, mentioning every needle.
fn assert_clean_failure(what: &str, (code, err): (i32, String), needles: &[&str]) {
    assert!(
        code == 1 || code == 2,
        "{what}: exit code {code} (want 1 or 2); stderr: {err}"
    );
    assert!(!err.contains("panicked"), "{what} panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: expected one line, got: {err}");
    assert!(lines[0].starts_with("error"), "{what}: {err}");
    for n in needles {
        assert!(err.contains(n), "{what}: {err:?} should mention {n:?}");
    }
}

fn model_bytes() -> (PathBuf, Vec<u8>) {
    let path = common::default_model();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

/// Writes `bytes` as `name.gguf` and runs `generate` on it greedily.
fn generate_on(dir: &Path, name: &str, bytes: &[u8]) -> (PathBuf, (i32, String)) {
    let file = dir.join(format!("{name}.gguf"));
    std::fs::write(&file, bytes).unwrap();
    let out = run(&[
        "generate",
        "-m",
        file.to_str().unwrap(),
        "-p",
        "Hello",
        "-n",
        "4",
        "--temp",
        "0",
    ]);
    (file, out)
}

type Edit = fn(&mut Gguf, &mut Vec<u8>);

/// Class 1 and 2: GGUF files whose header or weights were crafted or damaged.
#[test]
fn crafted_model_files_are_refused_by_name() {
    let (_, original) = model_bytes();
    let base = Gguf::parse(&original);
    let dir = tmpdir("crafted");
    // (name, edit of the header and/or the bytes, what the error must mention)
    let cases: Vec<(&str, Edit, &[&str])> = vec![
        (
            "swapped-dims",
            |g, _| g.tensor_mut("blk.0.ffn_gate.weight").dims.reverse(),
            &["blk.0.ffn_gate.weight", "shape"],
        ),
        (
            "overflowing-dims",
            |g, _| g.tensor_mut("blk.3.ffn_up.weight").dims = vec![1 << 32, 1 << 32, 1 << 32],
            &["blk.3.ffn_up.weight", "dimensions"],
        ),
        (
            "huge-block-count",
            |g, _| g.set_u32("llama.block_count", u32::MAX),
            &["block_count", "4294967295"],
        ),
        (
            "zero-alignment",
            |g, _| g.set_u32("general.alignment", 0),
            &["general.alignment"],
        ),
        (
            "dimension-2-63",
            |g, _| g.tensor_mut("output_norm.weight").dims = vec![1 << 63],
            &["output_norm.weight"],
        ),
        (
            "nan-rope-base",
            |g, _| g.set_f32("llama.rope.freq_base", f32::NAN),
            &["freq_base", "NaN"],
        ),
        (
            "negative-norm-epsilon",
            |g, _| g.set_f32("llama.attention.layer_norm_rms_epsilon", -1e-5),
            &["epsilon"],
        ),
        (
            "wrong-alignment",
            |g, _| g.set_u32("general.alignment", 4096),
            &["alignment"],
        ),
        (
            "type-not-matching-bytes",
            // Q8_0 bytes read as Q4_0: the tensor index no longer tiles the data.
            |g, _| g.tensor_mut("token_embd.weight").dtype = 2,
            &["token_embd.weight"],
        ),
        (
            "overwritten-offset",
            |g, _| g.tensor_mut("blk.0.ffn_down.weight").offset = 0,
            &["blk.0.ffn_down.weight"],
        ),
        (
            "zeroed-output-norm",
            // Every block of the final norm zeroed: the logits are all 0.
            |g, bytes| {
                let t = g.tensor("output_norm.weight");
                let start = g.data_start + t.offset as usize;
                bytes[start..start + 4 * t.dims[0] as usize].fill(0);
            },
            &["corrupt", "the same for every token"],
        ),
        (
            "nan-norm",
            |g, bytes| {
                let t = g.tensor("output_norm.weight");
                let start = g.data_start + t.offset as usize;
                bytes[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
            },
            &["output_norm.weight", "not finite"],
        ),
        (
            "nan-embedding-scale",
            // The f16 scale of the embedding's first Q8_0 block made NaN.
            |g, bytes| {
                let t = g.tensor("token_embd.weight");
                assert_eq!(t.dtype, 8, "token_embd.weight is Q8_0");
                let start = g.data_start + t.offset as usize;
                bytes[start..start + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
            },
            &["token_embd.weight", "not finite"],
        ),
    ];
    for (name, edit, needles) in cases {
        let mut g = base.clone();
        let mut bytes = original.clone();
        edit(&mut g, &mut bytes);
        let file_bytes = g.write(&bytes, 32);
        let (file, out) = generate_on(&dir, name, &file_bytes);
        let fname = file.file_name().unwrap().to_str().unwrap();
        let mut want = needles.to_vec();
        want.push(fname);
        assert_clean_failure(name, out, &want);
        std::fs::remove_file(&file).unwrap();
    }
    // The editor itself is faithful: the unedited header written back runs.
    let (file, (code, err)) = generate_on(&dir, "unedited", &base.write(&original, 32));
    assert_eq!(code, 0, "{err}");
    std::fs::remove_file(&file).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Class 4: every cache setting is bounded, from flags and from `config.toml`.
#[test]
fn cache_settings_are_bounded_from_every_source() {
    let huge = "1000000000000";
    let max = "18446744073709551615";
    for (flag, value) in [
        ("--budget", huge),
        ("--prefill-chunk", huge),
        ("--window", max),
        ("--sinks", max),
        ("--evict-every", max),
    ] {
        let out = run(&["generate", "-p", "hi", flag, value]);
        assert_clean_failure(flag, out, &[flag, "between"]);
    }
    // In range each, but a cache too large for this machine: refused before allocating.
    let out = run(&[
        "generate",
        "-p",
        "hi",
        "-n",
        "2",
        "--budget",
        "1048576",
        "--prefill-chunk",
        "65536",
    ]);
    assert_clean_failure(
        "huge cache",
        out,
        &["--budget", "GiB", "more than this machine"],
    );
    // config.toml: the error names the file, the line and the column.
    let dir = tmpdir("config");
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(
        dir.join("config").join("config.toml"),
        format!("policy = \"morphkv\"\nbudget = {huge}\n"),
    )
    .unwrap();
    let out = run_with(
        Command::new(env!("CARGO_BIN_EXE_morphkv"))
            .args(["chat", "--list"])
            .env("MORPHKV_CONFIG_DIR", dir.join("config"))
            .env("MORPHKV_DATA_DIR", dir.join("data")),
        Duration::from_secs(60),
    );
    assert_clean_failure("config.toml", out, &["config.toml:2:10", "between"]);
    // A window from config.toml that leaves no room in the budget names config.toml, not a flag.
    std::fs::write(dir.join("config").join("config.toml"), "window = 700\n").unwrap();
    let out = run_with(
        Command::new(env!("CARGO_BIN_EXE_morphkv"))
            .args(["chat", "--budget", "600"])
            .env("MORPHKV_CONFIG_DIR", dir.join("config"))
            .env("MORPHKV_DATA_DIR", dir.join("data")),
        Duration::from_secs(60),
    );
    assert_clean_failure("config window", out, &["--budget", "window 700"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Class 5: a non-UTF-8 argument, an absurd thread count, a FIFO as the model.
#[test]
fn odd_arguments_and_files() {
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let out = run_with(
        Command::new(env!("CARGO_BIN_EXE_morphkv")).args([
            std::ffi::OsStr::new("generate"),
            std::ffi::OsStr::new("-p"),
            bad,
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(out.0, 2, "{}", out.1);
    assert!(!out.1.contains("panicked"), "{}", out.1);
    assert!(out.1.contains("UTF-8"), "{}", out.1);

    let out = run(&["generate", "-p", "hi", "-t", "100000"]);
    assert_clean_failure("-t 100000", out, &["--threads", "between 1 and 512"]);

    let dir = tmpdir("fifo");
    let fifo = dir.join("model.gguf");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let out = run_with(
        Command::new(env!("CARGO_BIN_EXE_morphkv")).args([
            "generate",
            "-m",
            fifo.to_str().unwrap(),
            "-p",
            "hi",
        ]),
        Duration::from_secs(30),
    );
    assert_clean_failure("fifo", out, &["model.gguf", "not a regular file"]);
    let out = run(&["generate", "-f", fifo.to_str().unwrap()]);
    assert_clean_failure("-f fifo", out, &["-f", "model.gguf", "not a regular file"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `-f FILE` reads the prompt from a file, as `-p` would take it.
#[test]
fn prompt_from_a_file() {
    let dir = tmpdir("prompt");
    let text = "Name three colours of the rainbow.";
    let file = dir.join("prompt.txt");
    std::fs::write(&file, text).unwrap();
    let gen = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_morphkv"))
            .args(["generate", "-n", "8", "--temp", "0"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let from_file = gen(&["-f", file.to_str().unwrap()]);
    let from_flag = gen(&["-p", text]);
    assert!(!from_file.trim().is_empty());
    assert_eq!(from_file, from_flag);
    let missing = dir.join("missing.txt");
    let out = run(&["generate", "-f", missing.to_str().unwrap()]);
    assert_clean_failure("-f missing", out, &["-f", "missing.txt"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
