//! The eviction trace, JSON Lines: written by `/trace` (the chat's engine) and by
//! `generate --trace`, read by `morphkv replay` and the tests. One module owns the format.
//!
//! ```text
//! {"kind":"header","format":"morphkv-trace","version":1,"model":…,"policy":…,"budget":…,
//!  "window":…,"effective_window":…,"recent":…,"protected":…,"history":…,"half_life":…,
//!  "sinks":…,"positions":…,
//!  "layers":…,"kv_heads":…,
//!  "kv_bytes_per_token":…,"profile_bytes_per_token":…,"tokens":N,"token_text":[…],
//!  "prompts":[[from,to],…],"evictions_dropped":…,"evictions_dropped_through_step":…}
//! {"kind":"evicted","step":S,"layer":L,"head":H,"pos":P,"score":X}   oldest first
//! {"kind":"retained","layer":L,"head":H,"positions":[…]}            one per (layer, KV head)
//! ```
//!
//! `step` is the conversation's length when the eviction happened; `prompts` are the
//! stretches read in one go (a prompt's tokens enter before its evictions are taken). The
//! evictions are the bounded history's (the header says how many earlier ones were let go,
//! and the step they reach), the retained positions what each pair holds at the end.
//!
//! Reading treats the file as untrusted: every number is checked against the header, the
//! header against the cache's limits, lines and counts are bounded, and any fault is an
//! error naming the file, the line and what is wrong (never a panic, never an allocation the
//! header's sizes do not bound).

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::history::{EvictionLog, Record, HISTORY_BUDGETS, HISTORY_MIN};
use crate::cache::{limits, KvCache};
use crate::error::{Error, Result};

/// The `format` a header names.
pub const FORMAT: &str = "morphkv-trace";
/// The newest format version this module reads and the one it writes.
pub const VERSION: u64 = 1;
/// Longest line read (a header with a long conversation's token texts fits many times).
pub const MAX_LINE: usize = 32 << 20;
/// Most layers and KV heads a trace may declare.
pub const MAX_LAYERS: usize = 1024;
pub const MAX_KV_HEADS: usize = 1024;
/// Most tokens a trace's conversation may have.
pub const MAX_TOKENS: usize = 1 << 24;
/// Most evictions a reader keeps (the newest; older ones are let go as the engine does).
pub const MAX_EVICTIONS: usize = 1 << 24;
/// Most prompt stretches a header lists (the newest).
pub const MAX_PROMPTS: usize = 4096;

/// The first line: the cache's settings and sizes, and the conversation's tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Header {
    #[serde(default)]
    pub format: String,
    #[serde(default)]
    pub version: u64,
    /// The model's name as the chat showed it.
    #[serde(default)]
    pub model: String,
    pub policy: String,
    pub budget: usize,
    /// The window setting, and the one in effect (a policy may fix it).
    pub window: usize,
    pub effective_window: usize,
    /// The recent share in effect (per cent of the budget) and the recent tokens it and the
    /// window protect (absent in traces written before it existed: 0).
    #[serde(default)]
    pub recent: usize,
    #[serde(default)]
    pub protected: usize,
    /// MorphKV's history weight (per cent) and its half-life in tokens (absent in traces
    /// written before them: 0, what those ran under).
    #[serde(default)]
    pub history: usize,
    #[serde(default)]
    pub half_life: usize,
    pub sinks: usize,
    pub positions: String,
    pub layers: usize,
    pub kv_heads: usize,
    /// Bytes of one retained token's keys and values over all layers and KV heads.
    pub kv_bytes_per_token: usize,
    /// Bytes of scoring profile per retained token (MorphKV's rows; 0 for others).
    pub profile_bytes_per_token: usize,
    /// The conversation's length, and each position's token text.
    pub tokens: usize,
    pub token_text: Vec<String>,
    /// Stretches `[from, to)` read in one go (prompts), oldest first.
    #[serde(default)]
    pub prompts: Vec<(usize, usize)>,
    pub evictions_dropped: usize,
    /// Every eviction the trace no longer holds happened at or before this step.
    pub evictions_dropped_through_step: usize,
}

impl Header {
    /// (layer, KV head) pairs.
    pub fn pairs(&self) -> usize {
        self.layers * self.kv_heads
    }

