//! Rendering eval results for people: aligned terminal tables and Markdown.

use super::equal::EqualBytes;
use super::{Answer, Fidelity, Fluency, Perplexity, RecallResult};

/// Table style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Aligned columns for the terminal.
    Plain,
    /// GitHub-flavoured Markdown.
    Markdown,
}

/// Renders a table: the first column left-aligned, the others right-aligned.
pub fn render(style: Style, header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&width)
            .enumerate()
            .map(|(i, (c, &w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        match style {
            Style::Plain => padded.join("  ").trim_end().to_string(),
            Style::Markdown => format!("| {} |", padded.join(" | ")),
        }
    };
    let mut s = line(header.iter().map(|h| h.to_string()).collect());
    s.push('\n');
    if style == Style::Markdown {
        let rule: Vec<String> = (0..cols)
            .map(|i| {
                let dashes = "-".repeat(width[i].max(3) - 1);
                if i == 0 {
                    format!("{dashes}-")
                } else {
                    format!("{dashes}:")
                }
            })
            .collect();
        s.push_str(&format!("| {} |\n", rule.join(" | ")));
    }
    for r in rows {
        s.push_str(&line(r.clone()));
        s.push('\n');
    }
    s
}

fn mib(b: usize) -> String {
    format!("{:.1}", b as f64 / (1024.0 * 1024.0))
}

/// One line per cache: perplexity against full, KL, top-1 agreement and memory.
pub fn fidelity_table(fids: &[Fidelity], style: Style) -> String {
    let header = [
        "cache",
        "scored",
        "ppl full",
        "ppl",
        "Δppl %",
        "KL nats",
        "top-1 %",
        "retained",
        "KV MiB",
        "profile MiB",
        "full MiB",
        "memory %",
    ];
    let rows: Vec<Vec<String>> = fids
        .iter()
        .map(|f| {
            let o = &f.overall;
            vec![
                f.label.clone(),
                o.count.to_string(),
                format!("{:.3}", o.ppl_full),
                format!("{:.3}", o.ppl),
                format!("{:+.2}", o.ppl_change_pct),
                format!("{:.4}", o.kl),
                format!("{:.1}", 100.0 * o.top1),
                f.retained.to_string(),
                mib(f.kv_bytes),
                mib(f.profile_bytes),
                mib(f.full_kv_bytes),
                format!("{:.1}", 100.0 * f.memory_ratio()),
            ]
        })
        .collect();
    render(style, &header, &rows)
}

/// Policies at equal memory: per setting and byte size asked for (in the rows' order), the
/// budget chosen, its bytes (K/V, profile, total and the share of the size it fills) and its
/// fidelity against full.
pub fn equal_bytes_table(rows: &[EqualBytes], style: Style) -> String {
    let mib2 = |b: usize| format!("{:.2}", b as f64 / (1024.0 * 1024.0));
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.setting.clone(),
                mib2(r.bytes),
                r.budget.to_string(),
                mib2(r.kv_bytes),
                mib2(r.profile_bytes),
                mib2(r.total_bytes),
                format!(
                    "{:.1}",
                    100.0 * r.total_bytes as f64 / r.bytes.max(1) as f64
                ),
                format!("{:+.2}", r.ppl_change_pct),
                format!("{:.4}", r.kl),
                format!("{:.1}", 100.0 * r.top1),
            ]
        })
        .collect();
    render(
        style,
        &[
            "cache",
            "size MiB",
            "budget",
            "KV MiB",
            "profile MiB",
            "total MiB",
            "fill %",
            "Δppl %",
            "KL nats",
            "top-1 %",
        ],
        &rows,
    )
}

/// Degradation against position: one line per bin, a column per cache (`what`: "ppl" for the
/// change in perplexity in %, "top1" for agreement in %, "kl" for KL).
pub fn bins_table(fids: &[Fidelity], what: &str, style: Style) -> String {
    let Some(first) = fids.first() else {
        return String::new();
    };
    let mut header = vec!["positions".to_string()];
    header.extend(fids.iter().map(|f| f.label.clone()));
    let rows: Vec<Vec<String>> = first
        .bins
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut r = vec![format!("{}-{}", b.from, b.to)];
            for f in fids {
                r.push(f.bins.get(i).map_or("-".into(), |b| match what {
                    "top1" => format!("{:.1}", 100.0 * b.top1),
                    "kl" => format!("{:.4}", b.kl),
                    _ => format!("{:+.2}", b.ppl_change_pct),
                }));
            }
            r
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    render(style, &header, &rows)
}

