//! Files from the Hugging Face Hub, through hf-hub: kept in the standard Hugging Face cache
//! (`HF_HOME`, else `~/.cache/huggingface`) so other tools share them, downloaded with
//! progress, resumed from a cut transfer's `.part` file, and checked against the size and
//! hash the Hub reports before use.
//!
//! `HF_ENDPOINT` points at another server (a mirror, or the tests' local one); `HF_TOKEN`
//! (else the token file `huggingface-cli login` writes) opens gated repos; `HF_HUB_OFFLINE=1`
//! or [`Hub::offline`] keeps everything to the cache.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo};
use sha2::Digest;

use crate::error::{Error, Result};

/// One file's transfer, as reported to the progress callback.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub file: String,
    /// Bytes on disk, a resumed part included.
    pub done: u64,
    pub total: u64,
    /// Bytes that were already on disk when this transfer started.
    pub resumed_from: u64,
    pub started: Instant,
    pub finished: bool,
}

impl Transfer {
    /// Bytes per second over this transfer (the resumed part excluded).
    pub fn rate(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs > 0.0 {
            (self.done - self.resumed_from.min(self.done)) as f64 / secs
        } else {
            0.0
        }
    }

    /// Seconds left at the current rate.
    pub fn eta(&self) -> Option<f64> {
        let r = self.rate();
        (r > 0.0).then(|| self.total.saturating_sub(self.done) as f64 / r)
    }
}

/// Access to the Hub and the local cache.
#[derive(Debug, Clone)]
pub struct Hub {
    cache: Cache,
    endpoint: String,
    offline: bool,
    token: Option<String>,
}

/// Is `HF_HUB_OFFLINE` set to a true value?
pub fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"))
}

