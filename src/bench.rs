//! `morphkv bench`: prefill and decode speed against context length, for our decoder and, in
//! the same process, candle-transformers' `quantized_llama` reference on the same file.
//!
//! Each measurement starts from an empty cache, prefills `context` tokens (timed), then decodes
//! `decode_tokens` greedy tokens (timed). Repetitions report the median and the spread.

mod chat;
mod roofline;

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::cache::{CacheConfig, KvType, PolicyKind, Positions};
use crate::error::{Error, Result};
use crate::eval::plot::{Chart, Series};
use crate::eval::report::{render, Style};
use crate::model::{open_gguf, Config, Model, WeightFormat};
use crate::sampling::argmax;
use crate::session::{GenerateOptions, Phase, Session};
use std::ops::ControlFlow;

pub use chat::{chat_vs_generate, ChatBench, CompareBench};
pub use roofline::read_rate;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Context lengths (prompt tokens before decoding).
    pub contexts: Vec<usize>,
    /// Tokens decoded after each prefill.
    pub decode_tokens: usize,
    /// Repetitions of each measurement.
    pub reps: usize,
    /// Weight forms in which to also run candle-transformers' reference decoder:
    /// `f32` (dequantized) and/or `native` (the file's quantization). Empty: no reference.
    pub reference: Vec<RefWeights>,
    /// Cache settings for our decoder; its policy is replaced by each of `policies`.
    pub cache: CacheConfig,
    /// Policies to measure (our decoder runs once per policy).
    pub policies: Vec<PolicyKind>,
    /// Position modes to run each policy in (empty: the cache settings' own).
    pub positions: Vec<Positions>,
    /// KV storage types to run each policy with (empty: the cache settings' own).
    pub kv_types: Vec<KvType>,
    /// Also measure the memory's read rate with the same threads, before and after the runs,
    /// and show each decode as a share of it (`--roofline`).
    pub roofline: bool,
}

/// The weight forms the reference decoder can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefWeights {
    /// Dequantized to f32 at load (`CANDLE_DEQUANTIZE_ALL`).
    F32,
    /// The file's own quantization.
    Native,
}

impl std::str::FromStr for RefWeights {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "native" => Ok(Self::Native),
            _ => Err(Error::arg(
                "--reference",
                format!("`{s}` is not f32 or native"),
            )),
        }
    }
}

impl RefWeights {
    fn label(self) -> &'static str {
        match self {
            Self::F32 => "reference-f32",
            Self::Native => "reference-native",
        }
    }
}

/// Median and spread of repeated rates.
#[derive(Debug, Clone, Serialize)]
pub struct Rate {
    /// Median tokens per second.
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Rate {
    fn of(mut xs: Vec<f64>) -> Self {
        xs.sort_by(f64::total_cmp);
        let median = if xs.is_empty() {
            0.0
        } else if xs.len() % 2 == 1 {
            xs[xs.len() / 2]
        } else {
            (xs[xs.len() / 2 - 1] + xs[xs.len() / 2]) / 2.0
        };
        Self {
            median,
            min: xs.first().copied().unwrap_or(0.0),
            max: xs.last().copied().unwrap_or(0.0),
        }
    }
}

/// One decoder at one context length.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `ours`, `reference-f32` or `reference-native`.
    pub decoder: String,
    /// Our decoder's cache policy (`full` for the reference).
    pub policy: String,
    /// Tokens per KV head the cache held at the end (median run).
    pub retained: usize,
    /// KV bytes at the end.
    pub kv_bytes: usize,
    pub context: usize,
    pub prefill_tps: Rate,
    pub decode_tps: Rate,
    /// Seconds to prefill the whole context (median).
    pub prefill_secs: f64,
    /// Milliseconds per decoded token spent on the policy: observing attention rows,
    /// scoring, choosing and moving victims (median; 0 for the reference).
    pub policy_ms: f64,
    /// That time as a fraction of the decode step (median).
    pub policy_share: f64,
    /// Peak RSS of the process during the runs (largest repetition; 0 for the reference).
    pub peak_rss_bytes: u64,
    /// Bytes one decoded token read at the end: the weights', the K/V's and the profile's (0
    /// for the reference).
    pub read_bytes: usize,
    /// Those bytes at the median decode speed, per second: the memory traffic decoding drew.
    pub read_rate: f64,
}

