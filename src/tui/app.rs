//! The chat's state and its update function (The Elm Architecture): every key, click and
//! engine event becomes a [`Msg`]; [`App::update`] changes the state and returns the
//! [`Effect`]s for the outside world (engine commands, saving, quitting). No terminal, thread,
//! drawing or model here, so all of it is testable with plain values. The slash commands are
//! in `app/commands.rs`.

use crate::cache::CacheConfig;
use crate::chat::{Message, Role};
use crate::engine::{Command, Event, StepInfo, TurnStats, Watch};
use crate::sampling::SamplingParams;

mod commands;
mod compare;
#[cfg(test)]
mod tests;
mod texts;
mod travel;

pub use commands::SLASH_HELP;
pub use compare::{CompareView, DIVERGENCES};
pub use texts::TokenTexts;

/// Side panels beside the chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Panel {
    /// The conversation's tokens coloured by how much of the cache retains them.
    Retention,
    /// Retained tokens and KV bytes over time against the full cache.
    Cache,
    /// Where the last token's attention went, per layer.
    Attention,
    /// One chosen token's fate in every layer and KV head.
    Inspector,
}

impl Panel {
    pub const ALL: [Panel; 4] = [
        Panel::Retention,
        Panel::Cache,
        Panel::Attention,
        Panel::Inspector,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Panel::Retention => "Retention",
            Panel::Cache => "Cache",
            Panel::Attention => "Attention",
            Panel::Inspector => "Inspector",
        }
    }
}

/// What the user can do; keys map to these in `keys.rs`, clicks through the hit map of the
/// frame on screen (`hits.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Insert(char),
    Newline,
    Backspace,
    Delete,
    Left,
    Right,
    Home,
    End,
    /// Send the input (a message or a slash command).
    Submit,
    /// Stop the answer being generated; close the help.
    Stop,
    ScrollUp(usize),
    ScrollDown(usize),
    /// Show the next panel (none after the last).
    CyclePanel,
    Help,
    Regenerate,
    EditLast,
    NewChat,
    /// Previous / next layer (or head, with `head`) in the retention and attention views.
    FocusPrev {
        head: bool,
    },
    FocusNext {
        head: bool,
    },
    /// Step mode: pause / resume generation.
    TogglePause,
    /// Step mode: generate one token.
    StepOne,
    /// Inspect the token this many positions before (negative) or after the inspected one.
    Inspect(isize),
    /// Inspect the token at this position (a click on it).
    Select(usize),
    /// A click where nothing answers one (it closes the help, like any key).
    Click,
    /// Time travel: this many steps back (negative) or on from the step shown.
    Travel(isize),
    /// Time travel to the cache as it was after this step (a click on the slider).
    TravelTo(usize),
    /// Back to the live step.
    Live,
    Quit,
}

/// Everything that can happen to the app.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    Action(Action),
    Engine(Event),
    /// The terminal was resized (its new size).
    Resize(u16, u16),
    /// The saved chats, newest first (for the chat list).
    Chats(Vec<ChatEntry>),
    /// A saved chat was opened: its messages replace the conversation.
    Opened(Box<super::store::SavedChat>),
}

/// One saved chat in the list.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatEntry {
    pub id: String,
    pub title: String,
    pub messages: usize,
    /// The chat on screen.
    pub current: bool,
    /// What is wrong with a file that is not a readable chat (shown, never hidden).
    pub damaged: Option<String>,
}

/// The chat list overlay.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatList {
    pub items: Vec<ChatEntry>,
    pub selected: usize,
}

/// What the app asks the outside world to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Engine(Command),
    /// Stop the answer being generated.
    Cancel,
    /// Save the conversation (after each finished message).
    Save,
    /// Export the conversation as Markdown to this file.
    Export(String),
    /// Step mode on or off.
    Pause(bool),
    /// Step mode: one more token.
    Advance,
    /// Read the saved chats (answered with [`Msg::Chats`]).
    ListChats,
    /// Open this saved chat (answered with [`Msg::Opened`]).
    OpenChat(String),
    /// Delete this saved chat (then list them again).
    DeleteChat(String),
    /// Give the chat on screen this title.
    Rename(String),
    Quit,
}

