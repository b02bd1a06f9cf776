//! SentencePiece-style text handling: spaces become the metaspace char `▁`, a `▁` may be prepended,
//! and each stretch of text between added tokens is cut into words for [`SpmModel`].
//!
//! Two `tokenizer.json` shapes do this, and HF gives them the same result:
//! - the `Metaspace` pre-tokenizer (newer conversions: Llama 2 / Mistral saved by recent
//!   transformers): `replacement`, `prepend_scheme` `first` | `always` | `never` (older files:
//!   `add_prefix_space`), `split`;
//! - a normalizer (older conversions, Gemma): `Replace(" " -> "▁")`, optionally with
//!   `Prepend("▁")`, and no pre-tokenizer.
//!
//! HF reports offsets in the original text: a `▁` that replaced a space maps to that space, and a
//! prepended `▁` maps to the first char of its piece (`NormalizedString::prepend` aligns it there).
//!
//! With the normalizer shape, HF matches `normalized = true` added tokens by their normalized content
//! (`<s>` becomes `▁<s>` under `Prepend`) on the normalized text, which [`Metaspace::encode_normalized`]
//! builds for that; otherwise the text is never rewritten: spaces are read as `▁` where it matters.

use serde_json::Value;

use super::added::{AddedTokens, Piece};
use super::cache::Sink;
use super::spm::SpmModel;
use super::fast::{ceil_char, floor_char};

/// When a `▁` goes before a piece of text (a stretch between added tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prepend {
    /// Never.
    Never,
    /// `Metaspace` `first`: before the piece that starts the text, unless it starts with a space or `▁`.
    First,
    /// `Metaspace` `always`: before every piece that does not start with a space or `▁`.
    Always,
    /// The `Prepend` normalizer: before every piece.
    Normalizer,
}

/// Where a piece is cut into words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// Before every space or `▁` (`Metaspace` with `split = true`: HF's own words).
    EveryMeta,
    /// Before every space or `▁` that follows another char: HF keeps the piece whole, but no merge can
    /// cross these points (checked at load time: [`SpmModel::meta_boundaries_hold`]), so words repeat
    /// and the per-thread word cache works as it does for byte-level BPE.
    AfterNonMeta,
    /// Nowhere: the piece is one word (long pieces merge in `O(n log n)`, uncached).
    Never,
}

/// The SentencePiece-style pipeline of one tokenizer: how spaces and pieces become words.
#[derive(Debug)]
pub(crate) struct Metaspace {
    /// The normalizer does the replacing (it changes the text that added tokens are matched on).
    by_normalizer: bool,
    prepend: Prepend,
    cut: Cut,
    model: SpmModel,
}

impl Metaspace {
    /// Build from the `normalizer` (with any NFC step already accepted by the caller: `nfc_ok`
    /// says whether one more NFC normalizer is fine) and `pre_tokenizer` of a `tokenizer.json`, and
    /// its `model`. `Ok(None)` if the file is not SentencePiece-style at all; `Err` names what keeps
    /// the fast path off. Returns whether the normalizer includes NFC.
    pub(crate) fn from_json(
        normalizer: &Value,
        pre_tokenizer: &Value,
        model: &Value,
    ) -> Result<Option<(Metaspace, bool)>, String> {
        let steps = normalizer_steps(normalizer)?;
        let pre = pre_tokenizer_metaspace(pre_tokenizer)?;
        let replaces = steps.iter().any(|s| matches!(s, Norm::Replace(_)));
        let by_normalizer = pre.is_none();
        let (meta, prepend, split) = match pre {
            Some((meta, prepend, split)) => {
                if let Some(step) = steps.iter().find(|s| !matches!(s, Norm::Nfc)) {
                    return Err(format!("normalizer {} with the Metaspace pre-tokenizer", step.name()));
                }
                (meta, prepend, split)
            }
            None if replaces => {
                if !pre_tokenizer.is_null() {
                    let kind = pre_tokenizer.get("type").unwrap_or(&Value::Null);
                    return Err(format!("pre_tokenizer {kind} after a metaspace normalizer"));
                }
                let meta = metaspace_normalizer(&steps)?;
                let prepend = if steps.iter().any(|s| matches!(s, Norm::Prepend(_))) {
                    Prepend::Normalizer
                } else {
                    Prepend::Never
                };
                (meta, prepend, false)
            }
            None => return Ok(None),
        };
        let nfc = steps.iter().any(|s| matches!(s, Norm::Nfc));
        let model = SpmModel::from_json(model, meta)?;
        let cut = if split {
            Cut::EveryMeta
        } else if model.meta_boundaries_hold() {
            Cut::AfterNonMeta
        } else {
            Cut::Never
        };
        Ok(Some((Metaspace { by_normalizer, prepend, cut, model }, nfc)))
    }

