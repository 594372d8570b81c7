//! The chat's state and its update function (The Elm Architecture): every key, engine event
//! and tick becomes a [`Msg`]; [`App::update`] changes the state and returns the [`Effect`]s
//! for the outside world (engine commands, saving, quitting). No terminal, thread or model
//! here, so all of it is testable with plain values.

use crate::cache::{limits, CacheConfig, PolicyKind};
use crate::chat::{Message, Role};
use crate::engine::{Command, Event, StepInfo, TurnStats};
use crate::sampling::SamplingParams;

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

/// What the user can do; keys map to these in [`super::keys`].
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
    /// A mouse click at this cell of the screen (selects the token under it).
    Click {
        x: u16,
        y: u16,
    },
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
    Opened(Vec<Message>),
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
    pub streaming: Option<String>,
    pub input: String,
    /// Cursor in `input`, in chars.
    pub cursor: usize,
    pub model: String,
    pub device: String,
    pub layers: usize,
    pub kv_heads: usize,
    pub context: usize,
    pub cache: CacheConfig,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub step: StepInfo,
    pub history: Vec<CachePoint>,
    /// Each position's token text, for the retention view.
    pub tokens: Vec<String>,
    pub panel: Option<Panel>,
    /// Lines scrolled up from the bottom of the transcript.
    pub scroll: usize,
    /// A message for the user: (text, is an error).
    pub notice: Option<(String, bool)>,
    pub busy: Busy,
    pub help: bool,
    /// (layer, KV head) the retention view details; None = all.
    pub focus: Option<(usize, usize)>,
    /// Layer the attention panel details.
    pub attn_layer: usize,
    pub last_stats: Option<TurnStats>,
    /// Tokens per second of the answer in progress.
    pub live_tps: f64,
    pub size: (u16, u16),
    pub theme: String,
    /// Step mode: generation waits for Ctrl+T before each token.
    pub paused: bool,
    /// The token the inspector details (a position in the conversation).
    pub inspect: Option<usize>,
    /// Key bindings from the config file, for the help: (key, what it does).
    pub custom_keys: Vec<(String, String)>,
    /// The saved-chat list, while it is open.
    pub chats: Option<ChatList>,
    pub quit: bool,
}

