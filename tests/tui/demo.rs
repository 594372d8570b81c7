//! A recorded conversation (engine events as the real engine sends them, with synthetic cache
//! numbers) that drives the app without a model, and a renderer of a screen buffer to SVG.
//! The snapshot tests (`tests/tui.rs`) and the README's screenshots (`cargo run --release
//! --example screenshots`) both include this file; it is no part of the library.

// Each includer uses a part.
#![allow(dead_code)]

use std::fmt::Write as _;

use ratatui::buffer::Buffer;
use ratatui::style::{Color, Modifier};

use morphkv::cache::{CacheConfig, LayerAttention};
use morphkv::engine::{CompareStep, Divergence, Event, HeadFate, StepInfo, TokenFate, TurnStats};
use morphkv::sampling::SamplingParams;
use morphkv::tui::app::{Action, App, Effect, Msg, Panel};

pub const LAYERS: usize = 4;
pub const HEADS: usize = 2;
const BUDGET: usize = 24;
const WINDOW: usize = 6;
/// MorphKV's recent share (75% of 24) protects more than the window.
const PROTECTED: usize = 18;

/// The cache after `seen` tokens at budget 24, window 6, the last 18 protected: older tokens
/// are kept by fewer and fewer (layer, head) pairs.
pub fn step(seen: usize, evicted: usize) -> StepInfo {
    let pairs = LAYERS * HEADS;
    let window_from = seen.saturating_sub(WINDOW);
    let protected_from = seen.saturating_sub(PROTECTED);
    let retention = (0..seen)
        .map(|p| {
            if seen <= BUDGET || p >= protected_from {
                pairs as u16
            } else {
                ((p * 7 + 3) % (pairs + 1)) as u16
            }
        })
        .collect();
    StepInfo {
        seen,
        retained: seen.min(BUDGET),
        budget: BUDGET,
        kv_bytes: seen.min(BUDGET) * 4096,
        profile_bytes: seen.min(BUDGET) * 512,
        full_kv_bytes: seen * 4096,
        window_from,
        protected_from,
        sinks: 0,
        evicted,
        retention,
        pairs,
        focus: None,
        attention: (0..LAYERS)
            .map(|l| LayerAttention {
                window: 0.5,
                sinks: 0.1 * l as f32,
                old: 0.5 - 0.1 * l as f32,
                top: vec![(0, 0.3), (seen.saturating_sub(1) as u32, 0.2)],
            })
            .collect(),
        decode_tps: 30.0,
        inspect: None,
        compare: None,
        travel: None,
        history_from: 0,
    }
}

/// A made-up fate of the token at `pos` after `seen` tokens, for the inspector's snapshots:
/// kept by some (layer, head) pairs with a score, evicted from the others at a step.
pub fn fate(pos: usize, seen: usize) -> TokenFate {
    TokenFate {
        pos,
        heads: (0..LAYERS)
            .map(|l| {
                (0..HEADS)
                    .map(|h| {
                        if (l + h + pos).is_multiple_of(3) {
                            HeadFate::Evicted {
                                step: (pos + BUDGET + l).min(seen),
                                score: 0.0012 * (l + 1) as f32,
                            }
                        } else {
                            HeadFate::Kept(0.031 * (h + 1) as f32 + 0.1 * l as f32)
                        }
                    })
                    .collect()
            })
            .collect(),
    }
}

/// The prompt's tokens as the engine reports them.
pub const PROMPT: [&str; 14] = [
    "<|im_start|>",
    "user",
    "\n",
    "Why",
    " is",
    " the",
    " sky",
    " blue",
    "?",
    "<|im_end|>",
    "\n",
    "<|im_start|>",
    "assistant",
    "\n",
];

/// The answer's tokens.
pub const ANSWER: [&str; 33] = [
    "The",
    " sky",
    " looks",
    " blue",
    " because",
    " air",
    " scatters",
    " **short**",
    " wavelengths",
    " of",
    " sunlight",
    " more",
    " than",
    " long",
    " ones",
    ":",
    "\n",
    "-",
    " blue",
    " light",
    " is",
    " scattered",
    " about",
    " five",
    " times",
    " more",
    "\n",
    "-",
    " red",
    " light",
    " passes",
    " through",
    ".",
];

