//! `morphkv chat`: the terminal UI. `chat_cmd` loads the model and spawns the engine; [`run`]
//! takes the engine and the receiver of its events ([`event_channel`]) and drives the screen.
//!
//! One `tokio::select!` on a current-thread runtime waits for whichever comes first: a
//! terminal event (crossterm's `EventStream`), an engine event, or SIGINT/SIGTERM/SIGHUP.
//! Each becomes an [`app::Msg`]; the [`app::App`] updates, its effects are performed, and the
//! screen is drawn once for everything that was waiting. Nothing on screen moves by itself
//! (no spinner, no clock), so there is no tick at all: an idle chat sleeps and uses no CPU.
//! A click is turned into a message by the hit map of the frame on screen.
//!
//! The terminal is restored on every exit: quit, Ctrl-C (a key in raw mode),
//! SIGINT/SIGTERM/SIGHUP (then the process exits with 128 + the signal), an error, or a panic;
//! a finished turn is saved when it finishes, the conversation once more at the end.

pub mod app;
pub mod config;
pub mod hits;
pub mod keys;
pub mod pace;
pub mod store;
pub mod theme;
pub mod view;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use futures_util::StreamExt;
use ratatui::crossterm::event::{self, DisableMouseCapture, EnableMouseCapture, EventStream};
use ratatui::crossterm::execute;
use ratatui::DefaultTerminal;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::chat::Message;
use crate::engine::{Command, Engine, Event, Settings, Watch};
use crate::error::{Error, Result};
use app::{Action, App, Effect, Msg};
use hits::HitMap;
use theme::Theme;

/// Everything the chat needs besides the engine.
pub struct ChatOptions {
    pub theme: Theme,
    /// Where chats are saved.
    pub chats_dir: PathBuf,
    /// The log file (the screen belongs to the UI).
    pub log: PathBuf,
    /// Name shown in the status bar and saved with the chat.
    pub model_name: String,
    /// A saved chat to continue.
    pub resume: Option<store::SavedChat>,
    pub system: Option<String>,
    /// Key bindings from the config file.
    pub keymap: keys::KeyMap,
}

/// The engine's events, as the chat reads them.
pub type EngineEvents = UnboundedReceiver<Event>;

/// A sink to give [`Engine::spawn`] (it may be called from any thread) and the receiver of
/// what it is given, for [`run`].
pub fn event_channel() -> (impl Fn(Event) + Send + 'static, EngineEvents) {
    let (tx, rx) = unbounded_channel();
    (
        move |e| {
            let _ = tx.send(e);
        },
        rx,
    )
}

/// Appends a line to the log file (best effort: logging never breaks the chat).
pub fn log(path: &std::path::Path, line: &str) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{} {line}", store::SavedChat::now());
    }
}

/// Restores the terminal when dropped (normal exit, `?` errors).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = execute!(std::io::stdout(), DisableMouseCapture);
        ratatui::restore();
    }
}

/// How a chat ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The user quit.
    Quit,
    /// A signal (SIGINT, SIGTERM or SIGHUP) asked it to: the process should exit with
    /// 128 + this number, as shells expect.
    Signal(i32),
}

/// Runs the chat on `engine` (whose events arrive on `events`, see [`event_channel`]) until
/// the user quits or a signal asks it to; the terminal is restored either way. `settings`
/// are those the engine was started with.
pub fn run(
    engine: Engine,
    events: EngineEvents,
    settings: &Settings,
    opts: ChatOptions,
) -> Result<Ended> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Error::io("async runtime", e))?
        .block_on(chat(engine, events, settings, opts))
}

/// What the loop waits on.
enum Ev {
    Term(event::Event),
    Engine(Event),
    /// The engine's thread has ended.
    EngineGone,
    /// SIGINT, SIGTERM or SIGHUP.
    Signal(i32),
    /// The terminal can no longer be read.
    TermGone(String),
}

/// The event sources of the one `select!`.
struct Sources {
    term: EventStream,
    engine: EngineEvents,
    engine_open: bool,
    signals: [(i32, Signal); 3],
}

