//! Pre-tokenization: splitting text into words before BPE, exactly as HF's regexes do.
//!
//! The GPT-2 regex (used by the `ByteLevel` pre-tokenizer) and the Llama-3 family of `Split` regexes
//! (Llama-3 / cl100k, Qwen2 / Qwen3, Qwen3.5) get hand-written scanners; they reproduce Oniguruma's
//! leftmost-first alternation, greedy quantifiers and the `\s+(?!\S)` lookahead (the tests compare
//! them with Oniguruma on random text). Any other `Split` pattern runs on Oniguruma itself
//! ([`SysRegex`]), the engine HF uses, so the splits are the same by construction. HF's `Digits` and
//! `Punctuation` pre-tokenizers are plain character splits.

use tokenizers::utils::SysRegex;

use super::unicode::{ascii_classes, class_of, is_hf_punctuation, Class};

/// The regex of HF's `ByteLevel` pre-tokenizer (`use_regex = true`).
pub(crate) const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// The Llama-3 / cl100k family of `Split` regexes: Llama-3 (`max_digits = 3`), Qwen2 / Qwen3
/// (`max_digits = 1`), Qwen3.5 (`max_digits = 1`, combining marks count as letters).
fn llama3_pattern(max_digits: usize, marks: bool) -> String {
    let digits = if max_digits == 1 { r"\p{N}".to_owned() } else { format!(r"\p{{N}}{{1,{max_digits}}}") };
    let (letters, punct) =
        if marks { (r"[\p{L}\p{M}]+", r"[^\s\p{L}\p{M}\p{N}]+") } else { (r"\p{L}+", r"[^\s\p{L}\p{N}]+") };
    format!(
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{{L}}\p{{N}}]?{letters}|{digits}| ?{punct}[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
}

/// A regex family with a hand-written scanner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// [`GPT2_PATTERN`].
    Gpt2,
    /// The Llama-3 family (see `llama3_pattern`).
    Llama3 {
        /// Longest run of `\p{N}` in one word.
        max_digits: usize,
        /// `\p{M}` joins `\p{L}` (`[\p{L}\p{M}]+`) instead of being punctuation.
        marks: bool,
    },
}

impl Scheme {
    /// The scheme whose regex is exactly `pattern`, if any.
    pub(crate) fn recognize(pattern: &str) -> Option<Scheme> {
        if pattern == GPT2_PATTERN {
            return Some(Scheme::Gpt2);
        }
        [1, 3]
            .into_iter()
            .flat_map(|max_digits| [false, true].map(|marks| Scheme::Llama3 { max_digits, marks }))
            .find(|scheme| scheme.pattern() == pattern)
    }

    /// The regex this scheme scans.
    pub(crate) fn pattern(&self) -> String {
        match *self {
            Scheme::Gpt2 => GPT2_PATTERN.to_owned(),
            Scheme::Llama3 { max_digits, marks } => llama3_pattern(max_digits, marks),
        }
    }
}

/// One isolating split step: every match and every gap between matches becomes a piece.
#[derive(Debug)]
pub(crate) enum Splitter {
    /// A hand-scanned regex.
    Known(Scheme),
    /// Any other regex, run on Oniguruma.
    Regex(SysRegex),
    /// HF's `Digits` pre-tokenizer (numeric chars by `char::is_numeric`, as HF tests them).
    Digits {
        /// Each numeric char alone (`true`), or runs of them (`false`).
        individual: bool,
    },
    /// HF's `Punctuation` pre-tokenizer (ASCII punctuation and Unicode `P*`, as HF tests them).
    Punctuation {
        /// Runs of punctuation (`Contiguous`) instead of each char alone (`Isolated`).
        contiguous: bool,
    },
}

impl Splitter {
    /// Append to `out` the pieces of `s` as byte ranges `[start, end)` relative to `s`, in order,
    /// covering `s`, with no empty piece.
    pub(crate) fn split(&self, s: &str, out: &mut Vec<(usize, usize)>) {
        match self {
            Splitter::Known(scheme) => scan(*scheme, s, |a, b| out.push((a, b))),
            Splitter::Regex(re) => {
                let mut prev = 0;
                for (start, end) in re.find_iter(s) {
                    if prev < start {
                        out.push((prev, start));
                    }
                    if start < end {
                        out.push((start, end));
                    }
                    prev = end;
                }
                if prev < s.len() {
                    out.push((prev, s.len()));
                }
            }
            Splitter::Digits { individual } => split_chars(s, char::is_numeric, *individual, out),
            Splitter::Punctuation { contiguous } => split_chars(s, is_hf_punctuation, !*contiguous, out),
        }
    }
}