/// Whether the engine is working.
#[derive(Debug, Clone, PartialEq)]
pub enum Busy {
    Idle,
    Loading,
    Prefill { done: usize, total: usize },
    Generating,
}

/// A point of the cache chart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CachePoint {
    pub seen: usize,
    pub retained: usize,
    pub kv_bytes: usize,
    pub full_kv_bytes: usize,
    pub evicted: usize,
}

/// The whole UI state.
#[derive(Debug, Clone)]
pub struct App {
    /// Finished messages (system prompt first, if any).
    pub messages: Vec<Message>,
    /// The answer being generated.
    pub(crate) streaming: Option<String>,
    pub(crate) input: String,
    /// Cursor in `input`, in chars.
    pub(crate) cursor: usize,
    pub(crate) model: String,
    pub(crate) device: String,
    pub(crate) layers: usize,
    pub(crate) kv_heads: usize,
    pub(crate) context: usize,
    pub(crate) cache: CacheConfig,
    pub(crate) sampling: SamplingParams,
    pub(crate) max_tokens: usize,
    pub step: StepInfo,
    pub history: Vec<CachePoint>,
    /// The token texts the panels can still show, by position.
    pub tokens: TokenTexts,
    pub panel: Option<Panel>,
    /// Lines scrolled up from the bottom of the transcript.
    pub(crate) scroll: usize,
    /// A message for the user: (text, is an error).
    pub(crate) notice: Option<(String, bool)>,
    pub(crate) busy: Busy,
    pub(crate) help: bool,
    /// (layer, KV head) the retention view details; None = all.
    pub(crate) focus: Option<(usize, usize)>,
    /// Layer the attention panel details.
    pub(crate) attn_layer: usize,
    pub(crate) last_stats: Option<TurnStats>,
    /// Tokens per second of the answer in progress.
    pub(crate) live_tps: f64,
    pub(crate) size: (u16, u16),
    pub(crate) theme: String,
    /// Step mode: generation waits for Ctrl+T before each token.
    pub(crate) paused: bool,
    /// The token the inspector details (a position in the conversation).
    pub inspect: Option<usize>,
    /// Key bindings from the config file, for the help: (key, what it does).
    pub(crate) custom_keys: Vec<(String, String)>,
    /// The saved-chat list, while it is open.
    pub(crate) chats: Option<ChatList>,
    /// Compare mode, while it is on.
    pub compare: Option<CompareView>,
    pub(crate) quit: bool,
    /// Time travel: the step the panels show (None: live), and meanwhile the newest live
    /// step, which keeps arriving while an answer streams.
    pub travel: Option<usize>,
    pub(crate) live: Option<Box<StepInfo>>,
}

impl App {
    pub fn new(cache: CacheConfig, sampling: SamplingParams, max_tokens: usize) -> Self {
        Self {
            messages: Vec::new(),
            streaming: None,
            input: String::new(),
            cursor: 0,
            model: String::new(),
            device: String::new(),
            layers: 0,
            kv_heads: 0,
            context: 0,
            cache,
            sampling,
            max_tokens,
            step: StepInfo::default(),
            history: Vec::new(),
            tokens: TokenTexts::default(),
            panel: Some(Panel::Retention),
            scroll: 0,
            notice: None,
            busy: Busy::Loading,
            help: false,
            focus: None,
            attn_layer: 0,
            last_stats: None,
            live_tps: 0.0,
            size: (80, 24),
            theme: "dark".into(),
            paused: false,
            inspect: None,
            custom_keys: Vec::new(),
            chats: None,
            compare: None,
            quit: false,
            travel: None,
            live: None,
        }
    }