    /// The header of a trace of `cache` after `tokens` (their texts), with `log`'s history.
    pub(super) fn of(
        cache: &KvCache,
        kv_heads: usize,
        model: &str,
        token_text: Vec<String>,
        log: &EvictionLog,
        prompts: &VecDeque<(usize, usize)>,
    ) -> Self {
        let c = cache.config();
        Self {
            format: FORMAT.into(),
            version: VERSION,
            model: model.into(),
            policy: c.policy.name().into(),
            budget: c.budget,
            window: c.window(),
            effective_window: c.effective_window(),
            recent: c.recent(),
            protected: c.protected(),
            history: c.history,
            half_life: c.half_life,
            sinks: c.sinks(),
            positions: format!("{:?}", c.positions).to_lowercase(),
            layers: cache.n_layers(),
            kv_heads,
            kv_bytes_per_token: cache.bytes_per_token(),
            // Linear in the retained tokens (rows × retained per layer).
            profile_bytes_per_token: cache.profile_bytes() / cache.retained().max(1),
            tokens: cache.seen(),
            token_text,
            prompts: prompts.iter().copied().collect(),
            evictions_dropped: log.dropped(),
            evictions_dropped_through_step: log.dropped_through(),
        }
    }
}

/// A trace read back: the header, the evictions it holds (oldest first, steps never
/// decreasing) and what each (layer, KV head) pair retains at its end (`pair = layer ×
/// kv_heads + head`).
#[derive(Debug, Clone)]
pub struct Trace {
    pub header: Header,
    pub evictions: Vec<Record>,
    pub retained: Vec<Vec<u32>>,
    /// Evictions let go (by the writer's history and by this reader's bound).
    pub dropped: usize,
    /// Every eviction let go happened at or before this step: the oldest step the trace
    /// can be travelled back to.
    pub dropped_through: usize,
}

/// Writes a trace of `cache` to `path`: the header, `log`'s evictions, each pair's
/// retained positions.
pub(super) fn write(
    path: &Path,
    header: &Header,
    log: &EvictionLog,
    cache: &KvCache,
) -> Result<()> {
    let io = |e: std::io::Error| Error::io(path, e);
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let mut head = serde_json::to_value(header).map_err(|e| bad(path, 1, e.to_string()))?;
    if let Some(m) = head.as_object_mut() {
        m.insert("kind".into(), "header".into());
    }
    writeln!(w, "{head}").map_err(io)?;
    for r in log.iter() {
        let (l, h) = log.layer_head(r);
        let line = serde_json::json!({"kind": "evicted", "step": r.step, "layer": l,
            "head": h, "pos": r.pos, "score": r.score});
        writeln!(w, "{line}").map_err(io)?;
    }
    for l in 0..cache.n_layers() {
        for h in 0..header.kv_heads {
            let line = serde_json::json!({"kind": "retained", "layer": l, "head": h,
                "positions": cache.layer(l).positions(h)});
            writeln!(w, "{line}").map_err(io)?;
        }
    }
    w.flush().map_err(io)
}

/// Records a run's evictions step by step, for `generate --trace`: the same bounded history
/// as the chat's engine, written in the same format at the end.
pub struct Recorder {
    log: EvictionLog,
    prompts: VecDeque<(usize, usize)>,
    seen: usize,
    kv_heads: usize,
}

impl Recorder {
    /// A recorder for `cache`, of a model with `kv_heads` KV heads (it sets the cache
    /// recording evictions).
    pub fn new(cache: &mut KvCache, kv_heads: usize) -> Self {
        cache.record_evictions(true);
        Self {
            log: EvictionLog::new(cache.n_layers(), kv_heads, cache.config().budget),
            prompts: VecDeque::new(),
            seen: 0,
            kv_heads,
        }
    }

    /// Takes the evictions of the steps since the last call (a prompt's, or one token's).
    pub fn step(&mut self, cache: &mut KvCache) {
        let seen = cache.seen();
        note_prompt(&mut self.prompts, self.seen, seen);
        self.seen = seen;
        for e in cache.take_evictions() {
            self.log.push(seen, &e);
        }
    }

    /// Writes the trace: `model` names the model, `token_text` each position's text.
    pub fn write(
        &mut self,
        path: &Path,
        cache: &mut KvCache,
        model: &str,
        token_text: Vec<String>,
    ) -> Result<()> {
        self.step(cache);
        let header = Header::of(
            cache,
            self.kv_heads,
            model,
            token_text,
            &self.log,
            &self.prompts,
        );
        write(path, &header, &self.log, cache)
    }
}

/// Notes that the conversation went from `before` to `now` tokens in one step: a prompt
/// when more than one token entered.
pub(super) fn note_prompt(prompts: &mut VecDeque<(usize, usize)>, before: usize, now: usize) {
    if now > before + 1 {
        if prompts.len() == MAX_PROMPTS {
            prompts.pop_front();
        }
        prompts.push_back((before, now));
    }
}

fn bad(path: &Path, line: usize, what: impl std::fmt::Display) -> Error {
    Error::BadFile {
        path: path.display().to_string(),
        reason: format!("line {line}: {what}"),
    }
}