/// One measured prefill + decode of our decoder.
#[derive(Debug, Clone, Default)]
struct Run {
    prefill_secs: f64,
    decode_secs: f64,
    /// Seconds of the decode spent on the policy (observe, score, evict).
    policy_secs: f64,
    retained: usize,
    kv_bytes: usize,
    profile_bytes: usize,
    /// Peak RSS of the process during this run.
    peak_rss: u64,
}

/// Prefills `ids` into a fresh cache under `cfg`, then decodes `decode_tokens` greedy tokens.
fn run_once(model: &Model, cfg: CacheConfig, ids: &[u32], decode_tokens: usize) -> Result<Run> {
    reset_peak_rss();
    let mut session = Session::greedy(model, cfg)?;
    let t0 = Instant::now();
    session.prefill(ids)?;
    let prefill_secs = t0.elapsed().as_secs_f64();
    let before = session.cache().policy_secs();
    let decoded = session.generate(
        &decode_only(decode_tokens),
        |_, _| ControlFlow::Continue(()),
    )?;
    let cache = session.cache();
    Ok(Run {
        prefill_secs,
        decode_secs: decoded.decode_secs,
        policy_secs: cache.policy_secs() - before,
        retained: cache.retained(),
        kv_bytes: cache.kv_bytes(),
        profile_bytes: cache.profile_bytes(),
        peak_rss: rss().1,
    })
}

/// Greedy decoding of `n` tokens, end-of-sequence ignored, every token fed (as timed).
fn decode_only(n: usize) -> GenerateOptions {
    GenerateOptions {
        max_new: n,
        stop: Vec::new(),
        ignore_eos: true,
        feed_last: true,
    }
}

/// A whole bench run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub weights: String,
    /// `cpu`, `cuda:0`, ...
    pub device: String,
    pub threads: usize,
    /// Bytes of weights one decoded token reads ([`Model::token_bytes`]).
    pub token_bytes: usize,
    /// The memory's read rate, bytes per second, with the decoder's threads: measured before
    /// and after the runs with `--roofline` (empty without).
    pub memory_read_rates: Vec<f64>,
    pub rows: Vec<Row>,
}

/// Deterministic prompt tokens: a fixed text's tokens cycled to length `n`.
fn prompt_tokens(text_ids: &[u32], n: usize) -> Vec<u32> {
    text_ids.iter().copied().cycle().take(n).collect()
}

/// The decoder a bench measures.
#[derive(Debug, Clone)]
pub enum BenchModel {
    /// A model file or checkpoint folder, its weights held as `weights`.
    File {
        path: std::path::PathBuf,
        weights: WeightFormat,
    },
    /// A preset's architecture and shapes with random dense f32 values (`--random-weights`):
    /// speed does not depend on the values, and nothing has to be downloaded.
    Random { preset: String, config: Config },
}

impl BenchModel {
    /// The decoder on `device` and prompt material: a fixed text's tokens (random ids of the
    /// vocabulary for random weights).
    fn open(&self, device: &Device) -> Result<(Model, Vec<u32>)> {
        match self {
            Self::File { path, weights } => {
                let (model, tok) = crate::model::load(path, device, *weights)?;
                let ids = tok.encode_plain(BENCH_TEXT)?;
                Ok((model, ids))
            }
            Self::Random { config, .. } => {
                let vocab = config.vocab as u64;
                // A fixed spread of ids (a multiplicative hash of 0..256).
                let ids = (0..256u64)
                    .map(|i| (i.wrapping_mul(2_654_435_761) % vocab) as u32)
                    .collect();
                Ok((Model::random_fast(config.clone(), device)?, ids))
            }
        }
    }

    /// How reports name it.
    fn label(&self) -> String {
        match self {
            Self::File { path, .. } => path.display().to_string(),
            Self::Random { preset, .. } => format!("{preset} (random weights)"),
        }
    }
}

