//! Blockwise NF4 quantization, byte for byte like bitsandbytes' `quantize_4bit`.
//!
//! The tensor is flattened row-major and cut into blocks of `blocksize` elements that run across
//! row boundaries (the last may be partial). Per block: `absmax = max |x|`, each element is
//! scaled into `[-1, 1]` and given the code `#{i : x·inv > T[i]}` (strict `>`, so a value equal
//! to a threshold takes the lower code). Two codes per byte, the first element in the high
//! nibble; an odd element count is padded with the code of 0.
//!
//! bitsandbytes' CPU and CUDA backends disagree in three corners (spec `nf4.md` §2.3); [`Compat`]
//! picks which one to reproduce. Both dequantize to the same values.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::nf4::tables::NF4_THRESHOLDS;
use crate::tensor::{decode_into, DType};

/// Block sizes bitsandbytes accepts for 4-bit quantization.
pub const BLOCKSIZES: [usize; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/// The smallest block scale bitsandbytes' CPU path divides by (`absmax.clamp(min=1e-38)`).
const MIN_SCALE: f32 = 1e-38;

/// Elements per parallel task (a multiple of every block size).
const TASK_ELEMENTS: usize = 1 << 16;

/// Which bitsandbytes backend's bytes to reproduce where they differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compat {
    /// bitsandbytes' CPU ("default") backend: a partial last block is divided by its absmax
    /// (which is stored clamped to at least 1e-38), an all-zero block packs to `0x77`, and double
    /// quantization uses the CPU library's 65 536-bin lookup table.
    #[default]
    BnbCpu,
    /// bitsandbytes' CUDA kernels: every block multiplies by `1/absmax` (IEEE here; the kernel's
    /// fast-math reciprocal may differ by an ulp), an all-zero block packs to `0x00`, and double
    /// quantization picks the nearest CODE8 entry with exact ties to the even index.
    BnbCuda,
}

impl Compat {
    /// Parse `cpu` / `cuda` (also `bnb-cpu` / `bnb-cuda`).
    pub fn from_name(name: &str) -> Result<Compat> {
        match name {
            "cpu" | "bnb-cpu" => Ok(Compat::BnbCpu),
            "cuda" | "bnb-cuda" => Ok(Compat::BnbCuda),
            other => Err(Error::Option(format!("unknown NF4 compatibility mode `{other}` (expected cpu or cuda)"))),
        }
    }
}

/// The sizes of one tensor's NF4 encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nf4Layout {
    /// Elements in the tensor.
    pub n: usize,
    /// Elements per block.
    pub blocksize: usize,
}

impl Nf4Layout {
    /// A layout; errors for a block size bitsandbytes does not accept or an empty tensor.
    pub fn new(n: usize, blocksize: usize) -> Result<Nf4Layout> {
        if !BLOCKSIZES.contains(&blocksize) {
            return Err(Error::Option(format!(
                "NF4 blocksize {blocksize} is not supported (expected one of 32, 64, 128, 256, 512, 1024, 2048, 4096)"
            )));
        }
        if n == 0 {
            return Err(Error::Shape("cannot quantize an empty tensor to NF4".into()));
        }
        Ok(Nf4Layout { n, blocksize })
    }

    /// Number of blocks (`ceil(n / blocksize)`): the length of `absmax`.
    pub fn blocks(&self) -> usize {
        self.n.div_ceil(self.blocksize)
    }

    /// Packed bytes (`(n + 1) / 2`).
    pub fn packed_len(&self) -> usize {
        self.n.div_ceil(2)
    }
}

/// Quantize `layout.n` little-endian elements of `dtype` to NF4.
///
/// Args:
///     src: `n · dtype.size()` bytes, the tensor in row-major order.
///     packed: `(n + 1) / 2` bytes out, first element of each pair in the high nibble.
///     absmax: `ceil(n / blocksize)` f32 block scales out.
///
/// Errors: [`Error::Value`] naming the first NaN or infinite element (bitsandbytes would write
/// a meaningless block), [`Error::Shape`] for buffers of the wrong length.
pub fn quantize(
    src: &[u8],
    dtype: DType,
    layout: Nf4Layout,
    compat: Compat,
    packed: &mut [u8],
    absmax: &mut [f32],
) -> Result<()> {
    let Nf4Layout { n, blocksize } = layout;
    check_len("source bytes", src.len(), n * dtype.size())?;
    check_len("packed bytes", packed.len(), layout.packed_len())?;
    check_len("absmax values", absmax.len(), layout.blocks())?;
    let task_blocks = TASK_ELEMENTS / blocksize;
    let tasks: Vec<Task<'_>> = src
        .chunks(TASK_ELEMENTS * dtype.size())
        .zip(packed.chunks_mut(TASK_ELEMENTS / 2))
        .zip(absmax.chunks_mut(task_blocks))
        .enumerate()
        .map(|(i, ((s, p), a))| (i * TASK_ELEMENTS, s, p, a))
        .collect();
    let run = |(first, s, p, a): Task<'_>| -> Result<()> {
        quantize_task(s, dtype, blocksize, n, first, compat, p, a)
    };
    if tasks.len() > 1 && crate::parallel::enabled() {
        crate::parallel::install(|| tasks.into_par_iter().try_for_each(run))
    } else {
        tasks.into_iter().try_for_each(run)
    }
}

