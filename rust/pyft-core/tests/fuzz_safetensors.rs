//! Fuzzing the safetensors reader (`pyft_core::io::safetensors`): hostile single files and
//! hostile `model.safetensors.index.json` files. See `fuzz_support` for the harness and its
//! environment variables.
//!
//! Files are generated from a structure (header entries written as raw JSON text, so duplicate
//! names and wrongly typed fields are possible), then mutated: dtypes and shapes that do not
//! exist, offsets that overlap, run backwards or past the end, header length fields of 0, 2^63
//! and `u64::MAX`, padding, truncated or extended data, and byte-level damage.

mod fuzz_support;

use std::path::{Component, Path};

use fuzz_support::{interesting_u64, mutate_bytes, names_file, Campaign, Outcome, Rng};
use pyft_core::io::safetensors::{model_files, SafetensorsFile};

/// One header entry, each field raw JSON text.
struct Entry {
    name: String,
    dtype: String,
    shape: String,
    offsets: String,
}

const NAMES: &[&str] = &["w", "model.layers.0.self_attn.q_proj.weight", "lm_head.weight", "model.embed_tokens.weight",
                         "", "é\u{1F600}", "a\u{0}b", "__metadata__", "x.weight_format",
                         "base_model.model.lora_A.weight"];

fn dtype_size(dtype: &str) -> usize {
    match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        _ => 1,
    }
}

/// A valid file: up to five tensors (mostly float types pyft computes with), contiguous offsets
/// in a random order, random data.
fn valid(rng: &mut Rng) -> (Vec<Entry>, Vec<u8>) {
    let n = rng.small(5);
    let mut specs = Vec::new();
    for i in 0..n {
        let dtype = *rng.pick(&["F32", "F16", "BF16", "F32", "BF16", "U8", "I64", "I8", "F8_E4M3", "BOOL"]);
        let shape: Vec<usize> = (0..rng.small(3)).map(|_| rng.small(6)).collect();
        let numel: usize = shape.iter().product();
        specs.push((format!("{}.{i}", rng.pick(NAMES)), dtype, shape, numel * dtype_size(dtype)));
    }
    // Data order differs from header order.
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut offsets = vec![(0, 0); n];
    let mut at = 0;
    for &i in &order {
        offsets[i] = (at, at + specs[i].3);
        at += specs[i].3;
    }
    let entries = specs.into_iter().zip(offsets).map(|((name, dtype, shape, _), (a, b))| Entry {
        name: serde_json::to_string(&name).unwrap(),
        dtype: format!("\"{dtype}\""),
        shape: serde_json::to_string(&shape).unwrap(),
        offsets: format!("[{a},{b}]"),
    }).collect();
    (entries, rng.bytes(at))
}

fn hostile_dtype(rng: &mut Rng) -> String {
    rng.pick(&["\"X\"", "\"\"", "\"f32\"", "\"F4\"", "\"F6_E2M3\"", "\"E8M0\"", "\"C64\"", "\"F8_E8M0\"", "1", "null",
               "[\"F32\"]", "\"F32\\u0000\"", "\"BF16 \""]).to_string()
}

fn hostile_shape(rng: &mut Rng) -> String {
    rng.pick(&["[]", "[0]", "[-1]", "[9223372036854775808]", "[18446744073709551615]", "[4294967296,4294967296]",
               "[1,1,1,1,1,1,1,1,1,1,1,1]", "[1.5]", "[\"2\"]", "null", "{}", "[2,[3]]",
               "[3037000500,3037000500]", "[18446744073709551616]"]).to_string()
}

fn hostile_offsets(rng: &mut Rng, data_len: usize) -> String {
    let a = interesting_u64(rng, data_len);
    let b = interesting_u64(rng, data_len);
    match rng.below(6) {
        0 => format!("[{a},{b}]"),
        1 => format!("[{b},{a}]"),
        2 => format!("[0,{data_len},{data_len}]"),
        3 => "[-1,4]".into(),
        4 => format!("[{}, {}]", data_len / 2, data_len / 2 + rng.small(16)),
        _ => rng.pick(&["[]", "null", "[0]", "[0,1e3]", "[0,\"8\"]", "[18446744073709551616,0]"]).to_string(),
    }
}

