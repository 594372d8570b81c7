//! Drawing: reads the [`App`], never changes it, and says in a [`HitMap`] what a click on
//! each part of the frame means. The panels are in `view/panels.rs`, wrapping and Markdown in
//! `view/text.rs`.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Modifier;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph};
use ratatui::Frame;
use unicode_width::UnicodeWidthStr;

use super::app::{App, Busy, Panel, SLASH_HELP};
use super::hits::HitMap;
use super::keys::KEYS;
use super::theme::Theme;
use crate::chat::Role;

mod compare;
mod panels;
mod text;
mod travel;

pub use text::{markdown, wrap, wrap_tagged, Hit};

/// The smallest terminal the chat draws in.
pub const MIN_SIZE: (u16, u16) = (60, 16);

/// Draws the whole screen (for screenshots and tests that click nothing).
pub fn draw(f: &mut Frame, app: &App, theme: &Theme) {
    render(f, app, theme);
}

/// Draws the whole screen; returns what a click on each part of it means.
pub fn render(f: &mut Frame, app: &App, theme: &Theme) -> HitMap {
    let mut hits = HitMap::default();
    let area = f.area();
    f.render_widget(Block::new().style(theme.base), area);
    if area.width < MIN_SIZE.0 || area.height < MIN_SIZE.1 {
        let msg = format!(
            "The terminal is {}x{}; morphkv chat needs at least {}x{}. Enlarge it, or quit with Ctrl+C.",
            area.width, area.height, MIN_SIZE.0, MIN_SIZE.1
        );
        f.render_widget(
            Paragraph::new(msg)
                .style(theme.error)
                .wrap(ratatui::widgets::Wrap { trim: true }),
            area,
        );
        return hits;
    }
    let Areas {
        chat,
        side,
        strip,
        input,
        status,
        footer,
    } = areas(app, area);
    transcript(f, app, theme, chat);
    if let Some(r) = strip {
        compare::strip(f, app, theme, r);
    }
    if let (Some(p), Some(mut s)) = (app.panel, side) {
        // Time travel: the step slider under the panels that show the step.
        if app.travel.is_some()
            && matches!(p, Panel::Retention | Panel::Cache)
            && s.height > travel::HEIGHT + 6
        {
            let [panel, slider] =
                Layout::vertical([Constraint::Min(6), Constraint::Length(travel::HEIGHT)]).areas(s);
            travel::slider(f, app, theme, slider, &mut hits);
            s = panel;
        }
        match p {
            Panel::Retention => panels::retention(f, app, theme, s, &mut hits),
            Panel::Cache => panels::cache(f, app, theme, s),
            Panel::Attention => panels::attention(f, app, theme, s),
            Panel::Inspector => panels::inspector(f, app, theme, s),
        }
    }
    input_box(f, app, theme, input);
    status_bar(f, app, theme, status);
    footer_line(f, app, theme, footer);
    if app.help {
        hits.cover(help(f, app, theme, area));
    }
    if let Some(r) = chat_list(f, app, theme, area) {
        hits.cover(r);
    }
    hits
}

/// Where each part of the screen goes.
struct Areas {
    chat: Rect,
    side: Option<Rect>,
    /// Compare mode's divergence strip.
    strip: Option<Rect>,
    input: Rect,
    status: Rect,
    footer: Rect,
}

fn areas(app: &App, area: Rect) -> Areas {
    let input_h = (app.input.lines().count().max(1) + usize::from(app.input.ends_with('\n')))
        .clamp(1, 6) as u16
        + 2;
    let [main, input, status, footer] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(input_h),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let (main, strip) = if app.compare.is_some() {
        let [m, s] = Layout::vertical([
            Constraint::Min(3),
            Constraint::Length(compare::STRIP_HEIGHT),
        ])
        .areas(main);
        (m, Some(s))
    } else {
        (main, None)
    };
    let (chat, side) = match app.panel {
        Some(_) => {
            let side_w = if area.width >= 160 {
                area.width * 45 / 100
            } else {
                (area.width * 42 / 100).max(28)
            };
            let [c, s] =
                Layout::horizontal([Constraint::Min(20), Constraint::Length(side_w)]).areas(main);
            (c, Some(s))
        }
        None => (main, None),
    };
    Areas {
        chat,
        side,
        strip,
        input,
        status,
        footer,
    }
}

