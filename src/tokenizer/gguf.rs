//! Building a [`Tokenizer`] from a GGUF file's `tokenizer.ggml.*` metadata.

use std::path::Path;

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::AddedToken;

use super::pretokenize::{pre_tokenizer_spec, KNOWN_PRE};
use super::{hf_err, Tokenizer};
use crate::error::{Error, Result};

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

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
}
