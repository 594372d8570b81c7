//! The chat's screens, without a model: a recorded sequence of engine events drives the app,
//! and the whole screen is compared with reviewed snapshots (tests/snapshots) at 80x24,
//! 120x40 and 200x60 for each panel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use morphkv::cache::CacheConfig;
use morphkv::sampling::SamplingParams;
use morphkv::tui::app::{Action, App, Msg, Panel};
use morphkv::tui::hits::HitMap;
use morphkv::tui::theme::Theme;
use morphkv::tui::view;
use ratatui::backend::TestBackend;
use ratatui::style::Modifier;
use ratatui::Terminal;

#[path = "tui/demo.rs"]
mod demo;

use demo::{app_after_recording, recorded};

fn screen(app: &App, w: u16, h: u16) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    let theme = Theme::dark();
    term.draw(|f| view::draw(f, app, &theme)).unwrap();
    term.backend().to_string()
}

#[test]
fn the_recording_leaves_a_finished_answer() {
    let app = app_after_recording();
    assert_eq!(app.messages.len(), 2);
    assert!(app.messages[1].content.starts_with("The sky looks blue"));
    assert_eq!(app.tokens.len(), 14 + 33);
    assert_eq!(app.step.retained, 24);
}

#[test]
fn every_panel_at_every_size() {
    for panel in [
        Some(Panel::Retention),
        Some(Panel::Cache),
        Some(Panel::Attention),
        Some(Panel::Inspector),
        None,
    ] {
        for (w, h) in [(80, 24), (120, 40), (200, 60)] {
            let mut app = app_after_recording();
            app.panel = panel;
            if panel == Some(Panel::Inspector) {
                app.inspect = Some(20);
                app.step.inspect = Some(demo::fate(20, app.step.seen));
            }
            let name = format!(
                "{}_{w}x{h}",
                panel.map_or("no-panel", |p| p.title()).to_lowercase()
            );
            insta::assert_snapshot!(name, screen(&app, w, h));
        }
    }
}

/// The status bar names the cache's settings: MorphKV's history weight and half-life only
/// where they are not the defaults (the paper's scoring shows as `h0%`).
#[test]
fn the_status_bar_shows_the_history_weight_where_not_the_default() {
    let app = app_after_recording();
    assert!(screen(&app, 120, 40).contains("morphkv b24 w6 r75% "));
    for (history, half_life, shows) in [
        (0, 512, "r75% h0% "),
        (0, 64, "r75% h0% "),
        (300, 512, "r75% h300% "),
        (100, 64, "r75% h100% hl64 "),
    ] {
        let cache = CacheConfig {
            history,
            half_life,
            ..demo::cache_config()
        };
        let mut app = App::new(cache, SamplingParams::greedy(), 256);
        for m in recorded() {
            app.update(m);
        }
        let s = screen(&app, 120, 40);
        assert!(s.contains(&format!("morphkv b24 w6 {shows}")), "{s}");
    }
}

#[test]
fn the_inspector_says_which_protected_span_holds_a_token() {
    let mut app = app_after_recording();
    app.panel = Some(Panel::Inspector);
    let s = &app.step;
    let (window, share, old) = (s.seen - 1, s.window_from - 1, s.protected_from - 1);
    assert!(s.protected_from < s.window_from);
    for (pos, says) in [
        (window, Some("in the window")),
        (share, Some("in the recent share")),
        (old, None),
    ] {
        app.inspect = Some(pos);
        app.step.inspect = Some(demo::fate(pos, app.step.seen));
        let text = screen(&app, 200, 60);
        for phrase in ["in the window", "in the recent share"] {
            assert_eq!(
                text.contains(phrase),
                says == Some(phrase),
                "{pos}: {phrase}"
            );
        }
    }
}