fn block<'a>(title: &'a str, theme: &Theme, focused: bool) -> Block<'a> {
    Block::new()
        .borders(Borders::ALL)
        .border_style(if focused {
            theme.focus_border
        } else {
            theme.border
        })
        .title(Span::styled(format!(" {title} "), theme.accent))
}

fn transcript(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let b = block("Chat", theme, false);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let width = inner.width as usize;
    let mut lines: Vec<Line<'static>> = Vec::new();
    let mut push = |role: Role, content: &str, streaming: bool| {
        let (name, style) = match role {
            Role::System => ("System", theme.muted),
            Role::User => ("You", theme.user),
            Role::Assistant => ("Assistant", theme.accent),
        };
        let mut head = vec![Span::styled(name.to_string(), style)];
        if streaming {
            head.push(Span::styled(" …", theme.muted));
        }
        lines.push(Line::from(head));
        let body = if role == Role::Assistant {
            theme.assistant
        } else {
            theme.base
        };
        lines.extend(markdown(content, body, theme, width));
        lines.push(Line::default());
    };
    for m in &app.messages {
        push(m.role, &m.content, false);
    }
    if let Some(s) = &app.streaming {
        push(Role::Assistant, s, true);
    }
    if lines.is_empty() {
        lines.push(Line::from(Span::styled(
            "Type a message and press Enter. ? shows every key; /help the commands.",
            theme.muted,
        )));
    }
    let h = inner.height as usize;
    let max_scroll = lines.len().saturating_sub(h);
    let scroll = app.scroll.min(max_scroll);
    let top = lines.len().saturating_sub(h + scroll);
    let view: Vec<Line<'static>> = lines.into_iter().skip(top).take(h).collect();
    f.render_widget(Paragraph::new(view), inner);
}

fn input_box(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let title = match &app.busy {
        Busy::Loading => "loading the model…".to_string(),
        Busy::Generating if app.paused => "paused: Ctrl+T one token, Ctrl+P resume".to_string(),
        Busy::Generating => "answering… (Esc stops)".to_string(),
        Busy::Prefill { done, total } => format!("reading the conversation: {done}/{total} tokens"),
        Busy::Idle => "Message".to_string(),
    };
    let b = block(&title, theme, app.busy == Busy::Idle);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let lines: Vec<Line> = app
        .input
        .split('\n')
        .map(|l| Line::from(Span::styled(l.to_string(), theme.base)))
        .collect();
    // Keep the cursor's line visible.
    let before: String = app.input.chars().take(app.cursor).collect();
    let row = before.matches('\n').count();
    let col = before.rsplit('\n').next().unwrap_or("").width();
    let skip = row.saturating_sub(inner.height.saturating_sub(1) as usize);
    f.render_widget(
        Paragraph::new(lines.into_iter().skip(skip).collect::<Vec<_>>()),
        inner,
    );
    if !app.help {
        let x = inner.x + (col as u16).min(inner.width.saturating_sub(1));
        let y = inner.y + (row - skip) as u16;
        f.set_cursor_position((x, y));
    }
}

fn mib(b: usize) -> String {
    let m = b as f64 / (1024.0 * 1024.0);
    if m >= 100.0 {
        format!("{m:.0} MiB")
    } else {
        format!("{m:.1} MiB")
    }
}

fn saving(app: &App) -> f64 {
    let s = &app.step;
    if s.full_kv_bytes == 0 {
        0.0
    } else {
        100.0 * (1.0 - s.kv_bytes as f64 / s.full_kv_bytes as f64)
    }
}

