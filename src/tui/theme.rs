//! Themes: TOML files (the repository's `themes/`, built in, plus the user's own in the config
//! directory's `themes/`) turned once into named styles.

use std::path::{Path, PathBuf};

use ratatui::style::{Color, Modifier, Style};
use serde::Deserialize;

/// The built-in themes.
pub const BUILTIN: [(&str, &str); 3] = [
    ("dark", include_str!("../../themes/dark.toml")),
    ("light", include_str!("../../themes/light.toml")),
    (
        "high-contrast",
        include_str!("../../themes/high-contrast.toml"),
    ),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThemeFile {
    name: String,
    background: String,
    foreground: String,
    muted: String,
    accent: String,
    user: String,
    assistant: String,
    border: String,
    focus_border: String,
    status_bg: String,
    status_fg: String,
    error: String,
    code: String,
    window: String,
    sink: String,
    evicted: String,
    heatmap: Vec<String>,
}

/// Named styles for every part of the screen.
#[derive(Debug, Clone, PartialEq)]
pub struct Theme {
    pub name: String,
    pub base: Style,
    pub muted: Style,
    pub accent: Style,
    pub user: Style,
    pub assistant: Style,
    pub border: Style,
    pub focus_border: Style,
    pub status: Style,
    pub error: Style,
    pub code: Style,
    pub window: Color,
    pub sink: Color,
    pub evicted: Style,
    /// Heatmap colours, low retention first.
    pub heatmap: Vec<Color>,
}

fn colour(s: &str, field: &str, origin: &str) -> Result<Color, String> {
    s.parse::<Color>().map_err(|_| {
        format!(
            "{origin}: `{field}` = \"{s}\" is not a colour (use \"#rrggbb\" or a name such as \"blue\")"
        )
    })
}

impl Theme {
    /// Parses a theme file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, String> {
        let f: ThemeFile =
            toml::from_str(text).map_err(|e| format!("{origin}: {}", e.message().trim()))?;
        let c = |s: &str, field: &str| colour(s, field, origin);
        if f.heatmap.len() < 2 {
            return Err(format!("{origin}: `heatmap` needs at least two colours"));
        }
        let bg = c(&f.background, "background")?;
        let fg = c(&f.foreground, "foreground")?;
        Ok(Self {
            name: f.name,
            base: Style::new().fg(fg).bg(bg),
            muted: Style::new().fg(c(&f.muted, "muted")?),
            accent: Style::new()
                .fg(c(&f.accent, "accent")?)
                .add_modifier(Modifier::BOLD),
            user: Style::new()
                .fg(c(&f.user, "user")?)
                .add_modifier(Modifier::BOLD),
            assistant: Style::new().fg(c(&f.assistant, "assistant")?),
            border: Style::new().fg(c(&f.border, "border")?),
            focus_border: Style::new().fg(c(&f.focus_border, "focus_border")?),
            status: Style::new()
                .fg(c(&f.status_fg, "status_fg")?)
                .bg(c(&f.status_bg, "status_bg")?),
            error: Style::new()
                .fg(c(&f.error, "error")?)
                .add_modifier(Modifier::BOLD),
            code: Style::new().fg(c(&f.code, "code")?),
            window: c(&f.window, "window")?,
            sink: c(&f.sink, "sink")?,
            evicted: Style::new()
                .fg(c(&f.evicted, "evicted")?)
                .add_modifier(Modifier::DIM),
            heatmap: f
                .heatmap
                .iter()
                .map(|h| c(h, "heatmap"))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The built-in dark theme.
    pub fn dark() -> Self {
        #[allow(clippy::expect_used)]
        Self::parse(BUILTIN[0].1, "themes/dark.toml").expect("the built-in theme parses")
    }

    /// The theme called `name`: a file `<name>.toml` in `user_dir` first, then the built-ins.
    /// A path to a `.toml` file works too.
    pub fn load(name: &str, user_dir: Option<&Path>) -> Result<Self, String> {
        let as_path = PathBuf::from(name);
        if name.ends_with(".toml") {
            let text = std::fs::read_to_string(&as_path)
                .map_err(|e| format!("theme file {}: {e}", as_path.display()))?;
            return Self::parse(&text, &as_path.display().to_string());
        }
        if let Some(dir) = user_dir {
            let p = dir.join(format!("{name}.toml"));
            if p.is_file() {
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| format!("theme file {}: {e}", p.display()))?;
                return Self::parse(&text, &p.display().to_string());
            }
        }
        match BUILTIN.iter().find(|(n, _)| *n == name) {
            Some((n, text)) => Self::parse(text, &format!("themes/{n}.toml")),
            None => Err(format!(
                "unknown theme `{name}` (built in: {}; or put {name}.toml in {})",
                BUILTIN.map(|b| b.0).join(", "),
                user_dir.map_or("the config folder's themes/".into(), |d| d
                    .display()
                    .to_string())
            )),
        }
    }

    /// The heatmap colour for a fraction in 0..=1.
    pub fn heat(&self, frac: f32) -> Color {
        let n = self.heatmap.len();
        let i = ((frac.clamp(0.0, 1.0) * (n - 1) as f32).round() as usize).min(n - 1);
        self.heatmap[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_theme_parses() {
        for (name, text) in BUILTIN {
            let t = Theme::parse(text, name).unwrap();
            assert_eq!(t.name, name);
            assert!(t.heatmap.len() >= 5);
        }
    }

    #[test]
    fn bad_themes_say_what_is_wrong() {
        let e = Theme::load("no-such-theme", None).unwrap_err();
        assert!(
            e.contains("unknown theme `no-such-theme`") && e.contains("dark"),
            "{e}"
        );
        let bad = BUILTIN[0].1.replace("#5fafff", "not-a-colour");
        let e = Theme::parse(&bad, "mine.toml").unwrap_err();
        assert!(e.contains("mine.toml") && e.contains("not-a-colour"), "{e}");
        let e = Theme::parse("name = 3", "x.toml").unwrap_err();
        assert!(e.starts_with("x.toml:"), "{e}");
    }

    #[test]
    fn heat_spans_the_palette() {
        let t = Theme::dark();
        assert_eq!(t.heat(0.0), t.heatmap[0]);
        assert_eq!(t.heat(1.0), *t.heatmap.last().unwrap());
    }
}
