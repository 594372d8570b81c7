//! The real binary in a pseudo-terminal (tmux) with the real SmolLM2: a question, a streamed
//! answer, panels whose numbers move, a policy switch, a clean quit with the terminal
//! restored; a SIGKILL during a reply that loses no earlier turn; and an idle chat that uses
//! no CPU, compare mode on or off. tmux is required (CI installs it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

struct Tmux {
    name: String,
    data: PathBuf,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// One chat at a time: two models generating at once on two cores would starve each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Tmux {
    /// Starts `morphkv chat ARGS` in a detached 120x40 tmux session with its own data folders.
    fn start(tag: &str, args: &[&str]) -> Self {
        Self::start_with_chats(tag, args, &[])
    }

    /// As [`Tmux::start`], with saved chats (`(id, JSON)`) in the data folder beforehand.
    fn start_with_chats(tag: &str, args: &[&str], chats: &[(&str, &str)]) -> Self {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            Command::new("tmux").arg("-V").output().is_ok(),
            "tmux is needed for this test (apt-get install tmux)"
        );
        let name = format!("morphkv-{tag}-{}", std::process::id());
        let data = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(data.join("config")).unwrap();
        let saved = data.join("data").join("chats");
        std::fs::create_dir_all(&saved).unwrap();
        for (id, json) in chats {
            std::fs::write(saved.join(format!("{id}.json")), json).unwrap();
        }
        let model = common::default_model();
        // Through `sh`, which writes the chat's exit status to a file when it ends: tmux 3.3
        // marks a pane dead when its output closes and often never shows the status of a
        // process that exited a moment later (`#{pane_dead_status}` stayed empty for 10 s on
        // an idle machine).
        let mut cmd = vec![
            "sh".into(),
            "-c".into(),
            r#""$@"; echo $? > "$0""#.into(),
            data.join("exit-status").display().to_string(),
            env!("CARGO_BIN_EXE_morphkv").to_string(),
            "chat".into(),
            "-m".into(),
            model.display().to_string(),
        ];
        cmd.extend(args.iter().map(|s| s.to_string()));
        // A few tries: when the test before killed the server's last session, the server
        // exits on its own a moment later, and a new session asked for meanwhile can reach
        // the exiting server and fail (seen once in a CI run).
        let mut tries = 0;
        loop {
            let out = Command::new("tmux")
                .args(["new-session", "-d", "-s", &name, "-x", "120", "-y", "40"])
                .arg("-e")
                .arg(format!("MORPHKV_DATA_DIR={}", data.join("data").display()))
                .arg("-e")
                .arg(format!(
                    "MORPHKV_CONFIG_DIR={}",
                    data.join("config").display()
                ))
                .args(&cmd)
                .output()
                .unwrap();
            if out.status.success() {
                break;
            }
            tries += 1;
            assert!(
                tries < 5,
                "tmux new-session failed {tries} times: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let t = Self {
            name,
            data,
            _serial: serial,
        };
        t.tmux(&["set-option", "-t", &t.name, "remain-on-exit", "on"]);
        t
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", &self.name])
    }

    fn display(&self, what: &str) -> String {
        self.tmux(&["display-message", "-p", "-t", &self.name, what])
            .trim()
            .to_string()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", self.name.as_str()];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    fn type_line(&self, text: &str) {
        self.keys(&["-l", text]);
        self.keys(&["Enter"]);
    }

