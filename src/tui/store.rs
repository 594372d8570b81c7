//! Saved chats: one JSON file per chat in the data directory's `chats/`, rewritten atomically
//! (a temporary file in the same folder, then a rename) after every finished message, so a
//! crash or SIGKILL loses at most the answer being generated.
//!
//! Format (version 1):
//! ```json
//! { "version": 1, "id": "20261129-031500-1234", "title": "first words of the chat",
//!   "created": 1796354100, "updated": 1796354160, "model": "smollm2-135m-instruct",
//!   "policy": "morphkv", "budget": 600, "window": 4, "recent": 75, "history": 100,
//!   "half_life": 512,
//!   "messages": [ { "role": "user", "content": "..." }, { "role": "assistant", "content": "..." } ] }
//! ```
//! The cache settings say what the chat ran under, and a resumed chat runs under them again
//! unless flags say otherwise (`morphkv chat --resume ID --policy h2o`); `recent` (the per cent of the budget kept recent) is absent in older files: 0;
//! `history` and `half_life` (MorphKV's fading history) too: 0, what those chats ran under.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cache::{CacheConfig, PolicyKind};
use crate::chat::{Message, Role};
use crate::error::{Error, Result};

/// One saved chat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedChat {
    pub version: u32,
    pub id: String,
    pub title: String,
    pub created: u64,
    pub updated: u64,
    pub model: String,
    pub policy: String,
    pub budget: usize,
    pub window: usize,
    #[serde(default)]
    pub recent: usize,
    #[serde(default)]
    pub history: usize,
    #[serde(default)]
    pub half_life: usize,
    pub messages: Vec<Message>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A new chat id: the UTC time and the process id (sortable, unique enough per machine).
pub fn new_id() -> String {
    let t = now();
    let (days, secs) = (t / 86_400, t % 86_400);
    let (y, m, d) = crate::chat::civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        std::process::id()
    )
}

/// The title of a chat: the first user message's first words.
pub fn title(messages: &[Message]) -> String {
    let first = messages
        .iter()
        .find(|m| m.role == Role::User)
        .map_or("(empty chat)", |m| m.content.as_str());
    let mut t: String = first.split_whitespace().collect::<Vec<_>>().join(" ");
    if t.chars().count() > 60 {
        t = t.chars().take(57).collect::<String>() + "...";
    }
    t
}

/// Writes `chat` to `dir/<id>.json` atomically. An error names the folder or file that
/// could not be written and the OS's reason.
pub fn save(dir: &Path, chat: &SavedChat) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(format!("{}.json", chat.id));
    let tmp = dir.join(format!(".{}.json.tmp", chat.id));
    let json = serde_json::to_vec_pretty(chat).map_err(|e| Error::io(&path, e.into()))?;
    let written = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// The chat format version this build reads and writes.
pub const VERSION: u32 = 1;

/// Reads one saved chat: a file (not a folder or a pipe) holding version-1 JSON whose id is
/// its file name. The error names the file and says what is wrong with it.
pub fn load(path: &Path) -> std::result::Result<SavedChat, String> {
    let bad = |why: String| format!("{}: {why}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if meta.is_dir() {
        return Err(bad("a folder, not a saved chat".into()));
    }
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    parse(&bytes, path)
}

/// A saved chat from the bytes of the file at `path` (named in errors; its stem must be the
/// chat's id).
pub fn parse(bytes: &[u8], path: &Path) -> std::result::Result<SavedChat, String> {
    let bad = |why: String| format!("{}: {why}", path.display());
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("empty file, not a saved chat".into()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
    // The version first: a newer format may not parse as this one at all.
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not a saved chat: {e}")))?;
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => {
            return Err(bad(format!(
                "format version {v}, but this morphkv reads version {VERSION} (a newer morphkv wrote it?)"
            )))
        }
        None => return Err(bad("not a saved chat: no format version".into())),
    }
    let chat: SavedChat =
        serde_json::from_value(value).map_err(|e| bad(format!("not a saved chat: {e}")))?;
    let stem = path.file_stem().map(|s| s.to_string_lossy());
    if stem.as_deref() != Some(chat.id.as_str()) {
        return Err(bad(format!(
            "its id `{}` is not its file name (renaming or saving it would write another file)",
            chat.id
        )));
    }
    Ok(chat)
}

/// One `*.json` entry in the chats folder.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A chat this build reads.
    Chat { path: PathBuf, chat: SavedChat },
    /// Something that is not (truncated, garbage, empty, a folder, an unknown version): shown
    /// as damaged, never modified, never removed unless asked for by its id.
    Damaged {
        path: PathBuf,
        /// The file name without `.json`.
        id: String,
        /// What is wrong, naming the file.
        reason: String,
        /// Last modification, seconds since the epoch (0 when unknown).
        modified: u64,
    },
}

