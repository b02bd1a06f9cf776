//! Added tokens (`<|im_start|>`, `<|endoftext|>`, ...): found in the text before anything else.
//!
//! HF's `AddedVocabulary` matches in two passes, each leftmost-longest: first the tokens with
//! `normalized = false` over the raw text, then the `normalized = true` tokens over each normalized
//! remainder. Where normalization is the identity (checked by the caller between the passes), both
//! passes work on the original text; a SentencePiece-style space normalizer builds the normalized
//! text for the second pass itself (`super::metaspace`).

use aho_corasick::{AhoCorasick, MatchKind};

/// A token to match, as HF's added vocabulary holds it.
#[derive(Debug, Clone)]
pub(crate) struct AddedToken {
    /// The token id.
    pub id: u32,
    /// The text that is matched (the content, already normalized for `normalized` tokens).
    pub content: String,
    /// Matched in the second pass, on normalized text.
    pub normalized: bool,
}

/// One automaton and the token id of each of its patterns.
#[derive(Debug)]
struct Matcher {
    automaton: AhoCorasick,
    ids: Vec<u32>,
}

impl Matcher {
    fn build(tokens: &[&AddedToken]) -> Result<Option<Matcher>, String> {
        if tokens.is_empty() {
            return Ok(None);
        }
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(tokens.iter().map(|t| t.content.as_bytes()))
            .map_err(|e| format!("added tokens automaton: {e}"))?;
        Ok(Some(Matcher { automaton, ids: tokens.iter().map(|t| t.id).collect() }))
    }

    /// Append the pieces of `text[start..end]` to `out`: added tokens and the text between them.
    fn split(&self, text: &str, start: usize, end: usize, out: &mut Vec<Piece>) {
        let mut prev = start;
        for m in self.automaton.find_iter(&text.as_bytes()[start..end]) {
            let (a, b) = (start + m.start(), start + m.end());
            if prev < a {
                out.push(Piece::Text { start: prev, end: a });
            }
            out.push(Piece::Added { id: self.ids[m.pattern().as_usize()], start: a, end: b });
            prev = b;
        }
        if prev < end {
            out.push(Piece::Text { start: prev, end });
        }
    }
}

/// A stretch of the input: an added token, or text between added tokens. Byte offsets into the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Ordinary text, `text[start..end]`, non-empty.
    Text {
        /// First byte.
        start: usize,
        /// One past the last byte.
        end: usize,
    },
    /// An added token found at `text[start..end]`.
    Added {
        /// Its id.
        id: u32,
        /// First byte.
        start: usize,
        /// One past the last byte.
        end: usize,
    },
}

/// The two matchers of an added vocabulary.
#[derive(Debug)]
pub(crate) struct AddedTokens {
    raw: Option<Matcher>,
    normalized: Option<Matcher>,
}

impl AddedTokens {
    /// Build both passes. Empty contents are skipped, as HF does.
    pub(crate) fn new(tokens: &[AddedToken]) -> Result<AddedTokens, String> {
        let (normalized, raw): (Vec<&AddedToken>, Vec<&AddedToken>) =
            tokens.iter().filter(|t| !t.content.is_empty()).partition(|t| t.normalized);
        Ok(AddedTokens { raw: Matcher::build(&raw)?, normalized: Matcher::build(&normalized)? })
    }

    /// First pass: split all of `text` on the `normalized = false` tokens.
    pub(crate) fn split_raw(&self, text: &str, out: &mut Vec<Piece>) {
        match &self.raw {
            Some(m) => m.split(text, 0, text.len(), out),
            None if text.is_empty() => {}
            None => out.push(Piece::Text { start: 0, end: text.len() }),
        }
    }

    /// Whether there are `normalized = true` tokens (a second pass to run).
    pub(crate) fn has_normalized(&self) -> bool {
        self.normalized.is_some()
    }

    /// Second pass: split `text[start..end]` (normalized, i.e. unchanged) on the `normalized = true` tokens.
    pub(crate) fn split_normalized(&self, text: &str, start: usize, end: usize, out: &mut Vec<Piece>) {
        match &self.normalized {
            Some(m) => m.split(text, start, end, out),
            None => out.push(Piece::Text { start, end }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(id: u32, content: &str, normalized: bool) -> AddedToken {
        AddedToken { id, content: content.into(), normalized }
    }

    #[test]
    fn leftmost_longest_then_normalized_pass() {
        let added =
            AddedTokens::new(&[tok(1, "<a>", false), tok(2, "<a><b>", false), tok(3, "b", true), tok(4, "", false)])
                .unwrap();
        let text = "x<a><b>b<a>yb";
        let mut raw = vec![];
        added.split_raw(text, &mut raw);
        assert_eq!(
            raw,
            [
                Piece::Text { start: 0, end: 1 },
                Piece::Added { id: 2, start: 1, end: 7 },
                Piece::Text { start: 7, end: 8 },
                Piece::Added { id: 1, start: 8, end: 11 },
                Piece::Text { start: 11, end: 13 },
            ]
        );
        let mut second = vec![];
        added.split_normalized(text, 11, 13, &mut second);
        assert_eq!(second, [Piece::Text { start: 11, end: 12 }, Piece::Added { id: 3, start: 12, end: 13 }]);
    }

    #[test]
    fn empty_text_has_no_pieces() {
        let added = AddedTokens::new(&[]).unwrap();
        let mut out = vec![];
        added.split_raw("", &mut out);
        assert!(out.is_empty());
    }
}