/// Slash commands, for `/help` and the help overlay.
pub const SLASH_HELP: [(&str, &str); 17] = [
    ("/set temp X", "temperature (0 = greedy)"),
    ("/set top-k|top-p|min-p V", "sampling filters"),
    ("/set seed N", "sampling seed"),
    ("/set max-tokens N", "longest answer"),
    ("/set policy P [next]", crate::cache::POLICY_LIST),
    ("/set budget N [next]", "tokens kept per KV head"),
    ("/set window N [next]", "recent tokens always kept"),
    ("/set system TEXT", "system prompt (applies to a new chat)"),
    ("/focus L H | all", "retention of one layer and KV head"),
    ("/show", "current settings"),
    ("/clear", "new chat"),
    ("/chats", "saved chats: ↑↓ Enter opens, Del deletes"),
    ("/rename TITLE", "rename this chat"),
    ("/inspect N", "inspect the token at position N"),
    ("/save FILE.md", "export the chat as Markdown"),
    ("/trace FILE.jsonl", "export the eviction trace"),
    ("/bye", "quit"),
];

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
            tokens: Vec::new(),
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
            quit: false,
        }
    }

    fn idle(&self) -> bool {
        self.busy == Busy::Idle
    }

    fn note(&mut self, text: impl Into<String>) {
        self.notice = Some((text.into(), false));
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
            Msg::Opened(messages) => {
                self.chats = None;
                self.messages = messages;
                self.streaming = None;
                self.tokens.clear();
                self.history.clear();
                self.step = StepInfo::default();
                self.scroll = 0;
                self.inspect = None;
                self.note("chat opened: the next message reads it into the cache");
                vec![
                    Effect::Engine(Command::Reset),
                    Effect::Engine(Command::Inspect(None)),
                ]
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
                self.step = *info;
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
                    self.cache.window
                ));
            }
            Event::Exported(path) => self.note(format!("eviction trace written to {path}")),
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
            Action::Click { x, y } => {
                if let Some(pos) = super::view::token_at(self, x, y) {
                    return self.select_token(pos);
                }
            }
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
                return vec![Effect::Engine(Command::Focus(self.focus))];
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

    /// Opening the inspector with nothing chosen: the newest token outside the window (the
    /// first whose fate the policy decides).
    fn inspect_default(&mut self) -> Vec<Effect> {
        if self.step.seen == 0 {
            return Vec::new();
        }
        let pos = self
            .step
            .window_from
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
        self.scroll = 0;
        self.inspect = None;
        self.note("new chat");
        vec![
            Effect::Engine(Command::Reset),
            Effect::Engine(Command::Inspect(None)),
            Effect::Save,
        ]
    }

    fn slash(&mut self, line: &str) -> Vec<Effect> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["/bye"] | ["/quit"] | ["/exit"] => self.on_action(Action::Quit),
            ["/help"] | ["/?"] => {
                self.help = true;
                Vec::new()
            }
            ["/clear"] | ["/new"] => self.new_chat(),
            ["/show"] => {
                let c = &self.cache;
                let s = &self.sampling;
                self.note(format!(
                    "model {} | policy {} budget {} window {} | temp {} top-k {} top-p {} min-p {} seed {} | max-tokens {}",
                    self.model, c.policy.name(), c.budget, c.window, s.temp, s.top_k, s.top_p,
                    s.min_p, s.seed, self.max_tokens
                ));
                Vec::new()
            }
            ["/save", file] => vec![Effect::Export((*file).to_string())],
            ["/chats"] => vec![Effect::ListChats],
            ["/rename", rest @ ..] if !rest.is_empty() => {
                let title = rest.join(" ");
                self.note(format!("this chat is now “{title}”"));
                vec![Effect::Rename(title)]
            }
            ["/trace", file] => vec![Effect::Engine(Command::ExportTrace((*file).into()))],
            ["/trace"] => {
                self.error("/trace needs a file name, e.g. /trace evictions.jsonl");
                Vec::new()
            }
            ["/inspect", n] => match n.parse::<usize>() {
                Ok(p) => self.select_token(p),
                Err(_) => {
                    self.error(format!("/inspect takes a token position, not `{n}`"));
                    Vec::new()
                }
            },
            ["/save"] => {
                self.error("/save needs a file name, e.g. /save chat.md");
                Vec::new()
            }
            ["/focus", "all"] => {
                self.focus = None;
                self.note("retention: all layers and heads");
                vec![Effect::Engine(Command::Focus(None))]
            }
            ["/focus", l, h] => match (l.parse::<usize>(), h.parse::<usize>()) {
                (Ok(l), Ok(h)) if l < self.layers && h < self.kv_heads => {
                    self.focus = Some((l, h));
                    self.attn_layer = l;
                    self.note(format!("retention: layer {l}, KV head {h}"));
                    vec![Effect::Engine(Command::Focus(self.focus))]
                }
                _ => {
                    self.error(format!(
                        "/focus takes a layer below {} and a KV head below {}, or `all`",
                        self.layers, self.kv_heads
                    ));
                    Vec::new()
                }
            },
            ["/set", "system", rest @ ..] if !rest.is_empty() => {
                let text = rest.join(" ");
                self.messages.retain(|m| m.role != Role::System);
                self.messages.insert(0, Message::system(text));
                self.note("system prompt set: it applies from the next message (the conversation is prefilled again)");
                Vec::new()
            }
            ["/set", key, value, rest @ ..] => self.set(key, value, rest.first().copied()),
            ["/set", ..] => {
                self.error("usage: /set KEY VALUE (see /help)");
                Vec::new()
            }
            _ => {
                self.error(format!("unknown command `{}` (see /help)", words[0]));
                Vec::new()
            }
        }
    }

    fn set(&mut self, key: &str, value: &str, when: Option<&str>) -> Vec<Effect> {
        let bad = |me: &mut Self, what: &str| {
            me.error(format!("/set {key}: `{value}` is not {what}"));
            Vec::new()
        };
        let mut sampling = self.sampling.clone();
        match key {
            "temp" | "temperature" => match value.parse() {
                Ok(v) => sampling.temp = v,
                Err(_) => return bad(self, "a number"),
            },
            "top-k" | "top_k" => match value.parse() {
                Ok(v) => sampling.top_k = v,
                Err(_) => return bad(self, "a whole number"),
            },
            "top-p" | "top_p" => match value.parse() {
                Ok(v) => sampling.top_p = v,
                Err(_) => return bad(self, "a number"),
            },
            "min-p" | "min_p" => match value.parse() {
                Ok(v) => sampling.min_p = v,
                Err(_) => return bad(self, "a number"),
            },
            "seed" => match value.parse() {
                Ok(v) => sampling.seed = v,
                Err(_) => return bad(self, "a whole number"),
            },
            "max-tokens" | "num_predict" => match value.parse::<usize>() {
                Ok(v) if v > 0 => {
                    self.max_tokens = v;
                    self.note(format!("answers stop after {v} tokens"));
                    return vec![Effect::Engine(Command::SetMaxTokens(v))];
                }
                _ => return bad(self, "a positive whole number"),
            },
            "policy" | "budget" | "window" => return self.set_cache(key, value, when),
            _ => {
                self.error(format!(
                    "/set: unknown setting `{key}` (temp, top-k, top-p, min-p, seed, max-tokens, policy, budget, window, system)"
                ));
                return Vec::new();
            }
        }
        if let Err(e) = sampling.validate() {
            self.error(e.to_string());
            return Vec::new();
        }
        self.sampling = sampling.clone();
        self.note(format!("/set {key} {value}"));
        vec![Effect::Engine(Command::SetSampling(sampling))]
    }

    fn set_cache(&mut self, key: &str, value: &str, when: Option<&str>) -> Vec<Effect> {
        let mut cfg = self.cache.clone();
        let parsed = match key {
            "policy" => value.parse::<PolicyKind>().map(|p| cfg.policy = p),
            "budget" => limits::BUDGET
                .parse(value)
                .map(|b| cfg.budget = b)
                .map_err(|e| crate::Error::arg("budget", e)),
            _ => limits::WINDOW
                .parse(value)
                .map(|w| cfg.window = w)
                .map_err(|e| crate::Error::arg("window", e)),
        };
        if let Err(e) = parsed.and_then(|()| cfg.validate_with(&|name| name.to_string())) {
            self.error(format!("/set {key}: {e}"));
            return Vec::new();
        }
        let next = when == Some("next");
        let now = !next && self.messages.iter().any(|m| m.role != Role::System);
        self.cache = cfg.clone();
        self.note(if now && self.idle() {
            format!("/set {key} {value}: applies now (the conversation is prefilled again under it)")
        } else if now {
            format!("/set {key} {value}: applies when this answer ends (the conversation is then prefilled again)")
        } else {
            format!("/set {key} {value}: applies from the next new conversation")
        });
        if now && self.idle() {
            self.busy = Busy::Prefill {
                done: 0,
                total: self.step.seen.max(1),
            };
        }
        vec![Effect::Engine(Command::SetCache { cache: cfg, now })]
    }

    /// The conversation as Markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::from("# morphkv chat\n\n");
        s.push_str(&format!(
            "Model `{}`, cache `{}` budget {} window {}.\n\n",
            self.model,
            self.cache.policy.name(),
            self.cache.budget,
            self.cache.window
        ));
        for m in &self.messages {
            let who = match m.role {
                Role::System => "System",
                Role::User => "You",
                Role::Assistant => "Assistant",
            };
            s.push_str(&format!("**{who}:**\n\n{}\n\n", m.content.trim_end()));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> App {
        let mut a = App::new(CacheConfig::default(), SamplingParams::greedy(), 256);
        a.update(Msg::Engine(Event::Ready {
            model: "smol".into(),
            device: "cpu".into(),
            layers: 4,
            kv_heads: 2,
            context: 8192,
        }));
        a
    }

    fn typed(a: &mut App, s: &str) {
        for c in s.chars() {
            a.update(Msg::Action(Action::Insert(c)));
        }
    }

    #[test]
    fn submitting_sends_the_conversation_and_saves() {
        let mut a = app();
        typed(&mut a, "hello");
        let fx = a.update(Msg::Action(Action::Submit));
        assert_eq!(a.messages, vec![Message::user("hello")]);
        assert!(a.input.is_empty());
        assert_eq!(
            fx,
            vec![
                Effect::Save,
                Effect::Engine(Command::Reply(vec![Message::user("hello")]))
            ]
        );
        // A second message while answering is refused.
        typed(&mut a, "more");
        assert!(a.update(Msg::Action(Action::Submit)).is_empty());
        assert!(a.notice.as_ref().is_some_and(|n| n.1));
    }

    #[test]
    fn tokens_stream_into_the_answer_and_finish_as_a_message() {
        let mut a = app();
        typed(&mut a, "hi");
        a.update(Msg::Action(Action::Submit));
        for piece in ["Hel", "lo", "!"] {
            a.update(Msg::Engine(Event::Token {
                token: piece.into(),
                text: piece.into(),
            }));
        }
        assert_eq!(a.streaming.as_deref(), Some("Hello!"));
        let fx = a.update(Msg::Engine(Event::Finished {
            text: "Hello!".into(),
            stats: TurnStats::default(),
            cancelled: false,
        }));
        assert_eq!(fx, vec![Effect::Save]);
        assert_eq!(a.messages.last(), Some(&Message::assistant("Hello!")));
        assert_eq!(a.busy, Busy::Idle);
        assert_eq!(a.tokens.len(), 3);
    }

    #[test]
    fn esc_cancels_only_while_generating() {
        let mut a = app();
        assert!(a.update(Msg::Action(Action::Stop)).is_empty());
        typed(&mut a, "hi");
        a.update(Msg::Action(Action::Submit));
        assert_eq!(a.update(Msg::Action(Action::Stop)), vec![Effect::Cancel]);
    }

    #[test]
    fn editing_the_cursor_handles_multibyte_text() {
        let mut a = app();
        typed(&mut a, "héllo");
        a.update(Msg::Action(Action::Left));
        a.update(Msg::Action(Action::Left));
        a.update(Msg::Action(Action::Backspace));
        a.update(Msg::Action(Action::Backspace));
        assert_eq!(a.input, "hlo");
        a.update(Msg::Action(Action::Home));
        a.update(Msg::Action(Action::Delete));
        assert_eq!(a.input, "lo");
        a.update(Msg::Action(Action::Newline));
        assert_eq!(a.input, "\nlo");
    }

    #[test]
    fn slash_set_changes_sampling_and_rejects_bad_values() {
        let mut a = app();
        typed(&mut a, "/set temp 0.7");
        let fx = a.update(Msg::Action(Action::Submit));
        assert_eq!(a.sampling.temp, 0.7);
        assert!(matches!(
            fx.as_slice(),
            [Effect::Engine(Command::SetSampling(_))]
        ));
        typed(&mut a, "/set temp hot");
        assert!(a.update(Msg::Action(Action::Submit)).is_empty());
        let (text, err) = a.notice.clone().unwrap();
        assert!(err && text.contains("`hot` is not a number"), "{text}");
        typed(&mut a, "/set top-p 2");
        assert!(a.update(Msg::Action(Action::Submit)).is_empty());
        assert!(a.notice.as_ref().unwrap().1);
        typed(&mut a, "/frobnicate");
        a.update(Msg::Action(Action::Submit));
        assert!(a
            .notice
            .as_ref()
            .unwrap()
            .0
            .contains("unknown command `/frobnicate`"));
        typed(&mut a, "/set colour red");
        a.update(Msg::Action(Action::Submit));
        assert!(a
            .notice
            .as_ref()
            .unwrap()
            .0
            .contains("unknown setting `colour`"));
    }

    #[test]
    fn slash_set_policy_says_when_it_applies() {
        let mut a = app();
        typed(&mut a, "/set policy h2o");
        let fx = a.update(Msg::Action(Action::Submit));
        assert_eq!(a.cache.policy, PolicyKind::H2o);
        assert!(a
            .notice
            .as_ref()
            .unwrap()
            .0
            .contains("next new conversation"));
        assert!(matches!(
            fx.as_slice(),
            [Effect::Engine(Command::SetCache { now: false, .. })]
        ));
        // With a conversation: applies now, prefilling again.
        a.messages.push(Message::user("hi"));
        a.messages.push(Message::assistant("hello"));
        typed(&mut a, "/set budget 300");
        let fx = a.update(Msg::Action(Action::Submit));
        assert!(a.notice.as_ref().unwrap().0.contains("applies now"));
        assert!(matches!(
            fx.as_slice(),
            [Effect::Engine(Command::SetCache { now: true, .. })]
        ));
        assert!(matches!(a.busy, Busy::Prefill { .. }));
        // Invalid settings are refused with the reason.
        a.busy = Busy::Idle;
        typed(&mut a, "/set policy lru");
        assert!(a.update(Msg::Action(Action::Submit)).is_empty());
        assert!(a
            .notice
            .as_ref()
            .unwrap()
            .0
            .contains("unknown policy `lru`"));
        typed(&mut a, "/set budget 10");
        assert!(a.update(Msg::Action(Action::Submit)).is_empty());
        assert!(a.notice.as_ref().unwrap().1);
    }

    #[test]
    fn regenerate_and_edit_rewind_the_conversation() {
        let mut a = app();
        a.messages = vec![Message::user("q1"), Message::assistant("a1")];
        let fx = a.update(Msg::Action(Action::Regenerate));
        assert_eq!(
            fx,
            vec![Effect::Engine(Command::Reply(vec![Message::user("q1")]))]
        );
        a.busy = Busy::Idle;
        a.messages.push(Message::assistant("a1'"));
        a.update(Msg::Action(Action::EditLast));
        assert!(a.messages.is_empty());
        assert_eq!(a.input, "q1");
    }

    #[test]
    fn panels_cycle_and_focus_wraps() {
        let mut a = app();
        assert_eq!(a.panel, Some(Panel::Retention));
        a.update(Msg::Action(Action::CyclePanel));
        assert_eq!(a.panel, Some(Panel::Cache));
        a.update(Msg::Action(Action::CyclePanel));
        a.update(Msg::Action(Action::CyclePanel));
        assert_eq!(a.panel, Some(Panel::Inspector));
        a.update(Msg::Action(Action::CyclePanel));
        assert_eq!(a.panel, None);
        let fx = a.update(Msg::Action(Action::FocusNext { head: false }));
        assert_eq!(fx, vec![Effect::Engine(Command::Focus(Some((0, 0))))]);
        a.update(Msg::Action(Action::FocusPrev { head: true }));
        assert_eq!(a.focus, Some((0, 1)));
    }

    #[test]
    fn step_mode_pauses_and_advances() {
        let mut a = app();
        assert!(a.update(Msg::Action(Action::StepOne)).is_empty());
        assert_eq!(
            a.update(Msg::Action(Action::TogglePause)),
            vec![Effect::Pause(true)]
        );
        assert_eq!(
            a.update(Msg::Action(Action::StepOne)),
            vec![Effect::Advance]
        );
        assert_eq!(
            a.update(Msg::Action(Action::TogglePause)),
            vec![Effect::Pause(false)]
        );
    }

    #[test]
    fn quit_cancels_a_running_answer_first() {
        let mut a = app();
        a.busy = Busy::Generating;
        assert_eq!(
            a.update(Msg::Action(Action::Quit)),
            vec![Effect::Cancel, Effect::Quit]
        );
        assert!(a.quit);
    }

    #[test]
    fn inspector_commands_choose_a_token_and_export_the_trace() {
        let mut a = app();
        a.update(Msg::Engine(Event::Step(Box::new(StepInfo {
            seen: 50,
            window_from: 40,
            ..StepInfo::default()
        }))));
        // Opening the inspector picks the newest token outside the window.
        a.panel = Some(Panel::Attention);
        assert_eq!(
            a.update(Msg::Action(Action::CyclePanel)),
            vec![Effect::Engine(Command::Inspect(Some(39)))]
        );
        assert_eq!(a.panel, Some(Panel::Inspector));
        typed(&mut a, "/inspect 7");
        assert_eq!(
            a.update(Msg::Action(Action::Submit)),
            vec![Effect::Engine(Command::Inspect(Some(7)))]
        );
        typed(&mut a, "/inspect 50");
        assert!(a.update(Msg::Action(Action::Submit)).is_empty());
        assert!(a
            .notice
            .as_ref()
            .is_some_and(|(t, err)| *err && t.contains("50 tokens")));
        assert_eq!(a.inspect, Some(7));
        assert_eq!(
            a.update(Msg::Action(Action::Inspect(-10))),
            vec![Effect::Engine(Command::Inspect(Some(0)))]
        );
        typed(&mut a, "/trace t.jsonl");
        assert_eq!(
            a.update(Msg::Action(Action::Submit)),
            vec![Effect::Engine(Command::ExportTrace("t.jsonl".into()))]
        );
        a.update(Msg::Engine(Event::Exported("t.jsonl".into())));
        assert!(a
            .notice
            .as_ref()
            .is_some_and(|(t, _)| t.contains("t.jsonl")));
        // A new chat forgets the choice.
        a.update(Msg::Action(Action::NewChat));
        assert_eq!(a.inspect, None);
    }

    #[test]
    fn the_chat_list_opens_deletes_and_renames() {
        let mut a = app();
        typed(&mut a, "/chats");
        assert_eq!(
            a.update(Msg::Action(Action::Submit)),
            vec![Effect::ListChats]
        );
        let entry = |id: &str, current: bool| ChatEntry {
            id: id.into(),
            title: format!("chat {id}"),
            messages: 2,
            current,
            damaged: None,
        };
        a.update(Msg::Chats(vec![entry("b", false), entry("a", true)]));
        // The list opens on the chat on screen.
        assert_eq!(a.chats.as_ref().unwrap().selected, 1);
        // It cannot delete the open chat; it can another.
        assert!(a.update(Msg::Action(Action::Delete)).is_empty());
        a.update(Msg::Action(Action::ScrollUp(1)));
        assert_eq!(
            a.update(Msg::Action(Action::Delete)),
            vec![Effect::DeleteChat("b".into())]
        );
        assert_eq!(
            a.update(Msg::Action(Action::Submit)),
            vec![Effect::Save, Effect::OpenChat("b".into())]
        );
        let fx = a.update(Msg::Opened(vec![Message::user("old question")]));
        assert!(a.chats.is_none());
        assert_eq!(a.messages, vec![Message::user("old question")]);
        assert_eq!(fx[0], Effect::Engine(Command::Reset));
        // Typing goes nowhere while the list is open; Esc closes it.
        a.update(Msg::Chats(vec![entry("b", true)]));
        a.update(Msg::Action(Action::Insert('x')));
        assert!(a.input.is_empty());
        a.update(Msg::Action(Action::Stop));
        assert!(a.chats.is_none());
        typed(&mut a, "/rename Lighthouse notes");
        assert_eq!(
            a.update(Msg::Action(Action::Submit)),
            vec![Effect::Rename("Lighthouse notes".into())]
        );
    }

    #[test]
    fn a_damaged_chat_is_listed_cannot_be_opened_and_can_be_deleted() {
        let mut a = app();
        typed(&mut a, "/chats");
        a.update(Msg::Action(Action::Submit));
        let damaged = ChatEntry {
            id: "20260101-000000-1".into(),
            title: String::new(),
            messages: 0,
            current: false,
            damaged: Some("chats/20260101-000000-1.json: empty file, not a saved chat".into()),
        };
        a.update(Msg::Chats(vec![damaged]));
        assert!(a.update(Msg::Action(Action::Submit)).is_empty());
        let (text, is_error) = a.notice.clone().unwrap();
        assert!(
            is_error && text.contains("empty file") && text.contains("Del"),
            "{text}"
        );
        assert_eq!(
            a.update(Msg::Action(Action::Delete)),
            vec![Effect::DeleteChat("20260101-000000-1".into())]
        );
    }
}
