//! `morphkv models` against a local server that answers like the Hugging Face Hub: download
//! with progress, cache hit, offline mode, resume of a cut transfer, a corrupted file refused,
//! gated repos, missing files, no network, an unwritable cache. The model is a tiny random
//! safetensors checkpoint the test writes, so the pulled files also run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/hubserver.rs"]
mod hubserver;

use std::path::PathBuf;
use std::process::{Command, Output};

use candle_core::DType;
use common::tiny::Tiny;
use hubserver::{sha256_hex, Server};

struct Env {
    dir: PathBuf,
    server: Server,
}

const PRESETS: &str = r#"
[[model]]
name = "tiny-test"
description = "a tiny random llama, safetensors"
repo = "test/tiny"
files = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
arch = "llama"
context = 512
cache = { budget = 64, window = 8 }

[[model]]
name = "tiny-gated"
repo = "test/gated"
files = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
arch = "llama"

[[model]]
name = "tiny-missing"
repo = "test/tiny"
file = "no-such-file.gguf"
arch = "llama"
"#;

impl Env {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("morphkv-hub-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cfg")).unwrap();
        std::fs::write(dir.join("cfg/models.toml"), PRESETS).unwrap();
        let server = Server::start();
        let ckpt = dir.join("ckpt");
        Tiny::llama().write_safetensors(&ckpt, DType::F32);
        server.add_dir("test/tiny", &ckpt);
        server.add_dir("test/gated", &ckpt);
        server
            .state
            .lock()
            .unwrap()
            .gated
            .insert("test/gated".into(), "secret".into());
        Self { dir, server }
    }

    fn hf_home(&self) -> PathBuf {
        self.dir.join("hf")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_morphkv"));
        c.args(args)
            .env("HF_ENDPOINT", &self.server.url)
            .env("HF_HOME", self.hf_home())
            .env("MORPHKV_CONFIG_DIR", self.dir.join("cfg"))
            .env("MORPHKV_MODELS_DIR", self.dir.join("models"))
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_OFFLINE");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn blob(&self, file: &str) -> PathBuf {
        let bytes = std::fs::read(self.dir.join("ckpt").join(file)).unwrap();
        self.hf_home()
            .join("hub/models--test--tiny/blobs")
            .join(sha256_hex(&bytes))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn pull_shows_progress_then_hits_the_cache_and_runs_offline() {
    let env = Env::new("pull");
    let o = env.run(&["models", "list"]);
    assert!(o.status.success(), "{}", text(&o));
    let list = String::from_utf8_lossy(&o.stdout).to_string();
    let row = list.lines().find(|l| l.starts_with("tiny-test")).unwrap();
    assert!(row.contains("not pulled"), "{list}");

    let o = env.run(&["models", "pull", "tiny-test"]);
    assert!(o.status.success(), "{}", text(&o));
    let err = stderr(&o);
    assert!(
        err.contains("model.safetensors [") && err.contains("/s"),
        "no progress bar: {err}"
    );
    let path = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    assert!(path.join("config.json").exists() && path.join("model.safetensors").exists());
    assert!(path.starts_with(env.hf_home().join("hub/models--test--tiny/snapshots")));

    // A second pull is a cache hit: no request at all.
    let before = env.server.requests();
    let o = env.run(&["models", "pull", "tiny-test"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(env.server.requests(), before, "{}", text(&o));

    // Listed as cached, at that path; and it runs with the Hub switched off.
    let o = env.run(&["models", "list"]);
    let list = String::from_utf8_lossy(&o.stdout).to_string();
    let row = list.lines().find(|l| l.starts_with("tiny-test")).unwrap();
    assert!(
        row.contains("cached") && row.contains(path.to_str().unwrap()),
        "{list}"
    );
    let o = env.run(&["models", "path", "tiny-test"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        path.to_str().unwrap()
    );
    let o = env
        .cmd(&[
            "generate",
            "-m",
            "tiny-test",
            "-p",
            "hi",
            "-n",
            "4",
            "--temp",
            "0",
        ])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(env.server.requests(), before);

    // rm frees it.
    let o = env.run(&["models", "rm", "tiny-test"]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("freed"),
        "{}",
        text(&o)
    );
    let o = env.run(&["models", "path", "tiny-test"]);
    assert!(
        !o.status.success() && stderr(&o).contains("models pull tiny-test"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_repo_id_resolves_to_its_safetensors_checkpoint() {
    let env = Env::new("repo");
    let o = env.run(&["models", "pull", "test/tiny"]);
    assert!(o.status.success(), "{}", text(&o));
    let path = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    assert!(path.join("tokenizer.json").exists(), "{}", text(&o));
}

#[test]
fn a_cut_transfer_resumes_where_it_stopped() {
    let env = Env::new("resume");
    let size = std::fs::read(env.dir.join("ckpt/model.safetensors"))
        .unwrap()
        .len();
    // A previous run left half the file behind.
    let bytes = std::fs::read(env.dir.join("ckpt/model.safetensors")).unwrap();
    let blob = env.blob("model.safetensors");
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    let half = size / 2;
    std::fs::write(blob.with_extension("part"), &bytes[..half]).unwrap();
    // And this run's transfer is cut once more, a quarter further on.
    env.server
        .state
        .lock()
        .unwrap()
        .cut_once
        .insert("model.safetensors".into(), size / 4);
    let o = env.run(&["models", "pull", "tiny-test"]);
    assert!(o.status.success(), "{}", text(&o));
    let ranges = env.server.ranges("model.safetensors");
    assert!(
        ranges.contains(&Some(format!("bytes={half}-"))),
        "did not resume from the part file: {ranges:?}"
    );
    assert!(
        ranges.contains(&Some(format!("bytes={}-", half + size / 4))),
        "did not resume after the cut: {ranges:?}"
    );
    assert_eq!(std::fs::read(&blob).unwrap(), bytes);
    assert!(stderr(&o).contains("resumed at"), "{}", text(&o));
}

#[test]
fn a_file_that_does_not_match_its_hash_is_refused_and_deleted() {
    let env = Env::new("corrupt");
    env.server
        .state
        .lock()
        .unwrap()
        .corrupt
        .push("model.safetensors".into());
    let o = env.run(&["models", "pull", "tiny-test"]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = stderr(&o);
    assert!(
        err.contains("hash") && err.contains("model.safetensors"),
        "{err}"
    );
    assert!(!env.blob("model.safetensors").exists());
    let o = env.run(&["models", "path", "tiny-test"]);
    assert!(!o.status.success());
}

#[test]
fn a_gated_repo_needs_a_token() {
    let env = Env::new("gated");
    let o = env.run(&["models", "pull", "tiny-gated"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(stderr(&o).contains("HF_TOKEN"), "{}", text(&o));
    let o = env
        .cmd(&["models", "pull", "tiny-gated"])
        .env("HF_TOKEN", "secret")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn missing_files_offline_and_no_network_say_what_to_do() {
    let env = Env::new("errors");
    let o = env.run(&["models", "pull", "tiny-missing"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("no file `no-such-file.gguf`") && err.contains("model.safetensors"),
        "{err}"
    );

    let o = env.run(&["models", "pull", "tiny-test", "--offline"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("offline"), "{}", text(&o));

    let o = env
        .cmd(&["models", "pull", "tiny-test"])
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cannot reach"), "{}", text(&o));

    let o = env.run(&["models", "path", "tiny-tset"]);
    assert!(
        stderr(&o).contains("did you mean tiny-test"),
        "{}",
        text(&o)
    );
}

#[test]
fn an_unwritable_cache_is_named() {
    let env = Env::new("unwritable");
    // A regular file where the cache folder should be: no folder can be made under it.
    let blocker = env.dir.join("blocker");
    std::fs::write(&blocker, b"x").unwrap();
    let o = env
        .cmd(&["models", "pull", "tiny-test"])
        .env("HF_HOME", blocker.join("hf"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains(&blocker.display().to_string()), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_bad_user_models_file_names_line_and_field() {
    let env = Env::new("badtoml");
    std::fs::write(
        env.dir.join("cfg/models.toml"),
        "[[model]]\nname = \"x\"\nrepo = \"a/b\"\nfile = \"x.gguf\"\narch = \"llama\"\nsize = \"big\"\n",
    )
    .unwrap();
    let o = env.run(&["models", "list"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("models.toml:6") && err.contains("size"),
        "{err}"
    );
}
