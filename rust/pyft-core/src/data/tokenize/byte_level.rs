//! The byte-level BPE pipeline (GPT-2, Llama 3, Qwen2, StarCoder, Falcon, ...): pre-tokenizer steps,
//! the `ByteLevel` pre-tokenizer, BPE per word through the word cache, and offsets.
//!
//! Steps before `ByteLevel` (isolating `Split`s, `Digits`, `Punctuation`) cut the original text into
//! pieces; `ByteLevel` may put a space before each piece and cut it with the GPT-2 regex into words;
//! steps after it (Falcon's `Digits` and `Split`) run on a word's byte-level string (one char per
//! byte) and cut the word further, inside the cached BPE of the word.

use serde_json::Value;

use super::bpe::{byte_chars, BpeModel};
use super::cache::Sink;
use super::fast::{ceil_char, floor_char};
use super::pretok::{scan, Scheme, Splitter};

/// Where a word's bytes come from in the original text.
#[derive(Clone, Copy)]
enum Origin {
    /// Word byte `k` is text byte `start + k`.
    Plain(usize),
    /// Word byte 0 is a prefix space added before the piece starting at text byte `piece`; word byte
    /// `k >= 1` is text byte `piece + k - 1`.
    Prefixed(usize),
}

/// The byte-level pipeline: pre-tokenizer steps and model.
#[derive(Debug)]
pub(crate) struct ByteLevel {
    /// Isolating splits run before `ByteLevel`, in order.
    splits: Vec<Splitter>,
    /// `ByteLevel.add_prefix_space`.
    add_prefix_space: bool,
    /// `ByteLevel.use_regex`: split each piece with the GPT-2 regex.
    use_regex: bool,
    /// Isolating splits run after `ByteLevel`, in order, on a word's byte-level string.
    after: Vec<Splitter>,
    /// The byte-level alphabet (the char standing for each byte), for `after`.
    chars: [char; 256],
    bpe: BpeModel,
}

impl ByteLevel {
    /// Build from the `pre_tokenizer` and `model` of a `tokenizer.json`. `Err` names what keeps the fast
    /// path off.
    pub(crate) fn from_json(pre_tokenizer: &Value, model: &Value) -> Result<ByteLevel, String> {
        let steps = pre_tokenizer_steps(pre_tokenizer)?;
        Ok(ByteLevel {
            splits: steps.before,
            add_prefix_space: steps.add_prefix_space,
            use_regex: steps.use_regex,
            after: steps.after,
            chars: byte_chars(),
            bpe: BpeModel::from_json(model)?,
        })
    }

    /// Whether the vocabulary has a token for every byte of `text` (else HF must encode it).
    pub(crate) fn covers(&self, text: &str) -> bool {
        self.bpe.covers(text)
    }

    /// Pre-tokenize and BPE `text[start..end]` (no added tokens inside).
    pub(crate) fn encode_text(&self, text: &str, start: usize, end: usize, out: &mut Sink<'_>) {
        let mut splits = std::mem::take(&mut out.buffers.splits);
        let mut next = std::mem::take(&mut out.buffers.splits_next);
        splits.clear();
        splits.push((start, end));
        apply_splits(&self.splits, text, &mut splits, &mut next);
        for &(p0, p1) in &splits {
            self.byte_level_piece(text, p0, p1, out);
        }
        out.buffers.splits = splits;
        out.buffers.splits_next = next;
    }