    /// What the panel on screen needs the engine to compute at each step: attention only
    /// for the attention panel, retention counts only for the retention panel (the other
    /// panels and the status bar read what every step reports).
    pub fn watch(&self) -> Watch {
        Watch {
            attention: self.panel == Some(Panel::Attention),
            retention: self.panel == Some(Panel::Retention),
        }
    }

    fn idle(&self) -> bool {
        self.busy == Busy::Idle
    }

    fn note(&mut self, text: impl Into<String>) {
        self.notice = Some((text.into(), false));
    }

    /// Takes a saved chat's messages and says what it now runs under (its own saved cache
    /// settings unless flags replaced them; `model` may differ from the one it ran with).
    pub fn resume(&mut self, chat: &super::store::SavedChat, model: &str) {
        self.messages = chat.messages.clone();
        let c = &self.cache;
        let mut text = format!(
            "resumed \"{}\" ({} messages) under {} budget {} window {}",
            chat.title,
            chat.messages.len(),
            c.policy.name(),
            c.budget,
            c.effective_window()
        );
        if chat.model != model {
            text.push_str(&format!(
                "; it ran with {}, it continues with {model}",
                chat.model
            ));
        }
        self.note(text);
    }

    fn error(&mut self, text: impl Into<String>) {
        self.notice = Some((text.into(), true));
    }

    /// The one place state changes.
    pub fn update(&mut self, msg: Msg) -> Vec<Effect> {
        match msg {
            Msg::Resize(w, h) => {
                self.size = (w, h);
                Vec::new()
            }
            Msg::Engine(e) => self.on_engine(e),
            Msg::Action(a) if self.chats.is_some() => self.on_chat_list(a),
            Msg::Action(a) => self.on_action(a),
            Msg::Chats(items) => {
                if items.is_empty() {
                    self.chats = None;
                    self.note("no saved chats yet");
                } else {
                    let selected = items.iter().position(|c| c.current).unwrap_or(0);
                    self.chats = Some(ChatList { items, selected });
                }
                Vec::new()
            }
            Msg::Opened(chat) => {
                self.chats = None;
                self.messages = chat.messages.clone();
                self.streaming = None;
                self.tokens.clear();
                self.history.clear();
                self.step = StepInfo::default();
                (self.travel, self.live) = (None, None);
                self.scroll = 0;
                self.inspect = None;
                // It runs under the settings it saved, as `--resume` does.
                let mut fx = Vec::new();
                match chat.cache_over(&self.cache) {
                    Ok(cache) => {
                        if cache != self.cache {
                            self.cache = cache.clone();
                            fx.push(Effect::Engine(Command::SetCache { cache, now: false }));
                        }
                        let c = &self.cache;
                        self.note(format!(
                            "chat opened under {} budget {} window {}: the next message reads it into the cache",
                            c.policy.name(),
                            c.budget,
                            c.effective_window()
                        ));
                    }
                    Err(e) => self.error(format!(
                        "chat opened under the current settings, its own refused ({e}): the next message reads it into the cache"
                    )),
                }
                fx.extend([
                    Effect::Engine(Command::Reset),
                    Effect::Engine(Command::Inspect(None)),
                ]);
                fx
            }
        }
    }