/// HF's `NormalizedString::split` on a char predicate: each matching char alone (`isolated`, HF's
/// `Isolated`) or runs of them (HF's `Contiguous`), and the runs of other chars between them.
fn split_chars(s: &str, matches: impl Fn(char) -> bool, isolated: bool, out: &mut Vec<(usize, usize)>) {
    let (mut start, mut in_run) = (0, false);
    for (i, c) in s.char_indices() {
        let hit = matches(c);
        if isolated && hit {
            if start < i {
                out.push((start, i));
            }
            start = i + c.len_utf8();
            out.push((i, start));
        } else if !isolated && hit != in_run && start < i {
            out.push((start, i));
            start = i;
        }
        in_run = hit;
    }
    if start < s.len() {
        out.push((start, s.len()));
    }
}

/// Call `emit(start, end)` for each word of `s` under `scheme`, in order. Words cover `s` exactly.
pub(crate) fn scan(scheme: Scheme, s: &str, mut emit: impl FnMut(usize, usize)) {
    let marks = matches!(scheme, Scheme::Llama3 { marks: true, .. });
    let mark_as = if marks { Class::Letter } else { Class::Other };
    let cur = Cursor { bytes: s.as_bytes(), ascii: ascii_classes(), mark_as };
    let mut i = 0;
    while i < s.len() {
        let end = match scheme {
            Scheme::Gpt2 => cur.gpt2_word(i),
            Scheme::Llama3 { max_digits, .. } => cur.llama3_word(i, max_digits),
        };
        debug_assert!(end > i);
        emit(i, end);
        i = end;
    }
}

/// Read access to a UTF-8 string by byte position, with character classes.
struct Cursor<'a> {
    bytes: &'a [u8],
    ascii: &'static [Class; 128],
    /// What `\p{M}` counts as in this scheme: a letter or punctuation.
    mark_as: Class,
}

