//! Command-line interface (clap derive). Flag names follow llama.cpp where one exists.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use morphkv::cache::limits::{self, Limit};
use morphkv::cache::{EVICTING_POLICIES, KV_TYPE_LIST, POLICY_LIST, PROFILE_TYPE_LIST};

/// Most CPU threads `-t` accepts (ggml's own limit).
const THREADS: Limit = Limit {
    name: "threads",
    min: 1,
    max: 512,
};

/// A clap parser for a bounded whole number: the error says the range.
fn limited(limit: Limit) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync {
    move |s| limit.parse(s)
}

/// Local language models with a constant-size KV cache (MorphKV). With no command, opens
/// the chat.
#[derive(Debug, Parser)]
#[command(
    name = "morphkv",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub chat: ChatArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Chat in the terminal, with live panels of what the cache retains.
    Chat(ChatArgs),
    /// Generate text from a prompt, streaming it to stdout.
    Generate(GenerateArgs),
    /// Measure prefill and decode speed against context length.
    Bench(BenchArgs),
    /// Measure what each cache policy forgets: fidelity against the full cache, and memory.
    Eval(Box<EvalArgs>),
    /// List, download and remove models: presets from models.toml or Hub repos.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Open an eviction trace (from /trace or generate --trace) in the chat's panels, without
    /// a model: travel through its steps as in a live chat.
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The trace: a JSON Lines file written by /trace or generate --trace.
    #[arg(value_name = "TRACE.jsonl")]
    pub trace: PathBuf,
    /// Colour theme: dark, light, high-contrast, or a name from the config folder's themes/.
    #[arg(long)]
    pub theme: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Every preset: format, size, whether it is downloaded, and where.
    List,
    /// Download a preset or `owner/repo[:file]` into the Hugging Face cache.
    Pull {
        /// Preset name or `owner/repo[:file]`.
        name: String,
        /// Use the cache only (as HF_HUB_OFFLINE=1 does).
        #[arg(long)]
        offline: bool,
    },
    /// Delete a preset's downloaded files.
    Rm {
        /// Preset name.
        name: String,
    },
    /// Print where a downloaded preset is (a GGUF file or a checkpoint folder).
    Path {
        /// Preset name or `owner/repo[:file]`.
        name: String,
    },
    /// Write a GGUF with random weights at a preset's shapes (its `shape` table), typed as
    /// llama.cpp's llama-quantize types them: for benches and llama.cpp comparisons of
    /// models that are not downloaded.
    Random {
        /// Preset name, e.g. llama3.2-1b-instruct.
        name: String,
        /// File type: f16, q8_0, q4_0, q4_1, q4_k_m, q5_k_m.
        #[arg(long = "type", default_value = "q4_k_m")]
        file_type: String,
        /// The GGUF to write (must not exist).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// A GGUF model (or preset) whose tokenizer the file carries, and whose vocabulary
        /// sets the embedding's rows (default: the default preset).
        #[arg(long = "tokenizer-from")]
        tokenizer_from: Option<String>,
        /// Seed of the random values.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// Which model to run and how to hold its weights.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Model: a preset name from models.toml (default: smollm2-135m-instruct), a GGUF file,
    /// a safetensors folder, or a Hub repo `owner/repo[:file]`.
    #[arg(short = 'm', long = "model")]
    pub model: Option<String>,
    /// Never download: use the Hugging Face cache only (as HF_HUB_OFFLINE=1 does).
    #[arg(long)]
    pub offline: bool,
    /// Weight storage: auto, hybrid, native (file's quantization), f32, q8_0 (default: for the
    /// chat the config file's, else auto).
    #[arg(long)]
    pub weights: Option<String>,
    /// CPU threads (default: all cores).
    #[arg(short = 't', long, value_parser = limited(THREADS))]
    pub threads: Option<usize>,
    /// Where to run: auto (the first CUDA or Apple GPU this build supports, else the CPU),
    /// cpu, cuda[:N], metal[:N] (default: for the chat the config file's, else auto).
    #[arg(long)]
    pub device: Option<String>,
}

