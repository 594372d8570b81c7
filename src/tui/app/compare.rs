//! Compare mode in the app: `/compare`, and what the divergence strip shows, bounded
//! whatever the conversation's length.

use std::collections::VecDeque;

use super::{App, Effect};
use crate::cache::{limits, PolicyKind};
use crate::engine::{Command, Divergence};

/// Divergences kept for the strip: more than any screen shows.
pub const DIVERGENCES: usize = 512;

/// What the app knows of compare mode while it is on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompareView {
    /// The second cache: policy, budget and window.
    pub label: String,
    /// The newest divergences of the answer in progress (or the last one), oldest first.
    pub recent: VecDeque<Divergence>,
    /// Over the whole of that answer: tokens, tokens whose top-1 differs, summed KL.
    pub tokens: usize,
    pub differs: usize,
    pub kl_sum: f64,
}

impl CompareView {
    pub fn new(label: String) -> Self {
        Self {
            label,
            ..Self::default()
        }
    }

    /// A token's divergence; the first of an answer starts the strip again.
    pub fn push(&mut self, d: Divergence) {
        if d.index == 0 {
            self.recent.clear();
            (self.tokens, self.differs, self.kl_sum) = (0, 0, 0.0);
        }
        self.tokens += 1;
        self.differs += usize::from(d.differs());
        if d.kl.is_finite() {
            self.kl_sum += f64::from(d.kl);
        }
        if self.recent.len() == DIVERGENCES {
            self.recent.pop_front();
        }
        self.recent.push_back(d);
    }

    /// Mean KL over the answer's tokens.
    pub fn mean_kl(&self) -> f64 {
        if self.tokens == 0 {
            0.0
        } else {
            self.kl_sum / self.tokens as f64
        }
    }

    /// The newest token whose top-1 differs.
    pub fn last_differing(&self) -> Option<&Divergence> {
        self.recent.iter().rev().find(|d| d.differs())
    }
}

impl App {
    /// `/compare POLICY [budget N] [window N]` and `/compare off`.
    pub(super) fn compare_command(&mut self, args: &[&str]) -> Vec<Effect> {
        const USAGE: &str = "usage: /compare POLICY [budget N] [window N], or /compare off";
        match args {
            ["off"] => {
                if self.compare.is_none() {
                    self.note("compare mode is already off");
                    return Vec::new();
                }
                vec![Effect::Engine(Command::Compare(None))]
            }
            [policy, rest @ ..] => {
                let mut cfg = self.cache.clone();
                match policy.parse::<PolicyKind>() {
                    Ok(p) => cfg.policy = p,
                    Err(e) => {
                        self.error(format!("/compare: {e}"));
                        return Vec::new();
                    }
                }
                let mut it = rest.chunks(2);
                for pair in it.by_ref() {
                    let parsed = match pair {
                        ["budget", v] => limits::BUDGET.parse(v).map(|b| cfg.budget = b),
                        ["window", v] => limits::WINDOW.parse(v).map(|w| cfg.window = Some(w)),
                        _ => {
                            self.error(format!(
                                "/compare: `{}` is not understood; {USAGE}",
                                pair.join(" ")
                            ));
                            return Vec::new();
                        }
                    };
                    if let Err(e) = parsed {
                        self.error(format!("/compare {}: {e}", pair[0]));
                        return Vec::new();
                    }
                }
                if let Err(e) = cfg.validate_with(&|name| format!("/compare {name}")) {
                    self.error(e.to_string());
                    return Vec::new();
                }
                self.note(format!(
                    "comparing with {} b{} w{}: its cache reads the conversation so far…",
                    cfg.policy.name(),
                    cfg.budget,
                    cfg.effective_window()
                ));
                vec![Effect::Engine(Command::Compare(Some(cfg)))]
            }
            [] => {
                self.error(USAGE);
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn d(index: usize, kl: f32, a: u32, b: u32) -> Divergence {
        Divergence {
            index,
            token: a,
            kl,
            main_top1: a,
            other_top1: b,
            main_text: format!("t{a}"),
            other_text: format!("t{b}"),
        }
    }

    fn submit(a: &mut App, line: &str) -> Vec<Effect> {
        a.input = line.into();
        a.cursor = line.chars().count();
        a.update(super::super::Msg::Action(super::super::Action::Submit))
    }

    #[test]
    fn the_command_asks_the_engine_for_a_second_cache() {
        let mut a = App::new(
            crate::cache::CacheConfig::default(),
            crate::sampling::SamplingParams::greedy(),
            256,
        );
        a.busy = super::super::Busy::Idle;
        let fx = submit(&mut a, "/compare h2o budget 300 window 20");
        let Some(Effect::Engine(Command::Compare(Some(c)))) = fx.first() else {
            panic!("{fx:?}");
        };
        assert_eq!((c.policy.name(), c.budget, c.window()), ("h2o", 300, 20));
        // The rest of the settings are the main cache's.
        assert_eq!(c.positions, a.cache.positions);
        for bad in [
            "/compare nosuch",
            "/compare h2o budget x",
            "/compare h2o budget 0",
            "/compare h2o depth 3",
            "/compare",
        ] {
            assert!(submit(&mut a, bad).is_empty(), "{bad}");
            assert!(
                a.notice.as_ref().is_some_and(|n| n.1),
                "{bad}: {:?}",
                a.notice
            );
        }
        // Off when it is off: said, nothing sent.
        assert!(submit(&mut a, "/compare off").is_empty());
        // A long conversation is read with progress; the chat is idle again when it is in.
        a.update(super::super::Msg::Engine(crate::engine::Event::Progress {
            done: 512,
            total: 2000,
        }));
        assert!(!a.idle());
        a.update(super::super::Msg::Engine(crate::engine::Event::Comparing(
            Some("h2o b300 w20".into()),
        )));
        assert!(a.idle());
        assert_eq!(a.compare.as_ref().unwrap().label, "h2o b300 w20");
        assert_eq!(
            submit(&mut a, "/compare off"),
            vec![Effect::Engine(Command::Compare(None))]
        );
        a.update(super::super::Msg::Engine(crate::engine::Event::Comparing(
            None,
        )));
        assert!(a.compare.is_none());
    }

    #[test]
    fn the_strip_is_bounded_and_restarts_with_each_answer() {
        let mut v = CompareView::new("h2o b300 w30".into());
        for i in 0..2000 {
            v.push(d(i, 0.5, 1, if i % 4 == 0 { 2 } else { 1 }));
        }
        assert_eq!(v.recent.len(), DIVERGENCES);
        assert_eq!(v.tokens, 2000);
        assert_eq!(v.differs, 500);
        assert!((v.mean_kl() - 0.5).abs() < 1e-9);
        assert_eq!(v.last_differing().unwrap().index, 1996);
        v.push(d(0, 0.1, 3, 3));
        assert_eq!((v.recent.len(), v.tokens, v.differs), (1, 1, 0));
        assert!(v.last_differing().is_none());
    }
}