/// Runs the benchmark of `source` on `device`.
pub fn run(source: &BenchModel, device: &Device, opts: &BenchOptions) -> Result<Report> {
    if opts.contexts.is_empty() || opts.contexts.contains(&0) {
        return Err(Error::arg(
            "--contexts",
            "give positive context lengths, e.g. 150,2000",
        ));
    }
    if opts.reps == 0 || opts.decode_tokens == 0 {
        return Err(Error::arg("--reps/--decode-tokens", "must be at least 1"));
    }
    if opts.roofline && !device.is_cpu() {
        return Err(Error::arg(
            "--roofline",
            "it measures the host's memory, which a GPU's decode does not read: leave it out with --device cuda/metal",
        ));
    }
    // Repetitions interleave the policies (rep 1 of each, then rep 2, ...), so that a slow
    // spell of a noisy machine hits every policy alike instead of one.
    let modes = if opts.positions.is_empty() {
        vec![opts.cache.positions]
    } else {
        opts.positions.clone()
    };
    let kv_types = if opts.kv_types.is_empty() {
        vec![opts.cache.kv_type]
    } else {
        opts.kv_types.clone()
    };
    let variants: Vec<CacheConfig> = opts
        .policies
        .iter()
        .flat_map(|&policy| {
            let modes = &modes;
            kv_types.iter().flat_map(move |&kv_type| {
                modes.iter().map(move |&positions| CacheConfig {
                    policy,
                    positions,
                    kv_type,
                    ..opts.cache.clone()
                })
            })
        })
        .collect();
    // Every setting is checked before the model loads: one policy's window may not fit a
    // budget another's does.
    for v in &variants {
        v.validate_with(&|name| format!("--{name} (with policy {})", v.policy.name()))?;
    }
    let (model, text_ids) = source.open(device)?;
    // Warm-up: thread pools, lazily repacked quantized weights, page faults.
    {
        let mut warm = Session::greedy(&model, CacheConfig::full())?;
        warm.prefill(&prompt_tokens(&text_ids, 32))?;
        warm.feed(text_ids[0])?;
    }
    let threads = candle_core::utils::get_num_threads();
    let token_bytes = model.token_bytes();
    let probe = || roofline::read_rate(threads, roofline::PROBE_BYTES, roofline::PASSES);
    let mut memory_read_rates = Vec::new();
    if opts.roofline {
        memory_read_rates.push(probe());
    }
    let label = |c: &CacheConfig| {
        let mut s = c.policy.name().to_string();
        if kv_types.len() > 1 {
            s = format!("{s} {}", c.kv_type);
        }
        if modes.len() > 1 && c.positions == Positions::Rebased {
            s = format!("{s} rebased");
        }
        s
    };
    let mut rows = Vec::new();
    for &ctx in &opts.contexts {
        let ids = prompt_tokens(&text_ids, ctx);
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); variants.len()];
        for _ in 0..opts.reps {
            for (i, cfg) in variants.iter().enumerate() {
                runs[i].push(run_once(&model, cfg.clone(), &ids, opts.decode_tokens)?);
            }
        }
        for (cfg, runs) in variants.iter().zip(runs) {
            let last = runs.last().cloned().unwrap_or_default();
            let median = |f: &dyn Fn(&Run) -> f64| Rate::of(runs.iter().map(f).collect());
            let per_token = opts.decode_tokens as f64;
            let decode_tps = median(&|r| per_token / r.decode_secs);
            let read_bytes = token_bytes + last.kv_bytes + last.profile_bytes;
            rows.push(Row {
                decoder: "ours".into(),
                policy: label(cfg),
                retained: last.retained,
                kv_bytes: last.kv_bytes,
                context: ctx,
                prefill_tps: median(&|r| ctx as f64 / r.prefill_secs),
                read_rate: read_bytes as f64 * decode_tps.median,
                read_bytes,
                decode_tps,
                prefill_secs: median(&|r| r.prefill_secs).median,
                policy_ms: median(&|r| 1e3 * r.policy_secs / per_token).median,
                policy_share: median(&|r| r.policy_secs / r.decode_secs).median,
                peak_rss_bytes: runs.iter().map(|r| r.peak_rss).max().unwrap_or(0),
            });
        }
    }
    rows.sort_by_key(|r| {
        let p = variants.iter().position(|c| label(c) == r.policy);
        (p, r.context)
    });
    if opts.roofline {
        memory_read_rates.push(probe());
    }
    // The reference reads GGUF llama files only, on the CPU; other models are measured
    // without it.
    if let (BenchModel::File { path, .. }, true) = (source, device.is_cpu()) {
        if let crate::model::Checkpoint::Gguf(file) = crate::model::Checkpoint::detect(path)? {
            let (ct, _) = open_gguf(&file)?;
            for &form in &opts.reference {
                rows.extend(reference_rows(&file, &ct, &text_ids, form, opts)?);
            }
        }
    }
    Ok(Report {
        model: source.label(),
        weights: model.weight_format().to_string(),
        device: crate::device::name(device),
        threads,
        token_bytes,
        memory_read_rates,
        rows,
    })
}

