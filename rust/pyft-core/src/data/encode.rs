//! Encoding examples into token ids and labels.
//!
//! - Chat: the conversation is rendered with the chat template and tokenized without extra
//!   special tokens, exactly as transformers' `apply_chat_template(messages, tokenize=True)`.
//!   Labels follow `--train-on` (see [`TrainOn`]); masked labels are -100.
//! - Text: `tokenizer(text)` plus EOS when the tokenizer does not end with it (as TRL does for
//!   language modelling), every token trained on.
//! - Preference and KTO: prompt and completion ids exactly as TRL 1.16's `DPOTrainer` /
//!   `KTOTrainer` tokenize them (prompt alone with the generation prompt, prompt+completion
//!   whole, the completion starting where the two diverge; EOS appended to plain-text
//!   completions).
//! - Classify: text as `tokenizer(text)` (no EOS appended: the classifier reads the last token of
//!   the input as transformers' `*ForSequenceClassification` does at inference), messages rendered
//!   with the chat template without a generation prompt, as `apply_chat_template(messages,
//!   tokenize=True)`.
//!
//! The first label of every sequence is -100: with packing, the first token of a document must
//! never be predicted from the previous document, and unpacked it is never a target anyway.

use std::ops::Range;

use serde_json::Value;

use crate::data::formats::{ClassLabel, Example, Part};
use crate::data::mask::{first_token_from, generation_mask, overlap_mask};
use crate::data::template::{ChatTemplate, SpecialTokens};
use crate::data::tokenize::Tokenizer;
use crate::error::{Error, Result};

/// The label value of tokens that are not trained on.
pub const IGNORE_INDEX: i32 = -100;

/// Which tokens of a conversation carry loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainOn {
    /// Every assistant turn's content and its end-of-turn token (default).
    Assistant,
    /// Only the final assistant turn.
    Last,
    /// Every token.
    All,
}

impl TrainOn {
    /// Parse `assistant`, `last` or `all`.
    pub fn from_name(name: &str) -> Result<TrainOn> {
        match name {
            "assistant" => Ok(TrainOn::Assistant),
            "last" => Ok(TrainOn::Last),
            "all" => Ok(TrainOn::All),
            _ => Err(Error::Option(format!("unknown train_on `{name}` (expected assistant, last or all)"))),
        }
    }

    /// The option's name.
    pub fn name(self) -> &'static str {
        match self {
            TrainOn::Assistant => "assistant",
            TrainOn::Last => "last",
            TrainOn::All => "all",
        }
    }
}

/// How assistant tokens were located in a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaskMethod {
    /// `{% generation %}` blocks of the template, as transformers' `return_assistant_tokens_mask`.
    GenerationMarkers,
    /// The rendered position of each assistant message's content, plus the end-of-turn special
    /// token right after it.
    ContentSpans,
    /// The text each assistant turn adds to the rendering of the turns before it (templates that
    /// rewrite message content).
    PrefixDiff,
    /// No mask needed (`train_on=all`, text).
    None,
}

impl MaskMethod {
    /// The name recorded in `meta.json`.
    pub fn name(self) -> &'static str {
        match self {
            MaskMethod::GenerationMarkers => "generation-markers",
            MaskMethod::ContentSpans => "content-spans",
            MaskMethod::PrefixDiff => "prefix-diff",
            MaskMethod::None => "none",
        }
    }
}

/// One encoded example.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoded {
    /// A training sequence (chat or text): ids and labels of equal length.
    Sequence {
        /// Token ids.
        input_ids: Vec<u32>,
        /// Labels: the token id where trained on, else [`IGNORE_INDEX`].
        labels: Vec<i32>,
        /// How the mask was found.
        method: MaskMethod,
    },
    /// A preference pair.
    Pair {
        /// Prompt ids.
        prompt: Vec<u32>,
        /// Chosen completion ids.
        chosen: Vec<u32>,
        /// Rejected completion ids.
        rejected: Vec<u32>,
    },
    /// An unpaired KTO example.
    Kto {
        /// Prompt ids.
        prompt: Vec<u32>,
        /// Completion ids.
        completion: Vec<u32>,
        /// Desirable or not.
        label: bool,
    },
    /// A classified sequence.
    Classified {
        /// Token ids.
        input_ids: Vec<u32>,
        /// Its class.
        label: ClassLabel,
    },
}

