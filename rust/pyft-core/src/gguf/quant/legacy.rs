//! ggml's 32-value block quantizers: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (`quantize_row_*_ref` and
//! `dequantize_row_*` in ggml's `ggml-quants.c`; `shared/specs/gguf.md` §4.3).
//!
//! Block layouts (little-endian, `f16` = IEEE binary16):
//! - Q8_0 (34 bytes): `f16 d; i8 qs[32]`, value = `d · q`.
//! - Q4_0 (18 bytes): `f16 d; u8 qs[16]`, value = `d · (q − 8)`.
//! - Q4_1 (20 bytes): `f16 d; f16 m; u8 qs[16]`, value = `d · q + m`.
//! - Q5_0 (22 bytes): `f16 d; u8 qh[4]; u8 qs[16]`, value = `d · (q − 16)`.
//! - Q5_1 (24 bytes): `f16 d; f16 m; u8 qh[4]; u8 qs[16]`, value = `d · q + m`.
//!
//! Nibbles: `qs[j]` holds element `j` in its low nibble and element `j + 16` in its high nibble.
//! The 5-bit types keep each element's bit 4 in the little-endian u32 `qh`, bit `e` for element `e`.
//!
//! These formats use the f32 scale `d` (not its f16 rounding) to quantize.

use super::float::{f16_to_f32, f32_to_f16};

const QK: usize = 32;

/// C's float → integer conversion as x86-64 executes it (`cvttss2si`): truncation toward zero,
/// and the "integer indefinite" `i32::MIN` for NaN or out-of-range values. ggml then keeps the low
/// byte (`(int8_t)`/`(uint8_t)` casts), which `as i8`/`as u8` reproduce.
#[inline]
fn c_trunc(v: f32) -> i32 {
    if v.abs() < 2_147_483_648.0 {
        v as i32
    } else {
        i32::MIN
    }
}

/// C `roundf` (half away from zero) then [`c_trunc`], without a libm call for the usual range:
/// for |v| < 2^23 the truncation and the fraction `v - trunc(v)` are exact, so adding ±1 when
/// |fraction| ≥ 0.5 is exactly `roundf`; larger values, infinities and NaN take the library path.
#[inline]
fn round_away_trunc(v: f32) -> i32 {
    if v.abs() < 8_388_608.0 {
        let t = v as i32;
        let f = v - t as f32;
        t + i32::from(f >= 0.5) - i32::from(f <= -0.5)
    } else {
        c_trunc(v.round())
    }
}

/// The element with the largest magnitude, sign kept, first on ties (0 for an all-zero block).
#[inline]
fn signed_absmax(x: &[f32; QK]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Smallest and largest element.
#[inline]
fn min_max(x: &[f32; QK]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

#[inline]
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

#[inline]
fn read_f16(b: &[u8]) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[0], b[1]]))
}

// ---------------------------------------------------------------- Q8_0

pub(super) fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { quantize_q8_0_avx2(src, dst) };
        return;
    }
    quantize_q8_0_scalar(src, dst);
}