    /// HF's `ByteLevel` pre-tokenizer on one piece `text[p0..p1]`, then BPE on each word.
    fn byte_level_piece(&self, text: &str, p0: usize, p1: usize, out: &mut Sink<'_>) {
        let piece = &text[p0..p1];
        let prefixed = self.add_prefix_space && !piece.starts_with(' ');
        if !prefixed && !self.use_regex {
            self.word(text, piece.as_bytes(), Origin::Plain(p0), out);
            return;
        }
        let mut spaced = std::mem::take(&mut out.buffers.prefixed);
        let mut ranges = std::mem::take(&mut out.buffers.words);
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
            self.word(text, &spaced.as_bytes()[a..b], origin, out);
        }
        out.buffers.prefixed = spaced;
        out.buffers.words = ranges;
    }

    /// BPE one word (through the cache) and append its tokens.
    fn word(&self, text: &str, word: &[u8], origin: Origin, out: &mut Sink<'_>) {
        if let Some((word_ids, lens)) = out.words.get(word) {
            push_tokens(text, word_ids, lens, origin, &mut out.ids, &mut out.offsets);
            return;
        }
        out.buffers.word_ids.clear();
        out.buffers.word_lens.clear();
        if self.after.is_empty() {
            self.bpe.tokenize_word(word, &mut out.buffers.word_ids, &mut out.buffers.word_lens, &mut out.buffers.scratch);
        } else {
            for (a, b) in self.split_after(word) {
                let sub = &word[a..b];
                self.bpe.tokenize_word(sub, &mut out.buffers.word_ids, &mut out.buffers.word_lens, &mut out.buffers.scratch);
            }
        }
        out.words.insert(word, &out.buffers.word_ids, &out.buffers.word_lens);
        push_tokens(text, &out.buffers.word_ids, &out.buffers.word_lens, origin, &mut out.ids, &mut out.offsets);
    }

    /// The pieces of `word` (raw bytes) under the steps after `ByteLevel`, as byte ranges of `word`.
    /// HF runs those steps on the byte-level string, one char per byte, so that is what they see here
    /// (a Falcon `Digits` step splits the byte 0xBC, shown as `¼`, off the `м` it belongs to, as HF
    /// does). Runs once per distinct word: the result goes into the word cache with the tokens.
    fn split_after(&self, word: &[u8]) -> Vec<(usize, usize)> {
        let mapped: String = word.iter().map(|&b| self.chars[b as usize]).collect();
        // Word byte index of each char boundary of `mapped` (others unused).
        let mut index = vec![0usize; mapped.len() + 1];
        for (k, (i, _)) in mapped.char_indices().enumerate() {
            index[i] = k;
        }
        index[mapped.len()] = word.len();
        let mut pieces = vec![(0, mapped.len())];
        apply_splits(&self.after, &mapped, &mut pieces, &mut vec![]);
        pieces.into_iter().map(|(a, b)| (index[a], index[b])).collect()
    }
}

