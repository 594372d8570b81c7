//! Saved chats: one JSON file per chat in the data directory's `chats/`, rewritten atomically
//! (a temporary file in the same folder, then a rename) after every finished message, so a
//! crash or SIGKILL loses at most the answer being generated.
//!
//! Format (version 1):
//! ```json
//! { "version": 1, "id": "20261129-031500-1234", "title": "first words of the chat",
//!   "created": 1796354100, "updated": 1796354160, "model": "smollm2-135m-instruct",
//!   "policy": "morphkv", "budget": 600, "window": 30,
//!   "messages": [ { "role": "user", "content": "..." }, { "role": "assistant", "content": "..." } ] }
//! ```

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::chat::{Message, Role};

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

/// Writes `chat` to `dir/<id>.json` atomically.
pub fn save(dir: &Path, chat: &SavedChat) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{}.json", chat.id));
    let tmp = dir.join(format!(".{}.json.tmp", chat.id));
    let json = serde_json::to_vec_pretty(chat).map_err(std::io::Error::other)?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Reads one saved chat.
pub fn load(path: &Path) -> Result<SavedChat, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not a saved chat: {e}", path.display()))
}

/// Saved chats in `dir`, newest first (unreadable files are skipped).
pub fn list(dir: &Path) -> Vec<(PathBuf, SavedChat)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut chats: Vec<(PathBuf, SavedChat)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| load(&p).ok().map(|c| (p, c)))
        .collect();
    chats.sort_by(|a, b| b.1.updated.cmp(&a.1.updated).then(b.1.id.cmp(&a.1.id)));
    chats
}

impl SavedChat {
    /// A chat record for `messages` under `id`.
    pub fn new(
        id: &str,
        created: u64,
        model: &str,
        cache: &crate::cache::CacheConfig,
        messages: &[Message],
    ) -> Self {
        Self {
            version: 1,
            id: id.to_string(),
            title: title(messages),
            created,
            updated: now(),
            model: model.to_string(),
            policy: cache.policy.name().to_string(),
            budget: cache.budget,
            window: cache.window,
            messages: messages.to_vec(),
        }
    }

    /// Seconds since the epoch, now.
    pub fn now() -> u64 {
        now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        std::fs::write(dir.join("junk.json"), "{").unwrap();
        assert_eq!(list(&dir).len(), 1);
        assert!(load(&dir.join("junk.json"))
            .unwrap_err()
            .contains("not a saved chat"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ids_start_with_a_plausible_date() {
        let id = new_id();
        assert!(id.starts_with("20"), "{id}");
        assert_eq!(id.as_bytes()[8], b'-');
    }
}
