//! `morphkv chat` (and plain `morphkv`): settings from flags over the config file, saved-chat
//! housekeeping, then the model, its engine, and the TUI on the engine.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cli::{ChatArgs, ReplayArgs};
use crate::{load, sampling_params, Loaded};
use morphkv::cache::{CacheConfig, Positions};
use morphkv::chat::ChatTemplate;
use morphkv::engine::{Engine, Settings};
use morphkv::tui::{self, store, theme::Theme, ChatOptions};

/// The theme (`--theme`, else the config file's, else dark) and the key bindings of the
/// config file.
fn look(
    flag: Option<&str>,
    cfg: &tui::config::Config,
    config_dir: &std::path::Path,
) -> Result<(Theme, tui::keys::KeyMap)> {
    let name = flag.or(cfg.theme.as_deref()).unwrap_or("dark");
    let theme = Theme::load(name, Some(&config_dir.join("themes")))
        .map_err(|e| anyhow::anyhow!("--theme: {e}"))?;
    let keymap = tui::keys::KeyMap::parse(&cfg.keys)
        .map_err(|e| anyhow::anyhow!("{}: {e}", config_dir.join("config.toml").display()))?;
    Ok((theme, keymap))
}

/// The config and data folders (`MORPHKV_CONFIG_DIR` / `MORPHKV_DATA_DIR` override them).
fn dirs() -> Result<(PathBuf, PathBuf)> {
    let proj = directories::ProjectDirs::from("", "", "morphkv");
    let pick = |var: &str, f: fn(&directories::ProjectDirs) -> PathBuf| -> Result<PathBuf> {
        if let Some(v) = std::env::var_os(var) {
            return Ok(PathBuf::from(v));
        }
        proj.as_ref()
            .map(f)
            .with_context(|| format!("no home directory: set {var}"))
    };
    Ok((
        pick("MORPHKV_CONFIG_DIR", |d| d.config_dir().to_path_buf())?,
        pick("MORPHKV_DATA_DIR", |d| d.data_dir().to_path_buf())?,
    ))
}

/// The chat `id` names (`latest`: the newest), for `verb`. A damaged file is an error that
/// names it and what to do: never skipped, so `latest` never means an older chat.
fn find_chat(chats: &Path, id: &str, verb: &str) -> Result<(PathBuf, store::SavedChat)> {
    match store::find(chats, id)? {
        Some(store::Entry::Chat { path, chat }) => Ok((path, chat)),
        Some(store::Entry::Damaged {
            id: found, reason, ..
        }) => {
            let which = if id == "latest" {
                format!("the newest saved chat, `{found}`,")
            } else {
                format!("saved chat `{found}`")
            };
            bail!(
                "cannot {verb} {which}: it is damaged ({reason}); it is left as it is: \
                 {verb} another by its id (morphkv chat --list shows them), or remove this one \
                 with `morphkv chat --delete {found}`"
            )
        }
        None => bail!(
            "no saved chat `{id}` in {} (morphkv chat --list shows them)",
            chats.display()
        ),
    }
}

/// `--delete ID`: a chat, or a damaged file named by its id; `latest` never deletes a
/// damaged file. Prints what it removed.
fn delete_chat(chats: &Path, id: &str) -> Result<()> {
    let entry = store::find(chats, id)?.with_context(|| {
        format!(
            "no saved chat `{id}` in {} (morphkv chat --list shows them)",
            chats.display()
        )
    })?;
    let path = entry.path();
    if let store::Entry::Damaged {
        id: found, reason, ..
    } = &entry
    {
        if id == "latest" {
            bail!(
                "the newest saved chat, `{found}`, is damaged ({reason}): --delete latest deletes \
                 nothing; to remove that file, name it: `morphkv chat --delete {found}`"
            );
        }
    }
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("{}", path.display()))?;
    if meta.is_dir() {
        bail!(
            "{} is a folder, not a saved chat: nothing deleted; remove it yourself if you mean to",
            path.display()
        );
    }
    // A link goes, never what it points to.
    std::fs::remove_file(path).with_context(|| format!("deleting {}", path.display()))?;
    println!("deleted {} ({})", entry.id(), path.display());
    Ok(())
}

