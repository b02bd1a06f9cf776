//! Readers: JSONL, JSON array and Parquet files into raw JSON records with their location.
//!
//! Every record keeps the file and 1-based line (JSONL), the line where the element starts
//! (JSON array) or the row number (Parquet), so later validation can name `file:line`.

use std::path::{Path, PathBuf};

use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{Error, Location, Result};

/// One raw input record: a JSON object as read, before format conversion.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Where the record was read from.
    pub location: Location,
    /// The record itself (normally a JSON object).
    pub value: Value,
}

/// A record that could not even be parsed (malformed line, invalid UTF-8).
pub type ReadProblem = Error;

/// What reading one file gave: its records in file order, and the records that failed to parse.
#[derive(Debug, Default)]
pub struct FileRecords {
    /// Successfully parsed records, in file order.
    pub records: Vec<RawRecord>,
    /// One error per unparseable record (each an [`Error::Record`]).
    pub problems: Vec<ReadProblem>,
}

/// The container format of an input file, chosen from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// One JSON value per line (`.jsonl`, `.ndjson`).
    Jsonl,
    /// A single JSON array of records (`.json`); a `.json` file whose first non-blank byte is not
    /// `[` is read as JSONL, as HF `datasets` does.
    Json,
    /// Apache Parquet (`.parquet`).
    Parquet,
}

impl FileKind {
    /// The kind of `path` from its extension.
    pub fn of(path: &Path) -> Result<FileKind> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" => Ok(FileKind::Jsonl),
            "json" => Ok(FileKind::Json),
            "parquet" | "pq" => Ok(FileKind::Parquet),
            _ => Err(Error::File {
                path: path.to_path_buf(),
                message: format!(
                    "unsupported file extension `.{ext}` (expected .jsonl, .ndjson, .json or .parquet)"
                ),
            }),
        }
    }
}

/// Read every record of `path`.
///
/// Parse failures of single records are collected in [`FileRecords::problems`] rather than
/// aborting, so the caller can apply its `--on-error` policy; unreadable files are errors.
pub fn read_file(path: &Path) -> Result<FileRecords> {
    let kind = FileKind::of(path)?;
    match kind {
        FileKind::Parquet => read_parquet(path),
        FileKind::Jsonl | FileKind::Json => {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
            if kind == FileKind::Json && first == Some(b'[') {
                read_json_array(path, &bytes)
            } else {
                Ok(read_jsonl(path, &bytes))
            }
        }
    }
}

fn location(path: &Path, line: usize) -> Location {
    Location { file: path.to_path_buf(), line }
}

fn record_error(path: &Path, line: usize, message: String) -> Error {
    Error::Record { location: location(path, line), field: None, message }
}

/// Parse JSONL bytes: one record per non-blank line, lines parsed in parallel.
pub fn read_jsonl(path: &Path, bytes: &[u8]) -> FileRecords {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(bytes);
    let lines: Vec<(usize, &[u8])> = bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    let parsed: Vec<Result<RawRecord>> = crate::parallel::map(&lines, |&(line, raw)| {
        let text = std::str::from_utf8(raw).map_err(|e| {
            record_error(path, line, format!("invalid UTF-8 at byte {} of the line", e.valid_up_to() + 1))
        })?;
        let value: Value = serde_json::from_str(text)
            .map_err(|e| record_error(path, line, format!("malformed JSON: {e}")))?;
        Ok(RawRecord { location: location(path, line), value })
    });
    collect(parsed)
}

