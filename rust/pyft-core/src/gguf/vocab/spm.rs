//! SentencePiece `tokenizer.model` files: a minimal protobuf reader for `ModelProto.pieces`.
//!
//! Schema (sentencepiece `sentencepiece_model.proto`): `ModelProto { repeated SentencePiece pieces
//! = 1; ... }`, `SentencePiece { string piece = 1; float score = 2; Type type = 3 [default =
//! NORMAL]; }` with `Type` NORMAL=1, UNKNOWN=2, CONTROL=3, USER_DEFINED=4, BYTE=6, UNUSED=5. Every
//! other field (trainer/normalizer specs, self-test data) is skipped by wire type.

use std::path::Path;

use crate::error::{Error, Result};

/// SentencePiece piece type `NORMAL` (the protobuf default).
pub(crate) const PIECE_NORMAL: u8 = 1;
/// SentencePiece piece type `UNKNOWN`.
pub(crate) const PIECE_UNKNOWN: u8 = 2;
/// SentencePiece piece type `CONTROL`.
pub(crate) const PIECE_CONTROL: u8 = 3;
/// SentencePiece piece type `USER_DEFINED`.
#[cfg(test)]
pub(crate) const PIECE_USER_DEFINED: u8 = 4;
/// SentencePiece piece type `UNUSED`.
pub(crate) const PIECE_UNUSED: u8 = 5;
/// SentencePiece piece type `BYTE`.
pub(crate) const PIECE_BYTE: u8 = 6;

/// One vocabulary entry of a SentencePiece model.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Piece {
    /// The piece text (`▁` marks a leading space).
    pub piece: String,
    /// Log-probability score (0.0 when absent).
    pub score: f32,
    /// Piece type (`PIECE_*`; NORMAL when absent).
    pub kind: u8,
}

/// Read the pieces of the SentencePiece model at `path`.
pub(crate) fn read_model(path: &Path) -> Result<Vec<Piece>> {
    let bytes = crate::io::file::read(path)?;
    parse_model(&bytes).map_err(|message| Error::File {
        path: path.to_path_buf(),
        message: format!("not a SentencePiece model: {message}"),
    })
}

/// Parse a serialized `ModelProto`; the error says where and what is wrong.
pub(crate) fn parse_model(bytes: &[u8]) -> std::result::Result<Vec<Piece>, String> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let mut pieces = Vec::new();
    while !r.done() {
        let (field, wire) = r.key()?;
        if field == 1 && wire == WIRE_LEN {
            let start = r.pos;
            let index = pieces.len();
            let piece = r
                .bytes()
                .and_then(parse_piece)
                .map_err(|e| format!("`pieces[{index}]` (record at byte {start}): {e}"))?;
            pieces.push(piece);
        } else {
            r.skip(field, wire)?;
        }
    }
    if pieces.is_empty() {
        return Err("no `pieces` (field 1 of ModelProto)".into());
    }
    Ok(pieces)
}

fn parse_piece(bytes: &[u8]) -> std::result::Result<Piece, String> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let mut piece = None;
    let mut score = 0.0f32;
    let mut kind = PIECE_NORMAL;
    while !r.done() {
        match r.key()? {
            (1, WIRE_LEN) => {
                let raw = r.bytes()?;
                let text = std::str::from_utf8(raw).map_err(|_| "field `piece` is not UTF-8".to_string())?;
                piece = Some(text.to_string());
            }
            (2, WIRE_32) => score = f32::from_le_bytes(r.fixed::<4>()?),
            (3, WIRE_VARINT) => {
                let v = r.varint()?;
                kind = match v {
                    1..=6 => v as u8,
                    _ => return Err(format!("field `type` has unknown value {v}")),
                };
            }
            (field, wire) => r.skip(field, wire)?,
        }
    }
    let piece = piece.ok_or_else(|| "missing field `piece`".to_string())?;
    Ok(Piece { piece, score, kind })
}

const WIRE_VARINT: u8 = 0;
const WIRE_64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_32: u8 = 5;

