"""Type stubs of the compiled extension `pyft._core` (see rust/pyft-py/src)."""

__version__: str

class PyftError(Exception): ...
class DataError(PyftError):
    file: str | None
    line: int | None
    field: str | None

class TemplateError(PyftError): ...
class TokenizerError(PyftError): ...
class ConfigError(PyftError): ...

def build_profile() -> str: ...
def prepare(
    inputs: list[str],
    tokenizer: str,
    out_dir: str,
    *,
    mix: list[tuple[str, float]] = ...,
    format: str | None = None,
    template: str = "tokenizer",
    train_on: str = "assistant",
    max_len: int = 2048,
    overlong: str = "truncate",
    truncation: str = "keep_end",
    pack: bool = False,
    on_error: str = "fail",
    dedup: bool = False,
    val_ratio: float = 0.0,
    seed: int = 42,
    system_prompt: str | None = None,
    shard_tokens: int = ...,
    overwrite: bool = False,
    progress: bool = False,
) -> str: ...
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
def gguf_read_metadata(path: str, max_array: int = 16) -> str: ...
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