fn hostile_metadata(rng: &mut Rng) -> String {
    rng.pick(&["{\"format\":\"pt\"}", "{\"format\":1}", "{\"a\":{\"b\":\"c\"}}", "null", "[]", "\"pt\"",
               "{\"format\":\"pt\",\"format\":\"tf\"}", "{\"\\ud800\":\"x\"}",
               "{\"total_size\":\"18446744073709551616\"}"])
        .to_string()
}

/// A generated file: a valid structure, then zero or more structural corruptions, then
/// sometimes byte-level damage.
fn generate(rng: &mut Rng) -> Vec<u8> {
    let (mut entries, mut data) = valid(rng);
    let p = *rng.pick(&[0.0, 0.05, 0.15, 0.3]);
    for e in &mut entries {
        if rng.chance(p) {
            e.dtype = hostile_dtype(rng);
        }
        if rng.chance(p) {
            e.shape = hostile_shape(rng);
        }
        if rng.chance(p) {
            e.offsets = hostile_offsets(rng, data.len());
        }
    }
    if !entries.is_empty() && rng.chance(p) {
        // Same name twice (JSON objects with duplicate keys).
        let i = rng.below(entries.len());
        let dup = Entry { name: entries[i].name.clone(), dtype: "\"F32\"".into(), shape: "[1]".into(),
                          offsets: format!("[{},{}]", data.len(), data.len() + 4) };
        data.extend_from_slice(&[0; 4]);
        entries.push(dup);
    }
    let mut parts: Vec<String> = Vec::new();
    if rng.chance(0.5) {
        let meta = if rng.chance(p) { hostile_metadata(rng) } else { "{\"format\":\"pt\"}".into() };
        parts.push(format!("\"__metadata__\":{meta}"));
    }
    for e in &entries {
        parts.push(format!("{}:{{\"dtype\":{},\"shape\":{},\"data_offsets\":{}}}",
                           e.name, e.dtype, e.shape, e.offsets));
    }
    let mut header = format!("{{{}}}", parts.join(","));
    if rng.chance(p) {
        header = rng.pick(&["[]", "\"x\"", "1", "null", "{", "", "{}}"]).to_string();
    }
    if rng.chance(p / 2.0) {
        let depth = rng.pick(&[64usize, 200, 5000]);
        header = format!("{{\"x\":{}{}}}", "[".repeat(*depth), "]".repeat(*depth));
    }
    // The format pads the header with spaces to a multiple of 8.
    let pad = (8 - header.len() % 8) % 8;
    header.push_str(&" ".repeat(pad));
    if rng.chance(p) {
        let tail = *rng.pick(&["\0\0\0\0\0\0\0\0", "\t\n\r \t\n\r ", "        "]);
        header.push_str(tail);
    }
    let mut len_field = header.len() as u64;
    if rng.chance(p) {
        len_field = interesting_u64(rng, header.len());
    }
    if rng.chance(p) {
        let cut = rng.below(data.len() + 1);
        data.truncate(cut);
    }
    if rng.chance(p) {
        let extra = rng.small(16);
        data.extend(rng.bytes(extra));
    }
    let mut file = [len_field.to_le_bytes().to_vec(), header.into_bytes(), data].concat();
    if rng.chance(0.3) {
        let ops = rng.range(1, 4);
        mutate_bytes(rng, &mut file, ops);
    }
    file
}