/// A cursor over protobuf wire-format bytes; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let start = self.pos;
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(format!("truncated varint at byte {start}"));
            };
            self.pos += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("varint longer than 10 bytes at byte {start}"))
    }

    fn key(&mut self) -> std::result::Result<(u64, u8), String> {
        let at = self.pos;
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return Err(format!("invalid field number 0 at byte {at}"));
        }
        Ok((field, (key & 7) as u8))
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| {
            format!("length {n} at byte {} runs past the end ({} bytes)", self.pos, self.buf.len())
        })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn bytes(&mut self) -> std::result::Result<&'a [u8], String> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| format!("length {n} too large"))?;
        self.take(n)
    }

    fn fixed<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let raw = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(raw);
        Ok(out)
    }

    fn skip(&mut self, field: u64, wire: u8) -> std::result::Result<(), String> {
        match wire {
            WIRE_VARINT => self.varint().map(drop),
            WIRE_64 => self.take(8).map(drop),
            WIRE_LEN => self.bytes().map(drop),
            WIRE_32 => self.take(4).map(drop),
            _ => Err(format!("field {field} has unsupported wire type {wire} at byte {}", self.pos)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn len_field(field: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    /// Serialize `(piece, score, type)` triples as a `ModelProto`, with a trainer spec and an
    /// unknown fixed64 field in between to exercise skipping. `type == 1` is left implicit.
    pub(crate) fn model_bytes(pieces: &[(&str, f32, u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        len_field(2, b"\x08\x01trainer", &mut out);
        for (i, (piece, score, kind)) in pieces.iter().enumerate() {
            let mut p = Vec::new();
            len_field(1, piece.as_bytes(), &mut p);
            p.push(2 << 3 | 5);
            p.extend_from_slice(&score.to_le_bytes());
            if *kind != PIECE_NORMAL {
                varint(3 << 3, &mut p);
                varint(u64::from(*kind), &mut p);
            }
            len_field(1, &p, &mut out);
            if i == 0 {
                varint(99 << 3 | 1, &mut out);
                out.extend_from_slice(&[0; 8]);
            }
        }
        out
    }

    #[test]
    fn parses_hand_built_model() {
        let bytes = model_bytes(&[("<unk>", 0.0, PIECE_UNKNOWN), ("<s>", 0.0, PIECE_CONTROL), ("▁the", -1.5, 1),
                                  ("<0x0A>", 0.0, PIECE_BYTE), ("<x>", 0.0, PIECE_USER_DEFINED)]);
        let pieces = parse_model(&bytes).unwrap();
        assert_eq!(pieces.len(), 5);
        assert_eq!(pieces[2], Piece { piece: "▁the".into(), score: -1.5, kind: PIECE_NORMAL });
        assert_eq!(pieces[0].kind, PIECE_UNKNOWN);
        assert_eq!(pieces[3].kind, PIECE_BYTE);
        assert_eq!(pieces[4].kind, PIECE_USER_DEFINED);
    }

    #[test]
    fn rejects_corrupt_bytes() {
        let good = model_bytes(&[("<unk>", 0.0, PIECE_UNKNOWN), ("a", -1.0, 1)]);
        // Every truncation is either a clean error or (at a record boundary) fewer pieces; never a panic.
        for n in 0..good.len() {
            let _ = parse_model(&good[..n]);
        }
        assert!(parse_model(&good[..good.len() - 3]).unwrap_err().contains("pieces[1]"));
        assert!(parse_model(b"").unwrap_err().contains("no `pieces`"));
        assert!(parse_model(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]).unwrap_err().contains("runs past the end"));
        assert!(parse_model(&[0x0b]).unwrap_err().contains("wire type 3"));
        assert!(parse_model(&[0xff; 12]).unwrap_err().contains("varint"));
        assert!(parse_model(&[0x00]).unwrap_err().contains("field number 0"));
        // A piece that is not UTF-8, and an unknown type value.
        assert!(parse_model(&[0x0a, 0x03, 0x0a, 0x01, 0xff]).unwrap_err().contains("not UTF-8"));
        assert!(parse_model(&[0x0a, 0x05, 0x0a, 0x01, b'a', 0x18, 0x09]).unwrap_err().contains("unknown value 9"));
        // Random bytes never panic.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut buf = Vec::new();
            for _ in 0..(x % 40) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8);
            }
            let _ = parse_model(&buf);
        }
    }
}
