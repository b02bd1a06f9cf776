//! Writing a split: packing documents into rows, laying rows out in shards, and the length
//! histogram of `meta.json`.

use std::path::Path;

use serde_json::{json, Value};

use crate::data::encode::Encoded;
use crate::data::formats::ClassLabel;
use crate::data::pack::pack_bfd;
use crate::data::shards::{to_i32, ShardColumns, ShardInfo};
use crate::error::{Error, Result};

/// Write one split's shards; returns its `meta.json` entry. `classes` is the sorted class list of
/// classified data (a shard's `label` holds the index into it), empty for other kinds.
pub fn write_split(
    root: &Path,
    name: &str,
    docs: &[Encoded],
    max_len: usize,
    pack: bool,
    shard_tokens: usize,
    classes: &[ClassLabel],
) -> Result<Value> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let is_seq = matches!(docs.first(), Some(Encoded::Sequence { .. }) | None);
    // Rows: lists of document indices.
    let (rows, efficiency): (Vec<Vec<u32>>, Option<f64>) = if is_seq && pack {
        let lengths: Vec<u32> = docs.iter().map(|d| d.tokens() as u32).collect();
        let packing = pack_bfd(&lengths, max_len as u32)?;
        let eff = packing.efficiency();
        (packing.rows, Some(eff))
    } else {
        ((0..docs.len() as u32).map(|i| vec![i]).collect(), None)
    };
    let mut shards: Vec<ShardInfo> = Vec::new();
    let mut start = 0;
    while start < rows.len() {
        let mut end = start;
        let mut tokens = 0usize;
        while end < rows.len() {
            let row_tokens: usize = rows[end].iter().map(|&d| docs[d as usize].tokens()).sum();
            if end > start && tokens + row_tokens > shard_tokens {
                break;
            }
            tokens += row_tokens;
            end += 1;
        }
        let file = format!("{name}/shard-{:05}.safetensors", shards.len());
        let cols = shard_columns(docs, &rows[start..end], classes)?;
        cols.write(&root.join(&file), None)?;
        shards.push(ShardInfo { file, rows: end - start, tokens: tokens as u64 });
        start = end;
    }
    let tokens: usize = docs.iter().map(Encoded::tokens).sum();
    let trainable: usize = docs.iter().map(Encoded::trainable).sum();
    let max_row = rows.iter().map(|r| r.iter().map(|&d| docs[d as usize].tokens()).sum::<usize>()).max().unwrap_or(0);
    let mut meta = json!({
        "examples": docs.len(),
        "rows": rows.len(),
        "tokens": tokens,
        "trainable_tokens": trainable,
        "max_row_tokens": max_row,
        "shards": shards,
    });
    if let Some(eff) = efficiency {
        meta["packing_efficiency"] = json!(eff);
    } else if is_seq && !rows.is_empty() {
        // Share of a padded batch that is real tokens if every row were padded to the longest.
        meta["padding_efficiency"] = json!(tokens as f64 / (rows.len() as f64 * max_row.max(1) as f64));
    }
    if let Some(Encoded::Kto { .. }) = docs.first() {
        let desirable = docs.iter().filter(|d| matches!(d, Encoded::Kto { label: true, .. })).count();
        meta["desirable"] = json!(desirable);
        meta["undesirable"] = json!(docs.len() - desirable);
    }
    if let Some(Encoded::Classified { .. }) = docs.first() {
        let mut per_class = vec![0usize; classes.len()];
        for d in docs {
            if let Encoded::Classified { label, .. } = d {
                per_class[class_index(classes, label)? as usize] += 1;
            }
        }
        meta["class_examples"] = json!(per_class);
    }
    Ok(meta)
}

fn offsets_of<'a>(lens: impl Iterator<Item = usize> + 'a) -> Result<Vec<i32>> {
    let mut out = vec![0i32];
    let mut acc = 0usize;
    for l in lens {
        acc += l;
        out.push(to_i32(acc, "offset")?);
    }
    Ok(out)
}

fn ids_i32(ids: &[u32]) -> impl Iterator<Item = i32> + '_ {
    ids.iter().map(|&x| x as i32)
}

/// The index of `label` in the sorted `classes`.
fn class_index(classes: &[ClassLabel], label: &ClassLabel) -> Result<i32> {
    let i = classes.binary_search(label).map_err(|_| Error::Option(format!("class {label:?} is not in the class list")))?;
    to_i32(i, "class index")
}

