//! Keys and mouse to [`Action`]s, in pure functions.

use ratatui::crossterm::event::{
    KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseButton, MouseEvent, MouseEventKind,
};

use super::app::{Action, Msg};
use super::hits::HitMap;

/// The keys, for the help overlay and the footer: (keys, what they do).
pub const KEYS: [(&str, &str); 21] = [
    ("Enter", "send the message or /command"),
    ("Alt+Enter/Ctrl+J", "new line in the message"),
    ("Esc", "stop the answer; close help"),
    (
        "Tab",
        "next panel (retention, cache, attention, inspector, none)",
    ),
    ("PgUp/PgDn, wheel", "scroll the chat"),
    ("Ctrl+R", "regenerate the last answer"),
    ("Ctrl+E", "edit and resend your last message"),
    ("Ctrl+N", "new chat"),
    ("Ctrl+P", "step mode: pause / resume generation"),
    ("Ctrl+T", "step mode: one more token"),
    ("Alt+←/→", "previous / next layer"),
    ("Alt+↑/↓", "next / previous KV head"),
    ("Ctrl+←/→", "inspect the previous / next token"),
    ("Ctrl+↑/↓, click", "inspect 10 back / on; a clicked token"),
    (
        "[ ] { }, Esc",
        "time travel: a step back / on, { } ten; Esc live",
    ),
    ("← → Home End", "move in the message"),
    ("Backspace/Del", "delete"),
    ("?, F1", "this help (? on an empty message)"),
    ("Ctrl+C, Ctrl+D", "quit"),
    ("/help", "slash commands"),
    ("/bye", "quit"),
];

/// The action a key press stands for (`input_empty`: `?` opens help only then).
pub fn key(k: KeyEvent, input_empty: bool) -> Option<Action> {
    if k.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
    let alt = k.modifiers.contains(KeyModifiers::ALT);
    Some(match k.code {
        KeyCode::Char('c') if ctrl => Action::Quit,
        KeyCode::Char('d') if ctrl && input_empty => Action::Quit,
        KeyCode::Char('j') if ctrl => Action::Newline,
        KeyCode::Char('r') if ctrl => Action::Regenerate,
        KeyCode::Char('e') if ctrl => Action::EditLast,
        KeyCode::Char('n') if ctrl => Action::NewChat,
        KeyCode::Char('p') if ctrl => Action::TogglePause,
        KeyCode::Char('t') if ctrl => Action::StepOne,
        KeyCode::Char('?') if input_empty => Action::Help,
        KeyCode::Char('[') if input_empty => Action::Travel(-1),
        KeyCode::Char(']') if input_empty => Action::Travel(1),
        KeyCode::Char('{') if input_empty => Action::Travel(-10),
        KeyCode::Char('}') if input_empty => Action::Travel(10),
        KeyCode::Char(_) if ctrl => return None,
        KeyCode::Char(c) => Action::Insert(c),
        KeyCode::Enter if alt || k.modifiers.contains(KeyModifiers::SHIFT) => Action::Newline,
        KeyCode::Enter => Action::Submit,
        KeyCode::Esc => Action::Stop,
        KeyCode::Tab => Action::CyclePanel,
        KeyCode::F(1) => Action::Help,
        KeyCode::Backspace => Action::Backspace,
        KeyCode::Delete => Action::Delete,
        KeyCode::Left if ctrl => Action::Inspect(-1),
        KeyCode::Right if ctrl => Action::Inspect(1),
        KeyCode::Up if ctrl => Action::Inspect(-10),
        KeyCode::Down if ctrl => Action::Inspect(10),
        KeyCode::Left if alt => Action::FocusPrev { head: false },
        KeyCode::Right if alt => Action::FocusNext { head: false },
        KeyCode::Up if alt => Action::FocusNext { head: true },
        KeyCode::Down if alt => Action::FocusPrev { head: true },
        KeyCode::Left => Action::Left,
        KeyCode::Right => Action::Right,
        KeyCode::Home => Action::Home,
        KeyCode::End => Action::End,
        KeyCode::Up => Action::ScrollUp(1),
        KeyCode::Down => Action::ScrollDown(1),
        KeyCode::PageUp => Action::ScrollUp(10),
        KeyCode::PageDown => Action::ScrollDown(10),
        _ => return None,
    })
}

