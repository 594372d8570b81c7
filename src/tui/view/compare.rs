//! Compare mode on screen: the divergence strip under the chat, and which tokens one cache
//! keeps that the other dropped (for the retention panel).

use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;
use unicode_width::UnicodeWidthStr;

use super::text::token_display;
use crate::engine::StepInfo;
use crate::tui::app::{App, CompareView};
use crate::tui::theme::Theme;

/// Lines the strip takes.
pub(super) const STRIP_HEIGHT: u16 = 3;

/// Marks a token only one of the two caches keeps: (glyph, which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Only {
    /// The main cache keeps it; the second dropped it.
    Main,
    /// The second cache keeps it; the main one dropped it.
    Other,
}

impl Only {
    pub(super) fn glyph(self) -> &'static str {
        match self {
            Only::Main => "▴",
            Only::Other => "▾",
        }
    }

    pub(super) fn style(self, theme: &Theme) -> Style {
        match self {
            Only::Main => theme.accent.add_modifier(Modifier::BOLD),
            Only::Other => theme.error.add_modifier(Modifier::BOLD),
        }
    }
}

/// Whether a cache's step keeps `pos`: in its focused (layer, KV head) if one is focused,
/// else in any. None when the step says nothing of it (not seen yet, or not reported).
fn keeps(s: &StepInfo, pos: usize) -> Option<bool> {
    if pos >= s.seen {
        return None;
    }
    match &s.focus {
        Some((_, _, kept)) => {
            Some(u32::try_from(pos).is_ok_and(|p| kept.binary_search(&p).is_ok()))
        }
        None => s.retention.get(pos).map(|c| c > 0),
    }
}

/// Which cache alone keeps `pos`, in compare mode.
pub(super) fn only(app: &App, pos: usize) -> Option<Only> {
    let other = &app.step.compare.as_ref()?.step;
    match (keeps(&app.step, pos)?, keeps(other, pos)?) {
        (true, false) => Some(Only::Main),
        (false, true) => Some(Only::Other),
        _ => None,
    }
}

/// The legend's words for the two marks.
pub(super) fn legend(app: &App, theme: &Theme) -> Vec<Span<'static>> {
    let Some(c) = &app.compare else {
        return Vec::new();
    };
    let main = app.cache.policy.name();
    let other = c.label.split_whitespace().next().unwrap_or("second");
    vec![
        Span::styled(Only::Main.glyph(), Only::Main.style(theme)),
        Span::styled(format!(" only {main} keeps · "), theme.muted),
        Span::styled(Only::Other.glyph(), Only::Other.style(theme)),
        Span::styled(format!(" only {other} keeps"), theme.muted),
    ]
}

/// A KL value as one of eight bar heights: 1e-4 nats or less is the lowest, 1 or more the
/// highest, logarithmic between.
fn bar(kl: f32) -> char {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if !kl.is_finite() {
        return '?';
    }
    let x = ((kl.max(1e-4).log10() + 4.0) / 4.0).clamp(0.0, 1.0);
    BARS[((x * 7.0).round() as usize).min(7)]
}

/// The divergence strip: per generated token, KL between the two caches' next-token
/// distributions (bars) and whether their top-1 choices differ (×), with a summary.
pub(super) fn strip(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let Some(c) = &app.compare else { return };
    let w = area.width as usize;
    let head = format!(" vs {} ", c.label);
    let pad = head.width().max(7);
    let room = w.saturating_sub(pad + 1);
    let shown: Vec<_> = c
        .recent
        .iter()
        .skip(c.recent.len().saturating_sub(room))
        .collect();
    let mut kl_line = vec![Span::styled(
        format!("{head:<pad$}"),
        theme.accent.add_modifier(Modifier::BOLD),
    )];
    let mut top_line = vec![Span::styled(format!("{:>pad$}", "top-1 "), theme.muted)];
    if shown.is_empty() {
        kl_line.push(Span::styled(
            "KL per token appears here as the answer streams",
            theme.muted,
        ));
    }
    for d in &shown {
        let style = if d.differs() {
            theme.error
        } else {
            theme.muted
        };
        kl_line.push(Span::styled(bar(d.kl).to_string(), style));
        top_line.push(Span::styled(if d.differs() { "×" } else { "·" }, style));
    }
    let summary = summary(c, app.cache.policy.name());
    let lines = vec![
        Line::from(kl_line),
        Line::from(top_line),
        Line::from(Span::styled(summary, theme.muted)),
    ];
    f.render_widget(Paragraph::new(lines).style(theme.base), area);
}

/// The strip's last line: mean KL, how many top-1 choices differ, and the newest that did.
fn summary(c: &CompareView, main: &str) -> String {
    let mut s = format!(
        " KL mean {:.4} nats · top-1 differs {}/{}",
        c.mean_kl(),
        c.differs,
        c.tokens
    );
    if let Some(d) = c.last_differing() {
        let other = c.label.split_whitespace().next().unwrap_or("second");
        s.push_str(&format!(
            " · token {}: {main} “{}”, {other} “{}”",
            d.index + 1,
            token_display(&d.main_text),
            token_display(&d.other_text)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_rise_with_kl_on_a_log_scale() {
        assert_eq!(bar(0.0), '▁');
        assert_eq!(bar(1e-4), '▁');
        assert_eq!(bar(1.0), '█');
        assert_eq!(bar(50.0), '█');
        assert_eq!(bar(f32::NAN), '?');
        let b = [1e-4f32, 1e-3, 1e-2, 1e-1, 1.0].map(bar);
        assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
    }
}
