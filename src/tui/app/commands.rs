//! The slash commands: `/set` for sampling and cache settings, `/focus`, `/inspect`, the
//! saved chats, exports, and the Markdown export of the conversation.

use super::{Action, App, Busy, Effect};
use crate::cache::{limits, PolicyKind};
use crate::chat::{Message, Role};
use crate::engine::Command;

/// Slash commands, for `/help` and the help overlay.
pub const SLASH_HELP: [(&str, &str); 21] = [
    ("/set temp X", "temperature (0 = greedy)"),
    ("/set top-k|top-p|min-p V", "sampling filters"),
    ("/set seed N", "sampling seed"),
    ("/set max-tokens N", "longest answer"),
    ("/set policy P [next]", crate::cache::POLICY_LIST),
    ("/set budget N [next]", "tokens kept per KV head"),
    ("/set window N [next]", "recent tokens always kept"),
    ("/set recent N [next]", "per cent of the budget kept recent"),
    ("/set history|half-life N", "MorphKV's fading history"),
    ("/set system TEXT", "system prompt (applies to a new chat)"),
    ("/focus L H | all", "retention of one layer and KV head"),
    ("/compare P | off", "compare with a 2nd cache"),
    ("/show", "current settings"),
    ("/clear", "new chat"),
    ("/chats", "saved chats: ↑↓ Enter opens, Del deletes"),
    ("/rename TITLE", "rename this chat"),
    ("/inspect N", "inspect the token at position N"),
    ("/travel N | live", "panels as after step N, or live"),
    ("/save FILE.md", "export the chat as Markdown"),
    ("/trace FILE.jsonl", "export the eviction trace"),
    ("/bye", "quit"),
];

impl App {
    pub(super) fn slash(&mut self, line: &str) -> Vec<Effect> {
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
                    "model {} | policy {} budget {} window {} recent {}% (the last {} protected) history {}% half-life {} | temp {} top-k {} top-p {} min-p {} seed {} | max-tokens {}",
                    self.model, c.policy.name(), c.budget, c.window(), c.recent(), c.protected(), c.history, c.half_life,
                    s.temp, s.top_k, s.top_p, s.min_p, s.seed, self.max_tokens
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
            ["/travel", "live"] => self.go_live(),
            ["/travel", n] => match n.parse::<usize>() {
                Ok(t) => self.travel_to(t),
                Err(_) => {
                    self.error(format!(
                        "/travel takes a step (a token count) or `live`, not `{n}`"
                    ));
                    Vec::new()
                }
            },
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
                let again = self
                    .travel
                    .map(|t| Effect::Engine(Command::Travel(Some(t))));
                std::iter::once(Effect::Engine(Command::Focus(None)))
                    .chain(again)
                    .collect()
            }
            ["/focus", l, h] => match (l.parse::<usize>(), h.parse::<usize>()) {
                (Ok(l), Ok(h)) if l < self.layers && h < self.kv_heads => {
                    self.focus = Some((l, h));
                    self.attn_layer = l;
                    self.note(format!("retention: layer {l}, KV head {h}"));
                    let again = self
                        .travel
                        .map(|t| Effect::Engine(Command::Travel(Some(t))));
                    std::iter::once(Effect::Engine(Command::Focus(self.focus)))
                        .chain(again)
                        .collect()
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
            ["/compare", args @ ..] => self.compare_command(args),
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
            "policy" | "budget" | "window" | "recent" | "history" | "half-life" => {
                return self.set_cache(key, value, when)
            }
            _ => {
                self.error(format!(
                    "/set: unknown setting `{key}` (temp, top-k, top-p, min-p, seed, max-tokens, policy, budget, window, recent, history, half-life, system)"
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
            "recent" => limits::RECENT
                .parse(value)
                .map(|r| cfg.recent = Some(r))
                .map_err(|e| crate::Error::arg("recent", e)),
            "history" => limits::HISTORY
                .parse(value)
                .map(|h| cfg.history = h)
                .map_err(|e| crate::Error::arg("history", e)),
            "half-life" => limits::HALF_LIFE
                .parse(value)
                .map(|h| cfg.half_life = h)
                .map_err(|e| crate::Error::arg("half-life", e)),
            _ => limits::WINDOW
                .parse(value)
                .map(|w| cfg.window = Some(w))
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
            self.cache.window()
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
