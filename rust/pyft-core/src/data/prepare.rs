//! `prepare`: input files → validated, templated, tokenized, masked, (packed) token shards.
//!
//! Steps: read every file in parallel; map key names (`--columns`); detect the format of each
//! record (or force one); validate and convert each record; drop exact duplicates; mix in general
//! data; split train/validation deterministically; encode (template + tokenizer + mask) in
//! parallel; apply the length policy; pack; write shards and `meta.json` into a staging directory
//! that replaces the output only when complete.
//! With `on_error = fail` any bad record aborts before anything is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::data::columns::ColumnMap;
use crate::data::encode::{Encoded, Encoder, TrainOn};
use crate::data::formats::{convert, json_kind, ClassLabel, Example, ExampleKind, Format};
pub use crate::data::length::{Overlong, Truncation};
use crate::data::length::{apply_length_policy, LengthCounts, LengthPolicy};
use crate::data::output::{write_split, LengthHistogram};
use crate::data::progress::Progress;
use crate::data::read::{read_file, FileRecords, RawRecord};
use crate::io::paths::check_output_disjoint;
use crate::io::staging::{check_target, StagingDir};
use crate::data::split::{sample_without_replacement, split_indices};
use crate::data::template::{ChatTemplate, SpecialTokens};
use crate::data::tokenize::Tokenizer;
use crate::error::{Error, Location, Result};

/// Version of the output layout written to `meta.json`.
pub const FORMAT_VERSION: u32 = 1;

/// Where the chat template comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TemplateChoice {
    /// The tokenizer's own `chat_template` (default).
    Tokenizer,
    /// A built-in template by name (`chatml`, `llama3`, `alpaca`, ...).
    Builtin(String),
    /// A Jinja file.
    File(PathBuf),
}

impl TemplateChoice {
    /// `tokenizer`, a built-in name, or else a path to a Jinja file.
    pub fn parse(s: &str) -> TemplateChoice {
        if s == "tokenizer" || s.is_empty() {
            TemplateChoice::Tokenizer
        } else if ChatTemplate::builtin_source(s).is_some() {
            TemplateChoice::Builtin(s.to_string())
        } else {
            TemplateChoice::File(PathBuf::from(s))
        }
    }
}

/// Options of [`prepare`]; see `pyft data prepare --help` for the user-facing description.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Task data files.
    pub inputs: Vec<PathBuf>,
    /// General data mixed into the training split: `(file, ratio)`, where `ratio` in (0, 1) is the
    /// share of the final training examples that come from that file.
    pub mix: Vec<(PathBuf, f64)>,
    /// A tokenizer directory (tokenizer.json + tokenizer_config.json) or a tokenizer.json file.
    pub tokenizer: PathBuf,
    /// Output directory.
    pub out_dir: PathBuf,
    /// Force a format instead of detecting it per record.
    pub format: Option<Format>,
    /// Key names of the input files mapped to pyft's (`--columns`), applied before detection.
    pub columns: ColumnMap,
    /// Chat template source.
    pub template: TemplateChoice,
    /// Loss mask policy for chat data.
    pub train_on: TrainOn,
    /// Maximum sequence length in tokens (also the packed row length).
    pub max_len: usize,
    /// Policy for longer sequences.
    pub overlong: Overlong,
    /// Which end of an overlong preference/KTO prompt to keep (ignored for chat/text).
    pub truncation: Truncation,
    /// Pack sequences with best-fit-decreasing.
    pub pack: bool,
    /// Drop invalid records (true) or fail on the first one (false, default).
    pub skip_invalid: bool,
    /// Drop exact duplicates.
    pub dedup: bool,
    /// Share of examples held out for validation, in [0, 1).
    pub val_ratio: f64,
    /// Seed for the split and the mixing sample.
    pub seed: u64,
    /// System prompt added to conversations that have none.
    pub system_prompt: Option<String>,
    /// Tokens per shard file (rows are never split across shards).
    pub shard_tokens: usize,
    /// Replace an existing output directory.
    pub overwrite: bool,
    /// Show a progress line on stderr.
    pub progress: bool,
}