impl Sources {
    fn new(engine: EngineEvents) -> Result<Self> {
        let sig = |kind: SignalKind, n: i32| {
            signal(kind)
                .map(|s| (n, s))
                .map_err(|e| Error::io("signal handler", e))
        };
        Ok(Self {
            term: EventStream::new(),
            engine,
            engine_open: true,
            // Ctrl-C is a key in raw mode, so SIGINT comes only from `kill -INT`.
            signals: [
                sig(SignalKind::interrupt(), libc::SIGINT)?,
                sig(SignalKind::terminate(), libc::SIGTERM)?,
                sig(SignalKind::hangup(), libc::SIGHUP)?,
            ],
        })
    }

    /// The next event: waits for one when `wait`, else only takes one already there (None
    /// when there is none). Signals first, then keys, then the engine.
    async fn next(&mut self, wait: bool) -> Option<Ev> {
        let [(int_n, int), (term_n, term), (hup_n, hup)] = &mut self.signals;
        tokio::select! {
            biased;
            Some(()) = int.recv() => Some(Ev::Signal(*int_n)),
            Some(()) = term.recv() => Some(Ev::Signal(*term_n)),
            Some(()) = hup.recv() => Some(Ev::Signal(*hup_n)),
            t = self.term.next() => Some(match t {
                Some(Ok(e)) => Ev::Term(e),
                Some(Err(e)) => Ev::TermGone(e.to_string()),
                None => Ev::TermGone("end of input".into()),
            }),
            e = self.engine.recv(), if self.engine_open => Some(match e {
                Some(e) => Ev::Engine(e),
                None => {
                    self.engine_open = false;
                    Ev::EngineGone
                }
            }),
            () = std::future::ready(()), if !wait => None,
        }
    }
}

/// The most events taken before the screen is drawn again.
const BATCH: usize = 256;

/// The chat on screen: the app, the engine, the saved chat it is and what the loop keeps.
struct Chat {
    app: App,
    engine: Engine,
    opts: ChatOptions,
    /// The chat being saved: its id, creation time, and a title given by /rename or --rename
    /// (else the title follows the first message).
    id: String,
    created: u64,
    title: Option<String>,
    /// What the engine was last told the panels need.
    watched: Watch,
    /// The last signal that asked the chat to end.
    signal: Option<i32>,
    /// Key-to-screen latency: from a key's arrival to the end of the draw that shows it.
    pending_key: Option<Instant>,
    latencies: Vec<f64>,
}

async fn chat(
    engine: Engine,
    events: EngineEvents,
    settings: &Settings,
    opts: ChatOptions,
) -> Result<Ended> {
    let mut app = App::new(
        settings.cache.clone(),
        settings.sampling.clone(),
        settings.max_tokens,
    );
    app.theme = opts.theme.name.clone();
    app.custom_keys = opts.keymap.described.clone();
    let (id, created, title) = match &opts.resume {
        Some(c) => {
            app.resume(c, &opts.model_name);
            (c.id.clone(), c.created, given_title(c))
        }
        None => (store::new_id(), store::SavedChat::now(), None),
    };
    if let Some(sys) = &opts.system {
        app.messages.retain(|m| m.role != crate::chat::Role::System);
        app.messages.insert(0, Message::system(sys.clone()));
    }
    log(
        &opts.log,
        &format!("chat {id} starts with {}", opts.model_name),
    );
    // The panel on screen at start needs less than the engine computes by default.
    let watched = app.watch();
    engine.send(Command::Watch(watched));
    let mut src = Sources::new(events)?;

    // The panic hook restores the terminal before the message is printed.
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let _ = execute!(std::io::stdout(), DisableMouseCapture);
        ratatui::restore();
        prev(info);
    }));
    let mut terminal = ratatui::try_init().map_err(|e| Error::io("terminal", e))?;
    let _restore = Restore;
    let _ = execute!(std::io::stdout(), EnableMouseCapture);
    if let Ok(size) = terminal.size() {
        app.size = (size.width, size.height);
    }
    let mut chat = Chat {
        app,
        engine,
        opts,
        id,
        created,
        title,
        watched,
        signal: None,
        pending_key: None,
        latencies: Vec::new(),
    };
    chat.run(&mut terminal, &mut src).await?;
    chat.end()
}

