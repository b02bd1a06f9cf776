//! The fast byte-level BPE encoder: which `tokenizer.json`s it takes, and the encode pipeline.
//!
//! Pipeline per text (each step mirrors one stage of HF's `TokenizerImpl::encode`):
//! 1. split on added tokens (`normalized = false` ones over the raw text, then `normalized = true` ones
//!    over each remainder) -- [`super::added`];
//! 2. normalizer: none, or NFC where the text is already NFC (otherwise the caller falls back to HF);
//! 3. pre-tokenizer: isolating `Split`s, then `ByteLevel` (prefix space, optional GPT-2 regex) --
//!    [`super::pretok`];
//! 4. BPE per word through a per-thread word cache -- [`super::bpe`], [`super::cache`];
//! 5. post-processor -- [`super::post`].
//!
//! Offsets follow HF: each token maps back to the original bytes it covers, widened to whole
//! characters (HF aligns every byte of a character to the whole character), and a prefix space maps to
//! the first character of its piece.

use rustc_hash::FxHashMap;
use serde_json::Value;
use unicode_normalization::{is_nfc, is_nfc_quick, IsNormalized};

use super::added::{AddedToken, AddedTokens, Piece};
use super::bpe::BpeModel;
use super::cache::{self, Buffers, WordCache};
use super::post::{trim_counts, PostPlan, TrimTable};
use super::pretok::{scan, Scheme, Splitter};
use super::Encoding;

/// Where a word's bytes come from in the original text.
#[derive(Clone, Copy)]
enum Origin {
    /// Word byte `k` is text byte `start + k`.
    Plain(usize),
    /// Word byte 0 is a prefix space added before the piece starting at text byte `piece`; word byte
    /// `k >= 1` is text byte `piece + k - 1`.
    Prefixed(usize),
}

/// A byte-level BPE tokenizer that the fast path reproduces exactly.
#[derive(Debug)]
pub(crate) struct FastEncoder {
    added: AddedTokens,
    /// The normalizer is NFC: texts that NFC would change go to HF.
    nfc: bool,
    /// Isolating splits run before `ByteLevel`, in order.
    splits: Vec<Splitter>,
    /// `ByteLevel.add_prefix_space`.
    add_prefix_space: bool,
    /// `ByteLevel.use_regex`: split each piece with the GPT-2 regex.
    use_regex: bool,
    bpe: BpeModel,
    post: PostPlan,
    /// Leading/trailing whitespace counts of token strings, when the post-processor trims offsets.
    trim: TrimTable,
    /// This instance's key into the per-thread word caches.
    instance: u64,
}

impl FastEncoder {
    /// Build from a parsed `tokenizer.json`. `added` are HF's added tokens by id; `tokens` maps each
    /// id to its token string. `Err` names the first thing the fast path does not
    /// reproduce; the caller then uses HF for everything.
    pub(crate) fn from_json(
        root: &Value,
        added: &[(u32, tokenizers::AddedToken)],
        tokens: &FxHashMap<u32, String>,
    ) -> Result<FastEncoder, String> {
        for key in ["truncation", "padding"] {
            if root.get(key).is_some_and(|v| !v.is_null()) {
                return Err(format!("{key} is set"));
            }
        }
        let nfc = normalizer_is_nfc(root.get("normalizer").unwrap_or(&Value::Null))?;
        let (splits, add_prefix_space, use_regex) = pre_tokenizer(root.get("pre_tokenizer").unwrap_or(&Value::Null))?;
        let bpe = BpeModel::from_json(root.get("model").ok_or("no model")?)?;
        let post = PostPlan::from_json(root.get("post_processor").unwrap_or(&Value::Null))?;

        let mut matched = Vec::with_capacity(added.len());
        for (id, token) in added {
            for (flag, name) in [(token.single_word, "single_word"), (token.lstrip, "lstrip"), (token.rstrip, "rstrip")]
            {
                if flag {
                    return Err(format!("added token {:?} with {name}", token.content));
                }
            }
            if nfc && token.normalized && !is_nfc(&token.content) {
                return Err(format!("added token {:?} changes under nfc", token.content));
            }
            matched.push(AddedToken { id: *id, content: token.content.clone(), normalized: token.normalized });
        }
        let added = AddedTokens::new(&matched)?;

        let trim = if post.trims() {
            tokens.iter().map(|(id, t)| (*id, trim_counts(t))).filter(|(_, counts)| *counts != (0, 0)).collect()
        } else {
            TrimTable::default()
        };
        Ok(FastEncoder {
            added,
            nfc,
            splits,
            add_prefix_space,
            use_regex,
            bpe,
            post,
            trim,
            instance: cache::next_instance_id(),
        })
    }

