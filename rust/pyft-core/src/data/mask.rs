//! Loss masks: which tokens of an encoded text are trained on.
//!
//! Inputs are token byte offsets (`[start, end)` into the rendered text) and byte spans of the
//! text to train on; outputs are one `bool` per token. Two span semantics exist:
//! - [`generation_mask`] reproduces transformers' `return_assistant_tokens_mask` exactly
//!   (`char_to_token` of each span's first and last character), for templates with
//!   `{% generation %}` markers;
//! - [`overlap_mask`] marks every token that overlaps a span, used for spans pyft finds itself.

use std::ops::Range;

/// Index of the token whose byte range contains byte `pos`, as tokenizers' `char_to_token`.
/// Token end offsets are non-decreasing, so a binary search finds it.
fn token_at(offsets: &[(u32, u32)], pos: usize) -> Option<usize> {
    let i = offsets.partition_point(|&(_, e)| (e as usize) <= pos);
    offsets.get(i).filter(|&&(s, e)| (s as usize) <= pos && pos < e as usize).map(|_| i)
}

/// transformers' assistant mask for `{% generation %}` spans (byte ranges into `text`).
///
/// For each span, the tokens from the one containing its first character through the one
/// containing its last character are marked. As in transformers, a span whose first character
/// has no token stops the scan, and a last token at index 0 or missing extends to the end.
pub fn generation_mask(text: &str, offsets: &[(u32, u32)], spans: &[Range<usize>]) -> Vec<bool> {
    let mut mask = vec![false; offsets.len()];
    for span in spans {
        let Some(start) = token_at(offsets, span.start) else { break };
        // The last character of the span starts at the last char boundary before `span.end`.
        let last_char = text[..span.end.max(1).min(text.len())]
            .char_indices()
            .next_back()
            .map(|(i, _)| i)
            .unwrap_or(0);
        let last_char = if span.end == 0 { 0 } else { last_char };
        let end = match token_at(offsets, last_char) {
            Some(e) if e > 0 => e + 1,
            _ => offsets.len(),
        };
        for m in mask.iter_mut().take(end).skip(start) {
            *m = true;
        }
    }
    mask
}

/// Mark every token overlapping one of `spans` (byte ranges).
pub fn overlap_mask(offsets: &[(u32, u32)], spans: &[Range<usize>]) -> Vec<bool> {
    let mut mask = vec![false; offsets.len()];
    for span in spans {
        if span.is_empty() {
            continue;
        }
        let first = offsets.partition_point(|&(_, e)| (e as usize) <= span.start);
        for (i, &(s, e)) in offsets.iter().enumerate().skip(first) {
            if s as usize >= span.end {
                break;
            }
            if (e as usize) > span.start && s < e {
                mask[i] = true;
            }
        }
    }
    mask
}

/// The index of the first token that starts at or after byte `pos`.
pub fn first_token_from(offsets: &[(u32, u32)], pos: usize) -> Option<usize> {
    let i = offsets.partition_point(|&(s, _)| (s as usize) < pos);
    (i < offsets.len()).then_some(i)
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    // "ab<E>cd": tokens "a"(0,1) "b"(1,2) "<E>"(2,5) "cd"(5,7)
    const OFFS: [(u32, u32); 4] = [(0, 1), (1, 2), (2, 5), (5, 7)];

    #[test]
    fn generation_mask_covers_first_to_last_char() {
        assert_eq!(generation_mask("ab<E>cd", &OFFS, &[1..5]), vec![false, true, true, false]);
        // A span ending inside a token includes that token.
        assert_eq!(generation_mask("ab<E>cd", &OFFS, &[3..4]), vec![false, false, true, false]);
        // transformers quirk: last token index 0 extends to the end.
        assert_eq!(generation_mask("ab<E>cd", &OFFS, &[0..1]), vec![true; 4]);
        // A span past the text stops the scan.
        assert_eq!(generation_mask("ab<E>cd", &OFFS, &[9..10, 0..2]), vec![false; 4]);
    }

    #[test]
    fn generation_mask_multibyte_last_char_takes_first_partial_token() {
        // "é" = 2 bytes split over two byte-level tokens (0,1) and (1,2).
        let text = "é!";
        let offs = [(0, 1), (1, 2), (2, 3)];
        // Span [0,2) = "é": first token containing the char start, through the first token
        // containing the last char's start — the second partial token is left out, as in HF.
        assert_eq!(generation_mask(text, &offs, &[0..2]), vec![true, true, true]); // end token index 0 -> to the end
        let text2 = "xé";
        let offs2 = [(0, 1), (1, 2), (2, 3)];
        assert_eq!(generation_mask(text2, &offs2, &[1..3]), vec![false, true, false]);
    }

    #[test]
    fn overlap_mask_marks_touching_tokens() {
        assert_eq!(overlap_mask(&OFFS, &[1..3]), vec![false, true, true, false]);
        assert_eq!(overlap_mask(&OFFS, &[2..2]), vec![false; 4]);
        assert_eq!(first_token_from(&OFFS, 2), Some(2));
        assert_eq!(first_token_from(&OFFS, 6), None);
    }
}
