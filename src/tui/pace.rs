//! When to redraw: at once for what the user did (keys, mouse, resize, the end of an answer),
//! at most once a frame for the token stream. Drawing the whole screen for every token would
//! take a core's worth of time from the model on a small machine (`bench --chat` measures it).

use std::time::{Duration, Instant};

/// The shortest time between two draws caused by the token stream (30 a second).
pub const FRAME: Duration = Duration::from_millis(33);

/// Whether the screen is stale, and how soon it must be drawn.
#[derive(Debug, Clone)]
pub struct Pacer {
    last: Instant,
    dirty: bool,
    urgent: bool,
}

impl Default for Pacer {
    fn default() -> Self {
        Self {
            last: Instant::now(),
            dirty: true,
            urgent: true,
        }
    }
}

impl Pacer {
    /// Something changed what the screen shows; `urgent` when the user is waiting for it.
    pub fn changed(&mut self, urgent: bool) {
        self.dirty = true;
        self.urgent |= urgent;
    }

    /// When to draw next: None when nothing changed, else the instant (now or past for urgent
    /// changes, one frame after the last draw for the token stream).
    pub fn due(&self) -> Option<Instant> {
        if !self.dirty {
            None
        } else if self.urgent {
            Some(self.last)
        } else {
            Some(self.last + FRAME)
        }
    }

    /// Whether a draw is due now.
    pub fn ready(&self) -> bool {
        self.due().is_some_and(|t| t <= Instant::now())
    }

    /// The screen was just drawn.
    pub fn drawn(&mut self) {
        (self.last, self.dirty, self.urgent) = (Instant::now(), false, false);
    }
}

/// Whether an engine event only advances the token stream (drawn at the frame rate) rather
/// than ending or changing something the user waits on (drawn at once).
pub fn streaming(e: &crate::engine::Event) -> bool {
    use crate::engine::Event;
    matches!(
        e,
        Event::Token { .. } | Event::Step(_) | Event::Progress { .. } | Event::Fed(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urgent_changes_draw_at_once_and_the_stream_once_a_frame() {
        let mut p = Pacer::default();
        p.drawn();
        assert_eq!(p.due(), None);
        p.changed(false);
        let due = p.due().unwrap();
        assert!(due > Instant::now() && due <= Instant::now() + FRAME);
        assert!(!p.ready());
        p.changed(true);
        assert!(p.ready());
        p.drawn();
        assert!(!p.ready());
        assert_eq!(p.due(), None);
    }
}
