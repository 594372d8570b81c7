//! Rendering untrusted chat templates in a child process, with real bounds on memory and time.
//!
//! minijinja's fuel bounds the steps a template takes, not the memory: each step can double a
//! string or a list, so about a hundred steps reach any size. minijinja has no allocation hook,
//! and an allocation failure aborts the whole process. So a template from a model file renders
//! in a child process: the running binary started again with [`CHILD_ARG`] (no subcommand: it
//! is handled before the command line is parsed). The child reads the template and the
//! conversation as JSON on stdin, caps its own address space (`RLIMIT_AS`, Linux) at what it
//! uses once the request is read plus the [`Sandbox`]'s memory and three times the output cap,
//! its CPU time, and core dumps, then renders with the same fuel and output cap as in-process
//! rendering and answers on stdout. The parent kills it after the timeout. An allocation past
//! the limit aborts the child only; the parent reports it as the template using too much
//! memory.
//!
//! The library renders in-process unless a sandbox is enabled ([`enable`], which the `morphkv`
//! binary calls at start) or set on a template ([`super::ChatTemplate::with_renderer`]). One
//! rendering in the sandbox costs a process start (a few milliseconds); it runs once per chat
//! turn, before a prefill that takes much longer.

use std::borrow::Cow;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::render::{describe, environment, render_env, Failure};
use super::Message;

/// The first argument that makes the `morphkv` binary a template renderer.
pub const CHILD_ARG: &str = "__morphkv-render-chat-template";

/// Default wall-clock limit of one rendering.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default memory a template may use, in bytes (beyond three times the output cap).
pub const DEFAULT_MEMORY: u64 = 256 << 20;

/// The longest error message the child sends back, in bytes.
const MAX_MESSAGE: usize = 4096;

/// Where and with which limits untrusted templates render.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    /// A binary that serves [`CHILD_ARG`] (the `morphkv` binary).
    pub exe: PathBuf,
    /// Wall-clock limit of one rendering (the CPU limit is one second more).
    pub timeout: Duration,
    /// Memory a template may use, in bytes, beyond three times the output cap (Linux).
    pub memory: u64,
}

impl Sandbox {
    /// A sandbox running `exe`, with the default limits.
    pub fn new(exe: impl Into<PathBuf>) -> Self {
        Self {
            exe: exe.into(),
            timeout: DEFAULT_TIMEOUT,
            memory: DEFAULT_MEMORY,
        }
    }
}

static ENABLED: OnceLock<Sandbox> = OnceLock::new();

/// Renders every untrusted template of this process in `sandbox` (unless a template sets its
/// own renderer). Returns false, changing nothing, when one was already enabled.
pub fn enable(sandbox: Sandbox) -> bool {
    ENABLED.set(sandbox).is_ok()
}

/// The sandbox [`enable`]d for this process, if any.
pub fn enabled() -> Option<&'static Sandbox> {
    ENABLED.get()
}

/// [`enable`]s a sandbox that runs this very binary: for binaries that call
/// [`serve_if_asked`] first thing in `main`.
pub fn enable_for_this_binary() {
    enable(Sandbox::new(this_exe()));
}

/// The running binary: on Linux `/proc/self/exe`, which runs the same image even when the file
/// was replaced since (an upgrade during a chat).
fn this_exe() -> PathBuf {
    let proc = PathBuf::from("/proc/self/exe");
    if cfg!(target_os = "linux") && proc.exists() {
        return proc;
    }
    std::env::current_exe()
        .ok()
        .or_else(|| std::env::args_os().next().map(PathBuf::from))
        .unwrap_or_default()
}

/// The limits the child puts on itself.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Limits {
    /// Address space beyond what the child uses once it has read the request, in bytes.
    memory: u64,
    /// CPU seconds.
    cpu_secs: u64,
}

/// One rendering: what the child needs.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Request<'a> {
    pub template: Cow<'a, str>,
    pub bos: Cow<'a, str>,
    pub eos: Cow<'a, str>,
    /// Messages with their content already wrapped in the content markers.
    pub messages: Cow<'a, [Message]>,
    pub add_generation_prompt: bool,
    pub fuel: u64,
    /// Output cap in bytes.
    pub max_output: usize,
}