impl Chat {
    /// Draws, waits for events, takes everything already waiting, performs the effects; until
    /// the app quits.
    async fn run(&mut self, terminal: &mut DefaultTerminal, src: &mut Sources) -> Result<()> {
        let mut pacer = pace::Pacer::default();
        let mut hits = HitMap::default();
        loop {
            if pacer.ready() {
                terminal
                    .draw(|f| hits = view::render(f, &self.app, &self.opts.theme))
                    .map_err(|e| Error::io("terminal", e))?;
                pacer.drawn();
                if let Some(t) = self.pending_key.take() {
                    self.latencies.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            // Wait for an event, or for the frame that shows the tokens already taken.
            let mut next = match pacer.due() {
                None => src.next(true).await,
                Some(due) => tokio::select! {
                    ev = src.next(true) => ev,
                    () = tokio::time::sleep_until(due.into()) => continue,
                },
            };
            let mut effects = Vec::new();
            for _ in 0..BATCH {
                let Some(ev) = next else { break };
                pacer.changed(!matches!(&ev, Ev::Engine(e) if pace::streaming(e)));
                self.take(ev, &hits, &mut effects);
                if self.app.quit {
                    break;
                }
                next = src.next(false).await;
            }
            for fx in effects {
                self.perform(fx);
            }
            self.watch();
            if self.app.quit {
                return Ok(());
            }
        }
    }

    /// One event into the app; its effects are added to `effects`.
    fn take(&mut self, ev: Ev, hits: &HitMap, effects: &mut Vec<Effect>) {
        let app = &mut self.app;
        let msg = match ev {
            Ev::Engine(e) => {
                if let Event::Failed(m) = &e {
                    log(&self.opts.log, &format!("engine error: {m}"));
                }
                Some(Msg::Engine(e))
            }
            Ev::EngineGone => {
                log(&self.opts.log, "the engine thread has ended");
                Some(Msg::Engine(Event::Failed("the engine has stopped".into())))
            }
            Ev::Signal(n) => {
                log(&self.opts.log, "signal: quitting");
                self.signal = Some(n);
                Some(Msg::Action(Action::Quit))
            }
            Ev::TermGone(why) => {
                log(&self.opts.log, &format!("terminal: {why}: quitting"));
                Some(Msg::Action(Action::Quit))
            }
            Ev::Term(event::Event::Key(k)) => {
                self.pending_key.get_or_insert_with(Instant::now);
                self.opts
                    .keymap
                    .key(k, app.input.is_empty())
                    .map(Msg::Action)
            }
            Ev::Term(event::Event::Mouse(m)) => keys::mouse(m, hits),
            Ev::Term(event::Event::Resize(w, h)) => Some(Msg::Resize(w, h)),
            Ev::Term(event::Event::Paste(text)) => {
                for c in text.chars() {
                    effects.extend(app.update(Msg::Action(if c == '\n' {
                        Action::Newline
                    } else {
                        Action::Insert(c)
                    })));
                }
                None
            }
            Ev::Term(_) => None,
        };
        if let Some(m) = msg {
            effects.extend(app.update(m));
        }
    }

    /// Tells the engine what the panel on screen needs, when that changed.
    fn watch(&mut self) {
        let w = self.app.watch();
        if w == self.watched {
            return;
        }
        self.engine.send(Command::Watch(w));
        // Retention counts are kept up to date whether watched or not, but a step reports
        // them only while watched: the panel just shown asks for the current step at once
        // (a focus, unchanged, is answered with one). Attention is not asked for: the cache
        // recorded none while unwatched, and the panel says so until the next token.
        if w.retention && !self.watched.retention {
            self.engine.send(Command::Focus(self.app.focus));
        }
        self.watched = w;
    }

    /// Saves the chat; a failure shows in the status line (the last save, at the end, also
    /// fails the run).
    fn save(&mut self) -> Result<()> {
        let app = &mut self.app;
        if app.messages.is_empty() {
            return Ok(());
        }
        let mut chat = store::SavedChat::new(
            &self.id,
            self.created,
            &self.opts.model_name,
            &app.cache,
            &app.messages,
        );
        if let Some(t) = &self.title {
            chat.title = t.clone();
        }
        if let Err(e) = store::save(&self.opts.chats_dir, &chat) {
            app.notice = Some((format!("could not save the chat: {e}"), true));
            log(&self.opts.log, &format!("save failed: {e}"));
            return Err(e);
        }
        Ok(())
    }

    fn perform(&mut self, fx: Effect) {
        let (app, engine, opts) = (&mut self.app, &self.engine, &self.opts);
        match fx {
            Effect::Engine(cmd) => {
                engine.send(cmd);
            }
            Effect::Cancel => {
                engine.send(Command::Cancel);
            }
            Effect::Save => {
                let _ = self.save();
            }
            Effect::Export(file) => match std::fs::write(&file, app.markdown()) {
                Ok(()) => app.notice = Some((format!("saved the chat to {file}"), false)),
                Err(e) => app.notice = Some((format!("/save {file}: {e}"), true)),
            },
            Effect::Pause(on) => {
                engine.send(Command::Pause(on));
            }
            Effect::Advance => {
                engine.send(Command::Advance);
            }
            Effect::ListChats => {
                let items = chat_entries(&opts.chats_dir, &self.id);
                app.update(Msg::Chats(items));
            }
            Effect::OpenChat(id) => {
                match store::list(&opts.chats_dir)
                    .into_iter()
                    .find(|(_, c)| c.id == id)
                {
                    Some((_, c)) => {
                        log(&opts.log, &format!("chat {} closed, {id} opened", self.id));
                        (self.id, self.created, self.title) =
                            (c.id.clone(), c.created, given_title(&c));
                        for fx in app.update(Msg::Opened(Box::new(c))) {
                            if let Effect::Engine(cmd) = fx {
                                engine.send(cmd);
                            }
                        }
                    }
                    None => app.notice = Some((format!("chat {id} is gone"), true)),
                }
            }
            Effect::DeleteChat(id) => {
                let path = opts.chats_dir.join(format!("{id}.json"));
                if let Err(e) = std::fs::remove_file(&path) {
                    app.notice = Some((format!("deleting {}: {e}", path.display()), true));
                } else {
                    app.notice = Some((format!("deleted chat {id}"), false));
                }
                let items = chat_entries(&opts.chats_dir, &self.id);
                app.update(Msg::Chats(items));
            }
            Effect::Rename(t) => {
                self.title = Some(t);
                let _ = self.save();
            }
            Effect::Quit => app.quit = true,
        }
    }

    /// After the loop: keeps an answer cut short, saves, logs, stops the engine.
    fn end(mut self) -> Result<Ended> {
        // An answer cut short by quitting is kept as it stands.
        if let Some(partial) = self.app.streaming.take() {
            self.app.messages.push(Message::assistant(partial));
        }
        let saved = self.save();
        let lat = &mut self.latencies;
        if !lat.is_empty() {
            lat.sort_by(f64::total_cmp);
            log(
                &self.opts.log,
                &format!(
                    "key-to-draw latency: {} keys, median {:.1} ms, max {:.1} ms",
                    lat.len(),
                    lat[lat.len() / 2],
                    lat[lat.len() - 1]
                ),
            );
        }
        // Quit also stops an answer in progress (paused or not).
        self.engine.send(Command::Quit);
        log(&self.opts.log, &format!("chat {} ends", self.id));
        // Said after the terminal is restored (the caller prints it), with a failing exit.
        saved.map_err(|e| Error::BadFile {
            path: self.opts.chats_dir.display().to_string(),
            reason: format!(
                "chat {} was not saved: {e}; make the folder writable, or set \
                 MORPHKV_DATA_DIR to a folder that is",
                self.id
            ),
        })?;
        Ok(self.signal.map_or(Ended::Quit, Ended::Signal))
    }
}

/// A saved chat's title if someone chose it (it differs from the one its messages give).
fn given_title(c: &store::SavedChat) -> Option<String> {
    (c.title != store::title(&c.messages)).then(|| c.title.clone())
}

/// The saved chats for the list, marking the one on screen.
/// The chats folder for the `/chats` list, damaged files included (marked, never hidden).
fn chat_entries(dir: &std::path::Path, current: &str) -> Vec<app::ChatEntry> {
    let entries = match store::scan(dir) {
        Ok(e) => e,
        Err(e) => {
            return vec![app::ChatEntry {
                id: dir.display().to_string(),
                title: String::new(),
                messages: 0,
                current: false,
                damaged: Some(e.to_string()),
            }]
        }
    };
    entries
        .into_iter()
        .map(|e| match e {
            store::Entry::Chat { chat: c, .. } => app::ChatEntry {
                current: c.id == current,
                messages: c.messages.len(),
                title: c.title,
                id: c.id,
                damaged: None,
            },
            store::Entry::Damaged { id, reason, .. } => app::ChatEntry {
                id,
                title: String::new(),
                messages: 0,
                current: false,
                damaged: Some(reason),
            },
        })
        .collect()
}
