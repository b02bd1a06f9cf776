"""Hub ids for models, tokenizers, adapters and datasets (pyft/hub.py and its entry points).

Nothing downloads: each test builds a Hugging Face cache in a temporary directory, laid out as
huggingface_hub lays it out (``models--owner--name/{blobs,snapshots/<commit>,refs/<ref>,trees}``:
blobs named by their git SHA-1 or LFS SHA-256, snapshot entries relative symlinks into ``blobs``),
checks that layout with huggingface_hub's own ``scan_cache_dir`` / ``try_to_load_from_cache``, and
runs with ``HF_HUB_OFFLINE=1``. The contents are ``pyft.testing`` tiny models and tokenizers.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyft import hub
from pyft.errors import ConfigError

COMMIT_A = "a" * 40  # tag v1
COMMIT_B = "b" * 40  # main
LFS = (".safetensors", ".parquet")


def write_hub_repo(cache: Path, repo_id: str, files: dict[str, bytes], commit: str, refs: tuple[str, ...] = ("main",),
                   repo_type: str = "model", tree: bool = True) -> Path:
    """One commit of a repository in a Hugging Face hub cache, as ``snapshot_download`` leaves it
    (with ``tree``: also the commit's tree listing, which huggingface_hub >= 2 writes and reads)."""
    root = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    entries = {}
    for rel, data in files.items():
        sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id
        lfs = rel.endswith(LFS)
        etag = hashlib.sha256(data).hexdigest() if lfs else sha1
        blob = root / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
        entries[rel] = {"size": len(data), "blob_id": sha1,
                        **({"lfs_sha256": etag, "lfs_size": len(data)} if lfs else {})}
    for ref in refs:
        (root / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    if tree:
        (root / "trees").mkdir(exist_ok=True)
        (root / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": entries}))
    return root / "snapshots" / commit


def dir_files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


RECORDS = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                         {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(12)]
CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
  - split: test
    path: data/test-*.parquet
- config_name: small
  data_files:
  - split: train
    path: small/train-*.parquet
---
# chats
"""


def parquet_bytes(records: list[dict]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tokenizer_dirs):
    """Local source directories: two tiny Qwen2 models (two commits of one repo) and a LoRA adapter."""
    import torch
    from helpers import perturb_adapters

    from pyft.models import load_model
    from pyft.peft import LoraConfig, apply_lora, save_adapter
    from pyft.testing import make_tiny_model

    base = tmp_path_factory.mktemp("hub-src")
    model_a = make_tiny_model(base / "model-a", tokenizer_dirs["chatml"], arch="qwen2", seed=1)
    model_b = make_tiny_model(base / "model-b", tokenizer_dirs["chatml"], arch="qwen2", seed=2)
    torch.manual_seed(0)
    m = load_model(model_b)
    apply_lora(m, LoraConfig(r=4, alpha=8, targets=["q_proj", "v_proj"]))
    perturb_adapters(m)
    adapter = save_adapter(m, base / "adapter", base_model_name_or_path="acme/tiny")
    return {"a": model_a, "b": model_b, "adapter": Path(adapter)}


@pytest.fixture
def cache(tmp_path, sources, monkeypatch):
    """A hub cache with acme/tiny (main = B, v1 = A), acme/tiny-lora, acme/chats (a dataset), offline."""
    import huggingface_hub

    home = tmp_path / "hf-home"
    c = home / "hub"
    decoys = {"pytorch_model.bin": b"not loaded", "modeling_tiny.py": b"raise SystemExit('code ran')"}
    write_hub_repo(c, "acme/tiny", {**dir_files(sources["a"]), **decoys}, COMMIT_A, refs=("v1",))
    write_hub_repo(c, "acme/tiny", {**dir_files(sources["b"]), **decoys}, COMMIT_B)
    write_hub_repo(c, "acme/tiny-lora", dir_files(sources["adapter"]), COMMIT_A)
    write_hub_repo(c, "acme/chats", {"README.md": CARD.encode(), "data/train-00000-of-00001.parquet":
                                     parquet_bytes(RECORDS[:8]), "data/test-00000-of-00001.parquet":
                                     parquet_bytes(RECORDS[8:]), "small/train-00000-of-00001.parquet":
                                     parquet_bytes(RECORDS[:2])}, COMMIT_A, repo_type="dataset")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(c))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(c))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(home / "datasets"))
    return c


def test_cache_layout_is_huggingface_hubs(cache):
    import huggingface_hub

    info = huggingface_hub.scan_cache_dir(cache)
    assert info.warnings == []
    repos = {(r.repo_type, r.repo_id): r for r in info.repos}
    assert set(repos) == {("model", "acme/tiny"), ("model", "acme/tiny-lora"), ("dataset", "acme/chats")}
    revs = {r.commit_hash: set(r.refs) for r in repos[("model", "acme/tiny")].revisions}
    assert revs == {COMMIT_A: {"v1"}, COMMIT_B: {"main"}}
    got = huggingface_hub.try_to_load_from_cache("acme/tiny", "config.json", cache_dir=cache, revision="v1")
    assert Path(got) == cache / "models--acme--tiny" / "snapshots" / COMMIT_A / "config.json"


def test_repo_id_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub.hub_ref("Qwen/Qwen2.5-0.5B-Instruct") == ("Qwen/Qwen2.5-0.5B-Instruct", None)
    assert hub.hub_ref("Qwen/Qwen2.5-0.5B-Instruct@refs/pr/1") == ("Qwen/Qwen2.5-0.5B-Instruct", "refs/pr/1")
    assert hub.hub_ref("hub:acme/x@v1") == ("acme/x", "v1")
    for path in ("./acme/x", "/abs/x", "a/b/c", "gpt2", "acme/x@", "out/model.gguf", "tok/tokenizer.json", "a--b/c"):
        assert hub.hub_ref(path) is None, path
    (tmp_path / "acme" / "x").mkdir(parents=True)
    assert hub.hub_ref("acme/x") is None  # a local path that exists wins
    assert hub.hub_ref("hub:acme/x") == ("acme/x", None)  # unless the id is marked
    assert hub.dataset_ref("tatsu-lab/alpaca") == ("tatsu-lab/alpaca", None, None, "train")
    assert hub.dataset_ref("o/n@v2:test[:10%]") == ("o/n", "v2", None, "test[:10%]")
    assert hub.dataset_ref("openai/gsm8k:main/train") == ("openai/gsm8k", None, "main", "train")
    assert hub.dataset_ref("data/train.jsonl") is None and hub.dataset_ref("o/n:") is None
    assert hub.hub_ref(Path("acme/y")) is None and hub.dataset_ref(Path("acme/y")) is None  # a Path is a path


def test_revision_pins_the_snapshot(cache, sources):
    snap = cache / "models--acme--tiny" / "snapshots"
    assert hub.resolve_model("acme/tiny") == snap / COMMIT_B
    assert hub.resolve_model("acme/tiny@v1") == snap / COMMIT_A
    assert hub.resolve_model("acme/tiny", revision=COMMIT_A) == snap / COMMIT_A
    assert hub.resolve_model(f"acme/tiny@{COMMIT_A}", revision=COMMIT_A) == snap / COMMIT_A
    for rev, src in (("main", "b"), ("v1", "a")):
        got = (hub.resolve_model(f"acme/tiny@{rev}") / "model.safetensors").read_bytes()
        assert got == (sources[src] / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="revision 'v1' in the id and revision 'main'"):
        hub.resolve_model("acme/tiny@v1", revision="main")


def test_offline_missing_id_is_named(cache):
    from pyft.models import check_model_dir

    with pytest.raises(FileNotFoundError) as e:
        check_model_dir("acme/absent@v2")
    assert "acme/absent (revision v2)" in str(e.value) and "HF_HUB_OFFLINE" in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"acme/tiny \(revision v9\).*HF_HUB_OFFLINE"):
        hub.resolve_model("acme/tiny@v9", kind="tokenizer")
    # The model is cached but not as an adapter: the missing file is named with the id.
    with pytest.raises(FileNotFoundError, match=r"acme/tiny \(revision main\): no adapter_config.json"):
        hub.resolve_model("acme/tiny", kind="adapter")


def test_incomplete_snapshot_offline(cache, sources):
    # A tokenizer fetched alone (no weights in the snapshot), then asked for as a model while offline.
    files = {k: v for k, v in dir_files(sources["a"]).items() if not k.endswith(".safetensors")}
    write_hub_repo(cache, "acme/tok-only", files, COMMIT_A, tree=False)
    assert hub.resolve_model("acme/tok-only", kind="tokenizer").name == COMMIT_A
    with pytest.raises(FileNotFoundError, match=r"acme/tok-only \(revision main\): no model.safetensors.*HF_HUB_OFF"):
        hub.resolve_model("acme/tok-only")
    # With the tree listing huggingface_hub knows the snapshot is incomplete and refuses it itself.
    write_hub_repo(cache, "acme/tok-tree", files, COMMIT_A)
    tree = cache / "models--acme--tok-tree" / "trees" / f"{COMMIT_A}.json"
    listing = json.loads(tree.read_text())
    listing["files"]["model.safetensors"] = {"size": 4, "blob_id": "0" * 40, "lfs_sha256": "0" * 64, "lfs_size": 4}
    tree.write_text(json.dumps(listing))
    with pytest.raises(FileNotFoundError, match=r"acme/tok-tree \(revision main\).*HF_HUB_OFFLINE"):
        hub.resolve_model("acme/tok-tree")


def test_local_dir_shadows_hub_id(cache, sources, tmp_path, monkeypatch):
    import shutil

    from pyft.models import check_model_dir

    monkeypatch.chdir(tmp_path)
    shutil.copytree(sources["a"], tmp_path / "acme" / "tiny")
    assert check_model_dir("acme/tiny") == Path("acme/tiny")
    assert check_model_dir("hub:acme/tiny").name == COMMIT_B
    # Neither a path nor an id: the old error, naming the string.
    for bad in ("./nope", "a/b/c", "nope"):
        with pytest.raises(FileNotFoundError, match=f"^{Path(bad)}: model directory not found$"):
            check_model_dir(bad)


def test_fetches_only_what_pyft_reads(monkeypatch, tmp_path):
    """The allow-lists, applied by huggingface_hub's own filter to a real repository listing with
    pickles, code and duplicate weights: only safetensors (the index's shards), configs and tokenizer
    files come down."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    repo = {"config.json": b"{}", "generation_config.json": b"{}", "tokenizer.json": b"{}",
            "tokenizer_config.json": b"{}", "chat_template.jinja": b"x", "merges.txt": b"", "vocab.json": b"{}",
            "model.safetensors.index.json": json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                                                       "b": "model-00002-of-00002.safetensors"}}).encode(),
            "model-00001-of-00002.safetensors": b"1", "model-00002-of-00002.safetensors": b"2",
            "consolidated.safetensors": b"dup", "original/model.safetensors": b"dup", "pytorch_model.bin": b"p",
            "model.pt": b"p", "x.pkl": b"p", "modeling_x.py": b"code", "configuration_x.py": b"code",
            "README.md": b"", "adapter_config.json": b"{}", "adapter_model.safetensors": b"a",
            "adapter_model.bin": b"p", "data/train.parquet": b"d", "data/x.jsonl": b"d", "loader.py": b"code"}
    calls = []

    def fake_snapshot_download(repo_id, *, repo_type=None, revision=None, allow_patterns=None, **kw):
        calls.append(allow_patterns)
        out = tmp_path / repo_id.replace("/", "--")  # one snapshot that fills up, as in the cache
        for f in filter_repo_objects(repo, allow_patterns=allow_patterns):
            (out / f).parent.mkdir(parents=True, exist_ok=True)
            (out / f).write_bytes(repo[f])
        return str(out)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    fetched = set()
    for kind in ("model", "tokenizer", "adapter", "config"):
        calls.clear()
        hub.resolve_model("acme/big", kind=kind)
        fetched.update(f for pats in calls for f in filter_repo_objects(repo, allow_patterns=pats))
        got = {f for pats in calls for f in filter_repo_objects(repo, allow_patterns=pats)}
        if kind == "model":
            assert {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"} <= got
            assert not {"consolidated.safetensors", "original/model.safetensors", "adapter_model.safetensors"} & got
        if kind == "config":
            assert got == {"config.json"}
    hub._snapshot("acme/data", None, list(hub.DATASET_FILES), repo_type="dataset")
    fetched.update(filter_repo_objects(repo, allow_patterns=calls[-1]))
    never = {"pytorch_model.bin", "model.pt", "x.pkl", "modeling_x.py", "configuration_x.py", "adapter_model.bin",
             "loader.py"}
    assert not never & fetched
    assert {"adapter_config.json", "adapter_model.safetensors", "data/train.parquet", "data/x.jsonl"} <= fetched


def test_load_model_and_adapter_from_hub(cache, sources):
    import torch

    from pyft.models import load_model
    from pyft.peft import load_adapter

    ours = load_model("acme/tiny@v1")
    ref = load_model(sources["a"])
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), ref.state_dict().values(), strict=True))
    ours, ref = load_model("acme/tiny"), load_model(sources["b"])
    load_adapter(ours, "acme/tiny-lora")
    load_adapter(ref, sources["adapter"])
    x = torch.tensor([[1, 5, 9, 14]])
    torch.testing.assert_close(ours(x).logits, ref(x).logits, rtol=0, atol=0)