/// The recorded conversation: a question, a streamed answer with a step per token.
pub fn recorded() -> Vec<Msg> {
    let mut msgs = vec![Msg::Engine(Event::Ready {
        model: "smollm2-135m-instruct".into(),
        device: "cpu".into(),
        layers: LAYERS,
        kv_heads: HEADS,
        context: 8192,
    })];
    for c in "Why is the sky blue?".chars() {
        msgs.push(Msg::Action(Action::Insert(c)));
    }
    msgs.push(Msg::Action(Action::Submit));
    msgs.push(Msg::Engine(Event::Fed(
        PROMPT.iter().map(|s| s.to_string()).collect(),
    )));
    msgs.push(Msg::Engine(Event::Step(Box::new(step(PROMPT.len(), 0)))));
    for (i, t) in ANSWER.iter().enumerate() {
        msgs.push(Msg::Engine(Event::Token {
            token: t.to_string(),
            text: t.to_string(),
        }));
        let seen = PROMPT.len() + i + 1;
        msgs.push(Msg::Engine(Event::Step(Box::new(step(
            seen,
            usize::from(seen > BUDGET) * 8,
        )))));
    }
    msgs.push(Msg::Engine(Event::Finished {
        text: ANSWER.concat(),
        stats: TurnStats {
            prompt_tokens: PROMPT.len(),
            prompt_tps: 210.0,
            generated: ANSWER.len(),
            decode_tps: 31.5,
        },
        cancelled: false,
    }));
    msgs
}

/// The cache settings the recording's steps describe.
pub fn cache_config() -> CacheConfig {
    CacheConfig {
        budget: BUDGET,
        window: Some(WINDOW),
        ..CacheConfig::default()
    }
}

/// An app that has played the whole recording.
pub fn app_after_recording() -> App {
    let mut app = App::new(cache_config(), SamplingParams::greedy(), 256);
    for m in recorded() {
        app.update(m);
    }
    app
}

/// The app travelled `back` steps from the end of the recording with `panel` showing, the
/// engine's answer in; and what the key asked of the engine.
pub fn app_travelled(panel: Panel, back: usize) -> (App, Vec<Effect>) {
    let mut app = app_after_recording();
    app.panel = Some(panel);
    let fx = app.update(Msg::Action(Action::Travel(-(back as isize))));
    let t = app.step.seen - back;
    let mut info = step(t, 8);
    info.travel = Some(morphkv::engine::Travel {
        step: t,
        latest: t + back,
        oldest: 0,
    });
    app.update(Msg::Engine(Event::Step(Box::new(info))));
    (app, fx)
}

/// The second cache of compare mode (H2O at the same budget) after `seen` tokens: it keeps
/// other old tokens than the first.
pub fn other_step(seen: usize) -> StepInfo {
    let mut s = step(seen, 0);
    let pairs = s.pairs;
    // H2O's recent half.
    s.protected_from = seen.saturating_sub(BUDGET / 2);
    s.retention = (0..seen)
        .map(|p| {
            if seen <= BUDGET || p >= s.protected_from {
                pairs as u16
            } else {
                ((p * 5 + 1) % (pairs + 1)) as u16
            }
        })
        .collect();
    s.kv_bytes = seen.min(BUDGET) * 4096;
    s.profile_bytes = seen.min(BUDGET) * 64;
    s.attention.clear();
    s
}