impl Entry {
    /// The chat's id (a damaged one's file name without `.json`).
    pub fn id(&self) -> &str {
        match self {
            Self::Chat { chat, .. } => &chat.id,
            Self::Damaged { id, .. } => id,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        match self {
            Self::Chat { path, .. } | Self::Damaged { path, .. } => path,
        }
    }

    /// When it was last written: a chat's own `updated`, else the file's time.
    pub fn when(&self) -> u64 {
        match self {
            Self::Chat { chat, .. } => chat.updated,
            Self::Damaged { modified, .. } => *modified,
        }
    }
}

/// Every `*.json` entry in `dir`, newest first, damaged ones included. A missing folder has
/// none; a folder that cannot be read is an error naming it.
pub fn scan(dir: &Path) -> Result<Vec<Entry>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let path = e.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        out.push(match load(&path) {
            Ok(chat) => Entry::Chat { path, chat },
            Err(reason) => Entry::Damaged {
                id: path
                    .file_stem()
                    .map_or(String::new(), |s| s.to_string_lossy().into_owned()),
                modified: std::fs::symlink_metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs()),
                path,
                reason,
            },
        });
    }
    out.sort_by(|a, b| b.when().cmp(&a.when()).then(b.id().cmp(a.id())));
    Ok(out)
}

/// The entry `id` names (`latest`: the newest, damaged or not), if any.
pub fn find(dir: &Path, id: &str) -> Result<Option<Entry>> {
    let all = scan(dir)?;
    Ok(if id == "latest" {
        all.into_iter().next()
    } else {
        all.into_iter().find(|e| e.id() == id)
    })
}

/// The saved chats in `dir` that this build reads, newest first (damaged ones are left out:
/// [`scan`] has them).
pub fn list(dir: &Path) -> Vec<(PathBuf, SavedChat)> {
    scan(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| match e {
            Entry::Chat { path, chat } => Some((path, chat)),
            Entry::Damaged { .. } => None,
        })
        .collect()
}

impl SavedChat {
    /// A chat record for `messages` under `id`.
    pub fn new(
        id: &str,
        created: u64,
        model: &str,
        cache: &CacheConfig,
        messages: &[Message],
    ) -> Self {
        Self {
            version: VERSION,
            id: id.to_string(),
            title: title(messages),
            created,
            updated: now(),
            model: model.to_string(),
            policy: cache.policy.name().to_string(),
            budget: cache.budget,
            window: cache.window(),
            recent: cache.recent(),
            history: cache.history,
            half_life: cache.half_life,
            messages: messages.to_vec(),
        }
    }

    /// Seconds since the epoch, now.
    pub fn now() -> u64 {
        now()
    }

    /// What this chat's record says of `policy`'s knobs: where the chat ran `policy`, its
    /// window, recent share, history and half-life, the window and share only where they
    /// differ from the policy's defaults; `None` otherwise, so that they follow a later
    /// change of policy as unset settings do.
    pub fn knobs_for(&self, policy: PolicyKind) -> Knobs {
        if self.policy != policy.name() {
            return Knobs::default();
        }
        let e = policy.entry();
        Knobs {
            window: (self.window != e.default_window).then_some(self.window),
            recent: (self.recent != e.recent).then_some(self.recent),
            history: Some(self.history),
            half_life: Some(self.half_life),
        }
    }

    /// The policy this chat ran, if this build knows it.
    pub fn policy_kind(&self) -> Result<PolicyKind> {
        self.policy.parse().map_err(|_| {
            Error::arg(
                "the saved chat's policy",
                format!("`{}` is not a policy this build knows", self.policy),
            )
        })
    }

    /// The cache settings this chat ran under, over `base` for what it does not record (KV
    /// type, profile storage, positions, ...); checked, an error naming the chat's setting.
    pub fn cache_over(&self, base: &CacheConfig) -> Result<CacheConfig> {
        let policy = self.policy_kind()?;
        let k = self.knobs_for(policy);
        let cache = CacheConfig {
            policy,
            budget: self.budget,
            window: k.window,
            recent: k.recent,
            history: k.history.unwrap_or(crate::cache::DEFAULT_HISTORY),
            half_life: k.half_life.unwrap_or(crate::cache::DEFAULT_HALF_LIFE),
            ..base.clone()
        };
        cache.validate_with(&|name| format!("the saved chat's {}", name.replace('-', "_")))?;
        Ok(cache)
    }
}

