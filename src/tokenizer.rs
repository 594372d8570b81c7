//! Tokenizers built from GGUF metadata or from a `tokenizer.json`, and incremental
//! detokenizing for streaming.
//!
//! [`Tokenizer::from_gguf`] rebuilds the model's Hugging Face tokenizer from the
//! `tokenizer.ggml.*` keys of a GGUF file: today byte-level BPE (`tokenizer.ggml.model = "gpt2"`,
//! the tokenizer of Llama 3, Qwen 2, SmolLM, StarCoder, …). The pre-tokenizer (how text is cut
//! into words before BPE) follows `tokenizer.ggml.pre` and the regexes llama.cpp uses for it in
//! `llama-vocab.cpp`, so that a GGUF model sees the same ids here as under llama.cpp and under
//! its original `tokenizer.json`. No space is prepended to the text (candle's own GGUF
//! tokenizer does, which is wrong for these models).
//!
//! Two encoders exist because text has two origins:
//! - [`Tokenizer::encode_special`] is for text we produce (a rendered chat template): control
//!   tokens written in it, like `<|im_start|>`, become their ids.
//! - [`Tokenizer::encode_plain`] is for text a user typed: `<|im_end|>` in a message is five
//!   ordinary pieces of text, not the end of the turn.
//!
//! [`Tokenizer::encode_mixed`] combines both for one prompt, and [`StreamDecoder`] turns the
//! ids a model generates into text piece by piece without ever cutting a UTF-8 character.

use std::collections::HashMap;
use std::path::Path;
use std::sync::LazyLock;

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{Error, Result};

/// Names of tokens that end a turn or a text, in the vocabularies of common model families.
/// Each one present in a vocabulary as an added (control) token is a stop token.
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<end_of_turn>",
    "<|end|>",
    "</s>",
];

/// The GPT-2 word regex (used by `ByteLevel(use_regex=true)` and by llama.cpp's lists).
const RE_GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's regex, as in its `tokenizer.json` (numbers in groups of up to three digits).
const RE_LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's regex, as in its `tokenizer.json` (digits one by one).
const RE_QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral's Tekken regex, as in its `tokenizer.json`.
const RE_TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// DeepSeek V3's last regex, as in llama.cpp.
const RE_DEEPSEEK3: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;
/// BLOOM, Poro and GPT-3 Finnish split on a few separators only.
const RE_BLOOM: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";

/// `tokenizer.ggml.pre` values this module knows, for error messages.
const KNOWN_PRE: &str = "default, gpt-2, llama3, llama-bpe, qwen2, smollm, starcoder, refact, \
command-r, codeshell, exaone, minerva-7b, mpt, olmo, jais, phi-2, roberta-bpe, dbrx, smaug-bpe, \
chatglm-bpe, stablelm2, megrez, falcon, falcon3, deepseek-coder, deepseek-v3, tekken, bloom, \
poro-chat, gpt3-finnish, viking";

/// How a GGUF `tokenizer.ggml.pre` value cuts text before BPE, and what it implies.
struct PreTokenizerSpec {
    pre_tokenizer: PreTokenizerWrapper,
    /// Look whole words up in the vocabulary before merging (Llama 3, Tekken).
    ignore_merges: bool,
    /// Whether BOS is added when the GGUF has no `tokenizer.ggml.add_bos_token`.
    default_add_bos: bool,
}

/// A byte-level pre-tokenizer that applies no regex of its own (the splits come before it).
fn byte_level_bare() -> PreTokenizerWrapper {
    ByteLevel::new(false, true, false).into()
}

