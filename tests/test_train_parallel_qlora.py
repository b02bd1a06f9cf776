"""QLoRA under FSDP2: the NF4 base's packed codes become a frozen float parameter (bitsandbytes'
``quant_storage``) that FSDP shards, with the numerics of the uint8 buffer; 2 gloo processes give the
adapter and losses of 1, each holding half of the codes; the adapter loads in pyft and in PEFT."""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from helpers import chat_task, reorder_tolerance, torchrun_train
from torch import nn

import pyft
import pyft.data
from pyft.peft import load_adapter, save_adapter
from pyft.quant import NF4Linear, quantize_nf4, set_nf4_storage
from pyft.train import build_trainer, load_config, train
from pyft.train.parallel import nf4_bytes, nf4_storage_dtype

FLOATS = [torch.bfloat16, torch.float16, torch.float32]


def _nf4(out_f: int, in_f: int, *, double_quant: bool = True, bias: bool = True, seed: int = 0) -> NF4Linear:
    g = torch.Generator().manual_seed(seed)
    packed, state = quantize_nf4(torch.randn(out_f, in_f, generator=g) * 0.05, 64, double_quant)
    return NF4Linear.from_quant_state(packed, state, torch.randn(out_f, generator=g) if bias else None)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.uint8)


# -- the float storage itself ----------------------------------------------------------------------


@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("shape", [(48, 96), (3, 7)])  # 2304 bytes; 11 bytes: padded for every float dtype
@pytest.mark.parametrize("dtype", FLOATS)
def test_float_storage_is_bit_identical_to_uint8(dtype, shape, double_quant):
    """Same bytes (viewed back), dequantized weight, forward, input and bias gradients, bitsandbytes
    state dict; a frozen parameter FSDP can shard; ``.to(dtype)`` moves but never casts it."""
    ref = _nf4(*shape, double_quant=double_quant)
    ours = _nf4(*shape, double_quant=double_quant)
    ours.bias.requires_grad_(True)
    ref.bias.requires_grad_(True)
    ours.set_storage(dtype)
    size = dtype.itemsize
    assert isinstance(ours.weight, nn.Parameter) and not ours.weight.requires_grad
    assert ours.weight.dtype == ours.storage_dtype == dtype
    assert ours.weight.shape == (math.ceil(ref.packed_bytes / size), 1)
    assert "weight" in dict(ours.named_parameters()) and "weight" not in dict(ours.named_buffers())
    assert torch.equal(ours.packed(), ref.weight) and ours.packed().dtype == torch.uint8
    assert torch.equal(_bits(ours.weight).reshape(-1)[ref.packed_bytes:], torch.zeros(-ref.packed_bytes % size,
                                                                                      dtype=torch.uint8))
    assert torch.equal(_bits(ours.dequantized_weight()), _bits(ref.dequantized_weight()))
    a, b = ours.bnb_state_dict(), ref.bnb_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(5, shape[1], generator=torch.Generator().manual_seed(1))
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ours(xa), ref(xb)
    assert torch.equal(_bits(ya), _bits(yb))
    grad = torch.randn_like(ya)
    ya.backward(grad)
    yb.backward(grad)
    assert torch.equal(_bits(xa.grad), _bits(xb.grad)) and torch.equal(_bits(ours.bias.grad), _bits(ref.bias.grad))
    assert ours.weight.grad is None
    # a module-wide cast (model.half(), model.to(bfloat16)) keeps the bytes and their dtype
    param = ours.weight
    ours.to(torch.float64)
    ours.half()
    assert ours.weight is param and ours.weight.dtype == dtype and torch.equal(ours.packed(), ref.weight)
    # and back to the buffer
    ours.set_storage(torch.uint8)
    assert "weight" in dict(ours.named_buffers()) and torch.equal(ours.weight, ref.weight)


def test_storage_dtype_must_be_float_or_uint8():
    layer = _nf4(8, 64)
    with pytest.raises(ValueError, match="NF4 storage dtype must be uint8 or a floating-point dtype, got torch.int32"):
        layer.set_storage(torch.int32)


def test_set_nf4_storage_converts_every_nf4_layer():
    model = nn.Sequential(_nf4(8, 64), nn.Linear(4, 4), nn.Sequential(_nf4(16, 64, seed=1)))
    assert set_nf4_storage(model, torch.bfloat16) == 2
    assert [m.storage_dtype for m in model.modules() if isinstance(m, NF4Linear)] == [torch.bfloat16] * 2