#[test]
fn compare_mode_at_every_size_and_theme() {
    for theme_name in ["dark", "light", "high-contrast"] {
        let theme = Theme::load(theme_name, None).unwrap();
        for (w, h) in [(80, 24), (120, 40), (200, 60)] {
            let app = demo::app_comparing();
            let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
            term.draw(|f| view::draw(f, &app, &theme)).unwrap();
            let s = term.backend().to_string();
            // The strip, the second cache in the status bar and the legend's two marks.
            assert!(s.contains("vs h2o b24 w6"), "{s}");
            assert!(s.contains("top-1"), "{s}");
            assert!(s.contains('▴') && s.contains('▾'), "{s}");
            insta::assert_snapshot!(format!("compare_{theme_name}_{w}x{h}"), s);
        }
    }
}

#[test]
fn the_marks_are_the_tokens_one_cache_keeps_and_the_other_dropped() {
    let app = demo::app_comparing();
    let s = &app.step;
    let o = &s.compare.as_ref().unwrap().step;
    let main_only = (0..s.seen)
        .filter(|&p| s.retention[p] > 0 && o.retention[p] == 0)
        .count();
    let other_only = (0..s.seen)
        .filter(|&p| s.retention[p] == 0 && o.retention[p] > 0)
        .count();
    assert!(main_only > 0 && other_only > 0);
    // The whole conversation fits the panel at 200x60: every mark is on screen once.
    let mut term = Terminal::new(TestBackend::new(200, 60)).unwrap();
    term.draw(|f| view::draw(f, &app, &Theme::dark())).unwrap();
    let screen = term.backend().to_string();
    // One of each in the legend.
    assert_eq!(screen.matches('▴').count(), main_only + 1);
    assert_eq!(screen.matches('▾').count(), other_only + 1);
    // The strip: one bar per answer token, × where the top-1 differs.
    let c = app.compare.as_ref().unwrap();
    assert_eq!(c.tokens, demo::ANSWER.len());
    assert_eq!(c.differs, c.recent.iter().filter(|d| d.differs()).count());
    assert!(screen.contains(&format!("top-1 differs {}/{}", c.differs, c.tokens)));
}

#[test]
fn help_overlay_and_small_terminal() {
    let mut app = app_after_recording();
    app.update(Msg::Action(Action::Help));
    insta::assert_snapshot!("help_120x40", screen(&app, 120, 40));
    insta::assert_snapshot!("help_80x24", screen(&app, 80, 24));
    let s = screen(&app, 50, 12);
    assert!(s.contains("60x16") && s.contains("Enlarge"), "{s}");
}

#[test]
fn streaming_shows_the_partial_answer_and_the_busy_input() {
    let mut app = App::new(CacheConfig::default(), SamplingParams::greedy(), 256);
    let msgs = recorded();
    // Stop before the answer finishes.
    for m in msgs.into_iter().take(40) {
        app.update(m);
    }
    let s = screen(&app, 80, 24);
    assert!(s.contains("Assistant …"), "{s}");
    assert!(s.contains("answering… (Esc stops)"), "{s}");
}