    fn on_engine(&mut self, e: Event) -> Vec<Effect> {
        match e {
            Event::Ready {
                model,
                device,
                layers,
                kv_heads,
                context,
            } => {
                (self.model, self.device) = (model, device);
                (self.layers, self.kv_heads, self.context) = (layers, kv_heads, context);
                self.attn_layer = layers.saturating_sub(1);
                self.busy = Busy::Idle;
            }
            Event::Fed(tokens) => self.tokens.extend(tokens),
            Event::Progress { done, total } => self.busy = Busy::Prefill { done, total },
            Event::Token { token, text } => {
                self.busy = Busy::Generating;
                self.tokens.push(token);
                self.streaming
                    .get_or_insert_with(String::new)
                    .push_str(&text);
            }
            Event::Step(info) if info.travel.is_some() => self.on_travel_step(*info),
            Event::Step(info) => {
                // A conversation prefilled again from the start restarts the token list.
                if info.seen < self.tokens.len() {
                    self.tokens.truncate(info.seen);
                }
                self.history.push(CachePoint {
                    seen: info.seen,
                    retained: info.retained,
                    kv_bytes: info.kv_bytes,
                    full_kv_bytes: info.full_kv_bytes,
                    evicted: info.evicted,
                });
                if self.history.len() > 4096 {
                    self.history.drain(..1024);
                }
                self.tokens.prune(&info, self.inspect);
                self.on_live_step(*info);
            }
            Event::Finished {
                text,
                stats,
                cancelled,
            } => {
                self.streaming = None;
                self.busy = Busy::Idle;
                self.live_tps = stats.decode_tps;
                self.last_stats = Some(stats);
                self.messages.push(Message::assistant(text));
                if cancelled {
                    self.note("stopped; the partial answer is kept");
                }
                return vec![Effect::Save];
            }
            Event::Prefilled { tokens } => {
                self.busy = Busy::Idle;
                self.note(format!(
                    "the conversation ({tokens} tokens) now runs under {} budget {} window {}",
                    self.cache.policy.name(),
                    self.cache.budget,
                    self.cache.window()
                ));
            }
            Event::Exported(path) => self.note(format!("eviction trace written to {path}")),
            Event::Comparing(Some(label)) => {
                // The second cache has read the conversation so far.
                if matches!(self.busy, Busy::Prefill { .. }) {
                    self.busy = Busy::Idle;
                }
                self.note(format!(
                    "compare mode: a second cache ({label}) follows the conversation; /compare off ends it"
                ));
                self.compare = Some(CompareView::new(label));
            }
            Event::Comparing(None) => {
                if self.compare.take().is_some() {
                    self.note("compare mode is off");
                }
            }
            Event::Divergence(d) => {
                if let Some(c) = &mut self.compare {
                    c.push(d);
                }
            }
            Event::CompareFailed(msg) => {
                self.compare = None;
                self.error(format!("compare mode stopped: {msg}"));
            }
            Event::Failed(msg) => {
                self.busy = Busy::Idle;
                if let Some(partial) = self.streaming.take() {
                    self.messages.push(Message::assistant(partial));
                }
                self.error(format!("engine: {msg}"));
                return vec![Effect::Save];
            }
        }
        Vec::new()
    }

