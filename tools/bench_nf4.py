#!/usr/bin/env python
"""NF4 quantization speed: pyft's Rust quantizer against bitsandbytes' CPU backend, side by side.

Both quantize the same 4096 × 11008 bf16 matrix (45M weights, σ = 0.02: a 7B model's MLP
projection; ``--shape RxC`` for another) at blocksize 64, with double quantization (QLoRA's default)
and without. Each timing is the median of ``--repeat`` runs after one warm-up; the outputs must be
byte-identical (packed codes and every quant-state tensor), or the benchmark fails.

On CUDA (``--cuda``, or when a GPU is present) it also measures dequantization to bf16 (4096 × 11008
and 8192 × 8192, blocksize 64, double quantization): pyft's Triton kernel against bitsandbytes' CUDA
``dequantize_4bit``, both on the same codes and scales (bitsandbytes' CUDA quantization), whose
outputs must be bit-identical. Timed with ``triton.testing.do_bench`` (CUDA events, L2 flushed
between runs, median); GB/s counts the bf16 output (2 bytes per weight) and, as ``moved``, all the
bytes read and written (packed codes, 8-bit scales and nested scales too).

``--shape tiny`` is a smoke run (256 × 512; allowed on a debug build, measures nothing).
Usage: ``python tools/bench_nf4.py [--repeat N] [--threads T] [--shape RxC|tiny] [--cuda]``. Prints a
table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

DEQUANT_SHAPES = ((4096, 11008), (8192, 8192))


def median_seconds(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_quantize(repeat: int, shape: tuple[int, int]) -> list[dict]:
    import torch
    import bitsandbytes.functional as bnb_f

    from pyft.quant import quantize_nf4

    g = torch.Generator().manual_seed(0)
    w = (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)
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
        rows.append({"case": f"quantize bf16 {shape[0]}x{shape[1]} bs64{' +DQ' if double_quant else ''}",
                     "bitsandbytes_s": t_bnb, "pyft_s": t_pyft, "speedup": t_bnb / t_pyft, "identical": True})
    return rows


def bench_dequant_cuda(shapes) -> list[dict]:
    import torch
    import bitsandbytes.functional as bnb_f
    from triton.testing import do_bench

    from pyft.quant import NestedAbsmax
    from pyft.quant.triton_dequant import dequantize_nf4_triton

    rows = []
    for shape in shapes:
        w = (torch.randn(*shape, device="cuda") * 0.02).to(torch.bfloat16)
        packed, qs = bnb_f.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
        scales = NestedAbsmax(qs.absmax, qs.state2.absmax, qs.state2.code, qs.offset)

        def ours():
            return dequantize_nf4_triton(packed, scales, shape, 64, torch.bfloat16)

        def theirs():
            return bnb_f.dequantize_4bit(packed, qs)

        a, b = ours(), theirs().reshape(shape)
        if not torch.equal(a.view(torch.int16), b.view(torch.int16)):
            differ = int((a.view(torch.int16) != b.view(torch.int16)).sum())
            raise SystemExit(f"dequant {shape}: {differ} of {a.numel()} weights differ from bitsandbytes")
        t_pyft, t_bnb = do_bench(ours, return_mode="median") / 1e3, do_bench(theirs, return_mode="median") / 1e3
        out_bytes = w.numel() * 2
        moved = out_bytes + packed.numel() + qs.absmax.numel() + 4 * qs.state2.absmax.numel() + 4 * 256
        rows.append({"case": f"dequant bf16 {shape[0]}x{shape[1]} +DQ (CUDA)", "bitsandbytes_s": t_bnb,
                     "pyft_s": t_pyft, "speedup": t_bnb / t_pyft, "identical": True,
                     "pyft_GBps": out_bytes / t_pyft / 1e9, "bitsandbytes_GBps": out_bytes / t_bnb / 1e9,
                     "pyft_moved_GBps": moved / t_pyft / 1e9, "bitsandbytes_moved_GBps": moved / t_bnb / 1e9})
    return rows


def parse_shape(text: str) -> tuple[int, int]:
    if text == "tiny":
        return (256, 512)
    rows, cols = text.lower().split("x")
    return int(rows), int(cols)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch and pyft threads (default: all cores)")
    ap.add_argument("--shape", default="4096x11008", help="quantized matrix, ROWSxCOLS or tiny (256x512)")
    ap.add_argument("--cuda", action="store_true", help="also benchmark CUDA dequantization")
    args = ap.parse_args()
    if args.threads:
        os.environ["PYFT_NUM_THREADS"] = str(args.threads)
    import torch

    from pyft import _core

    if _core.build_profile() != "release":
        if args.shape != "tiny":
            print("pyft._core is a debug build: run tools/dev.sh first (a --shape tiny smoke run is allowed)",
                  file=sys.stderr)
            return 2
        print("note: a debug build of pyft._core (smoke run: the numbers mean nothing)", file=sys.stderr)
    if args.cuda and not torch.cuda.is_available():
        print("--cuda: no CUDA device", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = bench_quantize(args.repeat, parse_shape(args.shape))
    if args.cuda or torch.cuda.is_available():
        rows += bench_dequant_cuda(DEQUANT_SHAPES)
    print(f"{'case':<44}{'bitsandbytes':>14}{'pyft':>11}{'speedup':>9}{'pyft GB/s':>11}{'bnb GB/s':>10}")
    for r in rows:
        gbps = f"{r['pyft_GBps']:>11,.0f}{r['bitsandbytes_GBps']:>10,.0f}" if "pyft_GBps" in r else ""
        print(f"{r['case']:<44}{r['bitsandbytes_s'] * 1e3:>11.3f} ms{r['pyft_s'] * 1e3:>8.3f} ms"
              f"{r['speedup']:>8.1f}x{gbps}")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(json.dumps({"bench": "nf4", "device": device, "threads": torch.get_num_threads(), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
