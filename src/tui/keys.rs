//! Keys and mouse to [`Action`]s, in one pure function.

use ratatui::crossterm::event::{
    KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEvent, MouseEventKind,
};

use super::app::Action;

/// The keys, for the help overlay and the footer: (keys, what they do).
pub const KEYS: [(&str, &str); 20] = [
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

/// The action of a mouse event: the wheel scrolls, a left click selects.
pub fn mouse(m: MouseEvent) -> Option<Action> {
    match m.kind {
        MouseEventKind::ScrollUp => Some(Action::ScrollUp(3)),
        MouseEventKind::ScrollDown => Some(Action::ScrollDown(3)),
        MouseEventKind::Down(ratatui::crossterm::event::MouseButton::Left) => Some(Action::Click {
            x: m.column,
            y: m.row,
        }),
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
    }
}
