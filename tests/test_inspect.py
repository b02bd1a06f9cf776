"""`pyft inspect` and `_core.gguf_read_metadata`: GGUF files (against gguf-py's GGUFReader),
safetensors files, HF model directories (single file and sharded) and PEFT adapters, hostile inputs."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pyft import _core
from pyft.cli.main import main
from pyft.errors import DataError
from pyft.inspect import LLAMA_FILE_TYPES, format_summary, inspect_path, read_safetensors_header
from pyft.testing import make_tiny_model

CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"


@pytest.fixture(scope="module")
def gguf_py():
    """gguf-py 0.19.0, the independent reference reader/writer."""
    return pytest.importorskip("gguf")


def _write_gguf(gguf, path: Path, *, alignment: int | None = None, adapter: bool = False,
                extra_tensors: dict | None = None, endianess=None) -> Path:
    """A small GGUF file with every KV type, tokenizer keys and F32/F16/BF16/Q8_0/Q4_K tensors."""
    kwargs = {} if endianess is None else {"endianess": endianess}
    w = gguf.GGUFWriter(str(path), "llama", **kwargs)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    V = gguf.GGUFValueType
    if adapter:
        w.add_type("adapter")
        w.add_string("adapter.type", "lora")
        w.add_float32("adapter.lora.alpha", 16.0)
    else:
        w.add_type("model")
        w.add_name("Tiny Llama")
        w.add_file_type(15)
        w.add_block_count(2)
        w.add_context_length(512)
        w.add_embedding_length(256)
        w.add_feed_forward_length(512)
        w.add_head_count(4)
        w.add_head_count_kv(2)
        w.add_rope_freq_base(10000.0)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_uint8("test.u8", 200)
        w.add_int8("test.i8", -100)
        w.add_uint16("test.u16", 60000)
        w.add_int16("test.i16", -30000)
        w.add_int32("test.i32", -2_000_000_000)
        w.add_uint64("test.u64", 2**63 + 5)
        w.add_int64("test.i64", -(2**62))
        w.add_float64("test.f64", 0.1)
        w.add_bool("test.bool", False)
        w.add_array("test.ints", [3, -1, 4])
        w.add_array("test.bools", [True, False, True])
        w.add_key_value("test.u64s", [1, 2**40], V.ARRAY, sub_type=V.UINT64)
        w.add_key_value("test.f64s", [0.5, -1.25], V.ARRAY, sub_type=V.FLOAT64)
        tokens = ["<s>", "</s>", "<|eot_id|>"] + [f"t{i}" for i in range(37)]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("llama-bpe")
        w.add_token_list(tokens)
        w.add_token_scores([float(-i) for i in range(len(tokens))])
        w.add_token_types([1] * len(tokens))
        w.add_token_merges(["t 0", "t 1"])
        w.add_bos_token_id(0)
        w.add_eos_token_id(1)
        w.add_eot_token_id(2)
        w.add_chat_template(CHAT_TEMPLATE)
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((40, 256)).astype(np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(256, dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight", rng.standard_normal((3, 64)).astype(np.float16))
    w.add_tensor("blk.0.attn_k.weight", rng.integers(0, 255, (2, 2 * 64), dtype=np.uint8),
                 raw_dtype=gguf.GGMLQuantizationType.BF16)
    w.add_tensor("blk.0.ffn_up.weight", rng.integers(0, 255, (3, 2 * 34), dtype=np.uint8),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.ffn_down.weight", rng.integers(0, 255, (2, 144), dtype=np.uint8),
                 raw_dtype=gguf.GGMLQuantizationType.Q4_K)
    for name, array in (extra_tensors or {}).items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _reference_view(gguf, path: Path) -> dict:
    """What gguf-py's reader sees, in the shape of our JSON."""
    r = gguf.GGUFReader(str(path))
    kv = []
    for name, field in r.fields.items():
        if name.startswith("GGUF."):  # gguf-py's synthetic header fields
            continue
        entry = {"key": name, "type": field.types[0].name}
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            entry["element_type"] = field.types[-1].name
            entry["length"] = len(field.data)
        entry["value"] = field.contents()
        kv.append(entry)
    tensors = [{"name": t.name, "type": t.tensor_type.name, "shape": [int(d) for d in reversed(t.shape)],
                "ne": [int(d) for d in t.shape], "offset": int(t.data_offset) - int(r.data_offset),
                "nbytes": int(t.n_bytes)} for t in r.tensors]
    return {"kv": kv, "tensors": tensors, "data_offset": int(r.data_offset), "alignment": int(r.alignment)}


