//! A compiled chat template: where it came from, its budget, the built-in ones, picking one
//! for a model, and rendering a conversation into [`Segment`]s (in-process or in the
//! [`sandbox`]).

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use minijinja::Environment;

use super::render::{describe, environment, output_cap, render_env, Failure};
use super::sandbox::{self, Sandbox};
use super::segments::{segments_to_string, split_segments, Segment, CONTENT_CLOSE, CONTENT_OPEN};
use super::Message;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Names accepted by [`ChatTemplate::named`].
pub const BUILTIN_TEMPLATES: &[&str] = &["chatml", "llama3"];

/// How a user replaces a template that fails: the flag (or a preset's `template`).
const OVERRIDE_HINT: &str = "to use a built-in template instead, pass --chat-template chatml \
                             (or llama3), or set `template` in the model's preset";

/// Default fuel: the steps one rendering may take. Real templates take a few hundred steps a
/// message; this is under a second of work.
pub const DEFAULT_FUEL: u64 = 10_000_000;

/// Default cap on the rendered size, in bytes, on top of four times the messages' text.
pub const DEFAULT_MAX_OUTPUT: usize = 16 << 20;

/// The most a rendering may do. Fuel counts minijinja's steps (loop iterations, expressions);
/// the output cap is `max_output` plus four times the bytes of the messages' content, so long
/// conversations always fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Steps one rendering may take.
    pub fuel: u64,
    /// Rendered bytes allowed beyond four times the content's size.
    pub max_output: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            fuel: DEFAULT_FUEL,
            max_output: DEFAULT_MAX_OUTPUT,
        }
    }
}

/// Where a template came from: named in every error about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateSource {
    /// One of [`BUILTIN_TEMPLATES`]: our own code, rendered in-process.
    Builtin(&'static str),
    /// A GGUF file's `tokenizer.chat_template`.
    Gguf(PathBuf),
    /// A checkpoint's `tokenizer_config.json` (its `chat_template`).
    TokenizerConfig(PathBuf),
    /// The model's own template, file unknown.
    Model,
    /// A template file.
    File(PathBuf),
    /// Template text given to [`ChatTemplate::from_source`].
    Text,
}

impl TemplateSource {
    /// The source of the template stored with the model at `path`: a GGUF file's
    /// `tokenizer.chat_template`, or a checkpoint folder's `tokenizer_config.json`.
    pub fn model(path: &Path) -> Self {
        if path.is_dir() {
            Self::TokenizerConfig(path.join("tokenizer_config.json"))
        } else {
            Self::Gguf(path.to_owned())
        }
    }

    /// Whether the template is someone else's code (everything but the built-in ones).
    pub fn is_untrusted(&self) -> bool {
        !matches!(self, Self::Builtin(_))
    }
}

impl std::fmt::Display for TemplateSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Builtin(name) => write!(f, "the built-in template `{name}`"),
            Self::Gguf(p) => write!(f, "`tokenizer.chat_template` of {}", p.display()),
            Self::TokenizerConfig(p) => write!(f, "`chat_template` of {}", p.display()),
            Self::Model => f.write_str("the model's chat template"),
            Self::File(p) => write!(f, "template file {}", p.display()),
            Self::Text => f.write_str("the chat template"),
        }
    }
}

/// How untrusted templates are rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renderer {
    /// In this process, bounded by fuel and the output cap only (memory is not bounded).
    InProcess,
    /// In a child process: fuel, the output cap, and memory, CPU and time limits.
    Sandbox(Sandbox),
}

/// ChatML (Qwen, SmolLM, many fine-tunes), without a default system prompt.
const CHATML: &str = "{%- for message in messages %}\
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}\
{%- endfor %}\
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/// Llama 3 / 3.1 / 3.2 instruct format (without tool calling, and without trimming content).
const LLAMA3: &str = "{{- bos_token }}\
{%- for message in messages %}\
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}\
{%- endfor %}\
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}";

/// A compiled chat template with the BOS and EOS strings it is rendered with.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// The template text (sent to the sandbox).
    src: String,
    bos: String,
    eos: String,
    source: TemplateSource,
    budget: Budget,
    /// `None`: the process-wide [`sandbox::enabled`] one for untrusted templates.
    renderer: Option<Renderer>,
}