/// `Split` pre-tokenizers (matches isolated, gaps kept as pieces, as llama.cpp does) followed by
/// a bare byte-level mapping.
fn regex_sequence(regexes: &[&str]) -> Result<PreTokenizerWrapper> {
    let mut steps = Vec::with_capacity(regexes.len() + 1);
    for re in regexes {
        let split = Split::new(
            SplitPattern::Regex((*re).to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| {
            Error::Tokenizer(format!("pre-tokenizer regex `{re}` does not compile: {e}"))
        })?;
        steps.push(split.into());
    }
    steps.push(byte_level_bare());
    Ok(Sequence::new(steps).into())
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` value (`None`: the key is absent).
fn pre_tokenizer_spec(pre: Option<&str>) -> Result<Option<PreTokenizerSpec>> {
    let plain = |pre_tokenizer| PreTokenizerSpec {
        pre_tokenizer,
        ignore_merges: false,
        default_add_bos: false,
    };
    let spec = match pre.unwrap_or("default") {
        // llama.cpp's fallback for BPE models converted without a pre-tokenizer type.
        "default" => plain(regex_sequence(&[
            r"[\p{P}\$\+<=>\^~\|]+",
            RE_GPT2,
            r"\p{N}+",
            r"[0-9][0-9][0-9]",
        ])?),
        "gpt2" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v1-en"
        | "jina-v2-es" | "jina-v2-de" | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo"
        | "jais" => plain(ByteLevel::new(false, true, true).into()),
        // Digits one by one, then the GPT-2 regex: the `tokenizer.json` of these models.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            plain(
                Sequence::new(vec![
                    Digits::new(true).into(),
                    ByteLevel::new(false, true, true).into(),
                ])
                .into(),
            )
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => PreTokenizerSpec {
            pre_tokenizer: regex_sequence(&[RE_LLAMA3])?,
            ignore_merges: true,
            default_add_bos: true,
        },
        "dbrx" | "smaug-bpe" | "chatglm-bpe" => plain(regex_sequence(&[RE_LLAMA3])?),
        "qwen2" | "stablelm2" | "megrez" => plain(regex_sequence(&[RE_QWEN2])?),
        "tekken" => PreTokenizerSpec {
            pre_tokenizer: regex_sequence(&[RE_TEKKEN])?,
            ignore_merges: true,
            default_add_bos: true,
        },
        "falcon" => plain(regex_sequence(&[
            r"[\p{P}\$\+<=>\^~\|`]+",
            RE_GPT2,
            r"[0-9][0-9][0-9]",
        ])?),
        "deepseek-coder" => plain(regex_sequence(&[
            r"[\r\n]",
            r"\s?\p{L}+",
            r"\s?\p{P}+",
            r"[一-龥ࠀ-一가-퟿]+",
            r"\p{N}",
        ])?),
        "deepseek-v3" => plain(regex_sequence(&[
            r"\p{N}{1,3}",
            r"[一-龥぀-ゟ゠-ヿ]+",
            RE_DEEPSEEK3,
        ])?),
        "bloom" | "poro-chat" | "gpt3-finnish" => plain(regex_sequence(&[RE_BLOOM])?),
        "viking" => plain(regex_sequence(&[RE_BLOOM, r"\p{N}"])?),
        _ => return Ok(None),
    };
    Ok(Some(spec))
}

/// The GPT-2 byte-to-character table that byte-level BPE vocabularies are written in, reversed.
static BYTE_LEVEL_CHARS: LazyLock<HashMap<char, u8>> = LazyLock::new(|| {
    let mut printable: Vec<u8> = (b'!'..=b'~')
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.iter().map(|b| u32::from(*b)).collect();
    let mut next = 0u32;
    for b in 0..=255u8 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + next);
            next += 1;
        }
    }
    printable
        .into_iter()
        .zip(chars)
        .filter_map(|(b, c)| char::from_u32(c).map(|c| (c, b)))
        .collect()
});

/// A tokenizer for one model: encoding, decoding, and the ids of its special tokens.
#[derive(Clone)]
pub struct Tokenizer {
    /// Recognizes added tokens (control and user-defined) written in the text.
    special: tokenizers::Tokenizer,
    /// Same model, but special (control) tokens written in the text are plain text.
    plain: tokenizers::Tokenizer,
    /// Added tokens (control and user-defined) by id, with their text.
    added: HashMap<u32, String>,
    /// Whether the vocabulary is written in GPT-2's byte-to-character mapping.
    byte_level: bool,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    stop_ids: Vec<u32>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    /// A summary: the vocabulary itself is too large to print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("added_tokens", &self.added.len())
            .field("byte_level", &self.byte_level)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("stop_ids", &self.stop_ids)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// One metadata value of a GGUF file.
fn meta<'a>(content: &'a gguf_file::Content, key: &str) -> Option<&'a gguf_file::Value> {
    content.metadata.get(key)
}

fn meta_str<'a>(content: &'a gguf_file::Content, key: &str) -> Option<&'a str> {
    meta(content, key)
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
}

fn meta_u32(content: &gguf_file::Content, key: &str) -> Option<u32> {
    use gguf_file::Value as V;
    match meta(content, key)? {
        V::U8(v) => Some(u32::from(*v)),
        V::U16(v) => Some(u32::from(*v)),
        V::U32(v) => Some(*v),
        V::I32(v) => u32::try_from(*v).ok(),
        V::U64(v) => u32::try_from(*v).ok(),
        V::I64(v) => u32::try_from(*v).ok(),
        _ => None,
    }
}

fn meta_bool(content: &gguf_file::Content, key: &str) -> Option<bool> {
    meta(content, key).and_then(|v| v.to_bool().ok())
}

