//! ggml's K-quants on super-blocks of 256 values: Q4_K, Q5_K, Q6_K (`quantize_row_q{4,5,6}_K_ref`
//! and `dequantize_row_q{4,5,6}_K` in ggml's `ggml-quants.c`; `shared/specs/gguf.md` §4.4-§4.5).
//!
//! Block layouts (little-endian, `f16` = IEEE binary16):
//! - Q4_K (144 bytes): `f16 d; f16 dmin; u8 scales[12]; u8 qs[128]`; 8 sub-blocks of 32 with a
//!   6-bit scale `sc` and min `m` each; value = `(d·sc)·q − dmin·m`, q in 0..=15.
//! - Q5_K (176 bytes): `f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]`; as Q4_K with q in
//!   0..=31 (bit 4 in `qh`).
//! - Q6_K (210 bytes): `u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d` (d last); 16 sub-blocks of
//!   16; value = `(d·scale)·(q − 32)`, q in 0..=63.
//!
//! Bit-exactness: every sum is a sequential f32 accumulation in ggml's order, products are
//! evaluated as ggml writes them, and nothing is fused (no `mul_add`). The quantization after the
//! scale search uses the stored (f16-rounded) `d`/`dmin`.

use super::float::{f16_to_f32, f32_to_f16};

/// Values per super-block.
const QK_K: usize = 256;
/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below this counts as all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round half to even by adding 1.5·2^23 and reading the low mantissa bits.
/// Exactly `round_ties_even` for |v| ≤ 4194303; kept as the bit trick so that out-of-range values
/// (NaN, ±inf, huge) give ggml's bytes too, without a panic.
#[inline(always)]
fn nearest(v: f32) -> i32 {
    ((v + 12_582_912.0).to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// Defines `pub(super) fn $name(src, dst)` running `$body` compiled for AVX2 when the CPU has it
/// (twice as many lanes per instruction for the same per-lane arithmetic), else for the baseline
/// target. Only `avx2` is enabled, not `fma`, and Rust never contracts `a*b + c` on its own, so
/// both builds give identical bits (the vector tests run the AVX2 build on such CPUs, the unit
/// tests compare it with the baseline one).
macro_rules! with_avx2 {
    ($name:ident, $body:ident) => {
        pub(super) fn $name(src: &[f32], dst: &mut [u8]) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn avx2(src: &[f32], dst: &mut [u8]) {
                    $body(src, dst)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    unsafe { avx2(src, dst) };
                    return;
                }
            }
            $body(src, dst)
        }
    };
}

#[inline]
fn read_f16(b: &[u8]) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[0], b[1]]))
}

// ---------------------------------------------------------------- Q4_K / Q5_K

/// Parameters of the scale/min search (`make_qkx2_quants`).
struct Qkx2 {
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
}

const Q4K_SEARCH: Qkx2 = Qkx2 { nmax: 15, rmin: -1.0, rdelta: 0.1, nstep: 20 };
const Q5K_SEARCH: Qkx2 = Qkx2 { nmax: 31, rmin: -0.5, rdelta: 0.1, nstep: 15 };