/// Q8_0 with AVX2: the same f32 operations per element as the scalar code (abs max, one multiply
/// by the f32 inverse scale, round half away from zero, truncate), eight lanes at a time. Blocks
/// holding a NaN or infinity take the scalar path, which reproduces x86's C conversions for them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_q8_0_avx2(src: &[f32], dst: &mut [u8]) {
    use std::arch::x86_64::{
        _mm256_add_epi32, _mm256_andnot_ps, _mm256_castps_si256, _mm256_cmp_ps, _mm256_cvttps_epi32,
        _mm256_loadu_ps, _mm256_max_ps, _mm256_movemask_ps, _mm256_mul_ps, _mm256_round_ps, _mm256_set1_ps,
        _mm256_storeu_ps, _mm256_storeu_si256, _mm256_sub_epi32, _mm256_sub_ps, _CMP_GE_OQ, _CMP_LE_OQ, _CMP_NLT_UQ,
        _MM_FROUND_NO_EXC, _MM_FROUND_TO_ZERO,
    };
    let sign = _mm256_set1_ps(-0.0);
    for (x, y) in src.as_chunks::<QK>().0.iter().zip(dst.as_chunks_mut::<34>().0) {
        // SAFETY: `x` holds 32 f32: four unaligned 8-lane loads in bounds.
        let v = unsafe { [0, 8, 16, 24].map(|o| _mm256_loadu_ps(x.as_ptr().add(o))) };
        let abs = v.map(|l| _mm256_andnot_ps(sign, l));
        // Not finite (|x| >= inf, or NaN: unordered) anywhere: scalar path.
        let inf = _mm256_set1_ps(f32::INFINITY);
        if abs.iter().any(|&a| _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NLT_UQ>(a, inf)) != 0) {
            quantize_q8_0_scalar(x, y);
            continue;
        }
        let m = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
        let mut lanes = [0f32; 8];
        // SAFETY: 8 f32 stored into an 8-element array.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
        let amax = lanes.iter().fold(0f32, |a, &b| if a > b { a } else { b });
        let d = amax / 127.0;
        let id = _mm256_set1_ps(inverse(d));
        y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        let half = _mm256_set1_ps(0.5);
        let neg_half = _mm256_set1_ps(-0.5);
        for (k, &l) in v.iter().enumerate() {
            let r = _mm256_mul_ps(l, id);
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(r);
            let f = _mm256_sub_ps(r, t);
            // q = trunc(r) + (f >= 0.5) - (f <= -0.5); compare masks are -1 where true.
            let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(f, half));
            let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(f, neg_half));
            let q = _mm256_add_epi32(_mm256_sub_epi32(_mm256_cvttps_epi32(t), up), down);
            let mut ints = [0i32; 8];
            // SAFETY: 8 i32 stored into an 8-element array.
            unsafe { _mm256_storeu_si256(ints.as_mut_ptr().cast(), q) };
            for (j, &n) in ints.iter().enumerate() {
                y[2 + 8 * k + j] = n as u8;
            }
        }
    }
}

fn quantize_q8_0_scalar(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.as_chunks::<QK>().0.iter().zip(dst.as_chunks_mut::<34>().0) {
        let mut amax = 0f32;
        for &v in x {
            let a = v.abs();
            amax = if amax > a { amax } else { a };
        }
        let d = amax / 127.0;
        let id = inverse(d);
        y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        for (q, &v) in y[2..].iter_mut().zip(x) {
            *q = round_away_trunc(v * id) as u8;
        }
    }
}

pub(super) fn dequantize_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.as_chunks::<34>().0.iter().zip(dst.as_chunks_mut::<QK>().0) {
        let d = read_f16(b);
        for (v, &q) in y.iter_mut().zip(&b[2..]) {
            *v = f32::from(q as i8) * d;
        }
    }
}

// ---------------------------------------------------------------- Q4_0, Q4_1

pub(super) fn quantize_q4_0(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.as_chunks::<QK>().0.iter().zip(dst.as_chunks_mut::<18>().0) {
        let d = signed_absmax(x) / -8.0;
        let id = inverse(d);
        y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        let q = |v: f32| (c_trunc(v * id + 8.5) as i8).min(15) as u8;
        for j in 0..QK / 2 {
            y[2 + j] = q(x[j]) | q(x[j + QK / 2]) << 4;
        }
    }
}

pub(super) fn dequantize_q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.as_chunks::<18>().0.iter().zip(dst.as_chunks_mut::<QK>().0) {
        let d = read_f16(b);
        for j in 0..QK / 2 {
            y[j] = (i32::from(b[2 + j] & 0x0f) - 8) as f32 * d;
            y[j + QK / 2] = (i32::from(b[2 + j] >> 4) - 8) as f32 * d;
        }
    }
}

