//! The default evaluation suite (the repository's `eval/` folder, built into the binary) and
//! users' own files in the same formats.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// A long text to feed teacher-forced.
#[derive(Debug, Clone)]
pub struct Text {
    pub name: String,
    pub body: String,
}

/// The shipped texts (see `eval/SOURCES.md` for their sources and licences).
pub const DEFAULT_TEXTS: [(&str, &str); 4] = [
    (
        "alice-in-wonderland",
        include_str!("../../eval/texts/alice-in-wonderland.txt"),
    ),
    ("botchan", include_str!("../../eval/texts/botchan.txt")),
    (
        "loc-workshop-electronic-texts",
        include_str!("../../eval/texts/loc-workshop-electronic-texts.txt"),
    ),
    (
        "python-tutorial",
        include_str!("../../eval/texts/python-tutorial.txt"),
    ),
];

const DEFAULT_PROMPTS: &str = include_str!("../../eval/prompts.toml");
const DEFAULT_PROBES: &str = include_str!("../../eval/recall.toml");

impl Text {
    /// The shipped texts, or the files given.
    pub fn load(files: &[impl AsRef<Path>]) -> Result<Vec<Text>> {
        if files.is_empty() {
            return Ok(DEFAULT_TEXTS
                .iter()
                .map(|(name, body)| Text {
                    name: name.to_string(),
                    body: body.to_string(),
                })
                .collect());
        }
        files
            .iter()
            .map(|f| {
                let f = f.as_ref();
                let body = read(f, "--text")?;
                if body.trim().is_empty() {
                    return Err(Error::arg(
                        "--text",
                        format!("{} is empty: give a file with text in it", f.display()),
                    ));
                }
                Ok(Text {
                    name: f
                        .file_stem()
                        .map_or_else(|| f.display().to_string(), |s| s.to_string_lossy().into()),
                    body,
                })
            })
            .collect()
    }
}

/// A prompt that asks for a long answer.
#[derive(Debug, Clone, Deserialize)]
pub struct Prompt {
    pub name: String,
    pub text: String,
}

/// A recall probe: a fact, the question about it, the expected answer.
#[derive(Debug, Clone, Deserialize)]
pub struct Probe {
    pub name: String,
    pub fact: String,
    pub question: String,
    pub answer: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptFile {
    #[serde(default)]
    prompt: Vec<Prompt>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeFile {
    #[serde(default)]
    probe: Vec<Probe>,
}

fn read(path: &Path, flag: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        Error::arg(
            flag,
            format!(
                "cannot read {}: {e} (give a UTF-8 text file)",
                path.display()
            ),
        )
    })
}

fn parse<T: for<'de> Deserialize<'de>>(text: &str, origin: &str, flag: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| {
        Error::arg(
            flag,
            format!(
                "{origin} is not a valid file: {} (see eval/README.md for the format)",
                e.message()
            ),
        )
    })
}

/// The shipped long-answer prompts, or those of `file`.
pub fn load_prompts(file: Option<&Path>) -> Result<Vec<Prompt>> {
    let (text, origin) = match file {
        Some(f) => (read(f, "--prompts")?, f.display().to_string()),
        None => (DEFAULT_PROMPTS.to_string(), "eval/prompts.toml".into()),
    };
    let prompts = parse::<PromptFile>(&text, &origin, "--prompts")?.prompt;
    if prompts.is_empty() {
        return Err(Error::arg(
            "--prompts",
            format!("{origin} has no [[prompt]] entries"),
        ));
    }
    Ok(prompts)
}

/// The shipped recall probes, or those of `file`.
pub fn load_probes(file: Option<&Path>) -> Result<Vec<Probe>> {
    let (text, origin) = match file {
        Some(f) => (read(f, "--probes")?, f.display().to_string()),
        None => (DEFAULT_PROBES.to_string(), "eval/recall.toml".into()),
    };
    let probes = parse::<ProbeFile>(&text, &origin, "--probes")?.probe;
    if probes.is_empty() {
        return Err(Error::arg(
            "--probes",
            format!("{origin} has no [[probe]] entries"),
        ));
    }
    if let Some(p) = probes.iter().find(|p| p.answer.trim().is_empty()) {
        return Err(Error::arg(
            "--probes",
            format!("{origin}: probe `{}` has an empty answer", p.name),
        ));
    }
    Ok(probes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_suite_parses_and_each_answer_is_only_in_its_fact() {
        let texts = Text::load(&[] as &[&Path]).unwrap();
        assert_eq!(texts.len(), 4);
        assert!(texts.iter().all(|t| t.body.len() > 100_000));
        let prompts = load_prompts(None).unwrap();
        assert!(prompts.len() >= 8);
        let probes = load_probes(None).unwrap();
        assert!(probes.len() >= 10);
        for p in &probes {
            assert!(p.fact.contains(&p.answer), "{}", p.name);
            assert!(!p.question.contains(&p.answer), "{}", p.name);
            for t in &texts {
                assert!(!t.body.contains(&p.answer), "{} in {}", p.name, t.name);
            }
        }
    }

    #[test]
    fn bad_files_name_the_flag_and_the_file() {
        let dir = std::env::temp_dir().join(format!("morphkv-suite-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[[probe]]\nname = \"x\"\n").unwrap();
        let e = load_probes(Some(&bad)).unwrap_err().to_string();
        assert!(e.contains("--probes") && e.contains("bad.toml"), "{e}");
        let e = load_prompts(Some(&dir.join("missing.toml")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--prompts") && e.contains("missing.toml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