@pytest.mark.parametrize("world", [2, 3, 4, 7])
@pytest.mark.parametrize("dtype", FLOATS)
def test_sharding_round_trip_restores_every_byte(dtype, world):
    """FSDP2's sharding and all-gather as it does them: ``torch.chunk`` on dim 0, each shard copied
    into a zero-padded buffer of the first chunk's size, the padded shards concatenated and the
    first rows kept. Storage holding every 16-bit pattern (NaN payloads, infinities, subnormals,
    -0; fp32 pairs them into NaNs with every low half) comes back byte for byte."""
    codes = torch.arange(2**16, dtype=torch.int32).to(torch.int16).view(torch.uint8)  # 131072 bytes
    codes = torch.cat([codes, torch.tensor([0xFF, 0x7F, 0x81], dtype=torch.uint8)])  # 131075: padded
    layer = NF4Linear(codes.reshape(-1, 1), torch.ones(-(-2 * codes.numel() // 64)), (2, codes.numel()))
    layer.set_storage(dtype)
    param = layer.weight.detach()
    chunks = torch.chunk(param, world, dim=0)
    rows = chunks[0].shape[0]
    shards = []
    for chunk in chunks:
        padded = param.new_zeros(rows, 1)
        padded[: chunk.shape[0]].copy_(chunk)
        shards.append(padded.to(dtype))  # the mixed-precision cast when param_dtype == dtype: none
    gathered = torch.cat(shards)[: param.shape[0]]
    assert torch.equal(_bits(gathered), _bits(param))
    assert torch.equal(gathered.reshape(-1).view(torch.uint8)[: codes.numel()], codes)


def test_storage_dtype_follows_what_fsdp_gathers():
    """bf16 mixed precision: bf16 (FSDP casts to it, except what is already bf16); none: the dtype
    holding most parameters (here bf16, not the float32 norm)."""
    model = nn.Sequential(nn.Linear(64, 64).bfloat16(), nn.LayerNorm(64), _nf4(8, 64))
    assert nf4_storage_dtype(model, torch.bfloat16) == torch.bfloat16
    assert nf4_storage_dtype(model, None) == torch.bfloat16
    assert nf4_storage_dtype(model.float(), None) == torch.float32
    assert nf4_storage_dtype(nn.Sequential(_nf4(8, 64)), None) == torch.float32


# -- a real FSDP2 all-gather in this process (one gloo rank) -----------------------------------------


class _Block(nn.Module):
    """Two NF4 layers and a trainable float layer between them (so the unit mixes trained and frozen)."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.mid, self.down = _nf4(96, 64, seed=2), nn.Linear(96, 96), _nf4(64, 96, seed=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.mid(self.up(x))))


@pytest.fixture
def one_rank_group():
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_fully_shard_gathers_the_exact_codes(one_rank_group, precision):
    """``fully_shard`` with the mixed precision pyft uses, a block inside a root as pyft shards decoder
    layers: the codes a forward sees are the original bytes, outputs and gradients (the backward
    dequantizes codes gathered again after the block resharded) those of the unsharded model computed
    as FSDP computes it (inputs and float parameters in ``param_dtype``). Storing them in another float dtype than the gather's
    is what corrupts them under bf16 (the check can fail)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh("cpu", (1,))
    param_dtype = torch.bfloat16 if precision == "bf16" else None
    mixed = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(4))

    def run(storage: torch.dtype | None, seen: dict[str, torch.Tensor]):
        torch.manual_seed(0)
        block = _Block()
        model = nn.Sequential(block, nn.Linear(64, 64))
        for name, m in block.named_modules():
            if isinstance(m, NF4Linear):
                m.register_forward_pre_hook(lambda mod, _, name=name: seen.__setitem__(name, mod.packed().clone()))
        # as pyft trains under bf16: autocast (the NF4 layers compute in its dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=param_dtype is not None):
            if storage is None:  # the reference: unsharded, FSDP's casts done by hand
                block.mid.to(param_dtype or torch.float32)
                model[1].to(param_dtype or torch.float32)
                y = model(x.to(param_dtype or torch.float32))
            else:
                set_nf4_storage(model, storage)
                fully_shard(block, mesh=mesh, mp_policy=mixed)
                fully_shard(model, mesh=mesh, mp_policy=mixed)
                y = model(x)
                # the block is resharded after its forward: the backward gathers the codes again
                assert hasattr(block.down.weight, "to_local")
        y.float().square().sum().backward()
        if storage is not None:  # outside FSDP's forward the codes are a shard: refused, not misread
            with pytest.raises(RuntimeError, match=r"NF4Linear: its codes are an FSDP shard here"):
                block.down.dequantized_weight()
        grad = block.mid.weight.grad
        grad = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
        return y, grad.float()

    torch.manual_seed(0)
    original = {n: m.packed().clone() for n, m in _Block().named_modules() if isinstance(m, NF4Linear)}
    storage = nf4_storage_dtype(_Block(), param_dtype)
    assert storage == (param_dtype or torch.float32)
    seen: dict[str, torch.Tensor] = {}
    y, grad = run(storage, seen)
    assert seen.keys() == original.keys() and all(torch.equal(seen[k], original[k]) for k in original)
    y_ref, grad_ref = run(None, {})
    assert torch.equal(_bits(y), _bits(y_ref)) and torch.equal(_bits(grad), _bits(grad_ref))
    if precision == "bf16":  # float32 storage gathered in bf16: a value cast, and half the bytes
        seen.clear()
        with contextlib.suppress(RuntimeError):  # the forward may also fail on the missing bytes
            run(torch.float32, seen)
        assert seen and not any(torch.equal(seen[k], original[k]) for k in seen)


# -- 2 processes == 1 process -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tokenizer_dirs, tmp_path_factory):
    """A tiny Qwen2 (untied output layer) and chat data."""
    return chat_task(tmp_path_factory.mktemp("parallel_qlora"), tokenizer_dirs["chatml"])


def _args(setup, **extra) -> list[str]:
    args = {"model": setup["model"], "data": setup["data"], "method": "qlora", "lora.r": 4, "lora.alpha": 8,
            "lora.dropout": 0.0, "train.lr": 1e-3, "train.max_steps": 3, "train.seed": 3,
            "train.schedule": "constant", "train.eval_every": 3, "train.save_every": 2, "train.precision": "fp32",
            **extra}
    return [f"{k}={v}" for k, v in args.items()]


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _tolerance(setup, steps: int = 3, rows: int = 8) -> float:
    """:func:`helpers.reorder_tolerance` for this tiny model: the 2 ranks' shards and the sum of
    their gradients only reorder float32 reductions; the NF4 base is the same bytes on both sides."""
    config = json.loads((setup["model"] / "config.json").read_text())
    tokens = rows * max(len(r["input_ids"]) for r in pyft.data.load(setup["data"]))
    return reorder_tolerance(steps=steps, tokens=tokens, matmuls=7 * config["num_hidden_layers"] + 1,
                             width=max(config["vocab_size"], config["intermediate_size"]))


def _dense_with(nf4_model: nn.Module, model_dir: Path) -> nn.Module:
    """The float32 model with each NF4 layer's dequantized weight (no bitsandbytes)."""
    dense = pyft.load_model(model_dir, dtype="float32")
    modules = dict(dense.named_modules())
    count = 0
    with torch.no_grad():
        for name, m in nf4_model.named_modules():
            if isinstance(m, NF4Linear):
                modules[name.removesuffix(".base_layer")].weight.copy_(m.dequantized_weight(torch.float32))
                count += 1
    assert count == 7 * dense.config.num_hidden_layers
    return dense


def test_qlora_fsdp_two_processes_equal_one_process(setup, tmp_path):
    """FSDP2 on 2 gloo processes x batch 4 gives the adapter, losses and gradient norms of 1 process
    x batch 8; each rank holds half of the NF4 codes (stored as float32 under fp32); its sharded
    checkpoints hold the adapter alone and resume on 1 process; the adapter loads with pyft on the
    QLoRA base (the in-memory model's logits) and with PEFT on the same weights dequantized."""
    args = _args(setup)
    trainer = build_trainer(load_config(None, [*args, f"output={tmp_path / 'single'}", "train.batch_size=8"]))
    trainer.run()
    save_adapter(trainer.model, tmp_path / "single" / "adapter")
    r = torchrun_train([*args, f"output={tmp_path / 'fsdp'}", "train.batch_size=4", "train.parallel=fsdp"])
    assert r.returncode == 0, r.stderr[-3000:]

    # each rank holds half of the codes: the padded float32 storage of the uint8 codes, split in two
    found = re.search(r"NF4 base codes stored as (\w+), held per rank: ([\d, ]+) of (\d+) bytes; block scales: "
                      r"(\d+) bytes on every rank", r.stderr)
    assert found, r.stderr[-3000:]
    per_rank = [int(v) for v in found[2].split(", ")]
    whole, scales = int(found[3]), int(found[4])
    nf4 = [m for m in trainer.model.modules() if isinstance(m, NF4Linear)]
    assert found[1] == "float32" and len(nf4) == 14
    assert whole == sum(-(-m.packed_bytes // 4) * 4 for m in nf4)
    # FSDP gives rank 0 ceil(rows / 2) rows of each [rows, 1] storage: at most 4 bytes a layer more
    assert len(per_rank) == 2 and sum(per_rank) == whole and max(per_rank) <= whole / 2 + 4 * len(nf4)
    # the block scales stay whole on every rank: uint8 absmax (1/32 of the codes' bytes), nested absmax
    # and offset, and the 256-entry float32 code table of each layer (most of it at this tiny size)
    assert scales == nf4_bytes(trainer.model)[2]
    print(f"NF4 code bytes per rank {per_rank} of {whole}; scales {scales} on every rank")
    assert scales - len(nf4) * 257 * 4 <= whole / 32 + 4 * len(nf4) * 2

    single, multi = _adapter(tmp_path / "single"), _adapter(tmp_path / "fsdp")
    assert single and single.keys() == multi.keys()
    tol = _tolerance(setup)
    for k in single:
        scale = single[k].abs().max().clamp_min(1e-12)
        assert float((single[k] - multi[k]).abs().max() / scale) <= tol, k
    x, y = _metrics(tmp_path / "single"), _metrics(tmp_path / "fsdp")
    assert len(x) == len(y)
    for p, q in zip(x, y):
        key = "loss" if "loss" in p else "eval_loss"
        assert p[key] == pytest.approx(q[key], rel=tol), key
        if "grad_norm" in p:
            assert p["grad_norm"] == pytest.approx(q["grad_norm"], rel=tol)

    # the sharded checkpoint holds the trained tensors only (no NF4 codes); 1 process resumes it
    from safetensors import safe_open

    step2 = tmp_path / "fsdp" / "checkpoints" / "step-000002"
    for f in sorted((step2 / "sharded").glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            assert all(".lora_A." in k or ".lora_B." in k for k in st.keys()), f  # noqa: SIM118 (not iterable)
    shutil.copytree(tmp_path / "fsdp", tmp_path / "resumed")
    train(load_config(None, [*args, f"output={tmp_path / 'resumed'}", "train.batch_size=8",
                             f"train.resume={tmp_path / 'resumed' / 'checkpoints' / 'step-000002'}"]))
    resumed = _adapter(tmp_path / "resumed")
    for k in single:
        scale = single[k].abs().max().clamp_min(1e-12)
        assert float((single[k] - resumed[k]).abs().max() / scale) <= tol, k

    ids = torch.tensor([[1, 5, 9, 20, 33, 47, 2, 8, 13]])
    trainer.model.eval()
    with torch.no_grad():
        in_memory = trainer.model(input_ids=ids).logits
        reloaded = pyft.load_model(setup["model"], quantize="nf4", dtype="float32")
        load_adapter(reloaded, tmp_path / "single" / "adapter")
        assert torch.equal(reloaded(input_ids=ids).logits, in_memory)  # the same bytes and the same ops
        ours = pyft.load_model(setup["model"], quantize="nf4", dtype="float32")
        load_adapter(ours, tmp_path / "fsdp" / "adapter")
        logits = ours(input_ids=ids).logits
        # adapters within `tol` of each other (relative to each tensor's max) move the logits by
        # about as much relative to their largest value
        assert float((logits - in_memory).abs().max() / in_memory.abs().max()) <= tol
        peft = pytest.importorskip("peft")
        theirs = peft.PeftModel.from_pretrained(_dense_with(ours, setup["model"]), tmp_path / "fsdp" / "adapter")
        ref = theirs.eval()(input_ids=ids).logits
    # same float32 weights on both sides; PEFT adds the LoRA term in another order (1e-5: a few
    # roundings of float32 at the logits' scale)
    assert float((logits - ref).abs().max() / ref.abs().max()) <= 1e-5