    /// The tokens of `text`, or `None` if the text needs HF (NFC would change it).
    pub(crate) fn encode(&self, text: &str, add_special_tokens: bool) -> Option<Encoding> {
        cache::with_local(self.instance, |words, buffers| {
            let mut ids = Vec::with_capacity(text.len() / 3 + 4);
            let mut offsets = Vec::with_capacity(text.len() / 3 + 4);
            let mut pieces = std::mem::take(&mut buffers.pieces);
            let mut sub_pieces = std::mem::take(&mut buffers.sub_pieces);
            pieces.clear();
            self.added.split_raw(text, &mut pieces);
            let mut ok = true;
            for &piece in &pieces {
                match piece {
                    Piece::Added { id, start, end } => {
                        ids.push(id);
                        offsets.push((start as u32, end as u32));
                    }
                    Piece::Text { start, end } => {
                        if self.nfc && !is_nfc_fast(&text[start..end]) {
                            ok = false;
                            break;
                        }
                        sub_pieces.clear();
                        self.added.split_normalized(text, start, end, &mut sub_pieces);
                        for &sub in &sub_pieces {
                            match sub {
                                Piece::Added { id, start, end } => {
                                    ids.push(id);
                                    offsets.push((start as u32, end as u32));
                                }
                                Piece::Text { start, end } => {
                                    self.encode_text(text, start, end, words, buffers, &mut ids, &mut offsets)
                                }
                            }
                        }
                    }
                }
            }
            buffers.pieces = pieces;
            buffers.sub_pieces = sub_pieces;
            ok.then(|| {
                let (ids, offsets) = self.post.apply(ids, offsets, add_special_tokens, &self.trim);
                Encoding { ids, offsets }
            })
        })
    }

    /// Pre-tokenize and BPE `text[start..end]` (no added tokens inside).
    #[allow(clippy::too_many_arguments)]
    fn encode_text(
        &self,
        text: &str,
        start: usize,
        end: usize,
        words: &mut WordCache,
        buffers: &mut Buffers,
        ids: &mut Vec<u32>,
        offsets: &mut Vec<(u32, u32)>,
    ) {
        let mut splits = std::mem::take(&mut buffers.splits);
        let mut next = std::mem::take(&mut buffers.splits_next);
        splits.clear();
        splits.push((start, end));
        for splitter in &self.splits {
            next.clear();
            for &(p0, p1) in &splits {
                let first = next.len();
                splitter.split(&text[p0..p1], &mut next);
                for range in &mut next[first..] {
                    range.0 += p0;
                    range.1 += p0;
                }
            }
            std::mem::swap(&mut splits, &mut next);
        }
        for &(p0, p1) in &splits {
            self.byte_level_piece(text, p0, p1, words, buffers, ids, offsets);
        }
        buffers.splits = splits;
        buffers.splits_next = next;
    }

    /// HF's `ByteLevel` pre-tokenizer on one piece `text[p0..p1]`, then BPE on each word.
    #[allow(clippy::too_many_arguments)]
    fn byte_level_piece(
        &self,
        text: &str,
        p0: usize,
        p1: usize,
        words: &mut WordCache,
        buffers: &mut Buffers,
        ids: &mut Vec<u32>,
        offsets: &mut Vec<(u32, u32)>,
    ) {
        let piece = &text[p0..p1];
        let prefixed = self.add_prefix_space && !piece.starts_with(' ');
        if !prefixed && !self.use_regex {
            self.word(text, piece.as_bytes(), Origin::Plain(p0), words, buffers, ids, offsets);
            return;
        }
        let mut spaced = std::mem::take(&mut buffers.prefixed);
        let mut ranges = std::mem::take(&mut buffers.words);
        spaced.clear();
        if prefixed {
            spaced.push(' ');
        }
        spaced.push_str(piece);
        ranges.clear();
        if self.use_regex {
            scan(Scheme::Gpt2, &spaced, |a, b| ranges.push((a, b)));
        } else {
            ranges.push((0, spaced.len()));
        }
        for &(a, b) in &ranges {
            let origin = match (prefixed, a) {
                (true, 0) => Origin::Prefixed(p0),
                (true, a) => Origin::Plain(p0 + a - 1),
                (false, a) => Origin::Plain(p0 + a),
            };
            self.word(text, &spaced.as_bytes()[a..b], origin, words, buffers, ids, offsets);
        }
        buffers.prefixed = spaced;
        buffers.words = ranges;
    }