/// The reader's contract: every accepted tensor lies inside the file with as many bytes as its
/// shape and type need, `open` (float types only) is stricter than `open_any`, errors name the file.
fn check_file(path: &Path, bytes: &[u8]) -> Result<Outcome, String> {
    let any = SafetensorsFile::open_any(path);
    let strict = SafetensorsFile::open(path);
    let file_len = bytes.len() as u64;
    if let Ok(f) = &strict {
        if !f.others.is_empty() {
            return Err("open() kept tensors of other types".into());
        }
        let Ok(a) = &any else { return Err("open() accepted a file open_any() refused".into()) };
        if a.tensors != f.tensors {
            return Err("open() and open_any() disagree on the float tensors".into());
        }
    }
    if let Err(e) = &strict {
        names_file(&e.to_string(), path)?;
    }
    match any {
        Err(e) => {
            let message = e.to_string();
            names_file(&message, path)?;
            Ok(Outcome::Refused(message))
        }
        Ok(f) => {
            for t in &f.tensors {
                let data = f.bytes(t);
                if data.len() != t.numel() * t.dtype.size() {
                    return Err(format!("tensor `{}` has {} bytes for {} elements of {:?}", t.name, data.len(),
                                       t.numel(), t.dtype));
                }
                let (start, len) = f.file_range(t);
                if start + len as u64 > file_len {
                    return Err(format!("tensor `{}` ends at {} past the file's {file_len} bytes", t.name,
                                       start + len as u64));
                }
                if t.numel() <= 1 << 16 {
                    let values = pyft_core::tensor::to_f32(data, t.dtype);
                    if values.len() != t.numel() {
                        return Err(format!("tensor `{}` decodes to {} values", t.name, values.len()));
                    }
                }
            }
            for o in &f.others {
                let _ = f.range_bytes(o.range);
            }
            Ok(Outcome::Accepted)
        }
    }
}

#[test]
fn fuzz_safetensors_files() {
    Campaign::new("safetensors", "safetensors", 3000).fuzz(check_file, generate);
}

/// Shard names an index may hold: plain names, paths that leave the directory, odd types.
const SHARD_NAMES: &[&str] = &["\"model-00001-of-00002.safetensors\"", "\"model-00002-of-00002.safetensors\"",
                               "\"../outside.safetensors\"", "\"/etc/hostname\"", "\"sub/../../outside.safetensors\"",
                               "\"\"", "\".\"", "\"sub\"", "1", "null", "[\"a\"]",
                               "\"model-00001-of-00002.safetensors\\u0000\"",
                               "\"./model-00001-of-00002.safetensors\""];

fn generate_index(rng: &mut Rng) -> Vec<u8> {
    let mut text = match rng.below(8) {
        0 => rng.pick(&["[]", "{}", "{\"weight_map\":[]}", "{\"weight_map\":null}", "not json", ""]).to_string(),
        _ => {
            let n = rng.small(5);
            let entries: Vec<String> = (0..n).map(|i| format!("\"t{i}\":{}", rng.pick(SHARD_NAMES))).collect();
            format!("{{\"metadata\":{{\"total_size\":{}}},\"weight_map\":{{{}}}}}", interesting_u64(rng, 0),
                    entries.join(","))
        }
    }
    .into_bytes();
    if rng.chance(0.2) {
        mutate_bytes(rng, &mut text, 2);
    }
    text
}

/// `model_files` on a model directory holding the case as its index: every listed shard exists
/// inside the directory; errors name the index or the directory.
fn check_index(path: &Path, bytes: &[u8]) -> Result<Outcome, String> {
    let dir = path.with_extension("model");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("model.safetensors.index.json"), bytes).map_err(|e| e.to_string())?;
    for shard in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] {
        std::fs::write(dir.join(shard), b"").map_err(|e| e.to_string())?;
    }
    // A file beside the model directory, which no index may reach.
    std::fs::write(dir.parent().unwrap().join("outside.safetensors"), b"").map_err(|e| e.to_string())?;
    let outcome = match model_files(&dir) {
        Ok(paths) => {
            for p in &paths {
                let inside = p.strip_prefix(&dir).is_ok_and(|rel| {
                    rel.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
                });
                // (Whether it is a regular file is checked when it is opened.)
                if !inside || !p.exists() {
                    return Err(format!("index lists {}, which is not in the model directory", p.display()));
                }
            }
            Outcome::Accepted
        }
        Err(e) => {
            let message = e.to_string();
            if !message.contains(&dir.display().to_string()) {
                return Err(format!("error does not name the model directory: {message}"));
            }
            Outcome::Refused(message)
        }
    };
    std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(outcome)
}

#[test]
fn fuzz_safetensors_index() {
    Campaign::new("safetensors_index", "json", 400).fuzz(check_index, generate_index);
}
