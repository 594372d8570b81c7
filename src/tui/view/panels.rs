//! The side panels: retention, cache, attention and the inspector.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Chart, Dataset, GraphType, Paragraph};
use ratatui::Frame;

use super::text::{token_display, wrap, wrap_tagged, Hit};
use super::{block, mib, saving};
use crate::engine::HeadFate;
use crate::tui::app::App;
use crate::tui::hits::{HitMap, Target};
use crate::tui::theme::Theme;

/// The retention panel; each token it shows answers a click (it is then inspected).
pub(super) fn retention(f: &mut Frame, app: &App, theme: &Theme, area: Rect, hits: &mut HitMap) {
    let title = match app.step.focus.as_ref() {
        Some((l, h, _)) => format!("Retention · layer {l} head {h}"),
        None => "Retention · all layers × heads".to_string(),
    };
    let b = block(&title, theme, true);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let (lines, at) = retention_lines(app, theme, inner.width as usize, inner.height as usize);
    f.render_widget(Paragraph::new(lines), inner);
    for (y, row) in (inner.y..inner.bottom()).zip(at) {
        for (a, b, pos) in row {
            let r = Rect::new(inner.x + a as u16, y, (b - a) as u16, 1);
            hits.add(r.intersection(inner), Target::Token(pos));
        }
    }
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
    if s.protected_from < s.window_from {
        legend.push(Span::styled(" · ", theme.muted));
        legend.push(Span::styled(
            "recent share",
            Style::new().fg(theme.window).add_modifier(Modifier::ITALIC),
        ));
    }
    legend.push(Span::styled(" · ", theme.muted));
    legend.push(Span::styled(
        "sink",
        Style::new().fg(theme.sink).add_modifier(Modifier::BOLD),
    ));
    let mut lines = wrap(legend, width);
    let versus = super::compare::legend(app, theme);
    if !versus.is_empty() {
        lines.extend(wrap(versus, width));
    }
    let mut hits: Vec<Vec<Hit>> = vec![Vec::new(); lines.len()];
    let pairs = s.pairs.max(1) as f32;
    let mut pieces = Vec::new();
    let mut token_lines: Vec<Line<'static>> = Vec::new();
    let mut token_hits: Vec<Vec<Hit>> = Vec::new();
    // Travelling, the tokens after the step shown had not come yet.
    let shown = app.travel.map_or(app.tokens.len(), |_| s.seen);
    for (pos, tok) in app.tokens.iter().take_while(|&(pos, _)| pos < shown) {
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
        } else if pos >= s.protected_from && pos < s.seen {
            style = style.add_modifier(Modifier::ITALIC);
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
        // After the token it marks (tokens mostly begin with their space).
        if let Some(o) = super::compare::only(app, pos) {
            pieces.push((Span::styled(o.glyph(), o.style(theme)), pos));
        }
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

pub(super) fn inspector(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let s = &app.step;
    let title = match app.inspect {
        Some(p) => format!(
            "Inspector · token {p} {:?}",
            app.tokens.get(p).map(token_display).unwrap_or_default()
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
    } else if fate.pos >= s.protected_from {
        summary.push(Span::styled(
            " · in the recent share (kept whatever its score)",
            theme.base,
        ));
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

pub(super) fn cache(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let b = block("Cache", theme, true);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let s = &app.step;
    // Travelling, the chart ends at the step shown.
    let history: std::borrow::Cow<[_]> = match app.travel {
        Some(_) => app
            .history
            .iter()
            .filter(|p| p.seen <= s.seen)
            .copied()
            .collect(),
        None => app.history.as_slice().into(),
    };
    // Evictions are counted per (layer, KV head); shown per head, as tokens.
    let pairs = s.pairs.max(1) as f64;
    let evicted = history.iter().map(|p| p.evicted).sum::<usize>() as f64 / pairs;
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
    let kept: Vec<(f64, f64)> = history
        .iter()
        .map(|p| (p.seen as f64, p.retained as f64))
        .collect();
    let full: Vec<(f64, f64)> = history
        .iter()
        .map(|p| (p.seen as f64, p.seen as f64))
        .collect();
    let x_max = history.last().map_or(1.0, |p| p.seen as f64).max(1.0);
    let x_min = history.first().map_or(0.0, |p| p.seen as f64);
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

pub(super) fn attention(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
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
                .map_or(String::new(), token_display);
            lines.push(Line::from(vec![
                Span::styled(format!("{:>6} ", pos), theme.muted),
                Span::styled(format!("{:>5.1}% ", 100.0 * p), theme.accent),
                Span::styled(format!("{tok:?}"), theme.base),
            ]));
        }
    }
    f.render_widget(Paragraph::new(lines), inner);
}