/// A GGUF array of strings, or an error naming the key.
fn meta_strings<'a>(
    content: &'a gguf_file::Content,
    key: &str,
    path: &Path,
) -> Result<Vec<&'a str>> {
    let bad = |what: &str| {
        Error::Tokenizer(format!(
            "{}: metadata `{key}` {what}; the GGUF file is incomplete or was not converted by \
             llama.cpp's convert_hf_to_gguf.py",
            path.display()
        ))
    };
    let values = meta(content, key)
        .ok_or_else(|| bad("is missing"))?
        .to_vec()
        .map_err(|_| bad("is not an array"))?;
    values
        .iter()
        .map(|v| {
            v.to_string()
                .map(String::as_str)
                .map_err(|_| bad("holds a value that is not a string"))
        })
        .collect()
}

/// GGUF token types (`tokenizer.ggml.token_type`): control tokens.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF token types: user-defined tokens (always matched, never special).
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

fn meta_token_types(content: &gguf_file::Content, n: usize) -> Vec<i64> {
    use gguf_file::Value as V;
    let Some(Ok(values)) = meta(content, "tokenizer.ggml.token_type").map(|v| v.to_vec()) else {
        return vec![1; n];
    };
    values
        .iter()
        .map(|v| match v {
            V::I32(t) => i64::from(*t),
            V::U32(t) => i64::from(*t),
            V::I8(t) => i64::from(*t),
            V::U8(t) => i64::from(*t),
            V::I64(t) => *t,
            _ => 1,
        })
        .collect()
}

fn hf_err(what: &str) -> impl Fn(tokenizers::Error) -> Error + '_ {
    move |e| Error::Tokenizer(format!("{what}: {e}"))
}