fn shard_columns(docs: &[Encoded], rows: &[Vec<u32>], classes: &[ClassLabel]) -> Result<ShardColumns> {
    let ordered: Vec<&Encoded> = rows.iter().flat_map(|r| r.iter().map(|&d| &docs[d as usize])).collect();
    let mut cols = ShardColumns::default();
    match ordered.first() {
        None | Some(Encoded::Sequence { .. }) => {
            let mut ids = Vec::new();
            let mut labels = Vec::new();
            for d in &ordered {
                if let Encoded::Sequence { input_ids: i, labels: l, .. } = d {
                    ids.extend(ids_i32(i));
                    labels.extend_from_slice(l);
                }
            }
            cols.push("input_ids", ids);
            cols.push("labels", labels);
            cols.push("doc_offsets", offsets_of(ordered.iter().map(|d| d.tokens()))?);
            cols.push("row_offsets", offsets_of(rows.iter().map(Vec::len))?);
        }
        Some(Encoded::Pair { .. }) => {
            let (mut p, mut c, mut r) = (Vec::new(), Vec::new(), Vec::new());
            let (mut pl, mut cl, mut rl) = (Vec::new(), Vec::new(), Vec::new());
            for d in &ordered {
                if let Encoded::Pair { prompt, chosen, rejected } = d {
                    p.extend(ids_i32(prompt));
                    c.extend(ids_i32(chosen));
                    r.extend(ids_i32(rejected));
                    pl.push(prompt.len());
                    cl.push(chosen.len());
                    rl.push(rejected.len());
                }
            }
            cols.push("prompt_ids", p);
            cols.push("prompt_offsets", offsets_of(pl.into_iter())?);
            cols.push("chosen_ids", c);
            cols.push("chosen_offsets", offsets_of(cl.into_iter())?);
            cols.push("rejected_ids", r);
            cols.push("rejected_offsets", offsets_of(rl.into_iter())?);
        }
        Some(Encoded::Kto { .. }) => {
            let (mut p, mut c, mut pl, mut cl, mut lab) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for d in &ordered {
                if let Encoded::Kto { prompt, completion, label } = d {
                    p.extend(ids_i32(prompt));
                    c.extend(ids_i32(completion));
                    pl.push(prompt.len());
                    cl.push(completion.len());
                    lab.push(i32::from(*label));
                }
            }
            cols.push("prompt_ids", p);
            cols.push("prompt_offsets", offsets_of(pl.into_iter())?);
            cols.push("completion_ids", c);
            cols.push("completion_offsets", offsets_of(cl.into_iter())?);
            cols.push("label", lab);
        }
        Some(Encoded::Classified { .. }) => {
            let (mut ids, mut lens, mut lab) = (Vec::new(), Vec::new(), Vec::new());
            for d in &ordered {
                if let Encoded::Classified { input_ids, label } = d {
                    ids.extend(ids_i32(input_ids));
                    lens.push(input_ids.len());
                    lab.push(class_index(classes, label)?);
                }
            }
            cols.push("input_ids", ids);
            cols.push("input_offsets", offsets_of(lens.into_iter())?);
            cols.push("label", lab);
        }
    }
    Ok(cols)
}

/// Document lengths in power-of-two buckets up to `max_len`.
pub struct LengthHistogram {
    edges: Vec<usize>,
    counts: Vec<usize>,
    max_seen: usize,
}

impl LengthHistogram {
    /// Buckets 1-16, 17-32, ... up to `max_len`, then one for longer.
    pub fn new(max_len: usize) -> LengthHistogram {
        let mut edges = vec![0];
        let mut e = 16;
        while e < max_len {
            edges.push(e);
            e *= 2;
        }
        edges.push(max_len);
        let n = edges.len();
        LengthHistogram { edges, counts: vec![0; n], max_seen: 0 }
    }

    /// Count one document of `len` tokens.
    pub fn add(&mut self, len: usize) {
        self.max_seen = self.max_seen.max(len);
        // bucket i holds edges[i] < len <= edges[i+1]; the last bucket anything above max_len.
        let i = self.edges.partition_point(|&e| e < len).saturating_sub(1);
        let last = self.counts.len() - 1;
        self.counts[i.min(last)] += 1;
    }

    /// `{"buckets": [...], "counts": [...], "max": N}`.
    pub fn to_json(&self) -> Value {
        let labels: Vec<String> = self
            .edges
            .windows(2)
            .map(|w| format!("{}-{}", w[0] + 1, w[1]))
            .chain([format!(">{}", self.edges.last().copied().unwrap_or(0))])
            .collect();
        json!({"buckets": labels, "counts": self.counts, "max": self.max_seen})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets() {
        let mut h = LengthHistogram::new(64);
        for l in [1, 16, 17, 32, 33, 64, 65] {
            h.add(l);
        }
        let j = h.to_json();
        assert_eq!(j["buckets"], json!(["1-16", "17-32", "33-64", ">64"]));
        assert_eq!(j["counts"], json!([2, 2, 2, 1]));
    }
}
