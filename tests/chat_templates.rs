//! Chat templates from model files are code written by strangers: each way one can misbehave
//! (endless loops, strings and lists that double, huge output, a huge `strftime_now` format)
//! ends quickly with an error that names the template's source and `--chat-template`, in the
//! sandbox (the `morphkv` binary started again) and through the binary end to end.
//!
//! A test that could eat memory if the sandbox's own limit regressed runs the sandbox through
//! a shell that caps its address space at 2 GiB first (`ulimit -v`), so a regression fails the
//! test instead of taking the machine down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use morphkv::chat::sandbox::{Sandbox, CHILD_ARG};
use morphkv::chat::{Budget, ChatTemplate, Message, Renderer, TemplateSource, DEFAULT_FUEL};
use morphkv::error::Error;

const EXE: &str = env!("CARGO_BIN_EXE_morphkv");

/// A limit no misbehaving template should come near: the error must come well before.
const QUICK: Duration = Duration::from_secs(6);

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("morphkv-tpl-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The sandbox as the binary uses it.
fn sandbox() -> Sandbox {
    Sandbox::new(EXE)
}

/// The sandbox started through a shell that caps the child's address space at 2 GiB: the
/// guard for tests that would eat memory if the sandbox's own limit regressed.
fn guarded() -> Sandbox {
    static SCRIPT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let script = SCRIPT.get_or_init(|| {
        let script = tmpdir("guard").join("morphkv-guarded");
        std::fs::write(
            &script,
            format!("#!/bin/sh\nulimit -v 2097152\nexec '{EXE}' \"$@\"\n"),
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        script
    });
    Sandbox::new(script)
}

/// `src` as the template of a crafted GGUF file, rendered in `sandbox`.
fn crafted(src: &str, sandbox: Sandbox) -> ChatTemplate {
    ChatTemplate::from_source_at(src, "", "", TemplateSource::Gguf("crafted.gguf".into()))
        .unwrap()
        .with_renderer(Renderer::Sandbox(sandbox))
}

/// Renders `t` and returns its error, checked to name the source and the way out, and to
/// have come quickly.
fn error_of(t: &ChatTemplate) -> String {
    let start = Instant::now();
    let r = t.render(&[Message::system("S"), Message::user("Hi")], true);
    let took = start.elapsed();
    let msg = match r {
        Err(Error::Template(m)) => m,
        other => panic!("expected a template error, got {other:?}"),
    };
    assert!(
        msg.contains("`tokenizer.chat_template` of crafted.gguf"),
        "{msg}"
    );
    assert!(msg.contains("--chat-template chatml"), "{msg}");
    assert!(took < QUICK, "took {took:?}: {msg}");
    msg
}

#[test]
fn the_sandbox_renders_like_in_process() {
    let src = "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n\
               {{ m['content'] | trim }}<|im_end|>\n{% endfor %}\
               {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}{{ eos_token }}";
    let msgs = [
        Message::system("Be brief."),
        Message::user("end it <|im_end|> and ünïcode ✓\nnew line"),
        Message::assistant(""),
        Message::user("x".repeat(100_000)),
    ];
    let local = ChatTemplate::from_source_at(src, "<s>", "</s>", TemplateSource::Model)
        .unwrap()
        .with_renderer(Renderer::InProcess);
    let remote = ChatTemplate::from_source_at(src, "<s>", "</s>", TemplateSource::Model)
        .unwrap()
        .with_renderer(Renderer::Sandbox(sandbox()));
    for gen in [false, true] {
        assert_eq!(
            remote.render(&msgs, gen).unwrap(),
            local.render(&msgs, gen).unwrap()
        );
    }
    // Template errors come back with their message.
    let t = crafted("{{ raise_exception('needs a tool') }}", sandbox());
    let msg = error_of(&t);
    assert!(msg.contains("needs a tool"), "{msg}");
}

#[test]
fn endless_loops_run_out_of_fuel() {
    let msg = error_of(&crafted(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        sandbox(),
    ));
    assert!(
        msg.contains(&format!("budget of {DEFAULT_FUEL} steps")),
        "{msg}"
    );
}

/// Templates that double a string or a list on each step, or allocate a huge one at once: a
/// hundred steps would need more memory than exists.
const GROWTH: &[(&str, &str)] = &[
    (
        "~",
        "{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}\
         {% endfor %}{{ ns.s | length }}",
    ),
    (
        "list +",
        "{% set ns = namespace(l=[1]) %}{% for i in range(100) %}{% set ns.l = ns.l + ns.l %}\
         {% endfor %}{{ ns.l | length }}",
    ),
    (
        "list + | list",
        "{% set ns = namespace(l=[1]) %}{% for i in range(100) %}\
         {% set ns.l = (ns.l + ns.l) | list %}{% endfor %}{{ ns.l | length }}",
    ),
    (
        "replace",
        "{% set ns = namespace(s='xx') %}{% for i in range(100) %}\
         {% set ns.s = ns.s | replace('x', 'xx') %}{% endfor %}{{ ns.s | length }}",
    ),
    (
        "join",
        "{% set ns = namespace(s='x') %}{% for i in range(100) %}\
         {% set ns.s = [ns.s, ns.s] | join %}{% endfor %}{{ ns.s | length }}",
    ),
    (
        "format",
        "{% set ns = namespace(s='x') %}{% for i in range(100) %}\
         {% set ns.s = '%s%s' | format(ns.s, ns.s) %}{% endfor %}{{ ns.s | length }}",
    ),
    (
        "indent",
        "{% set ns = namespace(s='x') %}{% for i in range(100) %}\
         {% set ns.s = (ns.s ~ '\\n' ~ ns.s) | indent(2) %}{% endfor %}{{ ns.s | length }}",
    ),
    ("indent width", "{{ 'a\\nb' | indent(2 ** 40) }}"),
    (
        "tojson",
        "{% set ns = namespace(s='\"') %}{% for i in range(100) %}\
         {% set ns.s = ns.s | tojson %}{% endfor %}{{ ns.s | length }}",
    ),
    (
        "strftime_now",
        "{% set ns = namespace(f='%B') %}{% for i in range(100) %}{% set ns.f = ns.f ~ ns.f %}\
         {% endfor %}{{ strftime_now(ns.f) }}",
    ),
];

#[test]
fn growing_strings_and_lists_hit_the_memory_limit() {
    for (what, src) in GROWTH {
        let msg = error_of(&crafted(src, guarded()));
        assert!(
            msg.contains("of memory (a string or list that keeps growing)"),
            "{what}: {msg}"
        );
    }
}

#[test]
fn huge_output_and_strftime_formats_are_refused() {
    let msg = error_of(&crafted(
        "{% for i in range(400) %}{{ 'x' * 100000 }}{% endfor %}",
        guarded(),
    ));
    assert!(msg.contains("wrote more than 16 MiB"), "{msg}");
    let msg = error_of(&crafted("{{ strftime_now('%B' * 1000000) }}", guarded()));
    assert!(
        msg.contains("strftime_now: the format is 2000000 bytes"),
        "{msg}"
    );
}

#[test]
fn a_renderer_past_its_time_is_killed() {
    let mut quick = guarded();
    quick.timeout = Duration::from_millis(500);
    let t = crafted(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        quick,
    )
    .with_budget(Budget {
        fuel: u64::MAX / 4,
        ..Budget::default()
    });
    let msg = error_of(&t);
    assert!(msg.contains("did not finish within 0.5 s"), "{msg}");
}

#[test]
fn a_missing_renderer_is_a_clear_error() {
    let t = crafted("x", Sandbox::new("/no/such/morphkv"));
    let msg = error_of(&t);
    assert!(
        msg.contains("could not start the template renderer /no/such/morphkv"),
        "{msg}"
    );
}

#[test]
fn the_child_argument_alone_is_harmless() {
    // Garbage on stdin: an answer, no crash.
    let out = Command::new(EXE)
        .arg(CHILD_ARG)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout.starts_with(b"sandbox\nreading the request"));
}

/// A tiny safetensors checkpoint whose `tokenizer_config.json` holds `template`.
fn checkpoint_with_template(name: &str, template: &str) -> PathBuf {
    let dir = tmpdir(name);
    common::tiny::Tiny::llama().write_safetensors(&dir, candle_core::DType::F32);
    let cfg_path = dir.join("tokenizer_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["chat_template"] = serde_json::Value::String(template.into());
    std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    dir
}

/// Runs `morphkv generate` on `model` under a 4 GiB address-space guard (two threads and
/// two malloc arenas, so the guard fits on any machine); (exit code, stderr).
fn generate(model: &Path, extra: &[&str]) -> (i32, String) {
    let start = Instant::now();
    let out = Command::new("sh")
        .env("RAYON_NUM_THREADS", "2")
        .env("MALLOC_ARENA_MAX", "2")
        .arg("-c")
        .arg("ulimit -v 4194304; exec \"$0\" \"$@\"")
        .arg(EXE)
        .args(["generate", "-m"])
        .arg(model)
        .args(["-p", "hello", "-n", "2", "--device", "cpu"])
        .args(extra)
        .output()
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(60));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_binary_sandboxes_a_models_template() {
    let doubling = "{% set ns = namespace(s='x') %}{% for i in range(100) %}\
                    {% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}";
    let dir = checkpoint_with_template("doubling", doubling);
    let (code, err) = generate(&dir, &[]);
    assert_ne!(code, 0, "{err}");
    let source = format!(
        "`chat_template` of {}",
        dir.join("tokenizer_config.json").display()
    );
    assert!(err.contains(&source), "{err}");
    assert!(err.contains("of memory"), "{err}");
    assert!(err.contains("--chat-template chatml"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // The way out the error names works.
    let (code, err) = generate(&dir, &["--chat-template", "chatml"]);
    assert_eq!(code, 0, "{err}");
    let _ = std::fs::remove_dir_all(&dir);

    // A model whose template behaves renders through the sandbox as before.
    let dir = checkpoint_with_template(
        "chatml",
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n\
         {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    );
    let (code, err) = generate(&dir, &[]);
    assert_eq!(code, 0, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// What one rendering costs in the sandbox against in-process, for a short and a long
/// conversation: `cargo test --release --test chat_templates -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement: run it on purpose"]
fn sandbox_overhead() {
    let src = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n\
               {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    let local = ChatTemplate::from_source_at(src, "", "", TemplateSource::Model)
        .unwrap()
        .with_renderer(Renderer::InProcess);
    let remote = ChatTemplate::from_source_at(src, "", "", TemplateSource::Model)
        .unwrap()
        .with_renderer(Renderer::Sandbox(sandbox()));
    for turns in [2usize, 200] {
        let msgs: Vec<Message> = (0..turns)
            .map(|i| {
                let text = format!("message {i}: {}", "lorem ipsum ".repeat(50));
                if i % 2 == 0 {
                    Message::user(text)
                } else {
                    Message::assistant(text)
                }
            })
            .collect();
        let n = 50;
        let time = |t: &ChatTemplate| {
            t.render(&msgs, true).unwrap();
            let start = Instant::now();
            for _ in 0..n {
                t.render(&msgs, true).unwrap();
            }
            start.elapsed() / n
        };
        let (l, r) = (time(&local), time(&remote));
        println!(
            "{turns} messages: in-process {:.3} ms, sandbox {:.3} ms (overhead {:.3} ms)",
            l.as_secs_f64() * 1e3,
            r.as_secs_f64() * 1e3,
            (r.saturating_sub(l)).as_secs_f64() * 1e3
        );
    }
}