    /// Whether the normalizer changes the text (then HF matches `normalized = true` added tokens on the
    /// changed text: see [`Metaspace::normalize`], [`Metaspace::encode_normalized`]).
    pub(crate) fn by_normalizer(&self) -> bool {
        self.by_normalizer
    }

    /// `s` as the normalizer writes it (for the contents of `normalized = true` added tokens): spaces
    /// replaced, and the `▁` prepended if `s` is not empty and the normalizer prepends.
    pub(crate) fn normalize(&self, s: &str) -> String {
        let meta = self.model.meta();
        let prefix = (self.prepend == Prepend::Normalizer && !s.is_empty()).then_some(meta);
        prefix.into_iter().chain(s.chars().map(|c| if c == ' ' { meta } else { c })).collect()
    }

    /// Tokenize the piece `text[start..end]` (between `normalized = false` added tokens) when the
    /// normalizer rewrites it and `added` has `normalized = true` tokens: build the normalized text
    /// with each byte's original range (HF's alignments), split it on those tokens, and tokenize the
    /// stretches between them (a stretch at the start keeps the prepended `▁`).
    pub(crate) fn encode_normalized(
        &self,
        text: &str,
        start: usize,
        end: usize,
        added: &AddedTokens,
        out: &mut Sink<'_>,
    ) {
        let meta = self.model.meta();
        let piece = &text[start..end];
        let normalized = self.normalize(piece);
        // Original byte range of each normalized byte.
        let mut align: Vec<(usize, usize)> = Vec::with_capacity(normalized.len());
        let prefix_len = if self.prepend == Prepend::Normalizer { meta.len_utf8() } else { 0 };
        let first = piece.chars().next().map_or(0, char::len_utf8);
        align.extend(std::iter::repeat_n((start, start + first), prefix_len));
        for (i, c) in piece.char_indices() {
            let n = if c == ' ' { meta.len_utf8() } else { c.len_utf8() };
            align.extend(std::iter::repeat_n((start + i, start + i + c.len_utf8()), n));
        }
        let mut pieces = vec![];
        added.split_normalized(&normalized, 0, normalized.len(), &mut pieces);
        for sub in pieces {
            match sub {
                Piece::Added { id, start: a, end: b } => {
                    out.ids.push(id);
                    out.offsets.push((align[a].0 as u32, align[b - 1].1 as u32));
                }
                Piece::Text { start: a, end: b } => {
                    // A stretch that holds the prepended `▁` starts at the piece; it may be only that.
                    let from = if a < prefix_len { start } else { align[a].0 };
                    let to = if b <= prefix_len { start } else { align[b - 1].1 };
                    self.encode_words(text, from, to, a < prefix_len, out);
                }
            }
        }
    }

    /// Where pieces are cut (for tests).
    #[cfg(test)]
    pub(crate) fn cut(&self) -> Cut {
        self.cut
    }

    /// Tokenize the piece `text[start..end]` (non-empty, no added tokens inside), appending ids and
    /// offsets (bytes of `text`).
    pub(crate) fn encode_piece(&self, text: &str, start: usize, end: usize, out: &mut Sink<'_>) {
        let mut utf8 = [0u8; 4];
        let meta = self.model.meta().encode_utf8(&mut utf8).as_bytes();
        let starts_with_meta = meta_len(&text.as_bytes()[..end], start, meta) > 0;
        let prefixed = match self.prepend {
            Prepend::Never => false,
            Prepend::First => start == 0 && !starts_with_meta,
            Prepend::Always => !starts_with_meta,
            Prepend::Normalizer => true,
        };
        self.encode_words(text, start, end, prefixed, out);
    }

