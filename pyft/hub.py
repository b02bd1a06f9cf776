"""Models, tokenizers, adapters and datasets by Hugging Face Hub id.

Wherever pyft takes a model, tokenizer, adapter or data path it also takes a Hub id,
``owner/name``, optionally pinned to a revision (branch, tag or commit) as ``owner/name@rev`` (the
``@`` of ``hf://`` paths; repository ids cannot contain it). The rules:

- a local path that exists always wins over a Hub id of the same spelling, and a ``pathlib.Path``
  is always a path (only strings are read as ids);
- a string that is neither an existing path nor an ``owner/name`` id is handed on unchanged, so the
  caller's usual "not found" error names it;
- an id is resolved with ``huggingface_hub`` into its standard cache (``HF_HOME``/``HF_HUB_CACHE``),
  with ``HF_TOKEN`` for private or gated repositories and ``HF_HUB_OFFLINE=1`` to use the cache only.

Only the files pyft reads are downloaded: safetensors weights (the shards that
``model.safetensors.index.json`` lists, or ``model.safetensors``), ``config.json``,
``generation_config.json``, tokenizer files and chat templates, and for adapters
``adapter_config.json`` + ``adapter_model.safetensors``. Never ``*.bin``/``*.pt``/``*.pkl`` pickles
or code. Datasets (:func:`load_dataset`) go through the ``datasets`` library on the downloaded data
files only; dataset scripts are refused (pyft never runs code it reads).

``huggingface_hub`` is imported lazily: importing this module costs nothing.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Any

from pyft.errors import ConfigError

PathLike = str | os.PathLike[str]

#: Prefix that marks a Hub id explicitly (it then never names a local path).
HUB_PREFIX = "hub:"

#: Tokenizer files and chat templates (all data: JSON, text, a sentencepiece protobuf).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json")
#: Model metadata read before the weights (the index names the shards to fetch).
MODEL_META_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json", *TOKENIZER_FILES)
#: A PEFT adapter, with the serving files pyft writes next to it (tokenizer, template, ``pyft_run.json``).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "pyft_run.json", *TOKENIZER_FILES)
#: Data files a Hub dataset may be read from, and its card (the ``configs`` that name splits).
DATASET_FILES = ("README.md", "*.parquet", "*.arrow", "*.jsonl", "*.json", "*.jsonl.gz", "*.json.gz", "*.csv")

KINDS = ("model", "tokenizer", "adapter", "config", "auto")

# huggingface_hub's own repo-id rule (validators.REPO_ID_REGEX), with the namespace required: a bare
# name (`gpt2`) is far more often a mistyped local directory than a legacy canonical model.
_REPO_ID = re.compile(r"^\b[\w\-.]+\b/\b[\w\-.]{1,96}\b$")
# File names that are data files, never repository names (a mistyped `data/train.jsonl`).
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".gguf", ".safetensors", ".txt", ".gz")


def is_repo_id(name: str) -> bool:
    """Whether ``name`` is a Hub repository id of the form ``owner/name`` (no revision)."""
    return bool(_REPO_ID.match(name)) and "--" not in name and ".." not in name


def split_ref(ref: str) -> tuple[str, str | None]:
    """``owner/name@rev`` -> ``("owner/name", "rev")``; without ``@``, the revision is ``None``.

    A leading ``hub:`` is dropped. The revision may hold ``/`` (``refs/pr/1``)."""
    ref = ref.removeprefix(HUB_PREFIX)
    name, sep, rev = ref.partition("@")
    return name, (rev if sep else None)


def hub_ref(ref: PathLike) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``ref`` names a Hub repository rather than a local path, else ``None``.

    A path that exists wins, and so do names ending like files (``.json``, ``.gguf``...);
    ``hub:owner/name`` is always a Hub id."""
    if not isinstance(ref, str):  # a pathlib.Path (or other os.PathLike) is a path, never an id
        return None
    if not ref.startswith(HUB_PREFIX) and os.path.lexists(ref):
        return None
    name, rev = split_ref(ref)
    if not is_repo_id(name) or (rev is not None and not rev):
        return None
    if not ref.startswith(HUB_PREFIX) and name.lower().endswith(_FILE_SUFFIXES):
        return None  # a mistyped `out/model.gguf` or `tok/tokenizer.json` stays a path
    return name, rev


def _join_revision(inline: str | None, revision: str | None, ref: str) -> str | None:
    if inline is not None and revision is not None and inline != revision:
        raise ConfigError(f"{ref}: revision {inline!r} in the id and revision {revision!r} given separately differ")
    return inline if inline is not None else revision


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise ConfigError("a Hugging Face Hub id needs the huggingface_hub package: pip install huggingface_hub") \
            from None
    return huggingface_hub


def _offline(hf: Any) -> bool:
    constants = hf.constants
    check = getattr(constants, "is_offline_mode", None)
    return bool(check() if check else constants.HF_HUB_OFFLINE)


