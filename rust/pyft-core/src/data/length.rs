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
    /// Cut into `max_len` pieces, each its own document (chat/text only).
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

/// How many examples each length rule affected (reported in `meta.json`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LengthCounts {
    /// Dropped for being longer than `max_len` (policy `drop`).
    pub overlong: usize,
    /// Cut to `max_len`.
    pub truncated: usize,
    /// Cut into `max_len` pieces.
    pub split: usize,
    /// Dropped because no token was left to train on.
    pub no_trainable: usize,
    /// Preference/KTO examples whose completion tokenized to nothing.
    pub empty_completion: usize,
}

/// Apply the length policy to one encoded example, pushing the resulting documents (zero, one,
/// or several for `split`) onto `docs`. Problems (an empty completion) are pushed onto `problems`.
pub fn apply_length_policy(
    enc: Encoded,
    max_len: usize,
    overlong: Overlong,
    counts: &mut LengthCounts,
    docs: &mut Vec<Encoded>,
    location: &Location,
    problems: &mut Vec<Error>,
) {
    let max = max_len;
    match enc {
        Encoded::Sequence { input_ids, labels, method } => {
            let mut pieces: Vec<(Vec<u32>, Vec<i32>)> = Vec::new();
            if input_ids.len() <= max {
                pieces.push((input_ids, labels));
            } else {
                match overlong {
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
                if overlong == Overlong::Drop {
                    counts.overlong += 1;
                    return;
                }
                counts.truncated += 1;
                let keep_completion = longest.min(max - prompt.len().min(max / 2));
                chosen.truncate(keep_completion);
                rejected.truncate(keep_completion);
                let keep_prompt = max - chosen.len().max(rejected.len());
                prompt = prompt[prompt.len() - keep_prompt.min(prompt.len())..].to_vec();
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
                if overlong == Overlong::Drop {
                    counts.overlong += 1;
                    return;
                }
                counts.truncated += 1;
                completion.truncate(completion.len().min(max - prompt.len().min(max / 2)));
                let keep_prompt = max - completion.len();
                prompt = prompt[prompt.len() - keep_prompt.min(prompt.len())..].to_vec();
            }
            docs.push(Encoded::Kto { prompt, completion, label });
        }
    }
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

    fn run(enc: Encoded, policy: Overlong) -> (Vec<Encoded>, LengthCounts) {
        let (mut docs, mut counts, mut problems) = (Vec::new(), LengthCounts::default(), Vec::new());
        let loc = Location { file: "f".into(), line: 1 };
        apply_length_policy(enc, 4, policy, &mut counts, &mut docs, &loc, &mut problems);
        assert!(problems.is_empty());
        (docs, counts)
    }

    #[test]
    fn policies() {
        let (docs, c) = run(seq(10, 1), Overlong::Drop);
        assert!(docs.is_empty() && c.overlong == 1);
        let (docs, c) = run(seq(10, 1), Overlong::Truncate);
        assert_eq!((docs.len(), docs[0].tokens(), c.truncated), (1, 4, 1));
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
}
