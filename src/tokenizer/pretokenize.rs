//! Pre-tokenizers: how text is cut into words before byte-level BPE, one per
//! `tokenizer.ggml.pre` value, with the regexes llama.cpp uses for it (`llama-vocab.cpp`).

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{Error, Result};

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
pub(super) const KNOWN_PRE: &str =
    "default, gpt-2, llama3, llama-bpe, qwen2, smollm, starcoder, refact, \
command-r, codeshell, exaone, minerva-7b, mpt, olmo, jais, phi-2, roberta-bpe, dbrx, smaug-bpe, \
chatglm-bpe, stablelm2, megrez, falcon, falcon3, deepseek-coder, deepseek-v3, tekken, bloom, \
poro-chat, gpt3-finnish, viking";

/// How a GGUF `tokenizer.ggml.pre` value cuts text before BPE, and what it implies.
pub(super) struct PreTokenizerSpec {
    pub(super) pre_tokenizer: PreTokenizerWrapper,
    /// Look whole words up in the vocabulary before merging (Llama 3, Tekken).
    pub(super) ignore_merges: bool,
    /// Whether BOS is added when the GGUF has no `tokenizer.ggml.add_bos_token`.
    pub(super) default_add_bos: bool,
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
pub(super) fn pre_tokenizer_spec(pre: Option<&str>) -> Result<Option<PreTokenizerSpec>> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