    /// BPE one word (through the cache) and append its tokens.
    #[allow(clippy::too_many_arguments)]
    fn word(
        &self,
        text: &str,
        word: &[u8],
        origin: Origin,
        words: &mut WordCache,
        buffers: &mut Buffers,
        ids: &mut Vec<u32>,
        offsets: &mut Vec<(u32, u32)>,
    ) {
        if let Some((word_ids, lens)) = words.get(word) {
            push_tokens(text, word_ids, lens, origin, ids, offsets);
            return;
        }
        buffers.word_ids.clear();
        buffers.word_lens.clear();
        self.bpe.tokenize_word(word, &mut buffers.word_ids, &mut buffers.word_lens, &mut buffers.scratch);
        words.insert(word, &buffers.word_ids, &buffers.word_lens);
        push_tokens(text, &buffers.word_ids, &buffers.word_lens, origin, ids, offsets);
    }
}

/// Append a word's tokens with their offsets in `text`.
#[inline]
fn push_tokens(
    text: &str,
    word_ids: &[u32],
    lens: &[u32],
    origin: Origin,
    ids: &mut Vec<u32>,
    offsets: &mut Vec<(u32, u32)>,
) {
    ids.extend_from_slice(word_ids);
    match origin {
        Origin::Plain(base) => {
            let mut at = base;
            for &len in lens {
                let start = at;
                at += len as usize;
                offsets.push((floor_char(text, start) as u32, ceil_char(text, at) as u32));
            }
        }
        Origin::Prefixed(piece) => {
            let first_char_end = piece + text[piece..].chars().next().map_or(0, char::len_utf8);
            let mut at = 0usize;
            for &len in lens {
                let (a, b) = (at, at + len as usize);
                at = b;
                let start = if a == 0 { piece } else { floor_char(text, piece + a - 1) };
                let end = if b == 1 { first_char_end } else { ceil_char(text, piece + b - 1) };
                offsets.push((start as u32, end as u32));
            }
        }
    }
}