/// One line of a trace.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Line {
    Header(Box<Header>),
    Evicted {
        step: usize,
        layer: usize,
        head: usize,
        pos: usize,
        score: Option<f32>,
    },
    Retained {
        layer: usize,
        head: usize,
        positions: Vec<u32>,
    },
}

/// Checks a header against the cache's limits and this reader's bounds.
fn check_header(h: &Header) -> std::result::Result<(), String> {
    if !h.format.is_empty() && h.format != FORMAT {
        return Err(format!("format `{}` is not {FORMAT}", h.format));
    }
    if h.version > VERSION {
        return Err(format!(
            "format version {} is newer than this morphkv reads ({VERSION}): update morphkv",
            h.version
        ));
    }
    let range = |name: &str, v: usize, lo: usize, hi: usize| {
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(format!("{name} {v} is out of range ({lo} to {hi})"))
        }
    };
    range("layers", h.layers, 1, MAX_LAYERS)?;
    range("kv_heads", h.kv_heads, 1, MAX_KV_HEADS)?;
    range("layers × kv_heads", h.pairs(), 1, usize::from(u16::MAX))?;
    limits::BUDGET.check(h.budget)?;
    limits::WINDOW.check(h.window)?;
    range(
        "effective_window",
        h.effective_window,
        0,
        limits::WINDOW.max,
    )?;
    limits::RECENT.check(h.recent)?;
    range("protected", h.protected, 0, h.budget)?;
    limits::HISTORY.check(h.history)?;
    limits::HALF_LIFE.check(h.half_life)?;
    limits::SINKS.check(h.sinks)?;
    range("tokens", h.tokens, 0, MAX_TOKENS)?;
    range("kv_bytes_per_token", h.kv_bytes_per_token, 0, 1 << 30)?;
    range(
        "profile_bytes_per_token",
        h.profile_bytes_per_token,
        0,
        1 << 30,
    )?;
    if h.token_text.len() != h.tokens {
        return Err(format!(
            "token_text has {} entries for {} tokens",
            h.token_text.len(),
            h.tokens
        ));
    }
    range("prompts", h.prompts.len(), 0, MAX_PROMPTS)?;
    let mut end = 0;
    for &(from, to) in &h.prompts {
        if from < end || to <= from || to > h.tokens {
            return Err(format!(
                "prompt [{from}, {to}) is out of order or past the {} tokens",
                h.tokens
            ));
        }
        end = to;
    }
    range(
        "evictions_dropped_through_step",
        h.evictions_dropped_through_step,
        0,
        h.tokens,
    )?;
    Ok(())
}

/// Reads one line of at most [`MAX_LINE`] bytes; None at the end of the file.
fn next_line<R: BufRead>(
    r: &mut R,
    buf: &mut Vec<u8>,
    path: &Path,
    n: usize,
) -> Result<Option<()>> {
    buf.clear();
    let got = <&mut R as std::io::Read>::take(r, MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)
        .map_err(|e| Error::io(path, e))?;
    if got == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_LINE {
        return Err(bad(
            path,
            n,
            format!("longer than {} MiB: not a morphkv trace", MAX_LINE >> 20),
        ));
    }
    Ok(Some(()))
}

/// Reads and checks the trace at `path`.
pub fn read(path: &Path) -> Result<Trace> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::BadFile {
            path: path.display().to_string(),
            reason: "not a regular file: pass a trace written by /trace or generate --trace".into(),
        });
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    read_from(std::io::BufReader::new(file), path)
}