/// Bytes in MiB, for messages.
fn mib(bytes: u64) -> String {
    let m = bytes as f64 / f64::from(1u32 << 20);
    if m >= 10.0 {
        format!("{m:.0} MiB")
    } else {
        format!("{m:.1} MiB")
    }
}

impl ChatTemplate {
    /// Compiles a Jinja chat template; `bos` and `eos` are the values of `bos_token` and
    /// `eos_token` in it (the model's BOS/EOS token strings, or empty). Errors call it "the
    /// chat template": see [`ChatTemplate::from_source_at`] to name where it came from.
    pub fn from_source(src: &str, bos: &str, eos: &str) -> Result<Self> {
        Self::from_source_at(src, bos, eos, TemplateSource::Text)
    }

    /// [`ChatTemplate::from_source`] for a template from `source`, which its errors name.
    /// Untrusted sources render in the [`sandbox`] when one is enabled.
    pub fn from_source_at(src: &str, bos: &str, eos: &str, source: TemplateSource) -> Result<Self> {
        let budget = Budget::default();
        let env = environment(src, budget.fuel).map_err(|e| {
            let hint = if source.is_untrusted() {
                format!("; fix it, or {OVERRIDE_HINT}")
            } else {
                String::new()
            };
            Error::Template(format!("{source} does not compile: {}{hint}", describe(&e)))
        })?;
        Ok(Self {
            env,
            src: src.to_owned(),
            bos: bos.to_owned(),
            eos: eos.to_owned(),
            source,
            budget,
            renderer: None,
        })
    }

    /// Where the template came from.
    pub fn source(&self) -> &TemplateSource {
        &self.source
    }

