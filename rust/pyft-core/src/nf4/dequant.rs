//! NF4 back to f32, bit for bit like bitsandbytes' `dequantize_4bit` before its final cast:
//! `w = fp32(NF4[code] · absmax[block])`, with double-quantized scales rebuilt first as
//! `fp32(fp32(CODE8[q8] · nested_absmax) + offset)` (two roundings; Rust never fuses them).

use crate::error::{Error, Result};
use crate::nf4::double_quant::NESTED_BLOCKSIZE;
use crate::nf4::quantize::Nf4Layout;
use crate::nf4::tables::NF4_CODE;

/// Rebuild f32 block scales from their double quantization.
///
/// Args:
///     q8: `u8 [nb]` codes; nested_absmax: `f32 [ceil(nb / 256)]`; nested_code: the stored
///     dynamic map (`f32 [256]`, normally CODE8); offset: the subtracted mean.
pub fn rebuild_absmax(q8: &[u8], nested_absmax: &[f32], nested_code: &[f32], offset: f32) -> Result<Vec<f32>> {
    if nested_code.len() != 256 {
        return Err(Error::Shape(format!("nested_quant_map has {} values, expected 256", nested_code.len())));
    }
    if nested_absmax.len() != q8.len().div_ceil(NESTED_BLOCKSIZE) {
        return Err(Error::Shape(format!(
            "nested_absmax has {} values; {} block scales need {}",
            nested_absmax.len(),
            q8.len(),
            q8.len().div_ceil(NESTED_BLOCKSIZE)
        )));
    }
    Ok(q8
        .iter()
        .enumerate()
        .map(|(i, &c)| nested_code[c as usize] * nested_absmax[i / NESTED_BLOCKSIZE] + offset)
        .collect())
}

/// Dequantize elements `first .. first + out.len()` of an NF4 tensor into `out`.
///
/// Args:
///     packed: `(n + 1) / 2` bytes; absmax: `f32 [ceil(n / blocksize)]`.
///
/// Errors: [`Error::Shape`] when the buffers do not fit `layout` or the range runs past `n`.
pub fn dequantize_into(packed: &[u8], absmax: &[f32], layout: Nf4Layout, first: usize, out: &mut [f32]) -> Result<()> {
    if packed.len() != layout.packed_len() || absmax.len() != layout.blocks() {
        return Err(Error::Shape(format!(
            "NF4 tensor of {} elements (blocksize {}) needs {} packed bytes and {} scales, got {} and {}",
            layout.n,
            layout.blocksize,
            layout.packed_len(),
            layout.blocks(),
            packed.len(),
            absmax.len()
        )));
    }
    if first + out.len() > layout.n {
        return Err(Error::Shape(format!("NF4 range {first}..{} runs past {} elements", first + out.len(), layout.n)));
    }
    for (k, o) in out.iter_mut().enumerate() {
        let i = first + k;
        let byte = packed[i / 2];
        let code = if i.is_multiple_of(2) { byte >> 4 } else { byte & 0x0F };
        *o = NF4_CODE[code as usize] * absmax[i / layout.blocksize];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_a_round_trip() {
        // spec nf4.md §5 A: one partial block with absmax 1.
        let packed = [0xc0, 0xa7, 0xf6, 0xb2];
        let mut out = [0f32; 8];
        dequantize_into(&packed, &[1.0], Nf4Layout::new(8, 64).unwrap(), 0, &mut out).unwrap();
        let codes = [12, 0, 10, 7, 15, 6, 11, 2];
        assert_eq!(out, codes.map(|c| NF4_CODE[c]));
        let mut tail = [0f32; 3];
        dequantize_into(&packed, &[1.0], Nf4Layout::new(8, 64).unwrap(), 5, &mut tail).unwrap();
        assert_eq!(tail, [NF4_CODE[6], NF4_CODE[11], NF4_CODE[2]]);
        assert!(dequantize_into(&packed, &[1.0], Nf4Layout::new(8, 64).unwrap(), 6, &mut tail).is_err());
    }
}
