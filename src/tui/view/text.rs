//! Text layout: word wrapping in terminal columns (remembering where tagged pieces land, for
//! the hit map) and the Markdown of messages.

use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use unicode_width::UnicodeWidthStr;

use crate::tui::theme::Theme;

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
/// blocks set apart. Line by line on purpose: a model's single newline is a line break on
/// screen (CommonMark would join such lines into one paragraph), and an answer still
/// streaming (an unclosed fence or `**`) renders as it will once complete.
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

/// Display text of a token: newlines and tabs made visible.
pub(super) fn token_display(t: &str) -> String {
    t.replace('\n', "↵").replace('\t', "→").replace('\r', "")
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