impl Encoded {
    /// Tokens in the example (all parts).
    pub fn tokens(&self) -> usize {
        match self {
            Encoded::Sequence { input_ids, .. } => input_ids.len(),
            Encoded::Pair { prompt, chosen, rejected } => prompt.len() + chosen.len() + rejected.len(),
            Encoded::Kto { prompt, completion, .. } => prompt.len() + completion.len(),
            Encoded::Classified { input_ids, .. } => input_ids.len(),
        }
    }

    /// Tokens that carry loss (completion tokens for preference/KTO, the last token of a classified sequence).
    pub fn trainable(&self) -> usize {
        match self {
            Encoded::Sequence { labels, .. } => labels.iter().filter(|&&l| l != IGNORE_INDEX).count(),
            Encoded::Pair { chosen, rejected, .. } => chosen.len() + rejected.len(),
            Encoded::Kto { completion, .. } => completion.len(),
            Encoded::Classified { .. } => 1,
        }
    }
}

/// Everything needed to encode examples; shared read-only across threads.
pub struct Encoder<'a> {
    /// The tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// The chat template (required for chat and conversational preference data).
    pub template: Option<&'a ChatTemplate>,
    /// Special-token strings given to the template.
    pub special: &'a SpecialTokens,
    /// Mask policy for chat.
    pub train_on: TrainOn,
}

/// Private-use characters that delimit assistant content in the probe rendering.
const OPEN: char = '\u{F0000}';
const CLOSE: char = '\u{F0001}';