pub(super) fn quantize_q4_1(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.as_chunks::<QK>().0.iter().zip(dst.as_chunks_mut::<20>().0) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = inverse(d);
        y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        y[2..4].copy_from_slice(&f32_to_f16(min).to_le_bytes());
        let q = |v: f32| (c_trunc((v - min) * id + 0.5) as i8).min(15) as u8;
        for j in 0..QK / 2 {
            y[4 + j] = q(x[j]) | q(x[j + QK / 2]) << 4;
        }
    }
}

pub(super) fn dequantize_q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.as_chunks::<20>().0.iter().zip(dst.as_chunks_mut::<QK>().0) {
        let (d, m) = (read_f16(b), read_f16(&b[2..]));
        for j in 0..QK / 2 {
            y[j] = f32::from(b[4 + j] & 0x0f) * d + m;
            y[j + QK / 2] = f32::from(b[4 + j] >> 4) * d + m;
        }
    }
}

// ---------------------------------------------------------------- Q5_0, Q5_1

/// Pack 32 five-bit values: low nibbles into `qs[16]`, bit 4 of element `e` into bit `e` of `qh`.
#[inline]
fn pack5(q: &[u8; QK], qh: &mut [u8], qs: &mut [u8]) {
    let mut high = 0u32;
    for j in 0..QK / 2 {
        let (a, b) = (q[j], q[j + QK / 2]);
        qs[j] = (a & 0x0f) | (b & 0x0f) << 4;
        high |= u32::from((a >> 4) & 1) << j;
        high |= u32::from((b >> 4) & 1) << (j + QK / 2);
    }
    qh.copy_from_slice(&high.to_le_bytes());
}

/// Inverse of [`pack5`]: the 32 five-bit values (0..=31).
#[inline]
fn unpack5(qh: &[u8], qs: &[u8]) -> [u8; QK] {
    let high = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = [0u8; QK];
    for j in 0..QK / 2 {
        q[j] = (qs[j] & 0x0f) | (((high >> j) & 1) as u8) << 4;
        q[j + QK / 2] = (qs[j] >> 4) | (((high >> (j + QK / 2)) & 1) as u8) << 4;
    }
    q
}

pub(super) fn quantize_q5_0(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.as_chunks::<QK>().0.iter().zip(dst.as_chunks_mut::<22>().0) {
        let d = signed_absmax(x) / -16.0;
        let id = inverse(d);
        y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        let q: [u8; QK] = std::array::from_fn(|i| (c_trunc(x[i] * id + 16.5) as i8).min(31) as u8);
        let (qh, qs) = y[2..].split_at_mut(4);
        pack5(&q, qh, qs);
    }
}

pub(super) fn dequantize_q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.as_chunks::<22>().0.iter().zip(dst.as_chunks_mut::<QK>().0) {
        let d = read_f16(b);
        let q = unpack5(&b[2..6], &b[6..]);
        for (v, &q) in y.iter_mut().zip(&q) {
            *v = (i32::from(q) - 16) as f32 * d;
        }
    }
}

pub(super) fn quantize_q5_1(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.as_chunks::<QK>().0.iter().zip(dst.as_chunks_mut::<24>().0) {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = inverse(d);
        y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        y[2..4].copy_from_slice(&f32_to_f16(min).to_le_bytes());
        // No clamp to 31 here (ggml has none: (x − min)·id + 0.5 stays below 32 for finite input).
        let q: [u8; QK] = std::array::from_fn(|i| c_trunc((x[i] - min) * id + 0.5) as u8);
        let (qh, qs) = y[4..].split_at_mut(4);
        pack5(&q, qh, qs);
    }
}