impl Sandbox {
    /// Renders `request` in a child process.
    pub(crate) fn render(&self, request: &Request<'_>) -> Result<String, Failure> {
        let out_cap = u64::try_from(request.max_output).unwrap_or(u64::MAX);
        let limits = Limits {
            memory: self.memory.saturating_add(out_cap.saturating_mul(3)),
            cpu_secs: self.timeout.as_secs().saturating_add(1),
        };
        let body = serde_json::to_vec(&(limits, request))
            .map_err(|e| Failure::Sandbox(format!("could not encode the conversation: {e}")))?;
        let start = Instant::now();
        let mut child = Command::new(&self.exe)
            .arg(CHILD_ARG)
            // An abort at the memory limit prints a backtrace when asked: slow, and not ours.
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Failure::Sandbox(format!(
                    "could not start the template renderer {}: {e}",
                    self.exe.display()
                ))
            })?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            stop(&mut child);
            return Err(Failure::Sandbox(
                "the template renderer has no pipes".into(),
            ));
        };
        // Writing and reading on their own threads: a child that stops reading or never exits
        // cannot hold this one past the timeout. Both end when the child does.
        std::thread::spawn(move || {
            // A child that exits early closes the pipe: its status says why.
            let _ = stdin.write_all(&body);
        });
        let (tx, rx) = mpsc::channel();
        let read_cap = out_cap.saturating_add(MAX_MESSAGE as u64 + 64);
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let read = stdout.take(read_cap).read_to_end(&mut out).map(|_| out);
            let mut err = Vec::new();
            let _ = stderr.take(MAX_MESSAGE as u64).read_to_end(&mut err);
            let _ = tx.send((read, err));
        });
        let deadline = start + self.timeout;
        let Ok((read, err)) = rx.recv_timeout(self.timeout) else {
            stop(&mut child);
            return Err(Failure::Timeout(self.timeout));
        };
        // Both pipes are closed: the child is exiting.
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(100));
                }
                Ok(None) => {
                    stop(&mut child);
                    return Err(Failure::Timeout(self.timeout));
                }
                Err(e) => {
                    stop(&mut child);
                    return Err(Failure::Sandbox(format!(
                        "waiting for the template renderer: {e}"
                    )));
                }
            }
        };
        let err = String::from_utf8_lossy(&err);
        if !status.success() {
            return Err(exit_failure(status, err.trim(), limits, self.timeout));
        }
        let out = read.map_err(|e| {
            Failure::Sandbox(format!("reading the template renderer's answer: {e}"))
        })?;
        answer(out, request)
    }
}

/// Kills and reaps a child.
fn stop(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The child's answer: a tag line (`ok`, `fuel`, `output`, `error`, `sandbox`), then the text.
fn answer(out: Vec<u8>, request: &Request<'_>) -> Result<String, Failure> {
    let split = out.iter().position(|b| *b == b'\n').unwrap_or(out.len());
    let (tag, rest) = out.split_at(split);
    let body = rest.get(1..).unwrap_or_default();
    let text = || String::from_utf8_lossy(body).into_owned();
    match tag {
        b"ok" => {
            let mut out = out;
            out.drain(..=split);
            String::from_utf8(out)
                .map_err(|_| Failure::Sandbox("the rendered text is not UTF-8".into()))
        }
        b"fuel" => Err(Failure::OutOfFuel(request.fuel)),
        b"output" => Err(Failure::OutputTooLarge(request.max_output)),
        b"error" => Err(Failure::Template(text())),
        b"sandbox" => Err(Failure::Sandbox(text())),
        _ => Err(Failure::Sandbox(format!(
            "the template renderer gave an unexpected answer ({} bytes)",
            out.len()
        ))),
    }
}

/// What a child's failed exit means.
fn exit_failure(status: ExitStatus, stderr: &str, limits: Limits, timeout: Duration) -> Failure {
    let said = match stderr.lines().next() {
        Some(l) => format!(": {l}"),
        None => String::new(),
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        match status.signal() {
            // Rust aborts when an allocation fails: here, at the address-space limit.
            Some(libc::SIGABRT) if stderr.contains("memory allocation") => {
                return Failure::OutOfMemory(limits.memory)
            }
            Some(libc::SIGXCPU) => return Failure::Timeout(timeout),
            Some(libc::SIGKILL) => {
                return Failure::Sandbox(format!(
                    "the template renderer was killed (out of memory?){said}"
                ))
            }
            Some(sig) => {
                return Failure::Sandbox(format!(
                    "the template renderer died of signal {sig}{said}"
                ))
            }
            None => {}
        }
    }
    let _ = (limits, timeout);
    Failure::Sandbox(format!("the template renderer failed ({status}){said}"))
}

/// In a binary's `main`, first thing: when the process was started as a template renderer
/// (its first argument is [`CHILD_ARG`]), serves one rendering and returns the exit code to
/// end with; else `None`.
pub fn serve_if_asked() -> Option<ExitCode> {
    let first = std::env::args_os().nth(1)?;
    (first == CHILD_ARG).then(serve)
}

/// The child: reads a request on stdin, renders it under its limits, answers on stdout.
fn serve() -> ExitCode {
    let answer = render_request();
    let (tag, body) = match answer {
        Ok(text) => ("ok", text),
        Err(Failure::OutOfFuel(_)) => ("fuel", String::new()),
        Err(Failure::OutputTooLarge(_)) => ("output", String::new()),
        Err(Failure::Template(msg)) => ("error", truncate(msg)),
        Err(Failure::Sandbox(msg)) => ("sandbox", truncate(msg)),
        Err(other) => ("sandbox", truncate(format!("{other:?}"))),
    };
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(tag.as_bytes())
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.write_all(body.as_bytes()))
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// `msg` cut to at most [`MAX_MESSAGE`] bytes, on a character boundary.
fn truncate(mut msg: String) -> String {
    if msg.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
    }
    msg
}

