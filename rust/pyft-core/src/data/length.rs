//! Length policies: what happens to encoded examples longer than `max_len`, giving the
//! documents that are written.

use crate::data::encode::{Encoded, IGNORE_INDEX};
use crate::error::{Error, Location, Result};

/// What to do with sequences longer than `max_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlong {
    /// Drop the example.
    Drop,
    /// Keep the first `max_len` tokens (preference/KTO: keep the end of the prompt).
    Truncate,
    /// Cut into `max_len` pieces, each its own document (chat/text only; others truncate).
    Split,
}

impl Overlong {
    /// Parse `drop`, `truncate` or `split`.
    pub fn from_name(name: &str) -> Result<Overlong> {
        match name {
            "drop" => Ok(Overlong::Drop),
            "truncate" => Ok(Overlong::Truncate),
            "split" => Ok(Overlong::Split),
            _ => Err(Error::Option(format!("unknown overlong policy `{name}` (expected drop, truncate or split)"))),
        }
    }

    /// The policy's name.
    pub fn name(self) -> &'static str {
        match self {
            Overlong::Drop => "drop",
            Overlong::Truncate => "truncate",
            Overlong::Split => "split",
        }
    }
}

/// Which end of an overlong preference/KTO prompt survives truncation (completions always keep
/// their start: the tokens right after the prompt are the ones the loss must see first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    /// Keep the end of the prompt, dropping its first tokens (default). For conversations the
    /// last user turn and the generation prompt (assistant header) survive.
    KeepEnd,
    /// Keep the start of the prompt, dropping its last tokens (the system prompt and first turns
    /// survive; a conversation may lose its generation prompt).
    KeepStart,
}

impl Truncation {
    /// Parse `keep_end` or `keep_start`.
    pub fn from_name(name: &str) -> Result<Truncation> {
        match name {
            "keep_end" => Ok(Truncation::KeepEnd),
            "keep_start" => Ok(Truncation::KeepStart),
            _ => Err(Error::Option(format!("unknown truncation `{name}` (expected keep_end or keep_start)"))),
        }
    }

    /// The policy's name.
    pub fn name(self) -> &'static str {
        match self {
            Truncation::KeepEnd => "keep_end",
            Truncation::KeepStart => "keep_start",
        }
    }
}

/// The length rules applied to every encoded example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthPolicy {
    /// Maximum tokens per example (prompt + longest completion for preference/KTO).
    pub max_len: usize,
    /// What to do with longer examples.
    pub overlong: Overlong,
    /// Which end of a preference/KTO prompt to keep when truncating.
    pub truncation: Truncation,
}

/// How many examples each length rule affected (reported in `meta.json`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LengthCounts {
    /// Dropped for being longer than `max_len` (policy `drop`).
    pub overlong: usize,
    /// Cut to `max_len`.
    pub truncated: usize,
    /// Preference/KTO examples whose prompt lost tokens.
    pub truncated_prompt: usize,
    /// Preference/KTO examples whose completion (chosen, rejected or both) lost tokens.
    pub truncated_completion: usize,
    /// Cut into `max_len` pieces.
    pub split: usize,
    /// Dropped because no token was left to train on.
    pub no_trainable: usize,
    /// Preference/KTO examples whose completion tokenized to nothing.
    pub empty_completion: usize,
}