/// Sampling flags, as in llama.cpp.
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    pub temp: f32,
    /// Top-k sampling (0 = off).
    #[arg(long = "top-k", default_value_t = 40)]
    pub top_k: usize,
    /// Top-p (nucleus) sampling (1.0 = off).
    #[arg(long = "top-p", default_value_t = 0.95, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Min-p sampling (0.0 = off).
    #[arg(long = "min-p", default_value_t = 0.05, allow_negative_numbers = true)]
    pub min_p: f32,
    /// Penalize repeated tokens (1.0 = off).
    #[arg(
        long = "repeat-penalty",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    pub repeat_penalty: f32,
    /// Last n tokens the repeat penalty considers.
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    pub repeat_last_n: usize,
    /// RNG seed (default: random, printed in the stats).
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Prompt text; `-` reads it from stdin.
    #[arg(
        short = 'p',
        long,
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    pub prompt: Option<String>,
    /// Read the prompt from this file (llama.cpp's -f).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Tokens to generate at most.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    pub n_predict: usize,
    /// System prompt (also `-sys`).
    #[arg(long = "system-prompt")]
    pub system: Option<String>,
    /// Send the prompt as is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Keep generating through end-of-sequence tokens.
    #[arg(long = "ignore-eos")]
    pub ignore_eos: bool,
    /// Chat template to use instead of the model's: chatml or llama3.
    #[arg(long = "chat-template")]
    pub chat_template: Option<String>,
    /// Write the eviction trace (JSON Lines, as the chat's /trace: the settings, every token
    /// evicted per layer and head with its step and score, what each retains at the end);
    /// `morphkv replay FILE` shows it in the chat's panels.
    #[arg(long)]
    pub trace: Option<PathBuf>,
}

/// KV-cache flags, shared by every command that runs the engine.
#[derive(Debug, Args)]
pub struct CacheArgs {
    // Eviction policy: the registry's list.
    #[arg(long, help = format!("Eviction policy: {POLICY_LIST} (default: the preset's, else morphkv)"))]
    pub policy: Option<String>,
    /// Tokens kept per KV head per layer, the token being decoded included (default: the
    /// preset's, else 600).
    #[arg(long, value_parser = limited(limits::BUDGET))]
    pub budget: Option<usize>,
    /// Most recent tokens always kept, MorphKV's R (default: the preset's, else the policy's:
    /// 4 for morphkv, 30 otherwise; MorphKV's 30 with --recent 0 --history 0 is its paper's
    /// method).
    #[arg(long, value_parser = limited(limits::WINDOW))]
    pub window: Option<usize>,
    /// First tokens always kept (default: 4 for streaming, 0 otherwise).
    #[arg(long, value_parser = limited(limits::SINKS))]
    pub sinks: Option<usize>,
    /// Per cent of the budget kept for the most recent tokens whatever their scores, 0 to 100
    /// (default: 75 for morphkv, 50 for h2o as its paper splits the budget, 0 otherwise; the
    /// window is kept in any case; 0, with --history 0 --window 30, gives the paper's MorphKV).
    #[arg(long, value_parser = limited(limits::RECENT))]
    pub recent: Option<usize>,
    /// MorphKV: fuse the window's rows by sum or max (default: the preset's, else sum).
    #[arg(long)]
    pub fusion: Option<String>,
    /// MorphKV: aggregate the query heads of a KV head by sum or max.
    #[arg(long = "group-agg", default_value = "sum")]
    pub group_agg: String,
    /// MorphKV: add to each older token's score this per cent weight of the attention it has
    /// received since it entered the cache, fading with --half-life (H2O's signal, faded), 0
    /// to 1000 (0: the paper's method).
    #[arg(long, default_value_t = morphkv::cache::DEFAULT_HISTORY, value_parser = limited(limits::HISTORY))]
    pub history: usize,
    /// MorphKV: tokens after which a query's attention counts half as much in --history's
    /// sum (0: it never fades).
    #[arg(long = "half-life", default_value_t = morphkv::cache::DEFAULT_HALF_LIFE, value_parser = limited(limits::HALF_LIFE))]
    pub half_life: usize,
    /// Evict this many tokens at once when the cache is full (1 = every step).
    #[arg(long = "evict-every", default_value_t = 1, value_parser = limited(limits::EVICT_EVERY))]
    pub evict_every: usize,
    /// Prompt tokens per forward pass; the cache is compressed after each.
    #[arg(long = "prefill-chunk", default_value_t = 512, value_parser = limited(limits::PREFILL_CHUNK))]
    pub prefill_chunk: usize,
    /// RoPE positions: absolute (as in the paper) or rebased (numbered inside the cache, so a
    /// conversation can run past the model's trained context).
    #[arg(long, default_value = "absolute")]
    pub positions: String,
    // KV storage: the list of types.
    #[arg(long = "kv-type", default_value = "f16", help = format!("Key and value storage: {KV_TYPE_LIST} (as llama.cpp's -ctk/-ctv; q8_0 on the CPU only)"))]
    pub kv_type: String,
    // Attention profile storage: the list of types.
    #[arg(long, help = profile_help())]
    pub profile: Option<String>,
}

