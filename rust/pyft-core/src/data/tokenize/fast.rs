//! The fast BPE encoder: which `tokenizer.json`s it takes, and the encode pipeline.
//!
//! Pipeline per text (each step mirrors one stage of HF's `TokenizerImpl::encode`):
//! 1. split on added tokens (`normalized = false` ones over the raw text, then `normalized = true` ones
//!    over each remainder) -- [`super::added`];
//! 2. normalizer: none, or NFC where the text is already NFC (otherwise the caller falls back to HF);
//!    for SentencePiece-style files also the space -> `▁` normalizers, done inside step 3;
//! 3. byte-level files: isolating `Split`s, then `ByteLevel` (prefix space, optional GPT-2 regex) --
//!    [`super::pretok`]; SentencePiece-style files: spaces read as `▁`, a prepended `▁`, words cut
//!    where no merge crosses -- [`super::metaspace`];
//! 4. BPE per word through a per-thread word cache -- [`super::bpe`] / [`super::spm`], [`super::cache`];
//! 5. post-processor -- [`super::post`].
//!
//! Offsets follow HF: each token maps back to the original bytes it covers, widened to whole
//! characters (HF aligns every byte of a character to the whole character), and a prefix space (or
//! prepended `▁`) maps to the first character of its piece.

use rustc_hash::FxHashMap;
use serde_json::Value;
use unicode_normalization::{is_nfc, is_nfc_quick, IsNormalized};

use super::added::{AddedToken, AddedTokens, Piece};
use super::byte_level::ByteLevel;
use super::cache::{self, Sink};
use super::metaspace::Metaspace;
use super::post::{trim_counts, PostPlan, TrimTable};
use super::Encoding;

/// A BPE tokenizer that the fast path reproduces exactly.
#[derive(Debug)]
pub(crate) struct FastEncoder {
    added: AddedTokens,
    /// The normalizer is (or includes) NFC: texts that NFC would change go to HF.
    nfc: bool,
    /// Pre-tokenization and model.
    model: Model,
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
        let normalizer = root.get("normalizer").unwrap_or(&Value::Null);
        let pre = root.get("pre_tokenizer").unwrap_or(&Value::Null);
        let model_json = root.get("model").ok_or("no model")?;
        let (model, nfc) = match Metaspace::from_json(normalizer, pre, model_json)? {
            Some((metaspace, nfc)) => (Model::Metaspace(Box::new(metaspace)), nfc),
            None => {
                let nfc = normalizer_is_nfc(normalizer)?;
                (Model::ByteLevel(Box::new(ByteLevel::from_json(pre, model_json)?)), nfc)
            }
        };
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
            // HF matches a `normalized = true` token's normalized content on normalized text.
            let content = match &model {
                Model::Metaspace(m) if token.normalized && m.by_normalizer() => m.normalize(&token.content),
                _ => token.content.clone(),
            };
            matched.push(AddedToken { id: *id, content, normalized: token.normalized });
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
            model,
            post,
            trim,
            instance: cache::next_instance_id(),
        })
    }

    /// The tokens of `text`, or `None` if the text needs HF (NFC would change it, or it holds a byte
    /// that a byte-level vocabulary lacks).
    pub(crate) fn encode(&self, text: &str, add_special_tokens: bool) -> Option<Encoding> {
        if let Model::ByteLevel(b) = &self.model {
            if !b.covers(text) {
                return None;
            }
        }
        cache::with_local(self.instance, |words, buffers| {
            let mut out = Sink {
                words,
                buffers,
                ids: Vec::with_capacity(text.len() / 3 + 4),
                offsets: Vec::with_capacity(text.len() / 3 + 4),
            };
            let mut pieces = std::mem::take(&mut out.buffers.pieces);
            let mut sub_pieces = std::mem::take(&mut out.buffers.sub_pieces);
            pieces.clear();
            self.added.split_raw(text, &mut pieces);
            let mut ok = true;
            for &piece in &pieces {
                match piece {
                    Piece::Added { id, start, end } => {
                        out.ids.push(id);
                        out.offsets.push((start as u32, end as u32));
                    }
                    Piece::Text { start, end } => {
                        if self.nfc && !is_nfc_fast(&text[start..end]) {
                            ok = false;
                            break;
                        }
                        if let Model::Metaspace(m) = &self.model {
                            if m.by_normalizer() && self.added.has_normalized() {
                                m.encode_normalized(text, start, end, &self.added, &mut out);
                                continue;
                            }
                        }
                        sub_pieces.clear();
                        self.added.split_normalized(text, start, end, &mut sub_pieces);
                        for &sub in &sub_pieces {
                            match sub {
                                Piece::Added { id, start, end } => {
                                    out.ids.push(id);
                                    out.offsets.push((start as u32, end as u32));
                                }
                                Piece::Text { start, end } => match &self.model {
                                    Model::ByteLevel(b) => b.encode_text(text, start, end, &mut out),
                                    Model::Metaspace(m) => m.encode_piece(text, start, end, &mut out),
                                },
                            }
                        }
                    }
                }
            }
            out.buffers.pieces = pieces;
            out.buffers.sub_pieces = sub_pieces;
            ok.then(|| {
                let (ids, offsets) = self.post.apply(out.ids, out.offsets, add_special_tokens, &self.trim);
                Encoding { ids, offsets }
            })
        })
    }
}

/// What runs between the added-token split and the post-processor (boxed: both hold KiB-sized id
/// tables, of different sizes).
#[derive(Debug)]
enum Model {
    /// Byte-level BPE (GPT-2, Llama 3, Qwen2, ...).
    ByteLevel(Box<ByteLevel>),
    /// SentencePiece-style BPE (Llama 2, Mistral v0.1, Phi-3, Gemma, ...).
    Metaspace(Box<Metaspace>),
}

/// The char boundary at or before `i`.
#[inline]
pub(crate) fn floor_char(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The char boundary at or after `i`.
#[inline]
pub(crate) fn ceil_char(text: &str, mut i: usize) -> usize {
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
}
