//! The minijinja side of rendering, shared by the in-process path and the [`super::sandbox`]'s
//! child: the environment (as `transformers` sets it up, with `raise_exception` and
//! `strftime_now`), the output cap, and why a rendering stopped.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Datelike, Utc};
use minijinja::{context, Environment, ErrorKind};

use super::Message;

/// The name the template is stored under in its environment (appears in error messages).
pub(super) const TEMPLATE_NAME: &str = "chat_template";

/// The longest `strftime_now` format accepted, in bytes.
const MAX_STRFTIME_FORMAT: usize = 256;

/// Why a rendering stopped.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A minijinja error (including `raise_exception`), on one line.
    Template(String),
    /// The fuel ran out.
    OutOfFuel(u64),
    /// The output passed its cap (bytes).
    OutputTooLarge(usize),
    /// The child process passed its memory limit (bytes).
    OutOfMemory(u64),
    /// The child process passed its time limit.
    Timeout(std::time::Duration),
    /// The child process could not be run, or failed in another way.
    Sandbox(String),
}

/// A minijinja error with its chain of causes, on one line.
pub(super) fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// An environment with our settings (as `transformers` renders) holding `src`, with `fuel`.
pub(crate) fn environment(
    src: &str,
    fuel: u64,
) -> std::result::Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    minijinja_contrib::add_to_environment(&mut env);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.set_fuel(Some(fuel));
    env.add_template_owned(TEMPLATE_NAME, src.to_owned())?;
    Ok(env)
}