    fn on_action(&mut self, a: Action) -> Vec<Effect> {
        if self.help && !matches!(a, Action::Quit) {
            self.help = false;
            return Vec::new();
        }
        match a {
            Action::Insert(c) => {
                let at = self.byte_at(self.cursor);
                self.input.insert(at, c);
                self.cursor += 1;
            }
            Action::Newline => {
                let at = self.byte_at(self.cursor);
                self.input.insert(at, '\n');
                self.cursor += 1;
            }
            Action::Backspace => {
                if self.cursor > 0 {
                    self.cursor -= 1;
                    let at = self.byte_at(self.cursor);
                    self.input.remove(at);
                }
            }
            Action::Delete => {
                if self.cursor < self.input.chars().count() {
                    let at = self.byte_at(self.cursor);
                    self.input.remove(at);
                }
            }
            Action::Left => self.cursor = self.cursor.saturating_sub(1),
            Action::Right => self.cursor = (self.cursor + 1).min(self.input.chars().count()),
            Action::Home => self.cursor = 0,
            Action::End => self.cursor = self.input.chars().count(),
            Action::ScrollUp(n) => self.scroll = self.scroll.saturating_add(n),
            Action::ScrollDown(n) => self.scroll = self.scroll.saturating_sub(n),
            Action::CyclePanel => {
                self.panel = match self.panel {
                    None => Some(Panel::ALL[0]),
                    Some(p) => {
                        let i = Panel::ALL.iter().position(|x| *x == p).unwrap_or(0);
                        Panel::ALL.get(i + 1).copied()
                    }
                };
                if self.panel == Some(Panel::Inspector) && self.inspect.is_none() {
                    return self.inspect_default();
                }
            }
            Action::Inspect(delta) => {
                let last = self.step.seen.saturating_sub(1);
                let from = self.inspect.unwrap_or(last) as isize;
                let to = (from + delta).clamp(0, last as isize) as usize;
                return self.select_token(to);
            }
            Action::Select(pos) => return self.select_token(pos),
            Action::Click => {}
            Action::Travel(delta) => return self.travel_by(delta),
            Action::TravelTo(step) => return self.travel_to(step),
            Action::Live => return self.go_live(),
            Action::Stop if self.travel.is_some() => return self.go_live(),
            Action::Help => self.help = true,
            Action::TogglePause => {
                self.paused = !self.paused;
                self.note(if self.paused {
                    "step mode: Ctrl+T generates one token (watch the panels), Ctrl+P resumes"
                } else {
                    "resumed"
                });
                return vec![Effect::Pause(self.paused)];
            }
            Action::StepOne => {
                if !self.paused {
                    self.note("Ctrl+P pauses first (step mode)");
                    return Vec::new();
                }
                return vec![Effect::Advance];
            }
            Action::Stop => {
                if self.busy == Busy::Generating || matches!(self.busy, Busy::Prefill { .. }) {
                    return vec![Effect::Cancel];
                }
            }
            Action::Quit => {
                self.quit = true;
                let mut fx = Vec::new();
                if self.busy != Busy::Idle && self.busy != Busy::Loading {
                    fx.push(Effect::Cancel);
                }
                fx.push(Effect::Quit);
                return fx;
            }
            Action::Submit => return self.submit(),
            Action::Regenerate => return self.regenerate(),
            Action::EditLast => self.edit_last(),
            Action::NewChat => return self.new_chat(),
            Action::FocusPrev { head } | Action::FocusNext { head } => {
                let up = matches!(a, Action::FocusNext { .. });
                self.move_focus(head, up);
                let mut fx = vec![Effect::Engine(Command::Focus(self.focus))];
                // The panels show an earlier step: it is asked for again with the new focus.
                fx.extend(
                    self.travel
                        .map(|t| Effect::Engine(Command::Travel(Some(t)))),
                );
                return fx;
            }
        }
        Vec::new()
    }

    /// Keys while the chat list is open: move, open, delete, close.
    fn on_chat_list(&mut self, a: Action) -> Vec<Effect> {
        let Some(list) = self.chats.as_mut() else {
            return Vec::new();
        };
        let n = list.items.len();
        match a {
            Action::ScrollUp(_) => list.selected = list.selected.saturating_sub(1),
            Action::ScrollDown(_) => list.selected = (list.selected + 1).min(n.saturating_sub(1)),
            Action::Submit => {
                let entry = list.items[list.selected.min(n - 1)].clone();
                if entry.current {
                    self.chats = None;
                    return Vec::new();
                }
                if let Some(reason) = &entry.damaged {
                    self.error(format!("{reason} (Del deletes it)"));
                    return Vec::new();
                }
                if !self.idle() {
                    self.error("wait for the answer to finish (Esc stops it)");
                    return Vec::new();
                }
                return vec![Effect::Save, Effect::OpenChat(entry.id)];
            }
            Action::Delete => {
                let entry = list.items[list.selected.min(n - 1)].clone();
                if entry.current {
                    self.error("this chat is open: open another one first, or Ctrl+N");
                    return Vec::new();
                }
                return vec![Effect::DeleteChat(entry.id)];
            }
            Action::Quit => {
                self.chats = None;
                return self.on_action(Action::Quit);
            }
            Action::Stop | Action::Help => self.chats = None,
            _ => {}
        }
        Vec::new()
    }