impl Cursor<'_> {
    /// The character at byte `i` (a char boundary): its class, its scalar value and its UTF-8 length.
    #[inline(always)]
    fn at(&self, i: usize) -> (Class, u32, usize) {
        let b0 = self.bytes[i];
        if b0 < 0x80 {
            return (self.ascii[b0 as usize], b0 as u32, 1);
        }
        let (cp, len) = decode(self.bytes, i);
        // `cp` came from valid UTF-8, so it is a scalar value.
        let class = match class_of(char::from_u32(cp).unwrap_or('\u{fffd}')) {
            Class::Mark => self.mark_as,
            class => class,
        };
        (class, cp, len)
    }

    /// Class at `i`, or `None` past the end.
    #[inline(always)]
    fn class_at(&self, i: usize) -> Option<(Class, usize)> {
        (i < self.bytes.len()).then(|| {
            let (class, _, len) = self.at(i);
            (class, len)
        })
    }

    /// End of the maximal run of `class` characters starting at `i`.
    #[inline(always)]
    fn run(&self, mut i: usize, class: Class) -> usize {
        while i < self.bytes.len() {
            let b = self.bytes[i];
            if b < 0x80 {
                if self.ascii[b as usize] != class {
                    break;
                }
                i += 1;
            } else {
                let (c, _, len) = self.at(i);
                if c != class {
                    break;
                }
                i += len;
            }
        }
        i
    }

    /// End of a run of at most `max` characters of `class` starting at `i`.
    fn run_max(&self, mut i: usize, class: Class, max: usize) -> usize {
        for _ in 0..max {
            match self.class_at(i) {
                Some((c, len)) if c == class => i += len,
                _ => break,
            }
        }
        i
    }

    /// The whitespace alternatives shared by all schemes, at a `\s` character `i`:
    /// `\s+(?!\S)` then `\s+`. Returns the end of the word.
    fn spaces(&self, i: usize) -> usize {
        // Maximal run, remembering where its last character starts.
        let mut j = i;
        let mut last = i;
        while let Some((Class::Space, len)) = self.class_at(j) {
            last = j;
            j += len;
        }
        if j == self.bytes.len() || last == i {
            // Run reaches the end (the lookahead holds), or it is one char before a non-space (`\s+`).
            j
        } else {
            // Give the last space back so that `(?!\S)` holds.
            last
        }
    }

    /// Length of a contraction (`'s`, `'t`, `'re`, `'ve`, `'m`, `'ll`, `'d`) starting at the `'` at `i`,
    /// or 0. `fold` makes the letters case-insensitive as Oniguruma's `(?i:...)` does.
    fn contraction(&self, i: usize, fold: bool) -> usize {
        let b = &self.bytes[i + 1..];
        // A letter of the pattern, matched case-insensitively if asked: returns its byte length.
        let letter = |at: usize, lower: u8| -> usize {
            match b.get(at) {
                Some(&x) if x == lower => 1,
                Some(&x) if fold && x == lower.to_ascii_uppercase() => 1,
                // U+017F LATIN SMALL LETTER LONG S folds to `s`.
                Some(0xC5) if fold && lower == b's' && b.get(at + 1) == Some(&0xBF) => 2,
                _ => 0,
            }
        };
        for single in [b's', b't'] {
            let n = letter(0, single);
            if n > 0 {
                return 1 + n;
            }
        }
        for (x, y) in [(b'r', b'e'), (b'v', b'e')] {
            let n = letter(0, x);
            if n > 0 {
                let m = letter(n, y);
                if m > 0 {
                    return 1 + n + m;
                }
            }
        }
        let n = letter(0, b'm');
        if n > 0 {
            return 1 + n;
        }
        let n = letter(0, b'l');
        if n > 0 {
            let m = letter(n, b'l');
            if m > 0 {
                return 1 + n + m;
            }
        }
        let n = letter(0, b'd');
        if n > 0 {
            return 1 + n;
        }
        0
    }

    /// One word of [`GPT2_PATTERN`] starting at `i`; returns its end.
    fn gpt2_word(&self, i: usize) -> usize {
        let (c0, ch0, l0) = self.at(i);
        if ch0 == u32::from(b'\'') {
            let n = self.contraction(i, false);
            if n > 0 {
                return i + n;
            }
        }
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: a space followed by a non-space.
        if ch0 == u32::from(b' ') {
            if let Some((c1, l1)) = self.class_at(i + 1) {
                if c1 != Class::Space {
                    return self.run(i + 1 + l1, c1);
                }
            }
        }
        match c0 {
            Class::Space => self.spaces(i),
            class => self.run(i + l0, class),
        }
    }

    /// One word of the Llama-3 family's regex starting at `i`; returns its end. (With `marks`, the
    /// cursor already reports `\p{M}` as a letter, which is all that scheme changes: a mark as the
    /// optional `[^\r\n\p{L}\p{N}]` lead-in is followed by `[\p{L}\p{M}]+` either way.)
    fn llama3_word(&self, i: usize, max_digits: usize) -> usize {
        let (c0, ch0, l0) = self.at(i);
        if ch0 == u32::from(b'\'') {
            let n = self.contraction(i, true);
            if n > 0 {
                return i + n;
            }
        }
        let is_newline = ch0 == u32::from(b'\r') || ch0 == u32::from(b'\n');
        // `[^\r\n\p{L}\p{N}]?\p{L}+` (or `[\p{L}\p{M}]+`)
        match c0 {
            Class::Letter => return self.run(i + l0, Class::Letter),
            Class::Other | Class::Space if !is_newline => {
                if let Some((Class::Letter, l1)) = self.class_at(i + l0) {
                    return self.run(i + l0 + l1, Class::Letter);
                }
            }
            _ => {}
        }
        // `\p{N}{1,max}`
        if c0 == Class::Number {
            return self.run_max(i + l0, Class::Number, max_digits - 1);
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        let punct_start = match c0 {
            Class::Other => Some(i),
            _ if ch0 == u32::from(b' ') && matches!(self.class_at(i + 1), Some((Class::Other, _))) => Some(i + 1),
            _ => None,
        };
        if let Some(p) = punct_start {
            let mut j = self.run(p, Class::Other);
            while matches!(self.bytes.get(j), Some(b'\r' | b'\n')) {
                j += 1;
            }
            return j;
        }
        // Here c0 is a space. `\s*[\r\n]+`: up to the last \r or \n of the whitespace run.
        let run_end = self.run(i, Class::Space);
        // \r and \n are ASCII, so a byte scan cannot hit the middle of a multi-byte character.
        if let Some(k) = self.bytes[i..run_end].iter().rposition(|&b| b == b'\r' || b == b'\n') {
            return i + k + 1;
        }
        self.spaces(i)
    }
}