/// The same measurements with candle-transformers' `quantized_llama`, in a thread of its own
/// so that `CANDLE_DEQUANTIZE_ALL` (read once per thread) selects its weight form.
fn reference_rows(
    path: &Path,
    ct: &candle_core::quantized::gguf_file::Content,
    text_ids: &[u32],
    form: RefWeights,
    opts: &BenchOptions,
) -> Result<Vec<Row>> {
    use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};
    let arch = ct
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if arch != "llama" {
        return Ok(Vec::new());
    }
    if form == RefWeights::F32 {
        std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    } else {
        std::env::remove_var("CANDLE_DEQUANTIZE_ALL");
    }
    let path = path.to_path_buf();
    let text_ids = text_ids.to_vec();
    let opts = opts.clone();
    let handle = std::thread::spawn(move || -> Result<Vec<Row>> {
        let device = Device::Cpu;
        let (ct, mut reader) = open_gguf(&path)?;
        let mut model = ModelWeights::from_gguf(ct, &mut reader, &device)?;
        // Warm-up, as for ours.
        let warm = Tensor::new(&prompt_tokens(&text_ids, 32)[..], &device)?.unsqueeze(0)?;
        model.forward(&warm, 0)?;
        model.forward(&warm.narrow(1, 0, 1)?, 32)?;
        let mut rows = Vec::new();
        for &ctx in &opts.contexts {
            if ctx + opts.decode_tokens > MAX_SEQ_LEN {
                continue;
            }
            let ids = prompt_tokens(&text_ids, ctx);
            let (mut pf, mut dc, mut secs) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..opts.reps {
                let t0 = Instant::now();
                let x = Tensor::new(ids.as_slice(), &device)?.unsqueeze(0)?;
                let logits = model.forward(&x, 0)?.squeeze(0)?;
                let s = t0.elapsed().as_secs_f64();
                let mut next = argmax(&logits.to_vec1::<f32>()?);
                let t1 = Instant::now();
                for i in 0..opts.decode_tokens {
                    let x = Tensor::new(&[next], &device)?.unsqueeze(0)?;
                    let l = model.forward(&x, ctx + i)?.squeeze(0)?;
                    next = argmax(&l.to_vec1::<f32>()?);
                }
                dc.push(opts.decode_tokens as f64 / t1.elapsed().as_secs_f64());
                pf.push(ctx as f64 / s);
                secs.push(s);
            }
            rows.push(Row {
                decoder: form.label().into(),
                policy: "full".into(),
                retained: ctx + opts.decode_tokens,
                kv_bytes: 0,
                context: ctx,
                prefill_tps: Rate::of(pf),
                decode_tps: Rate::of(dc),
                prefill_secs: Rate::of(secs).median,
                policy_ms: 0.0,
                policy_share: 0.0,
                peak_rss_bytes: 0,
                read_bytes: 0,
                read_rate: 0.0,
            });
        }
        Ok(rows)
    });
    let rows = handle
        .join()
        .map_err(|_| Error::arg("bench", "the reference decoder's thread panicked"))?;
    std::env::remove_var("CANDLE_DEQUANTIZE_ALL");
    rows
}