def test_hub_dataset(cache):
    ds = hub.load_dataset("acme/chats")
    assert ds.num_rows == 8 and ds[0] == RECORDS[0]
    assert [r["messages"] for r in hub.load_dataset("acme/chats:test")] == [r["messages"] for r in RECORDS[8:]]
    assert hub.load_dataset("hub:acme/chats@main:small/train").num_rows == 2
    assert hub.load_dataset("acme/chats:train[:3]").num_rows == 3
    with pytest.raises(ConfigError, match=r"acme/chats \(revision main\): .*validation"):
        hub.load_dataset("acme/chats:validation")
    with pytest.raises(FileNotFoundError, match=r"acme/nodata \(revision main\).*HF_HUB_OFFLINE"):
        hub.load_dataset("acme/nodata")
    # A script-only repository (cached by another tool): no data files, and the script is never run.
    write_hub_repo(cache, "acme/scripted", {"README.md": b"# s\n", "scripted.py": b"raise SystemExit(3)"}, COMMIT_A,
                   repo_type="dataset")
    with pytest.raises(ConfigError, match="no data files .* a dataset script is never run"):
        hub.load_dataset("acme/scripted")


def test_datasets_missing_names_the_package(cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ConfigError, match="pip install datasets"):
        hub.load_dataset("acme/chats")


