//! Character classes for the pre-tokenizer scanners: `\p{L}`, `\p{N}`, `\p{M}`, `\s`, or none of them.
//!
//! HF `tokenizers` runs its split regexes on Oniguruma, whose Unicode tables need not match the
//! `regex` crate's or Rust's `char` methods (different Unicode versions, a different `\s`). To give
//! identical splits we ask the very same Oniguruma build (the one `tokenizers` links) which code points
//! match each class, once per process, and store the answer in a two-level table (~40 KiB).
//!
//! HF's `Punctuation` pre-tokenizer tests chars in Rust instead (ASCII punctuation, or a general
//! category `P*` from its own Unicode tables); [`is_hf_punctuation`] asks that very pre-tokenizer, once
//! per process, and keeps a bitset (~136 KiB).

use std::sync::LazyLock;

use tokenizers::utils::SysRegex;

/// The class a scanner needs for one character. `\p{L}`, `\p{N}`, `\p{M}` and `\s` are disjoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum Class {
    /// None of the below: punctuation, symbols, controls, unassigned, ...
    Other = 0,
    /// `\p{L}`.
    Letter = 1,
    /// `\p{N}`.
    Number = 2,
    /// `\s` as Oniguruma defines it.
    Space = 3,
    /// `\p{M}` (combining marks).
    Mark = 4,
}

/// Code points per table block.
const BLOCK: usize = 128;
/// Number of blocks covering all of Unicode.
const N_BLOCKS: usize = 0x11_0000 / BLOCK;

/// Two-level lookup: `blocks[index[cp / BLOCK] * BLOCK + cp % BLOCK]`.
struct ClassTable {
    index: Vec<u16>,
    blocks: Vec<Class>,
    /// Classes of the 128 ASCII code points, for the hot path.
    ascii: [Class; 128],
}

static TABLE: LazyLock<ClassTable> = LazyLock::new(build_table);

/// The class of `c`.
#[inline]
pub(crate) fn class_of(c: char) -> Class {
    let table = &*TABLE;
    let cp = c as usize;
    if cp < 128 {
        return table.ascii[cp];
    }
    table.blocks[table.index[cp / BLOCK] as usize * BLOCK + cp % BLOCK]
}

/// The classes of the ASCII code points (index = byte value).
pub(crate) fn ascii_classes() -> &'static [Class; 128] {
    &TABLE.ascii
}

/// Bit `cp` is set for each punctuation code point; `None` if HF's pre-tokenizer failed on the probe.
static PUNCTUATION: LazyLock<Option<Vec<u64>>> = LazyLock::new(build_punctuation);

/// Whether [`is_hf_punctuation`] is exact (checked when a tokenizer with a `Punctuation` step loads).
pub(crate) fn punctuation_known() -> bool {
    PUNCTUATION.is_some()
}

/// Whether HF's `Punctuation` pre-tokenizer splits at `c` (`false` for all if not
/// [`punctuation_known`]).
pub(crate) fn is_hf_punctuation(c: char) -> bool {
    let cp = c as usize;
    PUNCTUATION.as_ref().is_some_and(|bits| bits[cp / 64] >> (cp % 64) & 1 == 1)
}

/// Run HF's `Punctuation` (isolating) over every probed char, each between two `a`s: a piece that is
/// one char other than `a` is a punctuation char.
fn build_punctuation() -> Option<Vec<u64>> {
    use tokenizers::pre_tokenizers::punctuation::Punctuation;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, SplitDelimiterBehavior};

    let mut bits = vec![0u64; 0x11_0000 / 64];
    let mut probe = String::with_capacity(1 << 21);
    for &(lo, hi) in &PROBED {
        for c in (lo..hi).filter_map(char::from_u32) {
            probe.push('a');
            probe.push(c);
        }
    }
    probe.push('a');
    let mut pieces = PreTokenizedString::from(probe.as_str());
    Punctuation::new(SplitDelimiterBehavior::Isolated).pre_tokenize(&mut pieces).ok()?;
    for (piece, _, _) in pieces.get_splits(OffsetReferential::Original, OffsetType::Byte) {
        let mut chars = piece.chars();
        if let (Some(c), None) = (chars.next(), chars.next()) {
            if c != 'a' {
                bits[c as usize / 64] |= 1 << (c as usize % 64);
            }
        }
    }
    Some(bits)
}