pub(super) fn dequantize_q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.as_chunks::<24>().0.iter().zip(dst.as_chunks_mut::<QK>().0) {
        let (d, m) = (read_f16(b), read_f16(&b[2..]));
        let q = unpack5(&b[4..8], &b[8..]);
        for (v, &q) in y.iter_mut().zip(&q) {
            *v = f32::from(q) * d + m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_zero_blocks() {
        let x = [0f32; QK];
        let mut q8 = [0xffu8; 34];
        quantize_q8_0(&x, &mut q8);
        assert_eq!(q8, [0u8; 34]);
        // Q4_0: d = 0 / −8 = −0.0 (f16 0x8000), every quant 8 → bytes 0x88.
        let mut q4 = [0u8; 18];
        quantize_q4_0(&x, &mut q4);
        assert_eq!(&q4[..2], &[0x00, 0x80]);
        assert!(q4[2..].iter().all(|&b| b == 0x88));
        // Q5_0: d = −0.0, every quant 16 → low nibbles 0, all high bits set.
        let mut q5 = [0u8; 22];
        quantize_q5_0(&x, &mut q5);
        assert_eq!(&q5[..6], &[0x00, 0x80, 0xff, 0xff, 0xff, 0xff]);
        assert!(q5[6..].iter().all(|&b| b == 0));
        // Q4_1/Q5_1: d = 0, m = 0, all quants 0.
        let mut q41 = [0xffu8; 20];
        quantize_q4_1(&x, &mut q41);
        assert_eq!(q41, [0u8; 20]);
        let mut q51 = [0xffu8; 24];
        quantize_q5_1(&x, &mut q51);
        assert_eq!(q51, [0u8; 24]);
    }

    #[test]
    fn five_bit_packing_round_trips() {
        let q: [u8; QK] = std::array::from_fn(|i| (i * 7 % 32) as u8);
        let (mut qh, mut qs) = ([0u8; 4], [0u8; 16]);
        pack5(&q, &mut qh, &mut qs);
        assert_eq!(unpack5(&qh, &qs), q);
    }

    #[test]
    fn ramp_is_exact_in_q5_1() {
        // 0, 1, …, 31: d = 1, m = 0, every value representable.
        let x: [f32; QK] = std::array::from_fn(|i| i as f32);
        let mut b = [0u8; 24];
        quantize_q5_1(&x, &mut b);
        let mut y = [0f32; QK];
        dequantize_q5_1(&b, &mut y);
        assert_eq!(y, x);
    }

    #[test]
    fn q8_0_simd_equals_scalar() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut x: Vec<f32> = (0..32 * 4000).map(|i| {
            let u = (next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            // Mix scales, exact ties (k/254 of the max), zeros and huge values.
            match i % 7 { 0 => u * 1e-6, 1 => u * 1e3, 2 => (i % 255) as f32 - 127.0, 3 => 0.0, _ => u }
        }).collect();
        x[40] = f32::NAN;
        x[100] = f32::INFINITY;
        x[200] = 3e38;
        let mut fast = vec![0u8; x.len() / 32 * 34];
        let mut slow = fast.clone();
        quantize_q8_0(&x, &mut fast);
        quantize_q8_0_scalar(&x, &mut slow);
        assert_eq!(fast, slow);
    }

    #[test]
    fn round_away_trunc_equals_roundf_then_trunc() {
        let mut vs: Vec<f32> = (0..400_000u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761))).collect();
        vs.extend([0.5, -0.5, 1.5, -1.5, 2.5, 126.5, -127.5, 0.49999997, -0.49999997, 8_388_607.5, 8_388_608.0,
                   f32::NAN, f32::INFINITY, -0.0, 3e9]);
        for i in 0..=2048 {
            vs.push(i as f32 / 16.0 - 64.0);
        }
        for v in vs {
            assert_eq!(round_away_trunc(v), c_trunc(v.round()), "{v}");
        }
    }

    #[test]
    fn c_trunc_matches_x86() {
        assert_eq!(c_trunc(15.9), 15);
        assert_eq!(c_trunc(-0.7), 0);
        assert_eq!(c_trunc(f32::NAN), i32::MIN);
        assert_eq!(c_trunc(3e9), i32::MIN);
    }
}
