"""Opening what a user points pyft at: regular files only, and JSON objects with typed fields.

Model, adapter and tokenizer directories come from other people, and every small file pyft reads
from them in Python goes through here, so that:

- a FIFO, a device (say a link to ``/dev/zero``), a socket or a directory where a file is expected
  is refused at once, naming the path, instead of blocking forever or reading without end;
- a ``config.json``, ``adapter_config.json``, ``tokenizer_config.json``, ``generation_config.json``
  (…) that is not a JSON object, or whose fields have the wrong type, raises
  :class:`pyft.errors.DataError` naming the file and the field (``.file``, ``.field``), never an
  ``AttributeError`` or ``TypeError`` deep inside pyft or transformers.

The Rust readers (safetensors, GGUF, data files, ``tokenizer.json``) do the same on their side.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from pyft.errors import DataError

PathLike = str | os.PathLike[str]

#: Largest JSON or text file read: far above real ones (the biggest ``tokenizer.json`` files are
#: ~35 MB), far below what would exhaust memory.
MAX_JSON_BYTES = 256 * 2**20

_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def data_error(path: PathLike, message: str, field: str | None = None) -> DataError:
    """A :class:`DataError` ``"{path}: {message}"`` with ``.file`` and ``.field`` set (``.line`` is None)."""
    err = DataError(f"{os.fspath(path)}: {message}")
    err.file, err.line, err.field = os.fspath(path), None, field
    return err


def _not_regular(path: PathLike, mode: int) -> DataError:
    kind = next((name for test, name in _NOT_REGULAR if test(mode)), "a special file")
    return data_error(path, f"is {kind}, not a regular file (pyft reads only regular files; symlinks are "
                            "followed to what they point at)")


def check_regular(path: PathLike) -> os.stat_result:
    """``os.stat(path)`` (symlinks followed), refusing anything but a regular file.

    Raises:
        DataError: a FIFO, device, socket or directory.
        FileNotFoundError: ``path`` does not exist.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    return st


def open_regular(path: PathLike) -> BinaryIO:
    """Open ``path`` for binary reading, refusing anything but a regular file.

    The descriptor is opened non-blocking (a FIFO would otherwise wait for a writer before the
    check could run) and checked with ``fstat``, so a path swapped after :func:`check_regular`
    is still refused; then it is switched back to blocking reads.

    Raises:
        DataError: a FIFO, device, socket or directory.
        OSError: the file cannot be opened.
    """
    check_regular(path)  # refuse before opening: opening a device can have effects of its own
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: PathLike, limit: int | None = None) -> bytes:
    """The bytes of the regular file ``path``, refusing files larger than ``limit`` bytes.

    Raises:
        DataError: not a regular file, or larger than ``limit``.
    """
    with open_regular(path) as f:
        if limit is not None:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise data_error(path, f"is {size} bytes, more than the {limit} bytes pyft reads from such a file")
            data = f.read(limit + 1)  # the file may have grown since fstat
            if len(data) > limit:
                raise data_error(path, f"is more than the {limit} bytes pyft reads from such a file")
            return data
        return f.read()


def read_text(path: PathLike, limit: int = MAX_JSON_BYTES) -> str:
    """The UTF-8 text of the regular file ``path`` (a leading BOM dropped), at most ``limit`` bytes:
    chat templates, YAML configs.

    Raises:
        DataError: not a regular file, larger than ``limit``, or not UTF-8 (naming the byte).
    """
    raw = read_bytes(path, limit)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise data_error(path, f"not UTF-8 text (byte {e.start}: {e.reason})") from None


