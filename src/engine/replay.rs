//! `morphkv replay TRACE.jsonl`: a trace in the chat's panels, without a model. A thread
//! speaks the engine's protocol ([`Command`]s in, [`Event`]s out) over the trace, so the chat
//! runs on it unchanged: it is ready at once, its tokens are the trace's, its steps the
//! cache's as the history rebuilds them (the live one is the trace's end), and time travel
//! works as in a live chat. What needs a model (an answer, new settings) is refused with a
//! message saying so.

use std::path::Path;
use std::sync::mpsc::Receiver;

use super::trace::{self, Trace};
use super::travel::{self, Sizes, Travel};
use super::{Command, Engine, Event, Settings, StepInfo};
use crate::cache::{CacheConfig, Positions};
use crate::error::{Error, Result};
use crate::sampling::SamplingParams;

/// The device a replay reports in [`Event::Ready`] (the chat refuses messages on it).
pub const DEVICE: &str = "replay";

/// Most steps a replay sends for the cache chart (the chat keeps 4,096).
const CHART_STEPS: usize = 4096;

/// A trace opened for replay.
pub struct Replay {
    trace: Trace,
    name: String,
    focus: Option<(usize, usize)>,
}

impl Replay {
    /// Reads the trace at `path` (checked: see `engine/trace.rs`).
    pub fn open(path: &Path) -> Result<Self> {
        let trace = trace::read(path)?;
        let name = if trace.header.model.is_empty() {
            path.file_name()
                .map_or("trace".into(), |f| f.to_string_lossy().into_owned())
        } else {
            trace.header.model.clone()
        };
        Ok(Self {
            trace,
            name,
            focus: None,
        })
    }

    /// The settings the trace was recorded with, for the chat's status bar.
    pub fn settings(&self) -> Result<Settings> {
        let h = &self.trace.header;
        let cache = CacheConfig {
            policy: h.policy.parse()?,
            budget: h.budget,
            window: Some(h.window),
            sinks: Some(h.sinks),
            recent: Some(h.recent),
            history: h.history,
            half_life: h.half_life,
            positions: if h.positions == "absolute" {
                Positions::Absolute
            } else {
                Positions::Rebased
            },
            ..CacheConfig::default()
        };
        Ok(Settings {
            cache,
            sampling: SamplingParams::greedy(),
            max_tokens: 1,
        })
    }

    /// The model's name the trace gives (else the file's).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The oldest step the trace reaches back to, and its last.
    pub fn steps(&self) -> (usize, usize) {
        (self.trace.dropped_through, self.trace.header.tokens)
    }

    fn sizes(&self) -> Sizes {
        let h = &self.trace.header;
        Sizes {
            budget: h.budget,
            window: h.effective_window,
            protected: h.protected,
            sinks: h.sinks,
            kv_heads: h.kv_heads,
            pairs: h.pairs(),
            kv_bytes_per_token: h.kv_bytes_per_token,
            profile_bytes_per_token: h.profile_bytes_per_token,
        }
    }

    /// The panels' step after `t` (clamped to the reachable steps); marked travelled unless
    /// it is the last.
    pub fn step_at(&self, t: Option<usize>) -> StepInfo {
        let (oldest, latest) = self.steps();
        let t = t.unwrap_or(latest).clamp(oldest, latest.max(oldest));
        let now: Vec<&[u32]> = self.trace.retained.iter().map(Vec::as_slice).collect();
        let log = &self.trace.evictions;
        let held = travel::held_at(t, &now, log);
        let mut info = travel::step_info(
            t,
            &held,
            travel::evicted_at(t, log),
            &self.sizes(),
            self.focus,
            true,
        );
        info.history_from = oldest;
        if t != latest {
            info.travel = Some(Travel {
                step: t,
                latest,
                oldest,
            });
        }
        info
    }

    /// Everything the chat is told first: ready, then the tokens and a step per step the
    /// live chat reported (a prompt in one), the last with its retention counts.
    pub fn opening(&self) -> Vec<Event> {
        let h = &self.trace.header;
        let (oldest, latest) = self.steps();
        let mut events = vec![Event::Ready {
            model: self.name.clone(),
            device: DEVICE.into(),
            layers: h.layers,
            kv_heads: h.kv_heads,
            context: 0,
        }];
        // The chat keeps the tokens up to each step it is told of: they come before it.
        let mut fed = 0;
        let mut feed = |to: usize, events: &mut Vec<Event>| {
            if to > fed {
                events.push(Event::Fed(h.token_text[fed..to].to_vec()));
                fed = to;
            }
        };
        let inside_prompt = |t: usize| h.prompts.iter().any(|&(a, b)| a < t && t < b);
        let now = self.trace.retained.first().map_or(0, Vec::len);
        let sizes = self.sizes();
        let steps = travel::retained_by_step(oldest, latest, now, self.trace.evictions.iter());
        let chart: Vec<_> = steps
            .into_iter()
            .filter(|&(t, _, _)| t > 0 && t < latest && !inside_prompt(t))
            .collect();
        let skip = chart.len().saturating_sub(CHART_STEPS - 1);
        for (t, retained, evicted) in chart.into_iter().skip(skip) {
            feed(t, &mut events);
            events.push(Event::Step(Box::new(StepInfo {
                history_from: oldest,
                ..sizes.step(t, retained, evicted)
            })));
        }
        feed(h.tokens, &mut events);
        events.push(Event::Step(Box::new(self.step_at(None))));
        events
    }

    /// Answers one command; false when the thread is to stop.
    pub fn answer(&mut self, cmd: Command, send: &dyn Fn(Event)) -> bool {
        let refuse = |what: &str| {
            send(Event::Failed(format!(
                "this is a replay of a trace: there is no model to {what} (Ctrl+C quits)"
            )));
        };
        match cmd {
            Command::Quit => return false,
            Command::Reply(_) => refuse("answer"),
            Command::SetCache { .. } => refuse("read the conversation again"),
            Command::ExportTrace(_) => refuse("record a new trace"),
            Command::Compare(Some(_)) => refuse("feed a second cache"),
            Command::Travel(t) => send(Event::Step(Box::new(self.step_at(t)))),
            Command::Focus(f) => {
                self.focus = f;
                send(Event::Step(Box::new(self.step_at(None))));
            }
            Command::Reset => {
                for e in self.opening().into_iter().skip(1) {
                    send(e);
                }
            }
            Command::Inspect(_)
            | Command::Compare(None)
            | Command::Watch(_)
            | Command::SetSampling(_)
            | Command::SetMaxTokens(_)
            | Command::Cancel
            | Command::Pause(_)
            | Command::Advance => {}
        }
        true
    }

    /// Starts the replay thread: an [`Engine`] handle whose events go to `sink`.
    pub fn spawn(mut self, sink: impl Fn(Event) + Send + 'static) -> Result<Engine> {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("morphkv-replay".into())
            .spawn(move || {
                for e in self.opening() {
                    sink(e);
                }
                run(&mut self, &rx, &sink);
            })
            .map_err(|e| Error::io("replay thread", e))?;
        Ok(Engine {
            commands: tx,
            thread,
        })
    }
}

fn run(r: &mut Replay, rx: &Receiver<Command>, send: &dyn Fn(Event)) {
    while let Ok(cmd) = rx.recv() {
        if !r.answer(cmd, send) {
            return;
        }
    }
}