/// Weighted least-squares search for `x ≈ scale·L − min_out` with `L` in `0..=nmax` over 32
/// values (ggml's `make_qkx2_quants`, squared error). Writes `L`, returns `(scale, min_out)`,
/// `min_out ≥ 0`. Scalar reference for [`qkx2_lanes`].
#[cfg(test)]
fn qkx2(x: &[f32; 32], w: &[f32; 32], p: &Qkx2, l: &mut [u8; 32]) -> (f32, f32) {
    let nmax = p.nmax as f32;
    // Start from element 0 as ggml does (this also fixes the sign of a zero sum).
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..32 {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        *l = [0; 32];
        return (0.0, -min);
    }
    let iscale = nmax / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best = 0f32;
    for i in 0..32 {
        let q = nearest(iscale * (x[i] - min)).clamp(0, p.nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best += w[i] * (diff * diff);
    }
    let mut trial = [0u8; 32];
    for step in 0..=p.nstep {
        // `min` may have been replaced by an earlier step: ggml uses the current value.
        let iscale = (p.rmin + p.rdelta * step as f32 + nmax) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..32 {
            let q = nearest(iscale * (x[i] - min)).clamp(0, p.nmax);
            trial[i] = q as u8;
            let wl = w[i] * q as f32;
            sum_l += wl;
            sum_l2 += wl * q as f32;
            sum_xl += wl * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut err = 0f32;
            for i in 0..32 {
                let diff = this_scale * f32::from(trial[i]) + this_min - x[i];
                err += w[i] * (diff * diff);
            }
            if err < best {
                *l = trial;
                best = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// [`qkx2`] on the 8 sub-blocks of a super-block at once, one sub-block per lane.
///
/// `x[i][j]`/`w[i][j]` are value/weight `i` of sub-block `j`. Each lane runs exactly ggml's
/// sequential arithmetic (same operations, same order); branches become per-lane selects, so the
/// inner loops vectorize across sub-blocks without changing a bit. Writes `l[i][j]` (as exact
/// small integers), returns `(scale, min_out)` per lane.
#[inline(always)]
fn qkx2_lanes(x: &[[f32; 8]; 32], w: &[[f32; 8]; 32], p: &Qkx2, l: &mut [[f32; 8]; 32]) -> ([f32; 8], [f32; 8]) {
    let (nmax, qmax) = (p.nmax as f32, p.nmax);
    let quant = |v: f32| nearest(v).clamp(0, qmax) as f32;
    let (mut min, mut max, mut sum_w) = (x[0], x[0], w[0]);
    let mut sum_x: [f32; 8] = std::array::from_fn(|j| w[0][j] * x[0][j]);
    for (xi, wi) in x.iter().zip(w).skip(1) {
        for j in 0..8 {
            min[j] = if xi[j] < min[j] { xi[j] } else { min[j] };
            max[j] = if xi[j] > max[j] { xi[j] } else { max[j] };
            sum_w[j] += wi[j];
            sum_x[j] += wi[j] * xi[j];
        }
    }
    for m in &mut min {
        if *m > 0.0 {
            *m = 0.0;
        }
    }
    // Lanes with max == min return early in ggml (scale 0, all L = 0); here they compute
    // throw-away values and are overwritten at the end.
    let flat: [bool; 8] = std::array::from_fn(|j| max[j] == min[j]);
    let first_min = min;
    let iscale: [f32; 8] = std::array::from_fn(|j| nmax / (max[j] - min[j]));
    let mut scale: [f32; 8] = std::array::from_fn(|j| 1.0 / iscale[j]);
    let mut best = [0f32; 8];
    for ((li, xi), wi) in l.iter_mut().zip(x).zip(w) {
        for j in 0..8 {
            li[j] = quant(iscale[j] * (xi[j] - min[j]));
            let diff = scale[j] * li[j] + min[j] - xi[j];
            best[j] += wi[j] * (diff * diff);
        }
    }
    let mut trial = [[0f32; 8]; 32];
    for step in 0..=p.nstep {
        // `min` may have been replaced by an earlier step: ggml uses the current value.
        let grid = p.rmin + p.rdelta * step as f32 + nmax;
        let iscale: [f32; 8] = std::array::from_fn(|j| grid / (max[j] - min[j]));
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; 8], [0f32; 8], [0f32; 8]);
        for ((ti, xi), wi) in trial.iter_mut().zip(x).zip(w) {
            for j in 0..8 {
                ti[j] = quant(iscale[j] * (xi[j] - min[j]));
                let wl = wi[j] * ti[j];
                sum_l[j] += wl;
                sum_l2[j] += wl * ti[j];
                sum_xl[j] += wl * xi[j];
            }
        }
        let mut this_scale = [0f32; 8];
        let mut this_min = [0f32; 8];
        let mut ok = [false; 8];
        for j in 0..8 {
            let det = sum_w[j] * sum_l2[j] - sum_l[j] * sum_l[j];
            ok[j] = det > 0.0;
            let s = (sum_w[j] * sum_xl[j] - sum_x[j] * sum_l[j]) / det;
            let m = (sum_l2[j] * sum_x[j] - sum_l[j] * sum_xl[j]) / det;
            (this_scale[j], this_min[j]) = if m > 0.0 { (sum_xl[j] / sum_l2[j], 0.0) } else { (s, m) };
        }
        let mut err = [0f32; 8];
        for ((ti, xi), wi) in trial.iter().zip(x).zip(w) {
            for j in 0..8 {
                let diff = this_scale[j] * ti[j] + this_min[j] - xi[j];
                err[j] += wi[j] * (diff * diff);
            }
        }
        let better: [bool; 8] = std::array::from_fn(|j| ok[j] && err[j] < best[j]);
        if better.contains(&true) {
            for (li, ti) in l.iter_mut().zip(&trial) {
                for j in 0..8 {
                    li[j] = if better[j] { ti[j] } else { li[j] };
                }
            }
            for j in 0..8 {
                if better[j] {
                    best[j] = err[j];
                    scale[j] = this_scale[j];
                    min[j] = this_min[j];
                }
            }
        }
    }
    let mut the_min = [0f32; 8];
    for j in 0..8 {
        if flat[j] {
            scale[j] = 0.0;
            min[j] = first_min[j];
            for li in l.iter_mut() {
                li[j] = 0.0;
            }
        }
        the_min[j] = -min[j];
    }
    (scale, the_min)
}

/// The 6-bit scale and min of sub-block `j` from the packed `scales[12]` (`get_scale_min_k4`).
#[inline]
fn scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0f) | (s[j - 4] >> 6) << 4, (s[j + 4] >> 4) | (s[j] >> 6) << 4)
    }
}