/// `--profile`'s help, naming the default.
fn profile_help() -> String {
    format!(
        "Attention profile storage (MorphKV's window of rows; TOVA's and SnapKV's rows): {PROFILE_TYPE_LIST} (default: {})",
        morphkv::cache::ProfileType::default()
    )
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Context lengths to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "150,2000")]
    pub contexts: Vec<usize>,
    /// Tokens decoded at each context length.
    #[arg(long = "decode-tokens", default_value_t = 32)]
    pub decode_tokens: usize,
    /// Repetitions (median reported).
    #[arg(long, default_value_t = 2)]
    pub reps: usize,
    /// Weight forms of candle-transformers' reference decoder to run beside ours: f32, native.
    #[arg(long, value_delimiter = ',', default_value = "f32,native")]
    pub reference: Vec<String>,
    /// Skip the reference decoder.
    #[arg(long = "no-reference")]
    pub no_reference: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Policies to measure, comma-separated (default: --policy).
    #[arg(long, value_delimiter = ',')]
    pub policies: Vec<String>,
    /// Run every policy with both absolute and re-based positions (the cost of re-basing).
    #[arg(long = "both-positions")]
    pub both_positions: bool,
    /// KV types to run every policy with, comma-separated (default: --kv-type), e.g.
    /// f32,f16,q8_0: speed and bytes of each side by side.
    #[arg(long = "kv-types", value_delimiter = ',', conflicts_with = "kv_type")]
    pub kv_types: Vec<String>,
    /// Measure a preset's architecture and shapes with random f32 weights instead of a model
    /// file (nothing is downloaded; speed does not depend on the values), e.g.
    /// llama3.2-1b-instruct. -m is ignored.
    #[arg(long = "random-weights", value_name = "PRESET")]
    pub random_weights: Option<String>,
    /// Instead: generate this many tokens (end-of-sequence ignored) under --policy and report
    /// memory (KV, profile, RSS and peak RSS) and speed at each of --checkpoints.
    #[arg(long)]
    pub generate: Option<usize>,
    /// Instead: the chat's decode speed (its engine, and the UI's update and draw, off
    /// screen) against `generate`'s, on the same long-answer prompt under --policy, greedy,
    /// --decode-tokens at most, --reps times alternating; prints both and their ratio.
    #[arg(long)]
    pub chat: bool,
    /// With --chat: also run the chat in compare mode against this policy (at --budget and
    /// --window) and report what the second cache costs per token.
    #[arg(long, requires = "chat")]
    pub compare: Option<String>,
    /// Conversation lengths at which --generate reports.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,2000,4000,8000,12000"
    )]
    pub checkpoints: Vec<usize>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Print a Markdown table instead of aligned text.
    #[arg(long)]
    pub markdown: bool,
    /// Also measure how fast this machine's memory streams with the same threads (512 MiB,
    /// before and after the runs) and show each decode as a share of it: a decoded token
    /// reads every weight, so that rate bounds decoding whatever the code.
    #[arg(long)]
    pub roofline: bool,
    /// Also write SVG plots (speed against context; memory against tokens) to this folder.
    #[arg(long)]
    pub plots: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// A preset run: `default` is every policy at budgets 64, 128 and 256 on the text,
    /// generation and recall tasks of the shipped suite, sized to finish in about a quarter
    /// of an hour on 2 cores. Flags given with it are overridden.
    #[arg(long)]
    pub suite: Option<String>,
    /// Compute the full cache's reference in chunks rather than token by token: much faster
    /// on long texts, equal up to float rounding.
    #[arg(long = "fast-reference")]
    pub fast_reference: bool,
    /// What to measure, comma-separated: text (teacher-forced long texts), generation (replay
    /// of the full cache's long answers), recall (facts asked for many tokens later), fluency
    /// (each cache generates --answer-tokens on its own; a fresh full cache judges the last
    /// --judge-tokens), perplexity (llama.cpp's llama-perplexity procedure, full cache).
    #[arg(long, value_delimiter = ',', default_value = "text")]
    pub task: Vec<String>,
    /// Policies to compare with the full cache, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = EVICTING_POLICIES
    )]
    pub policies: Vec<String>,
    /// Budgets to try, comma-separated (default: --budget).
    #[arg(long, value_delimiter = ',', value_parser = limited(limits::BUDGET))]
    pub budgets: Vec<usize>,
    /// Compare policies at equal memory: byte sizes, comma-separated (16MiB, 1.5MB, 4000000;
    /// KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024). Each policy runs at the largest
    /// budget whose cache once full, K/V plus its profile (MorphKV's attention rows), fits
    /// each size; the text task adds a table (and, with --plots, charts) by bytes.
    #[arg(
        long = "equal-bytes",
        value_name = "BYTES",
        value_delimiter = ',',
        value_parser = morphkv::cache::parse_bytes,
        conflicts_with_all = ["budgets", "budget"]
    )]
    pub equal_bytes: Vec<usize>,
    /// Windows to try for MorphKV and H2O, comma-separated (default: --window, else each
    /// policy's).
    #[arg(long, value_delimiter = ',', value_parser = limited(limits::WINDOW))]
    pub windows: Vec<usize>,
    /// Recent shares to try (per cent of the budget, comma-separated) for the policies that
    /// score tokens: morphkv, h2o, tova, snapkv (default: --recent, else each policy's).
    #[arg(long, value_delimiter = ',', value_parser = limited(limits::RECENT))]
    pub recents: Vec<usize>,
    /// MorphKV fusions to try, comma-separated (default: --fusion).
    #[arg(long, value_delimiter = ',')]
    pub fusions: Vec<String>,
    /// Run every bounded cache with both absolute and re-based positions.
    #[arg(long = "both-positions")]
    pub both_positions: bool,
    /// KV types to try, comma-separated (default: --kv-type); `full` in --policies then runs
    /// a full cache of each type other than f32 against the f32 reference.
    #[arg(long = "kv-types", value_delimiter = ',', conflicts_with = "kv_type")]
    pub kv_types: Vec<String>,
    /// Profile storages to try, comma-separated (default: --profile); they apply to the
    /// policies that keep attention rows (morphkv, tova, snapkv).
    #[arg(long = "profiles", value_delimiter = ',', conflicts_with = "profile")]
    pub profiles: Vec<String>,
    /// Text files to feed (default: the suite's texts in eval/texts).
    #[arg(long = "text")]
    pub texts: Vec<PathBuf>,
    /// How many of the texts to use.
    #[arg(long = "max-texts", default_value_t = 1)]
    pub max_texts: usize,
    /// Tokens of each text to feed (text task), or of text to split (perplexity).
    #[arg(long, default_value_t = 2048)]
    pub tokens: usize,
    /// Width of the position bins in the tables, in tokens.
    #[arg(long, default_value_t = 512)]
    pub bin: usize,
    /// Long-answer prompts file (default: eval/prompts.toml).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// How many of the prompts to use (generation task).
    #[arg(long = "max-prompts", default_value_t = 1)]
    pub max_prompts: usize,
    /// Tokens the full cache generates per prompt (generation task).
    #[arg(long = "answer-tokens", default_value_t = 1024)]
    pub answer_tokens: usize,
    /// Recall probes file (default: eval/recall.toml).
    #[arg(long)]
    pub probes: Option<PathBuf>,
    /// How many of the probes to use.
    #[arg(long = "max-probes", default_value_t = 10)]
    pub max_probes: usize,
    /// Tokens of text between a probe's fact and its question.
    #[arg(long, default_value_t = 1500)]
    pub distance: usize,
    /// Tokens at the end of each fluency generation that a fresh full cache judges.
    #[arg(long = "judge-tokens", default_value_t = 1000)]
    pub judge_tokens: usize,
    /// Tokens before the judged ones that the judge sees.
    #[arg(long = "judge-context", default_value_t = 1000)]
    pub judge_context: usize,
    /// Sampling of the fluency task's generations (the seed defaults to 42 there, so every
    /// cache draws alike).
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Chunk size of the perplexity task (llama-perplexity's -c).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    pub ctx_size: usize,
    /// Chat template to use instead of the model's: chatml or llama3.
    #[arg(long = "chat-template")]
    pub chat_template: Option<String>,
    /// Print Markdown tables instead of aligned text.
    #[arg(long)]
    pub markdown: bool,
    /// Also write every result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write SVG plots to this folder.
    #[arg(long)]
    pub plots: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    // Eviction policy: the registry's list.
    #[arg(long, help = format!("Eviction policy: {POLICY_LIST} (default: the config file's, else morphkv)"))]
    pub policy: Option<String>,
    /// Tokens kept per KV head per layer (default: the config file's, else 600).
    #[arg(long, value_parser = limited(limits::BUDGET))]
    pub budget: Option<usize>,
    /// Most recent tokens always kept (default: the config file's, else the preset's, else the
    /// policy's: 4 for morphkv, 30 otherwise).
    #[arg(long, value_parser = limited(limits::WINDOW))]
    pub window: Option<usize>,
    /// Per cent of the budget kept for the most recent tokens whatever their scores, 0 to 100
    /// (default: the config file's, else the policy's: 75 for morphkv, 50 for h2o, 0 otherwise).
    #[arg(long, value_parser = limited(limits::RECENT))]
    pub recent: Option<usize>,
    /// MorphKV: add to each older token's score this per cent weight of the attention it has
    /// received since it entered the cache, fading with --half-life (H2O's signal, faded), 0
    /// to 1000 (default: the config file's, else 100; 0: the paper's method).
    #[arg(long, value_parser = limited(limits::HISTORY))]
    pub history: Option<usize>,
    /// MorphKV: tokens after which a query's attention counts half as much in --history's
    /// sum (default: the config file's, else 512; 0: it never fades).
    #[arg(long = "half-life", value_parser = limited(limits::HALF_LIFE))]
    pub half_life: Option<usize>,
    /// RoPE positions: absolute or rebased (default: rebased, so a chat can outgrow the
    /// model's context).
    #[arg(long)]
    pub positions: Option<String>,
    // KV storage: the list of types.
    #[arg(long = "kv-type", help = format!("Key and value storage: {KV_TYPE_LIST} (as llama.cpp's -ctk/-ctv; q8_0 on the CPU only; default: the config file's, else f16)"))]
    pub kv_type: Option<String>,
    // Attention profile storage: the list of types.
    #[arg(long, help = profile_help())]
    pub profile: Option<String>,
    /// Compare mode from the start: a second cache under this policy follows the
    /// conversation (as `/compare POLICY`); its budget is the main cache's, and its window
    /// the main cache's where one was set (flag, config file, preset or resumed chat), else
    /// its policy's, unless given.
    #[arg(long)]
    pub compare: Option<String>,
    /// The compare cache's budget (default: --budget's).
    #[arg(long = "compare-budget", requires = "compare", value_parser = limited(limits::BUDGET))]
    pub compare_budget: Option<usize>,
    /// The compare cache's window (default: the main cache's if set, else its policy's).
    #[arg(long = "compare-window", requires = "compare", value_parser = limited(limits::WINDOW))]
    pub compare_window: Option<usize>,
    /// Colour theme: dark, light, high-contrast, a name from the config folder's themes/, or
    /// a .toml file.
    #[arg(long)]
    pub theme: Option<String>,
    /// Longest answer, in tokens.
    #[arg(short = 'n', long = "max-tokens", default_value_t = 1024)]
    pub max_tokens: usize,
    /// System prompt (also `-sys`).
    #[arg(long = "system-prompt")]
    pub system: Option<String>,
    /// Chat template to use instead of the model's: chatml or llama3.
    #[arg(long = "chat-template")]
    pub chat_template: Option<String>,
    /// Continue a saved chat: its id, or `latest`. It runs under the cache settings it saved
    /// unless flags give others.
    #[arg(long)]
    pub resume: Option<String>,
    /// List the saved chats and exit.
    #[arg(long)]
    pub list: bool,
    /// Delete a saved chat and exit.
    #[arg(long)]
    pub delete: Option<String>,
    /// Rename a saved chat and exit: `--rename ID "new title"`.
    #[arg(long, num_args = 2, value_names = ["ID", "TITLE"])]
    pub rename: Vec<String>,
    /// Export a saved chat as Markdown to stdout and exit.
    #[arg(long)]
    pub export: Option<String>,
}

