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
//!
//! The pieces: `gguf` (building from GGUF metadata), `pretokenize` (the pre-tokenizers by
//! `tokenizer.ggml.pre`), `stream` ([`StreamDecoder`]).

mod gguf;
mod pretokenize;
mod stream;

use std::collections::HashMap;
use std::path::Path;
use std::sync::LazyLock;

use tokenizers::DecoderWrapper;

use crate::error::{Error, Result};

pub use stream::StreamDecoder;

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::quantized::gguf_file;

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

    pub(crate) const CORPUS: &[&str] = &[
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
