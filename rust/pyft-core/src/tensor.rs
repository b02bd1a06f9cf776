//! Tensor element types and conversions between their little-endian bytes and f32.

use crate::error::{Error, Result};

/// The element types pyft reads and writes in model files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the top 16 bits of an f32).
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The safetensors name (`F32`, `F16`, `BF16`).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        }
    }

    /// Parse a safetensors dtype name; `what` names the tensor for the error.
    pub fn from_safetensors(name: &str, what: &str) -> Result<DType> {
        match name {
            "F32" => Ok(DType::F32),
            "F16" => Ok(DType::F16),
            "BF16" => Ok(DType::BF16),
            other => Err(Error::Option(format!("tensor `{what}` has dtype {other}; expected F32, F16 or BF16"))),
        }
    }

    /// Parse `fp32`/`float32`, `fp16`/`float16`, `bf16`/`bfloat16`.
    pub fn from_name(name: &str) -> Result<DType> {
        match name {
            "fp32" | "float32" | "f32" => Ok(DType::F32),
            "fp16" | "float16" | "f16" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            other => Err(Error::Option(format!("unknown dtype `{other}` (expected fp32, fp16 or bf16)"))),
        }
    }

    /// The name transformers writes as `torch_dtype`.
    pub fn torch_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }
}

/// Elements converted per parallel task.
const CHUNK: usize = 1 << 16;

/// Decode little-endian elements of `dtype` into f32 (exact for every input type).
pub fn to_f32(bytes: &[u8], dtype: DType) -> Vec<f32> {
    let mut out = vec![0f32; bytes.len() / dtype.size()];
    let pairs: Vec<(&mut [f32], &[u8])> = out.chunks_mut(CHUNK).zip(bytes.chunks(CHUNK * dtype.size())).collect();
    run_chunks(pairs, |(dst, src)| decode_into(src, dtype, dst));
    out
}

/// Encode f32 values as `dtype`, rounding to nearest even once (as torch's `.to(dtype)`).
pub fn from_f32(values: &[f32], dtype: DType) -> Vec<u8> {
    let mut out = vec![0u8; values.len() * dtype.size()];
    let pairs: Vec<(&mut [u8], &[f32])> = out.chunks_mut(CHUNK * dtype.size()).zip(values.chunks(CHUNK)).collect();
    run_chunks(pairs, |(dst, src)| encode_into(src, dtype, dst));
    out
}

/// [`to_f32`] into a caller's buffer, on this thread: `dst.len()` elements from `src`. Always
/// inlined, so a caller compiled for wider vectors (AVX2) vectorises it with them.
#[inline(always)]
pub fn decode_into(src: &[u8], dtype: DType, dst: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
            }
        }
    }
}

/// [`from_f32`] into a caller's buffer, on this thread: `src.len()` elements into `dst`. Always
/// inlined, as [`decode_into`].
#[inline(always)]
pub fn encode_into(src: &[f32], dtype: DType, dst: &mut [u8]) {
    match dtype {
        DType::F32 => {
            for (d, v) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            for (d, v) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            }
        }
        DType::BF16 => {
            for (d, v) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&bf16_bits(*v).to_le_bytes());
            }
        }
    }
}

/// Round f32 values to `dtype` and widen them back, in place (torch's `x.to(dtype).float()`): the
/// values a tensor of `dtype` holds, kept in f32 for further arithmetic.
pub fn round_to_dtype(values: &mut [f32], dtype: DType) {
    match dtype {
        DType::F32 => {}
        DType::F16 => values.iter_mut().for_each(|v| *v = half::f16::from_f32(*v).to_f32()),
        DType::BF16 => values.iter_mut().for_each(|v| *v = f32::from_bits(u32::from(bf16_bits(*v)) << 16)),
    }
}

/// `half::bf16::from_f32(x).to_bits()` without branches, so the encoding loop vectorises: round
/// to nearest even by adding `0x7FFF` plus the kept lowest bit; a NaN keeps its top bits and
/// becomes quiet.
#[inline(always)]
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16;
    let nan = (b & 0x7FFF_FFFF) > 0x7F80_0000;
    (if nan { (b >> 16) | 0x40 } else { rounded }) as u16
}

fn run_chunks<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync + Send) {
    use rayon::prelude::*;
    if items.len() > 1 && crate::parallel::enabled() {
        crate::parallel::install(|| items.into_par_iter().for_each(&f));
    } else {
        items.into_iter().for_each(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 lies exactly between bf16 neighbours 1 and 1 + 2^-7: ties go to even (1.0).
        let x = 1.0f32 + 2f32.powi(-8);
        assert_eq!(to_f32(&from_f32(&[x], DType::BF16), DType::BF16), vec![1.0]);
        let y = 1.0f32 + 3.0 * 2f32.powi(-8);
        assert_eq!(to_f32(&from_f32(&[y], DType::BF16), DType::BF16), vec![1.0 + 2f32.powi(-6)]);
        assert_eq!(to_f32(&from_f32(&[0.1], DType::F32), DType::F32), vec![0.1]);
        assert!(DType::from_name("int8").is_err());
        let mut v = [x, y, 0.1];
        round_to_dtype(&mut v, DType::BF16);
        assert_eq!(from_f32(&v, DType::BF16), from_f32(&[x, y, 0.1], DType::BF16));
        assert_eq!(to_f32(&from_f32(&v, DType::BF16), DType::BF16), v);
    }

    #[test]
    fn bf16_bits_match_half() {
        let mut x = 0x9E37_79B9u32;
        let specials = [0u32, 0x8000_0000, 0x7F80_0000, 0xFF80_0000, 0x7F7F_FFFF, 0x7F7F_8000, 0x7FC0_0001,
                        0xFFFF_FFFF, 0x7F80_0001, 0x0000_8000, 0x0001_8000, 0x3F80_8000, 0x3F81_8000, 1];
        for bits in specials.into_iter().chain((0..1_000_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        })) {
            let v = f32::from_bits(bits);
            assert_eq!(bf16_bits(v), half::bf16::from_f32(v).to_bits(), "{bits:#010x}");
        }
    }
}
