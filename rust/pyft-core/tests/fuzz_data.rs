//! Fuzzing the data readers (`pyft_core::data::read`: JSONL, JSON array, Parquet) and what
//! consumes their records next (format detection and conversion, a built-in chat template). See
//! `fuzz_support` for the harness.
//!
//! JSON inputs are records of every supported format, with values replaced by hostile ones (null
//! content, numbers where text belongs, reserved characters, long strings), written as JSONL or a
//! JSON array and then damaged as text: deep nesting, numbers beyond f64 and u64, lone
//! surrogates, NaN, a BOM, UTF-16, CRLF, invalid UTF-8, truncation. Parquet inputs are the corpus
//! files (written by pyarrow: nested messages, several codecs, dictionary pages) with byte-level
//! damage aimed at the footer, its length field and the page headers.

mod fuzz_support;

use std::path::Path;
use std::sync::OnceLock;

use fuzz_support::{mutate_bytes, Campaign, Outcome, Rng};
use pyft_core::data::formats::{convert, Example, Format};
use pyft_core::data::read::{read_file, read_json_array, read_jsonl, FileRecords};
use pyft_core::data::template::{ChatTemplate, SpecialTokens};
use pyft_core::error::Error;
use serde_json::{json, Value};

const TEXTS: &[&str] = &["hello", "", " ", "é\u{1F600}漢字", "a\u{0}b", "\u{FDD0}", "\u{FEFF}x", "\r\n", "{{ x }}",
                         "<|im_start|>", "\\", "\"", "\u{202E}rtl", "\u{10FFFF}"];

fn text(rng: &mut Rng) -> Value {
    if rng.chance(0.05) {
        return json!("x".repeat(rng.range(1000, 20_000)));
    }
    json!(rng.pick(TEXTS))
}

/// A value where a string belongs, sometimes of the wrong kind.
fn content(rng: &mut Rng) -> Value {
    match rng.below(10) {
        0 => Value::Null,
        1 => json!(rng.u64() as i64),
        2 => json!([{"type": "text", "text": text(rng)}, {"type": "image"}]),
        3 => json!({"text": text(rng)}),
        4 => json!(true),
        _ => text(rng),
    }
}

fn message(rng: &mut Rng, key_role: &str, key_content: &str, roles: &[&str]) -> Value {
    let mut m = serde_json::Map::new();
    let role = if rng.chance(0.1) { json!(rng.pick(&[Value::Null, json!(1), json!("bot"), json!("")])) } else {
        json!(rng.pick(roles))
    };
    m.insert(key_role.into(), role);
    if !rng.chance(0.05) {
        m.insert(key_content.into(), content(rng));
    }
    if rng.chance(0.1) {
        m.insert("tool_calls".into(), json!([{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]));
    }
    if rng.chance(0.1) {
        m.insert("reasoning_content".into(), content(rng));
    }
    Value::Object(m)
}

fn messages(rng: &mut Rng) -> Value {
    let n = rng.small(5);
    Value::Array((0..n).map(|_| message(rng, "role", "content", &["system", "user", "assistant", "tool"])).collect())
}

/// A record of one of the supported formats (or none).
fn record(rng: &mut Rng) -> Value {
    match rng.below(8) {
        0 => {
            let tools = if rng.chance(0.2) { json!([{"name": "f"}]) } else { Value::Null };
            json!({"messages": messages(rng), "tools": tools})
        }
        1 => {
            let n = rng.small(4);
            let conv: Vec<Value> = (0..n).map(|_| message(rng, "from", "value", &["human", "gpt", "system", "user"]))
                .collect();
            json!({"conversations": conv})
        }
        2 => json!({"instruction": content(rng), "input": content(rng), "output": content(rng)}),
        3 => json!({"text": content(rng)}),
        4 => {
            let part = |rng: &mut Rng| if rng.chance(0.5) { content(rng) } else { messages(rng) };
            json!({"prompt": part(rng), "chosen": part(rng), "rejected": part(rng)})
        }
        5 => json!({"prompt": content(rng), "completion": content(rng),
                    "label": rng.pick(&[json!(true), json!(false), json!(1), json!("yes"), Value::Null])}),
        6 => json!([1, 2]),
        _ => json!({"unrelated": 1}),
    }
}

/// Hostile JSON text to splice in: numbers beyond f64/u64, NaN, lone surrogates, deep nesting.
fn hostile_token(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => "[".repeat(rng.range(100, 100_000)),
        1 => format!("{}1{}", "[".repeat(127), "]".repeat(127)),
        2 => "{\"a\":".repeat(rng.range(100, 5000)),
        _ => rng.pick(&["1e999", "-1e999", "123456789012345678901234567890", "-9223372036854775809",
                        "18446744073709551616", "NaN", "Infinity", "\"\\ud800\"", "\"\\udc00\\ud800\"", "-0",
                        "0.0000000000000000000000000000001e-400", "\"\\u0000\"", "\u{FEFF}", "\0", "//x"])
            .to_string(),
    }
}

