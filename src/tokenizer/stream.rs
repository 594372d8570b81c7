//! Detokenizing for streaming: the text of generated ids as soon as it is complete, never
//! cutting a UTF-8 character.

use super::Tokenizer;
use crate::error::Result;

/// Incremental detokenizer for streaming: feed generated ids one by one, get text as soon as
/// it is complete.
///
/// It decodes a small window of ids (the ids of the last emitted piece plus the new ones) and
/// returns what the new ids add to the text, holding text back while it ends in U+FFFD (an
/// incomplete UTF-8 character, e.g. an emoji split over several byte tokens). The pieces of all
/// [`push`](Self::push) calls and [`finish`](Self::finish) concatenate to
/// [`Tokenizer::decode`] of all ids.
///
/// This is the algorithm of `tokenizers`' `DecodeStream` (a test checks they give the same
/// pieces), kept as our own because `DecodeStream` does not fit: it borrows its
/// `tokenizers::Tokenizer` for its whole life (the engine keeps a decoder beside the
/// [`Tokenizer`] it owns, and passes it per call), it has no `finish` to flush a character
/// left incomplete at the end, it decodes through `tokenizers`' decoder rather than
/// [`Tokenizer::decode`] (which copies added tokens verbatim in byte-level vocabularies), and
/// it fails on a decoder that rewrites earlier text where this one keeps going. Its
/// unborrowed form, `step_decode_stream`, is documented as internal.
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
mod tests {
    use super::*;
    use crate::tokenizer::tests::{smollm, CORPUS};

    type TestResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

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

    /// The same pieces, id by id, as `tokenizers`' own `DecodeStream` (which has no `finish`,
    /// and borrows its tokenizer: see the type's docs), control tokens included.
    #[test]
    fn pieces_match_tokenizers_decode_stream() -> TestResult {
        let tok = smollm();
        let mut inputs = CORPUS
            .iter()
            .map(|s| tok.encode_plain(s))
            .collect::<Result<Vec<_>>>()?;
        inputs.push(tok.encode_special("<|im_start|>assistant\nHi 😀<|im_end|>\n<|endoftext|>")?);
        for ids in &inputs {
            let mut ours = StreamDecoder::new();
            let mut theirs = tok.hf().decode_stream(false);
            for id in ids {
                assert_eq!(ours.push(&tok, *id)?, theirs.step(*id)?, "{ids:?}");
            }
            assert_eq!(ours.finish(&tok)?, "");
        }
        Ok(())
    }
}
