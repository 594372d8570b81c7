//! Cancel, pause and step: the commands read between the tokens of an answer.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::mpsc::Receiver;

use super::Command;

/// Cancel, pause and step: the commands that act while an answer is being generated.
#[derive(Default)]
pub(super) struct Control {
    /// Step mode: each token waits for a credit.
    pub(super) paused: bool,
    pub(super) credits: usize,
    /// The answer in progress is to stop.
    pub(super) cancelled: bool,
    /// The thread is to stop after it.
    pub(super) quit: bool,
    /// Other commands that arrived meanwhile, run when the answer ends.
    pub(super) deferred: VecDeque<Command>,
}

impl Control {
    /// Takes a control command; returns any other command.
    pub(super) fn take(&mut self, cmd: Command) -> Option<Command> {
        match cmd {
            Command::Cancel => self.cancelled = true,
            Command::Pause(on) => (self.paused, self.credits) = (on, 0),
            Command::Advance => self.credits += 1,
            other => return Some(other),
        }
        None
    }

    /// Before each token of an answer: reads what arrived, waits (blocked, no polling) while
    /// paused without a credit, spends a credit; breaks when the answer is to stop.
    ///
    /// Each other command goes to `answer` first, which returns true for those it answered
    /// at once (time travel, while paused too); the rest are deferred.
    pub(super) fn gate_with(
        &mut self,
        rx: &Receiver<Command>,
        answer: &mut dyn FnMut(&Command) -> bool,
    ) -> ControlFlow<()> {
        let mut arrive = |c: &mut Self, cmd: Command| {
            if cmd == Command::Quit {
                (c.cancelled, c.quit) = (true, true);
            } else if let Some(other) = c.take(cmd) {
                if !answer(&other) {
                    c.deferred.push_back(other);
                }
            }
        };
        while let Ok(cmd) = rx.try_recv() {
            arrive(self, cmd);
        }
        while self.paused && self.credits == 0 && !self.cancelled {
            match rx.recv() {
                Ok(cmd) => arrive(self, cmd),
                Err(_) => (self.cancelled, self.quit) = (true, true),
            }
        }
        if self.cancelled {
            return ControlFlow::Break(());
        }
        if self.paused {
            self.credits -= 1;
        }
        ControlFlow::Continue(())
    }
}