/// The recording in compare mode against H2O b24: each step carries the second cache, each
/// answer token its divergence (every fifth token the two caches' top-1 differ).
pub fn recorded_comparing() -> Vec<Msg> {
    let mut out = Vec::new();
    let mut index = 0;
    for m in recorded() {
        match m {
            Msg::Engine(Event::Ready { .. }) => {
                out.push(m);
                out.push(Msg::Engine(Event::Comparing(Some("h2o b24 w6".into()))));
            }
            Msg::Engine(Event::Step(mut s)) => {
                s.compare = Some(Box::new(CompareStep {
                    policy: "h2o".into(),
                    cost: 0.92,
                    step: other_step(s.seen),
                }));
                out.push(Msg::Engine(Event::Step(s)));
            }
            Msg::Engine(Event::Token { ref token, .. }) => {
                let differs = index % 5 == 3;
                let d = Divergence {
                    index,
                    token: index as u32,
                    kl: 0.0005 * (1 + (index * 7) % 11) as f32 * if differs { 40.0 } else { 1.0 },
                    main_top1: index as u32,
                    other_top1: if differs { 9999 } else { index as u32 },
                    main_text: token.clone(),
                    other_text: if differs {
                        " the".into()
                    } else {
                        token.clone()
                    },
                };
                index += 1;
                out.push(m);
                out.push(Msg::Engine(Event::Divergence(d)));
            }
            m => out.push(m),
        }
    }
    out
}

/// An app that has played the compare-mode recording.
pub fn app_comparing() -> App {
    let mut app = App::new(cache_config(), SamplingParams::greedy(), 256);
    for m in recorded_comparing() {
        app.update(m);
    }
    app
}

fn hex(c: Color, default: &str) -> String {
    let named = |i: usize| {
        [
            "#000000", "#cd3131", "#0dbc79", "#e5e510", "#2472c8", "#bc3fbc", "#11a8cd", "#e5e5e5",
            "#666666", "#f14c4c", "#23d18b", "#f5f543", "#3b8eea", "#d670d6", "#29b8db", "#ffffff",
        ][i]
            .to_string()
    };
    match c {
        Color::Reset => default.to_string(),
        Color::Rgb(r, g, b) => format!("#{r:02x}{g:02x}{b:02x}"),
        Color::Black => named(0),
        Color::Red => named(1),
        Color::Green => named(2),
        Color::Yellow => named(3),
        Color::Blue => named(4),
        Color::Magenta => named(5),
        Color::Cyan => named(6),
        Color::Gray => named(7),
        Color::DarkGray => named(8),
        Color::LightRed => named(9),
        Color::LightGreen => named(10),
        Color::LightYellow => named(11),
        Color::LightBlue => named(12),
        Color::LightMagenta => named(13),
        Color::LightCyan => named(14),
        Color::White => named(15),
        Color::Indexed(i) if i < 16 => named(i as usize),
        Color::Indexed(_) => default.to_string(),
    }
}

/// A screen buffer as an SVG image (monospace cells, their colours and bold), as a terminal
/// with `fg`/`bg` defaults would show it.
pub fn svg(buf: &Buffer, fg: &str, bg: &str) -> String {
    let (cw, ch) = (8.4, 17.0);
    let area = buf.area;
    let (w, h) = (f64::from(area.width) * cw, f64::from(area.height) * ch);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" font-size="14">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="{bg}"/>"#);
    for y in 0..area.height {
        for x in 0..area.width {
            let cell = &buf[(x, y)];
            let reversed = cell.modifier.contains(Modifier::REVERSED);
            let (mut f, mut b) = (hex(cell.fg, fg), hex(cell.bg, bg));
            if reversed {
                std::mem::swap(&mut f, &mut b);
            }
            let (px, py) = (f64::from(x) * cw, f64::from(y) * ch);
            if b != bg {
                let _ = writeln!(
                    s,
                    r#"<rect x="{px:.1}" y="{py:.1}" width="{cw:.1}" height="{ch:.1}" fill="{b}"/>"#
                );
            }
            let sym = cell.symbol();
            if sym.trim().is_empty() {
                continue;
            }
            let sym = sym
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;");
            let weight = if cell.modifier.contains(Modifier::BOLD) {
                r#" font-weight="bold""#
            } else {
                ""
            };
            let deco = if cell.modifier.contains(Modifier::UNDERLINED) {
                r#" text-decoration="underline""#
            } else {
                ""
            };
            let opacity = if cell.modifier.contains(Modifier::DIM) {
                r#" opacity="0.6""#
            } else {
                ""
            };
            let _ = writeln!(
                s,
                r#"<text x="{px:.1}" y="{:.1}" fill="{f}"{weight}{deco}{opacity}>{sym}</text>"#,
                py + ch * 0.78
            );
        }
    }
    s.push_str("</svg>\n");
    s
}