impl PrepareOptions {
    /// Options with the defaults for everything but inputs, tokenizer and output.
    pub fn new(inputs: Vec<PathBuf>, tokenizer: PathBuf, out_dir: PathBuf) -> PrepareOptions {
        PrepareOptions {
            inputs,
            mix: Vec::new(),
            tokenizer,
            out_dir,
            format: None,
            columns: ColumnMap::default(),
            template: TemplateChoice::Tokenizer,
            train_on: TrainOn::Assistant,
            max_len: 2048,
            overlong: Overlong::Truncate,
            truncation: Truncation::KeepEnd,
            pack: false,
            skip_invalid: false,
            dedup: false,
            val_ratio: 0.0,
            seed: 42,
            system_prompt: None,
            shard_tokens: 1 << 26,
            overwrite: false,
            progress: false,
        }
    }

    /// The user-facing options with their values, under the names of `pyft.data.prepare`'s
    /// arguments (the CLI's flags with `-` for `_`). `PrepareOptions::new(..).settings()` is the
    /// one source of the defaults that the Python signature, the CLI and its help show.
    pub fn settings(&self) -> Value {
        json!({
            "format": self.format.map(Format::name),
            "columns": if self.columns.is_empty() { Value::Null } else { self.columns.to_json() },
            "template": match &self.template {
                TemplateChoice::Tokenizer => "tokenizer".to_string(),
                TemplateChoice::Builtin(name) => name.clone(),
                TemplateChoice::File(path) => path.display().to_string(),
            },
            "train_on": self.train_on.name(),
            "max_len": self.max_len,
            "overlong": self.overlong.name(),
            "truncation": self.truncation.name(),
            "pack": if self.pack { "bfd" } else { "none" },
            "on_error": if self.skip_invalid { "skip" } else { "fail" },
            "dedup": self.dedup,
            "val_ratio": self.val_ratio,
            "seed": self.seed,
            "system_prompt": self.system_prompt,
            "shard_tokens": self.shard_tokens,
            "overwrite": self.overwrite,
        })
    }
}

/// A loaded tokenizer directory: tokenizer, special tokens, chat template and a content hash.
pub struct TokenizerBundle {
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// Special tokens from tokenizer_config.json.
    pub special: SpecialTokens,
    /// The tokenizer's chat template, if any.
    pub template: Option<ChatTemplate>,
    /// SHA-256 of tokenizer.json, hex.
    pub sha256: String,
}