/// Apply the length policy to one encoded example, pushing the resulting documents (zero, one,
/// or several for `split`) onto `docs`. Problems (an empty completion) are pushed onto `problems`.
///
/// A truncated preference/KTO example keeps at least `min(prompt_len, max_len / 2)` prompt
/// tokens; completions are cut to make room, keeping their start, and the prompt gets what is
/// left, keeping the end or the start per [`Truncation`].
pub fn apply_length_policy(
    enc: Encoded,
    policy: LengthPolicy,
    counts: &mut LengthCounts,
    docs: &mut Vec<Encoded>,
    location: &Location,
    problems: &mut Vec<Error>,
) {
    let max = policy.max_len;
    match enc {
        Encoded::Sequence { input_ids, labels, method } => {
            let mut pieces: Vec<(Vec<u32>, Vec<i32>)> = Vec::new();
            if input_ids.len() <= max {
                pieces.push((input_ids, labels));
            } else {
                match policy.overlong {
                    Overlong::Drop => {
                        counts.overlong += 1;
                        return;
                    }
                    Overlong::Truncate => {
                        counts.truncated += 1;
                        pieces.push((input_ids[..max].to_vec(), labels[..max].to_vec()));
                    }
                    Overlong::Split => {
                        counts.split += 1;
                        for (ids, lab) in input_ids.chunks(max).zip(labels.chunks(max)) {
                            let mut lab = lab.to_vec();
                            lab[0] = IGNORE_INDEX;
                            pieces.push((ids.to_vec(), lab));
                        }
                    }
                }
            }
            for (ids, labels) in pieces {
                if labels.iter().all(|&l| l == IGNORE_INDEX) {
                    counts.no_trainable += 1;
                    continue;
                }
                docs.push(Encoded::Sequence { input_ids: ids, labels, method });
            }
        }
        Encoded::Pair { mut prompt, mut chosen, mut rejected } => {
            if chosen.is_empty() || rejected.is_empty() {
                counts.empty_completion += 1;
                problems.push(Error::Record {
                    location: location.clone(),
                    field: Some(if chosen.is_empty() { "chosen" } else { "rejected" }.into()),
                    message: "empty completion after tokenization".into(),
                });
                return;
            }
            let longest = chosen.len().max(rejected.len());
            if prompt.len() + longest > max {
                if policy.overlong == Overlong::Drop {
                    counts.overlong += 1;
                    return;
                }
                counts.truncated += 1;
                let keep_completion = longest.min(max - prompt.len().min(max / 2));
                if keep_completion < longest {
                    counts.truncated_completion += 1;
                    chosen.truncate(keep_completion);
                    rejected.truncate(keep_completion);
                }
                if cut_prompt(&mut prompt, max - keep_completion, policy.truncation) {
                    counts.truncated_prompt += 1;
                }
            }
            docs.push(Encoded::Pair { prompt, chosen, rejected });
        }
        Encoded::Kto { mut prompt, mut completion, label } => {
            if completion.is_empty() {
                counts.empty_completion += 1;
                problems.push(Error::Record {
                    location: location.clone(),
                    field: Some("completion".into()),
                    message: "empty completion after tokenization".into(),
                });
                return;
            }
            if prompt.len() + completion.len() > max {
                if policy.overlong == Overlong::Drop {
                    counts.overlong += 1;
                    return;
                }
                counts.truncated += 1;
                let keep_completion = completion.len().min(max - prompt.len().min(max / 2));
                if keep_completion < completion.len() {
                    counts.truncated_completion += 1;
                    completion.truncate(keep_completion);
                }
                if cut_prompt(&mut prompt, max - keep_completion, policy.truncation) {
                    counts.truncated_prompt += 1;
                }
            }
            docs.push(Encoded::Kto { prompt, completion, label });
        }
        Encoded::Classified { mut input_ids, label } => {
            if input_ids.is_empty() {
                counts.empty_completion += 1;
                problems.push(Error::Record {
                    location: location.clone(),
                    field: None,
                    message: "the input tokenized to nothing".into(),
                });
                return;
            }
            if input_ids.len() > max {
                if policy.overlong == Overlong::Drop {
                    counts.overlong += 1;
                    return;
                }
                // `split` too: every piece would need the label, and the class may sit at the end.
                counts.truncated += 1;
                input_ids.truncate(max);
            }
            docs.push(Encoded::Classified { input_ids, label });
        }
    }
}