/// Actions a user can bind in `config.toml`'s `[keys]` table: (name, action, what it does).
pub fn bindable() -> Vec<(&'static str, Action, &'static str)> {
    vec![
        ("send", Action::Submit, "send the message or /command"),
        ("newline", Action::Newline, "new line in the message"),
        ("stop", Action::Stop, "stop the answer; close help"),
        ("next_panel", Action::CyclePanel, "next panel"),
        ("help", Action::Help, "this help"),
        (
            "regenerate",
            Action::Regenerate,
            "regenerate the last answer",
        ),
        (
            "edit_last",
            Action::EditLast,
            "edit and resend your last message",
        ),
        ("new_chat", Action::NewChat, "new chat"),
        ("pause", Action::TogglePause, "step mode: pause / resume"),
        ("step", Action::StepOne, "step mode: one more token"),
        ("scroll_up", Action::ScrollUp(10), "scroll the chat up"),
        (
            "scroll_down",
            Action::ScrollDown(10),
            "scroll the chat down",
        ),
        (
            "layer_prev",
            Action::FocusPrev { head: false },
            "previous layer",
        ),
        (
            "layer_next",
            Action::FocusNext { head: false },
            "next layer",
        ),
        (
            "head_prev",
            Action::FocusPrev { head: true },
            "previous KV head",
        ),
        (
            "head_next",
            Action::FocusNext { head: true },
            "next KV head",
        ),
        (
            "inspect_prev",
            Action::Inspect(-1),
            "inspect the previous token",
        ),
        ("inspect_next", Action::Inspect(1), "inspect the next token"),
        (
            "travel_back",
            Action::Travel(-1),
            "time travel: a step back",
        ),
        ("travel_on", Action::Travel(1), "time travel: a step on"),
        ("live", Action::Live, "time travel: back to live"),
        ("quit", Action::Quit, "quit"),
    ]
}

/// Key bindings from the config file, looked up before the built-in ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyMap {
    bindings: Vec<(KeyCode, KeyModifiers, Action)>,
    /// (key as written, what it does), for the help overlay.
    pub described: Vec<(String, String)>,
}

/// Parses `ctrl+g`, `alt+enter`, `f2`, `x`, `shift+tab`, … (case-insensitive).
pub fn parse_key(spec: &str) -> Option<(KeyCode, KeyModifiers)> {
    let lower = spec.trim().to_lowercase();
    let mut mods = KeyModifiers::NONE;
    let mut rest = lower.as_str();
    loop {
        if let Some(r) = rest.strip_prefix("ctrl+") {
            mods |= KeyModifiers::CONTROL;
            rest = r;
        } else if let Some(r) = rest.strip_prefix("alt+") {
            mods |= KeyModifiers::ALT;
            rest = r;
        } else if let Some(r) = rest.strip_prefix("shift+") {
            mods |= KeyModifiers::SHIFT;
            rest = r;
        } else {
            break;
        }
    }
    let code = match rest {
        "enter" | "return" => KeyCode::Enter,
        "tab" => KeyCode::Tab,
        "esc" | "escape" => KeyCode::Esc,
        "backspace" => KeyCode::Backspace,
        "delete" | "del" => KeyCode::Delete,
        "up" => KeyCode::Up,
        "down" => KeyCode::Down,
        "left" => KeyCode::Left,
        "right" => KeyCode::Right,
        "home" => KeyCode::Home,
        "end" => KeyCode::End,
        "pageup" | "pgup" => KeyCode::PageUp,
        "pagedown" | "pgdn" => KeyCode::PageDown,
        "space" => KeyCode::Char(' '),
        f if f.len() > 1 && f.starts_with('f') => {
            let n: u8 = f[1..].parse().ok()?;
            if !(1..=12).contains(&n) {
                return None;
            }
            KeyCode::F(n)
        }
        c if c.chars().count() == 1 => KeyCode::Char(c.chars().next()?),
        _ => return None,
    };
    Some((code, mods))
}

impl KeyMap {
    /// Builds the map from `[keys]` (action name → key); errors name the entry at fault.
    pub fn parse<'a>(
        entries: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<Self, String> {
        let actions = bindable();
        let mut map = Self::default();
        for (name, spec) in entries {
            let Some((_, action, what)) = actions.iter().find(|(n, _, _)| n == name) else {
                let names: Vec<&str> = actions.iter().map(|(n, _, _)| *n).collect();
                return Err(format!(
                    "[keys] {name}: not an action (actions: {})",
                    names.join(", ")
                ));
            };
            let Some((code, mods)) = parse_key(spec) else {
                return Err(format!(
                    "[keys] {name} = \"{spec}\": not a key (write e.g. \"ctrl+g\", \"alt+enter\", \"f2\")"
                ));
            };
            if let KeyCode::Char(_) = code {
                if mods.is_empty() || mods == KeyModifiers::SHIFT {
                    return Err(format!(
                        "[keys] {name} = \"{spec}\": a plain character is typed into the message; add ctrl+ or alt+"
                    ));
                }
            }
            map.bindings.push((code, mods, action.clone()));
            map.described.push((spec.clone(), what.to_string()));
        }
        Ok(map)
    }