/// A saved chat's knobs for one policy (see [`SavedChat::knobs_for`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Knobs {
    pub window: Option<usize>,
    pub recent: Option<usize>,
    pub history: Option<usize>,
    pub half_life: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chat's window and recent share count for the policy it ran, and only where they
    /// differ from that policy's defaults: under another policy, or at the defaults, they
    /// follow the policy.
    #[test]
    fn a_chats_knobs_count_for_its_own_policy_only() {
        let at = |window, recent| {
            let cache = CacheConfig {
                window,
                recent,
                ..CacheConfig::default()
            };
            SavedChat::new("x", 1, "m", &cache, &[])
        };
        let defaults = at(None, None);
        assert_eq!((defaults.window, defaults.recent), (4, 75));
        let k = defaults.knobs_for(PolicyKind::MorphKv);
        assert_eq!((k.window, k.recent, k.history), (None, None, Some(100)));
        assert_eq!(defaults.knobs_for(PolicyKind::H2o), Knobs::default());
        let paper = at(Some(30), Some(0));
        let k = paper.knobs_for(PolicyKind::MorphKv);
        assert_eq!((k.window, k.recent), (Some(30), Some(0)));
        // Over other settings: its own, the rest kept; an unknown policy is named.
        let base = CacheConfig {
            kv_type: crate::cache::KvType::F32,
            ..CacheConfig::default()
        };
        let c = paper.cache_over(&base).unwrap();
        assert_eq!((c.window(), c.recent(), c.kv_type), (30, 0, base.kv_type));
        let mut odd = paper.clone();
        odd.policy = "lru".into();
        let e = odd.cache_over(&base).unwrap_err().to_string();
        assert!(
            e.contains("saved chat's policy") && e.contains("lru"),
            "{e}"
        );
    }

    #[test]
    fn save_is_atomic_and_round_trips() {
        let dir = std::env::temp_dir().join(format!("morphkv-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let msgs = vec![
            Message::user("Hello there, how are you?"),
            Message::assistant("Fine."),
        ];
        let chat = SavedChat::new(
            &new_id(),
            1,
            "smol",
            &crate::cache::CacheConfig::default(),
            &msgs,
        );
        let path = save(&dir, &chat).unwrap();
        assert_eq!(load(&path).unwrap(), chat);
        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(list(&dir).len(), 1);
        assert_eq!(chat.title, "Hello there, how are you?");
        assert_eq!((chat.policy.as_str(), chat.recent), ("morphkv", 75));
        assert_eq!((chat.history, chat.half_life), (100, 512));
        // A file from before the recent share and the history reads as 0 for them.
        let mut old = serde_json::to_value(&chat).unwrap();
        for key in ["recent", "history", "half_life"] {
            old.as_object_mut().unwrap().remove(key);
        }
        let older = parse(old.to_string().as_bytes(), &path).unwrap();
        assert_eq!((older.recent, older.history, older.half_life), (0, 0, 0));
        std::fs::write(dir.join("junk.json"), "{").unwrap();
        assert_eq!(list(&dir).len(), 1);
        assert!(load(&dir.join("junk.json"))
            .unwrap_err()
            .contains("not a saved chat"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_files_are_listed_and_latest_does_not_skip_them() {
        let dir =
            std::env::temp_dir().join(format!("morphkv-store-damaged-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut chat = SavedChat::new(
            "20200101-000000-1",
            1,
            "smol",
            &crate::cache::CacheConfig::default(),
            &[Message::user("hi")],
        );
        chat.updated = 10;
        save(&dir, &chat).unwrap();
        assert!(matches!(
            find(&dir, "latest").unwrap(),
            Some(Entry::Chat { .. })
        ));
        for (name, bytes, needle) in [
            ("a.json", &b""[..], "empty"),
            ("b.json", b"{\"version\": 1, \"id\"", "not a saved chat"),
            ("c.json", b"\xff\xfe", "UTF-8"),
            ("d.json", b"{\"version\": 7}", "version 7"),
        ] {
            std::fs::write(dir.join(name), bytes).unwrap();
            let latest = find(&dir, "latest").unwrap().unwrap();
            match &latest {
                Entry::Damaged { reason, id, .. } => {
                    assert!(reason.contains(name) && reason.contains(needle), "{reason}");
                    assert_eq!(id, &name[..1]);
                }
                Entry::Chat { .. } => panic!("{name}: latest skipped the damaged file"),
            }
            assert_eq!(std::fs::read(dir.join(name)).unwrap(), bytes);
            std::fs::remove_file(dir.join(name)).unwrap();
        }
        // A folder named like a chat, and a chat whose id is not its file name.
        std::fs::create_dir_all(dir.join("e.json")).unwrap();
        let mut other = chat.clone();
        other.id = "someone-else".into();
        std::fs::write(dir.join("f.json"), serde_json::to_vec(&other).unwrap()).unwrap();
        let all = scan(&dir).unwrap();
        assert_eq!(all.len(), 3);
        let reason = |id: &str| match all.iter().find(|e| e.id() == id) {
            Some(Entry::Damaged { reason, .. }) => reason.clone(),
            other => panic!("{id}: {other:?}"),
        };
        assert!(reason("e").contains("folder"));
        assert!(reason("f").contains("someone-else"));
        assert_eq!(list(&dir).len(), 1);
        assert!(find(&dir, "nope").unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn save_errors_name_the_folder() {
        let base =
            std::env::temp_dir().join(format!("morphkv-store-blocked-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let dir = base.join("chats");
        std::fs::write(&dir, b"a file where the folder goes").unwrap();
        let chat = SavedChat::new("x", 1, "m", &crate::cache::CacheConfig::default(), &[]);
        let e = save(&dir, &chat).unwrap_err().to_string();
        assert!(e.contains(&dir.display().to_string()), "{e}");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn ids_start_with_a_plausible_date() {
        let id = new_id();
        assert!(id.starts_with("20"), "{id}");
        assert_eq!(id.as_bytes()[8], b'-');
    }
}