/// Code point ranges probed with Oniguruma. Planes 4-13 are unassigned and planes 15-16 are private
/// use (`Co`), so no code point there is a letter, a number or a space.
const PROBED: [(u32, u32); 2] = [(0, 0x4_0000), (0xE_0000, 0xE_1000)];

fn build_table() -> ClassTable {
    let mut flat = vec![Class::Other; 0x11_0000];
    // One string holding every probed scalar value, in order.
    let mut probe = String::with_capacity(1 << 20);
    for &(lo, hi) in &PROBED {
        probe.extend((lo..hi).filter_map(char::from_u32));
    }
    let classes =
        [(r"\p{L}+", Class::Letter), (r"\p{N}+", Class::Number), (r"\p{M}+", Class::Mark), (r"\s+", Class::Space)];
    for (pattern, class) in classes {
        let re = SysRegex::new(pattern).expect("oniguruma compiles the class patterns");
        for (start, end) in re.find_iter(&probe) {
            for c in probe[start..end].chars() {
                flat[c as usize] = class;
            }
        }
    }
    let mut index = Vec::with_capacity(N_BLOCKS);
    let mut blocks: Vec<Class> = Vec::new();
    let mut seen: rustc_hash::FxHashMap<&[Class], u16> = rustc_hash::FxHashMap::default();
    for chunk in flat.chunks(BLOCK) {
        let next = seen.len() as u16;
        let id = *seen.entry(chunk).or_insert(next);
        if id == next {
            blocks.extend_from_slice(chunk);
        }
        index.push(id);
    }
    let mut ascii = [Class::Other; 128];
    ascii.copy_from_slice(&flat[..128]);
    ClassTable { index, blocks, ascii }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_classes_match_expectations() {
        assert_eq!(class_of('a'), Class::Letter);
        assert_eq!(class_of('Z'), Class::Letter);
        assert_eq!(class_of('7'), Class::Number);
        for c in [' ', '\t', '\n', '\r', '\u{b}', '\u{c}'] {
            assert_eq!(class_of(c), Class::Space, "{c:?}");
        }
        for c in ['\'', '!', '_', '\0', '\u{7f}', '~'] {
            assert_eq!(class_of(c), Class::Other, "{c:?}");
        }
    }

    #[test]
    fn non_ascii_classes_match_expectations() {
        assert_eq!(class_of('é'), Class::Letter);
        assert_eq!(class_of('日'), Class::Letter);
        assert_eq!(class_of('٣'), Class::Number);
        assert_eq!(class_of('½'), Class::Number);
        assert_eq!(class_of('\u{a0}'), Class::Space);
        assert_eq!(class_of('\u{3000}'), Class::Space);
        assert_eq!(class_of('\u{2028}'), Class::Space);
        assert_eq!(class_of('\u{301}'), Class::Mark);
        assert_eq!(class_of('\u{64b}'), Class::Mark);
        assert_eq!(class_of('😀'), Class::Other);
        assert_eq!(class_of('\u{10FFFF}'), Class::Other);
    }

    #[test]
    fn punctuation_is_hf_punctuation() {
        assert!(punctuation_known());
        for c in ['!', '.', '$', '+', '~', '«', '¿', '。', '、', '‐'] {
            assert!(is_hf_punctuation(c), "{c:?}");
        }
        for c in ['a', '1', ' ', '\n', '½', '€', '😀', '\u{10ffff}'] {
            assert!(!is_hf_punctuation(c), "{c:?}");
        }
    }

    #[test]
    fn table_agrees_with_oniguruma_everywhere() {
        // Spot-check unprobed planes too: they must hold no letters, numbers or spaces.
        let re = SysRegex::new(r"[\p{L}\p{N}\p{M}\s]").unwrap();
        let s: String =
            (0x4_0000u32..0xE_0000).step_by(97).chain(0xF_0000..0x11_0000).filter_map(char::from_u32).collect();
        assert_eq!(re.find_iter(&s).count(), 0);
    }
}