/// Load `path` (a directory or a tokenizer.json file).
pub fn load_tokenizer(path: &Path) -> Result<TokenizerBundle> {
    let (dir, file) = if path.is_dir() { (path.to_path_buf(), path.join("tokenizer.json")) } else {
        (path.parent().map(Path::to_path_buf).unwrap_or_default(), path.to_path_buf())
    };
    if !file.exists() {
        return Err(Error::Tokenizer(format!("{}: no tokenizer.json found", path.display())));
    }
    let json = crate::io::file::read_to_string(&file)?;
    let tokenizer = Tokenizer::from_json(&json).map_err(|e| Error::Tokenizer(format!("{}: {e}", file.display())))?;
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg: Value = if cfg_path.exists() {
        let text = crate::io::file::read_to_string(&cfg_path)?;
        serde_json::from_str(&text).map_err(|e| Error::File { path: cfg_path.clone(), message: format!("malformed JSON: {e}") })?
    } else {
        Value::Object(Default::default())
    };
    let special = SpecialTokens::from_tokenizer_config(&cfg);
    let template = ChatTemplate::from_tokenizer_dir(&dir)?;
    Ok(TokenizerBundle { tokenizer, special, template, sha256: hex_sha256(json.as_bytes()) })
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A record that made it through conversion, with its origin.
struct Item {
    location: Location,
    example: Example,
}

/// Counters for `meta.json`.
#[derive(Default)]
struct Counts {
    read: usize,
    invalid: usize,
    duplicate: usize,
    length: LengthCounts,
    mix_requested: BTreeMap<String, (usize, usize)>,
}

/// Run the whole pipeline. Returns the `meta.json` content.
pub fn prepare(opts: &PrepareOptions) -> Result<Value> {
    validate_options(opts)?;
    let bundle = load_tokenizer(&opts.tokenizer)?;
    let (chosen_template, template_name) = match &opts.template {
        TemplateChoice::Tokenizer => (None, "tokenizer".to_string()),
        TemplateChoice::Builtin(name) => (Some(ChatTemplate::builtin(name)?), name.clone()),
        TemplateChoice::File(path) => (Some(ChatTemplate::from_file(path)?), path.display().to_string()),
    };
    let template: Option<&ChatTemplate> = match &opts.template {
        TemplateChoice::Tokenizer => bundle.template.as_ref(),
        _ => chosen_template.as_ref(),
    };
    let mut counts = Counts::default();
    let mut problems: Vec<Error> = Vec::new();

    // 1-2. Read, detect, convert.
    let mut inputs_meta = Vec::new();
    let mut items: Vec<Item> = Vec::new();
    let mut mix_items: Vec<(usize, Vec<Item>)> = Vec::new();
    // The kind of the first converted record (and where it is): every other record must agree.
    let mut kind: Option<(ExampleKind, Location)> = None;
    let all_files: Vec<(PathBuf, Option<usize>)> = opts
        .inputs
        .iter()
        .map(|p| (p.clone(), None))
        .chain(opts.mix.iter().enumerate().map(|(i, (p, _))| (p.clone(), Some(i))))
        .collect();
    for (path, mix_idx) in &all_files {
        let read = read_file(path)?;
        counts.read += read.records.len() + read.problems.len();
        counts.invalid += read.problems.len();
        if !read.records.iter().any(|r| r.value.is_object()) {
            return Err(no_object_records(path, &read));
        }
        problems.extend(read.problems);
        // A record no format fits is read as the file's first record that one fits (so a record
        // that lacks a required field is reported as missing it, as in a file of one format).
        let fallback = read.records.iter().find_map(|r| match opts.columns.apply(&r.value) {
            Ok(Some(mapped)) => Format::detect(&mapped),
            Ok(None) => Format::detect(&r.value),
            Err(_) => None,
        });
        let converted = crate::parallel::map(&read.records, |r: &RawRecord| convert_record(r, opts, fallback));
        let mut file_items = Vec::new();
        let mut formats: BTreeMap<&'static str, usize> = BTreeMap::new();
        for (rec, res) in read.records.iter().zip(converted) {
            let res = res.and_then(|(format, example)| {
                match &kind {
                    None => kind = Some((format.kind(), rec.location.clone())),
                    Some((k, first)) if *k != format.kind() => return Err(kind_mismatch(format, &rec.location, *k, first)),
                    _ => {}
                }
                Ok((format, example))
            });
            match res {
                Ok((format, example)) => {
                    *formats.entry(format.name()).or_default() += 1;
                    file_items.push(Item { location: rec.location.clone(), example })
                }
                Err(e) => {
                    counts.invalid += 1;
                    problems.push(e);
                }
            }
        }
        // One name when the file holds one format ("mixed" otherwise), and the count of each.
        let format = match formats.len() {
            0 => opts.format.map(Format::name),
            1 => formats.keys().next().copied(),
            _ => Some("mixed"),
        };
        inputs_meta.push(json!({"path": path.display().to_string(), "format": format, "formats": formats,
                                "records": file_items.len(), "mix": mix_idx.map(|i| opts.mix[i].1)}));
        match mix_idx {
            None => items.extend(file_items),
            Some(i) => mix_items.push((*i, file_items)),
        }
    }
    let kind = kind.map_or(ExampleKind::Chat, |(k, _)| k);
    if !problems.is_empty() && !opts.skip_invalid {
        return Err(invalid(problems));
    }

    // 3. Default system prompt, dedup.
    if let Some(system) = &opts.system_prompt {
        for it in items.iter_mut().chain(mix_items.iter_mut().flat_map(|(_, v)| v.iter_mut())) {
            add_system_prompt(&mut it.example, system);
        }
    }
    if opts.dedup {
        let mut seen = std::collections::HashSet::new();
        let mut keep = |it: &Item| seen.insert(it.example.canonical());
        let before = items.len() + mix_items.iter().map(|(_, v)| v.len()).sum::<usize>();
        items.retain(&mut keep);
        for (_, v) in mix_items.iter_mut() {
            v.retain(&mut keep);
        }
        counts.duplicate = before - items.len() - mix_items.iter().map(|(_, v)| v.len()).sum::<usize>();
    }
    // Classified data: one label type (names or indices), and the sorted class list.
    let classes = if kind == ExampleKind::Classify {
        class_table(&mut items, &mut mix_items, &mut problems, &mut counts.invalid)
    } else {
        Vec::new()
    };
    if !problems.is_empty() && !opts.skip_invalid {
        return Err(invalid(problems));
    }
    let class_list: Vec<ClassLabel> = classes.iter().map(|(c, _, _)| c.clone()).collect();

    // 4. Split the task data, then mix general data into the training side.
    let (train_idx, val_idx) = split_indices(items.len(), opts.val_ratio, opts.seed);
    let mut train: Vec<Item> = Vec::with_capacity(train_idx.len());
    let mut val: Vec<Item> = Vec::with_capacity(val_idx.len());
    let mut slots: Vec<Option<Item>> = items.into_iter().map(Some).collect();
    for i in &train_idx {
        train.push(slots[*i].take().expect("index used once"));
    }
    for i in &val_idx {
        val.push(slots[*i].take().expect("index used once"));
    }
    let n_task_train = train.len();
    for (mi, pool) in mix_items {
        let ratio = opts.mix[mi].1;
        let wanted = ((ratio / (1.0 - ratio)) * n_task_train as f64).round() as usize;
        let picked = sample_without_replacement(pool.len(), wanted, opts.seed.wrapping_add(mi as u64 + 1));
        counts.mix_requested.insert(opts.mix[mi].0.display().to_string(), (wanted, picked.len()));
        let mut pool: Vec<Option<Item>> = pool.into_iter().map(Some).collect();
        train.extend(picked.into_iter().map(|i| pool[i].take().expect("sampled once")));
    }

    // 5. Encode in parallel.
    let encoder = Encoder { tokenizer: &bundle.tokenizer, template, special: &bundle.special, train_on: opts.train_on };
    let total = train.len() + val.len();
    let progress = Progress::new("tokenizing", total, opts.progress);
    let done = AtomicUsize::new(0);
    let mut method_counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let policy = LengthPolicy { max_len: opts.max_len, overlong: opts.overlong, truncation: opts.truncation };
    let mut encode_split = |split: Vec<Item>, problems: &mut Vec<Error>, counts: &mut Counts| -> Vec<Encoded> {
        let encoded = crate::parallel::map(&split, |it| {
            let r = encoder.encode(&it.example).map_err(|e| locate(e, &it.location));
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            progress.update(n);
            r
        });
        let mut docs = Vec::with_capacity(encoded.len());
        for (it, res) in split.iter().zip(encoded) {
            match res {
                Ok(enc) => {
                    if let Encoded::Sequence { method, .. } = &enc {
                        *method_counts.entry(method.name()).or_default() += 1;
                    }
                    apply_length_policy(enc, policy, &mut counts.length, &mut docs, &it.location, problems)
                }
                Err(e) => {
                    counts.invalid += 1;
                    problems.push(e);
                }
            }
        }
        docs
    };
    let train_docs = encode_split(train, &mut problems, &mut counts);
    let val_docs = encode_split(val, &mut problems, &mut counts);
    progress.finish();
    if !problems.is_empty() && !opts.skip_invalid {
        return Err(invalid(problems));
    }
    if train_docs.is_empty() && val_docs.is_empty() {
        return Err(nothing_kept(&all_files, &counts, &problems));
    }

    // 6-7. Pack and write.
    let staging = StagingDir::new(&opts.out_dir, opts.overwrite)?;
    copy_tokenizer_files(&opts.tokenizer, &staging.path().join("tokenizer"))?;
    let mut splits = serde_json::Map::new();
    let mut histogram = LengthHistogram::new(opts.max_len);
    for (name, docs) in [("train", &train_docs), ("validation", &val_docs)] {
        for d in docs.iter() {
            histogram.add(d.tokens());
        }
        if docs.is_empty() && name == "validation" {
            continue;
        }
        let split_meta =
            write_split(staging.path(), name, docs, opts.max_len, opts.pack, opts.shard_tokens, &class_list)?;
        splits.insert(name.to_string(), split_meta);
    }
    let tokens: usize = train_docs.iter().chain(&val_docs).map(Encoded::tokens).sum();
    let trainable: usize = train_docs.iter().chain(&val_docs).map(Encoded::trainable).sum();
    let kept = train_docs.len() + val_docs.len();
    let special = &bundle.special;
    let tok = &bundle.tokenizer;
    let id_of = |k: &str| special.get(k).and_then(|t| tok.token_to_id(t));
    let meta = json!({
        "format_version": FORMAT_VERSION,
        "pyft_version": env!("CARGO_PKG_VERSION"),
        "kind": kind.name(),
        "tokenizer": {
            "path": opts.tokenizer.display().to_string(),
            "sha256": bundle.sha256,
            "vocab_size": tok.vocab_size(),
            "backend": tok.backend().to_string(),
            "fallback_reason": tok.fallback_reason(),
            "bos_token": special.get("bos_token"), "bos_token_id": id_of("bos_token"),
            "eos_token": special.get("eos_token"), "eos_token_id": id_of("eos_token"),
            "pad_token": special.get("pad_token"), "pad_token_id": id_of("pad_token"),
        },
        "template": template.map(|t| json!({
            "name": template_name,
            "sha256": hex_sha256(t.source().as_bytes()),
            "generation_markers": t.has_generation_markers(),
            "source": t.source(),
        })),
        "system_prompt": opts.system_prompt,
        "options": {
            "format": opts.format.map(Format::name),
            "columns": opts.columns.to_json(),
            "train_on": opts.train_on.name(),
            "max_len": opts.max_len,
            "overlong": opts.overlong.name(),
            "truncation": opts.truncation.name(),
            "pack": if opts.pack { "bfd" } else { "none" },
            "on_error": if opts.skip_invalid { "skip" } else { "fail" },
            "dedup": opts.dedup,
            "val_ratio": opts.val_ratio,
            "seed": opts.seed,
            "shard_tokens": opts.shard_tokens,
            "mix": opts.mix.iter().map(|(p, r)| json!([p.display().to_string(), r])).collect::<Vec<_>>(),
        },
        "inputs": inputs_meta,
        "counts": {
            "read": counts.read,
            "kept": kept,
            "dropped": {
                "invalid": counts.invalid + counts.length.empty_completion,
                "duplicate": counts.duplicate,
                "overlong": counts.length.overlong,
                "no_trainable_tokens": counts.length.no_trainable,
            },
            "truncated": counts.length.truncated,
            "truncated_prompt": counts.length.truncated_prompt,
            "truncated_completion": counts.length.truncated_completion,
            "split": counts.length.split,
            "mix": counts.mix_requested.iter().map(|(k, (w, g))| (k.clone(), json!({"requested": w, "taken": g}))).collect::<serde_json::Map<_, _>>(),
            "mask_methods": method_counts,
        },
        "tokens": tokens,
        "trainable_tokens": trainable,
        "splits": splits,
        "length_histogram": histogram.to_json(),
        "problems": problems.iter().take(20).map(|e| e.to_string()).collect::<Vec<_>>(),
    });
    let mut meta = meta;
    if let Some((first, _, _)) = classes.first() {
        meta["classes"] = json!({
            "type": first.type_name(),
            "values": classes.iter().map(|(c, _, _)| c.to_json()).collect::<Vec<_>>(),
            "examples": classes.iter().map(|(_, n, _)| n).collect::<Vec<_>>(),
            "first": classes.iter().map(|(_, _, at)| at.to_string()).collect::<Vec<_>>(),
        });
    }
    let meta_path = staging.path().join("meta.json");
    let text = serde_json::to_string_pretty(&meta).map_err(|e| Error::Option(e.to_string()))?;
    std::fs::write(&meta_path, text).map_err(|e| Error::io(&meta_path, e))?;
    staging.commit()?;
    Ok(meta)
}

/// Copy the tokenizer files next to the shards so the output is self-describing.
fn copy_tokenizer_files(tokenizer: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(|e| Error::io(dest, e))?;
    let (dir, json) = if tokenizer.is_dir() {
        (tokenizer.to_path_buf(), tokenizer.join("tokenizer.json"))
    } else {
        (tokenizer.parent().map(Path::to_path_buf).unwrap_or_default(), tokenizer.to_path_buf())
    };
    let mut files = vec![(json, "tokenizer.json")];
    for name in ["tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"] {
        files.push((dir.join(name), name));
    }
    for (src, name) in files {
        if src.is_file() {
            std::fs::copy(&src, dest.join(name)).map_err(|e| Error::io(&src, e))?;
        }
    }
    Ok(())
}

fn validate_options(opts: &PrepareOptions) -> Result<()> {
    if opts.inputs.is_empty() {
        return Err(Error::Option("no input files".into()));
    }
    if opts.max_len < 2 {
        return Err(Error::Option(format!("max_len must be at least 2, got {}", opts.max_len)));
    }
    if !(0.0..1.0).contains(&opts.val_ratio) {
        return Err(Error::Option(format!("val_ratio must be in [0, 1), got {}", opts.val_ratio)));
    }
    for (p, r) in &opts.mix {
        if !(*r > 0.0 && *r < 1.0) {
            return Err(Error::Option(format!("mix ratio for {} must be in (0, 1), got {r}", p.display())));
        }
    }
    if opts.shard_tokens == 0 || opts.shard_tokens > (1 << 30) {
        return Err(Error::Option(format!("shard_tokens must be in 1..=2^30, got {}", opts.shard_tokens)));
    }
    let inputs: Vec<&Path> =
        opts.inputs.iter().chain(opts.mix.iter().map(|(p, _)| p)).chain([&opts.tokenizer]).map(PathBuf::as_path).collect();
    check_output_disjoint(&opts.out_dir, &inputs)?;
    check_target(&opts.out_dir, opts.overwrite, true)?;
    Ok(())
}

/// Map (`--columns`), detect (unless `--format` forces one) and convert one record. Errors name
/// the record's fields as the file spells them.
fn convert_record(r: &RawRecord, opts: &PrepareOptions, fallback: Option<Format>) -> Result<(Format, Example)> {
    let located = |field: Option<String>, message: String| Error::Record { location: r.location.clone(), field, message };
    let mapped = opts.columns.apply(&r.value).map_err(|(field, message)| located(field, message))?;
    let value = mapped.as_ref().unwrap_or(&r.value);
    let format = match opts.format {
        Some(f) => f,
        // Detected from the keys; else the format the mapping names, one that some of the keys
        // belong to, or the file's.
        None => match Format::detect(value).or_else(|| {
            value.is_object().then(|| opts.columns.implied_format().or_else(|| Format::detect_partial(value)).or(fallback))?
        }) {
            Some(f) => f,
            None => return Err(located(None, undetectable(value))),
        },
    };
    convert(value, format, &r.location).map(|example| (format, example)).map_err(|e| {
        let e = match (opts.format, Format::detect(value), e) {
            (Some(forced), Some(looks), Error::Record { location, field, message }) if looks != forced => Error::Record {
                location,
                field,
                message: format!(
                    "{message} (the record looks like {} data, but --format {} converts every record as {})",
                    looks.name(),
                    forced.name(),
                    forced.name()
                ),
            },
            (_, _, e) => e,
        };
        opts.columns.explain(e)
    })
}

/// Why no format fits `value`.
fn undetectable(value: &Value) -> String {
    let Some(obj) = value.as_object() else { return format!("expected a JSON object, got {}", json_kind(value)) };
    let keys: Vec<&String> = obj.keys().collect();
    format!(
        "cannot detect the format from keys {keys:?} (expected messages, conversations, instruction+output, \
         prompt+chosen+rejected, prompt+completion+label, text+label or text); pass --format, or name your keys with --columns"
    )
}

/// A record whose kind (chat, text, preference, KTO) differs from the first record's.
fn kind_mismatch(format: Format, at: &Location, kind: ExampleKind, first: &Location) -> Error {
    Error::Record {
        location: at.clone(),
        field: None,
        message: format!(
            "a {} record: holds {} data but {} holds {} data (from line {}); prepare them into separate outputs",
            format.name(),
            format.kind().name(),
            first.file.display(),
            kind.name(),
            first.line
        ),
    }
}

/// Why `read` holds no JSON object to detect a format from.
fn no_object_records(path: &Path, read: &FileRecords) -> Error {
    let json_hint = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        " (a .json file holds one JSON array of records, or one record per line)"
    } else {
        ""
    };
    if let Some(first) = read.records.first() {
        return Error::Record {
            location: first.location.clone(),
            field: None,
            message: format!(
                "expected a JSON object, got {}; no record of the file is an object{json_hint}",
                json_kind(&first.value)
            ),
        };
    }
    match read.problems.first() {
        Some(Error::Record { location, field, message }) => Error::Record {
            location: location.clone(),
            field: field.clone(),
            message: format!("{message} (no record of the file could be read{json_hint})"),
        },
        Some(other) => Error::File { path: path.to_path_buf(), message: other.to_string() },
        None => Error::File { path: path.to_path_buf(), message: "no records found: the file is empty".into() },
    }
}

