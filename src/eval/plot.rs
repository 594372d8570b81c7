//! Line charts as standalone SVG files: fidelity against position and budget, speed against
//! context. Written by hand (axes, ticks, polylines, legend) so that plotting needs no font
//! files or drawing backend.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::equal::{without_budget, EqualBytes};
use super::Fidelity;
use crate::error::{Error, Result};

/// One named line of (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line chart.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const COLOURS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// Round tick positions covering `lo..hi`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).abs().max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    let mut out = Vec::new();
    let mut t = first;
    while t <= hi + step * 1e-9 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Chart {
    /// The chart as an SVG document (800 x 480).
    pub fn svg(&self) -> String {
        let (w, h) = (800.0, 480.0);
        let (left, right, top, bottom) = (80.0, 200.0, 40.0, 60.0);
        let pts = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts.filter(|p| p.0.is_finite() && p.1.is_finite()) {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if x1 - x0 < 1e-12 {
            x1 = x0 + 1.0;
        }
        if y1 - y0 < 1e-12 {
            (y0, y1) = (y0 - 1.0, y1 + 1.0);
        }
        let pad = (y1 - y0) * 0.05;
        let (y0, y1) = (y0 - pad, y1 + pad);
        let (pw, ph) = (w - left - right, h - top - bottom);
        let sx = |x: f64| left + (x - x0) / (x1 - x0) * pw;
        let sy = |y: f64| top + ph - (y - y0) / (y1 - y0) * ph;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>"#,
            left + pw / 2.0,
            escape(&self.title)
        );
        for t in ticks(x0, x1) {
            let x = sx(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                top + ph,
                top + ph + 18.0,
                fmt_tick(t)
            );
        }
        for t in ticks(y0, y1) {
            let y = sy(t);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + pw,
                left - 6.0,
                y + 4.0,
                fmt_tick(t)
            );
        }
        let _ = writeln!(
            s,
            r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            left + pw / 2.0,
            h - 18.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            top + ph / 2.0,
            escape(&self.y_label)
        );
        for (i, series) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let path: Vec<String> = series
                .points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                path.join(" ")
            );
            for p in &path {
                let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{colour}"/>"#);
            }
            let ly = top + 10.0 + 20.0 * i as f64;
            let lx = left + pw + 15.0;
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                lx + 20.0,
                lx + 26.0,
                ly + 4.0,
                escape(&series.name)
            );
        }
        s.push_str("</svg>\n");
        s
    }

    /// Writes the chart to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.svg())
            .map_err(|e| Error::arg("--plots", format!("cannot write {}: {e}", path.display())))
    }
}

/// Degradation against position (change in perplexity, top-1 agreement) and, when several
/// budgets were run, fidelity against budget per policy: `{prefix}-*.svg` in `dir`.
pub fn fidelity_plots(dir: &Path, prefix: &str, fids: &[Fidelity]) -> Result<()> {
    let by_position = |title: &str, y: &str, f: &dyn Fn(&super::Span) -> f64| Chart {
        title: title.to_string(),
        x_label: "position (start of bin)".into(),
        y_label: y.to_string(),
        series: fids
            .iter()
            .map(|fd| Series {
                name: fd.label.clone(),
                points: fd.bins.iter().map(|b| (b.from as f64, f(b))).collect(),
            })
            .collect(),
    };
    by_position(
        "Change in perplexity against the full cache",
        "Δ perplexity (%)",
        &|b| b.ppl_change_pct,
    )
    .write(&dir.join(format!("{prefix}-ppl-by-position.svg")))?;
    by_position(
        "Top-1 agreement with the full cache",
        "agreement (%)",
        &|b| 100.0 * b.top1,
    )
    .write(&dir.join(format!("{prefix}-top1-by-position.svg")))?;
    let mut by_policy: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for f in fids {
        by_policy
            .entry(without_budget(&f.label))
            .or_default()
            .push((f.budget as f64, f.overall.ppl_change_pct));
    }
    if by_policy.values().any(|v| v.len() > 1) {
        Chart {
            title: "Fidelity against budget".into(),
            x_label: "budget (tokens per KV head)".into(),
            y_label: "Δ perplexity (%)".into(),
            series: by_policy
                .into_iter()
                .map(|(name, mut points)| {
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    Series { name, points }
                })
                .collect(),
        }
        .write(&dir.join(format!("{prefix}-ppl-by-budget.svg")))?;
    }
    Ok(())
}

/// Fidelity against a cache's total bytes (keys and values plus profile), one line per
/// setting (policy and knobs but budget), from an `--equal-bytes` run:
/// `{prefix}-top1-by-bytes.svg` and `{prefix}-ppl-by-bytes.svg` in `dir`.
pub fn bytes_plots(dir: &Path, prefix: &str, rows: &[EqualBytes]) -> Result<()> {
    let chart = |title: &str, y: &str, f: &dyn Fn(&EqualBytes) -> f64| {
        let mut by_setting: Vec<Series> = Vec::new();
        for r in rows {
            let x = r.total_bytes as f64 / f64::from(1u32 << 20);
            match by_setting.iter_mut().find(|s| s.name == r.setting) {
                Some(s) => s.points.push((x, f(r))),
                None => by_setting.push(Series {
                    name: r.setting.clone(),
                    points: vec![(x, f(r))],
                }),
            }
        }
        for s in &mut by_setting {
            s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        Chart {
            title: title.to_string(),
            x_label: "cache bytes, K/V + profile (MiB)".into(),
            y_label: y.to_string(),
            series: by_setting,
        }
    };
    chart(
        "Top-1 agreement with the full cache at equal memory",
        "agreement (%)",
        &|r| 100.0 * r.top1,
    )
    .write(&dir.join(format!("{prefix}-top1-by-bytes.svg")))?;
    chart(
        "Change in perplexity against the full cache at equal memory",
        "Δ perplexity (%)",
        &|r| r.ppl_change_pct,
    )
    .write(&dir.join(format!("{prefix}-ppl-by-bytes.svg")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(0.13, 0.87);
        assert!(
            t.len() >= 3 && t[0] >= 0.13 && *t.last().unwrap() <= 0.87,
            "{t:?}"
        );
    }

    #[test]
    fn svg_has_one_polyline_per_series_and_escapes_names() {
        let c = Chart {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![
                Series {
                    name: "a<b".into(),
                    points: vec![(0.0, 1.0), (1.0, 2.0)],
                },
                Series {
                    name: "c".into(),
                    points: vec![(0.0, 3.0), (1.0, f64::NAN)],
                },
            ],
        };
        let svg = c.svg();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a&lt;b") && !svg.contains("a<b"));
        assert!(!svg.contains("NaN"));
    }
}