/// Reads, limits, renders.
fn render_request() -> Result<String, Failure> {
    // Before anything can fail: an abort must not leave a core file.
    limits::set(limits::Kind::Core, 0).map_err(|e| limit_error("core dumps", &e))?;
    let mut input = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut input)
        .map_err(|e| Failure::Sandbox(format!("reading the request: {e}")))?;
    let (lim, request): (Limits, Request<'static>) = serde_json::from_slice(&input)
        .map_err(|e| Failure::Sandbox(format!("reading the request: {e}")))?;
    drop(input);
    limits::set(limits::Kind::Cpu, lim.cpu_secs).map_err(|e| limit_error("CPU time", &e))?;
    limits::cap_memory(lim.memory).map_err(|e| limit_error("memory", &e))?;
    let env = environment(&request.template, request.fuel)
        .map_err(|e| Failure::Template(describe(&e)))?;
    render_env(
        &env,
        &request.messages,
        request.add_generation_prompt,
        &request.bos,
        &request.eos,
        request.max_output,
    )
}

fn limit_error(what: &str, e: &std::io::Error) -> Failure {
    Failure::Sandbox(format!("could not limit the renderer's {what}: {e}"))
}

/// Resource limits of this process (the child's own).
#[cfg(unix)]
mod limits {
    use std::io;

    /// The resources we limit.
    pub(super) enum Kind {
        Core,
        Cpu,
        #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
        AddressSpace,
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    type Resource = libc::__rlimit_resource_t;
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    type Resource = libc::c_int;

    /// Lowers the soft limit of `kind` to `value` (never above the hard limit, which stays).
    #[allow(unsafe_code)]
    pub(super) fn set(kind: Kind, value: u64) -> io::Result<()> {
        let resource: Resource = match kind {
            Kind::Core => libc::RLIMIT_CORE,
            Kind::Cpu => libc::RLIMIT_CPU,
            Kind::AddressSpace => libc::RLIMIT_AS,
        };
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only the `rlimit` it is given, which lives on this stack.
        if unsafe { libc::getrlimit(resource, &mut old) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let value = libc::rlim_t::try_from(value).unwrap_or(libc::rlim_t::MAX);
        let new = libc::rlimit {
            rlim_cur: value.min(old.rlim_max),
            rlim_max: old.rlim_max,
        };
        // SAFETY: setrlimit only reads the `rlimit` it is given.
        if unsafe { libc::setrlimit(resource, &new) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Caps the address space at what the process maps now plus `extra` bytes.
    #[cfg(target_os = "linux")]
    pub(super) fn cap_memory(extra: u64) -> io::Result<()> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| io::Error::other("no VmSize in /proc/self/status"))?;
        set(
            Kind::AddressSpace,
            kib.saturating_mul(1024).saturating_add(extra),
        )
    }

    /// Other systems do not enforce `RLIMIT_AS`: the timeout is the bound.
    #[cfg(not(target_os = "linux"))]
    pub(super) fn cap_memory(_extra: u64) -> io::Result<()> {
        Ok(())
    }
}

/// Without resource limits: fuel, the output cap and the timeout are the bounds.
#[cfg(not(unix))]
mod limits {
    use std::io;

    pub(super) enum Kind {
        Core,
        Cpu,
    }

    pub(super) fn set(_kind: Kind, _value: u64) -> io::Result<()> {
        Ok(())
    }

    pub(super) fn cap_memory(_extra: u64) -> io::Result<()> {
        Ok(())
    }
}