# ---------------------------------------------------------------------------------------------
# GGUF reader vs gguf-py


@pytest.mark.parametrize("alignment", [None, 64])
def test_gguf_metadata_matches_gguf_py(gguf_py, tmp_path, alignment):
    path = _write_gguf(gguf_py, tmp_path / "m.gguf", alignment=alignment)
    ours = json.loads(_core.gguf_read_metadata(str(path), 1 << 20))
    ref = _reference_view(gguf_py, path)
    assert ours["version"] == 3
    assert ours["alignment"] == (alignment or 32) == ref["alignment"]
    assert ours["data_offset"] == ref["data_offset"]
    assert [e["key"] for e in ours["kv"]] == [e["key"] for e in ref["kv"]]
    for a, b in zip(ours["kv"], ref["kv"]):
        assert a == b, a["key"]
    assert ours["tensors"] == ref["tensors"]
    # tensor bytes end inside the file
    size = path.stat().st_size
    assert all(ours["data_offset"] + t["offset"] + t["nbytes"] <= size for t in ours["tensors"])


def test_gguf_metadata_summarises_long_arrays(gguf_py, tmp_path):
    path = _write_gguf(gguf_py, tmp_path / "m.gguf")
    kv = {e["key"]: e for e in json.loads(_core.gguf_read_metadata(str(path)))["kv"]}
    tokens = kv["tokenizer.ggml.tokens"]
    assert tokens["length"] == 40
    assert tokens["value"] == ["<s>", "</s>", "<|eot_id|>"] + [f"t{i}" for i in range(13)]
    kv = {e["key"]: e for e in json.loads(_core.gguf_read_metadata(str(path), max_array=2))["kv"]}
    assert kv["test.ints"] == {"key": "test.ints", "type": "ARRAY", "element_type": "INT32", "length": 3,
                               "value": [3, -1]}
    assert kv["test.u64"] == {"key": "test.u64", "type": "UINT64", "value": 2**63 + 5}


def test_file_type_names_match_gguf_py(gguf_py):
    for ft in gguf_py.LlamaFileType:
        assert LLAMA_FILE_TYPES[ft.value] == ft.name


