//! Readers: JSONL, JSON array and Parquet files into raw JSON records with their location.
//!
//! Every record keeps the file and 1-based line (JSONL), the line where the element starts
//! (JSON array) or the row number (Parquet), so later validation can name `file:line`.
//!
//! Files are opened with [`crate::io::file::open_regular`] (a FIFO or `/dev/zero` is refused,
//! not read forever). JSON and JSONL must be UTF-8, with or without a byte-order mark; UTF-16
//! and UTF-32 files are recognised by their byte-order mark or their NUL bytes and refused with
//! that said, rather than reported as lines that do not parse.

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
            let bytes = crate::io::file::read(path)?;
            check_utf8_encoding(path, &bytes)?;
            // The readers strip the byte-order mark themselves (exactly one: a second U+FEFF is
            // text), so it is only looked past here.
            let first = strip_bom(&bytes).iter().find(|b| !b.is_ascii_whitespace()).copied();
            if kind == FileKind::Json && first == Some(b'[') {
                read_json_array(path, &bytes)
            } else {
                Ok(read_jsonl(path, &bytes))
            }
        }
    }
}

/// UTF-8's byte-order mark, which some editors write at the start of a file.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes)
}

/// Refuses text that is UTF-16 or UTF-32 rather than UTF-8, recognised by its byte-order mark
/// or, without one, by NUL bytes: JSON never holds a raw NUL (it must be written `\u0000`),
/// while UTF-16 text of mostly ASCII is about half NULs. A tenth of the first 4 KiB being NUL
/// is the sign; a stray NUL in one line is left to that line's parse error.
fn check_utf8_encoding(path: &Path, bytes: &[u8]) -> Result<()> {
    let encoding = if bytes.starts_with(&[0xFF, 0xFE, 0, 0]) {
        Some("UTF-32 (little-endian byte-order mark FF FE 00 00)".to_string())
    } else if bytes.starts_with(&[0, 0, 0xFE, 0xFF]) {
        Some("UTF-32 (big-endian byte-order mark 00 00 FE FF)".to_string())
    } else if bytes.starts_with(&[0xFF, 0xFE]) {
        Some("UTF-16 (little-endian byte-order mark FF FE)".to_string())
    } else if bytes.starts_with(&[0xFE, 0xFF]) {
        Some("UTF-16 (big-endian byte-order mark FE FF)".to_string())
    } else {
        let sample = &bytes[..bytes.len().min(4096)];
        let nuls = sample.iter().filter(|&&b| b == 0).count();
        (nuls * 10 >= sample.len() && nuls > 0).then(|| {
            format!(
                "UTF-16 or UTF-32 without a byte-order mark ({nuls} of the first {} bytes are NUL)",
                sample.len()
            )
        })
    };
    match encoding {
        None => Ok(()),
        Some(encoding) => Err(Error::File {
            path: path.to_path_buf(),
            message: format!(
                "the text is {encoding}; pyft reads JSON and JSON Lines only as UTF-8 (convert it, e.g. \
                 `iconv -f UTF-16 -t UTF-8 IN > OUT`)"
            ),
        }),
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
    let bytes = strip_bom(bytes);
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

/// Parse a JSON array file (a UTF-8 byte-order mark is skipped). Each element's location is the
/// line on which it starts.
pub fn read_json_array(path: &Path, bytes: &[u8]) -> Result<FileRecords> {
    let bytes = strip_bom(bytes);
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
///
/// A damaged file is refused as a whole: an unreadable footer is an [`Error::File`], an
/// unreadable row (a damaged page or row group; the rows after it cannot be read either) an
/// [`Error::Record`] at that row, like a JSON array that does not parse. The `parquet` crate
/// panics on some damaged files; that is caught ([`crate::guard`]) and reported as the file
/// being malformed.
pub fn read_parquet(path: &Path) -> Result<FileRecords> {
    let file = crate::io::file::open_regular(path)?;
    let malformed = |panic: &str| Error::File {
        path: path.to_path_buf(),
        message: format!("malformed Parquet file (the parquet reader failed: {panic})"),
    };
    crate::guard::catch(malformed, || read_parquet_rows(path, file))
}

fn read_parquet_rows(path: &Path, file: std::fs::File) -> Result<FileRecords> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
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
            // The row iterator gives the same error again on every later call (it does not move
            // past a row group it failed to load), so the first error ends the file.
            Err(e) => {
                return Err(record_error(
                    path,
                    i + 1,
                    format!("unreadable Parquet row: {e} (the file is damaged from this row on)"),
                ))
            }
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

    /// A fresh empty directory under the system temp dir.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pyft-read-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn utf16(text: &str, big_endian: bool) -> Vec<u8> {
        text.encode_utf16().flat_map(|u| if big_endian { u.to_be_bytes() } else { u.to_le_bytes() }).collect()
    }

    #[test]
    fn utf16_and_utf32_files_are_named_not_parsed() {
        let dir = temp_dir("utf16");
        let line = "{\"text\": \"hi\"}\n{\"text\": \"yo\"}\n";
        let utf32le: Vec<u8> = line.chars().flat_map(|c| (c as u32).to_le_bytes()).collect();
        let cases: [(&str, Vec<u8>, &str); 5] = [
            ("le.jsonl", [&[0xFF, 0xFE][..], &utf16(line, false)].concat(), "UTF-16"),
            ("be.json", [&[0xFE, 0xFF][..], &utf16(line, true)].concat(), "UTF-16"),
            ("le32.jsonl", [&[0xFF, 0xFE, 0, 0][..], &utf32le].concat(), "UTF-32"),
            ("nobom.jsonl", utf16(line, false), "UTF-16 or UTF-32"),
            ("nul.json", b"{\"text\": \"a\0\0\0\0\0\0\0\0b\"}".to_vec(), "NUL"),
        ];
        for (name, bytes, what) in cases {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            let err = read_file(&p).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains(what) && err.contains("UTF-8"), "{name}: {err}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn utf8_bom_is_accepted_in_json_and_jsonl() {
        let dir = temp_dir("bom");
        let arr = dir.join("a.json");
        std::fs::write(&arr, b"\xEF\xBB\xBF[\n  {\"text\": \"a\"},\n  {\"text\": \"b\"}\n]\n").unwrap();
        let got = read_file(&arr).unwrap();
        assert!(got.problems.is_empty(), "{:?}", got.problems);
        assert_eq!(got.records.iter().map(|r| r.location.line).collect::<Vec<_>>(), vec![2, 3]);
        let lines = dir.join("a.jsonl");
        std::fs::write(&lines, b"\xEF\xBB\xBF{\"text\": \"a\"}\n").unwrap();
        assert_eq!(read_file(&lines).unwrap().records.len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn only_one_byte_order_mark_is_stripped() {
        // A second U+FEFF is text: the line does not parse, through `read_file` as through
        // `read_jsonl` (both stripped one mark each before, losing it).
        let dir = temp_dir("bom2");
        for name in ["two.jsonl", "two.json"] {
            let p = dir.join(name);
            let bytes = b"\xEF\xBB\xBF\xEF\xBB\xBF{\"text\": \"a\"}\n{\"text\": \"b\"}\n";
            std::fs::write(&p, bytes).unwrap();
            let got = read_file(&p).unwrap();
            let direct = read_jsonl(&p, bytes);
            assert_eq!((got.records.len(), got.problems.len()), (1, 1), "{name}");
            assert_eq!((direct.records.len(), direct.problems.len()), (1, 1), "{name}");
            assert!(got.problems[0].to_string().contains(&format!("{name}:1: malformed JSON")), "{:?}", got.problems);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn corpus(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/parquet").join(name)
    }

    #[cfg(unix)]
    #[test]
    fn a_damaged_row_group_ends_the_file_with_its_row() {
        // Row groups after the first are damaged: parquet's row iterator repeats the error on
        // every call; it used to be collected without end.
        let path = corpus("row-errors-never-end.parquet");
        let err = within_20s(move || read_file(&path).unwrap_err().to_string());
        assert!(err.contains("row-errors-never-end.parquet:") && err.contains("unreadable Parquet row"), "{err}");
        assert!(err.contains("damaged from this row on"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn parquet_panics_are_file_errors() {
        // Files on which parquet 57 panicked (some give a row error in parquet 60).
        for name in ["panic-rle-index-500.parquet", "panic-thrift-unwrap-none.parquet",
                     "panic-capacity-overflow.parquet", "panic-negative-column-start.parquet"] {
            let path = corpus(name);
            let err = within_20s(move || read_file(&path).unwrap_err().to_string());
            assert!(err.contains(name), "{name}: {err}");
        }
    }

    /// Runs `f` on its own thread; fails the test when it has not returned within 20 s (a read
    /// that blocks would otherwise hang the test run).
    #[cfg(unix)]
    fn within_20s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(20)).expect("the read blocked")
    }

    #[cfg(unix)]
    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let dir = temp_dir("fifo");
        for name in ["data.jsonl", "data.json", "data.parquet"] {
            let p = dir.join(name);
            crate::io::file::mkfifo(&p);
            let err = within_20s(move || read_file(&p).unwrap_err().to_string());
            assert!(err.contains(&format!("{name}: is a FIFO, not a regular file")), "{err}");
        }
        let zero = dir.join("zero.jsonl");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let err = within_20s(move || read_file(&zero).unwrap_err().to_string());
        assert!(err.contains("zero.jsonl: is a character device, not a regular file"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_extension_is_rejected() {
        let err = read_file(Path::new("data.csv")).unwrap_err();
        assert!(err.to_string().contains("unsupported file extension `.csv`"));
    }
}