    /// Inspects the token at `pos` (and shows the inspector).
    fn select_token(&mut self, pos: usize) -> Vec<Effect> {
        if pos >= self.step.seen {
            self.error(format!(
                "no token {pos} yet: the conversation has {} tokens",
                self.step.seen
            ));
            return Vec::new();
        }
        self.inspect = Some(pos);
        if self.panel != Some(Panel::Retention) {
            self.panel = Some(Panel::Inspector);
        }
        vec![Effect::Engine(Command::Inspect(Some(pos)))]
    }

    /// Opening the inspector with nothing chosen: the newest token outside the protected
    /// span (the window, or the recent share: the first whose fate the policy decides).
    fn inspect_default(&mut self) -> Vec<Effect> {
        if self.step.seen == 0 {
            return Vec::new();
        }
        let pos = self
            .step
            .protected_from
            .saturating_sub(1)
            .min(self.step.seen - 1);
        self.inspect = Some(pos);
        vec![Effect::Engine(Command::Inspect(Some(pos)))]
    }

    fn byte_at(&self, chars: usize) -> usize {
        self.input
            .char_indices()
            .nth(chars)
            .map_or(self.input.len(), |(i, _)| i)
    }

    fn move_focus(&mut self, head: bool, up: bool) {
        let (layers, heads) = (self.layers.max(1), self.kv_heads.max(1));
        let (l, h) = self.focus.unwrap_or((self.attn_layer, 0));
        let step = |v: usize, n: usize| if up { (v + 1) % n } else { (v + n - 1) % n };
        self.focus = Some(if head {
            (l, step(h, heads))
        } else {
            (step(l, layers), h)
        });
        if let Some((l, _)) = self.focus {
            self.attn_layer = l;
        }
    }

    fn submit(&mut self) -> Vec<Effect> {
        let text = self.input.trim().to_string();
        if text.is_empty() {
            return Vec::new();
        }
        if text.starts_with('/') {
            self.input.clear();
            self.cursor = 0;
            return self.slash(&text);
        }
        if self.device == crate::engine::replay::DEVICE {
            self.error("this is a replay of a trace: there is no model to answer (Ctrl+C quits)");
            return Vec::new();
        }
        if !self.idle() {
            self.error("wait for the answer to finish (Esc stops it)");
            return Vec::new();
        }
        self.input.clear();
        self.cursor = 0;
        self.scroll = 0;
        self.notice = None;
        self.messages.push(Message::user(text));
        self.busy = Busy::Generating;
        vec![
            Effect::Save,
            Effect::Engine(Command::Reply(self.messages.clone())),
        ]
    }

    fn regenerate(&mut self) -> Vec<Effect> {
        if !self.idle() {
            return Vec::new();
        }
        if self
            .messages
            .last()
            .is_some_and(|m| m.role == Role::Assistant)
        {
            self.messages.pop();
        }
        if !crate::engine::answerable(&self.messages) {
            self.error("nothing to regenerate yet");
            return Vec::new();
        }
        self.busy = Busy::Generating;
        self.note("regenerating the last answer");
        vec![Effect::Engine(Command::Reply(self.messages.clone()))]
    }

    fn edit_last(&mut self) {
        if !self.idle() {
            return;
        }
        let Some(i) = self.messages.iter().rposition(|m| m.role == Role::User) else {
            self.error("no message to edit yet");
            return;
        };
        let msg = self.messages.remove(i);
        self.messages.truncate(i);
        self.input = msg.content;
        self.cursor = self.input.chars().count();
        self.note("editing your last message: Enter sends it again");
    }

    fn new_chat(&mut self) -> Vec<Effect> {
        if !self.idle() {
            return Vec::new();
        }
        let system = self
            .messages
            .first()
            .filter(|m| m.role == Role::System)
            .cloned();
        self.messages.clear();
        self.messages.extend(system);
        self.tokens.clear();
        self.history.clear();
        self.step = StepInfo::default();
        (self.travel, self.live) = (None, None);
        self.scroll = 0;
        self.inspect = None;
        self.note("new chat");
        vec![
            Effect::Engine(Command::Reset),
            Effect::Engine(Command::Inspect(None)),
            Effect::Save,
        ]
    }
}