#[test]
fn retention_colours_follow_the_cache() {
    let mut app = app_after_recording();
    app.panel = Some(Panel::Retention);
    let mut term = Terminal::new(TestBackend::new(120, 40)).unwrap();
    let theme = Theme::dark();
    term.draw(|f| view::draw(f, &app, &theme)).unwrap();
    let buf = term.backend().buffer().clone();
    // Find the retention panel's cells by symbol on its last text row: "through." ends the
    // transcript of tokens; the window (last 6 tokens) is kept by all pairs: brightest.
    let area = buf.area;
    let mut found_bright = false;
    let mut evicted_cells = 0;
    for y in 0..area.height {
        for x in area.width / 2..area.width {
            let cell = &buf[(x, y)];
            if cell.bg == *theme.heatmap.last().unwrap() && cell.symbol() != " " {
                found_bright = true;
            }
            if cell.fg == theme.evicted.fg.unwrap()
                && cell.symbol() != " "
                && cell.bg != theme.heatmap[0]
            {
                evicted_cells += 1;
            }
        }
    }
    assert!(
        found_bright,
        "the window's tokens are drawn in the 'kept by all' colour"
    );
    // The recent share beyond the window is drawn in italics (the legend says so), the
    // window underlined, and nothing is both.
    let (mut italic, mut underlined) = (0, 0);
    for y in 0..area.height {
        for x in area.width / 2..area.width {
            let m = buf[(x, y)].modifier;
            italic += usize::from(m.contains(Modifier::ITALIC));
            underlined += usize::from(m.contains(Modifier::UNDERLINED));
            assert!(!m.contains(Modifier::ITALIC | Modifier::UNDERLINED));
        }
    }
    assert!(
        italic > "recent share".len() + 12 && underlined > "window".len() + 6,
        "{italic} {underlined}"
    );
    // More than the legend's word "evicted": the tokens no pair keeps.
    assert!(
        evicted_cells > 12,
        "tokens no pair keeps are drawn dimmed ({evicted_cells} cells)"
    );
}

#[test]
fn clicking_a_token_in_the_retention_panel_inspects_it() {
    let mut app = app_after_recording();
    app.panel = Some(Panel::Retention);
    app.update(Msg::Resize(120, 40));
    let mut term = Terminal::new(TestBackend::new(120, 40)).unwrap();
    let theme = Theme::dark();
    // Drawing says what a click on each part of the screen means.
    let mut hits = HitMap::default();
    term.draw(|f| hits = view::render(f, &app, &theme)).unwrap();
    let buf = term.backend().buffer().clone();
    // Where the panel (right part of the screen) shows " scatters" (position 14 + 6).
    let mut at = None;
    for y in 0..40 {
        let cells: Vec<String> = (60..120)
            .map(|x| buf[(x, y)].symbol().to_string())
            .collect();
        if let Some(i) = (0..cells.len() - 8).find(|&i| cells[i..i + 8].concat() == "scatters") {
            at = Some((60 + i as u16 + 2, y));
        }
    }
    let (x, y) = at.expect("the retention panel shows the token");
    let fx = app.update(hits.click(x, y));
    assert_eq!(app.inspect, Some(20));
    assert_eq!(
        fx,
        vec![morphkv::tui::app::Effect::Engine(
            morphkv::engine::Command::Inspect(Some(20))
        )]
    );
    // A click on the transcript selects nothing.
    let before = app.inspect;
    assert!(app.update(hits.click(2, 2)).is_empty());
    assert_eq!(app.inspect, before);
    // Ctrl+arrows walk from there, within the conversation.
    app.update(Msg::Action(Action::Inspect(-1)));
    assert_eq!(app.inspect, Some(19));
    app.update(Msg::Action(Action::Inspect(1000)));
    assert_eq!(app.inspect, Some(app.step.seen - 1));
    // The inspected token is drawn reversed in the panel.
    term.draw(|f| view::draw(f, &app, &theme)).unwrap();
    let buf = term.backend().buffer().clone();
    let reversed = (0..40).any(|y| {
        (60..120).any(|x| {
            buf[(x, y)]
                .modifier
                .contains(ratatui::style::Modifier::REVERSED)
        })
    });
    assert!(reversed);
}

/// The app travelled 10 steps back from the end of the recording, the engine's answer in.
fn travelled(panel: Panel) -> App {
    let (app, fx) = demo::app_travelled(panel, 10);
    let t = app.step.seen;
    assert_eq!(
        fx,
        vec![morphkv::tui::app::Effect::Engine(
            morphkv::engine::Command::Travel(Some(t))
        )]
    );
    app
}

