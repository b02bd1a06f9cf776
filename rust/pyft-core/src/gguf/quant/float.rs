//! F32, F16 and BF16 rows, and the scalar f32 ↔ f16/bf16 conversions every quantizer shares.
//!
//! The conversions reproduce ggml's `ggml_compute_fp32_to_fp16` / `ggml_compute_fp32_to_bf16`
//! bit for bit (`shared/specs/gguf.md` §4.1): round to nearest even, overflow to ±inf,
//! subnormals kept, and every NaN becomes the quiet NaN `sign | 0x7e00` (f16) or keeps its upper
//! half with the quiet bit forced (bf16).

/// f32 → IEEE binary16 bits, rounding to nearest even, as ggml does.
#[inline]
pub(crate) fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let abs = bits & 0x7fff_ffff;
    if abs > 0x7f80_0000 {
        // NaN: ggml drops the payload.
        return sign | 0x7e00;
    }
    if abs >= 0x477f_f000 {
        // |x| ≥ 65520 (the midpoint between f16's max 65504 and 2^16) rounds to infinity.
        return sign | 0x7c00;
    }
    if abs >= 0x3880_0000 {
        // Normal f16 (|x| ≥ 2^-14): rebias the exponent (127 → 15), then drop 13 mantissa bits
        // with round-half-to-even; a carry out of the mantissa correctly bumps the exponent.
        let rebased = abs - ((127 - 15) << 23);
        let rounded = rebased + 0x0fff + ((rebased >> 13) & 1);
        return sign | (rounded >> 13) as u16;
    }
    // Subnormal f16 or zero: the encoding is |x| / 2^-24 rounded to an integer (≤ 1024; 1024 is
    // the smallest normal, 0x0400). Scaling by 2^24 is exact.
    let units = (f32::from_bits(abs) * 16_777_216.0).round_ties_even();
    sign | units as u16
}

/// IEEE binary16 bits → f32 (exact).
#[inline]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// f32 → bfloat16 bits: the upper half of the f32, rounded to nearest even; a NaN keeps its upper
/// half with the quiet bit (0x40) set.
#[inline]
pub(crate) fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    // No overflow: the largest non-NaN pattern is 0xff80_0000.
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// bfloat16 bits → f32 (exact).
#[inline]
pub(crate) fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

pub(super) fn quantize_f32(src: &[f32], dst: &mut [u8]) {
    for (d, v) in dst.chunks_exact_mut(4).zip(src) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

pub(super) fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

pub(super) fn quantize_f16(src: &[f32], dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx") && std::is_x86_feature_detected!("f16c") {
        // SAFETY: the CPU supports AVX and F16C (checked just above).
        unsafe { quantize_f16_f16c(src, dst) };
        return;
    }
    quantize_f16_scalar(src, dst);
}

fn quantize_f16_scalar(src: &[f32], dst: &mut [u8]) {
    for (d, v) in dst.chunks_exact_mut(2).zip(src) {
        d.copy_from_slice(&f32_to_f16(*v).to_le_bytes());
    }
}

/// F16C's `vcvtps2ph` rounds to nearest even with IEEE overflow and subnormal handling, which is
/// exactly [`f32_to_f16`] except for NaN payloads: blocks holding a NaN take the scalar path.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn quantize_f16_f16c(src: &[f32], dst: &mut [u8]) {
    use std::arch::x86_64::{
        __m128i, _mm256_cmp_ps, _mm256_cvtps_ph, _mm256_loadu_ps, _mm256_movemask_ps, _mm_storeu_si128, _CMP_UNORD_Q,
        _MM_FROUND_TO_NEAREST_INT,
    };
    let n = src.len().min(dst.len() / 2);
    let full = n / 8 * 8;
    for i in (0..full).step_by(8) {
        // SAFETY: `i + 8 <= n` values are in bounds of `src`, and `2 * (i + 8) <= dst.len()`.
        let x = unsafe { _mm256_loadu_ps(src.as_ptr().add(i)) };
        if _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(x, x)) != 0 {
            quantize_f16_scalar(&src[i..i + 8], &mut dst[2 * i..2 * i + 16]);
            continue;
        }
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
        // SAFETY: as above; unaligned 16-byte store into `dst[2i .. 2i + 16]`.
        unsafe { _mm_storeu_si128(dst.as_mut_ptr().add(2 * i).cast::<__m128i>(), h) };
    }
    quantize_f16_scalar(&src[full..n], &mut dst[2 * full..2 * n]);
}

