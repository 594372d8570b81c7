//! `models rm`: removing a preset's files from the models folder and the Hugging Face cache,
//! and never anything outside the two.

use std::path::{Path, PathBuf};

use super::preset::Preset;
use crate::error::{Error, Result};
use crate::hub::Hub;

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

/// Checks that `path`'s folder, links followed, lies inside `root` (links followed).
pub(super) fn folder_inside(path: &Path, root: &Path) -> std::result::Result<(), String> {
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
