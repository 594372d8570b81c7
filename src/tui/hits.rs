//! What a click means where: drawing records the screen areas that answer a click (a token in
//! the retention panel) in a [`HitMap`], and the loop turns a click into a [`Msg`] through the
//! map of the frame on screen. `update` never draws to find out what was clicked.

use ratatui::layout::{Position, Rect};

use super::app::{Action, Msg};

/// What a click on an area selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The token at this position of the conversation.
    Token(usize),
    /// The time-travel slider: its columns from `x` on, `width` of them, stand for the steps
    /// `from..=to`.
    Slider {
        x: u16,
        width: u16,
        from: usize,
        to: usize,
    },
}

impl Target {
    /// The step the slider's column `col` stands for.
    fn step(x: u16, width: u16, from: usize, to: usize, col: u16) -> usize {
        let i = usize::from(col.saturating_sub(x));
        let last = usize::from(width.saturating_sub(1)).max(1);
        from + (to.saturating_sub(from) * i.min(last) + last / 2) / last
    }
}

/// The clickable areas of one frame, later ones on top.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HitMap {
    areas: Vec<(Rect, Target)>,
}

impl HitMap {
    /// Records that a click in `area` means `target`.
    pub fn add(&mut self, area: Rect, target: Target) {
        if area.width > 0 && area.height > 0 {
            self.areas.push((area, target));
        }
    }

    /// Forgets the areas that `cover` hides (an overlay drawn on top).
    pub fn cover(&mut self, cover: Rect) {
        self.areas.retain(|(a, _)| !a.intersects(cover));
    }

    /// What is under the cell (`x`, `y`), if anything.
    pub fn at(&self, x: u16, y: u16) -> Option<Target> {
        let p = Position { x, y };
        self.areas
            .iter()
            .rev()
            .find(|(a, _)| a.contains(p))
            .map(|&(_, t)| t)
    }

    /// The message a left click at (`x`, `y`) stands for: selecting what is there, or a click
    /// on nothing (which, like any key, closes the help).
    pub fn click(&self, x: u16, y: u16) -> Msg {
        Msg::Action(match self.at(x, y) {
            Some(Target::Token(pos)) => Action::Select(pos),
            Some(Target::Slider {
                x: x0,
                width,
                from,
                to,
            }) => Action::TravelTo(Target::step(x0, width, from, to, x)),
            None => Action::Click,
        })
    }

    /// The message of a drag with the left button held at (`x`, `y`): only the slider
    /// answers one (dragged along, beyond its ends too, on its row).
    pub fn drag(&self, x: u16, y: u16) -> Option<Msg> {
        self.areas.iter().rev().find_map(|(a, t)| match *t {
            Target::Slider {
                x: x0,
                width,
                from,
                to,
            } if y == a.y => Some(Msg::Action(Action::TravelTo(Target::step(
                x0,
                width,
                from,
                to,
                x.clamp(x0, x0 + width.saturating_sub(1)),
            )))),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clicks_find_the_area_on_top_and_overlays_hide_what_is_under_them() {
        let mut h = HitMap::default();
        h.add(Rect::new(10, 2, 5, 1), Target::Token(3));
        h.add(Rect::new(15, 2, 4, 1), Target::Token(4));
        h.add(Rect::new(0, 0, 0, 1), Target::Token(9));
        assert_eq!(h.at(10, 2), Some(Target::Token(3)));
        assert_eq!(h.at(18, 2), Some(Target::Token(4)));
        assert_eq!(h.at(19, 2), None);
        assert_eq!(h.click(16, 2), Msg::Action(Action::Select(4)));
        assert_eq!(h.click(0, 0), Msg::Action(Action::Click));
        h.cover(Rect::new(15, 0, 10, 10));
        assert_eq!(h.at(16, 2), None);
        assert_eq!(h.at(10, 2), Some(Target::Token(3)));
    }

    #[test]
    fn the_slider_maps_columns_to_steps_and_answers_drags() {
        let mut h = HitMap::default();
        let slider = Target::Slider {
            x: 10,
            width: 11,
            from: 100,
            to: 200,
        };
        h.add(Rect::new(10, 5, 11, 1), slider);
        assert_eq!(h.click(10, 5), Msg::Action(Action::TravelTo(100)));
        assert_eq!(h.click(15, 5), Msg::Action(Action::TravelTo(150)));
        assert_eq!(h.click(20, 5), Msg::Action(Action::TravelTo(200)));
        // Dragged past its ends, it stops there; on another row nothing answers.
        assert_eq!(h.drag(40, 5), Some(Msg::Action(Action::TravelTo(200))));
        assert_eq!(h.drag(0, 5), Some(Msg::Action(Action::TravelTo(100))));
        assert_eq!(h.drag(15, 6), None);
    }
}