/// The shared part of Q4_K and Q5_K: scale search per sub-block, 6-bit scale/min packing, final
/// quants with the stored scales. Writes `d`, `dmin` and `scales[12]` into `head` (16 bytes) and
/// the quants (0..=nmax) into `l`.
#[inline(always)]
fn quantize_scale_min_block(x: &[f32; QK_K], p: &Qkx2, head: &mut [u8], l: &mut [u8; QK_K]) {
    // Transpose: lane j holds sub-block j (values 32j..32j+32).
    let xt: [[f32; 8]; 32] = std::array::from_fn(|i| std::array::from_fn(|j| x[32 * j + i]));
    let mut sum_x2 = [0f32; 8];
    for xi in &xt {
        for j in 0..8 {
            sum_x2[j] += xi[j] * xi[j];
        }
    }
    let av: [f32; 8] = std::array::from_fn(|j| (sum_x2[j] / 32.0).sqrt());
    let wt: [[f32; 8]; 32] = std::array::from_fn(|i| std::array::from_fn(|j| av[j] + xt[i][j].abs()));
    let mut lt = [[0f32; 8]; 32];
    let (scales, mins) = qkx2_lanes(&xt, &wt, p, &mut lt);
    for (i, li) in lt.iter().enumerate() {
        for (j, &q) in li.iter().enumerate() {
            l[32 * j + i] = q as u8;
        }
    }
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        // ggml stores the rounded value in a u8 (wrapping) before clamping to 63.
        let ls = (nearest(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0f) | (lm & 0x0f) << 4;
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f32_to_f16(max_scale / 63.0);
    let dmin = f32_to_f16(max_min / 63.0);
    head[0..2].copy_from_slice(&d.to_le_bytes());
    head[2..4].copy_from_slice(&dmin.to_le_bytes());
    head[4..16].copy_from_slice(&packed);
    let (d, dmin) = (f16_to_f32(d), f16_to_f32(dmin));
    for j in 0..8 {
        let (sc, m) = scale_min(j, &packed);
        let dd = d * f32::from(sc);
        if dd == 0.0 {
            continue; // keep the scale search's quants
        }
        let dm = dmin * f32::from(m);
        for i in 32 * j..32 * j + 32 {
            l[i] = nearest((x[i] + dm) / dd).clamp(0, p.nmax) as u8;
        }
    }
}

with_avx2!(quantize_q4_k, quantize_q4_k_impl);

#[inline(always)]
fn quantize_q4_k_impl(src: &[f32], dst: &mut [u8]) {
    let mut l = [0u8; QK_K];
    for (x, y) in src.as_chunks::<QK_K>().0.iter().zip(dst.as_chunks_mut::<144>().0) {
        let (head, qs) = y.split_at_mut(16);
        quantize_scale_min_block(x, &Q4K_SEARCH, head, &mut l);
        for g in 0..4 {
            for i in 0..32 {
                qs[32 * g + i] = l[64 * g + i] | l[64 * g + 32 + i] << 4;
            }
        }
    }
}

with_avx2!(quantize_q5_k, quantize_q5_k_impl);

#[inline(always)]
fn quantize_q5_k_impl(src: &[f32], dst: &mut [u8]) {
    let mut l = [0u8; QK_K];
    for (x, y) in src.as_chunks::<QK_K>().0.iter().zip(dst.as_chunks_mut::<176>().0) {
        let (head, rest) = y.split_at_mut(16);
        quantize_scale_min_block(x, &Q5K_SEARCH, head, &mut l);
        let (qh, qs) = rest.split_at_mut(32);
        qh.fill(0);
        for g in 0..4 {
            for i in 0..32 {
                let (lo, hi) = (l[64 * g + i], l[64 * g + 32 + i]);
                qs[32 * g + i] = (lo & 0x0f) | (hi & 0x0f) << 4;
                qh[i] |= (lo >> 4) << (2 * g) | (hi >> 4) << (2 * g + 1);
            }
        }
    }
}

/// Shared Q4_K/Q5_K dequantization; `q(g, i, high)` gives quant `i` of the lower (`high = false`)
/// or upper half of 64-value group `g`.
#[inline]
fn dequantize_scale_min_block(b: &[u8], y: &mut [f32; QK_K], q: impl Fn(usize, usize, bool) -> u8) {
    let (d, dmin) = (read_f16(b), read_f16(&b[2..]));
    let scales = &b[4..16];
    for g in 0..4 {
        for (half, high) in [(0, false), (1, true)] {
            let (sc, m) = scale_min(2 * g + half, scales);
            let (d1, m1) = (d * f32::from(sc), dmin * f32::from(m));
            for i in 0..32 {
                y[64 * g + 32 * half + i] = d1 * f32::from(q(g, i, high)) - m1;
            }
        }
    }
}

pub(super) fn dequantize_q4_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.as_chunks::<144>().0.iter().zip(dst.as_chunks_mut::<QK_K>().0) {
        let qs = &b[16..];
        dequantize_scale_min_block(b, y, |g, i, high| {
            let byte = qs[32 * g + i];
            if high {
                byte >> 4
            } else {
                byte & 0x0f
            }
        });
    }
}