impl CacheArgs {
    /// The cache settings these flags describe, validated (built-in defaults for the rest).
    pub fn config(&self) -> morphkv::Result<morphkv::cache::CacheConfig> {
        self.config_with(&morphkv::models::PresetCache::default())
    }

    /// The settings, taking what the flags leave out from a preset's suggestions.
    pub fn config_with(
        &self,
        preset: &morphkv::models::PresetCache,
    ) -> morphkv::Result<morphkv::cache::CacheConfig> {
        let policy = self
            .policy
            .as_deref()
            .or(preset.policy.as_deref())
            .unwrap_or("morphkv");
        let fusion = self
            .fusion
            .as_deref()
            .or(preset.fusion.as_deref())
            .unwrap_or("sum");
        let cfg = morphkv::cache::CacheConfig {
            policy: policy.parse()?,
            budget: self.budget.or(preset.budget).unwrap_or(600),
            window: self.window.or(preset.window),
            sinks: self.sinks,
            recent: self.recent,
            fusion: fusion.parse()?,
            group_agg: self.group_agg.parse()?,
            history: self.history,
            half_life: self.half_life,
            evict_every: self.evict_every,
            prefill_chunk: self.prefill_chunk,
            positions: self.positions.parse()?,
            kv_type: self.kv_type.parse()?,
            profile: match &self.profile {
                Some(p) => p.parse()?,
                None => morphkv::cache::ProfileType::default(),
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Rewrites llama.cpp's single-dash long flags to ours (`-sys` → `--system-prompt`).
/// Arguments are OS strings: one that is not UTF-8 reaches clap, which names it.
pub fn normalize_args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    args.into_iter()
        .map(|a| {
            if a == "-sys" {
                "--system-prompt".into()
            } else {
                a
            }
        })
        .collect()
}