/// Parse a JSON array file. Each element's location is the line on which it starts.
pub fn read_json_array(path: &Path, bytes: &[u8]) -> Result<FileRecords> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count();
        record_error(path, line, "invalid UTF-8".to_string())
    })?;
    let elements: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| {
        record_error(path, e.line(), format!("malformed JSON array: {e}"))
    })?;
    let base = text.as_ptr() as usize;
    let mut starts: Vec<usize> = elements.iter().map(|raw| raw.get().as_ptr() as usize - base).collect();
    // Convert byte offsets (ascending) to 1-based line numbers in one pass.
    let mut line = 1;
    let mut pos = 0;
    for s in starts.iter_mut() {
        line += bytecount_newlines(&bytes[pos..*s]);
        pos = *s;
        *s = line;
    }
    let pairs: Vec<(usize, &RawValue)> = starts.into_iter().zip(elements).collect();
    let parsed: Vec<Result<RawRecord>> = crate::parallel::map(&pairs, |&(line, raw)| {
        let value: Value = serde_json::from_str(raw.get())
            .map_err(|e| record_error(path, line, format!("malformed JSON: {e}")))?;
        Ok(RawRecord { location: location(path, line), value })
    });
    Ok(collect(parsed))
}

/// Split parse results into records and problems, keeping file order.
fn collect(parsed: Vec<Result<RawRecord>>) -> FileRecords {
    let mut out = FileRecords::default();
    for r in parsed {
        match r {
            Ok(rec) => out.records.push(rec),
            Err(e) => out.problems.push(e),
        }
    }
    out
}

fn bytecount_newlines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

/// Read a Parquet file row by row; nested columns (lists of structs for messages) become JSON
/// arrays of objects. Row numbers count from 1.
pub fn read_parquet(path: &Path) -> Result<FileRecords> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| Error::File {
        path: path.to_path_buf(),
        message: format!("not a readable Parquet file: {e}"),
    })?;
    let mut out = FileRecords::default();
    let rows = reader.get_row_iter(None).map_err(|e| Error::File {
        path: path.to_path_buf(),
        message: format!("cannot read Parquet rows: {e}"),
    })?;
    for (i, row) in rows.enumerate() {
        match row {
            Ok(row) => out.records.push(RawRecord { location: location(path, i + 1), value: row.to_json_value() }),
            Err(e) => out.problems.push(record_error(path, i + 1, format!("unreadable Parquet row: {e}"))),
        }
    }
    Ok(out)
}

/// Read several files (each in parallel internally), keeping the given order.
pub fn read_files(paths: &[PathBuf]) -> Result<Vec<FileRecords>> {
    paths.iter().map(|p| read_file(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_lines_and_problems_are_located() {
        let data = b"{\"a\":1}\n\n{bad\r\n{\"b\":\xff}\n[1]\n";
        let got = read_jsonl(Path::new("x.jsonl"), data);
        assert_eq!(got.records.len(), 2);
        assert_eq!(got.records[0].location.line, 1);
        assert_eq!(got.records[1].location.line, 5);
        let msgs: Vec<String> = got.problems.iter().map(|e| e.to_string()).collect();
        assert!(msgs[0].starts_with("x.jsonl:3: malformed JSON"), "{}", msgs[0]);
        assert!(msgs[1].starts_with("x.jsonl:4: invalid UTF-8"), "{}", msgs[1]);
    }

    #[test]
    fn json_array_elements_know_their_line() {
        let data = b"[\n  {\"a\": 1},\n  {\"a\":\n 2},\n\n  {\"a\": 3}\n]";
        let got = read_json_array(Path::new("x.json"), data).unwrap();
        let lines: Vec<usize> = got.records.iter().map(|r| r.location.line).collect();
        assert_eq!(lines, vec![2, 3, 6]);
        assert_eq!(got.records[2].value["a"], 3);
    }

    #[test]
    fn malformed_json_array_names_the_line() {
        let err = read_json_array(Path::new("x.json"), b"[\n{\"a\": 1},\n{oops}\n]").unwrap_err();
        assert!(err.to_string().starts_with("x.json:3: malformed JSON array"), "{err}");
    }

    #[test]
    fn unknown_extension_is_rejected() {
        let err = read_file(Path::new("data.csv")).unwrap_err();
        assert!(err.to_string().contains("unsupported file extension `.csv`"));
    }
}