pub fn run(a: ChatArgs) -> Result<()> {
    let (config_dir, data_dir) = dirs()?;
    let chats = data_dir.join("chats");
    let cfg = tui::config::read(&config_dir).map_err(anyhow::Error::msg)?;

    if a.list {
        let all = store::scan(&chats)?;
        if all.is_empty() {
            println!("no saved chats in {}", chats.display());
        }
        let mut damaged = false;
        for e in &all {
            match e {
                store::Entry::Chat { chat: c, .. } => {
                    println!("{:<24} {:>3} messages  {}", c.id, c.messages.len(), c.title)
                }
                store::Entry::Damaged { id, reason, .. } => {
                    damaged = true;
                    println!("{id:<24} DAMAGED       {reason}");
                }
            }
        }
        if damaged {
            println!(
                "\nDAMAGED files are left as they are: fix them, or remove one with \
                 `morphkv chat --delete ID`."
            );
        }
        return Ok(());
    }
    if let Some(id) = &a.delete {
        return delete_chat(&chats, id);
    }
    if let [id, title] = a.rename.as_slice() {
        let (_, mut c) = find_chat(&chats, id, "rename")?;
        c.title = title.clone();
        let path = store::save(&chats, &c)?;
        println!("renamed {} ({}): {title}", c.id, path.display());
        return Ok(());
    }
    if let Some(id) = &a.export {
        let (_, c) = find_chat(&chats, id, "export")?;
        println!("# {}\n", c.title);
        for m in &c.messages {
            println!("**{}:**\n\n{}\n", m.role, m.content.trim_end());
        }
        return Ok(());
    }

    let (theme, keymap) = look(a.theme.as_deref(), &cfg, &config_dir)?;
    let resume = match &a.resume {
        Some(id) => Some(find_chat(&chats, id, "resume")?),
        None => None,
    };
    // A resumed chat's own settings, as it saved them.
    let saved = resume.as_ref().map(|(_, c)| c);
    // Flags, then the resumed chat's settings, then the config file, then the model preset's
    // suggestions, then defaults.
    let make_cache = |pc: &morphkv::models::PresetCache| -> Result<CacheConfig> {
        let policy = match (&a.policy, &resume) {
            (None, Some((path, c))) => c.policy_kind().map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e}; give --policy to resume it under another",
                    path.display()
                )
            })?,
            _ => a
                .policy
                .as_deref()
                .or(cfg.policy.as_deref())
                .or(pc.policy.as_deref())
                .unwrap_or("morphkv")
                .parse()?,
        };
        // The chat's knobs count where it ran this policy (a policy's defaults stay unset).
        let knobs = saved.map(|c| c.knobs_for(policy)).unwrap_or_default();
        let cache = CacheConfig {
            policy,
            budget: a
                .budget
                .or(saved.map(|c| c.budget))
                .or(cfg.budget)
                .or(pc.budget)
                .unwrap_or(600),
            window: a.window.or(knobs.window).or(cfg.window).or(pc.window),
            recent: a.recent.or(knobs.recent).or(cfg.recent),
            history: a
                .history
                .or(knobs.history)
                .or(cfg.history)
                .unwrap_or(morphkv::cache::DEFAULT_HISTORY),
            half_life: a
                .half_life
                .or(knobs.half_life)
                .or(cfg.half_life)
                .unwrap_or(morphkv::cache::DEFAULT_HALF_LIFE),
            fusion: pc.fusion.as_deref().unwrap_or("sum").parse()?,
            positions: match a.positions.as_deref() {
                Some(p) => p.parse()?,
                None => Positions::Rebased,
            },
            kv_type: match a.kv_type.as_deref() {
                Some(t) => t.parse()?,
                None => cfg.kv_type.unwrap_or_default(),
            },
            profile: match &a.profile {
                Some(p) => p.parse()?,
                None => cfg.profile.unwrap_or_default(),
            },
            ..CacheConfig::default()
        };
        // Errors name where the value came from.
        let config_file = config_dir.join("config.toml");
        let origin = |name: &str| -> String {
            if let Some((path, _)) = &resume {
                let from_chat = match name {
                    "budget" => a.budget.is_none(),
                    "window" => a.window.is_none() && knobs.window.is_some(),
                    "recent" => a.recent.is_none() && knobs.recent.is_some(),
                    "history" => a.history.is_none() && knobs.history.is_some(),
                    "half-life" => a.half_life.is_none() && knobs.half_life.is_some(),
                    _ => false,
                };
                if from_chat {
                    return format!(
                        "the saved chat's {} in {} (give --{name} to resume it under another)",
                        name.replace('-', "_"),
                        path.display()
                    );
                }
            }
            let (flag, file, preset) = match name {
                "budget" => (
                    a.budget.is_some(),
                    cfg.budget.is_some(),
                    pc.budget.is_some(),
                ),
                "window" => (
                    a.window.is_some(),
                    cfg.window.is_some(),
                    pc.window.is_some(),
                ),
                "recent" => (a.recent.is_some(), cfg.recent.is_some(), false),
                "history" => (a.history.is_some(), cfg.history.is_some(), false),
                "half-life" => (a.half_life.is_some(), cfg.half_life.is_some(), false),
                _ => (true, false, false),
            };
            if flag {
                format!("--{name}")
            } else if file {
                // The file spells `half-life` as `half_life`.
                format!("{} in {}", name.replace('-', "_"), config_file.display())
            } else if preset {
                format!("the model preset's {name}")
            } else {
                format!("the default {name}")
            }
        };
        cache.validate_with(&origin)?;
        Ok(cache)
    };
    // The compare cache: the main one's settings under another policy.
    let compare_cache = |main: &CacheConfig| -> Result<Option<CacheConfig>> {
        let Some(p) = &a.compare else { return Ok(None) };
        let cfg = CacheConfig {
            policy: p.parse().map_err(|e| anyhow::anyhow!("--compare: {e}"))?,
            budget: a.compare_budget.unwrap_or(main.budget),
            window: a.compare_window.or(main.window),
            ..main.clone()
        };
        cfg.validate_with(&|name| format!("--compare-{name}"))?;
        Ok(Some(cfg))
    };
    // Bad flags fail before the model loads.
    compare_cache(&make_cache(&morphkv::models::PresetCache::default())?)?;
    let params = sampling_params(&a.sampling, rand::random());
    params.validate()?;
    if a.max_tokens == 0 {
        bail!("invalid value for --max-tokens: 0 (give a positive number)");
    }
    let mut model_args = a.model;
    if model_args.model.is_none() {
        model_args.model = cfg.model.clone();
    }
    // Checked as the file was read; a device the build cannot open names the file.
    let device_from_file = model_args.device.is_none() && cfg.device.is_some();
    model_args.weights = model_args.weights.or(cfg.weights.clone());
    model_args.device = model_args.device.or(cfg.device.clone());
    let Loaded {
        model,
        tokenizer,
        path,
        preset,
    } = load(&model_args).map_err(|e| match e.downcast_ref::<morphkv::Error>() {
        Some(morphkv::Error::InvalidArg { flag, reason })
            if device_from_file && flag == "--device" =>
        {
            anyhow::anyhow!(
                "invalid value for device in {}: {reason}",
                config_dir.join("config.toml").display()
            )
        }
        _ => e,
    })?;
    let cache = make_cache(&preset.as_ref().map(|p| p.cache.clone()).unwrap_or_default())?;
    // Where the KV type came from, for an error that says what to change.
    let kv_origin = if a.kv_type.is_some() {
        "--kv-type".to_string()
    } else if cfg.kv_type.is_some() {
        format!("kv_type in {}", config_dir.join("config.toml").display())
    } else {
        "the default kv_type".to_string()
    };
    cache
        .kv_type
        .check_from(&kv_origin, model.config().head_dim, model.device())?;
    let compare = compare_cache(&cache)?;
    let template = ChatTemplate::for_model(
        &tokenizer,
        a.chat_template
            .as_deref()
            .or(preset.as_ref().and_then(|p| p.template.as_deref())),
        Some(&path),
    )?;
    // A preset by its name, a file by its name without folders.
    let display = match &model_args.model {
        Some(m) if !std::path::Path::new(m).exists() => m.clone(),
        _ => path
            .file_stem()
            .map_or("model".into(), |f| f.to_string_lossy().into_owned()),
    };
    let settings = Settings {
        cache,
        sampling: params,
        max_tokens: a.max_tokens,
    };
    // The engine owns the model on its own thread; the chat sees only its events.
    let (sink, events) = tui::event_channel();
    let engine = Engine::spawn(
        model,
        tokenizer,
        template,
        display.clone(),
        settings.clone(),
        sink,
    )?;
    if let Some(cfg) = compare {
        engine.send(morphkv::engine::Command::Compare(Some(cfg)));
    }
    let ended = tui::run(
        engine,
        events,
        &settings,
        ChatOptions {
            theme,
            chats_dir: chats,
            log: data_dir.join("morphkv.log"),
            model_name: display,
            resume: resume.map(|(_, c)| c),
            system: a.system.or(cfg.system_prompt),
            keymap,
        },
    )?;
    if let tui::Ended::Signal(sig) = ended {
        // The terminal is restored and the chat saved: exit as the signal's default would
        // have, so a shell or service manager sees 128 + N (130 for SIGINT, 143 for SIGTERM).
        std::process::exit(128 + sig);
    }
    Ok(())
}

/// `morphkv replay TRACE.jsonl`: the trace in the chat's panels, on a replay thread instead
/// of a model's engine.
pub fn replay(a: ReplayArgs) -> Result<()> {
    let (config_dir, data_dir) = dirs()?;
    let cfg = tui::config::read(&config_dir).map_err(anyhow::Error::msg)?;
    let replay = morphkv::engine::replay::Replay::open(&a.trace)?;
    let (theme, keymap) = look(a.theme.as_deref(), &cfg, &config_dir)?;
    let settings = replay.settings()?;
    let name = replay.name().to_string();
    let (sink, events) = tui::event_channel();
    let engine = replay.spawn(sink)?;
    let ended = tui::run(
        engine,
        events,
        &settings,
        ChatOptions {
            theme,
            // Nothing is saved: a replay has no messages.
            chats_dir: data_dir.join("chats"),
            log: data_dir.join("morphkv.log"),
            model_name: name,
            resume: None,
            system: None,
            keymap,
        },
    )?;
    if let tui::Ended::Signal(sig) = ended {
        std::process::exit(128 + sig);
    }
    Ok(())
}
