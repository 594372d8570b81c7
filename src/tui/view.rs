//! Drawing: reads the [`App`], never changes it.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Borders, Chart, Clear, Dataset, GraphType, Paragraph};
use ratatui::Frame;
use unicode_width::UnicodeWidthStr;

use super::app::{App, Busy, Panel, SLASH_HELP};
use super::keys::KEYS;
use super::theme::Theme;
use crate::chat::Role;

/// The smallest terminal the chat draws in.
pub const MIN_SIZE: (u16, u16) = (60, 16);

/// Draws the whole screen.
pub fn draw(f: &mut Frame, app: &App, theme: &Theme) {
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
        return;
    }
    let Areas {
        chat,
        side,
        input,
        status,
        footer,
    } = areas(app, area);
    transcript(f, app, theme, chat);
    if let (Some(p), Some(s)) = (app.panel, side) {
        match p {
            Panel::Retention => retention(f, app, theme, s),
            Panel::Cache => cache(f, app, theme, s),
            Panel::Attention => attention(f, app, theme, s),
            Panel::Inspector => inspector(f, app, theme, s),
        }
    }
    input_box(f, app, theme, input);
    status_bar(f, app, theme, status);
    footer_line(f, app, theme, footer);
    if app.help {
        help(f, app, theme, area);
    }
    if app.chats.is_some() {
        chat_list(f, app, theme, area);
    }
}

/// Where each part of the screen goes.
struct Areas {
    chat: Rect,
    side: Option<Rect>,
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

/// Word-wraps styled pieces to `width` columns.
pub fn wrap(pieces: Vec<Span<'static>>, width: usize) -> Vec<Line<'static>> {
    wrap_tagged(pieces.into_iter().map(|p| (p, 0)).collect(), width).0
}

/// Columns `start..end` of a wrapped line that show the piece tagged `tag`.
pub type Hit = (usize, usize, usize);

/// [`wrap`], also saying where each tagged piece landed: per line, its hits.
pub fn wrap_tagged(
    pieces: Vec<(Span<'static>, usize)>,
    width: usize,
) -> (Vec<Line<'static>>, Vec<Vec<Hit>>) {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut hits = Vec::new();
    let mut cur: Vec<Span<'static>> = Vec::new();
    let mut cur_hits: Vec<Hit> = Vec::new();
    let mut cur_w = 0;
    for (piece, tag) in pieces {
        let style = piece.style;
        // Split into words that keep their trailing spaces.
        let text = piece.content.into_owned();
        let mut words = Vec::new();
        let mut start = 0;
        let mut in_space = false;
        for (i, ch) in text.char_indices() {
            if ch == ' ' {
                in_space = true;
            } else if in_space {
                words.push(&text[start..i]);
                start = i;
                in_space = false;
            }
        }
        words.push(&text[start..]);
        for word in words.into_iter().filter(|w| !w.is_empty()) {
            let visible = word.trim_end().width();
            if cur_w > 0 && cur_w + visible > width {
                lines.push(Line::from(std::mem::take(&mut cur)));
                hits.push(std::mem::take(&mut cur_hits));
                cur_w = 0;
            }
            if word.width() <= width - cur_w {
                cur.push(Span::styled(word.to_string(), style));
                cur_hits.push((cur_w, cur_w + word.width(), tag));
                cur_w += word.width();
                continue;
            }
            // Longer than a line: hard breaks.
            let mut part = String::new();
            for ch in word.chars() {
                let w = ch.to_string().width();
                if cur_w + part.width() + w > width {
                    let pw = part.width();
                    cur.push(Span::styled(std::mem::take(&mut part), style));
                    cur_hits.push((cur_w, cur_w + pw, tag));
                    lines.push(Line::from(std::mem::take(&mut cur)));
                    hits.push(std::mem::take(&mut cur_hits));
                    cur_w = 0;
                }
                part.push(ch);
            }
            let pw = part.width();
            cur_hits.push((cur_w, cur_w + pw, tag));
            cur_w += pw;
            cur.push(Span::styled(part, style));
        }
    }
    if !cur.is_empty() || lines.is_empty() {
        lines.push(Line::from(cur));
        hits.push(cur_hits);
    }
    (lines, hits)
}

/// Inline Markdown: **bold**, *italic* / _italic_, `code`.
fn inline(text: &str, base: Style, theme: &Theme) -> Vec<Span<'static>> {
    let mut out = Vec::new();
    let (mut bold, mut italic, mut code) = (false, false, false);
    let mut buf = String::new();
    let style = |b: bool, i: bool, c: bool| {
        let mut s = if c { theme.code } else { base };
        if b {
            s = s.add_modifier(Modifier::BOLD);
        }
        if i {
            s = s.add_modifier(Modifier::ITALIC);
        }
        s
    };
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let flush = |buf: &mut String, out: &mut Vec<Span<'static>>, st: Style| {
            if !buf.is_empty() {
                out.push(Span::styled(std::mem::take(buf), st));
            }
        };
        if c == '`' {
            flush(&mut buf, &mut out, style(bold, italic, code));
            code = !code;
        } else if !code && c == '*' && next == Some('*') {
            flush(&mut buf, &mut out, style(bold, italic, code));
            bold = !bold;
            i += 1;
        } else if !code
            && (c == '*' || c == '_')
            && (italic || next.is_some_and(|n| !n.is_whitespace()))
            && (i == 0 || !chars[i - 1].is_alphanumeric() || italic)
        {
            flush(&mut buf, &mut out, style(bold, italic, code));
            italic = !italic;
        } else {
            buf.push(c);
        }
        i += 1;
    }
    if !buf.is_empty() {
        out.push(Span::styled(buf, style(bold, italic, code)));
    }
    out
}