/// An `io::Write` into memory that refuses to grow past `cap` bytes.
struct CappedWriter {
    out: Vec<u8>,
    cap: usize,
    over: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len().saturating_add(buf.len()) > self.cap {
            self.over = true;
            return Err(std::io::Error::other("the rendered text passed its cap"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `e` or one of its causes is minijinja running out of fuel.
fn out_of_fuel(e: &minijinja::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(m) = err.downcast_ref::<minijinja::Error>() {
            if m.kind() == ErrorKind::OutOfFuel {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// The output cap for a conversation: `max_output` plus four times its content.
pub(crate) fn output_cap(max_output: usize, messages: &[Message]) -> usize {
    let content: usize = messages.iter().map(|m| m.content.len()).sum();
    max_output.saturating_add(content.saturating_mul(4))
}

/// Renders `env`'s template over `messages` (already wrapped in content markers) with the
/// environment's fuel and at most `cap` bytes of output. Shared by the in-process path and
/// the sandbox's child.
pub(crate) fn render_env(
    env: &Environment<'_>,
    messages: &[Message],
    add_generation_prompt: bool,
    bos: &str,
    eos: &str,
    cap: usize,
) -> std::result::Result<String, Failure> {
    let template = env
        .get_template(TEMPLATE_NAME)
        .map_err(|e| Failure::Template(describe(&e)))?;
    let mut w = CappedWriter {
        out: Vec::new(),
        cap,
        over: false,
    };
    let rendered = template
        .render_captured_to(
            context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => bos,
                eos_token => eos,
            },
            &mut w,
        )
        .map(drop);
    if w.over {
        return Err(Failure::OutputTooLarge(cap));
    }
    match rendered {
        Err(e) if out_of_fuel(&e) => Err(Failure::OutOfFuel(env.fuel().unwrap_or(0))),
        Err(e) => Err(Failure::Template(describe(&e))),
        Ok(()) => String::from_utf8(w.out)
            .map_err(|_| Failure::Template("the rendered text is not UTF-8".into())),
    }
}

/// `raise_exception(message)`, as in `transformers`: fails the rendering with `message`.
fn raise_exception(message: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`, as in `transformers`: the current UTC time, formatted. Formats
/// longer than [`MAX_STRFTIME_FORMAT`] bytes are refused, so the output stays under a few KiB.
fn strftime_now(format: String) -> std::result::Result<String, minijinja::Error> {
    if format.len() > MAX_STRFTIME_FORMAT {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "strftime_now: the format is {} bytes long, more than the {MAX_STRFTIME_FORMAT} \
                 allowed",
                format.len()
            ),
        ));
    }
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(format_utc(secs, &format))
}

/// The directives [`format_utc`] passes to chrono: those of C's `strftime` that read the
/// same in every locale and that chrono writes as glibc does.
const DIRECTIVES: &str = "YymdeBbhAaHIMSpFTZ%";

/// A C `strftime` subset for a UTC time (seconds since 1970), as glibc writes it in the C
/// locale: `%Y %y %m %d %e %B %b %h %A %a %H %I %M %S %p %F %T %Z %%`; any other directive,
/// and a `%` that ends the format, is copied as it is. chrono does the calendar.
fn format_utc(secs: u64, format: &str) -> String {
    use std::fmt::Write;
    let time = i64::try_from(secs)
        .ok()
        .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
        .unwrap_or_default();
    // What chrono may read: our directives as they are, every other `%` escaped.
    let mut spec = String::with_capacity(format.len() + 8);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            spec.push(c);
            continue;
        }
        match chars.next() {
            Some(d) if DIRECTIVES.contains(d) => {
                spec.push('%');
                spec.push(d);
            }
            Some(d) => {
                spec.push_str("%%");
                spec.push(d);
            }
            None => spec.push_str("%%"),
        }
    }
    let mut out = String::with_capacity(spec.len() + 32);
    // Writing into a String fails only on a directive chrono cannot format, and `spec` has
    // none: the fallback is never used.
    if write!(out, "{}", time.format(&spec)).is_err() {
        out = format.to_owned();
    }
    out
}

/// Year, month (1-12) and day (1-31) of a day count since 1970-01-01 (proleptic Gregorian).
pub(crate) fn civil_from_days(days: i64) -> (i64, usize, u64) {
    let date = days
        .checked_mul(86_400)
        .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
        .unwrap_or_default()
        .date_naive();
    (
        i64::from(date.year()),
        usize::try_from(date.month()).unwrap_or(1),
        u64::from(date.day()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{Budget, ChatTemplate, Renderer, TemplateSource, DEFAULT_FUEL};
    use crate::error::Error;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

    #[test]
    fn raise_exception_reports_its_message() -> TestResult {
        let t = ChatTemplate::from_source(
            "{% if messages[0]['role'] != 'system' %}{{ raise_exception('x: needs a system \
             message') }}{% endif %}",
            "",
            "",
        )?;
        match t.render(&[Message::user("Hi")], true) {
            Err(Error::Template(msg)) => {
                assert!(msg.contains("x: needs a system message"), "{msg}")
            }
            other => return Err(format!("expected a template error, got {other:?}").into()),
        }
        Ok(())
    }

    #[test]
    fn python_methods_and_helpers_work() -> TestResult {
        let t = ChatTemplate::from_source(
            "{{ '  a  '.strip() }}|{{ 'abc'.startswith('ab') }}|{{ {'k': 1} | tojson }}|\
             {{ strftime_now('%Y') | length }}|{% for m in messages %}{{ m.role }}{% endfor %}",
            "",
            "",
        )?;
        assert_eq!(
            t.render_string(&[Message::system("s"), Message::user("u")], false)?,
            "a|True|{\"k\":1}|4|systemuser"
        );
        Ok(())
    }

    /// Runs `f` on its own thread and fails the test if it takes longer than `secs`: a
    /// regression that loops forever fails instead of hanging the suite.
    fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
            Ok(v) => v,
            Err(_) => panic!("the rendering did not finish within {secs} s"),
        }
    }

    /// Renders `src` as a model file's template (in-process) and returns the error message.
    fn budget_error(src: &'static str, budget: Budget) -> String {
        let started = std::time::Instant::now();
        let r = within(20, move || {
            let t = ChatTemplate::from_source_at(
                src,
                "",
                "",
                TemplateSource::Gguf("crafted.gguf".into()),
            )?
            .with_budget(budget)
            .with_renderer(Renderer::InProcess);
            t.render(&[Message::user("Hi")], true)
        });
        let msg = match r {
            Err(Error::Template(msg)) => msg,
            other => panic!("expected a template error, got {other:?}"),
        };
        assert!(
            msg.contains("`tokenizer.chat_template` of crafted.gguf"),
            "{msg}"
        );
        assert!(msg.contains("--chat-template chatml"), "{msg}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        msg
    }

    #[test]
    fn nested_loops_run_out_of_fuel() {
        let msg = budget_error(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            Budget::default(),
        );
        assert!(msg.contains("budget of 10000000 steps"), "{msg}");
        // A macro calling itself twice, 40 deep: fuel is shared by the calls.
        let msg = budget_error(
            "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}\
             {% endmacro %}{{ f(40) }}",
            Budget::default(),
        );
        assert!(msg.contains("steps"), "{msg}");
    }

    #[test]
    fn huge_output_is_capped() {
        // 40 MB of output in 400 steps: the cap stops it, not the fuel.
        let msg = budget_error(
            "{% for i in range(400) %}{{ 'x' * 100000 }}{% endfor %}",
            Budget::default(),
        );
        assert!(msg.contains("wrote more than 16 MiB"), "{msg}");
        let msg = budget_error(
            "{% for i in range(100) %}{{ 'x' * 100000 }}{% endfor %}",
            Budget {
                fuel: DEFAULT_FUEL,
                max_output: 1 << 20,
            },
        );
        assert!(msg.contains("wrote more than 1.0 MiB"), "{msg}");
    }

    #[test]
    fn output_cap_grows_with_the_conversation() -> TestResult {
        // A conversation larger than the fixed cap still renders.
        let t = ChatTemplate::named("chatml")?.with_budget(Budget {
            fuel: DEFAULT_FUEL,
            max_output: 1000,
        });
        let long = "y".repeat(100_000);
        let text = t.render_string(&[Message::user(long.clone())], true)?;
        assert!(text.contains(&long));
        Ok(())
    }

    #[test]
    fn huge_strftime_format_is_refused() {
        let msg = budget_error("{{ strftime_now('%B' * 1000000) }}", Budget::default());
        assert!(msg.contains("strftime_now"), "{msg}");
        assert!(msg.contains("256"), "{msg}");
    }

    #[test]
    fn strftime_subset() {
        assert_eq!(format_utc(0, "%d %b %Y"), "01 Jan 1970");
        assert_eq!(
            format_utc(
                1_700_000_000,
                "%Y-%m-%d %H:%M:%S %A %a %B %I%p %F %T %Z %% %q"
            ),
            "2023-11-14 22:13:20 Tuesday Tue November 10PM 2023-11-14 22:13:20 UTC % %q"
        );
        assert_eq!(format_utc(951_782_400, "%F"), "2000-02-29");
        // As glibc's strftime writes them (Python's `time.strftime` over `time.gmtime`).
        for (secs, format, glibc) in [
            (0, "%e|%h|%y|%I%p|%H", " 1|Jan|70|12AM|00"),
            (1_699_920_800, "%I:%M %p %e", "12:13 AM 14"),
            (
                4_102_444_799,
                "%A %d %B %Y %T",
                "Thursday 31 December 2099 23:59:59",
            ),
            (1_709_251_199, "%F %a", "2024-02-29 Thu"),
            (1_000_000_000, "é%Y€%m", "é2001€09"),
        ] {
            assert_eq!(format_utc(secs, format), glibc, "{format}");
        }
        // Directives outside the subset, flags and a lone `%` at the end stay as written.
        assert_eq!(format_utc(0, "%-d %j %s %"), "%-d %j %s %");
        assert_eq!(format_utc(0, "%%Y %%%Y"), "%Y %1970");
    }

    #[test]
    fn days_to_dates() {
        for (days, date) in [
            (0, (1970, 1, 1)),
            (-1, (1969, 12, 31)),
            (11_016, (2000, 2, 29)),
            (19_675, (2023, 11, 14)),
            (2_932_896, (9999, 12, 31)),
        ] {
            assert_eq!(civil_from_days(days), date, "{days}");
        }
    }
}