/// Refine `pieces` (byte ranges of `text`) by each splitter in turn; `next` is scratch space.
fn apply_splits(splitters: &[Splitter], text: &str, pieces: &mut Vec<(usize, usize)>, next: &mut Vec<(usize, usize)>) {
    for splitter in splitters {
        next.clear();
        for &(p0, p1) in pieces.iter() {
            let first = next.len();
            splitter.split(&text[p0..p1], next);
            for range in &mut next[first..] {
                *range = (range.0 + p0, range.1 + p0);
            }
        }
        std::mem::swap(pieces, next);
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

/// A byte-level pre-tokenizer, step by step.
struct Steps {
    /// Isolating splits before `ByteLevel`.
    before: Vec<Splitter>,
    /// `ByteLevel.add_prefix_space`.
    add_prefix_space: bool,
    /// `ByteLevel.use_regex`.
    use_regex: bool,
    /// Isolating splits after `ByteLevel`.
    after: Vec<Splitter>,
}

/// Read a pre-tokenizer made of one `ByteLevel` step with isolating splits around it.
fn pre_tokenizer_steps(value: &Value) -> Result<Steps, String> {
    let steps: Vec<&Value> = match value.get("type").and_then(Value::as_str) {
        Some("Sequence") => {
            value.get("pretokenizers").and_then(Value::as_array).ok_or("pre_tokenizer sequence")?.iter().collect()
        }
        Some(_) => vec![value],
        None => return Err("no pre_tokenizer (byte-level BPE needs ByteLevel)".into()),
    };
    let is_byte_level = |v: &Value| v.get("type").and_then(Value::as_str) == Some("ByteLevel");
    let at = match steps.iter().filter(|v| is_byte_level(v)).count() {
        1 => steps.iter().position(|v| is_byte_level(v)).unwrap_or_default(),
        0 => {
            let kinds: Vec<&Value> = steps.iter().map(|v| v.get("type").unwrap_or(&Value::Null)).collect();
            return Err(format!("pre_tokenizer {kinds:?} without a ByteLevel step"));
        }
        n => return Err(format!("pre_tokenizer with {n} ByteLevel steps")),
    };
    let byte_level = steps[at];
    let splitters = |list: &[&Value]| list.iter().map(|v| splitter(v)).collect::<Result<Vec<_>, _>>();
    Ok(Steps {
        before: splitters(&steps[..at])?,
        add_prefix_space: byte_level.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(true),
        use_regex: byte_level.get("use_regex").and_then(Value::as_bool).unwrap_or(true),
        after: splitters(&steps[at + 1..])?,
    })
}

/// One `Split` pre-tokenizer with `behavior = Isolated`, `invert = false`, a `Digits` or a
/// `Punctuation` (`Isolated` or `Contiguous`).
fn splitter(value: &Value) -> Result<Splitter, String> {
    let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
    if kind == "Digits" {
        let individual = value.get("individual_digits").and_then(Value::as_bool).unwrap_or(false);
        return Ok(Splitter::Digits { individual });
    }
    if kind == "Punctuation" {
        if !super::unicode::punctuation_known() {
            return Err("punctuation table unavailable".into());
        }
        return match value.get("behavior").and_then(Value::as_str).unwrap_or("Isolated") {
            "Isolated" => Ok(Splitter::Punctuation { contiguous: false }),
            "Contiguous" => Ok(Splitter::Punctuation { contiguous: true }),
            other => Err(format!("punctuation behavior {other:?}")),
        };
    }
    if kind != "Split" {
        return Err(format!("pre_tokenizer step {kind:?} beside ByteLevel"));
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
    fn pre_tokenizers() {
        let steps = pre_tokenizer_steps(&json!({"type": "ByteLevel", "add_prefix_space": false})).unwrap();
        assert!(steps.before.is_empty() && steps.after.is_empty() && !steps.add_prefix_space && steps.use_regex);
        let seq = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"String": "."}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]});
        let steps = pre_tokenizer_steps(&seq).unwrap();
        assert!(matches!(steps.before[..], [Splitter::Regex(_)]) && !steps.use_regex);
        let removed = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"String": "."}, "behavior": "Removed", "invert": false},
            {"type": "ByteLevel"}]});
        assert!(pre_tokenizer_steps(&removed).err().unwrap().contains("Removed"));
        assert!(pre_tokenizer_steps(&json!({"type": "Metaspace"})).err().unwrap().contains("Metaspace"));
        let twice = json!({"type": "Sequence", "pretokenizers": [{"type": "ByteLevel"}, {"type": "ByteLevel"}]});
        assert!(pre_tokenizer_steps(&twice).err().unwrap().contains("2 ByteLevel"));
    }

    #[test]
    fn falcon_steps_run_on_the_byte_level_string() {
        let falcon = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Punctuation", "behavior": "Contiguous"},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            {"type": "Digits", "individual_digits": false},
            {"type": "Split", "pattern": {"Regex": "[0-9][0-9][0-9]"}, "behavior": "Isolated", "invert": false}]});
        let steps = pre_tokenizer_steps(&falcon).unwrap();
        assert!(matches!(steps.before[..], [Splitter::Punctuation { contiguous: true }]));
        assert_eq!(steps.after.len(), 2);
        let mut vocab = serde_json::Map::new();
        for c in byte_chars() {
            vocab.insert(c.to_string(), json!(vocab.len()));
        }
        let level = ByteLevel::from_json(&falcon, &json!({"type": "BPE", "vocab": vocab, "merges": []})).unwrap();
        let pieces = |word: &str| -> Vec<String> {
            let bytes = word.as_bytes();
            level.split_after(bytes).into_iter().map(|(a, b)| String::from_utf8_lossy(&bytes[a..b]).into()).collect()
        };
        assert_eq!(pieces(" 1234567x"), [" ", "123", "456", "7", "x"]);
        // "м" is D0 BC, and 0xBC is written "¼", which is numeric.
        assert_eq!(pieces("м"), ["\u{fffd}", "\u{fffd}"]);
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
