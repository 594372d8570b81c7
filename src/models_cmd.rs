//! `morphkv models list|pull|rm|path`, and the download progress bar every command shows
//! when `-m` needs fetching.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use morphkv::hub::{Hub, Transfer};
use morphkv::models::{self, human_size, Fetcher, Registry, Spec};

use crate::cli::ModelsCommand;

/// Draws transfers on stderr: a redrawn bar on a terminal, a line every few seconds
/// otherwise.
pub struct Bar {
    tty: bool,
    last: Option<Instant>,
}

impl Bar {
    pub fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    pub fn draw(&mut self, t: &Transfer) {
        let now = Instant::now();
        let every = if self.tty { 100 } else { 5_000 };
        let done = t.finished || t.done >= t.total;
        if !done && self.last.is_some_and(|l| (now - l).as_millis() < every) {
            return;
        }
        self.last = Some(now);
        let frac = if t.total > 0 {
            t.done as f64 / t.total as f64
        } else {
            0.0
        };
        let width = 24;
        let bar: String = (0..width)
            .map(|i| {
                if (i as f64) < frac * width as f64 {
                    '#'
                } else {
                    '.'
                }
            })
            .collect();
        let eta = match t.eta() {
            Some(s) if !done => format!(", ETA {}", clock(s)),
            _ => String::new(),
        };
        let resumed = if t.resumed_from > 0 {
            format!(", resumed at {}", human_size(t.resumed_from))
        } else {
            String::new()
        };
        let line = format!(
            "{} [{bar}] {} / {} ({}/s{eta}{resumed})",
            t.file,
            human_size(t.done),
            human_size(t.total),
            human_size(t.rate() as u64),
        );
        if self.tty {
            eprint!("\r{line}\x1b[K");
            if done {
                eprintln!();
            }
        } else {
            eprintln!("{line}");
        }
        let _ = std::io::stderr().flush();
    }
}

fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Resolves `-m` for a command, logging fetch steps and drawing downloads on stderr.
pub fn resolve(spec: Option<&str>, offline: bool) -> Result<PathBuf> {
    Ok(resolve_preset(spec, offline)?.path)
}

/// [`resolve`], keeping the preset the model came from.
pub fn resolve_preset(spec: Option<&str>, offline: bool) -> Result<models::Resolved> {
    let mut bar = Bar::new();
    let mut log = |l: &str| eprintln!("{l}");
    let mut progress = |t: &Transfer| bar.draw(t);
    Ok(models::resolve_with(
        spec,
        &mut Fetcher {
            hub: Hub::from_env(offline),
            log: &mut log,
            progress: &mut progress,
        },
    )?)
}

pub fn run(cmd: ModelsCommand) -> Result<()> {
    match cmd {
        ModelsCommand::List => list(),
        ModelsCommand::Pull { name, offline } => {
            let path = resolve(Some(&name), offline)?;
            println!("{}", path.display());
            Ok(())
        }
        ModelsCommand::Rm { name } => rm(&name),
        ModelsCommand::Path { name } => path(&name),
        ModelsCommand::Random {
            name,
            file_type,
            output,
            tokenizer_from,
            seed,
        } => random(&name, &file_type, &output, tokenizer_from.as_deref(), seed),
    }
}

/// `morphkv models random`: a GGUF of random weights at a preset's shapes.
fn random(
    name: &str,
    file_type: &str,
    output: &std::path::Path,
    tokenizer_from: Option<&str>,
    seed: u64,
) -> Result<()> {
    use morphkv::model::gguf::writer::{write_random, FileType};
    let ftype: FileType = file_type.parse()?;
    let cfg = Registry::load()?.random_config(name)?;
    if output.exists() {
        bail!(
            "-o {}: the file exists; remove it or name another",
            output.display()
        );
    }
    let source = resolve(tokenizer_from, true)?;
    let (ct, _) =
        morphkv::model::open_gguf(&source).map_err(|e| anyhow::anyhow!("--tokenizer-from: {e}"))?;
    let t = Instant::now();
    let bytes = write_random(output, &cfg, ftype, Some(&ct), seed)?;
    eprintln!(
        "wrote {} ({}, {name}'s shapes, tokenizer of {}) in {:.1} s",
        output.display(),
        human_size(bytes),
        source.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn list() -> Result<()> {
    let reg = Registry::load()?;
    let hub = Hub::from_env(true);
    let dir = models::models_dir()?;
    let mut rows = vec![[
        "NAME".to_string(),
        "FORMAT".into(),
        "SIZE".into(),
        "STATE".into(),
        "PATH / SOURCE".into(),
    ]];
    for p in &reg.models {
        let (state, where_) = match models::locate(p, &dir, &hub) {
            Some(path) => ("cached".to_string(), path.display().to_string()),
            None => {
                let part = hub.partial_bytes(&p.repo);
                let state = match (part, p.size) {
                    (0, _) => "not pulled".to_string(),
                    (b, Some(total)) if total > 0 => {
                        format!("partial {:.0}%", 100.0 * b as f64 / total as f64)
                    }
                    (b, _) => format!("partial {}", human_size(b)),
                };
                (state, format!("hf.co/{}", p.repo))
            }
        };
        let mut name = p.name.clone();
        if p.name == reg.default {
            name.push_str(" *");
        }
        rows.push([
            name,
            p.format().into(),
            p.size.map(human_size).unwrap_or_else(|| "?".into()),
            state,
            where_,
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i == 4 {
                    cell.clone()
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    println!(
        "\n* default. Downloads go to {} (HF_HOME); pull with `morphkv models pull NAME`.",
        hub.cache_dir().display()
    );
    if let Some(user) = models::user_models_file() {
        println!("Add presets in {}.", user.display());
    }
    Ok(())
}

fn preset_named<'a>(reg: &'a Registry, name: &str) -> Result<&'a models::Preset> {
    match Spec::parse(name, reg)? {
        Spec::Preset(n) => match reg.get(&n) {
            Some(p) => Ok(p),
            None => bail!("unknown preset `{n}`"),
        },
        Spec::Path(p) => bail!(
            "{} is a path, not a preset: delete it yourself if you mean to",
            p.display()
        ),
        Spec::Hub { repo, .. } => bail!(
            "`{name}` is a Hub repo, not a preset: its files are in {}",
            Hub::from_env(true).repo_dir(&repo).display()
        ),
    }
}

fn rm(name: &str) -> Result<()> {
    let reg = Registry::load()?;
    let p = preset_named(&reg, name)?;
    let hub = Hub::from_env(true);
    let removed = models::remove(p, &models::models_dir()?, &hub)?;
    for path in &removed.paths {
        println!("removed {}", path.display());
    }
    if removed.paths.is_empty() {
        println!("{name}: nothing downloaded");
    } else {
        println!("{name}: removed, {} freed", human_size(removed.freed));
    }
    Ok(())
}

fn path(name: &str) -> Result<()> {
    let reg = Registry::load()?;
    let hub = Hub::from_env(true);
    let dir = models::models_dir()?;
    let found = match Spec::parse(name, &reg)? {
        Spec::Path(p) => Some(p),
        Spec::Preset(n) => reg.get(&n).and_then(|p| models::locate(p, &dir, &hub)),
        Spec::Hub { repo, file } => match file {
            Some(f) => hub.cached(&repo, &f),
            None => None,
        },
    };
    match found {
        Some(p) => {
            println!("{}", p.display());
            Ok(())
        }
        None => bail!("{name} is not downloaded: run `morphkv models pull {name}`"),
    }
}