/// A token string from `tokenizer_config.json`: `"<s>"` or `{"content": "<s>", ...}`.
fn config_token(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// The chat template of `tokenizer_config.json`: a string, or a list of named templates (the
/// one named `default`, else the first).
fn config_chat_template(config: &serde_json::Value) -> Option<String> {
    match config.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => {
            let template_of = |v: &serde_json::Value| {
                v.get("template")
                    .and_then(|t| t.as_str())
                    .map(str::to_owned)
            };
            list.iter()
                .find(|v| v.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(template_of)
                .or_else(|| list.first().and_then(template_of))
        }
        _ => None,
    }
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata; `path` is
    /// only used in error messages.
    ///
    /// Supports byte-level BPE (`tokenizer.ggml.model = "gpt2"`) with the pre-tokenizers named
    /// by `tokenizer.ggml.pre` that llama.cpp knows (see the module docs). Control tokens
    /// (token type 3) become special added tokens, user-defined ones (type 4) plain added
    /// tokens. SentencePiece models (`"llama"`) and others give an [`Error::Tokenizer`].
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self> {
        let at = path.display();
        let model = meta_str(content, "tokenizer.ggml.model").ok_or_else(|| {
            Error::Tokenizer(format!(
                "{at}: metadata `tokenizer.ggml.model` is missing, so the file has no usable \
                 tokenizer; pass a model with an embedded tokenizer"
            ))
        })?;
        if model != "gpt2" {
            let hint = match model {
                "llama" => "SentencePiece (`llama`) vocabularies are not supported yet",
                _ => "only byte-level BPE (`gpt2`) vocabularies are supported",
            };
            return Err(Error::Tokenizer(format!(
                "{at}: tokenizer model `{model}` (tokenizer.ggml.model) is not supported: {hint}; \
                 use a model whose GGUF tokenizer is `gpt2` (Llama 3, Qwen 2, SmolLM, ...)"
            )));
        }
        let pre = meta_str(content, "tokenizer.ggml.pre");
        let spec = pre_tokenizer_spec(pre)?.ok_or_else(|| {
            Error::Tokenizer(format!(
                "{at}: pre-tokenizer `{}` (tokenizer.ggml.pre) is not supported (known: \
                 {KNOWN_PRE}); reconvert the model with a llama.cpp version that names a known \
                 one",
                pre.unwrap_or_default()
            ))
        })?;

        let tokens = meta_strings(content, "tokenizer.ggml.tokens", path)?;
        let merges_raw = meta_strings(content, "tokenizer.ggml.merges", path)?;
        let types = meta_token_types(content, tokens.len());

        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .filter_map(|(i, t)| u32::try_from(i).ok().map(|i| ((*t).to_owned(), i)))
            .collect();
        let mut merges: Merges = Vec::with_capacity(merges_raw.len());
        for m in &merges_raw {
            // Like llama.cpp: split at the first space after the first byte.
            let split = m.char_indices().skip(1).find(|(_, c)| *c == ' ');
            let Some((pos, _)) = split else {
                return Err(Error::Tokenizer(format!(
                    "{at}: merge `{m}` in tokenizer.ggml.merges has no space between its two \
                     parts; the GGUF file is damaged, download it again"
                )));
            };
            merges.push((m[..pos].to_owned(), m[pos + 1..].to_owned()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(spec.ignore_merges)
            .build()
            .map_err(|e| Error::Tokenizer(format!("{at}: building the BPE model failed: {e}")))?;

        let mut special = tokenizers::Tokenizer::new(bpe);
        special.with_pre_tokenizer(Some(spec.pre_tokenizer));
        special.with_decoder(Some(ByteLevelDecoder::default()));

        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(types.iter().chain(std::iter::repeat(&1)))
            .filter(|(_, t)| **t == TOKEN_TYPE_CONTROL || **t == TOKEN_TYPE_USER_DEFINED)
            .map(|(tok, t)| AddedToken::from(*tok, *t == TOKEN_TYPE_CONTROL).normalized(false))
            .collect();
        special
            .add_tokens(added)
            .map_err(hf_err("adding control tokens"))?;

        let bos = meta_u32(content, "tokenizer.ggml.bos_token_id");
        let eos = meta_u32(content, "tokenizer.ggml.eos_token_id");
        let add_bos =
            meta_bool(content, "tokenizer.ggml.add_bos_token").unwrap_or(spec.default_add_bos);
        let extra_stops = ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
            .iter()
            .filter_map(|k| meta_u32(content, k))
            .collect::<Vec<_>>();
        let chat_template = meta_str(content, "tokenizer.chat_template").map(str::to_owned);
        Ok(Self::assemble(
            special,
            true,
            bos,
            eos,
            add_bos,
            &extra_stops,
            chat_template,
        ))
    }

    /// Loads a `tokenizer.json` (safetensors checkpoints), with the chat template and BOS/EOS
    /// tokens from `tokenizer_config.json` when given.
    ///
    /// BOS is added to prompts when the config says `add_bos_token: true`, or, without that
    /// key, when the tokenizer's own post-processor adds it.
    pub fn from_files(tokenizer_json: &Path, tokenizer_config: Option<&Path>) -> Result<Self> {
        let bytes = std::fs::read(tokenizer_json).map_err(|e| Error::io(tokenizer_json, e))?;
        let special = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            Error::Tokenizer(format!(
                "{} is not a usable tokenizer.json: {e}; download it again from the model's \
                 repository",
                tokenizer_json.display()
            ))
        })?;
        let config = match tokenizer_config {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
                serde_json::from_str::<serde_json::Value>(&text).map_err(|e| {
                    Error::Tokenizer(format!(
                        "{} is not valid JSON: {e}; download it again or leave it out",
                        p.display()
                    ))
                })?
            }
            None => serde_json::Value::Null,
        };
        let bos = config_token(&config, "bos_token").and_then(|t| special.token_to_id(&t));
        let eos = config_token(&config, "eos_token").and_then(|t| special.token_to_id(&t));
        let add_bos = match config.get("add_bos_token").and_then(|v| v.as_bool()) {
            Some(v) => v,
            None => match bos {
                Some(b) => special
                    .encode("a", true)
                    .map(|e| e.get_ids().first() == Some(&b))
                    .unwrap_or(false),
                None => false,
            },
        };
        let byte_level = matches!(special.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
        Ok(Self::assemble(
            special,
            byte_level,
            bos,
            eos,
            add_bos,
            &[],
            config_chat_template(&config),
        ))
    }

    /// Derives the plain encoder, the added-token table and the stop ids.
    fn assemble(
        special: tokenizers::Tokenizer,
        byte_level: bool,
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
        extra_stops: &[u32],
        chat_template: Option<String>,
    ) -> Self {
        let mut plain = special.clone();
        plain.set_encode_special_tokens(true);
        let added: HashMap<u32, String> = special
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, t)| (id, t.content))
            .collect();
        let named = END_OF_TURN_TOKENS
            .iter()
            .filter_map(|name| special.token_to_id(name))
            .filter(|id| added.contains_key(id));
        let mut stop_ids: Vec<u32> = Vec::new();
        for id in eos
            .into_iter()
            .chain(extra_stops.iter().copied())
            .chain(named)
        {
            if !stop_ids.contains(&id) {
                stop_ids.push(id);
            }
        }
        Self {
            special,
            plain,
            added,
            byte_level,
            bos,
            eos,
            add_bos,
            stop_ids,
            chat_template,
        }
    }

    /// Encodes text we produced (e.g. a rendered chat template): control tokens written in it,
    /// like `<|im_start|>`, become their ids. Adds no BOS.
    pub fn encode_special(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .special
            .encode(text, false)
            .map_err(hf_err("encoding text"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes text a user typed: control-token strings in it are ordinary text, split into
    /// ordinary BPE pieces. Adds no BOS.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .plain
            .encode(text, false)
            .map_err(hf_err("encoding text"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes a text given in parts, `(text, parse_special)`: added tokens are recognized only
    /// inside parts with `parse_special = true`; all other text, on both sides of a part
    /// boundary, is joined and encoded with [`encode_plain`](Self::encode_plain), so that the
    /// ids are those of encoding the whole string (words are not cut at part boundaries). Adds
    /// no BOS.
    pub fn encode_mixed(&self, parts: &[(&str, bool)]) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut pending = String::new();
        for (text, parse_special) in parts {
            if !parse_special {
                pending.push_str(text);
                continue;
            }
            let enc = self
                .special
                .encode(*text, false)
                .map_err(hf_err("encoding text"))?;
            let mut spans = Vec::new();
            let mut last = 0;
            let mut consistent = true;
            for (id, &(start, end)) in enc.get_ids().iter().zip(enc.get_offsets()) {
                if !self.added.contains_key(id) {
                    continue;
                }
                if start < last
                    || end < start
                    || !text.is_char_boundary(start)
                    || !text.is_char_boundary(end)
                {
                    consistent = false;
                    break;
                }
                spans.push((*id, start, end));
                last = end;
            }
            if !consistent {
                // Offsets we cannot trust: fall back to encoding this part on its own.
                ids.extend(self.encode_plain(&pending)?);
                pending.clear();
                ids.extend_from_slice(enc.get_ids());
                continue;
            }
            let mut last = 0;
            for (id, start, end) in spans {
                pending.push_str(&text[last..start]);
                ids.extend(self.encode_plain(&pending)?);
                pending.clear();
                ids.push(id);
                last = end;
            }
            pending.push_str(&text[last..]);
        }
        if !pending.is_empty() {
            ids.extend(self.encode_plain(&pending)?);
        }
        Ok(ids)
    }

    /// Decodes ids to text, keeping the text of special tokens (so they can be shown).
    /// Invalid UTF-8 (e.g. an incomplete character at the end) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if !self.byte_level {
            return self.special.decode(ids, false).map_err(hf_err("decoding"));
        }
        // Added tokens are written as raw text, not in the byte-level alphabet: copy them
        // verbatim and byte-decode the runs between them.
        let mut out = String::new();
        let mut start = 0;
        for (i, id) in ids.iter().enumerate() {
            if let Some(content) = self.added.get(id) {
                if start < i {
                    out.push_str(&self.decode_run(&ids[start..i])?);
                }
                out.push_str(content);
                start = i + 1;
            }
        }
        if start < ids.len() {
            out.push_str(&self.decode_run(&ids[start..])?);
        }
        Ok(out)
    }

    fn decode_run(&self, ids: &[u32]) -> Result<String> {
        self.special.decode(ids, false).map_err(hf_err("decoding"))
    }

    /// A readable piece for one token (e.g. for a heatmap): its text, with bytes that are not
    /// a whole UTF-8 character written as `\xNN`. Unknown ids give `<id N?>`.
    pub fn token_text(&self, id: u32) -> String {
        if let Some(content) = self.added.get(&id) {
            return content.clone();
        }
        let Some(raw) = self.special.id_to_token(id) else {
            return format!("<id {id}?>");
        };
        if !self.byte_level {
            return match self.special.decode(&[id], false) {
                Ok(s) if !s.contains('\u{FFFD}') && !s.is_empty() => s,
                _ => raw.replace('\u{2581}', " "),
            };
        }
        let bytes: Option<Vec<u8>> = raw
            .chars()
            .map(|c| BYTE_LEVEL_CHARS.get(&c).copied())
            .collect();
        let Some(bytes) = bytes else {
            return raw;
        };
        let mut out = String::new();
        for chunk in bytes.utf8_chunks() {
            out.push_str(chunk.valid());
            for b in chunk.invalid() {
                out.push_str(&format!("\\x{b:02X}"));
            }
        }
        out
    }

    /// Number of tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.special.get_vocab_size(true)
    }

    /// The beginning-of-sequence token, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// Whether prompts start with BOS (`tokenizer.ggml.add_bos_token`; false by default for
    /// byte-level BPE models except the Llama 3 family). The encoders never add it themselves.
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// The end-of-sequence token, if the model has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Tokens that end generation: EOS, the GGUF's end-of-turn ids, and the end-of-turn tokens
    /// of common families found among the added tokens (`<|im_end|>`, `<|eot_id|>`,
    /// `<|endoftext|>`, `<end_of_turn>`, `</s>`, ...). EOS comes first.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The id of a token given its vocabulary string (e.g. `"<|im_end|>"`).
    pub fn id_of(&self, token: &str) -> Option<u32> {
        self.special.token_to_id(token)
    }

    /// The vocabulary string of a token (for byte-level BPE, ordinary tokens are in GPT-2's
    /// byte alphabet, e.g. `Ġthe`; special tokens are their text, e.g. `<|im_start|>`).
    pub fn token_str(&self, id: u32) -> Option<String> {
        self.special.id_to_token(id)
    }

    /// The model's chat template (GGUF `tokenizer.chat_template` or `tokenizer_config.json`).
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The underlying Hugging Face tokenizer (the one that recognizes special tokens), e.g. to
    /// save it as `tokenizer.json`.
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.special
    }
}