/// JSON text (JSONL or an array) of random records, damaged as text.
fn generate_json(rng: &mut Rng, array: bool) -> Vec<u8> {
    let n = rng.small(8);
    let records: Vec<String> = (0..n).map(|_| record(rng).to_string()).collect();
    let mut text = if array {
        let sep = *rng.pick(&[",", ",\n", ",\n  "]);
        format!("[{}]", records.join(sep))
    } else {
        records.join(*rng.pick(&["\n", "\r\n", "\n\n"]))
    };
    for _ in 0..rng.small(2) {
        let at = rng.below(text.len() + 1);
        if text.is_char_boundary(at) {
            text.insert_str(at, &hostile_token(rng));
        }
    }
    let mut bytes = text.into_bytes();
    match rng.below(12) {
        0 => bytes.splice(0..0, [0xef, 0xbb, 0xbf]).for_each(drop),
        1 => {
            let utf16: Vec<u8> = String::from_utf8_lossy(&bytes).encode_utf16().flat_map(u16::to_le_bytes).collect();
            bytes = [vec![0xff, 0xfe], utf16].concat();
        }
        _ => {}
    }
    if rng.chance(0.3) {
        let ops = rng.range(1, 4);
        mutate_bytes(rng, &mut bytes, ops);
    }
    bytes
}

fn chatml() -> &'static ChatTemplate {
    static T: OnceLock<ChatTemplate> = OnceLock::new();
    T.get_or_init(|| ChatTemplate::builtin("chatml").expect("built-in template"))
}

/// The number of lines of `bytes` (the largest line a record can be located on).
fn lines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count() + 1
}

/// The contract of a read: every record and problem is located in `path` on a line (or row) up
/// to `max_line`; records of a known format convert or fail with a record error at their location; chat
/// examples render with a built-in template or fail with a template error.
fn check_records(path: &Path, max_line: usize, got: &FileRecords) -> Result<(), String> {
    for problem in &got.problems {
        match problem {
            Error::Record { location, .. } if location.file == path && (1..=max_line).contains(&location.line) => {}
            other => return Err(format!("problem not located in the file: {other}")),
        }
    }
    for r in &got.records {
        if r.location.file != path || !(1..=max_line).contains(&r.location.line) {
            return Err(format!("record located at {} (the input has {max_line} lines or rows)", r.location));
        }
        let Some(format) = Format::detect(&r.value) else { continue };
        match convert(&r.value, format, &r.location) {
            Ok(example) => {
                let _ = example.canonical();
                if let Example::Chat { messages, extra } = example {
                    match chatml().render(&messages, true, &SpecialTokens::default(), extra.as_ref()) {
                        Ok(_) | Err(Error::Template(_)) => {}
                        Err(e) => return Err(format!("render failed with a non-template error: {e}")),
                    }
                }
            }
            Err(Error::Record { location, .. }) if location == r.location => {}
            Err(e) => return Err(format!("conversion failed with an error not located at {}: {e}", r.location)),
        }
    }
    Ok(())
}

/// `read_jsonl` on the bytes and `read_file` on the file (both must agree), then the records.
/// The outcome of `read_file(path)`: its records keep the contract of [`check_records`] (lines up to
/// `max_line(records)`) and a whole-file refusal names the file.
fn read_outcome(path: &Path, max_line: impl FnOnce(&FileRecords) -> usize) -> Result<Outcome, String> {
    match read_file(path) {
        Ok(got) => {
            check_records(path, max_line(&got), &got)?;
            Ok(match got.problems.first() {
                Some(e) => Outcome::Refused(e.to_string()),
                None => Outcome::Accepted,
            })
        }
        Err(e) => {
            let message = e.to_string();
            fuzz_support::names_file(&message, path)?;
            Ok(Outcome::Refused(message))
        }
    }
}

