//! Fuzzing the GGUF reader (`pyft_core::gguf::reader`). See `fuzz_support` for the harness.
//!
//! Files are written field by field from a random valid structure (metadata of every value
//! type, arrays, `general.alignment`, tensors of every ggml type with running padded offsets and
//! their data), and each field is, with a small probability, replaced by a hostile value: counts
//! and lengths of 0, 2^63, `u64::MAX` or the bytes left ± 1, unknown or nested value types,
//! negative or huge dimensions, offsets that overlap or leave the file, invalid UTF-8. Then some
//! files get byte-level damage as well.

mod fuzz_support;

use std::path::Path;

use fuzz_support::{interesting_u64, mutate_bytes, Campaign, Outcome, Rng};
use pyft_core::gguf::{dequantize_row, GgmlType, GgufFile, GgufHeader};

/// Writes little-endian fields, replacing each with a hostile value with probability `p`.
struct Writer<'a> {
    rng: &'a mut Rng,
    p: f64,
    out: Vec<u8>,
}

impl Writer<'_> {
    fn hostile(&mut self) -> bool {
        self.rng.chance(self.p)
    }

    fn u32(&mut self, v: u32) {
        let v = if self.hostile() { interesting_u64(self.rng, self.out.len()) as u32 } else { v };
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    /// A value type id: sometimes unknown (13, 255, `u32::MAX`) or ARRAY where a scalar belongs.
    fn type_id(&mut self, v: u32) {
        let v = if self.hostile() { *self.rng.pick(&[9, 13, 255, u32::MAX, 8, 0]) } else { v };
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        let v = if self.hostile() { interesting_u64(self.rng, self.out.len()) } else { v };
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// A u64-length-prefixed string; the text is sometimes not UTF-8, the length sometimes lies.
    fn string(&mut self, s: &str) {
        let mut bytes = s.as_bytes().to_vec();
        if self.hostile() {
            bytes.insert(self.rng.below(bytes.len() + 1), *self.rng.pick(&[0xff, 0x80, 0xc0]));
        }
        self.u64(bytes.len() as u64);
        self.raw(&bytes);
    }
}

const KEYS: &[&str] = &["general.architecture", "general.name", "llama.context_length", "llama.block_count",
                        "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                        "tokenizer.chat_template", "general.file_type", "x"];

/// One metadata value of type `ty` (never ARRAY).
fn scalar(w: &mut Writer, ty: u32) {
    match ty {
        0 | 1 => {
            let b = w.rng.u64() as u8;
            w.raw(&[b]);
        }
        7 => {
            let b = *w.rng.pick(&[0u8, 1, 1, 0, 2, 0xff]);
            w.raw(&[b]);
        }
        2 | 3 => {
            let b = w.rng.bytes(2);
            w.raw(&b);
        }
        4..=6 => {
            let v = w.rng.u64() as u32;
            w.u32(v);
        }
        8 => {
            let s = *w.rng.pick(&["llama", "", "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}",
                                  "héllo", "a\u{0}b"]);
            w.string(s);
        }
        _ => {
            let v = w.rng.u64();
            w.u64(v);
        }
    }
}

fn kv(w: &mut Writer, key: &str, alignment: u32) {
    w.string(key);
    if key == "general.alignment" {
        if !w.hostile() {
            w.type_id(4);
            w.u32(alignment);
        } else if w.rng.chance(0.5) {
            w.type_id(4);
            let a = *w.rng.pick(&[0u32, 3, 48, 1 << 31]);
            w.raw(&a.to_le_bytes());
        } else {
            let ty = *w.rng.pick(&[10u32, 5, 8]);
            w.type_id(ty);
            scalar(w, ty);
        }
        return;
    }
    let ty = w.rng.below(13) as u32;
    w.type_id(ty);
    if ty != 9 {
        scalar(w, ty);
        return;
    }
    let elem = *w.rng.pick(&[8u32, 6, 5, 4, 0, 7, 10, 11, 12, 1, 2, 3]);
    w.type_id(elem);
    let n = w.rng.small(6);
    w.u64(n as u64);
    for _ in 0..n {
        scalar(w, elem);
    }
}

/// A whole file; `p` is the per-field probability of a hostile value.
fn generate(rng: &mut Rng) -> Vec<u8> {
    let p = *rng.pick(&[0.0, 0.01, 0.03, 0.1]);
    let mut w = Writer { rng, p, out: Vec::new() };
    const MAGICS: [&[u8]; 3] = [b"GGUf", b"FUGG", b"\0\0\0\0"];
    let magic = if w.hostile() { MAGICS[w.rng.below(MAGICS.len())] } else { b"GGUF" };
    w.raw(magic);
    let version = if w.hostile() { *w.rng.pick(&[1u32, 2, 4, 3 << 24, 0]) } else { 3 };
    w.raw(&version.to_le_bytes());

    let n_tensors = w.rng.small(4);
    let mut keys: Vec<String> = (0..w.rng.small(6)).map(|i| format!("{}{}", w.rng.pick(KEYS), i)).collect();
    let align = *w.rng.pick(&[32u32, 32, 32, 1, 8, 64]);
    if align != 32 || w.rng.chance(0.1) {
        let at = w.rng.below(keys.len() + 1);
        keys.insert(at, "general.alignment".into());
    }
    if w.rng.chance(w.p * 5.0) && !keys.is_empty() {
        let dup = keys[0].clone();
        keys.push(dup); // duplicate key
    }
    w.u64(n_tensors as u64);
    w.u64(keys.len() as u64);
    for key in &keys {
        kv(&mut w, key, align);
    }
    let align = u64::from(align);
    let mut offset = 0u64;
    let mut sizes = Vec::new();
    for i in 0..n_tensors {
        let t = *w.rng.pick(&GgmlType::ALL);
        let block = t.block_size() as u64;
        let n_dims = w.rng.range(1, 3);
        let mut ne: Vec<u64> = (0..n_dims).map(|_| w.rng.range(0, 3) as u64).collect();
        ne[0] = block * w.rng.range(0, 2) as u64;
        let nbytes = ne.iter().product::<u64>() / block * t.type_size() as u64;
        let name = if w.hostile() { String::new() } else { format!("blk.{i}.w") };
        w.string(&name);
        let dims = if w.hostile() { *w.rng.pick(&[0u32, 5, u32::MAX]) } else { n_dims as u32 };
        w.raw(&dims.to_le_bytes());
        for &d in &ne {
            let d = if w.hostile() { *w.rng.pick(&[u64::MAX, 1 << 62, 1 << 32, 3, 255]) } else { d };
            w.raw(&d.to_le_bytes());
        }
        let ty = if w.hostile() { *w.rng.pick(&[4u32, 5, 11, 29, 31, u32::MAX]) } else { t.id() };
        w.raw(&ty.to_le_bytes());
        w.u64(offset);
        sizes.push(nbytes);
        offset = (offset + nbytes).div_ceil(align) * align;
    }
    while !w.out.len().is_multiple_of(align as usize) {
        w.out.push(0);
    }
    for n in sizes {
        let data = w.rng.bytes(n as usize);
        w.raw(&data);
        while !w.out.len().is_multiple_of(align as usize) {
            w.out.push(0);
        }
    }
    let mut out = w.out;
    if rng.chance(0.25) {
        let ops = rng.range(1, 4);
        mutate_bytes(rng, &mut out, ops);
    }
    out
}

/// The reader's contract: an accepted file's tensors lie inside it with the size their type and
/// shape give, its summary and every row's dequantization work; errors name the file.
fn check(path: &Path, bytes: &[u8]) -> Result<Outcome, String> {
    let header = match GgufHeader::parse(path, bytes) {
        Err(e) => {
            let message = e.to_string();
            if !message.starts_with(&format!("{}: ", path.display())) {
                return Err(format!("error does not start with the file: {message}"));
            }
            return Ok(Outcome::Refused(message));
        }
        Ok(h) => h,
    };
    let file = GgufFile::open(path).map_err(|e| format!("parse accepted the bytes, open refused the file: {e}"))?;
    // (Compared as JSON: a NaN metadata value is not equal to itself.)
    if file.header.to_json(usize::MAX) != header.to_json(usize::MAX) {
        return Err("open and parse disagree".into());
    }
    for t in file.tensors() {
        let block = t.ggml_type.block_size() as u64;
        if t.nbytes != t.n_elements() / block * t.ggml_type.type_size() as u64 {
            return Err(format!("tensor `{}`: {} bytes for {:?} of {}", t.name, t.nbytes, t.ne, t.ggml_type.name()));
        }
        if header.data_offset + t.offset + t.nbytes > bytes.len() as u64 {
            return Err(format!("tensor `{}` ends past the file", t.name));
        }
        let data = file.tensor_bytes(t);
        if (1..=1 << 16).contains(&t.n_elements()) {
            let row_bytes = (t.ne[0] / block) as usize * t.ggml_type.type_size();
            let mut row = vec![0f32; t.ne[0] as usize];
            for chunk in data.chunks_exact(row_bytes) {
                dequantize_row(t.ggml_type, chunk, &mut row).map_err(|e| format!("dequantize `{}`: {e}", t.name))?;
            }
        }
    }
    let _ = header.to_json(4).to_string();
    Ok(Outcome::Accepted)
}

#[test]
fn fuzz_gguf() {
    Campaign::new("gguf", "gguf", 3000).fuzz(check, generate);
}