/// A message's content as wrapped lines with simple Markdown: headings, lists, emphasis, code
/// blocks set apart.
pub fn markdown(content: &str, base: Style, theme: &Theme, width: usize) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    let mut in_code = false;
    for raw in content.split('\n') {
        let trimmed = raw.trim_start();
        if trimmed.starts_with("```") {
            in_code = !in_code;
            let lang = trimmed.trim_start_matches('`').trim();
            lines.push(Line::from(Span::styled(
                if in_code {
                    format!("┌─ {lang}")
                } else {
                    "└─".to_string()
                },
                theme.muted,
            )));
            continue;
        }
        if in_code {
            let mut l = wrap(
                vec![Span::styled(raw.to_string(), theme.code)],
                width.saturating_sub(2),
            );
            for line in &mut l {
                line.spans.insert(0, Span::styled("│ ", theme.muted));
            }
            lines.extend(l);
            continue;
        }
        if let Some(h) = ["### ", "## ", "# "]
            .iter()
            .find(|h| trimmed.starts_with(**h))
        {
            let text = trimmed[h.len()..].to_string();
            lines.extend(wrap(
                vec![Span::styled(
                    text,
                    theme.accent.add_modifier(Modifier::UNDERLINED),
                )],
                width,
            ));
            continue;
        }
        let indent = raw.len() - trimmed.len();
        let bullet = ["- ", "* ", "+ "].iter().find(|b| trimmed.starts_with(**b));
        let numbered = trimmed
            .split_once(". ")
            .filter(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        let (prefix, rest) = if bullet.is_some() {
            (format!("{}• ", " ".repeat(indent)), &trimmed[2..])
        } else if let Some((n, rest)) = numbered {
            (format!("{}{n}. ", " ".repeat(indent)), rest)
        } else {
            (String::new(), raw)
        };
        let pad = prefix.width();
        let mut wrapped = wrap(inline(rest, base, theme), width.saturating_sub(pad).max(1));
        for (k, line) in wrapped.iter_mut().enumerate() {
            let lead = if k == 0 {
                prefix.clone()
            } else {
                " ".repeat(pad)
            };
            if !lead.is_empty() {
                line.spans.insert(0, Span::styled(lead, theme.accent));
            }
        }
        lines.extend(wrapped);
    }
    lines
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
    let left = format!(
        " {} · {} · {} b{} w{} ",
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
    let options = [
        format!(
            " {tps:.1} tok/s · {}/{} tok kept · KV {} of {} ({:.0}% saved) ",
            s.retained,
            s.seen,
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
    ];
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

/// Display text of a token: newlines and tabs made visible.
fn token_display(t: &str) -> String {
    t.replace('\n', "↵").replace('\t', "→").replace('\r', "")
}

fn retention(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let title = match app.step.focus.as_ref() {
        Some((l, h, _)) => format!("Retention · layer {l} head {h}"),
        None => "Retention · all layers × heads".to_string(),
    };
    let b = block(&title, theme, true);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let (lines, _) = retention_lines(app, theme, inner.width as usize, inner.height as usize);
    f.render_widget(Paragraph::new(lines), inner);
}

/// The retention panel's lines for an inner area of `width` x `height`, and per line which
/// token (position) each column shows.
fn retention_lines(
    app: &App,
    theme: &Theme,
    width: usize,
    height: usize,
) -> (Vec<Line<'static>>, Vec<Vec<Hit>>) {
    let s = &app.step;
    // Legend.
    let mut legend = vec![Span::styled("kept by few ", theme.muted)];
    for k in 0..theme.heatmap.len() {
        legend.push(Span::styled("█", Style::new().fg(theme.heatmap[k])));
    }
    legend.push(Span::styled(" all · ", theme.muted));
    legend.push(Span::styled("evicted", theme.evicted));
    legend.push(Span::styled(" · ", theme.muted));
    legend.push(Span::styled(
        "window",
        Style::new()
            .fg(theme.window)
            .add_modifier(Modifier::UNDERLINED),
    ));
    legend.push(Span::styled(" · ", theme.muted));
    legend.push(Span::styled(
        "sink",
        Style::new().fg(theme.sink).add_modifier(Modifier::BOLD),
    ));
    let mut lines = wrap(legend, width);
    let mut hits: Vec<Vec<Hit>> = vec![Vec::new(); lines.len()];
    let pairs = s.pairs.max(1) as f32;
    let mut pieces = Vec::new();
    let mut token_lines: Vec<Line<'static>> = Vec::new();
    let mut token_hits: Vec<Vec<Hit>> = Vec::new();
    for (pos, tok) in app.tokens.iter().enumerate() {
        let kept = match &s.focus {
            // Positions the step has not reported yet count as kept.
            Some((_, _, k)) => {
                if pos >= s.seen || u32::try_from(pos).is_ok_and(|p| k.binary_search(&p).is_ok()) {
                    1.0
                } else {
                    0.0
                }
            }
            None => s.retention.get(pos).map_or(1.0, |c| f32::from(c) / pairs),
        };
        let mut style = if kept <= 0.0 {
            theme.evicted
        } else {
            let bg = theme.heat(kept);
            let fg = if kept >= 0.5 {
                Color::Black
            } else {
                Color::White
            };
            Style::new().bg(bg).fg(fg)
        };
        if pos >= s.window_from && pos < s.seen {
            style = style.add_modifier(Modifier::UNDERLINED);
        }
        if pos < s.sinks {
            style = style.add_modifier(Modifier::BOLD);
        }
        if app.inspect == Some(pos) {
            style = style.add_modifier(Modifier::REVERSED);
        }
        let text = token_display(tok);
        let newline = tok.contains('\n');
        pieces.push((Span::styled(text, style), pos));
        if newline {
            let (l, h) = wrap_tagged(std::mem::take(&mut pieces), width);
            token_lines.extend(l);
            token_hits.extend(h);
        }
    }
    if !pieces.is_empty() {
        let (l, h) = wrap_tagged(pieces, width);
        token_lines.extend(l);
        token_hits.extend(h);
    }
    let room = height.saturating_sub(lines.len());
    let skip = token_lines.len().saturating_sub(room);
    lines.extend(token_lines.into_iter().skip(skip));
    hits.extend(token_hits.into_iter().skip(skip));
    (lines, hits)
}

/// The token under screen cell (`x`, `y`) in the retention panel, if it is shown there.
pub fn token_at(app: &App, x: u16, y: u16) -> Option<usize> {
    if app.panel != Some(Panel::Retention) {
        return None;
    }
    let area = Rect::new(0, 0, app.size.0, app.size.1);
    if area.width < MIN_SIZE.0 || area.height < MIN_SIZE.1 || app.help {
        return None;
    }
    let side = areas(app, area).side?;
    let inner = Block::bordered().inner(side);
    if !inner.contains(ratatui::layout::Position { x, y }) {
        return None;
    }
    let (_, hits) = retention_lines(
        app,
        &Theme::dark(),
        inner.width as usize,
        inner.height as usize,
    );
    let col = (x - inner.x) as usize;
    hits.get((y - inner.y) as usize)?
        .iter()
        .find(|(a, b, _)| col >= *a && col < *b)
        .map(|&(_, _, pos)| pos)
}

/// Compact score: 3 significant digits.
fn score_text(v: f32) -> String {
    if v.is_nan() {
        "prot.".to_string()
    } else if v == 0.0 {
        "0".to_string()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}").trim_start_matches('0').to_string()
    }
}

fn inspector(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let s = &app.step;
    let title = match app.inspect {
        Some(p) => format!(
            "Inspector · token {p} {:?}",
            app.tokens
                .get(p)
                .map(|t| token_display(t))
                .unwrap_or_default()
        ),
        None => "Inspector".to_string(),
    };
    let b = block(&title, theme, true);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let width = inner.width as usize;
    let mut lines = wrap(
        vec![Span::styled(
            "Ctrl+←/→ token · Ctrl+↑/↓ ±10 · click a token in Retention · /inspect N · Alt+←/→ layer",
            theme.muted,
        )],
        width,
    );
    let Some(fate) = s.inspect.as_ref().filter(|t| Some(t.pos) == app.inspect) else {
        lines.push(Line::from(Span::styled(
            if app.inspect.is_some() {
                "waiting for the engine…"
            } else {
                "no token chosen yet"
            },
            theme.muted,
        )));
        f.render_widget(Paragraph::new(lines), inner);
        return;
    };
    use crate::engine::HeadFate;
    let all: Vec<&HeadFate> = fate.heads.iter().flatten().collect();
    let kept = all
        .iter()
        .filter(|h| matches!(h, HeadFate::Kept(_)))
        .count();
    // (step, whether only a bound is known: the history let the exact step go)
    let first_evicted = all
        .iter()
        .filter_map(|h| match h {
            HeadFate::Evicted { step, .. } => Some((*step, false)),
            HeadFate::Forgotten { by } => Some((*by, true)),
            HeadFate::Kept(_) => None,
        })
        .min();
    let mut summary = vec![Span::styled(
        format!("kept by {kept}/{} layer×heads", all.len()),
        theme.accent,
    )];
    if let Some((step, bound)) = first_evicted {
        let at = if bound { "by" } else { "at" };
        summary.push(Span::styled(
            format!(" · first evicted {at} token {step}"),
            theme.base,
        ));
    }
    if fate.pos >= s.window_from {
        summary.push(Span::styled(" · in the window", theme.base));
    } else if fate.pos < s.sinks {
        summary.push(Span::styled(" · a sink", theme.base));
    }
    lines.extend(wrap(summary, width));
    // One row per layer: a cell per KV head, full when they fit, a mark each otherwise.
    let heads = fate.heads.first().map_or(0, Vec::len).max(1);
    let cell_w = 14;
    let full_cells = 5 + heads * cell_w <= width;
    let header: String = if full_cells {
        (0..heads).fold("layer".to_string(), |acc, h| {
            format!("{acc}{:>w$}", format!("head {h}"), w = cell_w)
        })
    } else {
        format!("layer  heads 0-{} (● kept ✕ evicted)", heads - 1)
    };
    lines.push(Line::from(Span::styled(header, theme.muted)));
    let room = (inner.height as usize).saturating_sub(lines.len());
    // Keep the layer the Alt+arrows chose in view.
    let n = fate.heads.len();
    let first = app
        .attn_layer
        .saturating_sub(room / 2)
        .min(n.saturating_sub(room));
    for (l, layer) in fate.heads.iter().enumerate().skip(first).take(room) {
        let mark = if l == app.attn_layer { "▸" } else { " " };
        let mut spans = vec![Span::styled(format!("{mark}{l:>3} "), theme.muted)];
        for h in layer {
            let (text, style) = match h {
                HeadFate::Kept(v) => (
                    if full_cells {
                        format!("{:>w$}", format!("● {}", score_text(*v)), w = cell_w)
                    } else {
                        "●".to_string()
                    },
                    Style::new().fg(theme.heat(1.0)),
                ),
                HeadFate::Evicted { step, score } => (
                    if full_cells {
                        format!(
                            "{:>w$}",
                            format!("✕@{step} {}", score_text(*score)),
                            w = cell_w
                        )
                    } else {
                        "✕".to_string()
                    },
                    theme.evicted,
                ),
                HeadFate::Forgotten { by } => (
                    if full_cells {
                        format!("{:>w$}", format!("✕ by {by}"), w = cell_w)
                    } else {
                        "✕".to_string()
                    },
                    theme.evicted,
                ),
            };
            spans.push(Span::styled(text, style));
        }
        lines.push(Line::from(spans));
    }
    f.render_widget(Paragraph::new(lines), inner);
}

fn cache(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let b = block("Cache", theme, true);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let s = &app.step;
    // Evictions are counted per (layer, KV head); shown per head, as tokens.
    let pairs = s.pairs.max(1) as f64;
    let evicted = app.history.iter().map(|p| p.evicted).sum::<usize>() as f64 / pairs;
    let mut text = wrap(
        vec![
            Span::styled("kept ", theme.muted),
            Span::styled(format!("{}", s.retained), theme.accent),
            Span::styled(
                format!(" of {} tok, budget {} · ", s.seen, s.budget),
                theme.muted,
            ),
            Span::styled("KV ", theme.muted),
            Span::styled(mib(s.kv_bytes), theme.accent),
            Span::styled(format!(" of {} · ", mib(s.full_kv_bytes)), theme.muted),
            Span::styled(format!("{:.0}% saved", saving(app)), theme.accent),
        ],
        inner.width as usize,
    );
    text.extend(wrap(
        vec![Span::styled(
            format!(
                "profile {} · evicted per head: {:.0} now, {evicted:.0} in all",
                mib(s.profile_bytes),
                s.evicted as f64 / pairs,
            ),
            theme.muted,
        )],
        inner.width as usize,
    ));
    let [top, chart_area] =
        Layout::vertical([Constraint::Length(text.len() as u16), Constraint::Min(3)]).areas(inner);
    f.render_widget(Paragraph::new(text), top);
    let kept: Vec<(f64, f64)> = app
        .history
        .iter()
        .map(|p| (p.seen as f64, p.retained as f64))
        .collect();
    let full: Vec<(f64, f64)> = app
        .history
        .iter()
        .map(|p| (p.seen as f64, p.seen as f64))
        .collect();
    let x_max = app.history.last().map_or(1.0, |p| p.seen as f64).max(1.0);
    let x_min = app.history.first().map_or(0.0, |p| p.seen as f64);
    let y_max = x_max.max(s.budget as f64);
    let datasets = vec![
        Dataset::default()
            .name("full cache")
            .marker(symbols::Marker::Braille)
            .graph_type(GraphType::Line)
            .style(theme.muted)
            .data(&full),
        Dataset::default()
            .name(app.cache.policy.name())
            .marker(symbols::Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(theme.window))
            .data(&kept),
    ];
    let chart = Chart::new(datasets)
        .x_axis(
            Axis::default()
                .title(Span::styled("tokens seen", theme.muted))
                .style(theme.muted)
                .bounds([x_min, x_max])
                .labels([format!("{x_min:.0}"), format!("{x_max:.0}")]),
        )
        .y_axis(
            Axis::default()
                .title(Span::styled("kept", theme.muted))
                .style(theme.muted)
                .bounds([0.0, y_max])
                .labels(["0".to_string(), format!("{y_max:.0}")]),
        );
    f.render_widget(chart, chart_area);
}

fn attention(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let b = block("Attention of the last token", theme, true);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let s = &app.step;
    if s.attention.is_empty() {
        f.render_widget(
            Paragraph::new(Span::styled(
                "Shown while a reply is being generated.",
                theme.muted,
            )),
            inner,
        );
        return;
    }
    // Distinct glyphs as well as colours, so the bars read without colour too.
    let mut lines = wrap(
        vec![
            Span::styled("▓", Style::new().fg(theme.sink)),
            Span::styled(" sinks ", theme.muted),
            Span::styled("▒", Style::new().fg(theme.heat(0.5))),
            Span::styled(" older kept ", theme.muted),
            Span::styled("█", Style::new().fg(theme.window)),
            Span::styled(" window", theme.muted),
        ],
        inner.width as usize,
    );
    let top_rows = 7;
    let bar_rows = (inner.height as usize).saturating_sub(1 + top_rows).max(1);
    let bar_w = (inner.width as usize).saturating_sub(5).max(1);
    let n = s.attention.len();
    // Show every layer if they fit, else an even sample (always the focused one).
    let shown: Vec<usize> = if n <= bar_rows {
        (0..n).collect()
    } else {
        let mut v: Vec<usize> = (0..bar_rows)
            .map(|i| i * (n - 1) / (bar_rows - 1).max(1))
            .collect();
        v.dedup();
        v
    };
    for l in shown {
        let a = &s.attention[l];
        let total = (a.sinks + a.old + a.window).max(1e-9);
        let w_s = ((a.sinks / total) * bar_w as f32).round() as usize;
        let w_w = ((a.window / total) * bar_w as f32).round() as usize;
        let w_o = bar_w.saturating_sub(w_s + w_w);
        let label = if l == app.attn_layer {
            Span::styled(format!("{l:>3}▸"), theme.accent)
        } else {
            Span::styled(format!("{l:>3} "), theme.muted)
        };
        lines.push(Line::from(vec![
            label,
            Span::styled("▓".repeat(w_s), Style::new().fg(theme.sink)),
            Span::styled("▒".repeat(w_o), Style::new().fg(theme.heat(0.5))),
            Span::styled("█".repeat(w_w), Style::new().fg(theme.window)),
        ]));
    }
    if let Some(a) = s.attention.get(app.attn_layer) {
        lines.push(Line::from(Span::styled(
            format!("top tokens, layer {}:", app.attn_layer),
            theme.accent,
        )));
        for (pos, p) in a.top.iter().take(top_rows - 1) {
            let tok = app
                .tokens
                .get(*pos as usize)
                .map_or(String::new(), |t| token_display(t));
            lines.push(Line::from(vec![
                Span::styled(format!("{:>6} ", pos), theme.muted),
                Span::styled(format!("{:>5.1}% ", 100.0 * p), theme.accent),
                Span::styled(format!("{tok:?}"), theme.base),
            ]));
        }
    }
    f.render_widget(Paragraph::new(lines), inner);
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

fn chat_list(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let Some(list) = &app.chats else { return };
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
}

fn help(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(lines: &[Line]) -> Vec<String> {
        lines
            .iter()
            .map(|l| l.spans.iter().map(|s| s.content.as_ref()).collect())
            .collect()
    }

    #[test]
    fn wrap_breaks_at_spaces_and_splits_long_words() {
        let l = wrap(vec![Span::raw("the quick brown fox")], 10);
        assert_eq!(text(&l), vec!["the quick ", "brown fox"]);
        let l = wrap(vec![Span::raw("abcdefghijkl")], 5);
        assert_eq!(text(&l), vec!["abcde", "fghij", "kl"]);
        // Wide characters count two columns.
        let l = wrap(vec![Span::raw("日本語テキスト")], 6);
        assert_eq!(text(&l), vec!["日本語", "テキス", "ト"]);
    }

    #[test]
    fn markdown_sets_lists_headings_and_code_apart() {
        let t = Theme::dark();
        let md = "# Title\n- one **two**\n```rust\nfn main() {}\n```\n1. first";
        let lines = markdown(md, t.base, &t, 40);
        let s = text(&lines);
        assert_eq!(s[0], "Title");
        assert_eq!(s[1], "• one two");
        assert!(s[2].starts_with("┌─ rust"));
        assert_eq!(s[3], "│ fn main() {}");
        assert_eq!(s[5], "1. first");
        let bold = &lines[1].spans.last().unwrap();
        assert!(bold.style.add_modifier.contains(Modifier::BOLD));
    }
}
