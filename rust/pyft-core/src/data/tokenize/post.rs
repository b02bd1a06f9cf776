//! Post-processing of the fast path: special-token templates and offset trimming, as HF does them.
//!
//! Supported `post_processor`s: none, `TemplateProcessing` (single template), `BertProcessing`,
//! `RobertaProcessing`, `ByteLevel`, and `Sequence`s of them with at most one that adds tokens. HF
//! runs processors over a list of encodings (one per template piece); [`PostPlan::apply`] keeps the
//! same list so that offset trimming sees the same token indices.

use rustc_hash::FxHashMap;
use serde_json::Value;

/// Token id -> (leading, trailing) whitespace char counts of its string, for ids where either is non-zero.
pub(crate) type TrimTable = FxHashMap<u32, (u16, u16)>;

/// One processor's effect.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// `ByteLevel` / `RobertaProcessing` with `trim_offsets = true`: drop leading/trailing spaces from
    /// each token's offsets.
    Trim {
        /// The processor's `add_prefix_space`: keeps one leading space on a text's first token.
        add_prefix_space: bool,
    },
    /// `TemplateProcessing`: pieces of the single-sequence template.
    Template(Vec<Slot>),
    /// `BertProcessing` / `RobertaProcessing`: `cls $A sep`, merged into one encoding.
    Wrap {
        /// Id put before the text.
        cls: u32,
        /// Id put after the text.
        sep: u32,
    },
}

/// A template piece.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    /// Special token ids (only with `add_special_tokens`).
    Special(Vec<u32>),
    /// The encoded text.
    Sequence,
}

/// Token ids and offsets of one encoding in HF's list.
#[derive(Debug, Clone, Default)]
struct Seg {
    ids: Vec<u32>,
    offsets: Vec<(u32, u32)>,
}

/// What the post-processor does, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct PostPlan {
    steps: Vec<Step>,
}

impl PostPlan {
    /// Read a `post_processor` (`null` included). `Err` names what the fast path does not support.
    pub(crate) fn from_json(value: &Value) -> Result<PostPlan, String> {
        let mut steps = vec![];
        collect(value, &mut steps)?;
        let structural = steps.iter().filter(|s| !matches!(s, Step::Trim { .. })).count();
        if structural > 1 {
            return Err("post_processor sequence with more than one token-adding processor".into());
        }
        Ok(PostPlan { steps })
    }

    /// Whether any step trims offsets (then [`PostPlan::apply`] needs the trim table).
    pub(crate) fn trims(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::Trim { .. }))
    }

    /// Run the steps on one encoded text. `trim` is needed only if [`PostPlan::trims`].
    pub(crate) fn apply(
        &self,
        ids: Vec<u32>,
        offsets: Vec<(u32, u32)>,
        add_special_tokens: bool,
        trim: &TrimTable,
    ) -> (Vec<u32>, Vec<(u32, u32)>) {
        if self.steps.is_empty() {
            return (ids, offsets);
        }
        let mut segs = vec![Seg { ids, offsets }];
        for step in &self.steps {
            match step {
                Step::Trim { add_prefix_space } => {
                    for seg in &mut segs {
                        trim_offsets(seg, *add_prefix_space, trim);
                    }
                }
                Step::Template(slots) => {
                    let mut text = std::mem::take(&mut segs[0]);
                    let uses = slots.iter().filter(|s| **s == Slot::Sequence).count();
                    let mut used = 0;
                    let mut out = Vec::with_capacity(slots.len());
                    for slot in slots {
                        match slot {
                            Slot::Special(special) if add_special_tokens => {
                                out.push(Seg { ids: special.clone(), offsets: vec![(0, 0); special.len()] })
                            }
                            Slot::Special(_) => {}
                            Slot::Sequence => {
                                used += 1;
                                out.push(if used == uses { std::mem::take(&mut text) } else { text.clone() });
                            }
                        }
                    }
                    segs = out;
                }
                Step::Wrap { cls, sep } => {
                    if add_special_tokens {
                        let seg = &mut segs[0];
                        seg.ids.insert(0, *cls);
                        seg.ids.push(*sep);
                        seg.offsets.insert(0, (0, 0));
                        seg.offsets.push((0, 0));
                    }
                }
            }
        }
        if segs.len() == 1 {
            let seg = segs.pop().expect("one segment");
            return (seg.ids, seg.offsets);
        }
        let n = segs.iter().map(|s| s.ids.len()).sum();
        let (mut ids, mut offsets) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for seg in segs {
            ids.extend_from_slice(&seg.ids);
            offsets.extend_from_slice(&seg.offsets);
        }
        (ids, offsets)
    }
}

fn collect(value: &Value, steps: &mut Vec<Step>) -> Result<(), String> {
    if value.is_null() {
        return Ok(());
    }
    let flag = |key: &str, default: bool| value.get(key).and_then(Value::as_bool).unwrap_or(default);
    let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "ByteLevel" => {
            if flag("trim_offsets", true) {
                steps.push(Step::Trim { add_prefix_space: flag("add_prefix_space", true) });
            }
        }
        "TemplateProcessing" => steps.push(Step::Template(template(value)?)),
        "BertProcessing" => steps.push(Step::Wrap { cls: id_pair(value, "cls")?, sep: id_pair(value, "sep")? }),
        "RobertaProcessing" => {
            if flag("trim_offsets", true) {
                steps.push(Step::Trim { add_prefix_space: flag("add_prefix_space", true) });
            }
            steps.push(Step::Wrap { cls: id_pair(value, "cls")?, sep: id_pair(value, "sep")? });
        }
        "Sequence" => {
            for p in value.get("processors").and_then(Value::as_array).ok_or("post_processor sequence")? {
                collect(p, steps)?;
            }
        }
        other => return Err(format!("post_processor type {other:?}")),
    }
    Ok(())
}

