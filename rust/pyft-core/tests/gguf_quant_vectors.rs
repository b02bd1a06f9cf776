//! pyft's ggml quantizers against ggml's own output (`tests/data/gguf/`, see its README):
//! 7 inputs × 10 types quantized byte for byte, ggml's dequantized values (by hash), the spec's
//! dequant formulas, and sensible round-trip errors.

use std::path::{Path, PathBuf};

use pyft_core::gguf::{dequantize_row, quantize_row, quantize_rows, GgmlType};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn f32_le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A NumPy format 1.0 `.npy` file of little-endian f32 in C order: `(shape, values)`.
fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}: not a .npy file", path.display());
    assert_eq!((bytes[6], bytes[7]), (1, 0), "{}: only format 1.0 is supported", path.display());
    let header_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    // The header is a Python dict literal such as
    // {'descr': '<f4', 'fortran_order': False, 'shape': (4, 512), }
    let field = |key: &str| -> &str {
        let start = header.find(&format!("'{key}':")).unwrap_or_else(|| panic!("no `{key}` in {header}"));
        header[start + key.len() + 3..].trim_start()
    };
    assert!(field("descr").starts_with("'<f4'"), "{}: dtype is not <f4: {header}", path.display());
    assert!(field("fortran_order").starts_with("False"), "{}: Fortran order: {header}", path.display());
    let shape_text = field("shape");
    let shape_text = &shape_text[1..shape_text.find(')').unwrap()];
    let shape: Vec<usize> =
        shape_text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    let data = &bytes[10 + header_len..];
    let count: usize = shape.iter().product();
    assert_eq!(data.len(), count * 4, "{}: data size does not match shape {shape:?}", path.display());
    let values = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    (shape, values)
}

struct Case {
    input: String,
    rows: usize,
    n_per_row: usize,
    ty: GgmlType,
    expected: String,
    sha256: String,
}

fn manifest(name: &str, key: Option<&str>) -> Vec<Case> {
    let text = std::fs::read_to_string(data_dir().join(name)).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let list = match key {
        Some(k) => json[k].as_array().unwrap().clone(),
        None => json.as_array().unwrap().clone(),
    };
    list.iter()
        .map(|e| Case {
            input: e["input"].as_str().unwrap().to_owned(),
            rows: e["shape"][0].as_u64().unwrap() as usize,
            n_per_row: e["shape"][1].as_u64().unwrap() as usize,
            ty: GgmlType::from_name(e["type"].as_str().unwrap()).unwrap(),
            expected: e["expected"].as_str().unwrap().to_owned(),
            sha256: e["sha256"].as_str().unwrap().to_owned(),
        })
        .collect()
}

fn all_cases() -> Vec<Case> {
    let mut cases = manifest("manifest.json", None);
    cases.extend(manifest("manifest_extra.json", Some("vectors")));
    cases
}

fn extra_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(data_dir().join("manifest_extra.json")).unwrap()).unwrap()
}