/// The screen's text, then the styles of the slider's rows and the status bar (runs of
/// cells alike: first..last column, colours, modifiers), which is where the themes differ.
fn styled_screen(app: &App, theme: &Theme, w: u16, h: u16) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| view::draw(f, app, theme)).unwrap();
    let buf = term.backend().buffer().clone();
    let text = term.backend().to_string();
    let row = |y: u16| -> String { (0..w).map(|x| buf[(x, y)].symbol()).collect() };
    let top = (0..h)
        .find(|&y| row(y).contains("┌ Time travel") || row(y).contains("┌ step"))
        .expect("the slider is drawn");
    let mut out = format!("{text}\nstyles:\n");
    for y in (top..top + 4).chain([h - 2]) {
        let mut x = 0;
        while x < w {
            let c = &buf[(x, y)];
            let key = (c.fg, c.bg, c.modifier);
            let mut end = x;
            while end + 1 < w && {
                let d = &buf[(end + 1, y)];
                (d.fg, d.bg, d.modifier) == key
            } {
                end += 1;
            }
            out.push_str(&format!(
                "row {y} {x}..{end}: fg {:?} bg {:?} {:?}\n",
                c.fg, c.bg, c.modifier
            ));
            x = end + 1;
        }
    }
    out
}

#[test]
fn time_travel_at_every_size_and_theme() {
    for theme_name in ["dark", "light", "high-contrast"] {
        let theme = Theme::load(theme_name, None).unwrap();
        for (w, h) in [(80, 24), (120, 40), (200, 60)] {
            let app = travelled(Panel::Retention);
            let s = styled_screen(&app, &theme, w, h);
            assert!(s.contains("step 37 of 47"), "{s}");
            insta::assert_snapshot!(format!("travel_{theme_name}_{w}x{h}"), s);
        }
    }
    let app = travelled(Panel::Cache);
    insta::assert_snapshot!("travel_cache_120x40", screen(&app, 120, 40));
}

#[test]
fn travel_keys_the_slider_and_going_live() {
    let mut app = travelled(Panel::Retention);
    app.update(Msg::Resize(120, 40));
    // The tokens after the step shown are not drawn; live steps arriving meanwhile wait.
    let s = screen(&app, 120, 40);
    let side: String = s
        .lines()
        .map(|l| l.chars().skip(71).collect::<String>())
        .collect();
    assert!(
        side.contains("scattered") && !side.contains("through"),
        "{s}"
    );
    app.update(Msg::Engine(morphkv::engine::Event::Step(Box::new(
        demo::step(48, 8),
    ))));
    assert_eq!(app.step.seen, 37);
    assert_eq!(app.travelling(), Some((37, 48, 0)));
    // A click on the slider's bar travels to the step under it.
    let mut term = Terminal::new(TestBackend::new(120, 40)).unwrap();
    let theme = Theme::dark();
    let mut hits = HitMap::default();
    term.draw(|f| hits = view::render(f, &app, &theme)).unwrap();
    let buf = term.backend().buffer().clone();
    let (x, y) = (0..40)
        .flat_map(|y| (0..120).map(move |x| (x, y)))
        .find(|&(x, y)| buf[(x, y)].symbol() == "●")
        .expect("the knob");
    let Msg::Action(Action::TravelTo(t)) = hits.click(x, y) else {
        panic!("the knob answers a click")
    };
    assert!((36..=38).contains(&t), "{t}");
    // The left end is the oldest step; Esc goes live, the newest step shown at once.
    let row_start = (0..x).rev().find(|&c| buf[(c, y)].symbol() == "│").unwrap() + 1;
    assert_eq!(hits.click(row_start, y), Msg::Action(Action::TravelTo(0)));
    assert!(app.update(Msg::Action(Action::Stop)).is_empty());
    assert_eq!((app.travel, app.step.seen), (None, 48));
    // ] on the newest step is live already; [ travels one back.
    assert_eq!(
        app.update(Msg::Action(Action::Travel(-1))),
        vec![morphkv::tui::app::Effect::Engine(
            morphkv::engine::Command::Travel(Some(47))
        )]
    );
    assert!(app.update(Msg::Action(Action::Travel(1))).is_empty());
    assert_eq!(app.travel, None);
}
