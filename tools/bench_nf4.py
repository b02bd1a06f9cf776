#!/usr/bin/env python
"""NF4 quantization speed: pyft's Rust quantizer against bitsandbytes' CPU backend, side by side.

Both quantize the same 4096 × 11008 bf16 matrix (45M weights, σ = 0.02: a 7B model's MLP
projection) at blocksize 64, with double quantization (QLoRA's default) and without. Each
timing is the median of ``--repeat`` runs after one warm-up; the outputs must be byte-identical
(packed codes and every quant-state tensor), or the benchmark fails.

On CUDA (``--cuda``, or when a GPU is present) it also measures dequantization throughput: pyft's
Triton kernel against ``bitsandbytes.functional.dequantize_4bit``, in GB/s of bf16 output.

Usage: ``python tools/bench_nf4.py [--repeat N] [--threads T]``. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def median_seconds(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_quantize(repeat: int) -> list[dict]:
    import torch
    import bitsandbytes.functional as bnb_f

    from pyft.quant import quantize_nf4

    g = torch.Generator().manual_seed(0)
    w = (torch.randn(4096, 11008, generator=g) * 0.02).to(torch.bfloat16)
    rows = []
    for double_quant in (True, False):
        ours = quantize_nf4(w, 64, double_quant)
        packed, qs = bnb_f.quantize_4bit(w, blocksize=64, compress_statistics=double_quant, quant_type="nf4")
        theirs = qs.as_dict(packed=True)
        if not torch.equal(ours[0], packed) or list(ours[1]) != list(theirs) or not all(
                torch.equal(ours[1][k], theirs[k]) for k in theirs):
            raise SystemExit(f"outputs differ from bitsandbytes (double_quant={double_quant})")
        t_pyft = median_seconds(lambda: quantize_nf4(w, 64, double_quant), repeat)
        t_bnb = median_seconds(
            lambda: bnb_f.quantize_4bit(w, blocksize=64, compress_statistics=double_quant, quant_type="nf4"), repeat)
        rows.append({"case": f"quantize bf16 4096x11008 bs64{' +DQ' if double_quant else ''}",
                     "bitsandbytes_s": t_bnb, "pyft_s": t_pyft, "speedup": t_bnb / t_pyft, "identical": True})
    return rows


def bench_dequant_cuda(repeat: int) -> list[dict]:
    import torch
    import bitsandbytes.functional as bnb_f

    from pyft.quant import NestedAbsmax, quantize_nf4
    from pyft.quant.nf4 import parse_state_blob
    from pyft.quant.triton_dequant import dequantize_nf4_triton

    rows = []
    for shape in ((4096, 11008), (8192, 8192)):
        w = (torch.randn(*shape, device="cuda") * 0.02).to(torch.bfloat16)
        packed, state = quantize_nf4(w, 64, True)
        meta = parse_state_blob(state["quant_state.bitsandbytes__nf4"])
        b_packed, qs = bnb_f.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
        nbytes = w.numel() * 2

        def sync(fn):
            def run():
                fn()
                torch.cuda.synchronize()
            return run

        scales = NestedAbsmax(state["absmax"], state["nested_absmax"], state["nested_quant_map"],
                              torch.tensor(meta.nested_offset, dtype=torch.float32, device="cuda"))
        ours = sync(lambda: dequantize_nf4_triton(packed, scales, meta.shape, meta.blocksize, meta.dtype))
        theirs = sync(lambda: bnb_f.dequantize_4bit(b_packed, qs))
        t_pyft, t_bnb = median_seconds(ours, repeat * 10), median_seconds(theirs, repeat * 10)
        rows.append({"case": f"dequant bf16 {shape[0]}x{shape[1]} +DQ (CUDA)", "bitsandbytes_s": t_bnb,
                     "pyft_s": t_pyft, "speedup": t_bnb / t_pyft, "pyft_GBps": nbytes / t_pyft / 1e9,
                     "bitsandbytes_GBps": nbytes / t_bnb / 1e9})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch and pyft threads (default: all cores)")
    ap.add_argument("--cuda", action="store_true", help="also benchmark CUDA dequantization")
    args = ap.parse_args()
    if args.threads:
        os.environ["PYFT_NUM_THREADS"] = str(args.threads)
    import torch

    from pyft import _core

    if _core.build_profile() != "release":
        raise SystemExit("pyft._core is a debug build: run tools/dev.sh first")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = bench_quantize(args.repeat)
    if args.cuda or torch.cuda.is_available():
        rows += bench_dequant_cuda(args.repeat)
    print(f"{'case':<44}{'bitsandbytes':>14}{'pyft':>10}{'speedup':>9}")
    for r in rows:
        print(f"{r['case']:<44}{r['bitsandbytes_s'] * 1e3:>11.1f} ms{r['pyft_s'] * 1e3:>7.1f} ms{r['speedup']:>8.1f}x")
    print(json.dumps({"bench": "nf4", "threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    main()