/// The id of a `["token", id]` pair field.
fn id_pair(value: &Value, key: &str) -> Result<u32, String> {
    value
        .get(key)
        .and_then(|v| v.get(1))
        .and_then(Value::as_u64)
        .map(|id| id as u32)
        .ok_or_else(|| format!("post_processor {key} field"))
}

fn template(value: &Value) -> Result<Vec<Slot>, String> {
    let single = value.get("single").and_then(Value::as_array).ok_or("template without a single template")?;
    let specials = value.get("special_tokens");
    single
        .iter()
        .map(|piece| {
            if let Some(seq) = piece.get("Sequence") {
                match seq.get("id").and_then(Value::as_str) {
                    Some("A") => Ok(Slot::Sequence),
                    other => Err(format!("template single sequence {other:?}")),
                }
            } else if let Some(tok) = piece.get("SpecialToken") {
                let name = tok.get("id").and_then(Value::as_str).ok_or("template special token without id")?;
                let ids = specials
                    .and_then(|s| s.get(name))
                    .and_then(|s| s.get("ids"))
                    .and_then(Value::as_array)
                    .ok_or_else(|| format!("template special token {name:?} without ids"))?;
                ids.iter()
                    .map(|id| id.as_u64().map(|id| id as u32).ok_or_else(|| format!("template special token {name:?}")))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Slot::Special)
            } else {
                Err(format!("template piece {piece}"))
            }
        })
        .collect()
}

/// HF's `process_offsets` (byte-level `trim_offsets`) on one encoding.
fn trim_offsets(seg: &mut Seg, add_prefix_space: bool, trim: &TrimTable) {
    for (i, (id, offsets)) in seg.ids.iter().zip(seg.offsets.iter_mut()).enumerate() {
        let (lead, trail) = trim.get(id).copied().unwrap_or((0, 0));
        let (mut lead, trail) = (u32::from(lead), u32::from(trail));
        if lead > 0 {
            let is_first = i == 0 || offsets.0 == 0;
            if is_first && add_prefix_space && lead == 1 {
                lead = 0;
            }
            offsets.0 = (offsets.0 + lead).min(offsets.1);
        }
        if trail > 0 && offsets.1 >= trail {
            offsets.1 = (offsets.1 - trail).max(offsets.0);
        }
    }
}

/// The leading and trailing counts [`PostPlan::apply`] wants for a token string: chars that are the
/// byte-level space `Ġ` or Unicode whitespace.
pub(crate) fn trim_counts(token: &str) -> (u16, u16) {
    let is_space = |c: &char| *c == 'Ġ' || c.is_whitespace();
    let lead = token.chars().take_while(is_space).count();
    let trail = token.chars().rev().take_while(is_space).count();
    (lead.min(u16::MAX as usize) as u16, trail.min(u16::MAX as usize) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn llama3_style_sequence() {
        let plan = PostPlan::from_json(&json!({"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [7], "tokens": ["<s>"]}}}
        ]}))
        .unwrap();
        assert!(!plan.trims());
        let (ids, offsets) = plan.apply(vec![1, 2], vec![(0, 1), (1, 3)], true, &TrimTable::default());
        assert_eq!(ids, [7, 1, 2]);
        assert_eq!(offsets, [(0, 0), (0, 1), (1, 3)]);
        let (ids, _) = plan.apply(vec![1, 2], vec![(0, 1), (1, 3)], false, &TrimTable::default());
        assert_eq!(ids, [1, 2]);
    }

    #[test]
    fn bert_wraps_and_trim_follows_hf() {
        let plan = PostPlan::from_json(&json!({"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0],
            "trim_offsets": true, "add_prefix_space": true}))
        .unwrap();
        // token 5 = "Ġx" (one leading space), token 6 = "ĠĠ" (two).
        let trim: TrimTable = [(5, (1, 0)), (6, (2, 2))].into_iter().collect();
        let (ids, offsets) = plan.apply(vec![5, 6, 5], vec![(0, 2), (2, 4), (4, 6)], true, &trim);
        assert_eq!(ids, [0, 5, 6, 5, 2]);
        assert_eq!(offsets, [(0, 0), (0, 2), (4, 4), (5, 6), (0, 0)]);
    }

    #[test]
    fn unsupported_processors_are_named() {
        let err = PostPlan::from_json(&json!({"type": "Mystery"})).unwrap_err();
        assert!(err.contains("Mystery"), "{err}");
        let t = json!({"type": "TemplateProcessing", "single": [{"Sequence": {"id": "B", "type_id": 0}}], "special_tokens": {}});
        assert!(PostPlan::from_json(&t).is_err());
    }

    #[test]
    fn counts_spaces() {
        assert_eq!(trim_counts("ĠĠaĠ"), (2, 1));
        assert_eq!(trim_counts("\n x"), (2, 0));
        assert_eq!(trim_counts("Ċ"), (0, 0));
    }
}