    /// Cut `text[start..end]` (after a prepended `▁` if `prefixed`; empty only then) into words and
    /// tokenize them.
    fn encode_words(&self, text: &str, start: usize, end: usize, prefixed: bool, out: &mut Sink<'_>) {
        let mut utf8 = [0u8; 4];
        let meta = self.model.meta().encode_utf8(&mut utf8).as_bytes();
        let bytes = &text.as_bytes()[..end];
        let mut word_start = start;
        if self.cut != Cut::Never {
            // Bytes, not chars: a space or `▁` is found by its whole UTF-8 encoding, and the
            // continuation bytes of other chars (0x80..=0xBF) can match neither.
            let mut prev_meta = prefixed;
            let mut i = start;
            while i < end {
                let n = meta_len(bytes, i, meta);
                if n == 0 {
                    prev_meta = false;
                    i += 1;
                    continue;
                }
                let cut_here = self.cut == Cut::EveryMeta || !prev_meta;
                if cut_here && i > word_start {
                    self.word(text, word_start, i, prefixed && word_start == start, out);
                    word_start = i;
                }
                prev_meta = true;
                i += n;
            }
        }
        self.word(text, word_start, end, prefixed && word_start == start, out);
    }

    /// Tokenize one word `text[start..end]` (after a prepended `▁` if `prefixed`) through the cache.
    fn word(&self, text: &str, start: usize, end: usize, prefixed: bool, out: &mut Sink<'_>) {
        let word = &text[start..end];
        // A prefixed word is cached under a key no UTF-8 text has: 0xFF then its bytes.
        let mut prefixed_key = std::mem::take(&mut out.buffers.key);
        let key = if prefixed {
            prefixed_key.clear();
            prefixed_key.push(0xFF);
            prefixed_key.extend_from_slice(word.as_bytes());
            &prefixed_key[..]
        } else {
            word.as_bytes()
        };
        if let Some((word_ids, lens)) = out.words.get(key) {
            push_tokens(text, start, word_ids, lens, &mut out.ids, &mut out.offsets);
        } else {
            out.buffers.word_ids.clear();
            out.buffers.word_lens.clear();
            self.model.tokenize(word, prefixed, &mut out.buffers.word_ids, &mut out.buffers.word_lens, &mut out.buffers.scratch);
            out.words.insert(key, &out.buffers.word_ids, &out.buffers.word_lens);
            push_tokens(text, start, &out.buffers.word_ids, &out.buffers.word_lens, &mut out.ids, &mut out.offsets);
        }
        out.buffers.key = prefixed_key;
    }
}

/// The byte length of the space or `meta` (UTF-8) at `bytes[i]`, or 0 for any other char.
#[inline]
fn meta_len(bytes: &[u8], i: usize, meta: &[u8]) -> usize {
    if bytes[i] == b' ' {
        1
    } else if bytes[i..].starts_with(meta) {
        meta.len()
    } else {
        0
    }
}

/// Append a word's tokens with their offsets in `text`; the word starts at byte `start`. Lengths are
/// original bytes; a length-0 token is a lone prepended `▁`, which HF maps to the word's first char.
/// Tokens that cover part of a char (`<0xXX>`) get the whole char, as in HF.
fn push_tokens(
    text: &str,
    start: usize,
    word_ids: &[u32],
    lens: &[u32],
    ids: &mut Vec<u32>,
    offsets: &mut Vec<(u32, u32)>,
) {
    ids.extend_from_slice(word_ids);
    let mut at = start;
    for &len in lens {
        let (a, b) = if len == 0 {
            (start, start + text[start..].chars().next().map_or(0, char::len_utf8))
        } else {
            (floor_char(text, at), ceil_char(text, at + len as usize))
        };
        at += len as usize;
        offsets.push((a as u32, b as u32));
    }
}

/// One normalizer step that may appear in a SentencePiece-style file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Norm {
    Nfc,
    /// `Prepend(s)`.
    Prepend(String),
    /// `Replace(" " -> s)`.
    Replace(String),
}

impl Norm {
    fn name(&self) -> &'static str {
        match self {
            Norm::Nfc => "NFC",
            Norm::Prepend(_) => "Prepend",
            Norm::Replace(_) => "Replace",
        }
    }
}