    /// The template with another budget (fuel and output cap).
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.env.set_fuel(Some(budget.fuel));
        self.budget = budget;
        self
    }

    /// The template rendered by `renderer` when it is untrusted (built-in templates always
    /// render in-process), instead of the process-wide default ([`sandbox::enabled`]).
    pub fn with_renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = Some(renderer);
        self
    }

    /// A built-in template: `chatml` (`<|im_start|>role\n...<|im_end|>`) or `llama3`
    /// (`<|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>`, after
    /// `<|begin_of_text|>`). Each comes with its family's BOS and EOS strings.
    pub fn named(name: &str) -> Result<Self> {
        match name {
            "chatml" => {
                Self::from_source_at(CHATML, "", "<|im_end|>", TemplateSource::Builtin("chatml"))
            }
            "llama3" => Self::from_source_at(
                LLAMA3,
                "<|begin_of_text|>",
                "<|eot_id|>",
                TemplateSource::Builtin("llama3"),
            ),
            _ => Err(Error::Template(format!(
                "unknown built-in template `{name}`; the built-in ones are: {}",
                BUILTIN_TEMPLATES.join(", ")
            ))),
        }
    }

    /// The template for `tok`'s model: `override_name` if given, else the model's own, else
    /// ChatML; with the model's BOS and EOS strings.
    pub fn for_tokenizer(tok: &Tokenizer, override_name: Option<&str>) -> Result<Self> {
        Self::for_model(tok, override_name, None)
    }

    /// [`ChatTemplate::for_tokenizer`] for the model at `model_path` (a GGUF file or a
    /// checkpoint folder), which errors about the model's own template name.
    pub fn for_model(
        tok: &Tokenizer,
        override_name: Option<&str>,
        model_path: Option<&Path>,
    ) -> Result<Self> {
        let text = |id: Option<u32>| id.and_then(|i| tok.token_str(i)).unwrap_or_default();
        let source = model_path.map_or(TemplateSource::Model, TemplateSource::model);
        Self::pick_at(
            tok.chat_template(),
            override_name,
            &text(tok.bos_id()),
            &text(tok.eos_id()),
            source,
        )
    }

    /// The template to use: the built-in one named by `override_name` if given, else the
    /// model's own (`model_template`, rendered with `bos` and `eos`), else ChatML.
    pub fn pick(
        model_template: Option<&str>,
        override_name: Option<&str>,
        bos: &str,
        eos: &str,
    ) -> Result<Self> {
        Self::pick_at(
            model_template,
            override_name,
            bos,
            eos,
            TemplateSource::Model,
        )
    }

    /// [`ChatTemplate::pick`], naming the model's template `source` in errors.
    fn pick_at(
        model_template: Option<&str>,
        override_name: Option<&str>,
        bos: &str,
        eos: &str,
        source: TemplateSource,
    ) -> Result<Self> {
        match (override_name, model_template) {
            (Some(name), _) => Self::named(name),
            (None, Some(src)) => Self::from_source_at(src, bos, eos, source),
            (None, None) => Self::named("chatml"),
        }
    }

    /// The renderer this template uses now.
    fn renderer(&self) -> Renderer {
        if !self.source.is_untrusted() {
            return Renderer::InProcess;
        }
        match (&self.renderer, sandbox::enabled()) {
            (Some(r), _) => r.clone(),
            (None, Some(s)) => Renderer::Sandbox(s.clone()),
            (None, None) => Renderer::InProcess,
        }
    }

    /// The error for a failed rendering: what happened, the template's source and, for
    /// untrusted templates, how to use a built-in one instead.
    fn failure(&self, f: Failure) -> Error {
        let source = &self.source;
        let what = match f {
            Failure::Template(msg) => format!(
                "rendering {source} failed: {msg}; the template may not support this \
                 conversation (e.g. roles, order)"
            ),
            Failure::OutOfFuel(fuel) => format!(
                "{source} did not finish within its budget of {fuel} steps (an endless or \
                 very long loop)"
            ),
            Failure::OutputTooLarge(cap) => format!(
                "{source} wrote more than {} (the cap on a rendered prompt)",
                mib(cap as u64)
            ),
            Failure::OutOfMemory(limit) => format!(
                "{source} used more than its {} of memory (a string or list that keeps \
                 growing)",
                mib(limit)
            ),
            Failure::Timeout(t) => {
                format!("{source} did not finish within {:.1} s", t.as_secs_f64())
            }
            Failure::Sandbox(msg) => format!("rendering {source} failed: {msg}"),
        };
        if source.is_untrusted() {
            Error::Template(format!("{what}; {OVERRIDE_HINT}"))
        } else {
            Error::Template(what)
        }
    }

    /// Renders a conversation, split into template text and message content (see the module
    /// docs). With `add_generation_prompt`, the prompt ends with the opening of an assistant
    /// turn.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<Segment>> {
        let mut wrapped = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            if m.content.contains([CONTENT_OPEN, CONTENT_CLOSE]) {
                return Err(Error::Template(format!(
                    "message {} ({}) contains U+E000 or U+E001, private-use characters reserved \
                     to mark message content; remove them from the message",
                    i + 1,
                    m.role
                )));
            }
            wrapped.push(Message::new(
                m.role,
                format!("{CONTENT_OPEN}{}{CONTENT_CLOSE}", m.content),
            ));
        }
        let cap = output_cap(self.budget.max_output, &wrapped);
        let out = match self.renderer() {
            Renderer::InProcess => render_env(
                &self.env,
                &wrapped,
                add_generation_prompt,
                &self.bos,
                &self.eos,
                cap,
            ),
            Renderer::Sandbox(s) => s.render(&sandbox::Request {
                template: Cow::Borrowed(&self.src),
                bos: Cow::Borrowed(&self.bos),
                eos: Cow::Borrowed(&self.eos),
                messages: Cow::Borrowed(wrapped.as_slice()),
                add_generation_prompt,
                fuel: self.budget.fuel,
                max_output: cap,
            }),
        }
        .map_err(|f| self.failure(f))?;
        Ok(split_segments(&out))
    }

    /// Renders a conversation to one string (template text and content joined).
    pub fn render_string(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        Ok(segments_to_string(
            &self.render(messages, add_generation_prompt)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{encode_chat, Message};
    use crate::tokenizer::tests::smollm;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

    fn smollm_template(tok: &Tokenizer) -> Result<ChatTemplate> {
        ChatTemplate::for_tokenizer(tok, None)
    }

    #[test]
    fn smollm_template_renders_chatml() -> TestResult {
        let tok = smollm();
        let t = smollm_template(&tok)?;
        let msgs = [Message::system("You are X"), Message::user("Hi")];
        assert_eq!(
            t.render_string(&msgs, true)?,
            "<|im_start|>system\nYou are X<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        let segs = t.render(&msgs, true)?;
        assert_eq!(
            segs,
            [
                Segment::Template("<|im_start|>system\n".into()),
                Segment::Content("You are X".into()),
                Segment::Template("<|im_end|>\n<|im_start|>user\n".into()),
                Segment::Content("Hi".into()),
                Segment::Template("<|im_end|>\n<|im_start|>assistant\n".into()),
            ]
        );
        // Ids equal encoding the whole string when the content has no control strings.
        let ids = encode_chat(&tok, &segs)?;
        assert_eq!(ids, tok.encode_special(&segments_to_string(&segs))?);
        assert_eq!(ids.first(), Some(&1));
        Ok(())
    }

    #[test]
    fn smollm_default_system_prompt() -> TestResult {
        let tok = smollm();
        let t = smollm_template(&tok)?;
        let text = t.render_string(&[Message::user("Hi")], false)?;
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by \
             Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
        Ok(())
    }

    #[test]
    fn llama3_fallback_format() -> TestResult {
        let t = ChatTemplate::named("llama3")?;
        let msgs = [
            Message::system("S"),
            Message::user("U"),
            Message::assistant("A"),
            Message::user("V"),
        ];
        assert_eq!(
            t.render_string(&msgs, true)?,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\nA<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nV<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        Ok(())
    }

    #[test]
    fn chatml_fallback_and_pick() -> TestResult {
        let msgs = [Message::user("Hi")];
        let expected = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(
            ChatTemplate::named("chatml")?.render_string(&msgs, true)?,
            expected
        );
        assert_eq!(
            ChatTemplate::pick(None, None, "", "")?.render_string(&msgs, true)?,
            expected
        );
        let own = ChatTemplate::pick(Some("{{ bos_token }}x"), None, "<s>", "")?;
        assert_eq!(own.render_string(&msgs, true)?, "<s>x");
        let overridden = ChatTemplate::pick(Some("x"), Some("chatml"), "", "")?;
        assert_eq!(overridden.render_string(&msgs, true)?, expected);
        assert!(matches!(
            ChatTemplate::named("vicuna"),
            Err(Error::Template(_))
        ));
        Ok(())
    }

    #[test]
    fn broken_template_is_a_template_error() {
        let err = ChatTemplate::from_source("{% for m in messages %}{{ m.content }", "", "");
        assert!(matches!(err, Err(Error::Template(_))), "{err:?}");
    }

    #[test]
    fn builtin_templates_errors_name_them_without_the_override_hint() -> TestResult {
        let t = ChatTemplate::named("chatml")?.with_budget(Budget {
            fuel: 3,
            max_output: DEFAULT_MAX_OUTPUT,
        });
        match t.render(&[Message::user("a"), Message::user("b")], true) {
            Err(Error::Template(msg)) => {
                assert!(msg.contains("the built-in template `chatml`"), "{msg}");
                assert!(!msg.contains("--chat-template"), "{msg}");
            }
            other => return Err(format!("expected a template error, got {other:?}").into()),
        }
        Ok(())
    }

    #[test]
    fn template_sources_are_named() {
        assert_eq!(
            TemplateSource::model(Path::new("/nonexistent/m.gguf")).to_string(),
            "`tokenizer.chat_template` of /nonexistent/m.gguf"
        );
        let dir = std::env::temp_dir();
        assert_eq!(
            TemplateSource::model(&dir).to_string(),
            format!(
                "`chat_template` of {}",
                dir.join("tokenizer_config.json").display()
            )
        );
        assert!(!TemplateSource::Builtin("chatml").is_untrusted());
        assert!(TemplateSource::Model.is_untrusted());
        let err = ChatTemplate::from_source_at(
            "{% for %}",
            "",
            "",
            TemplateSource::File("t.jinja".into()),
        );
        assert!(
            matches!(&err, Err(Error::Template(m)) if m.contains("template file t.jinja does not compile") && m.contains("--chat-template")),
            "{err:?}"
        );
    }
}