impl Encoder<'_> {
    fn template(&self) -> Result<&ChatTemplate> {
        self.template.ok_or_else(|| {
            Error::Template(
                "the tokenizer has no chat template: pass --template with a built-in name (e.g. chatml) or a template file"
                    .into(),
            )
        })
    }

    fn eos(&self) -> Option<(&str, u32)> {
        let eos = self.special.get("eos_token")?;
        Some((eos, self.tokenizer.token_to_id(eos)?))
    }

    /// Encode one example. Errors are about this example (a template that raises, a
    /// conversation whose assistant turns cannot be located); the caller adds its location.
    pub fn encode(&self, example: &Example) -> Result<Encoded> {
        match example {
            Example::Chat { messages, extra } => self.encode_chat(messages, extra.as_ref()),
            Example::Text(text) => {
                let mut ids = self.tokenizer.encode(text, true)?.ids;
                if let Some((_, eos)) = self.eos() {
                    if ids.last() != Some(&eos) {
                        ids.push(eos);
                    }
                }
                let labels = labels_from_mask(&ids, &vec![true; ids.len()]);
                Ok(Encoded::Sequence { input_ids: ids, labels, method: MaskMethod::None })
            }
            Example::Preference { prompt, chosen, rejected } => {
                let prompt_ids = self.prompt_ids(prompt)?;
                let pc = self.prompt_completion_ids(prompt, chosen)?;
                let pr = self.prompt_completion_ids(prompt, rejected)?;
                let n = common_prefix(&prompt_ids, &pc).min(common_prefix(&prompt_ids, &pr));
                Ok(Encoded::Pair { prompt: prompt_ids[..n].to_vec(), chosen: pc[n..].to_vec(), rejected: pr[n..].to_vec() })
            }
            Example::Kto { prompt, completion, label } => {
                let prompt_ids = self.prompt_ids(prompt)?;
                let pc = self.prompt_completion_ids(prompt, completion)?;
                let n = common_prefix(&prompt_ids, &pc);
                Ok(Encoded::Kto { prompt: prompt_ids[..n].to_vec(), completion: pc[n..].to_vec(), label: *label })
            }
            Example::Classify { input, label } => {
                let input_ids = match input {
                    Part::Text(t) => self.tokenizer.encode(t, true)?.ids,
                    Part::Messages(m) => self.tokenizer.encode(&self.render(m, false, None)?.text, false)?.ids,
                };
                Ok(Encoded::Classified { input_ids, label: label.clone() })
            }
        }
    }

    fn render(&self, messages: &Value, add_generation_prompt: bool, extra: Option<&serde_json::Map<String, Value>>) -> Result<crate::data::template::Rendered> {
        self.template()?.render(messages, add_generation_prompt, self.special, extra)
    }

    /// TRL: the prompt alone, with the generation prompt for conversations.
    fn prompt_ids(&self, prompt: &Part) -> Result<Vec<u32>> {
        match prompt {
            Part::Messages(m) => Ok(self.tokenizer.encode(&self.render(m, true, None)?.text, false)?.ids),
            Part::Text(t) => Ok(self.tokenizer.encode(t, true)?.ids),
        }
    }

    /// TRL: prompt and completion rendered (or concatenated) and tokenized as one.
    fn prompt_completion_ids(&self, prompt: &Part, completion: &Part) -> Result<Vec<u32>> {
        match (prompt, completion) {
            (Part::Messages(p), Part::Messages(c)) => {
                let mut all = p.as_array().cloned().unwrap_or_default();
                all.extend(c.as_array().cloned().unwrap_or_default());
                Ok(self.tokenizer.encode(&self.render(&Value::Array(all), false, None)?.text, false)?.ids)
            }
            (Part::Text(p), Part::Text(c)) => {
                let mut text = format!("{p}{c}");
                if let Some((eos, _)) = self.eos() {
                    if !c.ends_with(eos) {
                        text.push_str(eos);
                    }
                }
                Ok(self.tokenizer.encode(&text, true)?.ids)
            }
            _ => Err(Error::Option("prompt and completion must both be text or both be messages".into())),
        }
    }

    fn encode_chat(&self, messages: &Value, extra: Option<&serde_json::Map<String, Value>>) -> Result<Encoded> {
        let template = self.template()?;
        let rendered = self.render(messages, false, extra)?;
        let enc = self.tokenizer.encode(&rendered.text, false)?;
        let (mask, method) = match self.train_on {
            TrainOn::All => (vec![true; enc.ids.len()], MaskMethod::None),
            train_on if template.has_generation_markers() => {
                let spans: &[Range<usize>] = match train_on {
                    TrainOn::Last => rendered.generation_spans.last().map(std::slice::from_ref).unwrap_or(&[]),
                    _ => &rendered.generation_spans,
                };
                (generation_mask(&rendered.text, &enc.offsets, spans), MaskMethod::GenerationMarkers)
            }
            train_on => {
                let targets = assistant_indices(messages, train_on == TrainOn::Last);
                match self.content_spans(messages, extra, &targets, &rendered.text)? {
                    Some(spans) => {
                        let mut mask = overlap_mask(&enc.offsets, &spans);
                        for span in &spans {
                            if let Some(k) = first_token_from(&enc.offsets, span.end) {
                                if enc.offsets[k].0 as usize == span.end && self.tokenizer.is_special(enc.ids[k]) {
                                    mask[k] = true;
                                }
                            }
                        }
                        (mask, MaskMethod::ContentSpans)
                    }
                    None => {
                        let spans = self.prefix_spans(messages, extra, &targets, &rendered.text)?;
                        let mut mask = overlap_mask(&enc.offsets, &spans);
                        trim_after_end_of_turn(&mut mask, &enc.ids, &enc.offsets, &spans, self.tokenizer);
                        (mask, MaskMethod::PrefixDiff)
                    }
                }
            }
        };
        let labels = labels_from_mask(&enc.ids, &mask);
        Ok(Encoded::Sequence { input_ids: enc.ids, labels, method })
    }

    /// Byte spans of the target assistant messages' content in `text`, found by rendering the
    /// conversation again with the content wrapped in sentinel characters. `None` when the
    /// template transforms content so that the probe does not line up with `text`.
    fn content_spans(
        &self,
        messages: &Value,
        extra: Option<&serde_json::Map<String, Value>>,
        targets: &[usize],
        text: &str,
    ) -> Result<Option<Vec<Range<usize>>>> {
        let mut probe = messages.clone();
        let items = probe.as_array_mut().expect("validated messages are an array");
        for &i in targets {
            let Some(content) = items[i].get("content").and_then(Value::as_str) else {
                return Ok(None); // tool-call turn without text content
            };
            if items[i].get("tool_calls").is_some_and(|t| !t.is_null()) {
                return Ok(None);
            }
            if content.contains([OPEN, CLOSE]) {
                return Err(Error::Template(format!(
                    "message {i} contains reserved characters U+F0000/U+F0001"
                )));
            }
            let core = content.trim();
            let lead = &content[..content.len() - content.trim_start().len()];
            let trail = &content[content.trim_end().len()..];
            items[i]["content"] = Value::String(format!("{lead}{OPEN}{core}{CLOSE}{trail}"));
        }
        // Leading/trailing whitespace of each target's content, to re-attach when the template kept it.
        let margins: Vec<(&str, &str)> = targets
            .iter()
            .map(|&i| {
                let c = messages[i]["content"].as_str().unwrap_or("");
                (&c[..c.len() - c.trim_start().len()], &c[c.trim_end().len()..])
            })
            .collect();
        let probe_text = self.render(&probe, false, extra)?.text;
        let mut clean = String::with_capacity(text.len());
        let mut spans = Vec::with_capacity(targets.len());
        let mut open_at: Option<usize> = None;
        for ch in probe_text.chars() {
            match ch {
                OPEN if open_at.is_none() => open_at = Some(clean.len()),
                CLOSE if open_at.is_some() => spans.push(open_at.take().unwrap_or(0)..clean.len()),
                OPEN | CLOSE => return Ok(None),
                c => clean.push(c),
            }
        }
        if open_at.is_some() || clean != text || spans.len() != targets.len() {
            return Ok(None);
        }
        for (span, (lead, trail)) in spans.iter_mut().zip(margins) {
            if !lead.is_empty() && text[..span.start].ends_with(lead) {
                span.start -= lead.len();
            }
            if !trail.is_empty() && text[span.end..].starts_with(trail) {
                span.end += trail.len();
            }
        }
        Ok(Some(spans))
    }

    /// Byte spans of what each target assistant turn adds to the rendering of the turns before it
    /// (with the generation prompt). Errors when earlier turns render differently once later
    /// turns follow.
    fn prefix_spans(
        &self,
        messages: &Value,
        extra: Option<&serde_json::Map<String, Value>>,
        targets: &[usize],
        text: &str,
    ) -> Result<Vec<Range<usize>>> {
        let items = messages.as_array().expect("validated messages are an array");
        let mut spans = Vec::with_capacity(targets.len());
        for &i in targets {
            let before = self.render(&Value::Array(items[..i].to_vec()), true, extra)?.text;
            let through = self.render(&Value::Array(items[..=i].to_vec()), false, extra)?.text;
            if !text.starts_with(&before) || !text.starts_with(&through) || through.len() < before.len() {
                return Err(Error::Template(format!(
                    "cannot locate assistant message {i}: the template renders earlier turns differently once later \
                     turns follow; use a template with {{% generation %}} markers or --train-on all"
                )));
            }
            spans.push(before.len()..through.len());
        }
        Ok(spans)
    }
}

