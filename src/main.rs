//! The `morphkv` binary: parse the command line, dispatch, and print errors on one line.

mod chat_cmd;
mod cli;
mod eval_cmd;
mod models_cmd;

use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;

use cli::{BenchArgs, Cli, Command, GenerateArgs, ModelArgs};
use morphkv::bench::BenchModel;
use morphkv::cache::{KvCache, Positions};
use morphkv::chat::{encode_chat, ChatTemplate, Message};
use morphkv::device::DeviceSpec;
use morphkv::engine::trace::Recorder;
use morphkv::model::{Model, WeightFormat};
use morphkv::sampling::{Sampler, SamplingParams};
use morphkv::session::{GenerateOptions, Phase, Session};
use morphkv::tokenizer::{StreamDecoder, Tokenizer};

fn main() -> ExitCode {
    // Chat templates from model files render in a child process: this binary, started again.
    if let Some(code) = morphkv::chat::sandbox::serve_if_asked() {
        return code;
    }
    morphkv::chat::sandbox::enable_for_this_binary();
    let cli = match Cli::try_parse_from(cli::normalize_args(std::env::args_os())) {
        Ok(c) => c,
        Err(e) if e.kind() == clap::error::ErrorKind::ValueValidation => {
            // One line, like every other error: clap's says the flag, the value and why.
            let text = e.render().to_string();
            eprintln!("{}", text.lines().next().unwrap_or("error: invalid value"));
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        None => chat_cmd::run(cli.chat),
        Some(Command::Chat(a)) => chat_cmd::run(a),
        Some(Command::Generate(a)) => run_generate(a),
        Some(Command::Bench(a)) => run_bench(a),
        Some(Command::Eval(a)) => eval_cmd::run(*a),
        Some(Command::Models(c)) => models_cmd::run(c),
        Some(Command::Replay(a)) => chat_cmd::replay(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A loaded model with its tokenizer.
struct Loaded {
    model: Model,
    tokenizer: Tokenizer,
    /// The model file or checkpoint folder.
    path: std::path::PathBuf,
    /// The preset it came from (chat template and cache suggestions).
    preset: Option<morphkv::models::Preset>,
}

impl Loaded {
    /// `--chat-template` if given, else the preset's override, else the model's own.
    fn template(&self, flag: Option<&str>) -> Result<ChatTemplate> {
        let name = flag.or(self.preset.as_ref().and_then(|p| p.template.as_deref()));
        Ok(ChatTemplate::for_model(
            &self.tokenizer,
            name,
            Some(&self.path),
        )?)
    }
}

fn load(args: &ModelArgs) -> Result<Loaded> {
    if let Some(n) = args.threads {
        // candle's CPU kernels read RAYON_NUM_THREADS when their pool starts.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let weights: WeightFormat = args.weights.as_deref().unwrap_or("auto").parse()?;
    // Before the model is resolved: a bad --device fails fast, before any download.
    let device = args
        .device
        .as_deref()
        .unwrap_or("auto")
        .parse::<DeviceSpec>()?
        .open()?;
    let resolved = models_cmd::resolve_preset(args.model.as_deref(), args.offline)?;
    let (model, tokenizer) = morphkv::model::load(&resolved.path, &device, weights)?;
    Ok(Loaded {
        model,
        tokenizer,
        path: resolved.path,
        preset: resolved.preset,
    })
}

/// Largest prompt file `-f` reads (a prompt that size is ~100M tokens).
const MAX_PROMPT_FILE: u64 = 256 << 20;

/// The prompt from `-p TEXT`, `-p -` (stdin) or `-f FILE`.
fn read_prompt(p: Option<&str>, file: Option<&std::path::Path>) -> Result<String> {
    let text = match (p, file) {
        (_, Some(f)) => {
            let meta = std::fs::metadata(f)
                .with_context(|| format!("-f {}: cannot read it", f.display()))?;
            if !meta.is_file() {
                bail!("-f {}: not a regular file: pass a text file", f.display());
            }
            if meta.len() > MAX_PROMPT_FILE {
                bail!(
                    "-f {}: {} bytes, over the {} MiB a prompt file may have",
                    f.display(),
                    meta.len(),
                    MAX_PROMPT_FILE >> 20
                );
            }
            let bytes = std::fs::read(f).with_context(|| format!("-f {}", f.display()))?;
            String::from_utf8(bytes)
                .map_err(|e| anyhow::anyhow!("-f {}: not UTF-8 text ({e})", f.display()))?
        }
        (Some("-"), None) => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the prompt from stdin")?;
            s
        }
        (Some(p), None) => p.to_string(),
        (None, None) => bail!("no prompt: pass text with -p, -p - for stdin, or -f FILE"),
    };
    if text.trim().is_empty() {
        bail!("the prompt is empty: pass text with -p, -p - to read it from stdin, or -f FILE");
    }
    Ok(text)
}

/// The sampling flags as parameters; `seed` when none was given (random for chat/generate).
pub(crate) fn sampling_params(a: &cli::SamplingArgs, seed: u64) -> SamplingParams {
    SamplingParams {
        temp: a.temp,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        repeat_last_n: a.repeat_last_n,
        seed: a.seed.unwrap_or(seed),
    }
}

fn run_generate(a: GenerateArgs) -> Result<()> {
    let prompt = read_prompt(a.prompt.as_deref(), a.file.as_deref())?;
    if a.n_predict == 0 {
        bail!("invalid value for -n: 0 tokens requested (give a positive number)");
    }
    let params = sampling_params(&a.sampling, rand::random());
    params.validate()?;
    // Bad flags fail before the model loads; the preset fills what they leave out.
    a.cache.config()?;
    // The trace is written at the end; a file that cannot be made fails before the model loads.
    if let Some(p) = &a.trace {
        std::fs::File::create(p)
            .with_context(|| format!("creating --trace file {}", p.display()))?;
    }
    let loaded = load(&a.model)?;
    let cache_cfg = a.cache.config_with(
        &loaded
            .preset
            .as_ref()
            .map(|p| p.cache.clone())
            .unwrap_or_default(),
    )?;
    let template = loaded.template(a.chat_template.as_deref())?;
    let Loaded {
        model,
        tokenizer,
        path: model_path,
        ..
    } = loaded;

    let ids = if a.raw {
        let mut ids = Vec::new();
        if tokenizer.add_bos() {
            ids.extend(tokenizer.bos_id());
        }
        ids.extend(tokenizer.encode_special(&prompt)?);
        ids
    } else {
        let mut messages = Vec::new();
        if let Some(sys) = &a.system {
            messages.push(Message::system(sys));
        }
        messages.push(Message::user(&prompt));
        encode_chat(&tokenizer, &template.render(&messages, true)?)?
    };

    let mut cache = KvCache::from_config(model.config(), cache_cfg, model.device())?;
    let mut trace = a
        .trace
        .as_ref()
        .map(|_| Recorder::new(&mut cache, model.config().n_kv_head));
    let mut session = Session::new(&model, cache, Sampler::new(params.clone())?);
    let opts = GenerateOptions {
        max_new: a.n_predict,
        stop: tokenizer.stop_ids().to_vec(),
        ignore_eos: a.ignore_eos,
        feed_last: false,
    };
    let mut stream = StreamDecoder::default();
    let mut stdout = std::io::stdout().lock();
    let mut io_err = None;
    let (_, stats) = session.run(&ids, &opts, |phase, s| {
        // The evictions of each step (the prompt's before the first token is sampled).
        if let Some(r) = trace.as_mut() {
            r.step(s.cache_mut());
        }
        let Phase::Sampled(sampled) = phase else {
            return ControlFlow::Continue(());
        };
        let t = sampled.token;
        match stream.push(&tokenizer, t) {
            Ok(Some(piece)) => {
                if let Err(e) = stdout
                    .write_all(piece.as_bytes())
                    .and_then(|()| stdout.flush())
                {
                    io_err = Some(anyhow::Error::from(e));
                    return ControlFlow::Break(());
                }
            }
            Ok(None) => {}
            Err(e) => {
                io_err = Some(e.into());
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    if let Some(e) = io_err {
        return Err(e);
    }
    let rest = stream.finish(&tokenizer)?;
    writeln!(stdout, "{rest}")?;
    drop(stdout);
    eprintln!(
        "\nprompt: {} tokens, {:.1} tok/s | decode: {} tokens, {:.1} tok/s | stop: {:?} | seed {}",
        stats.prompt_tokens,
        stats.prompt_tps(),
        stats.generated,
        stats.decode_tps(),
        stats.stop,
        params.seed,
    );
    if let (Some(r), Some(p)) = (trace.as_mut(), &a.trace) {
        let text = session
            .fed()
            .iter()
            .map(|&t| tokenizer.token_text(t))
            .collect();
        let name = model_path
            .file_stem()
            .map_or("model".into(), |f| f.to_string_lossy().into_owned());
        r.write(p, session.cache_mut(), &name, text)
            .context("writing --trace")?;
    }
    let cache = session.cache();
    let c = cache.config();
    let saving = 100.0 * (1.0 - stats.kv_bytes as f64 / stats.full_kv_bytes.max(1) as f64);
    eprintln!(
        "kv cache: {} budget {} window {} | {} tokens retained per head of {} seen | KV {} + profile {} (full cache: {}, {saving:.0}% saved) | weights {} {} on {}",
        c.policy.name(),
        c.budget,
        c.effective_window(),
        stats.retained,
        cache.seen(),
        human_bytes(stats.kv_bytes),
        human_bytes(stats.profile_bytes),
        human_bytes(stats.full_kv_bytes),
        model.weight_format(),
        human_bytes(model.weight_bytes()),
        morphkv::device::name(model.device()),
    );
    Ok(())
}

fn run_bench(a: BenchArgs) -> Result<()> {
    if let Some(n) = a.model.threads {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let weights: WeightFormat = a.model.weights.as_deref().unwrap_or("auto").parse()?;
    let device = a
        .model
        .device
        .as_deref()
        .unwrap_or("auto")
        .parse::<DeviceSpec>()?
        .open()?;
    let cache = a.cache.config()?;
    let source = match &a.random_weights {
        Some(name) => BenchModel::Random {
            preset: name.clone(),
            config: morphkv::models::Registry::load()?.random_config(name)?,
        },
        None => BenchModel::File {
            path: models_cmd::resolve(a.model.model.as_deref(), a.model.offline)?,
            weights,
        },
    };
    if let Some(dir) = &a.plots {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the --plots folder {}", dir.display()))?;
    }
    if a.chat {
        let BenchModel::File { path, weights } = &source else {
            bail!("--chat measures a model file: drop --random-weights");
        };
        let compare = match &a.compare {
            Some(p) => {
                let c = morphkv::cache::CacheConfig {
                    policy: p.parse().map_err(|e| anyhow::anyhow!("--compare: {e}"))?,
                    ..cache.clone()
                };
                c.validate()?;
                Some(c)
            }
            None => None,
        };
        let r = morphkv::bench::chat_vs_generate(
            path,
            *weights,
            &device,
            &cache,
            compare.as_ref(),
            a.decode_tokens,
            a.reps,
        )?;
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "prompt {} tokens, {} generated, {} b{}\ngenerate tok/s: {}\nchat tok/s:     {}\nchat / generate (medians): {:.2}",
            r.prompt_tokens,
            r.generated,
            cache.policy.name(),
            cache.budget,
            list(&r.generate_tps),
            list(&r.chat_tps),
            r.ratio
        );
        if let Some(c) = &r.compare {
            println!(
                "chat comparing with {} tok/s: {}\ntime per token, compare on / off (medians): {:.2}",
                c.against,
                list(&c.chat_tps),
                c.cost
            );
        }
        if let Some(p) = a.json {
            let json = serde_json::to_string_pretty(&r)?;
            std::fs::write(&p, json).with_context(|| format!("writing {}", p.display()))?;
        }
        return Ok(());
    }
    if let Some(total) = a.generate {
        let rows = morphkv::bench::long_run(&source, &device, &cache, total, &a.checkpoints)?;
        print!("{}", morphkv::bench::checkpoint_table(&rows));
        if let Some(dir) = &a.plots {
            morphkv::bench::checkpoint_plot(dir, &rows)?;
        }
        if let Some(p) = a.json {
            let json = serde_json::to_string_pretty(&rows)?;
            std::fs::write(&p, json).with_context(|| format!("writing {}", p.display()))?;
        }
        return Ok(());
    }
    let policies = if a.policies.is_empty() {
        vec![cache.policy]
    } else {
        a.policies
            .iter()
            .map(|p| p.parse())
            .collect::<morphkv::Result<_>>()?
    };
    let opts = morphkv::bench::BenchOptions {
        contexts: a.contexts,
        decode_tokens: a.decode_tokens,
        reps: a.reps,
        reference: if a.no_reference {
            Vec::new()
        } else {
            a.reference
                .iter()
                .map(|r| r.parse())
                .collect::<morphkv::Result<_>>()?
        },
        cache,
        policies,
        positions: if a.both_positions {
            vec![Positions::Absolute, Positions::Rebased]
        } else {
            Vec::new()
        },
        kv_types: a
            .kv_types
            .iter()
            .map(|t| t.parse())
            .collect::<morphkv::Result<_>>()?,
        roofline: a.roofline,
    };
    let report = morphkv::bench::run(&source, &device, &opts)?;
    let style = if a.markdown {
        morphkv::eval::report::Style::Markdown
    } else {
        morphkv::eval::report::Style::Plain
    };
    print!("{}", morphkv::bench::table(&report, style));
    if let Some(dir) = &a.plots {
        morphkv::bench::plots(dir, &report)?;
    }
    if let Some(p) = a.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(&p, json).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// Bytes as KiB / MiB / GiB with one decimal.
fn human_bytes(b: usize) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}
