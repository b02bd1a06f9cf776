//! ggml quantizers and dequantizers, byte-exact with ggml's reference code.
//!
//! Supported types, both directions: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K,
//! Q6_K. The bytes equal ggml's `ggml_quantize_chunk` without an importance matrix (its
//! `quantize_row_*_ref` code, which `llama-quantize` runs without `--imatrix`) for every finite
//! input; dequantization follows ggml's `dequantize_row_*` formulas. Block layouts and algorithms:
//! `shared/specs/gguf.md` §4 and the per-family modules.
//!
//! A row is `n` f32 values with `n` a multiple of [`GgmlType::block_size`]; it quantizes into
//! [`GgmlType::row_bytes`]`(n)` bytes, blocks in order, no padding. Every block is quantized on
//! its own, so rows and blocks can run in parallel ([`quantize_rows`]).

mod float;
mod k_quants;
mod legacy;

use rayon::prelude::*;

use super::GgmlType;
use crate::error::{Error, Result};

/// Values handed to one parallel task (rounded down to whole blocks; at least one block).
const TASK_VALUES: usize = 1 << 15;

type QuantizeFn = fn(&[f32], &mut [u8]);
type DequantizeFn = fn(&[u8], &mut [f32]);

/// The block kernels of `t`: they take a whole number of blocks and never fail.
fn kernels(t: GgmlType) -> (QuantizeFn, DequantizeFn) {
    match t {
        GgmlType::F32 => (float::quantize_f32, float::dequantize_f32),
        GgmlType::F16 => (float::quantize_f16, float::dequantize_f16),
        GgmlType::BF16 => (float::quantize_bf16, float::dequantize_bf16),
        GgmlType::Q8_0 => (legacy::quantize_q8_0, legacy::dequantize_q8_0),
        GgmlType::Q4_0 => (legacy::quantize_q4_0, legacy::dequantize_q4_0),
        GgmlType::Q4_1 => (legacy::quantize_q4_1, legacy::dequantize_q4_1),
        GgmlType::Q5_0 => (legacy::quantize_q5_0, legacy::dequantize_q5_0),
        GgmlType::Q5_1 => (legacy::quantize_q5_1, legacy::dequantize_q5_1),
        GgmlType::Q4_K => (k_quants::quantize_q4_k, k_quants::dequantize_q4_k),
        GgmlType::Q5_K => (k_quants::quantize_q5_k, k_quants::dequantize_q5_k),
        GgmlType::Q6_K => (k_quants::quantize_q6_k, k_quants::dequantize_q6_k),
    }
}

/// Bytes for `n` values of `t`, or an error naming the type when `n` is not a whole number of blocks.
fn bytes_for(t: GgmlType, n: usize, what: &str) -> Result<usize> {
    t.row_bytes(n).ok_or_else(|| {
        Error::Shape(format!(
            "{}: {what} of {n} values is not a multiple of the block size {}",
            t.name(),
            t.block_size()
        ))
    })
}

fn check_len(t: GgmlType, what: &str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::Shape(format!("{}: {what} has {got} bytes, expected {expected}", t.name())))
    }
}

/// Quantize one row.
///
/// Args:
///     t: the target type.
///     src: `n` f32 values, `n` a multiple of `t.block_size()`.
///     dst: exactly `t.row_bytes(n)` bytes, overwritten with the blocks.
///
/// Errors: [`Error::Shape`] when `src.len()` is not a whole number of blocks or `dst` has the
/// wrong length.
pub fn quantize_row(t: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    let bytes = bytes_for(t, src.len(), "row")?;
    check_len(t, "destination", dst.len(), bytes)?;
    (kernels(t).0)(src, dst);
    Ok(())
}

/// Dequantize one row: the inverse of [`quantize_row`], with ggml's `dequantize_row_*` formulas.
///
/// Args:
///     t: the source type.
///     src: exactly `t.row_bytes(dst.len())` bytes of blocks.
///     dst: `n` f32 outputs, `n` a multiple of `t.block_size()`.
///
/// Errors: [`Error::Shape`] when `dst.len()` is not a whole number of blocks or `src` has the
/// wrong length.
pub fn dequantize_row(t: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let bytes = bytes_for(t, dst.len(), "row")?;
    check_len(t, "source", src.len(), bytes)?;
    (kernels(t).1)(src, dst);
    Ok(())
}