pub(super) fn dequantize_q5_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.as_chunks::<176>().0.iter().zip(dst.as_chunks_mut::<QK_K>().0) {
        let (qh, qs) = (&b[16..48], &b[48..]);
        dequantize_scale_min_block(b, y, |g, i, high| {
            let byte = qs[32 * g + i];
            let bit = 2 * g + usize::from(high);
            let low = if high { byte >> 4 } else { byte & 0x0f };
            low | ((qh[i] >> bit) & 1) << 4
        });
    }
}

// ---------------------------------------------------------------- Q6_K

/// Weighted (w = x²) search for `x ≈ scale·(L − 32)` with `L` in `0..=63` over 16 values
/// (ggml's `make_qx_quants(16, 32, x, L, rmse_type = 1, NULL)`). Writes `L`, returns `scale`.
/// Scalar reference for [`qx_lanes`].
#[cfg(test)]
fn qx16(x: &[f32; 16], l: &mut [u8]) -> f32 {
    const NMAX: i32 = 32;
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    // One trial: quants (stored as l + 32) and the sums Σ (w·x)·l and Σ (w·l)·l.
    let run = |iscale: f32, out: &mut [u8; 16]| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for i in 0..16 {
            let q = nearest(iscale * x[i]).clamp(-NMAX, NMAX - 1);
            out[i] = (q + NMAX) as u8;
            let w = x[i] * x[i];
            sumlx += w * x[i] * q as f32;
            suml2 += w * q as f32 * q as f32;
        }
        (sumlx, suml2)
    };
    let mut best_l = [0u8; 16];
    let (sumlx, suml2) = run(-(NMAX as f32) / max, &mut best_l);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    let mut trial = [0u8; 16];
    for step in -9..=9 {
        if step == 0 {
            continue;
        }
        let iscale = -(NMAX as f32 + 0.1 * step as f32) / max;
        let (sumlx, suml2) = run(iscale, &mut trial);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            best_l = trial;
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    l.copy_from_slice(&best_l);
    scale
}