fn locate(e: Error, location: &Location) -> Error {
    match e {
        Error::Record { .. } => e,
        other => Error::Record { location: location.clone(), field: None, message: other.to_string() },
    }
}

/// The refusal of an empty dataset: every record read was dropped (with `--on-error skip`, or by
/// the length policy or dedup). Names the inputs, what dropped the records and the first
/// problems, rather than writing a dataset with no examples and exiting 0.
fn nothing_kept(files: &[(PathBuf, Option<usize>)], counts: &Counts, problems: &[Error]) -> Error {
    let reasons = [
        ("invalid", counts.invalid + counts.length.empty_completion),
        ("duplicate", counts.duplicate),
        ("overlong", counts.length.overlong),
        ("with no trainable tokens", counts.length.no_trainable),
    ];
    let reasons: Vec<String> = reasons.iter().filter(|(_, n)| *n > 0).map(|(what, n)| format!("{n} {what}")).collect();
    let mut message = format!("all {} records were dropped ({}); no dataset is written", counts.read, reasons.join(", "));
    if files.len() > 1 {
        let names: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
        message = format!("{message} (inputs: {})", names.join(", "));
    }
    if !problems.is_empty() {
        let first: Vec<String> = problems.iter().take(3).map(Error::to_string).collect();
        let more = problems.len().saturating_sub(3);
        let more = if more > 0 { format!("; and {more} more") } else { String::new() };
        message = format!("{message}. First problems: {}{more}", first.join("; "));
    }
    Error::File { path: files[0].0.clone(), message }
}

