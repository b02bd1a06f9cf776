//! Double quantization of NF4 block scales (QLoRA's "nested" quantization).
//!
//! The f32 block scales lose their mean (`offset`), then are quantized in blocks of 256 with
//! bitsandbytes' signed 8-bit dynamic map CODE8: one f32 `nested_absmax` per 256 scales and one
//! byte per scale. Memory per weight drops from 32/64 to 8/64 + 32/(64·256) bits.
//!
//! How a scaled value picks its byte depends on the bitsandbytes backend (spec `nf4.md` §3.1):
//! the CUDA kernel takes the nearest CODE8 entry (exact ties to the even index); the CPU library
//! looks the value up in a 65 536-bin table, which differs for 0.1–0.2 % of the values. Both
//! reconstruct a scale to within one 8-bit step.

use std::sync::OnceLock;

use crate::nf4::quantize::Compat;
use crate::nf4::tables::CODE8;

/// Block scales per nested scale (bitsandbytes' fixed `blocksize=256` for the nested step).
pub const NESTED_BLOCKSIZE: usize = 256;

/// Double-quantized block scales.
#[derive(Debug, Clone, PartialEq)]
pub struct NestedScales {
    /// One CODE8 index per block scale: `u8 [nb]`.
    pub q8: Vec<u8>,
    /// `max |absmax - offset|` per 256 block scales: `f32 [ceil(nb / 256)]`.
    pub nested_absmax: Vec<f32>,
    /// The mean that was subtracted.
    pub offset: f32,
}

/// The mean of the block scales, accumulated in f64 and rounded to f32.
///
/// bitsandbytes uses torch's float32 `mean()`, whose summation order depends on the CPU's vector
/// width and thread count; the two agree for most inputs and differ by at most an ulp otherwise.
/// The offset is stored in the checkpoint, so either loads exactly. Callers that must match
/// bitsandbytes bit for bit pass torch's value to [`double_quantize`] instead.
pub fn mean_offset(absmax: &[f32]) -> f32 {
    let sum: f64 = absmax.iter().map(|&a| f64::from(a)).sum();
    (sum / absmax.len().max(1) as f64) as f32
}

/// Quantize `absmax - offset` with CODE8 in blocks of 256.
///
/// Args:
///     absmax: the f32 block scales of an NF4 tensor, `[nb]`.
///     offset: the value subtracted first (normally [`mean_offset`]).
///     compat: [`Compat::BnbCpu`] for the CPU library's lookup table, [`Compat::BnbCuda`] for the
///         CUDA kernel's nearest-entry rule.
pub fn double_quantize(absmax: &[f32], offset: f32, compat: Compat) -> NestedScales {
    let mut q8 = vec![0u8; absmax.len()];
    let mut nested_absmax = Vec::with_capacity(absmax.len().div_ceil(NESTED_BLOCKSIZE));
    let lut = match compat {
        Compat::BnbCpu => Some(cpu_lut()),
        Compat::BnbCuda => None,
    };
    for (scales, codes) in absmax.chunks(NESTED_BLOCKSIZE).zip(q8.chunks_mut(NESTED_BLOCKSIZE)) {
        let mut amax = 0f32;
        for &a in scales {
            amax = amax.max((a - offset).abs());
        }
        nested_absmax.push(amax);
        if amax == 0.0 {
            // Both backends give code 0 for a block of equal scales (CUDA: 0·inf = NaN → 0).
            codes.fill(0);
            continue;
        }
        let inv = 1.0 / amax;
        for (c, &a) in codes.iter_mut().zip(scales) {
            let vn = (a - offset) * inv;
            *c = match lut {
                Some(lut) => lut[lut_index(vn)],
                None => nearest_code8(vn),
            };
        }
    }
    NestedScales { q8, nested_absmax, offset }
}

/// CUDA rule: the nearest CODE8 entry decided on f32 midpoints, an exact tie going to the even
/// index (what the kernel's binary search from pivot 127 produces); NaN gives 0.
pub fn nearest_code8(vn: f32) -> u8 {
    if vn.is_nan() {
        return 0;
    }
    let mids = midpoints();
    let c = mids.partition_point(|&m| m < vn);
    let code = if c < mids.len() && mids[c] == vn && c % 2 == 1 { c + 1 } else { c };
    code as u8
}

fn midpoints() -> &'static [f32; 255] {
    static MIDS: OnceLock<[f32; 255]> = OnceLock::new();
    MIDS.get_or_init(|| std::array::from_fn(|k| 0.5 * (CODE8[k] + CODE8[k + 1])))
}

/// Bins of the CPU library's table over `[-1, 1]`.
const LUT_SIZE: usize = 65_536;

/// The CPU library's table: bin `i` stands for `-1 + 2i/65535` and holds the first CODE8 index
/// whose upper midpoint is not below that value.
fn cpu_lut() -> &'static [u8] {
    static LUT: OnceLock<Vec<u8>> = OnceLock::new();
    LUT.get_or_init(|| {
        let mids = midpoints();
        let mut lut = vec![0u8; LUT_SIZE];
        let mut code = 0usize;
        for (i, slot) in lut.iter_mut().enumerate() {
            let v = -1.0f32 + (2.0f32 * i as f32) / (LUT_SIZE - 1) as f32;
            while code < mids.len() && mids[code] < v {
                code += 1;
            }
            *slot = code as u8;
        }
        lut
    })
}

/// The CPU library's bin of a scaled value: `trunc((clamp(v, -1, 1) + 1) · 0.5 · 65535 + 0.5)`.
fn lut_index(vn: f32) -> usize {
    let v = vn.clamp(-1.0, 1.0);
    ((v + 1.0) * 0.5 * (LUT_SIZE - 1) as f32 + 0.5) as u16 as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_c() {
        // spec nf4.md §5 C: four planted block maxima.
        let absmax = [f32::from_bits(0x3ca3d70a), f32::from_bits(0x3cf5c28f), f32::from_bits(0x3ccccccd), f32::from_bits(0x3d4ccccd)];
        let offset = mean_offset(&absmax);
        assert_eq!(offset.to_bits(), 0x3d000000);
        for compat in [Compat::BnbCpu, Compat::BnbCuda] {
            let s = double_quantize(&absmax, offset, compat);
            assert_eq!(s.q8, [28, 75, 47, 255]);
            assert_eq!(s.nested_absmax[0].to_bits(), 0x3c99999a);
        }
    }

    #[test]
    fn nearest_rule_ties_go_to_even() {
        for k in 0..255 {
            let m = 0.5 * (CODE8[k] + CODE8[k + 1]);
            let want = if k % 2 == 0 { k } else { k + 1 };
            assert_eq!(nearest_code8(m) as usize, want, "midpoint {k}");
            assert_eq!(nearest_code8(CODE8[k]) as usize, k);
        }
        assert_eq!(nearest_code8(f32::NAN), 0);
        assert_eq!(nearest_code8(1.0), 255);
        assert_eq!(nearest_code8(-1.0), 0);
    }

    #[test]
    fn equal_scales_give_zero_codes() {
        let s = double_quantize(&[0.5; 300], 0.5, Compat::BnbCpu);
        assert!(s.q8.iter().all(|&c| c == 0));
        assert_eq!(s.nested_absmax, [0.0, 0.0]);
    }
}
