"""The GPU lane's tools, on CPU: ``tools/gpu-check`` parses and prints its plan, ``tools/gpu-wheels``
parses, and every benchmark it runs has a smoke run here (tiny shapes, one step, CPU), so a broken
benchmark shows up before a GPU machine is spent on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["env", "install", "pytest", "bench_nf4", "bench_optim", "bench_train_lora", "bench_train_qlora"]


def _run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _bench(script: str, *args: str, timeout: int = 300) -> dict:
    r = _run([sys.executable, str(ROOT / "tools" / script), *args], timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["bench"] == script.removeprefix("bench_").removesuffix(".py")
    return result


@pytest.mark.parametrize("script", ["gpu-check", "gpu-wheels"])
def test_gpu_scripts_parse_and_are_executable(script):
    path = ROOT / "tools" / script
    assert os.access(path, os.X_OK)
    r = _run(["bash", "-n", str(path)])
    assert r.returncode == 0, r.stderr


def test_gpu_check_dry_run_prints_the_plan():
    r = _run([str(ROOT / "tools" / "gpu-check"), "--dry-run"])
    assert r.returncode == 0, r.stderr
    planned = [line.split()[:2] for line in r.stdout.splitlines() if line.startswith("  run ")]
    assert planned == [["run", s] for s in STEPS]
    assert "-m gpu" in r.stdout and "budget 470s" in r.stdout
    r = _run([str(ROOT / "tools" / "gpu-check"), "--dry-run", "--only", "pytest,bench_nf4", "--budget", "300"])
    assert r.returncode == 0 and "budget 300s" in r.stdout
    assert [line.split()[1] for line in r.stdout.splitlines() if line.startswith("  run ")] == ["pytest", "bench_nf4"]
    assert _run([str(ROOT / "tools" / "gpu-check"), "--bogus"]).returncode == 2


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_bench_train_smoke(method):
    r = _bench("bench_train.py", "--device", "cpu", "--shape", "tiny", "--steps", "1", "--warmup", "1",
               "--batch", "2", "--method", method)
    assert r["method"] == method and r["shape"] == "tiny" and r["precision"] == "fp32"
    for side in ("pyft", "hf"):
        assert r[f"{side}_tokens"] > 0 and r[f"{side}_seconds"] > 0 and r[f"{side}_peak_bytes"] > 0
        assert r[f"{side}_attn"] == "sdpa"


def test_bench_optim_smoke():
    pytest.importorskip("bitsandbytes")
    r = _bench("bench_optim.py", "--device", "cpu", "--hidden", "64", "--layers", "1", "--intermediate", "128",
               "--vocab", "512", "--steps", "1", "--warmup", "0", "--threads", "1", "--bnb", "--no-rss",
               "--only", "paged_adamw_8bit,bnb_adamw_8bit")
    assert r["params"] > 0 and "adamw_8bit_step_ms" not in r
    for name in ("adamw", "paged_adamw_8bit", "bnb_adamw_8bit"):
        assert r[f"{name}_step_ms"] > 0 and r[f"{name}_state_managed_bytes"] == 0
        assert r[f"{name}_state_host_bytes"] == 0  # on CPU nothing is paged
    assert 8 * r["params"] <= r["adamw_state_device_bytes"] <= 8 * r["params"] + 4 * 64  # + torch's step counters
    assert r["paged_adamw_8bit_state_device_bytes"] < r["adamw_state_device_bytes"] / 3


def test_bench_nf4_smoke():
    pytest.importorskip("bitsandbytes")
    r = _bench("bench_nf4.py", "--shape", "tiny", "--repeat", "1", "--threads", "1")
    assert [row["case"] for row in r["rows"]] == ["quantize bf16 256x512 bs64 +DQ", "quantize bf16 256x512 bs64"]
    assert all(row["identical"] for row in r["rows"])