def test_inspect_gguf_model(gguf_py, tmp_path, capsys):
    path = _write_gguf(gguf_py, tmp_path / "m.gguf")
    s = inspect_path(path)
    assert s["kind"] == "gguf" and s["architecture"] == "llama" and s["name"] == "Tiny Llama"
    assert s["file_type"] == {"id": 15, "name": "MOSTLY_Q4_K_M"}
    assert s["hparams"]["llama.block_count"] == 2 and s["hparams"]["llama.attention.head_count_kv"] == 2
    assert all(k.startswith("llama.") for k in s["hparams"])
    tok = s["tokenizer"]
    assert (tok["model"], tok["pre"], tok["vocab_size"], tok["merges"]) == ("gpt2", "llama-bpe", 40, 2)
    assert (tok["bos"], tok["eos"], tok["eot"]) == (0, 1, 2)
    assert tok["chat_template"] == {"length": len(CHAT_TEMPLATE), "first_line": CHAT_TEMPLATE.splitlines()[0]}
    assert s["adapter"] is None and s["tensor_count"] == 6 and "tensors" not in s
    ref = gguf_py.GGUFReader(str(path))
    assert s["total_bytes"] == sum(int(t.n_bytes) for t in ref.tensors)
    assert s["parameters"] == sum(int(t.n_elements) for t in ref.tensors)
    assert s["types"]["F32"] == {"count": 2, "bytes": 4 * (40 * 256 + 256), "parameters": 40 * 256 + 256}
    assert s["types"]["Q4_K"] == {"count": 1, "bytes": 288, "parameters": 512}
    assert set(s["types"]) == {"F32", "F16", "BF16", "Q8_0", "Q4_K"}

    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    for needle in ("GGUF file", "MOSTLY_Q4_K_M (15)", "llama.context_length", "1e-05",
                   "gpt2 (pre llama-bpe), 40 tokens", "bos 0, eos 1, eot 2", "Q4_K", "6, "):
        assert needle in text, needle
    assert "blk.0.ffn_down.weight" not in text
    assert main(["inspect", str(path), "--tensors"]) == 0
    text = capsys.readouterr().out
    assert "blk.0.ffn_down.weight" in text and "[2, 256]" in text and "[40, 256]" in text
    assert main(["inspect", str(path), "--json", "--tensors"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_json == json.loads(json.dumps(inspect_path(path, tensors=True)))
    assert as_json["tensors"][5] == {"name": "blk.0.ffn_down.weight", "type": "Q4_K", "shape": [2, 256]}


def test_inspect_gguf_adapter(gguf_py, tmp_path):
    path = _write_gguf(gguf_py, tmp_path / "a.gguf", adapter=True)
    s = inspect_path(path)
    assert s["type"] == "adapter" and s["adapter"] == {"type": "lora", "lora_alpha": 16.0}
    assert s["tokenizer"] is None and s["file_type"] is None
    assert "adapter lora, lora_alpha 16.0" in " ".join(format_summary(s).split())


# ---------------------------------------------------------------------------------------------
# Hostile GGUF files


def _expect_data_error(path: Path, *needles: str) -> str:
    with pytest.raises(DataError) as info:
        _core.gguf_read_metadata(str(path))
    message = str(info.value)
    assert info.value.file == str(path) and message.startswith(f"{path}: "), message
    for n in needles:
        assert n in message, message
    return message


def test_hostile_gguf_files_raise_data_error(gguf_py, tmp_path, capsys):
    good = _write_gguf(gguf_py, tmp_path / "good.gguf").read_bytes()
    meta = json.loads(_core.gguf_read_metadata(str(tmp_path / "good.gguf")))

    def variant(name: str, data: bytes) -> Path:
        p = tmp_path / f"{name}.gguf"
        p.write_bytes(data)
        return p

    _expect_data_error(variant("empty", b""), "truncated")
    _expect_data_error(variant("magic", b"GGUG" + good[4:]), "not a GGUF file")
    _expect_data_error(variant("v2", good[:4] + struct.pack("<I", 2) + good[8:]),
                       "version 2 is not supported")
    _expect_data_error(variant("header-only", good[:meta["data_offset"]]), "ends past the end of the file")
    _expect_data_error(variant("half", good[: len(good) // 3]), "truncated")
    _expect_data_error(variant("kv-count", good[:16] + struct.pack("<q", 1 << 50) + good[24:]), "KV count")
    # the first tensor's type id (after its name, n_dims and ne) set to I32 (26), unknown to pyft
    name = b"token_embd.weight"
    at = good.index(name) + len(name) + 4 + 2 * 8
    assert struct.unpack_from("<I", good, at)[0] == 0
    _expect_data_error(variant("type", good[:at] + struct.pack("<I", 26) + good[at + 4:]), "ggml type id 26")
    # the second tensor's offset moved by one alignment unit
    name = b"blk.0.attn_norm.weight"
    at = good.index(name) + len(name) + 4 + 8 + 4
    off = struct.unpack_from("<Q", good, at)[0]
    bad = variant("offset", good[:at] + struct.pack("<Q", off + 32) + good[at + 8:])
    _expect_data_error(bad, f"tensor `blk.0.attn_norm.weight` has offset {off + 32}, expected {off}")

    big = _write_gguf(gguf_py, tmp_path / "big.gguf", endianess=gguf_py.GGUFEndian.BIG)
    _expect_data_error(big, "big-endian")

    # tensor types gguf-py writes but pyft does not know are named
    odd = _write_gguf(gguf_py, tmp_path / "odd.gguf", extra_tensors={"ids": np.arange(4, dtype=np.int32)})
    _expect_data_error(odd, "tensor `ids` has ggml type id 26")

    # the CLI reports the file and exits non-zero
    assert main(["inspect", str(bad)]) == 1
    assert f"pyft: error: {bad}: not a valid GGUF file" in capsys.readouterr().err


def test_random_corruptions_never_crash(gguf_py, tmp_path):
    good = bytearray(_write_gguf(gguf_py, tmp_path / "good.gguf").read_bytes())
    rng = np.random.default_rng(1)
    p = tmp_path / "fuzz.gguf"
    for _ in range(200):
        data = bytearray(good)
        for at in rng.integers(0, 900, size=3):
            data[at] ^= 1 << int(rng.integers(0, 8))
        p.write_bytes(bytes(data[: int(rng.integers(0, len(data) + 1))]))
        try:
            meta = json.loads(_core.gguf_read_metadata(str(p)))
        except DataError as e:
            assert e.file == str(p)
        else:
            size = p.stat().st_size
            assert all(meta["data_offset"] + t["offset"] + t["nbytes"] <= size for t in meta["tensors"])


# ---------------------------------------------------------------------------------------------
# safetensors files and HF model directories


@pytest.fixture(scope="module")
def tiny_model(tokenizer_dirs, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inspect")
    return make_tiny_model(root / "llama", tokenizer_dirs["llama3"], arch="llama")


def _reference_tensors(*files: Path) -> dict[str, tuple[str, list[int]]]:
    from safetensors import safe_open

    out = {}
    for f in files:
        with safe_open(f, "np") as st:
            for name in st.keys():
                sl = st.get_slice(name)
                out[name] = (sl.get_dtype(), list(sl.get_shape()))
    return out


def test_inspect_model_directory(tiny_model, capsys):
    s = inspect_path(tiny_model, tensors=True)
    config = json.loads((tiny_model / "config.json").read_text())
    assert s["kind"] == "model"
    c = s["config"]
    assert c["architectures"] == ["LlamaForCausalLM"] and c["model_type"] == "llama"
    heads = (c["num_attention_heads"], c["num_key_value_heads"])
    assert (c["hidden_size"], c["num_hidden_layers"], *heads) == (64, 2, 4, 4)
    assert c["vocab_size"] == config["vocab_size"] and c["tie_word_embeddings"] is False
    assert c["dtype"] == config.get("dtype", config.get("torch_dtype"))
    ref = _reference_tensors(tiny_model / "model.safetensors")
    assert {t["name"]: (t["dtype"], t["shape"]) for t in s["tensors"]} == ref
    assert s["tensor_count"] == len(ref) and s["parameters"] == sum(math.prod(sh) for _, sh in ref.values())
    assert s["shards"] == [{"file": "model.safetensors", "tensors": len(ref),
                            "bytes": (tiny_model / "model.safetensors").stat().st_size}]
    assert main(["inspect", str(tiny_model)]) == 0
    text = capsys.readouterr().out
    assert "HF model directory" in text and "LlamaForCausalLM" in text and "model.safetensors" in text


def test_inspect_sharded_model_and_single_file(tiny_model, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(tiny_model / "config.json", sharded / "config.json")
    tensors = load_file(tiny_model / "model.safetensors")
    names = sorted(tensors)
    parts = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
             "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, part in parts.items():
        save_file({n: tensors[n] for n in part}, sharded / file, metadata={"format": "pt"})
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: f for f, part in parts.items() for n in part}}))
    single, multi = inspect_path(tiny_model), inspect_path(sharded)
    for key in ("tensor_count", "parameters", "total_bytes", "dtypes", "config"):
        assert multi[key] == single[key], key
    assert [sh["file"] for sh in multi["shards"]] == sorted(parts)

    one = inspect_path(sharded / "model-00001-of-00002.safetensors", tensors=True)
    assert one["kind"] == "safetensors" and one["metadata"] == {"format": "pt"}
    assert [t["name"] for t in one["tensors"]] == sorted(parts["model-00001-of-00002.safetensors"],
                                                         key=lambda n: names.index(n))
    assert main(["inspect", "--json", str(sharded / "model-00002-of-00002.safetensors")]) == 0
    second = parts["model-00002-of-00002.safetensors"]
    assert json.loads(capsys.readouterr().out)["tensor_count"] == len(second)

    # a weight_map that names a tensor no shard holds
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    index["weight_map"]["ghost.weight"] = "model-00001-of-00002.safetensors"
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="weight_map disagrees with the shards: 1 listed but absent"):
        inspect_path(sharded)
    index["weight_map"]["ghost.weight"] = "../outside.safetensors"
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match=r"`weight_map` entry `ghost\.weight` names `\.\./outside\.safetensors`, "
                                        "which is not a file inside"):
        inspect_path(sharded)


def _safetensors_bytes(header: dict | bytes, data: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize("name, content, needle", [
    ("short", b"\x01\x02", "header too small"),
    ("huge", struct.pack("<Q", 2**63) + b"{}", "header too large"),
    ("notjson", _safetensors_bytes(b"{nope", b""), "invalid JSON in header"),
    ("list", _safetensors_bytes(b"[1]", b""), "invalid JSON in header"),
    ("dtype", _safetensors_bytes({"x": {"dtype": "F17", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
     'tensor `x` has unknown dtype "F17"'),
    ("shape", _safetensors_bytes({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
     "tensor `x` has shape [-1]"),
    ("past-end", _safetensors_bytes({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                                    b"\0" * 8), "tensor `x` ends at byte 16 of the 8-byte data section"),
    ("size", _safetensors_bytes({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
     "F32[3] needs 12 bytes but data_offsets [0, 8] hold 8"),
    ("gap", _safetensors_bytes({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8),
     "invalid offset for tensor `x`"),
    ("overlap", _safetensors_bytes({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                    "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
                                   b"\0" * 12), "invalid offset for tensor `y`"),
    ("trailing", _safetensors_bytes({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8),
     "the tensors cover 4 of the 8 data bytes"),
])
def test_hostile_safetensors_headers(tmp_path, name, content, needle):
    p = tmp_path / f"{name}.safetensors"
    p.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_safetensors_header(p)
    assert info.value.file == str(p) and str(info.value).startswith(f"{p}: ") and needle in str(info.value)


def test_safetensors_header_matches_the_safetensors_package(tiny_model):
    header = read_safetensors_header(tiny_model / "model.safetensors")
    ref = _reference_tensors(tiny_model / "model.safetensors")
    assert {t["name"]: (t["dtype"], t["shape"]) for t in header["tensors"]} == ref


# ---------------------------------------------------------------------------------------------
# PEFT adapters


def _save_adapter(base: Path, out: Path, **config) -> Path:
    import pyft
    from pyft.peft import LoraConfig, apply_lora, save_adapter

    model = pyft.load_model(base, dtype="float32")
    apply_lora(model, LoraConfig(**config))
    save_adapter(model, out, base_model_name_or_path="tiny/llama")
    return out


def test_inspect_lora_adapter(tiny_model, tmp_path, capsys):
    out = _save_adapter(tiny_model, tmp_path / "lora", r=4, alpha=8, targets=["q_proj", "v_proj"],
                        rank_pattern={"v_proj": 2})
    s = inspect_path(out)
    ref = _reference_tensors(out / "adapter_model.safetensors")
    assert (s["kind"], s["peft_type"], s["base_model_name_or_path"]) == ("adapter", "LORA", "tiny/llama")
    assert (s["r"], s["lora_alpha"], s["scaling"]) == (4, 8, 2.0)
    assert (s["use_rslora"], s["use_dora"]) == (False, False)
    assert sorted(s["target_modules"]) == ["q_proj", "v_proj"] and s["rank_pattern"] == {"v_proj": 2}
    assert s["adapted_modules"] == 2 * 2 and s["max_rank"] == 4
    assert s["adapter_parameters"] == s["lora_parameters"] == sum(math.prod(sh) for _, sh in ref.values())
    assert s["tensor_count"] == len(ref) == 8
    assert s["serving"]["vllm"] == {"ok": True, "max_lora_rank": 8, "problems": []}
    assert s["serving"]["gguf_lora"] == {"ok": True, "problems": []}
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "PEFT adapter directory" in text and "scaling 2 (alpha/r)" in text
    assert "vLLM" in text and "yes (--max-lora-rank 8)" in text


def test_inspect_adapter_serving_limits(tiny_model, tmp_path, capsys):
    out = _save_adapter(tiny_model, tmp_path / "dora", r=16, alpha=32, rslora=True, dora=True,
                        targets=["q_proj"], modules_to_save=["lm_head"])
    s = inspect_path(out)
    assert s["scaling"] == pytest.approx(32 / 4) and s["use_dora"] and s["modules_to_save"] == ["lm_head"]
    assert s["lora_parameters"] < s["adapter_parameters"]  # lm_head is saved whole
    assert not s["serving"]["vllm"]["ok"] and s["serving"]["vllm"]["problems"] == ["DoRA is not supported"]
    assert s["serving"]["gguf_lora"]["problems"] == ["DoRA is not supported",
                                                     "modules_to_save ['lm_head'] is not supported"]
    assert main(["inspect", "--json", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["serving"]["vllm"]["ok"] is False

    out = _save_adapter(tiny_model, tmp_path / "embed", r=2, alpha=2, targets=["q_proj"],
                        modules_to_save=["embed_tokens"])
    config = json.loads((out / "adapter_config.json").read_text())
    config["r"] = 600  # beyond vLLM's largest --max-lora-rank
    (out / "adapter_config.json").write_text(json.dumps(config))
    vllm = inspect_path(out)["serving"]["vllm"]
    assert vllm["max_lora_rank"] is None
    assert vllm["problems"] == ["modules_to_save ['embed_tokens'] (only ['lm_head'])",
                                "rank 600 exceeds vLLM's largest --max-lora-rank 512"]


# ---------------------------------------------------------------------------------------------
# Bad paths and unknown kinds


def test_bad_paths_and_unknown_kinds(tmp_path, capsys):
    with pytest.raises(FileNotFoundError):
        inspect_path(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="unknown kind") as info:
        inspect_path(tmp_path / "notes.txt")
    assert info.value.file == str(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="unknown kind"):
        inspect_path(tmp_path / "empty")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text("{}")
    with pytest.raises(DataError, match="no model.safetensors"):
        inspect_path(tmp_path / "cfg")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{not json")
    with pytest.raises(DataError, match="malformed JSON"):
        inspect_path(tmp_path / "adapter")
    for args in (["inspect", str(tmp_path / "missing")], ["inspect", str(tmp_path / "notes.txt")]):
        assert main(args) == 1
        assert capsys.readouterr().err.startswith(f"pyft: error: {args[1]}")


def test_adapter_config_fields_of_the_wrong_type(tiny_model, tmp_path, capsys):
    out = _save_adapter(tiny_model, tmp_path / "lora", r=2, alpha=2, targets=["q_proj"])
    config = json.loads((out / "adapter_config.json").read_text())
    capsys.readouterr()  # the model loading's progress bar
    for field, value, needle in [("modules_to_save", 3, "field `modules_to_save` must be an array of strings, got an integer 3"),
                                 ("rank_pattern", ["q_proj"], "field `rank_pattern` must be an object, got an array"),
                                 ("use_dora", "no", 'field `use_dora` must be true or false, got a string "no"')]:
        (out / "adapter_config.json").write_text(json.dumps({**config, field: value}))
        with pytest.raises(DataError, match=needle) as info:
            inspect_path(out)
        assert (info.value.file, info.value.field) == (str(out / "adapter_config.json"), field)
        assert main(["inspect", str(out)]) == 1
        assert capsys.readouterr().err == f"pyft: error: {out / 'adapter_config.json'}: {needle}\n"


# ---------------------------------------------------------------------------------------------
# Files that are not regular files


_GUARDED = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit})); "
            "from pyft.cli.main import main; sys.exit(main(sys.argv[1:]))")


@pytest.mark.parametrize("inspected, special, kind", [
    ("x.gguf", "x.gguf", "fifo"), ("x.safetensors", "x.safetensors", "fifo"),
    ("z.gguf", "z.gguf", "zero"), ("z.safetensors", "z.safetensors", "zero"),
    ("model", "model/config.json", "fifo"), ("model", "model/model.safetensors", "fifo"),
    ("model", "model/model.safetensors", "zero"), ("model", "model/config.json", "zero"),
    ("adapter", "adapter/adapter_config.json", "fifo"), ("adapter", "adapter/adapter_model.safetensors", "zero"),
])
def test_special_files_are_refused_without_blocking(tiny_model, tmp_path, inspected, special, kind):
    """A FIFO used to block `pyft inspect` for ever, and files that are not regular were taken for
    missing ones; they are refused, naming the path. Run in a subprocess with a timeout and a 2 GiB
    address-space cap (`pyft inspect` imports no torch: about 30 MB), so the old behaviour fails the
    test instead of hanging it or reading /dev/zero until memory runs out."""
    if inspected == "model":
        shutil.copytree(tiny_model, tmp_path / "model")
    elif inspected == "adapter":
        _save_adapter(tiny_model, tmp_path / "adapter", r=2, alpha=2, targets=["q_proj"])
    path = tmp_path / special
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    r = subprocess.run([sys.executable, "-c", _GUARDED.format(limit=2 * 2**30), "inspect", str(tmp_path / inspected)],
                       check=False, capture_output=True, text=True, timeout=60)
    what = "a FIFO" if kind == "fifo" else "a character device"
    assert (r.returncode, r.stderr) == (1, (f"pyft: error: {path}: is {what}, not a regular file (pyft reads only "
                                            "regular files; symlinks are followed to what they point at)\n"))


@pytest.fixture(scope="module")
def other_adapters(tokenizer_dirs, tmp_path_factory):
    """One saved adapter of every kind beyond LoRA, and a hybrid, on a tiny Llama."""
    from pyft.methods import TUNING_TABLE
    from pyft.models import load_model
    from pyft.train.config import TrainConfig
    from pyft.train.tunings import apply_adapters, save_adapters

    root = tmp_path_factory.mktemp("kinds")
    base = make_tiny_model(root / "m", tokenizer_dirs["chatml"], arch="llama")
    names = [t.name for t in TUNING_TABLE.values() if t.adapter and t.section != "lora"]
    for kind in [*([n] for n in names), ["lora", "bottleneck"]]:
        cfg = TrainConfig(method="sft", tuning=kind if len(kind) > 1 else kind[0])
        model = load_model(base, dtype="float32")
        apply_adapters(cfg, model)
        save_adapters(cfg, model, root / "+".join(kind), base_model_name_or_path=str(base), task_type="CAUSAL_LM",
                      revision=None)
    return root, names


def test_every_adapter_kind_is_summarised_with_where_it_serves(other_adapters):
    from safetensors import safe_open

    from pyft.methods import TUNING_TABLE

    root, names = other_adapters
    for name in names:
        s = inspect_path(root / name)
        kind = TUNING_TABLE[name]
        with safe_open(str(root / name / "adapter_model.safetensors"), "pt") as f:
            params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        assert s["peft_type"] == kind.peft_type and s["adapter_parameters"] == params, name
        assert s["mergeable"] == kind.mergeable and not s["serving"]["vllm"]["ok"], name
        hint = "pyft merge" if kind.mergeable else "cannot be merged"
        assert hint in s["serving"]["vllm"]["problems"][0], name
        assert (s["adapted_modules"] is None) == kind.virtual_tokens, name
        text = format_summary(s)
        assert f"peft type              {kind.peft_type}" in text and "merges into weights" in text
    assert inspect_path(root / "ia3")["adapted_modules"] == 6  # k, v, down in 2 layers
    assert inspect_path(root / "bottleneck")["adapted_modules"] == 2  # one FFN adapter per layer


def test_a_hybrid_adapter_is_summarised_per_part(other_adapters):
    root, _ = other_adapters
    s = inspect_path(root / "lora+bottleneck")
    assert s["peft_type"] == "hybrid" and list(s["parts"]) == ["lora", "bottleneck"]
    assert s["parts"]["lora"]["peft_type"] == "LORA" and s["parts"]["bottleneck"]["peft_type"] == "PYFT_BOTTLENECK"
    assert s["adapter_parameters"] == sum(p["adapter_parameters"] for p in s["parts"].values())
    assert not s["mergeable"]
    assert "pyft hybrid of lora, bottleneck" in format_summary(s)