/// Decode the multi-byte UTF-8 character at `i` of valid UTF-8 `bytes`: (scalar value, byte length).
#[inline(always)]
fn decode(bytes: &[u8], i: usize) -> (u32, usize) {
    let b0 = bytes[i] as u32;
    let cont = |k: usize| (bytes[i + k] & 0x3F) as u32;
    if b0 < 0xE0 {
        (((b0 & 0x1F) << 6) | cont(1), 2)
    } else if b0 < 0xF0 {
        (((b0 & 0x0F) << 12) | (cont(1) << 6) | cont(2), 3)
    } else {
        (((b0 & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3), 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn words(scheme: Scheme, s: &str) -> Vec<&str> {
        let mut out = vec![];
        scan(scheme, s, |a, b| out.push(&s[a..b]));
        out
    }

    /// What Oniguruma's `find_iter` gives for the scheme's own regex (they all cover the text).
    fn onig_words(scheme: Scheme, s: &str) -> Vec<&str> {
        static COMPILED: std::sync::LazyLock<Vec<(Scheme, SysRegex)>> =
            std::sync::LazyLock::new(|| SCHEMES.iter().map(|&(sc, p)| (sc, SysRegex::new(p).unwrap())).collect());
        let re = &COMPILED.iter().find(|(sc, _)| *sc == scheme).unwrap().1;
        let mut out = vec![];
        let mut prev = 0;
        for (a, b) in re.find_iter(s) {
            if prev < a {
                out.push(&s[prev..a]);
            }
            out.push(&s[a..b]);
            prev = b;
        }
        if prev < s.len() {
            out.push(&s[prev..]);
        }
        out
    }

    /// The real-world regexes, verbatim from their `tokenizer.json`s.
    const SCHEMES: [(Scheme, &str); 4] = [
        (Scheme::Gpt2, GPT2_PATTERN),
        // Llama-3 (and cl100k).
        (
            Scheme::Llama3 { max_digits: 3, marks: false },
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        // Qwen2 / Qwen2.5 / Qwen3.
        (
            Scheme::Llama3 { max_digits: 1, marks: false },
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        // Qwen3.5.
        (
            Scheme::Llama3 { max_digits: 1, marks: true },
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
    ];

    fn check(s: &str) {
        for (scheme, _) in SCHEMES {
            assert_eq!(words(scheme, s), onig_words(scheme, s), "{scheme:?} on {s:?}");
        }
    }

    #[test]
    fn recognizes_known_patterns_only() {
        for (scheme, pattern) in SCHEMES {
            assert_eq!(Scheme::recognize(pattern), Some(scheme));
            assert_eq!(scheme.pattern(), pattern);
        }
        assert_eq!(Scheme::recognize(r"\s+"), None);
        assert_eq!(Scheme::recognize(&SCHEMES[1].1.replace("{1,3}", "{1,4}")), None);
    }

    #[test]
    fn digits_split_like_hf() {
        let split = |individual: bool, s: &str| {
            let mut out = vec![];
            Splitter::Digits { individual }.split(s, &mut out);
            out.into_iter().map(|(a, b)| s[a..b].to_owned()).collect::<Vec<_>>()
        };
        assert_eq!(split(true, "Hey 123 friend!"), ["Hey ", "1", "2", "3", " friend!"]);
        assert_eq!(split(false, "Hey 123 friend!"), ["Hey ", "123", " friend!"]);
        assert_eq!(split(false, "12a٣4"), ["12", "a", "٣4"]);
        assert_eq!(split(true, ""), Vec::<String>::new());
    }

    #[test]
    fn punctuation_splits_like_hf() {
        use tokenizers::pre_tokenizers::punctuation::Punctuation;
        use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, SplitDelimiterBehavior};
        let behaviors = [(false, SplitDelimiterBehavior::Isolated), (true, SplitDelimiterBehavior::Contiguous)];
        for (contiguous, behavior) in behaviors {
            for s in ["Hey friend!     How are you?!?", "a...b--c «x» ¿y? 1,2", "", "!!", "日本。、x", "$+<=>^`|~"] {
                let mut ours = vec![];
                Splitter::Punctuation { contiguous }.split(s, &mut ours);
                let mut hf = PreTokenizedString::from(s);
                Punctuation::new(behavior).pre_tokenize(&mut hf).unwrap();
                let splits = hf.get_splits(OffsetReferential::Original, OffsetType::Byte);
                let hf: Vec<(usize, usize)> = splits.into_iter().map(|(_, o, _)| o).collect();
                assert_eq!(ours, hf, "{s:?} contiguous={contiguous}");
            }
        }
    }

    #[test]
    fn gpt2_examples() {
        assert_eq!(
            words(Scheme::Gpt2, "Hello my friend, how's it?"),
            ["Hello", " my", " friend", ",", " how", "'s", " it", "?"]
        );
        assert_eq!(words(Scheme::Gpt2, "a   b  \n"), ["a", "  ", " b", "  \n"]);
    }

    #[test]
    fn llama3_examples() {
        let l3 = Scheme::Llama3 { max_digits: 3, marks: false };
        assert_eq!(words(l3, "I'M 12345 x\r\n\r\n  y"), ["I", "'M", " ", "123", "45", " x", "\r\n\r\n", " ", " y"]);
        assert_eq!(words(l3, "  ...\n\nok"), [" ", " ...\n\n", "ok"]);
    }

    #[test]
    fn scanners_match_oniguruma_on_edge_cases() {
        let cases = [
            "",
            " ",
            "  ",
            "\t",
            "\n",
            "\r\n",
            " \n \n ",
            "a  b",
            "a \t b",
            "hello   123",
            "x  !!",
            "'s'S'ſ 'Re 'rE 'LL'lL",
            "''s",
            "'",
            "a'",
            "'ſt",
            "don't",
            "\u{a0}\u{a0}x",
            "\u{3000}日本",
            "1234567",
            "١٢٣٤",
            "x\u{85}y",
            "a\u{2028}b",
            " \r\n\t x",
            "\r\r\n\n",
            "  \r  x",
            "e\u{301}",
            "\u{301}x",
            "😀😀 x",
            " 😀",
            "A.B",
            " ...\n",
            "x\n\n  ",
        ];
        for s in cases {
            check(s);
        }
    }

    #[test]
    fn case_folding_of_contraction_letters_matches_oniguruma() {
        // Every code point that `(?i:x)` accepts for the pattern letters must be one `contraction` knows.
        for letter in ['s', 't', 'r', 'e', 'v', 'm', 'l', 'd'] {
            let re = SysRegex::new(&format!("(?i:{letter})")).unwrap();
            let all: String = (0u32..0x3_0000).filter_map(char::from_u32).collect();
            let mut found: Vec<char> = re.find_iter(&all).map(|(a, _)| all[a..].chars().next().unwrap()).collect();
            found.sort();
            let mut expected = vec![letter, letter.to_ascii_uppercase()];
            if letter == 's' {
                expected.push('\u{17f}');
            }
            expected.sort();
            assert_eq!(found, expected, "{letter}");
        }
    }

    fn mixed_char() -> impl Strategy<Value = char> {
        prop_oneof![
            4 => prop::sample::select(vec![' ', ' ', '\t', '\n', '\r', '\'', 's', 'S', 'l', 'L', 'e', 'R', 'v', 'd', 'm', 't']),
            3 => prop::char::range('a', 'z'),
            2 => prop::char::range('0', '9'),
            2 => prop::char::range('!', '/'),
            2 => prop::sample::select(vec![
                '\u{a0}', '\u{3000}', '\u{85}', '\u{2028}', '\u{b}', '\u{c}', 'é', 'ſ', '日', '本', '٣', '½', '²', '\u{301}',
                '😀', '\u{200b}', '\u{feff}', 'Ⅻ', 'ß', 'Ω', 'ı', '\0', '\u{7f}', '\u{10ffff}', 'ـ', '\u{64b}',
                '\u{903}', '\u{20dd}', '\u{fe0f}', 'क', 'ि',
            ]),
            1 => any::<char>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        #[test]
        fn scanners_match_oniguruma(chars in prop::collection::vec(mixed_char(), 0..40)) {
            let s: String = chars.into_iter().collect();
            check(&s);
        }
    }
}