/// Incremental detokenizer for streaming: feed generated ids one by one, get text as soon as
/// it is complete.
///
/// It decodes a small window of ids (the ids of the last emitted piece plus the new ones) and
/// returns what the new ids add to the text, holding text back while it ends in U+FFFD (an
/// incomplete UTF-8 character, e.g. an emoji split over several byte tokens). The pieces of all
/// [`push`](Self::push) calls and [`finish`](Self::finish) concatenate to
/// [`Tokenizer::decode`] of all ids.
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    /// Start of the window: ids before it are already fully emitted and dropped.
    prefix_offset: usize,
    /// End of what has been emitted.
    read_offset: usize,
}

impl StreamDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one id; returns the newly completed text, or `None` while a character is
    /// incomplete (or the id adds no text).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let text = tok.decode(&self.ids[self.prefix_offset..])?;
        if text.len() <= prefix.len() || text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let new = suffix_after(&text, &prefix).to_owned();
        // The window becomes the ids just emitted.
        self.ids.drain(..self.read_offset);
        self.prefix_offset = 0;
        self.read_offset = self.ids.len();
        Ok(Some(new))
    }

    /// Flushes what is held back (an incomplete character comes out as U+FFFD; often the
    /// result is empty) and resets the decoder for a new stream.
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let text = tok.decode(&self.ids[self.prefix_offset..])?;
        *self = Self::default();
        if text.len() <= prefix.len() {
            return Ok(String::new());
        }
        Ok(suffix_after(&text, &prefix).to_owned())
    }
}