fn status_bar(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let c = &app.cache;
    let s = &app.step;
    let tps = if app.streaming.is_some() {
        s.decode_tps
    } else {
        app.last_stats.as_ref().map_or(0.0, |st| st.decode_tps)
    };
    let versus = app
        .compare
        .as_ref()
        .map(|v| format!("vs {} ", v.label))
        .unwrap_or_default();
    // The recent share where the policy keeps one (MorphKV's and H2O's by default), and
    // MorphKV's history weight and half-life where they are not the defaults.
    let mut shares = match c.recent() {
        0 => String::new(),
        r => format!(" r{r}%"),
    };
    if c.policy == crate::cache::PolicyKind::MorphKv {
        let half_life = c.half_life != crate::cache::DEFAULT_HALF_LIFE && c.history > 0;
        if c.history != crate::cache::DEFAULT_HISTORY || half_life {
            shares.push_str(&format!(" h{}%", c.history));
        }
        if half_life {
            shares.push_str(&format!(" hl{}", c.half_life));
        }
    }
    let left = format!(
        " {} · {} · {} b{} w{}{shares} {versus}",
        if app.model.is_empty() {
            "…"
        } else {
            &app.model
        },
        app.device,
        c.policy.name(),
        c.budget,
        c.effective_window()
    );
    // Travelling: which step is shown first; then, in compare mode, both caches.
    let mut options: Vec<String> = travel::status(app).map(Vec::from).unwrap_or_default();
    if let (true, Some(_), Some(o)) = (options.is_empty(), &app.compare, &s.compare) {
        // Both caches' bytes (K/V plus the policy's profile) and what the second one costs.
        let both = format!(
            "{} {} · {} {} ",
            c.policy.name(),
            mib(s.kv_bytes + s.profile_bytes),
            o.policy,
            mib(o.step.kv_bytes + o.step.profile_bytes)
        );
        let cost = format!("+{:.0}% time", 100.0 * o.cost);
        options.push(format!(
            " {tps:.1} tok/s · {}/{} kept · {both}· {cost} ",
            s.retained, s.seen
        ));
        options.push(format!(" {tps:.1} tok/s · {both}· {cost} "));
        options.push(format!(" {both}· {cost} "));
        options.push(format!(" {cost} "));
    }
    options.extend([
        format!(
            " {tps:.1} tok/s · {}/{} tok kept · KV {} {} of {} ({:.0}% saved) ",
            s.retained,
            s.seen,
            c.kv_type,
            mib(s.kv_bytes),
            mib(s.full_kv_bytes),
            saving(app)
        ),
        format!(
            " {tps:.1} tok/s · {}/{} tok kept · {:.0}% saved ",
            s.retained,
            s.seen,
            saving(app)
        ),
        format!(
            " {}/{} kept · {:.0}% saved ",
            s.retained,
            s.seen,
            saving(app)
        ),
        format!(" {}/{} tok kept ", s.retained, s.seen),
    ]);
    let room = (area.width as usize).saturating_sub(left.width());
    let right = options
        .iter()
        .find(|o| o.width() <= room)
        .cloned()
        .unwrap_or_default();
    let gap = (area.width as usize).saturating_sub(left.width() + right.width());
    let line = Line::from(vec![
        Span::styled(left, theme.status.add_modifier(Modifier::BOLD)),
        Span::styled(" ".repeat(gap), theme.status),
        Span::styled(right, theme.status),
    ]);
    f.render_widget(Paragraph::new(line).style(theme.status), area);
}

fn footer_line(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let line = match &app.notice {
        Some((text, true)) => Line::from(Span::styled(text.clone(), theme.error)),
        Some((text, false)) => Line::from(Span::styled(text.clone(), theme.accent)),
        None => {
            let long = "Enter send · Alt+Enter newline · Esc stop · Tab panel · PgUp/PgDn scroll · ? help · Ctrl+C quit";
            let short = "Enter send · Esc stop · Tab panel · ? help · Ctrl+C quit";
            let text = if long.width() <= area.width as usize {
                long
            } else {
                short
            };
            Line::from(Span::styled(text, theme.muted))
        }
    };
    f.render_widget(Paragraph::new(line), area);
}