/// Recall: per cache, probes recalled and the mean answer log-probability; then per probe.
pub fn recall_table(results: &[RecallResult], style: Style) -> String {
    let mut labels: Vec<&str> = Vec::new();
    for r in results {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    let rows: Vec<Vec<String>> = labels
        .iter()
        .map(|l| {
            let mine: Vec<&RecallResult> = results.iter().filter(|r| r.label == *l).collect();
            let n = mine.len().max(1) as f64;
            vec![
                l.to_string(),
                format!(
                    "{}/{}",
                    mine.iter().filter(|r| r.recalled).count(),
                    mine.len()
                ),
                format!(
                    "{:.2}",
                    mine.iter().map(|r| r.answer_logprob).sum::<f64>() / n
                ),
                format!(
                    "{:.0}",
                    mine.iter().map(|r| r.distance as f64).sum::<f64>() / n
                ),
            ]
        })
        .collect();
    render(
        style,
        &["cache", "recalled", "mean answer log-prob", "distance"],
        &rows,
    )
}

/// The full cache's answers in the long-generation task.
pub fn answers_table(answers: &[Answer], style: Style) -> String {
    let rows: Vec<Vec<String>> = answers
        .iter()
        .map(|a| {
            vec![
                a.prompt.clone(),
                a.prompt_tokens.to_string(),
                a.generated.to_string(),
                a.preview.replace('\n', " ").chars().take(70).collect(),
            ]
        })
        .collect();
    render(
        style,
        &["prompt", "prompt tokens", "generated", "answer begins"],
        &rows,
    )
}

/// Long generations judged by a fresh full cache.
pub fn fluency_table(results: &[Fluency], style: Style) -> String {
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|f| {
            vec![
                f.label.clone(),
                f.generated.to_string(),
                format!("{:.2}", f.judge_ppl),
                format!("{:.2}", f.self_ppl),
                format!("{:.1}", f.distinct4 * 100.0),
                format!("{:.1}", f.decode_tps),
                format!("{:.1}", f.kv_bytes as f64 / (1 << 20) as f64),
            ]
        })
        .collect();
    render(
        style,
        &[
            "cache",
            "generated",
            "judge ppl (last tokens)",
            "own ppl",
            "distinct 4-grams %",
            "tok/s",
            "KV MiB",
        ],
        &rows,
    )
}

/// llama.cpp-style perplexity output: the running estimates, then the final one.
pub fn perplexity_text(p: &Perplexity) -> String {
    let running: Vec<String> = p
        .running
        .iter()
        .enumerate()
        .map(|(i, x)| format!("[{}]{x:.4}", i + 1))
        .collect();
    format!(
        "perplexity: {} chunks, n_ctx={}\n{}\nFinal estimate: PPL = {:.4} +/- {:.5}\n",
        p.chunks,
        p.n_ctx,
        running.join(","),
        p.ppl,
        p.stderr
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::Span;

    fn fid(label: &str, ppl: f64) -> Fidelity {
        let span = Span {
            from: 1,
            to: 100,
            count: 99,
            ppl_full: 10.0,
            ppl,
            ppl_change_pct: (ppl / 10.0 - 1.0) * 100.0,
            kl: 0.01,
            top1: 0.9,
        };
        Fidelity {
            label: label.into(),
            policy: "morphkv".into(),
            budget: 64,
            window: 8,
            overall: span.clone(),
            bins: vec![span],
            kv_bytes: 1 << 20,
            profile_bytes: 1 << 19,
            full_kv_bytes: 1 << 22,
            retained: 64,
        }
    }

    #[test]
    fn tables_align_and_markdown_has_a_rule() {
        let f = vec![fid("morphkv b64 w8 sum", 10.5), fid("streaming b64", 12.0)];
        let plain = fidelity_table(&f, Style::Plain);
        let lines: Vec<&str> = plain.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[1].contains("+5.00") && lines[2].contains("+20.00"),
            "{plain}"
        );
        // memory: (1 MiB + 0.5 MiB) / 4 MiB
        assert!(lines[1].ends_with("37.5"), "{plain}");
        let md = fidelity_table(&f, Style::Markdown);
        assert!(md.lines().nth(1).unwrap().starts_with("| ---"), "{md}");
        let bins = bins_table(&f, "ppl", Style::Plain);
        assert!(bins.contains("1-100"), "{bins}");
    }

    #[test]
    fn the_equal_bytes_table_shows_budget_bytes_and_fill() {
        let sized = crate::eval::equal::Sized {
            bytes: 2 << 20,
            variant: crate::eval::Variant::new(crate::cache::CacheConfig::default()),
            footprint: crate::cache::Bytes::default(),
        };
        let rows = crate::eval::equal::rows(&[sized], &[fid("morphkv b64 w8 sum", 10.5)]);
        let t = equal_bytes_table(&rows, Style::Plain);
        let line = t.lines().nth(1).unwrap();
        // 1 MiB + 0.5 MiB of the 2 MiB asked for.
        assert!(line.starts_with("morphkv w8 sum"), "{t}");
        for cell in [
            "2.00", "64", "1.00", "0.50", "1.50", "75.0", "+5.00", "90.0",
        ] {
            assert!(line.split_whitespace().any(|c| c == cell), "{cell}: {t}");
        }
    }
}
