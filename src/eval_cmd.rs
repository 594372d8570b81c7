//! `morphkv eval`: builds the grid of caches from the flags, runs the tasks asked for, and
//! prints tables (or Markdown), JSON and plots.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cli::EvalArgs;
use crate::{load, Loaded};
use morphkv::cache::{CacheConfig, KvType, PolicyKind, Positions};
use morphkv::chat::ChatTemplate;
use morphkv::eval::equal::{self, EqualBytes};
use morphkv::eval::report::{self, Style};
use morphkv::eval::{self, Answer, Fidelity, Fluency, Perplexity, RecallResult, Text, Variant};

/// Everything one `eval` run measured, for `--json`.
#[derive(Debug, Default, Serialize)]
struct EvalReport {
    model: String,
    text: Option<Vec<Fidelity>>,
    generation: Option<Vec<Fidelity>>,
    answers: Option<Vec<Answer>>,
    recall: Option<Vec<RecallResult>>,
    fluency: Option<Vec<Fluency>>,
    perplexity: Option<Perplexity>,
    equal_bytes: Option<EqualReport>,
}

/// `--equal-bytes`: the rows of the text task at equal memory, and the settings left out.
#[derive(Debug, Default, Serialize)]
struct EqualReport {
    sizes: Vec<usize>,
    rows: Vec<EqualBytes>,
    left_out: Vec<String>,
}

/// A one-line progress bar on stderr, redrawn at most a few times a second; where stderr is
/// not a terminal, one line per minute and one at the end.
struct Progress {
    what: String,
    start: Instant,
    last: Option<Instant>,
    tty: bool,
}