/// [`qx16`] on the 16 sub-blocks of a Q6_K super-block at once, one sub-block per lane
/// (`x[i][j]` = value `i` of sub-block `j`); per-lane arithmetic identical to ggml's, branches as
/// selects. Writes `l[i][j]` (0..=63), returns the scale per lane.
#[inline(always)]
fn qx_lanes(x: &[[f32; 16]; 16], l: &mut [[u8; 16]; 16]) -> [f32; 16] {
    const NMAX: i32 = 32;
    let (mut amax, mut max) = ([0f32; 16], [0f32; 16]);
    for xi in x {
        for j in 0..16 {
            let a = xi[j].abs();
            (amax[j], max[j]) = if a > amax[j] { (a, xi[j]) } else { (amax[j], max[j]) };
        }
    }
    // One trial for all lanes: quants (stored as l + 32) and Σ (w·x)·l, Σ (w·l)·l with w = x².
    let run = |iscale: &[f32; 16], out: &mut [[u8; 16]; 16]| {
        let (mut sumlx, mut suml2) = ([0f32; 16], [0f32; 16]);
        for (oi, xi) in out.iter_mut().zip(x) {
            for j in 0..16 {
                let q = nearest(iscale[j] * xi[j]).clamp(-NMAX, NMAX - 1);
                oi[j] = (q + NMAX) as u8;
                let (w, q) = (xi[j] * xi[j], q as f32);
                sumlx[j] += w * xi[j] * q;
                suml2[j] += w * q * q;
            }
        }
        (sumlx, suml2)
    };
    let iscale: [f32; 16] = std::array::from_fn(|j| -(NMAX as f32) / max[j]);
    let (sumlx, suml2) = run(&iscale, l);
    let mut scale: [f32; 16] = std::array::from_fn(|j| if suml2[j] != 0.0 { sumlx[j] / suml2[j] } else { 0.0 });
    let mut best: [f32; 16] = std::array::from_fn(|j| scale[j] * sumlx[j]);
    let mut trial = [[0u8; 16]; 16];
    for step in -9..=9 {
        if step == 0 {
            continue;
        }
        let grid = -(NMAX as f32 + 0.1 * step as f32);
        let iscale: [f32; 16] = std::array::from_fn(|j| grid / max[j]);
        let (sumlx, suml2) = run(&iscale, &mut trial);
        let better: [bool; 16] = std::array::from_fn(|j| suml2[j] > 0.0 && sumlx[j] * sumlx[j] > best[j] * suml2[j]);
        if better.contains(&true) {
            for (li, ti) in l.iter_mut().zip(&trial) {
                for j in 0..16 {
                    li[j] = if better[j] { ti[j] } else { li[j] };
                }
            }
            for j in 0..16 {
                if better[j] {
                    scale[j] = sumlx[j] / suml2[j];
                    best[j] = scale[j] * sumlx[j];
                }
            }
        }
    }
    // All-zero lanes (ggml returns early): scale 0, every L = 0.
    for j in 0..16 {
        if amax[j] < GROUP_MAX_EPS {
            scale[j] = 0.0;
            for li in l.iter_mut() {
                li[j] = 0;
            }
        }
    }
    scale
}

with_avx2!(quantize_q6_k, quantize_q6_k_impl);

#[inline(always)]
fn quantize_q6_k_impl(src: &[f32], dst: &mut [u8]) {
    let mut l = [0u8; QK_K];
    for (x, y) in src.as_chunks::<QK_K>().0.iter().zip(dst.as_chunks_mut::<210>().0) {
        let xt: [[f32; 16]; 16] = std::array::from_fn(|i| std::array::from_fn(|j| x[16 * j + i]));
        let mut lt = [[0u8; 16]; 16];
        let scales = qx_lanes(&xt, &mut lt);
        for (i, li) in lt.iter().enumerate() {
            for (j, &q) in li.iter().enumerate() {
                l[16 * j + i] = q;
            }
        }
        let (mut max_scale, mut max_abs) = (0f32, 0f32);
        for &sc in &scales {
            if sc.abs() > max_abs {
                max_abs = sc.abs();
                max_scale = sc;
            }
        }
        if max_abs < GROUP_MAX_EPS {
            y.fill(0); // f16(0) is 0 too
            continue;
        }
        let iscale = -128.0 / max_scale;
        let d_bits = f32_to_f16(1.0 / iscale);
        let sc: [i8; 16] = std::array::from_fn(|j| nearest(iscale * scales[j]).min(127) as i8);
        let d = f16_to_f32(d_bits);
        for (j, &s) in sc.iter().enumerate() {
            let dd = d * f32::from(s);
            if dd == 0.0 {
                continue; // keep the scale search's quants
            }
            for i in 16 * j..16 * j + 16 {
                l[i] = (nearest(x[i] / dd).clamp(-32, 31) + 32) as u8;
            }
        }
        let (ql, rest) = y.split_at_mut(128);
        let (qh, tail) = rest.split_at_mut(64);
        for h in 0..2 {
            let (b, lo, hi) = (128 * h, &mut ql[64 * h..64 * h + 64], &mut qh[32 * h..32 * h + 32]);
            for i in 0..32 {
                let (q1, q2, q3, q4) = (l[b + i], l[b + 32 + i], l[b + 64 + i], l[b + 96 + i]);
                lo[i] = (q1 & 0x0f) | (q3 & 0x0f) << 4;
                lo[32 + i] = (q2 & 0x0f) | (q4 & 0x0f) << 4;
                hi[i] = (q1 >> 4) | (q2 >> 4) << 2 | (q3 >> 4) << 4 | (q4 >> 4) << 6;
            }
        }
        for (t, s) in tail[..16].iter_mut().zip(sc) {
            *t = s as u8;
        }
        tail[16..].copy_from_slice(&d_bits.to_le_bytes());
    }
}

