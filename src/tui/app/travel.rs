//! Time travel in the app: the step the panels show while the live steps keep arriving.
//!
//! Keys and the slider ask the engine for the cache as it was after a step
//! ([`Command::Travel`]); its answer (a [`StepInfo`] marked `travel`) is what the panels
//! draw until the user returns to live. Live steps meanwhile go to the cache chart's history
//! and are kept aside, shown again at once on return.

use super::{App, Effect};
use crate::engine::{Command, StepInfo};

impl App {
    /// The newest live step, whether the panels show it or an earlier one.
    pub fn live_step(&self) -> &StepInfo {
        self.live.as_deref().unwrap_or(&self.step)
    }

    /// While travelling: (the step shown, the live step, the oldest step reachable).
    pub fn travelling(&self) -> Option<(usize, usize, usize)> {
        let t = self.travel?;
        let live = self.live_step();
        Some((t, live.seen, live.history_from.min(live.seen)))
    }

    /// A live step: shown, or kept aside while the panels show an earlier one.
    pub(super) fn on_live_step(&mut self, info: StepInfo) {
        match self.travel {
            // The conversation was read again from the start: that step is gone.
            Some(t) if info.seen < t => {
                self.travel = None;
                self.live = None;
                self.step = info;
            }
            Some(_) => self.live = Some(Box::new(info)),
            None => self.step = info,
        }
    }

    /// The engine's answer to a travel: shown unless the user went live meanwhile.
    pub(super) fn on_travel_step(&mut self, info: StepInfo) {
        if self.travel.is_some() {
            self.step = info;
        }
    }

    /// Travels `delta` steps from the step shown (the live one when live).
    pub(super) fn travel_by(&mut self, delta: isize) -> Vec<Effect> {
        let live = self.live_step();
        let (latest, oldest) = (live.seen, live.history_from.min(live.seen));
        if latest == 0 {
            self.note("nothing to travel through yet: the conversation is empty");
            return Vec::new();
        }
        let from = self.travel.unwrap_or(latest);
        if delta < 0 && from <= oldest {
            self.note(format!(
                "step {oldest} is as far back as the eviction history reaches"
            ));
            return Vec::new();
        }
        let to = from.saturating_add_signed(delta).clamp(oldest, latest);
        self.travel_to(to)
    }

    /// Shows the cache as it was after `step` (the live one from the last step on).
    pub(super) fn travel_to(&mut self, step: usize) -> Vec<Effect> {
        let live = self.live_step();
        let (latest, oldest) = (live.seen, live.history_from.min(live.seen));
        if step >= latest {
            return self.go_live();
        }
        let step = step.max(oldest);
        if self.travel.is_none() {
            self.live = Some(Box::new(self.step.clone()));
        }
        self.travel = Some(step);
        vec![Effect::Engine(Command::Travel(Some(step)))]
    }

    /// Back to the live step.
    pub(super) fn go_live(&mut self) -> Vec<Effect> {
        if let Some(live) = self.live.take() {
            self.step = *live;
        }
        self.travel = None;
        Vec::new()
    }
}