/// A table (aligned for the terminal, or Markdown): one line per policy and context, with the
/// reference (the faster of its weight forms per column) beside it.
pub fn table(report: &Report, style: Style) -> String {
    let mut s = format!(
        "model {}  weights {}  device {}  threads {}\n",
        report.model, report.weights, report.device, report.threads
    );
    let roof = report.memory_read_rates.iter().copied().reduce(f64::max);
    if let Some(roof) = roof {
        let rates: Vec<String> = report
            .memory_read_rates
            .iter()
            .map(|r| format!("{:.1}", r / 1e9))
            .collect();
        s.push_str(&format!(
            "memory read rate {} GB/s (before / after the runs, {} threads); a token reads {:.1} MiB of weights: at most {:.1} tok/s decoding, whatever the code\n",
            rates.join(" / "),
            report.threads,
            report.token_bytes as f64 / (1024.0 * 1024.0),
            roof / report.token_bytes.max(1) as f64,
        ));
    }
    if style == Style::Markdown {
        s.push('\n');
    }
    let mut header = vec![
        "policy",
        "context",
        "retained",
        "prefill tok/s",
        "ref",
        "ratio",
        "decode tok/s",
        "ref",
        "ratio",
        "decode min-max",
        "policy ms",
        "share %",
        "peak RSS MiB",
        "read GB/s",
    ];
    if roof.is_some() {
        header.push("roof %");
    }
    let mut rows = Vec::new();
    for r in report.rows.iter().filter(|r| r.decoder == "ours") {
        let refs = || {
            report
                .rows
                .iter()
                .filter(|x| x.decoder.starts_with("reference") && x.context == r.context)
        };
        let best = |f: fn(&Row) -> f64| refs().map(f).reduce(f64::max);
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let ratio =
            |a: f64, b: Option<f64>| b.map_or("-".to_string(), |b| format!("{:.2}x", a / b));
        let rp = best(|x| x.prefill_tps.median);
        let rd = best(|x| x.decode_tps.median);
        let mut row = vec![
            r.policy.clone(),
            r.context.to_string(),
            r.retained.to_string(),
            format!("{:.1}", r.prefill_tps.median),
            cell(rp),
            ratio(r.prefill_tps.median, rp),
            format!("{:.1}", r.decode_tps.median),
            cell(rd),
            ratio(r.decode_tps.median, rd),
            format!("{:.1}-{:.1}", r.decode_tps.min, r.decode_tps.max),
            format!("{:.2}", r.policy_ms),
            format!("{:.1}", 100.0 * r.policy_share),
            format!("{:.0}", r.peak_rss_bytes as f64 / (1024.0 * 1024.0)),
            format!("{:.1}", r.read_rate / 1e9),
        ];
        if let Some(roof) = roof {
            row.push(format!("{:.0}", 100.0 * r.read_rate / roof));
        }
        rows.push(row);
    }
    s.push_str(&render(style, &header, &rows));
    s.push_str(
        "(tokens per second, median of the repetitions; ref = candle-transformers' quantized_llama\n with a full cache, the faster of its f32 and native weight forms per column; ratio = ours /\n ref; policy ms = time per decoded token spent observing attention, scoring and evicting,\n share = its part of the decode step; peak RSS = the process's peak during that run;\n read GB/s = the weights, K/V and profile a token reads, at the decode speed; roof % = that\n against the memory read rate, with --roofline)\n",
    );
    s
}