pub(super) fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
    }
}

pub(super) fn quantize_bf16(src: &[f32], dst: &mut [u8]) {
    for (d, v) in dst.chunks_exact_mut(2).zip(src) {
        d.copy_from_slice(&f32_to_bf16(*v).to_le_bytes());
    }
}

pub(super) fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_matches_round_to_nearest_even() {
        // Strided sweep over every f32 bit pattern; the `half` crate is RNE too and only the
        // NaN encoding differs (ggml: canonical quiet NaN).
        let mut bits = 0u32;
        loop {
            let x = f32::from_bits(bits);
            let ours = f32_to_f16(x);
            if x.is_nan() {
                assert_eq!(ours & 0x7fff, 0x7e00, "{bits:#010x}");
            } else {
                assert_eq!(ours, half::f16::from_f32(x).to_bits(), "{bits:#010x}");
            }
            match bits.checked_add(65_521) {
                Some(b) => bits = b,
                None => break,
            }
        }
    }

    #[test]
    fn f16c_path_equals_the_scalar_conversion() {
        // Every f16 boundary region: normals, subnormals, overflow, ties, signed zeros, NaN, inf.
        let mut xs: Vec<f32> = (0..200_003u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761))).collect();
        xs.extend([0.0, -0.0, 65504.0, 65519.0, 65520.0, 1e-8, 5.96e-8, 2.98e-8, f32::NAN, -f32::INFINITY]);
        let mut fast = vec![0u8; xs.len() * 2];
        let mut slow = vec![0u8; xs.len() * 2];
        quantize_f16(&xs, &mut fast);
        quantize_f16_scalar(&xs, &mut slow);
        assert_eq!(fast, slow);
    }

    #[test]
    fn f16_edge_cases() {
        assert_eq!(f32_to_f16(0.0), 0x0000);
        assert_eq!(f32_to_f16(-0.0), 0x8000);
        assert_eq!(f32_to_f16(65504.0), 0x7bff);
        assert_eq!(f32_to_f16(65519.99), 0x7bff);
        assert_eq!(f32_to_f16(65520.0), 0x7c00);
        assert_eq!(f32_to_f16(f32::NEG_INFINITY), 0xfc00);
        assert_eq!(f32_to_f16(f32::from_bits(0xffc0_1234)), 0xfe00);
        assert_eq!(f32_to_f16(2f32.powi(-24)), 0x0001); // smallest subnormal
        assert_eq!(f32_to_f16(2f32.powi(-25)), 0x0000); // tie → even (0)
        assert_eq!(f32_to_f16(3.0 * 2f32.powi(-25)), 0x0002); // tie → even (2)
        assert_eq!(f32_to_f16(2f32.powi(-14) * (1.0 - 2f32.powi(-12))), 0x0400); // rounds up into normals
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00); // tie → even
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
    }

    /// Exhaustive check against `half` over all 2^32 inputs (run with `--release --ignored`).
    #[test]
    #[ignore]
    fn f16_exhaustive() {
        for bits in 0..=u32::MAX {
            let x = f32::from_bits(bits);
            if !x.is_nan() {
                assert_eq!(f32_to_f16(x), half::f16::from_f32(x).to_bits(), "{bits:#010x}");
            }
        }
    }

    #[test]
    fn bf16_rounding_and_nan() {
        assert_eq!(f32_to_bf16(1.0 + 2f32.powi(-8)), 0x3f80); // tie → even
        assert_eq!(f32_to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x7f80_0001)), 0x7fc0); // signalling NaN made quiet
        assert_eq!(f32_to_bf16(f32::from_bits(0xff81_0000)), 0xffc1);
        assert_eq!(f32_to_bf16(f32::MAX), 0x7f80); // rounds up to infinity
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
    }
}