fn check_jsonl(path: &Path, bytes: &[u8]) -> Result<Outcome, String> {
    let got = read_jsonl(path, bytes);
    check_records(path, lines(bytes), &got)?;
    match read_file(path) {
        // A whole-file refusal (UTF-16, ...) names the file.
        Err(e) => {
            let message = e.to_string();
            fuzz_support::names_file(&message, path)?;
            return Ok(Outcome::Refused(message));
        }
        // Exactly one byte-order mark is stripped either way (`double-bom.jsonl`).
        Ok(via_file)
            if via_file.records.len() != got.records.len() || via_file.problems.len() != got.problems.len() =>
        {
            return Err("read_file and read_jsonl disagree".into());
        }
        Ok(_) => {}
    }
    Ok(match got.problems.first() {
        Some(e) => Outcome::Refused(e.to_string()),
        None => Outcome::Accepted,
    })
}

/// `read_file` on a `.json` file (an array, or JSONL when it does not start with `[`), and
/// `read_json_array` on the bytes.
fn check_json(path: &Path, bytes: &[u8]) -> Result<Outcome, String> {
    let direct = read_json_array(path, bytes);
    if let Err(e) = &direct {
        match e {
            Error::Record { location, .. } if location.file == path => {}
            other => return Err(format!("array error not located in the file: {other}")),
        }
    }
    read_outcome(path, |_| lines(bytes))
}

#[test]
fn fuzz_jsonl() {
    Campaign::new("jsonl", "jsonl", 1500).fuzz(check_jsonl, |rng| generate_json(rng, false));
}

#[test]
fn fuzz_json() {
    Campaign::new("json", "json", 1500).fuzz(check_json, |rng| generate_json(rng, true));
}

/// Damage a Parquet file: mostly inside the footer (thrift metadata) and its length field, else
/// anywhere (page headers, compressed pages).
fn damage_parquet(rng: &mut Rng, file: &mut Vec<u8>) {
    let len = file.len();
    let footer_len = if len >= 8 { u32::from_le_bytes(file[len - 8..len - 4].try_into().unwrap()) as usize } else { 0 };
    match rng.below(4) {
        0 if len >= 8 => {
            let v = fuzz_support::interesting_u64(rng, footer_len) as u32;
            file[len - 8..len - 4].copy_from_slice(&v.to_le_bytes());
        }
        1 | 2 if footer_len + 8 <= len && footer_len > 0 => {
            let start = len - 8 - footer_len;
            let mut footer = file[start..len - 8].to_vec();
            let ops = rng.range(1, 4);
            mutate_bytes(rng, &mut footer, ops);
            let new_len = footer.len() as u32;
            file.splice(start..len - 8, footer);
            let n = file.len();
            if rng.chance(0.8) {
                file[n - 8..n - 4].copy_from_slice(&new_len.to_le_bytes());
            }
        }
        _ => {
            let ops = rng.range(1, 4);
            mutate_bytes(rng, file, ops);
        }
    }
}

/// The contract of a Parquet read: records and problems located on rows of the file, or a
/// refusal naming the file. The corpus keeps the files that once broke it: panics in the
/// `parquet` crate (`panic-*.parquet`, now caught by `read_parquet`), a row-group error the row
/// iterator repeats forever (`row-errors-never-end.parquet`), a footer list declaring gigabytes
/// (`abort-footer-list-10gb-allocation.parquet`, refused by parquet 60 before it allocates),
/// page headers claiming hundreds of MiB (`memory-390mib.parquet`).
fn check_parquet(path: &Path, _bytes: &[u8]) -> Result<Outcome, String> {
    read_outcome(path, |got| got.records.len() + got.problems.len())
}

#[test]
fn fuzz_parquet() {
    let c = Campaign::new("parquet", "parquet", 1500);
    let dir = c.corpus_dir();
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir).unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet") && p.file_name().unwrap().to_string_lossy()
            .starts_with("valid-"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no valid-*.parquet seeds in {}", dir.display());
    c.fuzz(check_parquet, move |rng| {
        let mut input = rng.pick(&seeds).clone();
        for _ in 0..rng.range(1, 2) {
            damage_parquet(rng, &mut input);
        }
        input
    });
}