/// A `w` x `h` rectangle in the middle of `area` (no larger than it).
fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let (w, h) = (w.min(area.width), h.min(area.height));
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

/// The saved-chat list, if open; returns where it is drawn.
fn chat_list(f: &mut Frame, app: &App, theme: &Theme, area: Rect) -> Option<Rect> {
    let list = app.chats.as_ref()?;
    let w = area.width.saturating_sub(4).min(90);
    let h = (list.items.len() as u16 + 4).min(area.height.saturating_sub(2));
    let r = centered(area, w, h);
    f.render_widget(Clear, r);
    let b = block(
        "Saved chats · ↑↓ choose · Enter open · Del delete · Esc close",
        theme,
        true,
    )
    .style(theme.base);
    let inner = b.inner(r);
    f.render_widget(b, r);
    let rows = inner.height as usize;
    // Keep the selection in view.
    let first = list.selected.saturating_sub(rows.saturating_sub(1));
    let lines: Vec<Line<'static>> = list
        .items
        .iter()
        .enumerate()
        .skip(first)
        .take(rows)
        .map(|(i, c)| {
            let mark = if c.current { "● " } else { "  " };
            let (text, base) = match &c.damaged {
                Some(reason) => (format!("{mark}{:<24} DAMAGED  {reason}", c.id), theme.error),
                None => (
                    format!("{mark}{:<24} {:>3} msgs  {}", c.id, c.messages, c.title),
                    theme.base,
                ),
            };
            let style = match (i == list.selected, c.damaged.is_some()) {
                (true, false) => theme.accent.add_modifier(Modifier::REVERSED),
                (true, true) => base.add_modifier(Modifier::REVERSED),
                (false, _) => base,
            };
            Line::from(Span::styled(text, style))
        })
        .collect();
    f.render_widget(Paragraph::new(lines), inner);
    Some(r)
}

/// The help overlay; returns where it is drawn.
fn help(f: &mut Frame, app: &App, theme: &Theme, area: Rect) -> Rect {
    // Bindings from config.toml first, then the built-in ones.
    let custom: Vec<(&str, &str)> = app
        .custom_keys
        .iter()
        .map(|(k, w)| (k.as_str(), w.as_str()))
        .collect();
    let keys: Vec<(&str, &str)> = custom.iter().chain(KEYS.iter()).copied().collect();
    let rows = (keys.len() + SLASH_HELP.len() + 2) as u16;
    // One column when it fits, else keys and commands side by side.
    let two = rows + 2 > area.height && area.width >= 70;
    let w = if two { area.width } else { area.width.min(78) };
    let need = if two {
        keys.len().max(SLASH_HELP.len()) as u16 + 3
    } else {
        rows + 2
    };
    let r = centered(area, w, area.height.min(need));
    f.render_widget(Clear, r);
    let b = block("Help (any key closes)", theme, true).style(theme.base);
    let inner = b.inner(r);
    f.render_widget(b, r);
    let section = |title: &str, items: &[(&str, &str)], width: u16| -> Vec<Line<'static>> {
        let key_w = items
            .iter()
            .map(|(k, _)| k.width())
            .max()
            .unwrap_or(10)
            .min(width as usize / 2);
        let mut lines = vec![Line::from(Span::styled(title.to_string(), theme.accent))];
        for (k, what) in items {
            lines.push(Line::from(vec![
                Span::styled(format!("{k:<key_w$}  "), theme.user),
                Span::styled(what.to_string(), theme.base),
            ]));
        }
        lines
    };
    if two {
        let [left, right] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                .spacing(2)
                .areas(inner);
        f.render_widget(Paragraph::new(section("Keys", &keys, left.width)), left);
        f.render_widget(
            Paragraph::new(section("Commands", &SLASH_HELP, right.width)),
            right,
        );
    } else {
        let mut lines = section("Keys", &keys, inner.width);
        lines.extend(section("Commands", &SLASH_HELP, inner.width));
        f.render_widget(Paragraph::new(lines), inner);
    }
    r
}