def _cli(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], check=False, capture_output=True, text=True,
                          env={**os.environ, **env, "OMP_NUM_THREADS": "1"}, timeout=600)


def _env(cache: Path) -> dict[str, str]:
    return {"HF_HOME": str(cache.parent), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


def test_cli_prepare_train_merge_from_hub(cache, sources, tmp_path):
    """`pyft data prepare <dataset id> --tokenizer <model id>`, `pyft train model=<id>` and
    `pyft-merge <base id> <adapter id>`, each against the same run from local paths."""
    from helpers import write_jsonl

    from pyft.data import PreparedInfo

    env = _env(cache)
    r = _cli("pyft.cli.main", "data", "prepare", "acme/chats", "--tokenizer", "acme/tiny", "--out",
             str(tmp_path / "hub-data"), "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    write_jsonl(tmp_path / "chats.jsonl", RECORDS[:8])
    r = _cli("pyft.cli.main", "data", "prepare", str(tmp_path / "chats.jsonl"), "--tokenizer", str(sources["b"]),
             "--out", str(tmp_path / "local-data"), "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    ours, ref = PreparedInfo.read(tmp_path / "hub-data"), PreparedInfo.read(tmp_path / "local-data")
    assert (ours.counts["kept"], ours.tokens, ours.trainable_tokens) == (8, ref.tokens, ref.trainable_tokens)
    for shard in ref.splits["train"]["shards"]:
        got, want = (tmp_path / "hub-data" / shard["file"]), (tmp_path / "local-data" / shard["file"])
        assert got.read_bytes() == want.read_bytes()

    r = _cli("pyft.cli.merge", "acme/tiny", "acme/tiny-lora", str(tmp_path / "merged-hub"), env=env)
    assert r.returncode == 0, r.stderr
    r = _cli("pyft.cli.merge", str(sources["b"]), str(sources["adapter"]), str(tmp_path / "merged-local"), env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "merged-hub" / "model.safetensors").read_bytes() == \
        (tmp_path / "merged-local" / "model.safetensors").read_bytes()

    r = _cli("pyft.cli.main", "train", "method=lora", "model=acme/tiny", f"data={tmp_path / 'hub-data'}",
             f"output={tmp_path / 'run'}", "train.max_steps=1", "train.batch_size=2", "train.device=cpu", env=env)
    assert r.returncode == 0, r.stderr
    adapter_config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "acme/tiny"  # the id, which pyft-export resolves again
    assert adapter_config["revision"] is None
    for pin in (["model=acme/tiny@v1"], ["model=acme/tiny", "model_revision=v1"]):  # both spellings pin v1
        out = tmp_path / f"run-{len(pin)}"
        r = _cli("pyft.cli.main", "train", "method=lora", *pin, f"data={tmp_path / 'hub-data'}", f"output={out}",
                 "train.max_steps=1", "train.batch_size=2", "train.device=cpu", env=env)
        assert r.returncode == 0, r.stderr
        adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
        assert (adapter_config["base_model_name_or_path"], adapter_config["revision"]) == ("acme/tiny", "v1")
    # Both pins trained on v1's weights (seeded CPU runs are bit-identical), main's run on other weights.
    weights = {name: (tmp_path / name / "adapter" / "adapter_model.safetensors").read_bytes()
               for name in ("run", "run-1", "run-2")}
    assert weights["run-1"] == weights["run-2"] != weights["run"]


def test_cli_hub_errors_and_inspect(cache, tmp_path):
    env = _env(cache)
    r = _cli("pyft.cli.main", "data", "prepare", str(tmp_path / "x.jsonl"), "--tokenizer", "acme/missing",
             "--out", str(tmp_path / "o"), env=env)
    assert r.returncode == 1 and "acme/missing (revision main)" in r.stderr and "HF_HUB_OFFLINE" in r.stderr
    r = _cli("pyft.cli.main", "inspect", "acme/tiny-lora", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["kind"] == "adapter"
    r = _cli("pyft.cli.main", "estimate", "--model", "acme/tiny@v1", "--method", "lora", env=env)
    assert r.returncode == 0 and "lora" in r.stdout, r.stderr
    r = _cli("pyft.cli.export", "acme/tiny-lora", "--to", "gguf-lora", "--out", str(tmp_path / "a.gguf"), env=env)
    assert r.returncode == 0, r.stderr  # base from adapter_config.json's base_model_name_or_path: acme/tiny


def test_merge_from_hub_needs_no_torch(cache, tmp_path):
    """pyft-merge stays torch-free with Hub ids (huggingface_hub only, imported when an id is given)."""
    code = ("import sys; sys.modules['torch'] = sys.modules['transformers'] = None\n"
            "from pyft.cli.merge import main\n"
            f"sys.exit(main(['acme/tiny@main', '--adapter', 'hub:acme/tiny-lora', {str(tmp_path / 'out')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                       env={**os.environ, **_env(cache)}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()