pub(super) fn dequantize_q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.as_chunks::<210>().0.iter().zip(dst.as_chunks_mut::<QK_K>().0) {
        let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
        let d = read_f16(&b[208..]);
        for h in 0..2 {
            let (lo, hi) = (&ql[64 * h..], &qh[32 * h..]);
            for i in 0..32 {
                let q = [
                    (lo[i] & 0x0f) | (hi[i] & 3) << 4,
                    (lo[32 + i] & 0x0f) | ((hi[i] >> 2) & 3) << 4,
                    (lo[i] >> 4) | ((hi[i] >> 4) & 3) << 4,
                    (lo[32 + i] >> 4) | ((hi[i] >> 6) & 3) << 4,
                ];
                for (k, &q) in q.iter().enumerate() {
                    let e = 128 * h + 32 * k + i;
                    let scale = f32::from(sc[e / 16] as i8);
                    y[e] = d * scale * (i32::from(q) - 32) as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks that stress the searches: random scales and offsets, flat and all-zero
    /// sub-blocks, single spikes, ties, tiny and huge magnitudes.
    fn stress_blocks() -> Vec<[f32; QK_K]> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 // [0, 1)
        };
        let mut blocks = Vec::new();
        for b in 0..300 {
            let scale = [1e-7f32, 1e-3, 0.05, 1.0, 1e3][b % 5];
            let offset = [0.0f32, 0.5, -0.5, 2.0][b / 5 % 4];
            let mut x: [f32; QK_K] = std::array::from_fn(|_| (next() - 0.5 + offset) * scale);
            match b % 7 {
                0 => x[..32].fill(0.0),
                1 => x[32..64].fill(0.25),
                2 => x[100] = 50.0 * scale,
                3 => x[16..48].fill(-1.5),
                4 => x.iter_mut().for_each(|v| *v = (*v * 8.0).round() / 8.0),
                _ => {}
            }
            blocks.push(x);
        }
        blocks
    }

    #[test]
    fn lane_searches_equal_the_scalar_reference() {
        for x in stress_blocks() {
            for p in [&Q4K_SEARCH, &Q5K_SEARCH] {
                let xt: [[f32; 8]; 32] = std::array::from_fn(|i| std::array::from_fn(|j| x[32 * j + i]));
                let wt: [[f32; 8]; 32] =
                    std::array::from_fn(|i| std::array::from_fn(|j| 0.3 + xt[i][j].abs() * (1 + j) as f32));
                let mut lt = [[0f32; 8]; 32];
                let (scales, mins) = qkx2_lanes(&xt, &wt, p, &mut lt);
                for j in 0..8 {
                    let xs: [f32; 32] = std::array::from_fn(|i| xt[i][j]);
                    let ws: [f32; 32] = std::array::from_fn(|i| wt[i][j]);
                    let mut ls = [0u8; 32];
                    let (sc, mn) = qkx2(&xs, &ws, p, &mut ls);
                    assert_eq!((sc.to_bits(), mn.to_bits()), (scales[j].to_bits(), mins[j].to_bits()));
                    assert!(ls.iter().enumerate().all(|(i, &q)| f32::from(q) == lt[i][j]));
                }
            }
            let xt: [[f32; 16]; 16] = std::array::from_fn(|i| std::array::from_fn(|j| x[16 * j + i]));
            let mut lt = [[0u8; 16]; 16];
            let scales = qx_lanes(&xt, &mut lt);
            for j in 0..16 {
                let xs: [f32; 16] = std::array::from_fn(|i| xt[i][j]);
                let mut ls = [0u8; 16];
                assert_eq!(qx16(&xs, &mut ls).to_bits(), scales[j].to_bits());
                assert!(ls.iter().enumerate().all(|(i, &q)| q == lt[i][j]));
            }
        }
    }

    #[test]
    fn dispatched_kernels_equal_the_baseline_build() {
        let x: Vec<f32> = stress_blocks().concat();
        let blocks = x.len() / QK_K;
        for (dispatched, baseline, size) in [
            (quantize_q4_k as fn(&[f32], &mut [u8]), quantize_q4_k_impl as fn(&[f32], &mut [u8]), 144),
            (quantize_q5_k, quantize_q5_k_impl, 176),
            (quantize_q6_k, quantize_q6_k_impl, 210),
        ] {
            let (mut a, mut b) = (vec![0u8; blocks * size], vec![0u8; blocks * size]);
            dispatched(&x, &mut a);
            baseline(&x, &mut b);
            assert!(a == b, "block size {size}");
        }
    }

    #[test]
    fn nearest_is_round_half_even() {
        for v in [0.5f32, 1.5, 2.5, -0.5, -1.5, 3.49, -3.51, 0.0, -0.0, 4_194_303.0] {
            assert_eq!(nearest(v), v.round_ties_even() as i32, "{v}");
        }
        // Out of ggml's range: no panic, some value.
        let _ = nearest(f32::NAN) + nearest(f32::INFINITY) + nearest(1e30);
    }

    #[test]
    fn scale_min_packing_round_trips() {
        // Pack 6-bit pairs the way the quantizer does and read them back.
        let ls: [u8; 8] = [0, 63, 17, 42, 63, 1, 33, 48];
        let lm: [u8; 8] = [5, 0, 63, 31, 16, 62, 0, 63];
        let mut s = [0u8; 12];
        for j in 0..8 {
            if j < 4 {
                s[j] = ls[j];
                s[j + 4] = lm[j];
            } else {
                s[j + 4] = (ls[j] & 0x0f) | (lm[j] & 0x0f) << 4;
                s[j - 4] |= (ls[j] >> 4) << 6;
                s[j] |= (lm[j] >> 4) << 6;
            }
        }
        for j in 0..8 {
            assert_eq!(scale_min(j, &s), (ls[j], lm[j]), "sub-block {j}");
        }
    }

    #[test]
    fn all_zero_super_blocks() {
        let x = [0f32; QK_K];
        // Q6_K: the whole block is zero.
        let mut b6 = [0xffu8; 210];
        quantize_q6_k(&x, &mut b6);
        assert_eq!(b6, [0u8; 210]);
        // Q4_K/Q5_K: d = dmin = 0, scales 0, quants 0.
        let mut b4 = [0xffu8; 144];
        quantize_q4_k(&x, &mut b4);
        assert_eq!(b4, [0u8; 144]);
        let mut b5 = [0xffu8; 176];
        quantize_q5_k(&x, &mut b5);
        assert_eq!(b5, [0u8; 176]);
        let mut y = [1f32; QK_K];
        dequantize_q4_k(&b4, &mut y);
        assert!(y.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn constant_positive_block_round_trips_closely() {
        let x: [f32; QK_K] = std::array::from_fn(|i| 0.25 + (i % 7) as f32 * 0.01);
        for (q, dq, size) in [
            (quantize_q4_k as fn(&[f32], &mut [u8]), dequantize_q4_k as fn(&[u8], &mut [f32]), 144),
            (quantize_q5_k, dequantize_q5_k, 176),
            (quantize_q6_k, dequantize_q6_k, 210),
        ] {
            let mut b = vec![0u8; size];
            q(&x, &mut b);
            let mut y = [0f32; QK_K];
            dq(&b, &mut y);
            let err = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < 0.01, "max error {err} for block size {size}");
        }
    }
}
