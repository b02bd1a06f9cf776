//! Binding of `pyft_core::nf4`: NF4 quantization of tensors handed over as buffers (NumPy views
//! of torch tensors), written in place, with the GIL released.

use pyo3::buffer::{Element, PyBuffer};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyft_core::nf4::{self, Compat, Nf4Layout};
use pyft_core::tensor::DType;

use crate::error::to_pyerr;

/// A C-contiguous buffer's elements, checked to be `want` long and writable when asked.
fn contiguous<T: Element>(buf: &PyBuffer<T>, what: &str, want: Option<usize>, writable: bool) -> PyResult<usize> {
    if !buf.is_c_contiguous() {
        return Err(PyValueError::new_err(format!("{what}: buffer is not C-contiguous")));
    }
    if writable && buf.readonly() {
        return Err(PyValueError::new_err(format!("{what}: buffer is read-only")));
    }
    let n = buf.item_count();
    match want {
        Some(w) if w != n => Err(PyValueError::new_err(format!("{what}: {n} elements, expected {w}"))),
        _ => Ok(n),
    }
}

/// Quantize a tensor to NF4 in place, byte for byte like bitsandbytes' `quantize_4bit`.
///
/// Args:
///     src (buffer): the tensor's raw little-endian bytes (uint8, C order), `n · itemsize` long.
///     dtype (str): `float32`, `float16` or `bfloat16`.
///     blocksize (int): 32, 64, 128, 256, 512, 1024, 2048 or 4096.
///     compat (str): `cpu` (bitsandbytes' CPU backend, default) or `cuda` (its CUDA kernels).
///     packed (buffer): uint8 out, `(n + 1) // 2` bytes.
///     absmax (buffer): float32 out, `ceil(n / blocksize)` block scales.
/// Raises:
///     ValueError: a NaN or infinite element (named by index), or buffers of the wrong size.
///     ShapeError: an empty tensor.
///     ConfigError: an unsupported blocksize, dtype or compat mode.
#[pyfunction]
#[pyo3(signature = (src, dtype, blocksize, compat, packed, absmax))]
pub fn nf4_quantize(
    py: Python<'_>,
    src: PyBuffer<u8>,
    dtype: &str,
    blocksize: usize,
    compat: &str,
    packed: PyBuffer<u8>,
    absmax: PyBuffer<f32>,
) -> PyResult<()> {
    let dtype = DType::from_name(dtype).map_err(|e| to_pyerr(py, e))?;
    let compat = Compat::from_name(compat).map_err(|e| to_pyerr(py, e))?;
    let nbytes = contiguous(&src, "src", None, false)?;
    if nbytes % dtype.size() != 0 {
        return Err(PyValueError::new_err(format!("src: {nbytes} bytes are not whole {} elements", dtype.torch_name())));
    }
    let layout = Nf4Layout::new(nbytes / dtype.size(), blocksize).map_err(|e| to_pyerr(py, e))?;
    contiguous(&packed, "packed", Some(layout.packed_len()), true)?;
    contiguous(&absmax, "absmax", Some(layout.blocks()), true)?;
    // SAFETY: the three buffers are C-contiguous exports of the sizes checked above, kept alive
    // (and their exports held) by the `PyBuffer`s until this function returns; the outputs are
    // writable. Python code racing on the same memory from another thread is the caller's bug,
    // as with any buffer-protocol consumer.
    let (src, packed, absmax) = unsafe {
        (
            std::slice::from_raw_parts(src.buf_ptr() as *const u8, nbytes),
            std::slice::from_raw_parts_mut(packed.buf_ptr() as *mut u8, layout.packed_len()),
            std::slice::from_raw_parts_mut(absmax.buf_ptr() as *mut f32, layout.blocks()),
        )
    };
    py.detach(|| nf4::quantize(src, dtype, layout, compat, packed, absmax)).map_err(|e| to_pyerr(py, e))
}

/// Double-quantize NF4 block scales (blocks of 256 with the 8-bit dynamic map).
///
/// Args:
///     absmax (buffer): float32 block scales.
///     offset (float | None): the value to subtract (bitsandbytes uses torch's `absmax.mean()`);
///         None for the f64-accumulated mean.
///     compat (str): `cpu` (the CPU library's lookup table) or `cuda` (nearest, ties to even).
/// Returns:
///     tuple[bytes, list[float], float]: the u8 codes, the nested absmax per 256 scales, the offset.
#[pyfunction]
#[pyo3(signature = (absmax, offset, compat))]
pub fn nf4_double_quantize(
    py: Python<'_>,
    absmax: PyBuffer<f32>,
    offset: Option<f32>,
    compat: &str,
) -> PyResult<(Vec<u8>, Vec<f32>, f32)> {
    let compat = Compat::from_name(compat).map_err(|e| to_pyerr(py, e))?;
    let n = contiguous(&absmax, "absmax", None, false)?;
    let scales = absmax.to_vec(py)?;
    debug_assert_eq!(scales.len(), n);
    let offset = offset.unwrap_or_else(|| nf4::mean_offset(&scales));
    let nested = py.detach(|| nf4::double_quantize(&scales, offset, compat));
    Ok((nested.q8, nested.nested_absmax, nested.offset))
}

/// The JSON quant-state blob bitsandbytes stores as `<weight>.quant_state.bitsandbytes__nf4`.
///
/// Args:
///     blocksize (int), dtype (str), shape (list[int]), nested_offset (float | None).
/// Returns:
///     str: exactly Python's `json.dumps` of bitsandbytes' dict.
#[pyfunction]
#[pyo3(signature = (blocksize, dtype, shape, nested_offset=None))]
pub fn nf4_state_json(
    py: Python<'_>,
    blocksize: usize,
    dtype: &str,
    shape: Vec<usize>,
    nested_offset: Option<f32>,
) -> PyResult<String> {
    let dtype = DType::from_name(dtype).map_err(|e| to_pyerr(py, e))?;
    Ok(nf4::Nf4Meta { blocksize, dtype, shape, nested_offset }.to_json())
}