#[test]
fn vectors_cover_every_case_and_type() {
    let cases = all_cases();
    assert_eq!(cases.len(), 70);
    let mut types: Vec<&str> = cases.iter().map(|c| c.ty.name()).collect();
    types.sort_unstable();
    types.dedup();
    assert_eq!(types, ["BF16", "F16", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0"]);
}

#[test]
fn expected_files_match_their_manifest_hash() {
    for case in all_cases() {
        let bytes = std::fs::read(data_dir().join(&case.expected)).unwrap();
        assert_eq!(sha256_hex(&bytes), case.sha256, "{} is corrupted", case.expected);
        assert_eq!(bytes.len(), case.rows * case.ty.row_bytes(case.n_per_row).unwrap(), "{}", case.expected);
    }
}

#[test]
fn quantizers_reproduce_ggml_bytes() {
    let mut failures = Vec::new();
    for case in all_cases() {
        let (shape, x) = read_npy_f32(&data_dir().join(&case.input));
        assert_eq!(shape, [case.rows, case.n_per_row], "{}", case.input);
        let expected = std::fs::read(data_dir().join(&case.expected)).unwrap();

        let mut whole = vec![0u8; expected.len()];
        quantize_rows(case.ty, &x, case.n_per_row, &mut whole).unwrap();
        let row_bytes = case.ty.row_bytes(case.n_per_row).unwrap();
        let mut by_row = vec![0u8; expected.len()];
        for (src, dst) in x.chunks(case.n_per_row).zip(by_row.chunks_mut(row_bytes)) {
            quantize_row(case.ty, src, dst).unwrap();
        }
        for (how, got) in [("quantize_rows", &whole), ("quantize_row", &by_row)] {
            if *got != expected {
                let at = got.iter().zip(&expected).position(|(a, b)| a != b).unwrap();
                let block = at / case.ty.type_size();
                failures.push(format!("{} via {how}: first difference at byte {at} (block {block})", case.expected));
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn dequantizers_reproduce_ggml_values() {
    let hashes = extra_json()["dequant"].clone();
    let mut failures = Vec::new();
    for case in all_cases() {
        let bytes = std::fs::read(data_dir().join(&case.expected)).unwrap();
        let y = dequantize(&case, &bytes);
        if sha256_hex(&f32_le_bytes(&y)) != hashes[&case.expected].as_str().unwrap() {
            failures.push(case.expected.clone());
        }
    }
    assert!(failures.is_empty(), "dequantized values differ from ggml's for {failures:?}");
}

fn dequantize(case: &Case, bytes: &[u8]) -> Vec<f32> {
    let row_bytes = case.ty.row_bytes(case.n_per_row).unwrap();
    let mut y = vec![0f32; case.rows * case.n_per_row];
    for (src, dst) in bytes.chunks(row_bytes).zip(y.chunks_mut(case.n_per_row)) {
        dequantize_row(case.ty, src, dst).unwrap();
    }
    y
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// `get_scale_min_k4` as the spec's packing table describes it.
fn k4_scale_min(j: usize, s: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    };
    (f32::from(sc), f32::from(m))
}

/// The spec's dequant formulas (§4.3-§4.5), element by element, written independently of the crate.
fn spec_dequantize(ty: GgmlType, block: &[u8], e: usize) -> f32 {
    match ty {
        GgmlType::Q8_0 => f16(block) * f32::from(block[2 + e] as i8),
        GgmlType::Q4_0 => {
            let nib = if e < 16 { block[2 + e] & 15 } else { block[2 + e - 16] >> 4 };
            (i32::from(nib) - 8) as f32 * f16(block)
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let (g, l, high) = (e / 64, e % 32, (e / 32) % 2 == 1);
            let qs = if ty == GgmlType::Q4_K { &block[16..] } else { &block[48..] };
            let mut q = if high { qs[32 * g + l] >> 4 } else { qs[32 * g + l] & 15 };
            if ty == GgmlType::Q5_K {
                let bit = 2 * g + usize::from(high);
                q += 16 * ((block[16 + l] >> bit) & 1);
            }
            let (sc, m) = k4_scale_min(e / 32, &block[4..16]);
            (f16(block) * sc) * f32::from(q) - (f16(&block[2..]) * m)
        }
        GgmlType::Q6_K => {
            let (h, r) = (e / 128, e % 128);
            let (k, l) = (r / 32, r % 32);
            let ql = block[64 * h + 32 * (k % 2) + l];
            let low = if k < 2 { ql & 15 } else { ql >> 4 };
            let q = low | ((block[128 + 32 * h + l] >> (2 * k)) & 3) << 4;
            let scale = f32::from(block[192 + e / 16] as i8);
            (f16(&block[208..]) * scale) * (i32::from(q) - 32) as f32
        }
        _ => unreachable!("no spec formula for {}", ty.name()),
    }
}

#[test]
fn dequantizers_follow_the_spec_formulas() {
    for case in all_cases() {
        if !matches!(case.ty, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K) {
            continue;
        }
        let bytes = std::fs::read(data_dir().join(&case.expected)).unwrap();
        let y = dequantize(&case, &bytes);
        let bs = case.ty.block_size();
        for (i, &v) in y.iter().enumerate() {
            let block = &bytes[i / bs * case.ty.type_size()..][..case.ty.type_size()];
            let want = spec_dequantize(case.ty, block, i % bs);
            assert_eq!(v.to_bits(), want.to_bits(), "{} element {i}: {v} vs spec {want}", case.expected);
        }
    }
}

#[test]
fn round_trips_are_close() {
    // Relative RMS error bounds per type for Gaussian weights (measured: F16 2e-4, BF16 1.7e-3,
    // Q8_0 5.4e-3, Q6_K 0.018, Q5_K 0.036, Q5_1 0.038, Q5_0 0.043, Q4_K 0.072, Q4_1 0.078,
    // Q4_0 0.086); the `outliers` input gets twice the bound.
    let bound = |t: GgmlType| match t {
        GgmlType::F16 | GgmlType::F32 => 5e-4,
        GgmlType::BF16 => 4e-3,
        GgmlType::Q8_0 => 0.01,
        GgmlType::Q6_K => 0.03,
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => 0.06,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K => 0.1,
    };
    for case in all_cases() {
        let scale = match case.input.as_str() {
            "in_normal.npy" => 1.0,
            "in_outliers.npy" => 2.0,
            _ => continue,
        };
        let (_, x) = read_npy_f32(&data_dir().join(&case.input));
        let mut q = vec![0u8; case.rows * case.ty.row_bytes(case.n_per_row).unwrap()];
        quantize_rows(case.ty, &x, case.n_per_row, &mut q).unwrap();
        let y = dequantize(&case, &q);
        let err: f64 = x.iter().zip(&y).map(|(a, b)| f64::from(a - b).powi(2)).sum();
        let norm: f64 = x.iter().map(|a| f64::from(*a).powi(2)).sum();
        let rel = (err / norm).sqrt();
        assert!(rel < scale * bound(case.ty), "{}: relative RMS error {rel}", case.expected);
    }
}

/// Every f32 bit pattern through the F16 and BF16 quantizers, hashed, against ggml's
/// `ggml_fp32_to_fp16_row` / `ggml_fp32_to_bf16_row` (includes NaN, subnormals, overflow).
/// Slow in debug builds: `cargo test --release --test gguf_quant_vectors -- --ignored`.
#[test]
#[ignore]
fn float_conversions_match_ggml_exhaustively() {
    let expected = extra_json()["float_conversions"].clone();
    for ty in [GgmlType::F16, GgmlType::BF16] {
        let chunk = 1usize << 24;
        let mut hasher = Sha256::new();
        let mut src = vec![0f32; chunk];
        let mut dst = vec![0u8; 2 * chunk];
        for start in (0..1u64 << 32).step_by(chunk) {
            for (i, v) in src.iter_mut().enumerate() {
                *v = f32::from_bits((start + i as u64) as u32);
            }
            quantize_rows(ty, &src, chunk, &mut dst).unwrap();
            hasher.update(&dst);
        }
        let got: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, expected[ty.name()].as_str().unwrap(), "{}", ty.name());
    }
}