/// Cut `prompt` to at most `keep` tokens from the end `truncation` keeps; true if it lost any.
fn cut_prompt(prompt: &mut Vec<u32>, keep: usize, truncation: Truncation) -> bool {
    if prompt.len() <= keep {
        return false;
    }
    match truncation {
        Truncation::KeepEnd => {
            prompt.drain(..prompt.len() - keep);
        }
        Truncation::KeepStart => prompt.truncate(keep),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::encode::MaskMethod;

    fn seq(n: u32, trainable_from: u32) -> Encoded {
        let ids: Vec<u32> = (0..n).collect();
        let labels = ids.iter().map(|&i| if i >= trainable_from { i as i32 } else { IGNORE_INDEX }).collect();
        Encoded::Sequence { input_ids: ids, labels, method: MaskMethod::None }
    }

    fn policy(max_len: usize, overlong: Overlong, truncation: Truncation) -> LengthPolicy {
        LengthPolicy { max_len, overlong, truncation }
    }

    fn run_with(enc: Encoded, policy: LengthPolicy) -> (Vec<Encoded>, LengthCounts) {
        let (mut docs, mut counts, mut problems) = (Vec::new(), LengthCounts::default(), Vec::new());
        let loc = Location { file: "f".into(), line: 1 };
        apply_length_policy(enc, policy, &mut counts, &mut docs, &loc, &mut problems);
        assert!(problems.is_empty());
        (docs, counts)
    }

    fn run(enc: Encoded, overlong: Overlong) -> (Vec<Encoded>, LengthCounts) {
        run_with(enc, policy(4, overlong, Truncation::KeepEnd))
    }

    /// `n` consecutive ids starting at `from`.
    fn ids(from: u32, n: u32) -> Vec<u32> {
        (from..from + n).collect()
    }

    fn pair(p: u32, c: u32, r: u32) -> Encoded {
        Encoded::Pair { prompt: ids(10, p), chosen: ids(100, c), rejected: ids(200, r) }
    }

    fn kto(p: u32, c: u32) -> Encoded {
        Encoded::Kto { prompt: ids(10, p), completion: ids(100, c), label: true }
    }

    /// (truncated, truncated_prompt, truncated_completion)
    fn cut_counts(c: &LengthCounts) -> (usize, usize, usize) {
        (c.truncated, c.truncated_prompt, c.truncated_completion)
    }

    #[test]
    fn policies() {
        let (docs, c) = run(seq(10, 1), Overlong::Drop);
        assert!(docs.is_empty() && c.overlong == 1);
        let (docs, c) = run(seq(10, 1), Overlong::Truncate);
        assert_eq!((docs.len(), docs[0].tokens(), c.truncated), (1, 4, 1));
        assert_eq!((c.truncated_prompt, c.truncated_completion), (0, 0));
        // split: 4+4+2 pieces, each piece's first label masked.
        let (docs, c) = run(seq(10, 1), Overlong::Split);
        assert_eq!((docs.len(), c.split), (3, 1));
        for d in &docs {
            let Encoded::Sequence { labels, .. } = d else { panic!() };
            assert_eq!(labels[0], IGNORE_INDEX);
        }
        // truncation that leaves nothing to train on drops the example
        let (docs, c) = run(seq(10, 6), Overlong::Truncate);
        assert!(docs.is_empty() && c.no_trainable == 1);
    }

    #[test]
    fn truncation_parses() {
        assert_eq!(Truncation::from_name("keep_end").unwrap(), Truncation::KeepEnd);
        assert_eq!(Truncation::from_name("keep_start").unwrap().name(), "keep_start");
        assert_eq!(
            Truncation::from_name("middle").unwrap_err().to_string(),
            "invalid option: unknown truncation `middle` (expected keep_end or keep_start)"
        );
    }

    #[test]
    fn pair_keeps_prompt_end_or_start() {
        // max 8: the prompt (6) keeps max/2 = 4 tokens, completions are cut to the other 4
        // (chosen 5 -> 4, rejected 3 untouched).
        let p = policy(8, Overlong::Truncate, Truncation::KeepEnd);
        let (docs, c) = run_with(pair(6, 5, 3), p);
        assert_eq!(docs, vec![Encoded::Pair { prompt: ids(12, 4), chosen: ids(100, 4), rejected: ids(200, 3) }]);
        assert_eq!(cut_counts(&c), (1, 1, 1));
        let p = policy(8, Overlong::Truncate, Truncation::KeepStart);
        let (docs, c) = run_with(pair(6, 5, 3), p);
        assert_eq!(docs, vec![Encoded::Pair { prompt: ids(10, 4), chosen: ids(100, 4), rejected: ids(200, 3) }]);
        assert_eq!(cut_counts(&c), (1, 1, 1));
    }

    #[test]
    fn pair_cuts_only_what_is_needed() {
        for truncation in [Truncation::KeepEnd, Truncation::KeepStart] {
            // Short completions fit whole: only the prompt loses tokens (6 -> 4).
            let (docs, c) = run_with(pair(6, 2, 1), policy(6, Overlong::Truncate, truncation));
            let kept = if truncation == Truncation::KeepEnd { ids(12, 4) } else { ids(10, 4) };
            assert_eq!(docs, vec![Encoded::Pair { prompt: kept, chosen: ids(100, 2), rejected: ids(200, 1) }]);
            assert_eq!(cut_counts(&c), (1, 1, 0));
            // A short prompt fits whole: only the completions lose tokens (both cut to 4).
            let (docs, c) = run_with(pair(2, 10, 7), policy(6, Overlong::Truncate, truncation));
            assert_eq!(docs, vec![Encoded::Pair { prompt: ids(10, 2), chosen: ids(100, 4), rejected: ids(200, 4) }]);
            assert_eq!(cut_counts(&c), (1, 0, 1));
            // Fits: untouched, nothing counted.
            let (docs, c) = run_with(pair(3, 3, 2), policy(6, Overlong::Truncate, truncation));
            assert_eq!(docs, vec![pair(3, 3, 2)]);
            assert_eq!(cut_counts(&c), (0, 0, 0));
        }
        let (docs, c) = run_with(pair(6, 5, 3), policy(8, Overlong::Drop, Truncation::KeepStart));
        assert!(docs.is_empty());
        assert_eq!((c.overlong, c.truncated, c.truncated_prompt, c.truncated_completion), (1, 0, 0, 0));
    }

    #[test]
    fn kto_keeps_prompt_end_or_start() {
        let kto_doc = |prompt, completion| Encoded::Kto { prompt, completion, label: true };
        // Both cut: prompt 7 -> 3 (max/2), completion 9 -> 4.
        let (docs, c) = run_with(kto(7, 9), policy(7, Overlong::Truncate, Truncation::KeepEnd));
        assert_eq!(docs, vec![kto_doc(ids(14, 3), ids(100, 4))]);
        assert_eq!(cut_counts(&c), (1, 1, 1));
        let (docs, c) = run_with(kto(7, 9), policy(7, Overlong::Truncate, Truncation::KeepStart));
        assert_eq!(docs, vec![kto_doc(ids(10, 3), ids(100, 4))]);
        assert_eq!(cut_counts(&c), (1, 1, 1));
        // Prompt only (9 -> 5 of 8), completion only (12 -> 6 of 8).
        let (docs, c) = run_with(kto(9, 3), policy(8, Overlong::Truncate, Truncation::KeepEnd));
        assert_eq!((docs, cut_counts(&c)), (vec![kto_doc(ids(14, 5), ids(100, 3))], (1, 1, 0)));
        let (docs, c) = run_with(kto(9, 3), policy(8, Overlong::Truncate, Truncation::KeepStart));
        assert_eq!((docs, cut_counts(&c)), (vec![kto_doc(ids(10, 5), ids(100, 3))], (1, 1, 0)));
        let (docs, c) = run_with(kto(2, 12), policy(8, Overlong::Truncate, Truncation::KeepStart));
        assert_eq!((docs, cut_counts(&c)), (vec![kto_doc(ids(10, 2), ids(100, 6))], (1, 0, 1)));
    }

    #[test]
    fn counters_add_up_over_examples() {
        let p = policy(8, Overlong::Truncate, Truncation::KeepStart);
        let (mut docs, mut counts, mut problems) = (Vec::new(), LengthCounts::default(), Vec::new());
        let loc = Location { file: "f".into(), line: 1 };
        for enc in [pair(6, 5, 3), pair(9, 1, 1), pair(1, 9, 2), pair(2, 2, 2), pair(4, 0, 2)] {
            apply_length_policy(enc, p, &mut counts, &mut docs, &loc, &mut problems);
        }
        assert_eq!(docs.len(), 4);
        assert_eq!(cut_counts(&counts), (3, 2, 2));
        // The empty completion is a problem (an error under on_error=fail), not a document.
        assert_eq!(counts.empty_completion, 1);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].to_string(), "f:1: field `chosen`: empty completion after tokenization");
    }
}