/// The normalizer as a list of steps (`[]` for none). `Err` for a step the fast path cannot do.
fn normalizer_steps(value: &Value) -> Result<Vec<Norm>, String> {
    let mut out = vec![];
    match value.get("type").and_then(Value::as_str) {
        None if value.is_null() => {}
        Some("Sequence") => {
            for step in value.get("normalizers").and_then(Value::as_array).ok_or("normalizer sequence")? {
                out.extend(normalizer_steps(step)?);
            }
        }
        Some("NFC") => out.push(Norm::Nfc),
        Some("Prepend") => {
            let s = value.get("prepend").and_then(Value::as_str).ok_or("Prepend normalizer without prepend")?;
            out.push(Norm::Prepend(s.to_owned()));
        }
        Some("Replace") => {
            let pattern = value.get("pattern").and_then(|p| p.get("String")).and_then(Value::as_str);
            let content = value.get("content").and_then(Value::as_str);
            match (pattern, content) {
                (Some(" "), Some(content)) => out.push(Norm::Replace(content.to_owned())),
                _ => return Err(format!("normalizer Replace {} -> {}", value["pattern"], value["content"])),
            }
        }
        other => return Err(format!("normalizer {}", other.unwrap_or("without type"))),
    }
    Ok(out)
}

/// The metaspace char of a normalizer made of `Replace(" " -> m)` and at most one `Prepend(m)` (in
/// either order: `Prepend` aligns its `▁` to the first char, which `Replace` keeps in place), and
/// optionally a leading NFC (NFC leaves `▁` and spaces alone, so it commutes with the rest).
fn metaspace_normalizer(steps: &[Norm]) -> Result<char, String> {
    let mut it = steps.iter().peekable();
    if it.peek() == Some(&&Norm::Nfc) {
        it.next();
    }
    let rest: Vec<&Norm> = it.collect();
    let (replace, prepend) = match rest[..] {
        [Norm::Replace(r)] => (r, None),
        [Norm::Replace(r), Norm::Prepend(p)] | [Norm::Prepend(p), Norm::Replace(r)] => (r, Some(p)),
        _ => {
            let names: Vec<&str> = steps.iter().map(Norm::name).collect();
            return Err(format!("normalizer sequence {names:?}"));
        }
    };
    let mut chars = replace.chars();
    let (Some(meta), None) = (chars.next(), chars.next()) else {
        return Err(format!("normalizer Replace \" \" -> {replace:?} (not one char)"));
    };
    if meta == ' ' {
        return Err("normalizer Replace \" \" -> \" \"".into());
    }
    if let Some(p) = prepend.filter(|p| **p != replace.as_str()) {
        return Err(format!("normalizer Prepend {p:?} with Replace \" \" -> {replace:?}"));
    }
    Ok(meta)
}