/// The char boundary at or before `i`.
#[inline]
fn floor_char(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The char boundary at or after `i`.
#[inline]
fn ceil_char(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Whether NFC leaves `s` unchanged. (A newer Unicode table than HF's can only say "unchanged" where
/// HF's says so too: normalization is stable for assigned characters.)
fn is_nfc_fast(s: &str) -> bool {
    s.is_ascii()
        || match is_nfc_quick(s.chars()) {
            IsNormalized::Yes => true,
            IsNormalized::No => false,
            IsNormalized::Maybe => is_nfc(s),
        }
}

/// `true` for an NFC normalizer, `false` for none; `Err` for any other.
fn normalizer_is_nfc(value: &Value) -> Result<bool, String> {
    match value.get("type").and_then(Value::as_str) {
        None if value.is_null() => Ok(false),
        Some("NFC") => Ok(true),
        Some("Sequence") => {
            let list = value.get("normalizers").and_then(Value::as_array).ok_or("normalizer sequence")?;
            match &list[..] {
                [] => Ok(false),
                [one] => normalizer_is_nfc(one),
                _ => Err("normalizer sequence of several normalizers".into()),
            }
        }
        other => Err(format!("normalizer {}", other.unwrap_or("without type"))),
    }
}

/// The pre-tokenizer as (isolating splits, `add_prefix_space`, `use_regex` of the final `ByteLevel`).
fn pre_tokenizer(value: &Value) -> Result<(Vec<Splitter>, bool, bool), String> {
    let steps: Vec<&Value> = match value.get("type").and_then(Value::as_str) {
        Some("Sequence") => {
            value.get("pretokenizers").and_then(Value::as_array).ok_or("pre_tokenizer sequence")?.iter().collect()
        }
        Some(_) => vec![value],
        None => return Err("no pre_tokenizer (byte-level BPE needs ByteLevel)".into()),
    };
    let Some((last, splits)) = steps.split_last() else {
        return Err("empty pre_tokenizer sequence".into());
    };
    if last.get("type").and_then(Value::as_str) != Some("ByteLevel") {
        return Err(format!(
            "pre_tokenizer {} (the last step must be ByteLevel)",
            last.get("type").unwrap_or(&Value::Null)
        ));
    }
    let add_prefix_space = last.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(true);
    let use_regex = last.get("use_regex").and_then(Value::as_bool).unwrap_or(true);
    let splits = splits.iter().map(|v| splitter(v)).collect::<Result<_, _>>()?;
    Ok((splits, add_prefix_space, use_regex))
}

/// One `Split` pre-tokenizer with `behavior = Isolated`, `invert = false`, or a `Digits`.
fn splitter(value: &Value) -> Result<Splitter, String> {
    let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
    if kind == "Digits" {
        let individual = value.get("individual_digits").and_then(Value::as_bool).unwrap_or(false);
        return Ok(Splitter::Digits { individual });
    }
    if kind != "Split" {
        return Err(format!("pre_tokenizer {kind:?} before ByteLevel"));
    }
    let behavior = value.get("behavior").and_then(Value::as_str).unwrap_or("");
    if behavior != "Isolated" {
        return Err(format!("split behavior {behavior:?}"));
    }
    if value.get("invert").and_then(Value::as_bool).unwrap_or(false) {
        return Err("split with invert".into());
    }
    let pattern = value.get("pattern").ok_or("split without pattern")?;
    let regex = if let Some(re) = pattern.get("Regex").and_then(Value::as_str) {
        if let Some(scheme) = Scheme::recognize(re) {
            return Ok(Splitter::Known(scheme));
        }
        re.to_owned()
    } else if let Some(literal) = pattern.get("String").and_then(Value::as_str) {
        // HF escapes string patterns this way before compiling them.
        regex::escape(literal)
    } else {
        return Err(format!("split pattern {pattern}"));
    };
    tokenizers::utils::SysRegex::new(&regex).map(Splitter::Regex).map_err(|e| format!("split regex {regex:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nfc_check() {
        assert!(is_nfc_fast("plain ascii"));
        assert!(is_nfc_fast("café 日本"));
        assert!(!is_nfc_fast("cafe\u{301}"));
        assert!(is_nfc_fast("\u{301}"));
    }

    #[test]
    fn normalizers() {
        assert_eq!(normalizer_is_nfc(&Value::Null), Ok(false));
        assert_eq!(normalizer_is_nfc(&json!({"type": "NFC"})), Ok(true));
        assert_eq!(normalizer_is_nfc(&json!({"type": "Sequence", "normalizers": [{"type": "NFC"}]})), Ok(true));
        assert!(normalizer_is_nfc(&json!({"type": "NFKC"})).unwrap_err().contains("NFKC"));
    }

    #[test]
    fn pre_tokenizers() {
        let (splits, prefix, regex) = pre_tokenizer(&json!({"type": "ByteLevel", "add_prefix_space": false})).unwrap();
        assert!(splits.is_empty() && !prefix && regex);
        let seq = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"String": "."}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]});
        let (splits, _, regex) = pre_tokenizer(&seq).unwrap();
        assert!(matches!(splits[..], [Splitter::Regex(_)]) && !regex);
        let removed = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"String": "."}, "behavior": "Removed", "invert": false},
            {"type": "ByteLevel"}]});
        assert!(pre_tokenizer(&removed).unwrap_err().contains("Removed"));
        assert!(pre_tokenizer(&json!({"type": "Metaspace"})).unwrap_err().contains("Metaspace"));
    }

    #[test]
    fn offsets_widen_to_chars() {
        let text = "aé";
        let (mut ids, mut offsets) = (vec![], vec![]);
        // Tokens "a", first byte of é, second byte of é.
        push_tokens(text, &[1, 2, 3], &[1, 1, 1], Origin::Plain(0), &mut ids, &mut offsets);
        assert_eq!(offsets, [(0, 1), (1, 3), (1, 3)]);
        offsets.clear();
        // " é" with a prefix space: "Ġ" alone, then the two bytes.
        push_tokens("é", &[1, 2, 3], &[1, 1, 1], Origin::Prefixed(0), &mut ids, &mut offsets);
        assert_eq!(offsets, [(0, 2), (0, 2), (0, 2)]);
    }
}