def _label(repo_id: str, revision: str | None) -> str:
    return f"{repo_id} (revision {revision or 'main'})"


def _snapshot(repo_id: str, revision: str | None, patterns: list[str], repo_type: str = "model") -> Path:
    """``huggingface_hub.snapshot_download`` of the files matching ``patterns``, errors made clear."""
    hf = _hub()
    from huggingface_hub import errors

    what = "dataset" if repo_type == "dataset" else "model"
    try:
        return Path(hf.snapshot_download(repo_id, repo_type=repo_type, revision=revision, allow_patterns=patterns))
    except errors.GatedRepoError:
        url = f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
        raise PermissionError(f"{repo_id}: gated {what} repository on the Hugging Face Hub: accept its terms at {url} "
                              f"and set HF_TOKEN (or run `hf auth login`)") from None
    except errors.RevisionNotFoundError:
        raise FileNotFoundError(f"{repo_id}: revision {revision!r} not found on the Hugging Face Hub") from None
    except errors.RepositoryNotFoundError:
        raise FileNotFoundError(f"{repo_id}: no such local path, and no such {what} repository on the Hugging Face "
                                f"Hub (a private one needs HF_TOKEN)") from None
    except errors.LocalEntryNotFoundError as e:
        if _offline(hf):
            raise FileNotFoundError(
                f"{_label(repo_id, revision)}: not in the Hugging Face cache ({hf.constants.HF_HUB_CACHE}) and "
                f"HF_HUB_OFFLINE is set: download it once with network access, or unset HF_HUB_OFFLINE") from None
        raise ConnectionError(f"{_label(repo_id, revision)}: not in the Hugging Face cache and the Hub cannot be "
                              f"reached: {e}") from None


def _missing(repo_id: str, revision: str | None, snapshot: Path, files: list[str], what: str) -> FileNotFoundError:
    hint = (" (HF_HUB_OFFLINE is set and the cached snapshot lacks it: download it once with network access)"
            if _offline(_hub()) else "")
    return FileNotFoundError(f"{_label(repo_id, revision)}: no {' or '.join(files)} ({what}) in {snapshot}{hint}")


def _weight_files(snapshot: Path) -> list[str]:
    """The safetensors files transformers loads: the index's shards, else ``model.safetensors``."""
    index = snapshot / "model.safetensors.index.json"
    if not index.is_file():
        return ["model.safetensors"]
    from pyft.io.files import read_json_object

    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise FileNotFoundError(f"{index}: no `weight_map` object of tensor name -> file name")
    shards = sorted(set(weight_map.values()))
    for name in shards:
        # Plain file names only: a pattern or a path could fetch other files (or leave the snapshot).
        if not re.fullmatch(r"[\w\-.]+\.safetensors", name):
            raise FileNotFoundError(f"{index}: shard {name!r} is not a safetensors file name")
    return shards