impl Hub {
    /// The Hub as the environment describes it; `offline` forces cache-only.
    pub fn from_env(offline: bool) -> Self {
        let cache = Cache::from_env();
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| cache.token());
        Self {
            endpoint: std::env::var("HF_ENDPOINT")
                .unwrap_or_else(|_| "https://huggingface.co".to_string()),
            cache,
            offline: offline || offline_from_env(),
            token,
        }
    }

    /// Whether downloads are disabled.
    pub fn is_offline(&self) -> bool {
        self.offline
    }

    /// The cache folder (`…/huggingface/hub`).
    pub fn cache_dir(&self) -> &Path {
        self.cache.path()
    }

    /// `repo`'s `file` if it is in the cache.
    pub fn cached(&self, repo: &str, file: &str) -> Option<PathBuf> {
        self.cache
            .repo(Repo::model(repo.to_string()))
            .get(file)
            .filter(|p| p.exists())
    }

    /// Bytes of an unfinished download of `repo`'s files (the `.part` files in its blobs).
    pub fn partial_bytes(&self, repo: &str) -> u64 {
        let dir = self.repo_dir(repo).join("blobs");
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "part"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// `models--owner--name` in the cache.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache
            .path()
            .join(Repo::model(repo.to_string()).folder_name())
    }

    fn api(&self) -> Result<Api> {
        ApiBuilder::from_cache(self.cache.clone())
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(false)
            .with_retries(3)
            .build()
            .map_err(|e| Error::Fetch {
                what: "the Hugging Face client".into(),
                reason: e.to_string(),
            })
    }

    /// The file names in `repo` (its main revision), as the Hub lists them.
    pub fn list_files(&self, repo: &str) -> Result<Vec<String>> {
        if self.offline {
            return Err(self.offline_error(repo, None));
        }
        let info = self
            .api()?
            .model(repo.to_string())
            .info()
            .map_err(|e| self.explain(repo, None, e))?;
        Ok(info.siblings.into_iter().map(|s| s.rfilename).collect())
    }

    /// `repo`'s `file`: from the cache, else downloaded (resuming any `.part`), checked
    /// against the Hub's size and hash. `progress` sees the transfer as it goes.
    pub fn fetch(
        &self,
        repo: &str,
        file: &str,
        progress: &mut dyn FnMut(&Transfer),
    ) -> Result<PathBuf> {
        if let Some(p) = self.cached(repo, file) {
            return Ok(p);
        }
        if self.offline {
            return Err(self.offline_error(repo, Some(file)));
        }
        let api = self.api()?;
        let mut seen = Seen {
            transfer: None,
            expect_offset: false,
            callback: progress,
        };
        let path = api
            .model(repo.to_string())
            .download_with_progress(file, &mut seen)
            .map_err(|e| self.explain(repo, Some(file), e))?;
        let total = seen.transfer.as_ref().map(|t| t.total);
        if let Err(reason) = verify(&path, total) {
            // Neither the bad blob nor the pointer to it may stay behind to be used later.
            if let Ok(blob) = std::fs::canonicalize(&path) {
                let _ = std::fs::remove_file(blob);
            }
            let _ = std::fs::remove_file(&path);
            return Err(Error::Fetch {
                what: format!("{file} from {repo}"),
                reason: format!(
                    "{reason}; the file was deleted: run the command again to download it afresh"
                ),
            });
        }
        Ok(path)
    }

    fn offline_error(&self, repo: &str, file: Option<&str>) -> Error {
        Error::Fetch {
            what: match file {
                Some(f) => format!("{f} from {repo}"),
                None => format!("the file list of {repo}"),
            },
            reason: format!(
                "offline (--offline or HF_HUB_OFFLINE) and not in the cache {}: run without \
                 --offline on a machine that reaches the Hub, or copy the files there",
                self.cache.path().display()
            ),
        }
    }

    /// Turns hf-hub's error into one that says what to do.
    fn explain(&self, repo: &str, file: Option<&str>, e: ApiError) -> Error {
        let what = match file {
            Some(f) => format!("{f} from {repo}"),
            None => format!("the file list of {repo}"),
        };
        let reason = match &e {
            ApiError::RequestError(boxed) => match boxed.as_ref() {
                ureq::Error::Status(401 | 403, _) => match &self.token {
                    None => format!(
                        "{repo} is gated or private: accept its licence at {}/{repo} and set HF_TOKEN to an access token",
                        self.endpoint
                    ),
                    Some(_) => format!(
                        "the Hub refused the token in HF_TOKEN for {repo}: check that it is valid and that its account accepted the repo's licence at {}/{repo}",
                        self.endpoint
                    ),
                },
                ureq::Error::Status(404, _) => match file {
                    Some(f) => {
                        let listing = self
                            .list_files(repo)
                            .map(|files| {
                                let mut names: Vec<_> =
                                    files.into_iter().filter(|n| !n.starts_with('.')).collect();
                                names.truncate(12);
                                format!(" (it has: {})", names.join(", "))
                            })
                            .unwrap_or_default();
                        format!("{repo} has no file `{f}`, or the repo does not exist{listing}")
                    }
                    None => format!("no model repo `{repo}` on {}", self.endpoint),
                },
                ureq::Error::Status(code, _) => {
                    format!("the Hub at {} answered HTTP {code}", self.endpoint)
                }
                ureq::Error::Transport(t) => format!(
                    "cannot reach {} ({t}); nothing cached in {}: connect to the network, set HF_ENDPOINT to a mirror, or copy the files into the cache",
                    self.endpoint,
                    self.cache.path().display()
                ),
            },
            ApiError::IoError(io) => format!(
                "writing into {} failed: {io} (free some disk space, or set HF_HOME to a writable folder)",
                self.cache.path().display()
            ),
            ApiError::TooManyRetries(inner) => format!(
                "the transfer kept failing ({inner}); run the command again: it resumes where it stopped"
            ),
            ApiError::InvalidResume => format!(
                "a partial download in {} is larger than the file: delete the *.part files there and retry",
                self.repo_dir(repo).join("blobs").display()
            ),
            ApiError::LockAcquisition(p) => format!(
                "{} is locked: another download of the same file is running",
                p.display()
            ),
            other => other.to_string(),
        };
        Error::Fetch { what, reason }
    }
}