/// Speed against context length per policy (and the reference): decode and prefill charts.
pub fn plots(dir: &Path, report: &Report) -> Result<()> {
    let mut names: Vec<String> = Vec::new();
    for r in &report.rows {
        let n = if r.decoder == "ours" {
            r.policy.clone()
        } else {
            r.decoder.clone()
        };
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let series = |f: fn(&Row) -> f64| -> Vec<Series> {
        names
            .iter()
            .map(|n| Series {
                name: n.clone(),
                points: report
                    .rows
                    .iter()
                    .filter(|r| {
                        (r.decoder == "ours" && &r.policy == n)
                            || (r.decoder != "ours" && &r.decoder == n)
                    })
                    .map(|r| (r.context as f64, f(r)))
                    .collect(),
            })
            .collect()
    };
    Chart {
        title: "Decode speed against context length".into(),
        x_label: "context (tokens)".into(),
        y_label: "decode tokens/s".into(),
        series: series(|r| r.decode_tps.median),
    }
    .write(&dir.join("bench-decode.svg"))?;
    Chart {
        title: "Prefill speed against context length".into(),
        x_label: "context (tokens)".into(),
        y_label: "prefill tokens/s".into(),
        series: series(|r| r.prefill_tps.median),
    }
    .write(&dir.join("bench-prefill.svg"))
}

/// Memory against conversation length in a long generation: KV, profile and a full cache's KV.
pub fn checkpoint_plot(dir: &Path, rows: &[Checkpoint]) -> Result<()> {
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let line = |name: &str, f: &dyn Fn(&Checkpoint) -> f64| Series {
        name: name.into(),
        points: rows.iter().map(|r| (r.tokens as f64, f(r))).collect(),
    };
    Chart {
        title: "Cache memory during a long generation".into(),
        x_label: "tokens in the conversation".into(),
        y_label: "MiB".into(),
        series: vec![
            line("KV (this cache)", &|r| mib(r.kv_bytes)),
            line("profile", &|r| mib(r.profile_bytes)),
            line("KV (full cache)", &|r| mib(r.full_kv_bytes)),
            line("peak RSS", &|r| r.peak_rss_bytes as f64 / (1024.0 * 1024.0)),
        ],
    }
    .write(&dir.join("memory-long-run.svg"))
}

/// Resets the process's peak RSS (VmHWM) so the next run's peak is its own (Linux; a no-op
/// elsewhere).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Text whose tokens are cycled to build benchmark prompts.
const BENCH_TEXT: &str = "The history of the printing press begins long before Gutenberg. \
Woodblock printing spread across East Asia by the ninth century, and movable type made of \
fired clay, then wood and bronze, followed. In Europe, paper mills, oil-based inks and the \
screw press of vintners came together in Mainz around 1450. Within fifty years presses ran in \
more than two hundred cities, and the price of a book fell by an order of magnitude. Scholars \
argue about how much of the Reformation, the scientific revolution and the rise of vernacular \
literature followed from cheap print, but few doubt that the speed at which ideas could be \
copied changed what a single person could learn in a lifetime.\n";

/// Memory and speed at one point of a long generation.
#[derive(Debug, Clone, Serialize)]
pub struct Checkpoint {
    /// Tokens in the conversation (prompt + generated).
    pub tokens: usize,
    /// Decode speed since the previous checkpoint.
    pub decode_tps: f64,
    pub retained: usize,
    pub kv_bytes: usize,
    pub profile_bytes: usize,
    pub full_kv_bytes: usize,
    /// Resident set size now, and its peak so far (Linux; 0 elsewhere).
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

/// Generates `total` tokens greedily (end-of-sequence ignored) after a short prompt under
/// `cache`, reporting memory and speed when the conversation reaches each checkpoint.
pub fn long_run(
    source: &BenchModel,
    device: &Device,
    cache: &CacheConfig,
    total: usize,
    checkpoints: &[usize],
) -> Result<Vec<Checkpoint>> {
    let (model, prompt) = source.open(device)?;
    let mut session = Session::greedy(&model, cache.clone())?;
    session.prefill(&prompt)?;
    let mut out = Vec::new();
    let mut marks: Vec<usize> = checkpoints
        .iter()
        .copied()
        .filter(|&c| c <= total)
        .collect();
    marks.sort_unstable();
    let seen = session.cache().seen();
    if seen < total {
        let (mut t0, mut since) = (Instant::now(), seen);
        session.generate(&decode_only(total - seen), |phase, s| {
            let kv = s.cache();
            if matches!(phase, Phase::Fed(_)) && marks.first() == Some(&kv.seen()) {
                marks.remove(0);
                let (rss, peak) = rss();
                out.push(Checkpoint {
                    tokens: kv.seen(),
                    decode_tps: (kv.seen() - since) as f64 / t0.elapsed().as_secs_f64(),
                    retained: kv.retained(),
                    kv_bytes: kv.kv_bytes(),
                    profile_bytes: kv.profile_bytes(),
                    full_kv_bytes: kv.full_kv_bytes(),
                    rss_bytes: rss,
                    peak_rss_bytes: peak,
                });
                (t0, since) = (Instant::now(), kv.seen());
            }
            ControlFlow::Continue(())
        })?;
    }
    Ok(out)
}

/// Current and peak resident set size from `/proc/self/status` (0, 0 where unavailable).
pub fn rss() -> (u64, u64) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (0, 0);
    };
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// An aligned table of checkpoints.
pub fn checkpoint_table(rows: &[Checkpoint]) -> String {
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let mut s = format!(
        "{:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9}\n",
        "tokens", "decode", "retained", "KV MiB", "prof MiB", "full MiB", "RSS MiB", "peak MiB"
    );
    for r in rows {
        s.push_str(&format!(
            "{:>8} {:>9.1} {:>9} {:>9.1} {:>9.1} {:>10.1} {:>9.1} {:>9.1}\n",
            r.tokens,
            r.decode_tps,
            r.retained,
            mib(r.kv_bytes),
            mib(r.profile_bytes),
            mib(r.full_kv_bytes),
            mib(r.rss_bytes as usize),
            mib(r.peak_rss_bytes as usize),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_reports_median_and_spread() {
        let r = Rate::of(vec![3.0, 1.0, 2.0, 10.0]);
        assert_eq!((r.median, r.min, r.max), (2.5, 1.0, 10.0));
        assert_eq!(Rate::of(vec![4.0, 1.0, 9.0]).median, 4.0);
    }

    #[test]
    fn rss_grows_with_a_touched_allocation() {
        let (before, _) = rss();
        assert!(before > 0, "VmRSS should be readable on Linux");
        let block = std::hint::black_box(vec![1u8; 64 << 20]);
        let (after, peak) = rss();
        assert!(after >= before + (32 << 20), "{before} -> {after}");
        assert!(peak >= after);
        drop(block);
    }
}