/// Quantize a row-major `[n_rows, n_per_row]` f32 tensor, in parallel on the crate pool.
///
/// The bytes equal calling [`quantize_row`] on each row in turn: blocks never span rows (the
/// row length is a whole number of blocks) and every block is quantized independently.
///
/// Args:
///     t: the target type.
///     src: `n_rows · n_per_row` values.
///     n_per_row: values per row (> 0), a multiple of `t.block_size()`.
///     dst: exactly `n_rows · t.row_bytes(n_per_row)` bytes.
///
/// Errors: [`Error::Shape`] for a zero or misaligned `n_per_row`, a `src` that is not a whole
/// number of rows, or a `dst` of the wrong length.
pub fn quantize_rows(t: GgmlType, src: &[f32], n_per_row: usize, dst: &mut [u8]) -> Result<()> {
    if n_per_row == 0 {
        return Err(Error::Shape(format!("{}: rows must have at least one value", t.name())));
    }
    let row_bytes = bytes_for(t, n_per_row, "row")?;
    if !src.len().is_multiple_of(n_per_row) {
        return Err(Error::Shape(format!(
            "{}: {} values are not a whole number of rows of {n_per_row}",
            t.name(),
            src.len()
        )));
    }
    check_len(t, "destination", dst.len(), src.len() / n_per_row * row_bytes)?;
    let quantize = kernels(t).0;
    let blocks_per_task = (TASK_VALUES / t.block_size()).max(1);
    let (values, bytes) = (blocks_per_task * t.block_size(), blocks_per_task * t.type_size());
    if src.len() > values && crate::parallel::enabled() {
        crate::parallel::install(|| {
            src.par_chunks(values).zip(dst.par_chunks_mut(bytes)).for_each(|(s, d)| quantize(s, d));
        });
    } else {
        quantize(src, dst);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_errors_are_errors() {
        for t in GgmlType::ALL {
            let bs = t.block_size();
            let row = t.row_bytes(bs).unwrap();
            let x = vec![0.5f32; bs];
            assert!(quantize_row(t, &x, &mut vec![0u8; row]).is_ok());
            assert!(quantize_row(t, &x, &mut vec![0u8; row + 1]).is_err());
            assert!(dequantize_row(t, &vec![0u8; row + 1], &mut vec![0f32; bs]).is_err());
            assert!(quantize_rows(t, &x, 0, &mut vec![0u8; row]).is_err());
            assert!(quantize_rows(t, &x, bs, &mut vec![0u8; 2 * row]).is_err());
            if bs > 1 {
                let y = vec![0.5f32; bs + 1];
                let err = quantize_row(t, &y, &mut vec![0u8; row]).unwrap_err().to_string();
                assert!(err.contains(t.name()) && err.contains("block size"), "{err}");
                assert!(dequantize_row(t, &vec![0u8; row], &mut vec![0f32; bs + 1]).is_err());
                assert!(quantize_rows(t, &y, bs + 1, &mut vec![0u8; row]).is_err());
                // Not a whole number of rows.
                assert!(quantize_rows(t, &y[..bs], bs / 2 * 3, &mut vec![0u8; row]).is_err());
            }
        }
    }

    #[test]
    fn empty_input_is_fine() {
        assert!(quantize_rows(GgmlType::Q4_K, &[], 256, &mut []).is_ok());
        assert!(quantize_row(GgmlType::Q8_0, &[], &mut []).is_ok());
    }

    #[test]
    fn rows_equal_row_by_row() {
        // Enough values for several parallel tasks, with a row length that is not a task multiple.
        let n_per_row = 768;
        let x: Vec<f32> = (0..n_per_row * 50).map(|i| ((i as f32) * 0.7311).sin() * (1 + i % 13) as f32).collect();
        for t in GgmlType::ALL {
            let row = t.row_bytes(n_per_row).unwrap();
            let mut whole = vec![0u8; row * 50];
            quantize_rows(t, &x, n_per_row, &mut whole).unwrap();
            let mut by_row = vec![0u8; row * 50];
            for (s, d) in x.chunks(n_per_row).zip(by_row.chunks_mut(row)) {
                quantize_row(t, s, d).unwrap();
            }
            assert_eq!(whole, by_row, "{}", t.name());
        }
    }

    #[test]
    fn first_block_bytes_from_the_spec() {
        // out_normal_*: the first block starts with x = −0.08019184, 0.0032049958, 0.037044566,
        // 0.00763096 and its absolute max is 0.14565496 (spec README). A block made of just those
        // values and the max reproduces the documented Q8_0 scale and first quants.
        let mut x = [0f32; 32];
        x[..4].copy_from_slice(&[-0.08019184, 0.0032049958, 0.037044566, 0.00763096]);
        x[5] = 0.14565496;
        let mut b = [0u8; 34];
        quantize_row(GgmlType::Q8_0, &x, &mut b).unwrap();
        assert_eq!(&b[..6], &[0xb3, 0x14, 0xba, 0x03, 0x20, 0x07]);
        assert_eq!(b[7], 127);
    }
}