/// `text` without its leading `prefix`; if `text` does not start with it (a decoder that
/// rewrites earlier text), what follows their longest common prefix.
fn suffix_after<'a>(text: &'a str, prefix: &str) -> &'a str {
    if let Some(rest) = text.strip_prefix(prefix) {
        return rest;
    }
    let common = text
        .char_indices()
        .zip(prefix.chars())
        .find(|((_, a), b)| a != b)
        .map_or(prefix.len().min(text.len()), |((i, _), _)| i);
    let mut cut = common;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[cut..]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

    /// SmolLM2's tokenizer from the default model (fetched on first use), built once.
    pub(crate) fn smollm() -> Tokenizer {
        static TOK: LazyLock<Tokenizer> = LazyLock::new(|| {
            // The default model, fetched on first use like a user's first run.
            let path = crate::models::resolve(None, &mut |l| eprintln!("{l}"))
                .expect("resolve the default model");
            let mut file = std::fs::File::open(&path).expect("open the SmolLM2 GGUF");
            let content = gguf_file::Content::read(&mut file).expect("read GGUF metadata");
            Tokenizer::from_gguf(&content, &path).expect("build the tokenizer")
        });
        TOK.clone()
    }

    const CORPUS: &[&str] = &[
        "Hello, world!",
        "def f(x):\n    if x > 1:\n        return [i * 2 for i in range(x)]\n    return None\n",
        "fn main() {\n\tlet v: Vec<u32> = vec![1, 2, 3];\n\tprintln!(\"{v:?}\");\n}\n",
        "déjà vu, naïve, Ærøskøbing",
        "東京は日本の首都です",
        "emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇯🇵 ❤️",
        "spaces:  two,   three,    four   \n\n\n  trailing   ",
        "\ttabs\t\tand\n\r\nnewlines\n",
        "digits 1234567 and 3.14159, year 2024",
        "  leading spaces",
        "<|im_start|>not special in plain<|im_end|>",
        "",
    ];

    #[test]
    fn special_tokens_have_the_vocab_ids() {
        let tok = smollm();
        assert_eq!(tok.id_of("<|endoftext|>"), Some(0));
        assert_eq!(tok.id_of("<|im_start|>"), Some(1));
        assert_eq!(tok.id_of("<|im_end|>"), Some(2));
        assert_eq!(tok.bos_id(), Some(1));
        assert_eq!(tok.eos_id(), Some(2));
        assert!(!tok.add_bos());
        assert_eq!(tok.stop_ids(), &[2, 0]);
        assert_eq!(tok.vocab_size(), 49152);
        assert_eq!(tok.token_str(1).as_deref(), Some("<|im_start|>"));
        assert!(tok
            .chat_template()
            .is_some_and(|t| t.contains("<|im_start|>")));
    }

    #[test]
    fn encode_special_parses_control_tokens() -> TestResult {
        let tok = smollm();
        let ids = tok.encode_special("<|im_start|>user\nHello!<|im_end|>\n")?;
        assert_eq!(ids, vec![1, 4093, 198, 19556, 17, 2, 198]);
        Ok(())
    }

    #[test]
    fn encode_plain_keeps_control_strings_as_text() -> TestResult {
        let tok = smollm();
        let s = "<|im_start|>user\nHello!<|im_end|>\n";
        let ids = tok.encode_plain(s)?;
        assert!(!ids.contains(&1) && !ids.contains(&2), "{ids:?}");
        assert!(!ids.contains(&0));
        assert_eq!(tok.decode(&ids)?, s);
        Ok(())
    }

    #[test]
    fn no_prefix_space_is_added() -> TestResult {
        let tok = smollm();
        let ids = tok.encode_plain("Hello")?;
        assert_eq!(ids.len(), 1);
        assert_eq!(tok.token_str(ids[0]).as_deref(), Some("Hello"));
        assert_eq!(tok.encode_plain(" Hello")?.len(), 1);
        assert_ne!(tok.encode_plain(" Hello")?, ids);
        Ok(())
    }

    #[test]
    fn round_trip_corpus() -> TestResult {
        let tok = smollm();
        for s in CORPUS {
            let ids = tok.encode_plain(s)?;
            assert_eq!(&tok.decode(&ids)?, s, "ids {ids:?}");
            let ids = tok.encode_special(s)?;
            assert_eq!(&tok.decode(&ids)?, s, "ids {ids:?}");
        }
        Ok(())
    }

    #[test]
    fn digits_are_split_one_by_one() -> TestResult {
        let tok = smollm();
        let ids = tok.encode_plain("2024")?;
        assert_eq!(ids.len(), 4);
        let pieces: Vec<String> = ids.iter().map(|i| tok.token_text(*i)).collect();
        assert_eq!(pieces, ["2", "0", "2", "4"]);
        assert_eq!(tok.encode_plain("1234567")?.len(), 7);
        Ok(())
    }

    #[test]
    fn stream_decoder_matches_full_decode() -> TestResult {
        let tok = smollm();
        let mut split_inside_a_char = false;
        for s in CORPUS {
            let ids = tok.encode_plain(s)?;
            let mut dec = StreamDecoder::new();
            let mut out = String::new();
            for id in &ids {
                match dec.push(&tok, *id)? {
                    Some(piece) => {
                        assert!(!piece.contains('\u{FFFD}'), "{piece:?} in {s:?}");
                        if piece != tok.token_text(*id) {
                            split_inside_a_char = true;
                        }
                        out.push_str(&piece);
                    }
                    None => split_inside_a_char = true,
                }
            }
            out.push_str(&dec.finish(&tok)?);
            assert_eq!(out, tok.decode(&ids)?);
            assert_eq!(&out, s);
        }
        assert!(
            split_inside_a_char,
            "no token boundary fell inside a character"
        );
        Ok(())
    }

    #[test]
    fn emoji_spans_several_tokens() -> TestResult {
        let tok = smollm();
        let ids = tok.encode_plain("👨‍👩‍👧")?;
        let mut dec = StreamDecoder::new();
        let nones = ids
            .iter()
            .map(|id| dec.push(&tok, *id))
            .collect::<Result<Vec<_>>>()?
            .iter()
            .filter(|p| p.is_none())
            .count();
        assert!(nones > 0, "every token of {ids:?} was a whole character");
        // A lone byte token reads as escaped bytes.
        assert!(ids.iter().any(|id| tok.token_text(*id).contains("\\x")));
        Ok(())
    }

    #[test]
    fn finish_flushes_an_incomplete_character() -> TestResult {
        let tok = smollm();
        let ids = tok.encode_plain("a😀")?;
        let mut dec = StreamDecoder::new();
        let mut out = String::new();
        for id in &ids[..ids.len() - 1] {
            if let Some(p) = dec.push(&tok, *id)? {
                out.push_str(&p);
            }
        }
        out.push_str(&dec.finish(&tok)?);
        assert_eq!(out, tok.decode(&ids[..ids.len() - 1])?);
        assert!(out.starts_with('a') && out.ends_with('\u{FFFD}'));
        Ok(())
    }

    #[test]
    fn decode_keeps_special_token_text() -> TestResult {
        let tok = smollm();
        let ids = tok.encode_special("<|im_start|>assistant\nHi<|im_end|>")?;
        assert_eq!(tok.decode(&ids)?, "<|im_start|>assistant\nHi<|im_end|>");
        assert_eq!(tok.token_text(2), "<|im_end|>");
        Ok(())
    }

    #[test]
    fn encode_mixed_parses_specials_only_where_asked() -> TestResult {
        let tok = smollm();
        let ids = tok.encode_mixed(&[
            ("<|im_start|>user\n", true),
            ("say <|im_end|> now", false),
            ("<|im_end|>\n", true),
        ])?;
        assert_eq!(ids.first(), Some(&1));
        assert_eq!(ids.iter().filter(|i| **i == 2).count(), 1);
        assert_eq!(ids[ids.len() - 2], 2);
        // Without special strings in the content it equals encoding the whole string.
        let whole = "<|im_start|>user\nsay it now<|im_end|>\n";
        let mixed = tok.encode_mixed(&[
            ("<|im_start|>user\nsay", true),
            (" it", false),
            (" now<|im_end|>\n", true),
        ])?;
        assert_eq!(mixed, tok.encode_special(whole)?);
        Ok(())
    }

    #[test]
    fn every_known_pre_tokenizer_builds() -> Result<()> {
        for pre in KNOWN_PRE.split(", ") {
            assert!(pre_tokenizer_spec(Some(pre))?.is_some(), "{pre}");
        }
        assert!(pre_tokenizer_spec(None)?.is_some());
        assert!(pre_tokenizer_spec(Some("nonsense"))?.is_none());
        Ok(())
    }

    /// How a `tokenizer.ggml.pre` value cuts `text`, as slices of the original text.
    fn pieces(pre: &str, text: &str) -> Vec<String> {
        use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
        let spec = pre_tokenizer_spec(Some(pre))
            .expect("regexes compile")
            .expect("known pre-tokenizer");
        let mut pts = PreTokenizedString::from(text);
        spec.pre_tokenizer
            .pre_tokenize(&mut pts)
            .expect("pre-tokenize");
        pts.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(_, (start, end), _)| text[start..end].to_owned())
            .collect()
    }

    #[test]
    fn pre_tokenizers_cut_like_the_originals() {
        assert_eq!(
            pieces("smollm", "Hello  world 2024!"),
            ["Hello", " ", " world", " ", "2", "0", "2", "4", "!"]
        );
        assert_eq!(pieces("gpt2", "it's 2024"), ["it", "'s", " 2024"]);
        assert_eq!(
            pieces("llama3", "I'M here: 12345\n\nok"),
            ["I", "'M", " here", ":", " ", "123", "45", "\n\n", "ok"]
        );
        assert_eq!(
            pieces("qwen2", "abc 2024"),
            ["abc", " ", "2", "0", "2", "4"]
        );
    }

    #[test]
    fn unsupported_model_type_is_a_clear_error() {
        let mut content = gguf_file::Content {
            magic: gguf_file::VersionedMagic::GgufV3,
            metadata: HashMap::new(),
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        };
        content.metadata.insert(
            "tokenizer.ggml.model".into(),
            gguf_file::Value::String("llama".into()),
        );
        let err = Tokenizer::from_gguf(&content, Path::new("x.gguf"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("`llama`") && err.contains("not supported"),
            "{err}"
        );
    }

    #[test]
    fn from_files_round_trips_the_gguf_tokenizer() -> TestResult {
        let tok = smollm();
        let dir = std::env::temp_dir().join(format!("morphkv-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let json = dir.join("tokenizer.json");
        let config = dir.join("tokenizer_config.json");
        tok.hf().save(&json, false)?;
        let cfg = serde_json::json!({
            "bos_token": "<|im_start|>",
            "eos_token": {"content": "<|im_end|>", "special": true},
            "add_bos_token": false,
            "chat_template": tok.chat_template(),
        });
        std::fs::write(&config, cfg.to_string())?;
        let loaded = Tokenizer::from_files(&json, Some(&config));
        let bare = Tokenizer::from_files(&json, None);
        std::fs::remove_dir_all(&dir)?;
        let (loaded, bare) = (loaded?, bare?);

        assert_eq!(loaded.bos_id(), Some(1));
        assert_eq!(loaded.eos_id(), Some(2));
        assert!(!loaded.add_bos());
        assert_eq!(loaded.stop_ids(), &[2, 0]);
        assert_eq!(loaded.chat_template(), tok.chat_template());
        assert_eq!(bare.eos_id(), None);
        assert_eq!(bare.chat_template(), None);
        let s = "<|im_start|>user\nHello!<|im_end|>\n";
        assert_eq!(loaded.encode_special(s)?, tok.encode_special(s)?);
        for s in CORPUS {
            let ids = loaded.encode_plain(s)?;
            assert_eq!(ids, tok.encode_plain(s)?);
            assert_eq!(&loaded.decode(&ids)?, s);
        }
        Ok(())
    }
}