/// Reads and checks a trace from `r`; `path` names it in errors.
pub fn read_from(mut r: impl BufRead, path: &Path) -> Result<Trace> {
    let path: PathBuf = path.to_path_buf();
    let path = path.as_path();
    let mut buf = Vec::new();
    let mut header: Option<Header> = None;
    let mut ring: VecDeque<Record> = VecDeque::new();
    let (mut cap, mut dropped, mut dropped_through, mut last_step) = (0, 0, 0, 0);
    let mut retained: Vec<Option<Vec<u32>>> = Vec::new();
    let mut n = 0;
    while next_line(&mut r, &mut buf, path, n + 1)?.is_some() {
        n += 1;
        let text = std::str::from_utf8(&buf).map_err(|_| bad(path, n, "not UTF-8 text"))?;
        if text.trim().is_empty() {
            continue;
        }
        let line: Line = serde_json::from_str(text).map_err(|e| {
            let msg = e.to_string();
            if msg.contains("unknown variant") {
                bad(
                    path,
                    n,
                    format!("unknown kind ({msg}): expected header, evicted or retained"),
                )
            } else {
                bad(path, n, format!("not a trace line: {msg}"))
            }
        })?;
        let h = match (&header, line) {
            (None, Line::Header(h)) => {
                check_header(&h).map_err(|e| bad(path, n, e))?;
                cap = h
                    .budget
                    .saturating_mul(HISTORY_BUDGETS)
                    .max(HISTORY_MIN)
                    .saturating_mul(h.pairs())
                    .min(MAX_EVICTIONS);
                dropped = h.evictions_dropped;
                dropped_through = h.evictions_dropped_through_step;
                last_step = dropped_through;
                retained = vec![None; h.pairs()];
                header = Some(*h);
                continue;
            }
            (None, _) => {
                return Err(bad(
                    path,
                    n,
                    "the first line is not a header: not a morphkv trace",
                ))
            }
            (Some(_), Line::Header(_)) => return Err(bad(path, n, "a second header")),
            (Some(h), line) => (h, line),
        };
        let (h, line) = h;
        let pair_of = |layer: usize, head: usize| {
            if layer >= h.layers || head >= h.kv_heads {
                Err(bad(
                    path,
                    n,
                    format!(
                        "layer {layer} head {head} is out of range (the header says {} layers × {} KV heads)",
                        h.layers, h.kv_heads
                    ),
                ))
            } else {
                Ok(layer * h.kv_heads + head)
            }
        };
        match line {
            Line::Header(_) => {}
            Line::Evicted {
                step,
                layer,
                head,
                pos,
                score,
            } => {
                let pair = pair_of(layer, head)?;
                if step > h.tokens || step == 0 {
                    return Err(bad(
                        path,
                        n,
                        format!("step {step} is out of range (1 to the {} tokens)", h.tokens),
                    ));
                }
                if pos >= step {
                    return Err(bad(
                        path,
                        n,
                        format!("token {pos} evicted at step {step}, before it arrived"),
                    ));
                }
                if step < last_step {
                    return Err(bad(
                        path,
                        n,
                        format!("steps out of order: step {step} after step {last_step}"),
                    ));
                }
                last_step = step;
                if ring.len() == cap {
                    if let Some(old) = ring.pop_front() {
                        dropped += 1;
                        dropped_through = old.step as usize;
                    }
                }
                ring.push_back(Record {
                    // In range: both are at most `tokens`, and the pair at most u16::MAX.
                    step: step as u32,
                    pos: pos as u32,
                    score: score.unwrap_or(f32::NAN),
                    pair: pair as u32,
                });
            }
            Line::Retained {
                layer,
                head,
                positions,
            } => {
                let pair = pair_of(layer, head)?;
                if retained[pair].is_some() {
                    return Err(bad(
                        path,
                        n,
                        format!("a second `retained` line for layer {layer} head {head}"),
                    ));
                }
                if positions.len() > h.tokens {
                    return Err(bad(
                        path,
                        n,
                        format!(
                            "{} positions retained of a {}-token conversation",
                            positions.len(),
                            h.tokens
                        ),
                    ));
                }
                if let Some(p) = positions.iter().find(|&&p| p as usize >= h.tokens) {
                    return Err(bad(
                        path,
                        n,
                        format!(
                            "position {p} is past the conversation's {} tokens",
                            h.tokens
                        ),
                    ));
                }
                retained[pair] = Some(positions);
            }
        }
    }
    let Some(header) = header else {
        return Err(Error::BadFile {
            path: path.display().to_string(),
            reason: "empty: not a morphkv trace (its first line is a header)".into(),
        });
    };
    let mut held = Vec::with_capacity(retained.len());
    for (pair, r) in retained.into_iter().enumerate() {
        let (l, h) = (pair / header.kv_heads, pair % header.kv_heads);
        let Some(r) = r else {
            return Err(Error::BadFile {
                path: path.display().to_string(),
                reason: format!(
                    "no `retained` line for layer {l} head {h}: the trace is cut short"
                ),
            });
        };
        held.push(r);
    }
    let evictions: Vec<Record> = ring.into();
    check_each_token_once(&header, &evictions, &held).map_err(|reason| Error::BadFile {
        path: path.display().to_string(),
        reason,
    })?;
    Ok(Trace {
        header,
        evictions,
        retained: held,
        dropped,
        dropped_through,
    })
}

/// Each pair evicts a token at most once, and never one it still retains.
fn check_each_token_once(
    h: &Header,
    evictions: &[Record],
    held: &[Vec<u32>],
) -> std::result::Result<(), String> {
    let mut per_pair: Vec<Vec<u32>> = held.to_vec();
    for r in evictions {
        if let Some(v) = per_pair.get_mut(r.pair as usize) {
            v.push(r.pos);
        }
    }
    for (pair, v) in per_pair.iter_mut().enumerate() {
        v.sort_unstable();
        if let Some(w) = v.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!(
                "layer {} head {}: token {} is evicted twice, or retained and evicted",
                pair / h.kv_heads,
                pair % h.kv_heads,
                w[0]
            ));
        }
    }
    Ok(())
}
