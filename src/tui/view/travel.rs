//! Time travel on screen: the step slider under the Retention and Cache panels (a click or a
//! drag on its bar picks a step) and the status bar's words while the panels are not live.

use ratatui::layout::Rect;
use ratatui::style::Modifier;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;
use unicode_width::UnicodeWidthStr;

use super::{block, mib, saving};
use crate::tui::app::App;
use crate::tui::hits::{HitMap, Target};
use crate::tui::theme::Theme;

/// Rows the slider takes (its border included).
pub(super) const HEIGHT: u16 = 4;

/// The slider, while travelling: a bar from the oldest step the history reaches to the live
/// one with a knob at the step shown, and the keys under it.
pub(super) fn slider(f: &mut Frame, app: &App, theme: &Theme, area: Rect, hits: &mut HitMap) {
    let Some((t, latest, oldest)) = app.travelling() else {
        return;
    };
    let titles = [
        format!("Time travel · step {t} of {latest} · not live"),
        format!("step {t} of {latest} · not live"),
        format!("step {t}/{latest}"),
    ];
    let room = usize::from(area.width.saturating_sub(4));
    let title = titles
        .iter()
        .find(|s| s.width() <= room)
        .unwrap_or(&titles[2]);
    let b = block(title, theme, true);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let w = inner.width as usize;
    if w == 0 || inner.height == 0 {
        return;
    }
    let span = latest.saturating_sub(oldest).max(1);
    let knob = ((t.saturating_sub(oldest)) * (w - 1) + span / 2) / span;
    let knob = knob.min(w - 1);
    let bar = Line::from(vec![
        Span::styled("━".repeat(knob), theme.accent),
        Span::styled("●", theme.user.add_modifier(Modifier::BOLD)),
        Span::styled("─".repeat(w - 1 - knob), theme.muted),
    ]);
    let (left, right) = (oldest.to_string(), format!("{latest} live"));
    let hints = [
        "[ ] ±1 · { } ±10 · Esc live · click or drag",
        "[ ] ±1 · { } ±10 · Esc live",
        "[ ] { } · Esc",
    ];
    let room = w.saturating_sub(left.width() + right.width() + 2);
    let hint = hints
        .iter()
        .find(|h| h.width() <= room)
        .copied()
        .unwrap_or("");
    let gap = w.saturating_sub(left.width() + right.width() + hint.width());
    let (g1, g2) = (gap / 2, gap - gap / 2);
    let legend = Line::from(vec![
        Span::styled(left, theme.muted),
        Span::raw(" ".repeat(g1)),
        Span::styled(hint, theme.muted),
        Span::raw(" ".repeat(g2)),
        Span::styled(right, theme.muted),
    ]);
    f.render_widget(Paragraph::new(vec![bar, legend]), inner);
    hits.add(
        Rect::new(inner.x, inner.y, inner.width, 1),
        Target::Slider {
            x: inner.x,
            width: inner.width,
            from: oldest,
            to: latest,
        },
    );
}

/// The status bar's right side while travelling, longest first.
pub(super) fn status(app: &App) -> Option<[String; 4]> {
    let (t, latest, _) = app.travelling()?;
    let s = &app.step;
    Some([
        format!(
            " « step {t} of {latest}, not live · {}/{} tok kept · KV {} of {} ({:.0}% saved) ",
            s.retained,
            s.seen,
            mib(s.kv_bytes),
            mib(s.full_kv_bytes),
            saving(app)
        ),
        format!(
            " « step {t} of {latest}, not live · {}/{} kept · {:.0}% saved ",
            s.retained,
            s.seen,
            saving(app)
        ),
        format!(" « step {t} of {latest}, not live "),
        format!(" « step {t}/{latest} "),
    ])
}