/// One parallel task: its first element's index, its source bytes, packed bytes and scales.
type Task<'a> = (usize, &'a [u8], &'a mut [u8], &'a mut [f32]);

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::Shape(format!("NF4: {what}: got {got}, expected {want}")))
    }
}

/// Quantize one task's whole blocks; `first` is the index of its first element in the tensor.
/// Full blocks take the AVX2 kernels when the CPU has them (the same f32 operations per element,
/// so the same bytes); partial blocks and other CPUs the scalar code.
#[allow(clippy::too_many_arguments)]
fn quantize_task(
    src: &[u8],
    dtype: DType,
    blocksize: usize,
    n: usize,
    first: usize,
    compat: Compat,
    packed: &mut [u8],
    absmax: &mut [f32],
) -> Result<()> {
    let mut values = [0f32; 4096];
    for (b, (block_src, scale)) in src.chunks(blocksize * dtype.size()).zip(absmax.iter_mut()).enumerate() {
        let start = first + b * blocksize;
        let len = block_src.len() / dtype.size();
        #[cfg(target_arch = "x86_64")]
        if len == blocksize && crate::nf4::avx2::available() {
            // SAFETY: AVX2 + F16C checked; a full block is a multiple of 32 elements.
            let (amax, finite) = unsafe { crate::nf4::avx2::block_absmax(block_src, dtype) };
            if finite {
                let inv = match compat {
                    Compat::BnbCpu => 1.0 / amax.max(MIN_SCALE),
                    Compat::BnbCuda => 1.0 / amax,
                };
                let out = &mut packed[(start - first) / 2..(start - first + len) / 2];
                // SAFETY: as above; `out` holds len / 2 bytes.
                unsafe { crate::nf4::avx2::encode_scaled(block_src, dtype, inv, out) };
                *scale = amax;
                continue;
            }
        }
        let x = &mut values[..len];
        decode_into(block_src, dtype, x);
        let (amax, finite) = absmax_and_finite(x);
        if !finite {
            let at = x.iter().position(|v| !v.is_finite()).unwrap_or(0);
            return Err(Error::Value(format!("element {} is {}: NF4 needs finite values", start + at, x[at])));
        }
        let tail = len < blocksize;
        let codes_len = len.div_ceil(2) * 2;
        let out = &mut packed[(start - first) / 2..(start - first) / 2 + codes_len / 2];
        *scale = match compat {
            Compat::BnbCpu if tail => {
                let am = amax.max(MIN_SCALE);
                encode_block(x, Scaling::Divide(am), out);
                am
            }
            Compat::BnbCpu => {
                encode_block(x, Scaling::Multiply(1.0 / amax.max(MIN_SCALE)), out);
                amax
            }
            Compat::BnbCuda => {
                // 0 · (1/0) is NaN, which takes code 0 (CUDA packs an all-zero block to 0x00,
                // the pad nibble included).
                encode_block(x, Scaling::Multiply(1.0 / amax), out);
                amax
            }
        };
        debug_assert!(start + len <= n);
    }
    Ok(())
}

/// How a block's values are brought into `[-1, 1]`.
#[derive(Clone, Copy)]
enum Scaling {
    Multiply(f32),
    Divide(f32),
}

/// `(max |x|, all finite)`, written so that it vectorises.
#[inline(always)]
fn absmax_and_finite(x: &[f32]) -> (f32, bool) {
    let mut amax = 0f32;
    let mut bad = false;
    for &v in x {
        let a = v.abs();
        bad |= !a.is_finite();
        amax = if a > amax { a } else { amax };
    }
    (amax, !bad)
}

/// The NF4 code of a scaled value: the number of thresholds strictly below it (NaN gives 0).
#[inline(always)]
pub fn nf4_code(xn: f32) -> u8 {
    let mut c = 0u8;
    for t in NF4_THRESHOLDS {
        c += u8::from(xn > t);
    }
    c
}

/// Codes for one block, two per byte; an odd block gets the code of a scaled 0 as its pad.
#[inline(always)]
fn encode_block(x: &[f32], scaling: Scaling, out: &mut [u8]) {
    // clamp(x·inv, -1, 1) as bitsandbytes would be a no-op: a clamped value keeps its code.
    let code = |v: f32| match scaling {
        Scaling::Multiply(inv) => nf4_code(v * inv),
        Scaling::Divide(am) => nf4_code(v / am),
    };
    let mut pairs = x.chunks_exact(2);
    for (o, pair) in out.iter_mut().zip(&mut pairs) {
        *o = (code(pair[0]) << 4) | code(pair[1]);
    }
    if let [last] = pairs.remainder() {
        out[x.len() / 2] = (code(*last) << 4) | code(0.0);
    }
}
