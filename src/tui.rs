//! `morphkv chat`: the terminal UI. One loop receives terminal events (from a reader thread)
//! and engine events (from the engine thread) on one channel, turns them into [`app::Msg`]s,
//! updates the [`app::App`], performs the effects and redraws. The terminal is restored on
//! every exit: quit, Ctrl-C (a key in raw mode), SIGINT/SIGTERM/SIGHUP (then the process exits
//! with 128 + the signal), an error, or a panic.
//!
//! A plain channel and threads instead of an async runtime: the engine's work is blocking
//! candle code and the terminal reader blocks too; one `recv_timeout` loop is all the
//! select this needs.

pub mod app;
pub mod config;
pub mod demo;
pub mod keys;
pub mod store;
pub mod theme;
pub mod view;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use ratatui::crossterm::event::{self, DisableMouseCapture, EnableMouseCapture};
use ratatui::crossterm::execute;

use crate::chat::{ChatTemplate, Message};
use crate::engine::{Command, Engine, Settings};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use app::{Action, App, Effect, Msg};
use theme::Theme;

/// Everything the chat needs besides the model.
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

enum Ev {
    Term(event::Event),
    Engine(crate::engine::Event),
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

/// Runs the chat until the user quits or a signal asks it to; the terminal is restored
/// either way.
pub fn run(
    model: Model,
    tok: Tokenizer,
    template: ChatTemplate,
    settings: Settings,
    opts: ChatOptions,
) -> Result<Ended> {
    let (tx, rx) = channel::<Ev>();
    let mut app = App::new(
        settings.cache.clone(),
        settings.sampling.clone(),
        settings.max_tokens,
    );
    app.theme = opts.theme.name.clone();
    app.custom_keys = opts.keymap.described.clone();
    // The chat being saved: its id, creation time, and a title given by /rename or --rename
    // (else the title follows the first message).
    let (mut chat_id, mut created, mut title) = match &opts.resume {
        Some(c) => {
            app.messages = c.messages.clone();
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
        &format!("chat {chat_id} starts with {}", opts.model_name),
    );
    let engine = Engine::spawn(model, tok, template, opts.model_name.clone(), settings, {
        let tx = tx.clone();
        move |e| {
            let _ = tx.send(Ev::Engine(e));
        }
    })?;

    // SIGINT (Ctrl-C is a key in raw mode, so only `kill -INT`), SIGTERM and SIGHUP end
    // the chat like a quit; the flag holds the last one's number.
    let stop = Arc::new(AtomicUsize::new(0));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register_usize(sig, stop.clone(), sig as usize)
            .map_err(|e| Error::io("signal handler", e))?;
    }

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

    let reader_tx = tx.clone();
    std::thread::Builder::new()
        .name("morphkv-keys".into())
        .spawn(move || {
            while let Ok(ev) = event::read() {
                if reader_tx.send(Ev::Term(ev)).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| Error::io("terminal reader thread", e))?;
    drop(tx);

    // A failed save shows in the status line; the last one, at quit, also fails the run.
    let save = |app: &mut App, chat_id: &str, created: u64, title: &Option<String>| -> Result<()> {
        if app.messages.is_empty() {
            return Ok(());
        }
        let mut chat = store::SavedChat::new(
            chat_id,
            created,
            &opts.model_name,
            &app.cache,
            &app.messages,
        );
        if let Some(t) = title {
            chat.title = t.clone();
        }
        if let Err(e) = store::save(&opts.chats_dir, &chat) {
            app.notice = Some((format!("could not save the chat: {e}"), true));
            log(&opts.log, &format!("save failed: {e}"));
            return Err(e);
        }
        Ok(())
    };

    // Key-to-screen latency: from a key's arrival to the end of the draw that shows it.
    let mut pending_key: Option<std::time::Instant> = None;
    let mut latencies: Vec<f64> = Vec::new();
    loop {
        terminal
            .draw(|f| view::draw(f, &app, &opts.theme))
            .map_err(|e| Error::io("terminal", e))?;
        if let Some(t) = pending_key.take() {
            latencies.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let first = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(ev) => Some(ev),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if stop.load(Ordering::SeqCst) != 0 && !app.quit {
            log(&opts.log, "signal: quitting");
            app.update(Msg::Action(Action::Quit));
        }
        // Everything already waiting, then one redraw.
        let mut effects = Vec::new();
        for ev in first.into_iter().chain(rx.try_iter()) {
            let msg = match ev {
                Ev::Engine(e) => {
                    if let crate::engine::Event::Failed(m) = &e {
                        log(&opts.log, &format!("engine error: {m}"));
                    }
                    Some(Msg::Engine(e))
                }
                Ev::Term(event::Event::Key(k)) => {
                    pending_key.get_or_insert_with(std::time::Instant::now);
                    opts.keymap.key(k, app.input.is_empty()).map(Msg::Action)
                }
                Ev::Term(event::Event::Mouse(m)) => keys::mouse(m).map(Msg::Action),
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
            if app.quit {
                break;
            }
        }
        for fx in effects {
            match fx {
                Effect::Engine(cmd) => {
                    let _ = engine.commands.send(cmd);
                }
                Effect::Cancel => {
                    engine.send(Command::Cancel);
                }
                Effect::Save => {
                    let _ = save(&mut app, &chat_id, created, &title);
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
                    let items = chat_entries(&opts.chats_dir, &chat_id);
                    app.update(Msg::Chats(items));
                }
                Effect::OpenChat(id) => {
                    match store::list(&opts.chats_dir)
                        .into_iter()
                        .find(|(_, c)| c.id == id)
                    {
                        Some((_, c)) => {
                            log(&opts.log, &format!("chat {chat_id} closed, {id} opened"));
                            (chat_id, created, title) = (c.id.clone(), c.created, given_title(&c));
                            for fx in app.update(Msg::Opened(c.messages)) {
                                if let Effect::Engine(cmd) = fx {
                                    let _ = engine.commands.send(cmd);
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
                    let items = chat_entries(&opts.chats_dir, &chat_id);
                    app.update(Msg::Chats(items));
                }
                Effect::Rename(t) => {
                    title = Some(t);
                    let _ = save(&mut app, &chat_id, created, &title);
                }
                Effect::Quit => app.quit = true,
            }
        }
        if app.quit {
            break;
        }
    }
    // An answer cut short by quitting is kept as it stands.
    if let Some(partial) = app.streaming.take() {
        app.messages.push(Message::assistant(partial));
    }
    let saved = save(&mut app, &chat_id, created, &title);
    if !latencies.is_empty() {
        latencies.sort_by(f64::total_cmp);
        log(
            &opts.log,
            &format!(
                "key-to-draw latency: {} keys, median {:.1} ms, max {:.1} ms",
                latencies.len(),
                latencies[latencies.len() / 2],
                latencies[latencies.len() - 1]
            ),
        );
    }
    // Quit also stops an answer in progress (paused or not).
    engine.send(Command::Quit);
    log(&opts.log, &format!("chat {chat_id} ends"));
    // Said after the terminal is restored (the caller prints it), with a failing exit.
    let signal = stop.load(Ordering::SeqCst);
    saved.map_err(|e| Error::BadFile {
        path: opts.chats_dir.display().to_string(),
        reason: format!(
            "chat {chat_id} was not saved: {e}; make the folder writable, or set \
             MORPHKV_DATA_DIR to a folder that is"
        ),
    })?;
    Ok(match i32::try_from(signal) {
        Ok(sig) if sig > 0 => Ended::Signal(sig),
        _ => Ended::Quit,
    })
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