def jsonl_records(path: PathLike) -> Iterator[tuple[str, Any]]:
    """``(where, record)`` for each non-blank line of a JSONL file (a regular file only), ``where`` being
    ``"<path> line <n>"`` for error messages.

    Raises:
        DataError: a line is not UTF-8 or not JSON (file and line named), or the path is not a regular file.
    """
    with open_regular(path) as f:
        for n, raw in enumerate(f, 1):
            where = f"{path} line {n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8 (byte {e.start})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not JSON ({e.msg})") from None
            yield where, record


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    names = {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number"}
    kind = names.get(type(value), type(value).__name__)
    if isinstance(value, (dict, list)):
        return kind
    shown = json.dumps(value, ensure_ascii=False)
    return f"{kind} {shown[:60] + '…' if len(shown) > 60 else shown}"


def read_json_object(path: PathLike) -> dict[str, Any]:
    """The JSON object in the regular file ``path`` (UTF-8, a leading BOM accepted).

    Raises:
        DataError: not a regular file, over :data:`MAX_JSON_BYTES`, not UTF-8, malformed JSON
            (with line and column) or not an object; the message names the file.
        FileNotFoundError: ``path`` does not exist.
    """
    text = read_text(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise data_error(path, f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise data_error(path, "malformed JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise data_error(path, f"expected a JSON object, got {_json_type(value)}")
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


#: Kinds of :func:`json_field`: the test a value passes, and how an error describes what was wanted.
KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "int": (_is_int, "an integer"),
    "positive_int": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "number": (lambda v: _is_int(v) or isinstance(v, float), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "object": (lambda v: isinstance(v, dict), "an object"),
    "list": (lambda v: isinstance(v, list), "an array"),
    "object_or_list": (lambda v: isinstance(v, (dict, list)), "an object or an array"),
    "str_list": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "an array of strings"),
    "str_or_str_list": (lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
                        "a string or an array of strings"),
    "int_or_int_list": (lambda v: _is_int(v) or (isinstance(v, list) and all(_is_int(x) for x in v)),
                        "an integer or an array of integers"),
}


def json_field(data: Mapping[str, Any], path: PathLike, key: str, kind: str, default: Any = None, *,
               nullable: bool = True, required: bool = False, prefix: str = "") -> Any:
    """``data[key]`` checked to be of ``kind`` (a key of :data:`KINDS`).

    Args:
        data: a JSON object read from ``path``.
        path: the file, for the error message.
        key: the field.
        kind: what the value must be (``int``, ``positive_int``, ``str``, ``object``, …).
        default: returned when the field is absent (or null, when ``nullable``).
        nullable: whether ``null`` means "absent"; else it is an error.
        required: whether an absent field is an error.
        prefix: the field's parent in the message (``text_config.``).

    Raises:
        DataError: naming the file and the field, with what it holds and what was expected.
    """
    name = prefix + key
    if key not in data:
        if required:
            raise data_error(path, f"field `{name}` is missing", name)
        return default
    value = data[key]
    test, wanted = KINDS[kind]
    if value is None and nullable and not required:
        return default
    if not test(value):
        raise data_error(path, f"field `{name}` must be {wanted}, got {_json_type(value)}", name)
    return value


#: ``config.json`` fields that size a model: positive integers where present.
_MODEL_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                "max_position_embeddings")
#: The same, but ``null`` lets transformers derive them (``hidden_size // num_attention_heads``, …).
_MODEL_SIZES_DERIVED = ("num_key_value_heads", "head_dim")


def check_model_config(config: Mapping[str, Any], path: PathLike) -> None:
    """Check the fields of a model's ``config.json`` that pyft and transformers build the model from.

    ``model_type`` a string, ``architectures`` strings, ``tie_word_embeddings`` a boolean,
    ``quantization_config`` an object, and the sizes (``hidden_size``, ``num_hidden_layers``, …)
    positive integers, also inside a multimodal ``text_config``. Absent fields are fine (the
    architecture's defaults apply).

    Raises:
        DataError: naming the file and the field.
    """
    json_field(config, path, "model_type", "str")
    json_field(config, path, "architectures", "str_list")
    json_field(config, path, "quantization_config", "object")
    text = json_field(config, path, "text_config", "object")
    for part, prefix in ((config, ""), (text, "text_config.")):
        if part is None:
            continue
        json_field(part, path, "tie_word_embeddings", "bool", prefix=prefix)
        for key in _MODEL_SIZES:
            json_field(part, path, key, "positive_int", nullable=False, prefix=prefix)
        for key in _MODEL_SIZES_DERIVED:
            json_field(part, path, key, "positive_int", prefix=prefix)


#: ``adapter_config.json`` fields pyft reads, and what each must be when present (``null`` = absent).
_ADAPTER_FIELDS = (("peft_type", "str"), ("task_type", "str"), ("base_model_name_or_path", "str"),
                   ("r", "positive_int"), ("lora_alpha", "number"), ("use_rslora", "bool"), ("use_dora", "bool"),
                   ("target_modules", "str_or_str_list"), ("modules_to_save", "str_list"),
                   ("rank_pattern", "object"), ("alpha_pattern", "object"))


def check_adapter_config(config: Mapping[str, Any], path: PathLike) -> None:
    """Check the types of the ``adapter_config.json`` fields pyft reads (PEFT's types): ``r`` a
    positive integer, ``lora_alpha`` a number, ``rank_pattern``/``alpha_pattern`` objects of
    numbers, ``target_modules`` a string or strings, and so on. Whether pyft supports the values
    (``peft_type`` LORA, …) is for each reader to say.

    Raises:
        DataError: naming the file and the field.
    """
    for key, kind in _ADAPTER_FIELDS:
        if key == "r" and config.get("peft_type") == "OFT":
            kind = "int"  # OFT's `r` is 0 when `oft_block_size` sets the blocks
        json_field(config, path, key, kind)
    for key, kind in (("rank_pattern", "positive_int"), ("alpha_pattern", "number")):
        pattern = config.get(key) or {}
        for module in pattern:
            json_field(pattern, path, module, kind, nullable=False, prefix=f"{key}.")


def check_model_files(model_dir: PathLike, adapter_dirs: Sequence[PathLike] = ()) -> None:
    """Read ``model_dir/config.json`` and each ``adapter_config.json`` with the checks above, before
    a command that hands the directories to the Rust core starts work: a file that is not regular,
    not a JSON object, or has a field of the wrong type is refused naming the file and the field.
    A missing file is left for the command to report, with its context.

    Raises:
        DataError: naming the file (and the field).
    """
    config = Path(model_dir) / "config.json"
    if config.exists():
        check_model_config(read_json_object(config), config)
    for adapter in adapter_dirs:
        path = Path(adapter) / "adapter_config.json"
        hybrid = Path(adapter) / "pyft_hybrid.json"
        if not path.exists() and hybrid.exists():
            parts = read_json_object(hybrid).get("parts")
            names = ", ".join(map(str, parts)) if isinstance(parts, list) else "?"
            raise data_error(hybrid, f"a pyft hybrid adapter ({names}) merges or exports one part at a time: pass "
                                     f"a part's directory (e.g. {Path(adapter) / 'lora'}); prompt, prefix and "
                                     f"bottleneck parts do not merge: serve them with the base in transformers "
                                     f"(pyft generate --adapter {adapter})")
        if path.exists():
            check_adapter_config(read_json_object(path), path)


#: A schema for :func:`check_fields`: field -> a kind of :data:`KINDS`, a nested schema (an object),
#: or ``[schema]`` (an array whose elements follow it). ``{"*": schema}`` is an object whose every
#: value follows ``schema``; a key ending in ``?`` is optional.
Schema = Mapping[str, Any]


def check_fields(data: Any, path: PathLike, schema: Schema | list | str, prefix: str = "") -> None:
    """Check a JSON value read from ``path`` against ``schema`` (see :data:`Schema`): for files
    pyft wrote itself and reads back (``meta.json`` of prepared data), where every field it uses
    must be there with its type.

    Raises:
        DataError: naming the file and the field (``splits.train.shards[0].rows``).
    """
    if isinstance(schema, str):
        test, wanted = KINDS[schema]
        if not test(data):
            raise data_error(path, f"field `{prefix}` must be {wanted}, got {_json_type(data)}", prefix)
    elif isinstance(schema, list):
        check_fields(data, path, "list", prefix)
        for i, item in enumerate(data):
            check_fields(item, path, schema[0], f"{prefix}[{i}]")
    else:
        if not isinstance(data, dict):
            raise data_error(path, f"field `{prefix}` must be an object, got {_json_type(data)}", prefix)
        dot = f"{prefix}." if prefix else ""
        if "*" in schema:
            for key, value in data.items():
                check_fields(value, path, schema["*"], dot + key)
        for key, sub in schema.items():
            name = key.removesuffix("?")
            if key == "*" or (key.endswith("?") and data.get(name) is None):
                continue
            if name not in data:
                raise data_error(path, f"field `{dot}{name}` is missing", dot + name)
            check_fields(data[name], path, sub, dot + name)


def child_path(directory: PathLike, name: str, path: PathLike, field: str) -> Path:
    """``directory / name`` for a file name read from ``path`` (an index, a ``meta.json``), refusing
    names that leave ``directory`` (absolute, or with ``..``): a hostile index must not make pyft
    read files elsewhere.

    Raises:
        DataError: naming ``path`` and ``field``.
    """
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or "\0" in name:
        raise data_error(path, f"field `{field}`: {name!r} is not a file inside {os.fspath(directory)}", field)
    return Path(directory, name)