    /// Waits until the screen satisfies `ok`, returning it.
    fn wait(&self, what: &str, secs: u64, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "timed out waiting for {what}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The chat's process id: the child of the pane's `sh`.
    fn pid(&self) -> String {
        let sh = self.display("#{pane_pid}");
        let start = Instant::now();
        loop {
            let children =
                std::fs::read_to_string(format!("/proc/{sh}/task/{sh}/children")).unwrap();
            if let Some(pid) = children.split_whitespace().next() {
                return pid.to_string();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the pane's sh ({sh}) has no child"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The chat's exit status, once `sh` has written it (within 10 s).
    fn exit_status(&self) -> String {
        let file = self.data.join("exit-status");
        let start = Instant::now();
        loop {
            if let Ok(s) = std::fs::read_to_string(&file) {
                if s.ends_with('\n') {
                    return s.trim().to_string();
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no exit status in {}",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn dead(&self) -> bool {
        self.display("#{pane_dead}") == "1"
    }

    fn chats(&self) -> Vec<serde_json::Value> {
        let dir = self.data.join("data").join("chats");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).into_iter().flatten() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "json") {
                out.push(serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap());
            }
        }
        out
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// The status bar's "N/M tok kept" (or, when narrow, "N/M kept") numbers.
fn kept(screen: &str) -> Option<(usize, usize)> {
    let i = screen
        .find(" tok kept")
        .or_else(|| screen.find(" kept ·"))?;
    let before = &screen[..i];
    let field = before.rsplit(' ').next()?;
    let (a, b) = field.split_once('/')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[test]
fn chat_streams_shows_the_cache_switches_policy_and_restores_the_terminal() {
    let t = Tmux::start(
        "e2e",
        &[
            "--budget", "64", "--window", "8", "--temp", "0", "-n", "150",
        ],
    );
    t.wait("the model to load", 120, |s| {
        s.contains("┌ Message ") && s.contains("morphkv b64 w8")
    });
    assert_eq!(
        t.display("#{alternate_on}"),
        "1",
        "the chat uses the alternate screen"
    );
    t.type_line("Tell me about the history of the printing press.");
    let first = t.wait("streamed text", 60, |s| {
        s.contains("Assistant") && kept(s).is_some_and(|(_, seen)| seen > 40)
    });
    // Keys typed while an answer streams reach the screen (latency is in the log).
    let t2 = Instant::now();
    t.keys(&["-l", "zq"]);
    t.wait("typed keys during the answer", 10, |s| s.contains("│zq"));
    let seen_ms = t2.elapsed().as_millis();
    let done = t.wait("the answer to finish", 120, |s| s.contains("┌ Message "));
    t.keys(&["BSpace", "BSpace"]);
    let (k1, s1) = kept(&first).unwrap();
    let (k2, s2) = kept(&done).unwrap();
    assert!(s2 > s1, "tokens seen should grow: {s1} -> {s2}");
    assert!(k2 <= 64 && s2 > 64, "budget 64 holds: kept {k2} of {s2}");
    assert!(k1 <= 64);
    // The retention panel draws its legend and the transcript's tokens.
    assert!(
        done.contains("Retention") && done.contains("evicted"),
        "{done}"
    );
    // Switch policy: it applies now, the conversation is read again under it.
    t.type_line("/set policy streaming");
    t.wait("the policy switch", 60, |s| {
        s.contains("streaming b64") && s.contains("now runs under streaming")
    });
    // The cache panel.
    t.keys(&["Tab"]);
    t.wait("the cache panel", 10, |s| {
        s.contains("┌ Cache") && s.contains("tokens seen") && s.contains("% saved")
    });
    t.keys(&["C-c"]);
    let start = Instant::now();
    while !t.dead() {
        assert!(start.elapsed() < Duration::from_secs(20), "did not quit");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        t.display("#{alternate_on}"),
        "0",
        "the terminal is restored"
    );
    let log = std::fs::read_to_string(t.data.join("data").join("morphkv.log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("key-to-draw latency"))
        .expect("the latency summary is logged");
    let median: f64 = line
        .split("median ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    eprintln!("key-to-draw: {line} (seen through tmux after {seen_ms} ms)");
    assert!(median < 100.0, "{line}");
    let chats = t.chats();
    assert_eq!(chats.len(), 1);
    assert_eq!(chats[0]["messages"].as_array().unwrap().len(), 2);
}

#[test]
fn sigkill_during_a_reply_loses_no_finished_turn() {
    let t = Tmux::start("kill", &["--temp", "0", "-n", "400", "--budget", "128"]);
    t.wait("the model to load", 120, |s| s.contains("┌ Message "));
    t.type_line("Say hello.");
    t.wait("the first answer", 120, |s| {
        s.contains("Assistant") && s.contains("┌ Message ")
    });
    t.type_line("Now write a long story about a lighthouse keeper.");
    t.wait("the second answer to start", 60, |s| {
        s.contains("answering…")
    });
    let pid = t.pid();
    let status = Command::new("kill").args(["-9", &pid]).status().unwrap();
    assert!(status.success());
    let start = Instant::now();
    while !t.dead() {
        assert!(start.elapsed() < Duration::from_secs(10), "still alive");
        std::thread::sleep(Duration::from_millis(100));
    }
    let chats = t.chats();
    assert_eq!(chats.len(), 1, "one saved chat");
    let msgs = chats[0]["messages"].as_array().unwrap();
    // The finished exchange and the question in flight survive.
    assert!(msgs.len() >= 3, "{msgs:?}");
    assert_eq!(msgs[0]["content"], "Say hello.");
    assert!(!msgs[1]["content"].as_str().unwrap().is_empty());
    assert_eq!(
        msgs[2]["content"],
        "Now write a long story about a lighthouse keeper."
    );
    // The saved chat reopens: --list shows it.
    let out = Command::new(env!("CARGO_BIN_EXE_morphkv"))
        .args(["chat", "--list"])
        .env("MORPHKV_DATA_DIR", t.data.join("data"))
        .env("MORPHKV_CONFIG_DIR", t.data.join("config"))
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains("Say hello."), "{list}");
}

#[test]
fn sigterm_and_sigint_restore_the_terminal_and_exit_with_the_conventional_code() {
    for (signal, code) in [("-TERM", "143"), ("-INT", "130")] {
        let t = Tmux::start(&format!("sig{code}"), &["--temp", "0", "-n", "16"]);
        t.wait("the model to load", 120, |s| s.contains("┌ Message "));
        t.type_line("Say hello.");
        t.wait("the answer", 120, |s| {
            s.contains("Assistant") && s.contains("┌ Message ") && !s.contains("answering…")
        });
        let pid = t.pid();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
        let start = Instant::now();
        while !t.dead() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{signal}: still running"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(t.exit_status(), code, "{signal}: the exit status");
        assert_eq!(
            t.display("#{alternate_on}"),
            "0",
            "{signal}: terminal restored"
        );
        let chats = t.chats();
        assert_eq!(chats.len(), 1, "{signal}: the chat is saved");
        assert_eq!(chats[0]["messages"].as_array().unwrap().len(), 2);
    }
}

/// CPU time the process `pid` has used, all its threads, in seconds (/proc/PID/stat's utime
/// and stime, in clock ticks).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (which may hold spaces), from the state on.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz: f64 = String::from_utf8_lossy(
        &Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .parse()
    .unwrap();
    ticks as f64 / hz
}

#[test]
fn an_idle_chat_uses_no_cpu() {
    let t = Tmux::start("idle", &["--temp", "0", "-n", "16"]);
    t.wait("the model to load", 120, |s| s.contains("┌ Message "));
    // One answer first, so the idle chat has a conversation, panels and a cache to show.
    t.type_line("Say hello.");
    t.wait("the answer", 120, |s| {
        s.contains("Assistant") && s.contains("┌ Message ") && !s.contains("answering…")
    });
    let pid = t.pid();
    let idle = |what: &str| {
        std::thread::sleep(Duration::from_secs(1));
        let secs = 30;
        let before = cpu_seconds(&pid);
        std::thread::sleep(Duration::from_secs(secs));
        let used = cpu_seconds(&pid) - before;
        let share = 100.0 * used / secs as f64;
        eprintln!("{what}: {used:.2} s of CPU in {secs} s ({share:.2}% of a core)");
        assert!(
            share < 1.0,
            "{what} used {share:.2}% of a core over {secs} s"
        );
        assert!(!t.dead(), "the chat is still running");
    };
    idle("an idle chat");
    // Compare mode on, and one answer through both caches: idle again, still nothing.
    t.type_line("/compare h2o budget 64");
    t.wait("compare mode", 120, |s| s.contains("vs h2o b64"));
    t.type_line("Say goodbye.");
    // The strip counts the answer's tokens: "top-1 differs D/N" with N > 0.
    t.wait("the strip", 120, |s| {
        let n = s.split("top-1 differs ").nth(1).and_then(|r| {
            let r = r.split('/').nth(1)?;
            r[..r.find(|c: char| !c.is_ascii_digit())?]
                .parse::<usize>()
                .ok()
        });
        n.is_some_and(|n| n > 0) && !s.contains("answering…")
    });
    idle("an idle chat in compare mode");
}

/// A saved chat under H2O, budget 300, window 20, made with another model.
const RESUMED: &str = r#"{"version": 1, "id": "20261201-100000-0001", "title": "colours",
  "created": 1796354100, "updated": 1796354160, "model": "another-model", "policy": "h2o",
  "budget": 300, "window": 20, "recent": 50, "history": 0, "half_life": 0,
  "messages": [{"role": "user", "content": "Name a colour."},
               {"role": "assistant", "content": "Blue."}]}"#;

/// A resumed chat runs under the cache settings it saved, a flag over any of them, and says
/// so (with the model it ran with, when that differs).
#[test]
fn a_resumed_chat_runs_under_its_own_settings_unless_flags_say_otherwise() {
    let id = "20261201-100000-0001";
    for (tag, flags, status) in [
        ("resume", &[][..], "h2o b300 w20"),
        ("resume-flags", &["--budget", "200"][..], "h2o b200 w20"),
    ] {
        let mut args = vec!["--resume", id];
        args.extend_from_slice(flags);
        let t = Tmux::start_with_chats(tag, &args, &[(id, RESUMED)]);
        let screen = t.wait("the resumed chat", 120, |s| {
            s.contains("┌ Message ") && s.contains(status)
        });
        assert!(
            screen.contains("resumed \"colours\"") && screen.contains("Blue."),
            "{flags:?}: {screen}"
        );
        t.keys(&["C-c"]);
        let start = Instant::now();
        while !t.dead() {
            assert!(start.elapsed() < Duration::from_secs(20), "did not quit");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Nothing was said: the saved chat keeps its messages.
        let chats = t.chats();
        assert_eq!(chats.len(), 1, "{chats:?}");
        assert_eq!(chats[0]["messages"].as_array().unwrap().len(), 2);
    }
}
