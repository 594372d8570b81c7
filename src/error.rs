//! The library's one error type. Every variant's message names the file, flag or value at fault
//! and, where there is one, what to do about it: the binary prints it on one line.

use std::path::PathBuf;

/// Errors from loading models, tokenizing, decoding and managing the cache.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model file that does not exist.
    #[error("model file {path} does not exist: pass a GGUF file, a safetensors folder, a preset name or `owner/repo` with -m (see `morphkv models list`)")]
    ModelNotFound { path: PathBuf },

    /// A file that exists but is not a usable model.
    #[error("{path} is not a usable model: {reason}")]
    BadModel { path: PathBuf, reason: String },

    /// A model whose output is not a number, or the same for every token: damaged weights.
    #[error("{path}: the model's output is {what}: its weights are likely corrupt (download the file again, or pass another with -m)")]
    CorruptOutput { path: PathBuf, what: &'static str },

    /// A model whose architecture the decoder does not implement.
    #[error("{path}: architecture `{arch}` is not supported (supported: {supported})")]
    UnsupportedArch {
        path: PathBuf,
        arch: String,
        supported: String,
    },

    /// A preset name that is not in `models.toml`.
    #[error("unknown model `{name}`: not a file, a preset or a Hub repo `owner/name` ({known})")]
    UnknownPreset { name: String, known: String },

    /// Fetching a model failed on every source.
    #[error("{path}: {reason}")]
    BadFile { path: String, reason: String },

    #[error("could not fetch {what}: {reason}")]
    Fetch { what: String, reason: String },

    /// A tokenizer that could not be built or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A chat template that does not parse or render.
    #[error("chat template: {0}")]
    Template(String),

    /// A command-line or API value out of range; names the flag.
    #[error("invalid value for {flag}: {reason}")]
    InvalidArg { flag: String, reason: String },

    /// A tensor operation failed inside candle (message without candle's backtrace).
    #[error("tensor error: {0}")]
    Candle(String),

    /// An I/O error, with the file it concerns.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Line and column (1-based, the column in characters) of a byte offset in `text`: where a
/// TOML error points.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Result with the library's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// candle's message alone: with `RUST_BACKTRACE` set, candle attaches a backtrace to its errors
/// and prints it as part of the message, which would break one-line errors.
pub fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        candle_core::Error::Context { inner, context } => {
            format!("{context}: {}", candle_message(inner))
        }
        other => other.to_string(),
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Self::Candle(candle_message(&e))
    }
}

impl Error {
    /// Shorthand for [`Error::InvalidArg`].
    pub fn arg(flag: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArg {
            flag: flag.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
