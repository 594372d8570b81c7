//! Renders the README's screenshots of the chat from the recorded demo conversation (no model
//! needed): `cargo run --release --example screenshots` writes docs/screenshots/*.svg.

#[path = "../tests/tui/demo.rs"]
mod demo;

use demo::{app_after_recording, svg};
use morphkv::tui::app::{Action, Msg, Panel};
use morphkv::tui::theme::Theme;
use morphkv::tui::view;
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::Path::new("docs/screenshots");
    std::fs::create_dir_all(dir)?;
    let shots = [
        ("retention-dark", "dark", Some(Panel::Retention), false),
        ("cache-dark", "dark", Some(Panel::Cache), false),
        ("attention-dark", "dark", Some(Panel::Attention), false),
        ("inspector-dark", "dark", Some(Panel::Inspector), false),
        ("retention-light", "light", Some(Panel::Retention), false),
        (
            "retention-high-contrast",
            "high-contrast",
            Some(Panel::Retention),
            false,
        ),
        ("help-dark", "dark", Some(Panel::Retention), true),
        ("compare-dark", "dark", Some(Panel::Retention), false),
        ("travel-dark", "dark", Some(Panel::Retention), false),
    ];
    for (name, theme_name, panel, help) in shots {
        let theme = Theme::load(theme_name, None)?;
        let mut app = if name.starts_with("compare") {
            demo::app_comparing()
        } else if name.starts_with("travel") {
            demo::app_travelled(Panel::Retention, 10).0
        } else {
            app_after_recording()
        };
        app.panel = panel;
        if panel == Some(Panel::Inspector) {
            app.inspect = Some(20);
            app.step.inspect = Some(demo::fate(20, app.step.seen));
        }
        if help {
            app.update(Msg::Action(Action::Help));
        }
        let mut term = Terminal::new(TestBackend::new(120, 32))?;
        term.draw(|f| view::draw(f, &app, &theme))?;
        let (fg, bg) = match theme_name {
            "light" => ("#262626", "#ffffff"),
            "high-contrast" => ("#ffffff", "#000000"),
            _ => ("#d0d0d0", "#1c1c1c"),
        };
        let path = dir.join(format!("{name}.svg"));
        std::fs::write(&path, svg(term.backend().buffer(), fg, bg))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