/// A `Metaspace` pre-tokenizer (alone or as a one-step sequence) as (replacement, prepend, split);
/// `None` if there is none.
fn pre_tokenizer_metaspace(value: &Value) -> Result<Option<(char, Prepend, bool)>, String> {
    let step = match value.get("type").and_then(Value::as_str) {
        Some("Metaspace") => value,
        Some("Sequence") => match value.get("pretokenizers").and_then(Value::as_array).map(Vec::as_slice) {
            Some([one]) if one.get("type").and_then(Value::as_str) == Some("Metaspace") => one,
            Some(list) if list.iter().any(|p| p.get("type").and_then(Value::as_str) == Some("Metaspace")) => {
                return Err("pre_tokenizer sequence with Metaspace and other steps".into());
            }
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    let replacement = step.get("replacement").and_then(Value::as_str).unwrap_or("▁");
    let mut chars = replacement.chars();
    let (Some(meta), None) = (chars.next(), chars.next()) else {
        return Err(format!("Metaspace replacement {replacement:?}"));
    };
    if meta == ' ' {
        return Err("Metaspace replacement \" \"".into());
    }
    // As HF reads it: `prepend_scheme` defaults to `always`; `add_prefix_space = false` means `never`.
    let mut prepend = match step.get("prepend_scheme").and_then(Value::as_str) {
        None | Some("always") => Prepend::Always,
        Some("first") => Prepend::First,
        Some("never") => Prepend::Never,
        Some(other) => return Err(format!("Metaspace prepend_scheme {other:?}")),
    };
    if step.get("add_prefix_space").and_then(Value::as_bool) == Some(false) {
        prepend = Prepend::Never;
    }
    let split = step.get("split").and_then(Value::as_bool).unwrap_or(true);
    Ok(Some((meta, prepend, split)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn model() -> Value {
        json!({"type": "BPE", "vocab": {"▁": 0, "a": 1, "▁a": 2, "<unk>": 3}, "merges": ["▁ a"],
            "unk_token": "<unk>"})
    }

    #[test]
    fn reads_both_shapes() {
        let pre = json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false});
        let (m, nfc) = Metaspace::from_json(&Value::Null, &pre, &model()).unwrap().unwrap();
        assert_eq!((m.prepend, m.cut(), nfc), (Prepend::First, Cut::AfterNonMeta, false));
        let old = json!({"type": "Metaspace", "replacement": "▁", "add_prefix_space": true});
        let (m, _) = Metaspace::from_json(&Value::Null, &old, &model()).unwrap().unwrap();
        assert_eq!((m.prepend, m.cut()), (Prepend::Always, Cut::EveryMeta));
        let norm = json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]});
        let (m, _) = Metaspace::from_json(&norm, &Value::Null, &model()).unwrap().unwrap();
        assert_eq!(m.prepend, Prepend::Normalizer);
        let gemma = json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"});
        let (m, _) = Metaspace::from_json(&gemma, &Value::Null, &model()).unwrap().unwrap();
        assert_eq!(m.prepend, Prepend::Never);
        // Byte-level files are not this shape.
        assert!(Metaspace::from_json(&Value::Null, &json!({"type": "ByteLevel"}), &model()).unwrap().is_none());
    }

    #[test]
    fn llama_style_fixture_is_cut_between_words() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tokenizers/spm_llama.json");
        let mut root: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let load = |root: &Value| Metaspace::from_json(&root["normalizer"], &root["pre_tokenizer"], &root["model"]);
        let (m, _) = load(&root).unwrap().unwrap();
        assert_eq!((m.prepend, m.cut()), (Prepend::Normalizer, Cut::AfterNonMeta));
        // A token that spans "e▁" makes cutting unsafe.
        root["model"]["vocab"]["e\u{2581}"] = json!(100_000);
        root["model"]["merges"].as_array_mut().unwrap().push(json!(["e", "\u{2581}"]));
        assert_eq!(load(&root).unwrap().unwrap().0.cut(), Cut::Never);
    }

    #[test]
    fn added_token_contents_normalize_like_text() {
        let prepend = json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}]});
        let (m, _) = Metaspace::from_json(&prepend, &Value::Null, &model()).unwrap().unwrap();
        assert_eq!(m.normalize("<s>"), "\u{2581}<s>");
        assert_eq!(m.normalize("a b"), "\u{2581}a\u{2581}b");
        assert_eq!(m.normalize(""), "");
        let gemma = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
        let (m, _) = Metaspace::from_json(&gemma, &Value::Null, &model()).unwrap().unwrap();
        assert_eq!(m.normalize("a b"), "a\u{2581}b");
    }

    #[test]
    fn names_what_it_cannot_do() {
        let err = |norm: Value, pre: Value| Metaspace::from_json(&norm, &pre, &model()).unwrap_err();
        let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"});
        let nfkc = json!({"type": "NFKC"});
        assert!(err(nfkc.clone(), Value::Null).contains("NFKC"));
        let seq = json!({"type": "Sequence", "normalizers": [replace.clone(), replace.clone()]});
        assert!(err(seq, Value::Null).contains("normalizer sequence"));
        let prepend_x =
            json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "x"}, replace.clone()]});
        assert!(err(prepend_x, Value::Null).contains("Prepend \"x\""));
        assert!(err(replace.clone(), json!({"type": "Whitespace"})).contains("Whitespace"));
        let pre = json!({"type": "Metaspace", "replacement": "▁"});
        assert!(err(replace, pre.clone()).contains("Replace with the Metaspace"));
        let seq = json!({"type": "Sequence", "pretokenizers": [pre, {"type": "Digits"}]});
        assert!(err(Value::Null, seq).contains("Metaspace and other steps"));
    }
}
