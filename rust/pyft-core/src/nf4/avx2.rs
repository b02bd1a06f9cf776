//! The NF4 encoder's inner loop in AVX2: 32 scaled values to 16 packed bytes per step.
//!
//! Per lane exactly the scalar arithmetic — one f32 multiply `x · inv`, then the count of the 15
//! thresholds strictly below it (a NaN compares false everywhere and gets 0) — so the bytes are
//! identical to [`super::quantize::nf4_code`]'s; only the lanes differ.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::nf4::tables::NF4_THRESHOLDS;
use crate::tensor::DType;

/// Whether this CPU runs the kernels here (AVX2 and F16C).
#[cfg(target_arch = "x86_64")]
pub(crate) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c")
}

/// 8 consecutive elements at `p` (little-endian `dtype`) widened exactly to f32.
///
/// # Safety
/// AVX2 + F16C; `p` points at `8 · dtype.size()` readable bytes.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn load8(p: *const u8, dtype: DType) -> __m256 {
    match dtype {
        DType::F32 => _mm256_loadu_ps(p.cast()),
        DType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
        DType::BF16 => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))),
    }
}

/// `(max |x|, all finite)` of a block of `src.len() / dtype.size()` elements, a multiple of 32.
///
/// # Safety
/// AVX2 + F16C ([`available`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn block_absmax(src: &[u8], dtype: DType) -> (f32, bool) {
    let step = 8 * dtype.size();
    debug_assert!(src.len().is_multiple_of(4 * step));
    let sign = _mm256_set1_ps(-0.0);
    let max_finite = _mm256_set1_ps(f32::MAX);
    let (mut m0, mut m1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    for pair in src.chunks_exact(2 * step) {
        let a = _mm256_andnot_ps(sign, load8(pair.as_ptr(), dtype));
        let b = _mm256_andnot_ps(sign, load8(pair.as_ptr().add(step), dtype));
        // |x| <= MAX is false for infinities and NaN.
        finite = _mm256_and_ps(finite, _mm256_and_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(a, max_finite), _mm256_cmp_ps::<_CMP_LE_OQ>(b, max_finite)));
        m0 = _mm256_max_ps(m0, a);
        m1 = _mm256_max_ps(m1, b);
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_max_ps(m0, m1));
    let amax = lanes.iter().fold(0f32, |m, &v| if v > m { v } else { m });
    (amax, _mm256_movemask_ps(finite) == 0xFF)
}

/// Encode a block of little-endian `dtype` elements (a multiple of 32) scaled by `inv` into half
/// as many bytes, the first of each pair in the high nibble.
///
/// # Safety
/// AVX2 + F16C ([`available`]); `out.len()` is half the element count.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn encode_scaled(src: &[u8], dtype: DType, inv: f32, out: &mut [u8]) {
    let step = 8 * dtype.size();
    debug_assert!(src.len().is_multiple_of(4 * step) && out.len() * 2 * dtype.size() == src.len());
    let thresholds: [__m256; 15] = std::array::from_fn(|i| _mm256_set1_ps(NF4_THRESHOLDS[i]));
    let vinv = _mm256_set1_ps(inv);
    // Bytes 2k, 2k+1 → 16·c[2k] + c[2k+1].
    let weights = _mm256_set1_epi16(0x0110);
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let codes8 = |p: *const u8| -> __m256i {
        // SAFETY (for the load): `p` points at 8 readable elements inside `src`.
        let xn = _mm256_mul_ps(unsafe { load8(p, dtype) }, vinv);
        let mut c = _mm256_setzero_si256();
        for t in &thresholds {
            // All-ones (-1) where xn > t: subtracting counts the thresholds below.
            c = _mm256_sub_epi32(c, _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(xn, *t)));
        }
        c
    };
    for (chunk, dst) in src.chunks_exact(4 * step).zip(out.chunks_exact_mut(16)) {
        let p = chunk.as_ptr();
        let (c0, c1, c2, c3) = (codes8(p), codes8(p.add(step)), codes8(p.add(2 * step)), codes8(p.add(3 * step)));
        // i32 → i16 → u8 within 128-bit lanes, then undo the lane interleaving.
        let bytes = _mm256_packus_epi16(_mm256_packs_epi32(c0, c1), _mm256_packs_epi32(c2, c3));
        let bytes = _mm256_permutevar8x32_epi32(bytes, order);
        let pairs = _mm256_maddubs_epi16(bytes, weights);
        let packed = _mm256_packus_epi16(pairs, pairs);
        let packed = _mm256_permute4x64_epi64::<0b1000>(packed);
        _mm_storeu_si128(dst.as_mut_ptr().cast(), _mm256_castsi256_si128(packed));
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::nf4::quantize::nf4_code;

    #[test]
    fn same_bytes_as_scalar() {
        if !available() {
            return;
        }
        let mut x: Vec<f32> = Vec::new();
        for t in NF4_THRESHOLDS {
            x.extend([t, f32::from_bits(t.to_bits() + 1), f32::from_bits(t.to_bits() - 1), -t]);
        }
        x.extend([1.0, -1.0, 0.0, -0.0, f32::NAN, 2.0, -2.0, 1e-30]);
        let mut seed = 12345u64;
        while x.len() < 4096 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            x.push(((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.2 - 1.1);
        }
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let src = crate::tensor::from_f32(&x, dtype);
            let widened = crate::tensor::to_f32(&src, dtype);
            for inv in [1.0f32, 0.731, 17.5] {
                let mut fast = vec![0u8; x.len() / 2];
                // SAFETY: AVX2 + F16C checked above.
                unsafe { encode_scaled(&src, dtype, inv, &mut fast) };
                let slow: Vec<u8> =
                    widened.chunks_exact(2).map(|p| (nf4_code(p[0] * inv) << 4) | nf4_code(p[1] * inv)).collect();
                assert_eq!(fast, slow, "{dtype:?} inv {inv}");
            }
            let finite: Vec<f32> = widened.iter().map(|v| if v.is_finite() { *v } else { 0.5 }).collect();
            let src = crate::tensor::from_f32(&finite, dtype);
            let want = finite.iter().fold(0f32, |m, v| m.max(v.abs()));
            // SAFETY: as above.
            assert_eq!(unsafe { block_absmax(&src, dtype) }, (want, true), "{dtype:?}");
            let mut bad = finite.clone();
            bad[77] = f32::INFINITY;
            // SAFETY: as above.
            assert!(!unsafe { block_absmax(&crate::tensor::from_f32(&bad, dtype), dtype) }.1);
        }
    }
}
