"""Device parameterisation and float error bounds for tests that run on the CPU in the normal suite
and on CUDA in the GPU lane (``pytest -m gpu``, see ``tools/gpu-check``).

``DEVICES`` parameterises a test over ``cpu`` and ``cuda``; the ``cuda`` case carries the ``gpu``
mark (deselected by the default ``-m 'not gpu and not slow'``) and skips cleanly without CUDA.
"""

from __future__ import annotations

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
#: Marks of a test (or case) that needs a CUDA device.
GPU = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
CUDA = pytest.param("cuda", marks=GPU, id="cuda")
DEVICES = [pytest.param("cpu", id="cpu"), CUDA]


def requires_cuda(test):
    """Mark a test ``gpu`` and skip it without CUDA."""
    for mark in reversed(GPU):
        test = mark(test)
    return test

#: Unit roundoff u (half the machine epsilon): a correctly rounded result is within ``u·|x|`` of ``x``.
UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def matmul_error_bound(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """Elementwise bound on ``|a @ b (+ bias) - exact|`` for a GEMM with float32 accumulation whose
    result is rounded to ``out_dtype``, given the exact (float64) value from the same inputs.

    With ``S = |a| @ |b| (+ |bias|)`` (float64) and ``K`` the reduction length, the error is at
    most ``(K + 2)·u32·S`` for the float32 sums, plus ``2·u_out·S``: one rounding of the output
    (``|result| <= S``) and one more for a split-K reduction whose partial sums cuBLAS may round
    to the output dtype (``allow_bf16/fp16_reduced_precision_reduction``, on by default).
    """
    k = a.shape[-1]
    s = a.double().abs() @ b.double().abs()
    if bias is not None:
        s = s + bias.double().abs()
    return ((k + 2) * UNIT_ROUNDOFF[torch.float32] + 2 * UNIT_ROUNDOFF[out_dtype]) * s