fn invalid(mut problems: Vec<Error>) -> Error {
    let n = problems.len();
    let first = problems.swap_remove(0);
    if n == 1 {
        return first;
    }
    match first {
        Error::Record { location, field, message } => Error::Record {
            location,
            field,
            message: format!("{message} (and {} more invalid records; pass --on-error skip to drop them)", n - 1),
        },
        other => other,
    }
}

/// The classes of classified examples, sorted (names by code point, indices by value), each with
/// its number of examples and where it first occurs. A label of the other type than the first
/// record's (an index among names) is an invalid record.
fn class_table(
    items: &mut Vec<Item>,
    mix_items: &mut [(usize, Vec<Item>)],
    problems: &mut Vec<Error>,
    invalid: &mut usize,
) -> Vec<(ClassLabel, usize, Location)> {
    fn label_of(it: &Item) -> Option<&ClassLabel> {
        match &it.example {
            Example::Classify { label, .. } => Some(label),
            _ => None,
        }
    }
    let first = items
        .iter()
        .chain(mix_items.iter().flat_map(|(_, v)| v.iter()))
        .find_map(|it| label_of(it).map(|l| (l.type_name(), it.location.clone())));
    let Some((kind, at)) = first else { return Vec::new() };
    let mut keep = |it: &Item| match label_of(it) {
        Some(l) if l.type_name() != kind => {
            *invalid += 1;
            problems.push(Error::Record {
                location: it.location.clone(),
                field: Some("label".into()),
                message: format!(
                    "a class {} ({}), but the labels of {} are class {kind}s (from line {}); use one kind for all",
                    l.type_name(),
                    l.to_json(),
                    at.file.display(),
                    at.line
                ),
            });
            false
        }
        _ => true,
    };
    items.retain(&mut keep);
    for (_, v) in mix_items.iter_mut() {
        v.retain(&mut keep);
    }
    let mut table: BTreeMap<ClassLabel, (usize, Location)> = BTreeMap::new();
    for it in items.iter().chain(mix_items.iter().flat_map(|(_, v)| v.iter())) {
        if let Some(l) = label_of(it) {
            table.entry(l.clone()).or_insert_with(|| (0, it.location.clone())).0 += 1;
        }
    }
    table.into_iter().map(|(l, (n, at))| (l, n, at)).collect()
}

fn add_system_prompt(example: &mut Example, system: &str) {
    let add = |messages: &mut Value| {
        if let Some(items) = messages.as_array_mut() {
            if items.first().is_none_or(|m| m["role"] != "system") {
                items.insert(0, json!({"role": "system", "content": system}));
            }
        }
    };
    match example {
        Example::Chat { messages, .. } => add(messages),
        Example::Preference { prompt: crate::data::formats::Part::Messages(m), .. }
        | Example::Kto { prompt: crate::data::formats::Part::Messages(m), .. }
        | Example::Classify { input: crate::data::formats::Part::Messages(m), .. } => add(m),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_choice_parses() {
        assert_eq!(TemplateChoice::parse("tokenizer"), TemplateChoice::Tokenizer);
        assert_eq!(TemplateChoice::parse("chatml"), TemplateChoice::Builtin("chatml".into()));
        assert_eq!(TemplateChoice::parse("my.jinja"), TemplateChoice::File("my.jinja".into()));
    }
}
