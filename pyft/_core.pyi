"""Type stubs of the compiled extension `pyft._core` (see rust/pyft-py/src).

Checked against the built extension by `python -m mypy.stubtest pyft._core` (tests/test_core_stubs.py):
a function or class added to the extension without a stub here fails that test.
"""

from pathlib import Path
from typing import NoReturn, final

from typing_extensions import Buffer, Self

__version__: str
__all__ = [
    "ConfigError", "DataError", "InternalError", "PyftError", "ShapeError", "StagingDir", "StagingFile",
    "TemplateError", "Tokenizer", "TokenizerError", "__version__", "_raise_core_error", "build_profile",
    "builtin_template", "builtin_template_names", "check_output_disjoint", "discard_dir", "export_gguf",
    "export_gguf_lora", "gguf_read_metadata", "gguf_support", "gguf_tokenizer_metadata", "merge", "nf4_double_quantize",
    "nf4_quantize", "nf4_state_json", "prepare", "prepare_defaults", "remove_stale_staging",
    "render_template", "safetensors_layout", "safetensors_model_files",
]

class PyftError(Exception): ...
class DataError(PyftError):
    file: str | None
    line: int | None
    field: str | None

class TemplateError(PyftError): ...
class TokenizerError(PyftError): ...
class ConfigError(PyftError): ...
class ShapeError(PyftError): ...
class InternalError(PyftError): ...

def build_profile() -> str: ...
def prepare(
    inputs: list[str],
    tokenizer: str,
    out_dir: str,
    *,
    mix: list[tuple[str, float]] = ...,
    format: str | None = None,
    columns: list[str] = ...,
    template: str | None = None,
    train_on: str | None = None,
    max_len: int | None = None,
    overlong: str | None = None,
    truncation: str | None = None,
    pack: bool | None = None,
    on_error: str | None = None,
    dedup: bool | None = None,
    val_ratio: float | None = None,
    seed: int | None = None,
    system_prompt: str | None = None,
    shard_tokens: int | None = None,
    overwrite: bool | None = None,
    progress: bool | None = None,
) -> str: ...
def prepare_defaults() -> str: ...
def merge(
    base: str,
    adapters: list[str],
    out: str,
    *,
    weights: list[float] | None = None,
    method: str = "linear",
    density: float | None = None,
    seed: int = 0,
    svd_rank: int | None = None,
    dtype: str | None = None,
    max_shard_bytes: int = ...,
    overwrite: bool = False,
    extra_files: dict[str, bytes] | None = None,
) -> str: ...
def export_gguf(
    model: str,
    out: str,
    *,
    qtype: str = "f16",
    adapters: list[tuple[str, float]] = ...,
    method: str = "linear",
    density: float | None = None,
    seed: int = 0,
    svd_rank: int | None = None,
    name: str | None = None,
    pre: str | None = None,
    chat_template: str | None = None,
    eot_token_id: int | None = None,
    overwrite: bool = False,
) -> str:
    """Export an HF model directory (adapters merged on the fly) to one GGUF file; returns a JSON report."""

def export_gguf_lora(
    adapter: str, base: str, out: str, *, dtype: str = "f32", name: str | None = None, overwrite: bool = False
) -> str:
    """Export a PEFT LoRA adapter as a GGUF LoRA adapter; returns a JSON report."""

def gguf_support() -> str:
    """The GGUF support table as JSON: `architectures` (per HF architecture: GGUF architecture, MoE,
    GGUF-LoRA modules, merge-only modules) and `refused` (HF architecture, reason)."""

def nf4_quantize(src: Buffer, dtype: str, blocksize: int, compat: str, packed: Buffer, absmax: Buffer) -> None:
    """Quantize `src` (raw bytes of `dtype` values) to NF4 into `packed` (uint8) and `absmax` (float32)."""

def nf4_double_quantize(absmax: Buffer, offset: float | None, compat: str) -> tuple[bytes, list[float], float]:
    """Double-quantize float32 block scales: (u8 codes, nested absmax per 256 scales, offset)."""

def nf4_state_json(blocksize: int, dtype: str, shape: list[int], nested_offset: float | None = None) -> str:
    """The JSON quant-state blob bitsandbytes stores as `<weight>.quant_state.bitsandbytes__nf4`."""

def gguf_read_metadata(path: str, max_array: int = 16) -> str: ...
def safetensors_layout(path: str) -> tuple[dict[str, str], list[tuple[str, str, list[int], int, int]]]:
    """The validated `__metadata__` and, in data order, each tensor's (name, dtype, shape, start, end)."""

def safetensors_model_files(model_dir: str) -> list[Path]:
    """The safetensors files of a model directory (index shards, else `model.safetensors`), validated."""

def _raise_core_error(kind: str, message: str) -> NoReturn:
    """Raise what a core error of `kind` becomes in Python (tests of the error mapping only)."""
def gguf_tokenizer_metadata(
    model_dir: str, arch: str, pre: str | None = None, base_dir: str | None = None
) -> tuple[str, list[str]]: ...
def builtin_template(name: str) -> str: ...
def builtin_template_names() -> list[str]: ...
def render_template(
    source: str,
    messages_json: str,
    add_generation_prompt: bool = False,
    special_tokens_json: str = "{}",
    extra_json: str | None = None,
) -> tuple[str, list[tuple[int, int]]]: ...

@final
class Tokenizer:
    @staticmethod
    def from_file(path: str) -> Tokenizer: ...
    def encode(self, text: str, add_special_tokens: bool = False) -> tuple[list[int], list[tuple[int, int]]]: ...
    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]: ...
    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str: ...
    def id_to_token(self, id: int) -> str | None: ...
    def token_to_id(self, token: str) -> int | None: ...
    def is_special(self, id: int) -> bool: ...
    @property
    def backend(self) -> str: ...
    @property
    def fallback_reason(self) -> str | None: ...
    @property
    def vocab_size(self) -> int: ...

def check_output_disjoint(out: str, inputs: list[str]) -> None: ...
def remove_stale_staging(parent: str, name: str) -> int: ...
def discard_dir(path: str) -> None: ...

@final
class StagingDir:
    def __new__(cls, target: str, overwrite: bool = False) -> Self: ...
    @property
    def path(self) -> str: ...
    def commit(self) -> None: ...
    def discard(self) -> None: ...

@final
class StagingFile:
    def __new__(cls, target: str, overwrite: bool = False) -> Self: ...
    @property
    def path(self) -> str: ...
    def commit(self) -> None: ...
    def discard(self) -> None: ...
