//! What `-m` points at once resolved: a GGUF file or a safetensors checkpoint folder, and
//! loading either into a decoder and its tokenizer.

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::{open_gguf, Model, WeightFormat};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// A model on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// One GGUF file: weights, config and tokenizer.
    Gguf(PathBuf),
    /// A folder with `config.json`, `*.safetensors`, `tokenizer.json` (and, for the chat
    /// template, `tokenizer_config.json`).
    Safetensors(PathBuf),
}

impl Checkpoint {
    /// Tells the format from the path: a folder (or a file inside one) holding `config.json`
    /// is a safetensors checkpoint; any other file is read as GGUF.
    pub fn detect(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::ModelNotFound {
                path: path.to_path_buf(),
            });
        }
        let dir = if path.is_dir() {
            Some(path.to_path_buf())
        } else {
            let is_st = path.file_name().is_some_and(|n| n == "config.json")
                || path.extension().is_some_and(|x| x == "safetensors");
            is_st.then(|| path.parent().unwrap_or(Path::new(".")).to_path_buf())
        };
        match dir {
            None => Ok(Self::Gguf(path.to_path_buf())),
            Some(d) if d.join("config.json").exists() => Ok(Self::Safetensors(d)),
            Some(d) => Err(Error::BadModel {
                path: d,
                reason: "no config.json here: a safetensors checkpoint is a folder with \
                         config.json, *.safetensors and tokenizer.json"
                    .into(),
            }),
        }
    }

    /// The file or folder.
    pub fn path(&self) -> &Path {
        match self {
            Self::Gguf(p) | Self::Safetensors(p) => p,
        }
    }
}

/// Loads the decoder and its tokenizer from a GGUF file or a safetensors folder.
pub fn load(path: &Path, device: &Device, weights: WeightFormat) -> Result<(Model, Tokenizer)> {
    match Checkpoint::detect(path)? {
        Checkpoint::Gguf(p) => {
            let (ct, mut reader) = open_gguf(&p)?;
            let model = Model::from_gguf(&ct, &mut reader, &p, device, weights)?;
            let tok = Tokenizer::from_gguf(&ct, &p)?;
            Ok((model, tok))
        }
        Checkpoint::Safetensors(dir) => {
            let tj = dir.join("tokenizer.json");
            if !tj.exists() {
                return Err(Error::BadModel {
                    path: dir,
                    reason: "no tokenizer.json: download it from the model's repository".into(),
                });
            }
            let tc = dir.join("tokenizer_config.json");
            let tok = Tokenizer::from_files(&tj, tc.exists().then_some(tc.as_path()))?;
            let model = Model::from_safetensors(&dir, device, weights)?;
            Ok((model, tok))
        }
    }
}