/// Indices of assistant messages: all of them, or only the last.
fn assistant_indices(messages: &Value, last_only: bool) -> Vec<usize> {
    let idx: Vec<usize> = messages
        .as_array()
        .map(|a| a.iter().enumerate().filter(|(_, m)| m["role"] == "assistant").map(|(i, _)| i).collect())
        .unwrap_or_default();
    if last_only {
        idx.last().copied().into_iter().collect()
    } else {
        idx
    }
}

/// In each span, unmark the tokens after the last special token (the end-of-turn marker), so a
/// prefix-diff span such as `content<|im_end|>\n` trains on `content<|im_end|>`.
fn trim_after_end_of_turn(mask: &mut [bool], ids: &[u32], offsets: &[(u32, u32)], spans: &[Range<usize>], tok: &Tokenizer) {
    for span in spans {
        let in_span: Vec<usize> = (0..ids.len())
            .filter(|&k| (offsets[k].1 as usize) > span.start && (offsets[k].0 as usize) < span.end)
            .collect();
        if let Some(pos) = in_span.iter().rposition(|&k| tok.is_special(ids[k])) {
            for &k in &in_span[pos + 1..] {
                mask[k] = false;
            }
        }
    }
}

/// Labels from a mask: the id where trained on, else -100; the first label is always -100.
pub fn labels_from_mask(ids: &[u32], mask: &[bool]) -> Vec<i32> {
    let mut labels: Vec<i32> =
        ids.iter().zip(mask).map(|(&id, &m)| if m { id as i32 } else { IGNORE_INDEX }).collect();
    if let Some(first) = labels.first_mut() {
        *first = IGNORE_INDEX;
    }
    labels
}

/// Number of leading elements two id lists share (TRL's `common_prefix_length`).
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_mask_first_token() {
        assert_eq!(labels_from_mask(&[5, 6, 7], &[true, false, true]), vec![-100, -100, 7]);
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
    }
}