/// Forwards hf-hub's progress calls to our callback as [`Transfer`]s.
struct Seen<'a> {
    transfer: Option<Transfer>,
    /// hf-hub reports the bytes already on disk in the first update after each `init`.
    expect_offset: bool,
    callback: &'a mut dyn FnMut(&Transfer),
}

impl hf_hub::api::Progress for &mut Seen<'_> {
    fn init(&mut self, size: usize, filename: &str) {
        self.expect_offset = true;
        match &mut self.transfer {
            // A retry inside one call: same transfer, same start.
            Some(t) if t.file == filename => t.total = size as u64,
            _ => {
                self.transfer = Some(Transfer {
                    file: filename.to_string(),
                    done: 0,
                    total: size as u64,
                    resumed_from: 0,
                    started: Instant::now(),
                    finished: false,
                });
            }
        }
    }

    fn update(&mut self, size: usize) {
        let Some(t) = &mut self.transfer else { return };
        if std::mem::take(&mut self.expect_offset) {
            if t.done == 0 {
                t.resumed_from = size as u64;
            }
            t.done = size as u64;
        } else {
            t.done += size as u64;
        }
        (self.callback)(t);
    }

    fn finish(&mut self) {
        if let Some(t) = &mut self.transfer {
            t.finished = t.done >= t.total;
            (self.callback)(t);
        }
    }
}

/// Checks a downloaded file against the size the Hub reported and the hash its cache name
/// (the blob's ETag) carries: SHA-256 for LFS files, git's SHA-1 for small ones.
fn verify(path: &Path, total: Option<u64>) -> std::result::Result<(), String> {
    let blob = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = std::fs::metadata(&blob)
        .map_err(|e| format!("{}: {e}", blob.display()))?
        .len();
    if let Some(t) = total {
        if len != t {
            return Err(format!("size {len} bytes, but the Hub reported {t}"));
        }
    }
    let etag = blob
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let actual = if hex(&etag, 64) {
        let mut h = sha2::Sha256::new();
        read_chunks(&blob, &mut |b| h.update(b))?;
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    } else if hex(&etag, 40) {
        let mut h = sha1_smol::Sha1::new();
        h.update(format!("blob {len}\0").as_bytes());
        read_chunks(&blob, &mut |b| h.update(b))?;
        h.digest().to_string()
    } else {
        // Not a content hash (some mirrors): the size check is all there is.
        return Ok(());
    };
    if actual.eq_ignore_ascii_case(&etag) {
        Ok(())
    } else {
        Err(format!(
            "its hash is {actual}, but the Hub reported {etag} (corrupted in transfer or on the server)"
        ))
    }
}

/// Feeds the file's bytes to `update`, a megabyte at a time.
fn read_chunks(path: &Path, update: &mut dyn FnMut(&[u8])) -> std::result::Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_checks_sha256_and_git_sha1_names() {
        let dir = std::env::temp_dir().join(format!("morphkv-verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // sha256("hello\n")
        let good = dir.join("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03");
        std::fs::write(&good, b"hello\n").unwrap();
        assert!(verify(&good, Some(6)).is_ok());
        assert!(verify(&good, Some(7)).unwrap_err().contains("size"));
        let bad = dir.join("0000000000000000000000000000000000000000000000000000000000000000");
        std::fs::write(&bad, b"hello\n").unwrap();
        assert!(verify(&bad, Some(6)).unwrap_err().contains("hash"));
        // git hash-object of "hello\n"
        let git = dir.join("ce013625030ba8dba906f756967f9e9ca394464a");
        std::fs::write(&git, b"hello\n").unwrap();
        assert!(verify(&git, None).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