impl Progress {
    fn new(what: &str) -> Self {
        Self {
            what: what.to_string(),
            start: Instant::now(),
            last: None,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn update(&mut self, done: usize, total: usize) {
        let now = Instant::now();
        let every = if self.tty { 250 } else { 60_000 };
        if done < total && self.last.is_some_and(|l| (now - l).as_millis() < every) {
            return;
        }
        self.last = Some(now);
        let frac = done as f64 / total.max(1) as f64;
        let secs = self.start.elapsed().as_secs_f64();
        let eta = if done > 0 { secs / frac - secs } else { 0.0 };
        let bar: String = (0..30)
            .map(|i| if (i as f64) < frac * 30.0 { '#' } else { '.' })
            .collect();
        let line = format!(
            "{} [{bar}] {done}/{total} ({:.0}s, ETA {:.0}s)",
            self.what, secs, eta
        );
        if self.tty {
            eprint!("\r{line}   ");
            if done >= total {
                eprintln!();
            }
        } else if self.last.is_some() {
            eprintln!("{line}");
        }
        let _ = std::io::stderr().flush();
    }
}

fn variants(a: &EvalArgs) -> Result<Vec<Variant>> {
    let base = a.cache.config()?;
    let budgets = if !a.equal_bytes.is_empty() {
        // A placeholder: `--equal-bytes` sizes each setting once the model's shape is known.
        vec![morphkv::cache::limits::BUDGET.max]
    } else if a.budgets.is_empty() {
        vec![base.budget]
    } else {
        a.budgets.clone()
    };
    // `None`: each policy's own default window.
    let windows: Vec<Option<usize>> = if a.windows.is_empty() {
        vec![base.window]
    } else {
        a.windows.iter().copied().map(Some).collect()
    };
    let recents: Vec<Option<usize>> = if a.recents.is_empty() {
        vec![base.recent]
    } else {
        a.recents.iter().copied().map(Some).collect()
    };
    let fusions = if a.fusions.is_empty() {
        vec![base.fusion]
    } else {
        a.fusions
            .iter()
            .map(|f| f.parse())
            .collect::<morphkv::Result<_>>()?
    };
    let positions = if a.both_positions {
        vec![Positions::Absolute, Positions::Rebased]
    } else {
        vec![base.positions]
    };
    let kv_types = if a.kv_types.is_empty() {
        vec![base.kv_type]
    } else {
        a.kv_types
            .iter()
            .map(|t| t.parse())
            .collect::<morphkv::Result<_>>()?
    };
    let profiles = if a.profiles.is_empty() {
        vec![base.profile]
    } else {
        a.profiles
            .iter()
            .map(|t| t.parse())
            .collect::<morphkv::Result<_>>()?
    };
    let mut out = Vec::new();
    for (p, &kv_type) in a
        .policies
        .iter()
        .flat_map(|p| kv_types.iter().map(move |t| (p, t)))
    {
        let policy: PolicyKind = p.parse()?;
        if policy == PolicyKind::Full && kv_type == KvType::F32 {
            // The full cache in f32 is the reference of every figure; it always runs. (A
            // full cache of another KV type is measured against it.)
            continue;
        }
        // A full cache keeps everything: its budget does not matter.
        let bs = if policy == PolicyKind::Full {
            &budgets[..1]
        } else {
            &budgets[..]
        };
        for &budget in bs {
            let ws: &[Option<usize>] = if matches!(policy, PolicyKind::MorphKv | PolicyKind::H2o) {
                &windows
            } else {
                &windows[..1]
            };
            for &window in ws {
                let fs = if policy == PolicyKind::MorphKv {
                    &fusions[..]
                } else {
                    &fusions[..1]
                };
                // Only the policies that keep rows have a profile to store.
                let rows = CacheConfig {
                    policy,
                    window,
                    ..base.clone()
                }
                .build_policy()
                .needs()
                .rows;
                let ps = if rows > 0 {
                    &profiles[..]
                } else {
                    &profiles[..1]
                };
                // The cache and StreamingLLM keep recent tokens already: one share, theirs.
                let rs = if matches!(policy, PolicyKind::Full | PolicyKind::Streaming) {
                    &[None][..]
                } else {
                    &recents[..]
                };
                for (&fusion, &profile) in fs.iter().flat_map(|f| ps.iter().map(move |p| (f, p))) {
                    for (&pos, &recent) in positions
                        .iter()
                        .flat_map(|p| rs.iter().map(move |r| (p, r)))
                    {
                        let cfg = CacheConfig {
                            policy,
                            budget,
                            window,
                            recent,
                            fusion,
                            positions: pos,
                            kv_type,
                            profile,
                            ..base.clone()
                        };
                        cfg.validate()?;
                        out.push(Variant::new(cfg));
                    }
                }
            }
        }
    }
    Ok(out)
}

pub fn run(mut a: EvalArgs) -> Result<()> {
    const TASKS: [&str; 5] = ["text", "generation", "recall", "fluency", "perplexity"];
    match a.suite.as_deref() {
        None => {}
        Some("default") => {
            a.task = vec!["text".into(), "generation".into(), "recall".into()];
            a.policies = morphkv::cache::POLICIES
                .iter()
                .map(|p| p.to_string())
                .collect();
            a.budgets = vec![64, 128, 256];
            a.equal_bytes = Vec::new();
            a.windows = Vec::new();
            a.recents = Vec::new();
            a.cache.window = Some(16);
            a.tokens = 1024;
            a.bin = 256;
            a.max_texts = 1;
            a.max_prompts = 1;
            a.answer_tokens = 384;
            a.max_probes = 3;
            a.distance = 600;
        }
        Some(other) => bail!("invalid value for --suite: `{other}` (the one suite is `default`)"),
    }
    for t in &a.task {
        if !TASKS.contains(&t.as_str()) {
            bail!(
                "invalid value for --task: `{t}` (choose from {})",
                TASKS.join(", ")
            );
        }
    }
    if a.tokens < 2 {
        bail!("invalid value for --tokens: give at least 2");
    }
    let mut variants = variants(&a)?;
    let reference = if a.fast_reference {
        eval::Reference::Fast
    } else {
        eval::Reference::Exact
    };
    let texts = Text::load(&a.texts)?;
    let prompts = eval::load_prompts(a.prompts.as_deref())?;
    let probes = eval::load_probes(a.probes.as_deref())?;
    if let Some(dir) = &a.plots {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the --plots folder {}", dir.display()))?;
    }
    let Loaded {
        model,
        tokenizer,
        path,
        preset,
    } = load(&a.model)?;
    let mut rep = EvalReport {
        model: path.display().to_string(),
        ..EvalReport::default()
    };
    // `--equal-bytes`: every setting at each size's largest budget that fits.
    let sized = if a.equal_bytes.is_empty() {
        None
    } else {
        let templates: Vec<CacheConfig> = variants.iter().map(|v| v.cache.clone()).collect();
        let shape = morphkv::cache::Shape::from(model.config());
        let (sized, notes) = equal::size(&templates, &a.equal_bytes, &shape, "--equal-bytes");
        if sized.is_empty() {
            bail!(
                "--equal-bytes: no cache fits any of the sizes given:\n{}",
                notes.join("\n")
            );
        }
        for n in &notes {
            eprintln!("note: not run: {n}");
        }
        variants = sized.iter().map(|s| s.variant.clone()).collect();
        rep.equal_bytes = Some(EqualReport {
            sizes: a.equal_bytes.clone(),
            rows: Vec::new(),
            left_out: notes,
        });
        Some(sized)
    };
    let template_name = a
        .chat_template
        .as_deref()
        .or(preset.as_ref().and_then(|p| p.template.as_deref()));
    let style = if a.markdown {
        Style::Markdown
    } else {
        Style::Plain
    };
    let heading = |s: &str| {
        if a.markdown {
            println!("\n### {s}\n");
        } else {
            println!("\n== {s} ==");
        }
    };
    let tokens_of = |t: &Text| -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if tokenizer.add_bos() {
            ids.extend(tokenizer.bos_id());
        }
        ids.extend(tokenizer.encode_plain(&t.body)?);
        Ok(ids)
    };

    if a.task.iter().any(|t| t == "text") {
        let mut ids = Vec::new();
        let largest = variants.iter().map(|v| v.cache.budget).max().unwrap_or(0);
        for t in texts.iter().take(a.max_texts.max(1)) {
            let mut toks = tokens_of(t)?;
            toks.truncate(a.tokens);
            if toks.len() <= largest && sized.is_some() {
                bail!(
                    "--text: `{}` gives {} tokens, no more than the largest budget --equal-bytes chose ({largest}): no cache would evict anything; give a longer text (or a larger --tokens) or smaller --equal-bytes",
                    t.name,
                    toks.len()
                );
            }
            if toks.len() <= largest {
                bail!(
                    "--text: `{}` gives {} tokens, no more than the largest budget ({largest}): no cache would evict anything; give a longer text (or a larger --tokens) or smaller --budgets",
                    t.name,
                    toks.len()
                );
            }
            ids.push(toks);
        }
        let mut bar = Progress::new("text");
        let fids = eval::teacher_forced(&model, &ids, &variants, a.bin, reference, &mut |d, n| {
            bar.update(d, n)
        })?;
        let names: Vec<&str> = texts
            .iter()
            .take(a.max_texts.max(1))
            .map(|t| t.name.as_str())
            .collect();
        heading(&format!(
            "teacher-forced: {} ({} tokens each), against the full cache",
            names.join(", "),
            a.tokens
        ));
        print!("{}", report::fidelity_table(&fids, style));
        heading("change in perplexity (%) by position");
        print!("{}", report::bins_table(&fids, "ppl", style));
        heading("top-1 agreement with the full cache (%) by position");
        print!("{}", report::bins_table(&fids, "top1", style));
        if let Some(dir) = &a.plots {
            morphkv::eval::plot::fidelity_plots(dir, "text", &fids)?;
        }
        if let (Some(sized), Some(eq)) = (&sized, &mut rep.equal_bytes) {
            heading("at equal memory: each cache's budget is the largest whose K/V + profile bytes fit the size");
            for m in equal::mismatches(sized, &fids) {
                println!("note: {m}");
            }
            eq.rows = equal::rows(sized, &fids);
            print!("{}", report::equal_bytes_table(&eq.rows, style));
            if !eq.left_out.is_empty() {
                println!();
            }
            for n in &eq.left_out {
                println!("not run: {n}");
            }
            if let Some(dir) = &a.plots {
                morphkv::eval::plot::bytes_plots(dir, "text", &eq.rows)?;
            }
        }
        rep.text = Some(fids);
    }

    if a.task.iter().any(|t| t == "generation") {
        let template = ChatTemplate::for_model(&tokenizer, template_name, Some(&path))?;
        let prompts = &prompts[..a.max_prompts.clamp(1, prompts.len())];
        let mut bar = Progress::new("generation");
        let (fids, answers) = eval::long_generation(
            &model,
            &tokenizer,
            &template,
            prompts,
            a.answer_tokens,
            &variants,
            a.bin,
            reference,
            &mut |d, n| bar.update(d, n),
        )?;
        heading(&format!(
            "long generation: the full cache's greedy answers ({} tokens each), replayed",
            a.answer_tokens
        ));
        print!("{}", report::answers_table(&answers, style));
        println!();
        print!("{}", report::fidelity_table(&fids, style));
        heading("agreement with the model's own answer (%) by answer position");
        print!("{}", report::bins_table(&fids, "top1", style));
        if let Some(dir) = &a.plots {
            morphkv::eval::plot::fidelity_plots(dir, "generation", &fids)?;
        }
        rep.generation = Some(fids);
        rep.answers = Some(answers);
    }

    if a.task.iter().any(|t| t == "recall") {
        let template = ChatTemplate::for_model(&tokenizer, template_name, Some(&path))?;
        let filler = tokenizer.encode_plain(&texts[0].body)?;
        let probes = &probes[..a.max_probes.clamp(1, probes.len())];
        let mut bar = Progress::new("recall");
        let results = eval::recall(
            &model,
            &tokenizer,
            &template,
            probes,
            &filler,
            a.distance,
            &variants,
            24,
            &mut |d, n| bar.update(d, n),
        )?;
        heading(&format!(
            "recall: {} probes, {} tokens of `{}` between fact and question",
            probes.len(),
            a.distance,
            texts[0].name
        ));
        print!("{}", report::recall_table(&results, style));
        rep.recall = Some(results);
    }

    if a.task.iter().any(|t| t == "fluency") {
        let template = ChatTemplate::for_model(&tokenizer, template_name, Some(&path))?;
        let prompt = &prompts[0];
        let opts = eval::FluencyOptions {
            tokens: a.answer_tokens,
            judged: a.judge_tokens,
            context: a.judge_context,
            sampling: crate::sampling_params(&a.sampling, 42),
        };
        let mut bar = Progress::new("fluency");
        let results = eval::fluency(
            &model,
            &tokenizer,
            &template,
            &prompt.text,
            &variants,
            &opts,
            &mut |d, n| bar.update(d, n),
        )?;
        heading(&format!(
            "fluency: {} tokens generated per cache for `{}`, the last {} judged by a fresh full cache given the {} before them",
            a.answer_tokens, prompt.name, a.judge_tokens, a.judge_context
        ));
        print!("{}", report::fluency_table(&results, style));
        for f in &results {
            println!("\n{} ends: {}", f.label, f.tail.replace('\n', " ").trim());
        }
        rep.fluency = Some(results);
    }

    if a.task.iter().any(|t| t == "perplexity") {
        let mut ids = tokens_of(&texts[0])?;
        ids.truncate(a.tokens.max(a.ctx_size));
        let mut bar = Progress::new("perplexity");
        let p = eval::perplexity(&model, &tokenizer, &ids, a.ctx_size, &mut |d, n| {
            bar.update(d, n)
        })?;
        heading(&format!(
            "perplexity (llama-perplexity procedure) of `{}`, full cache",
            texts[0].name
        ));
        print!("{}", report::perplexity_text(&p));
        rep.perplexity = Some(p);
    }

    if let Some(p) = &a.json {
        let json = serde_json::to_string_pretty(&rep)?;
        std::fs::write(p, json).with_context(|| format!("writing --json {}", p.display()))?;
    }
    Ok(())
}