    /// The action of a key press: a configured binding, else the built-in one.
    pub fn key(&self, k: KeyEvent, input_empty: bool) -> Option<Action> {
        if k.kind == KeyEventKind::Release {
            return None;
        }
        let (code, mods) = match k.code {
            // Terminals report shifted letters as upper case.
            KeyCode::Char(c) => (
                KeyCode::Char(c.to_ascii_lowercase()),
                k.modifiers - KeyModifiers::SHIFT,
            ),
            other => (other, k.modifiers),
        };
        self.bindings
            .iter()
            .find(|(c, m, _)| {
                *c == code
                    && (*m == mods
                        || (matches!(code, KeyCode::Char(_)) && *m - KeyModifiers::SHIFT == mods))
            })
            .map(|(_, _, a)| a.clone())
            .or_else(|| key(k, input_empty))
    }
}

/// The message of a mouse event: the wheel scrolls; a left click means what the frame on
/// screen (its hit map) says is under it.
pub fn mouse(m: MouseEvent, hits: &HitMap) -> Option<Msg> {
    match m.kind {
        MouseEventKind::ScrollUp => Some(Msg::Action(Action::ScrollUp(3))),
        MouseEventKind::ScrollDown => Some(Msg::Action(Action::ScrollDown(3))),
        MouseEventKind::Down(MouseButton::Left) => Some(hits.click(m.column, m.row)),
        MouseEventKind::Drag(MouseButton::Left) => hits.drag(m.column, m.row),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(code: KeyCode, m: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, m)
    }

    #[test]
    fn configured_bindings_come_first_and_bad_ones_are_named() {
        let entries = [
            ("regenerate".to_string(), "ctrl+g".to_string()),
            ("quit".to_string(), "F10".to_string()),
            ("inspect_next".to_string(), "alt+n".to_string()),
        ];
        let map = KeyMap::parse(entries.iter().map(|(a, b)| (a, b))).unwrap();
        let none = KeyModifiers::NONE;
        assert_eq!(
            map.key(k(KeyCode::Char('g'), KeyModifiers::CONTROL), false),
            Some(Action::Regenerate)
        );
        assert_eq!(map.key(k(KeyCode::F(10), none), false), Some(Action::Quit));
        assert_eq!(
            map.key(
                k(KeyCode::Char('N'), KeyModifiers::ALT | KeyModifiers::SHIFT),
                false
            ),
            Some(Action::Inspect(1))
        );
        // Built-in keys still work.
        assert_eq!(
            map.key(k(KeyCode::Char('r'), KeyModifiers::CONTROL), false),
            Some(Action::Regenerate)
        );
        assert_eq!(map.described.len(), 3);
        let bad = |a: &str, b: &str| {
            let e = [(a.to_string(), b.to_string())];
            KeyMap::parse(e.iter().map(|(a, b)| (a, b))).unwrap_err()
        };
        assert!(bad("regenrate", "ctrl+g").contains("not an action"));
        assert!(bad("quit", "ctrl+").contains("not a key"));
        assert!(bad("quit", "f13").contains("not a key"));
        assert!(bad("quit", "q").contains("typed into the message"));
    }

    #[test]
    fn keys_map_to_actions() {
        let none = KeyModifiers::NONE;
        assert_eq!(key(k(KeyCode::Enter, none), true), Some(Action::Submit));
        assert_eq!(
            key(k(KeyCode::Enter, KeyModifiers::ALT), true),
            Some(Action::Newline)
        );
        assert_eq!(
            key(k(KeyCode::Char('c'), KeyModifiers::CONTROL), false),
            Some(Action::Quit)
        );
        assert_eq!(
            key(k(KeyCode::Char('d'), KeyModifiers::CONTROL), false),
            None
        );
        assert_eq!(key(k(KeyCode::Char('?'), none), true), Some(Action::Help));
        assert_eq!(
            key(k(KeyCode::Char('?'), none), false),
            Some(Action::Insert('?'))
        );
        assert_eq!(key(k(KeyCode::Esc, none), true), Some(Action::Stop));
        assert_eq!(
            key(k(KeyCode::Right, KeyModifiers::ALT), true),
            Some(Action::FocusNext { head: false })
        );
        assert_eq!(
            key(k(KeyCode::Char('x'), KeyModifiers::CONTROL), true),
            None
        );
        // Time travel on an empty message; typed into one that is not.
        assert_eq!(
            key(k(KeyCode::Char('['), none), true),
            Some(Action::Travel(-1))
        );
        assert_eq!(
            key(k(KeyCode::Char('}'), none), true),
            Some(Action::Travel(10))
        );
        assert_eq!(
            key(k(KeyCode::Char('['), none), false),
            Some(Action::Insert('['))
        );
    }
}