def resolve_model(ref: PathLike, revision: str | None = None, kind: str = "model") -> Path:
    """The local directory of a model, tokenizer or adapter given by path or Hub id.

    Args:
        ref: a local path (returned unchanged, existing or not: the caller names what is missing),
            or a Hub id ``owner/name`` / ``owner/name@revision`` / ``hub:owner/name``.
        revision: branch, tag or commit to pin (also given as ``@revision`` in ``ref``).
        kind: what to fetch. ``model``: config, tokenizer files and safetensors weights;
            ``tokenizer``: tokenizer files and the model config; ``adapter``: a PEFT adapter and its
            serving files; ``config``: ``config.json`` only; ``auto``: an adapter if the repository
            has ``adapter_config.json``, else a model.

    Returns:
        The path (for a Hub id, its snapshot directory in the Hugging Face cache).

    Raises:
        FileNotFoundError: no such repository or revision, a required file is missing, or the id is
            not cached while ``HF_HUB_OFFLINE`` is set (the message names id and revision).
        PermissionError: a gated repository without access.
        ConnectionError: the Hub cannot be reached and the id is not cached.
        ConfigError: ``huggingface_hub`` is not installed, or two different revisions are given.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (expected one of {KINDS})")
    found = hub_ref(ref)
    if found is None:
        return Path(ref)
    repo_id, inline = found
    revision = _join_revision(inline, revision, os.fspath(ref))
    if kind == "auto":
        probe = _snapshot(repo_id, revision, ["adapter_config.json", "config.json"])
        kind = "adapter" if (probe / "adapter_config.json").is_file() else "model"
    if kind == "adapter":
        snap = _snapshot(repo_id, revision, list(ADAPTER_FILES))
        required = ["adapter_config.json", "adapter_model.safetensors"]
        for f in required:
            if not (snap / f).is_file():
                raise _missing(repo_id, revision, snap, [f], "a PEFT adapter")
        return snap
    if kind == "config":
        snap = _snapshot(repo_id, revision, ["config.json"])
    elif kind == "tokenizer":
        snap = _snapshot(repo_id, revision, ["config.json", "generation_config.json", *TOKENIZER_FILES])
        if not (snap / "tokenizer.json").is_file():
            raise _missing(repo_id, revision, snap, ["tokenizer.json"], "a fast tokenizer")
        return snap
    else:
        snap = _snapshot(repo_id, revision, list(MODEL_META_FILES))
        weights = _weight_files(snap)
        snap = _snapshot(repo_id, revision, weights)
        absent = [w for w in weights if not (snap / w).is_file()]
        if absent:
            raise _missing(repo_id, revision, snap, absent, "safetensors weights; pyft never loads *.bin pickles")
    if not (snap / "config.json").is_file():
        raise _missing(repo_id, revision, snap, ["config.json"], "a transformers model")
    return snap


# ---------------------------------------------------------------------------------------------
# Datasets


def dataset_ref(ref: PathLike) -> tuple[str, str | None, str | None, str] | None:
    """``(repo_id, revision, subset, split)`` when ``ref`` names a Hub dataset, else ``None``.

    Syntax: ``[hub:]owner/name[@revision][:[subset/]split]``; the split defaults to ``train`` and
    may use the ``datasets`` slicing syntax (``train[:1000]``, ``train[:10%]``). A path that exists
    wins, and names ending like data files (``.jsonl``, ``.parquet``...) stay paths."""
    if not isinstance(ref, str):  # a pathlib.Path is a path, never an id
        return None
    text = ref
    if not text.startswith(HUB_PREFIX) and os.path.lexists(text):
        return None
    explicit = text.startswith(HUB_PREFIX)
    repo_part, sep, split_part = text[len(HUB_PREFIX) if explicit else 0:].partition(":")
    repo_id, revision = split_ref(repo_part)
    if not is_repo_id(repo_id) or (revision is not None and not revision):
        return None
    if not explicit and repo_id.lower().endswith(_FILE_SUFFIXES):
        return None
    subset, _, split = split_part.rpartition("/") if sep else ("", "", "train")
    if sep and not split:
        return None
    return repo_id, revision, subset or None, split


def load_dataset(ref: PathLike, *, revision: str | None = None) -> Any:
    """A split of a Hub dataset as a ``datasets.Dataset`` (see :func:`dataset_ref` for the syntax).

    The repository's data files (Parquet, Arrow, JSON Lines, JSON, CSV) and card are fetched into the
    Hugging Face cache; ``datasets`` then reads them from that local snapshot, so ``HF_HUB_OFFLINE``
    and revision pins work as for models. Dataset scripts are refused: no code is fetched or run.

    Raises:
        ConfigError: ``datasets`` is not installed, the repository has no data files (a dataset
            script), or the subset/split does not exist.
        FileNotFoundError, PermissionError, ConnectionError: as :func:`resolve_model`.
    """
    found = dataset_ref(ref)
    if found is None:
        raise FileNotFoundError(f"{os.fspath(ref)}: no such file, and not a Hub dataset id (owner/name[:split])")
    repo_id, inline, subset, split = found
    revision = _join_revision(inline, revision, os.fspath(ref))
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{os.fspath(ref)}: reading a Hub dataset needs the datasets package: pip install datasets") \
            from None
    snap = _snapshot(repo_id, revision, list(DATASET_FILES), repo_type="dataset")
    # Matched here too: offline, the cached snapshot may hold files another tool fetched (a script).
    data = [p for p in snap.rglob("*") if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in DATASET_FILES[1:])]
    if not data:
        raise ConfigError(f"{_label(repo_id, revision)}: no data files (Parquet, Arrow, JSON Lines, JSON, CSV) in the "
                          f"dataset repository; a dataset script is never run")
    try:
        # A local snapshot directory: datasets reads its card's `configs` and the file names for splits;
        # nothing here can run code (datasets >= 4 has no scripts, and none were fetched).
        return datasets.load_dataset(str(snap), name=subset, split=split)
    except ValueError as e:  # unknown split or subset
        raise ConfigError(f"{_label(repo_id, revision)}: {e}") from None


def write_dataset(ref: PathLike, out_dir: Path, *, revision: str | None = None) -> Path:
    """:func:`load_dataset`, written as one Parquet file in ``out_dir`` named after the dataset (so
    errors about its records name it: ``owner--name-train.parquet``)."""
    ds = load_dataset(ref, revision=revision)
    repo_id, _, subset, split = dataset_ref(ref)  # type: ignore[misc]
    stem = "-".join([repo_id.replace("/", "--"), *([subset] if subset else []), re.sub(r"[^\w.%-]+", "_", split)])
    path = out_dir / f"{stem}.parquet"
    ds.to_parquet(str(path))
    return path


__all__ = [
    "ADAPTER_FILES",
    "DATASET_FILES",
    "MODEL_META_FILES",
    "TOKENIZER_FILES",
    "dataset_ref",
    "hub_ref",
    "is_repo_id",
    "load_dataset",
    "resolve_model",
    "split_ref",
    "write_dataset",
]
