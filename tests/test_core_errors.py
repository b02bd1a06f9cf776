"""The core's error kinds reach Python as one exception class each (rust/pyft-py/src/error.rs), all
under :class:`pyft.errors.PyftError` (so existing ``except PyftError`` clauses keep working), and
the new kinds come from the failures they name rather than from :class:`ConfigError`."""

from __future__ import annotations

import array
import json

import pytest

from pyft import _core
from pyft.errors import (
    ConfigError,
    DataError,
    InternalError,
    PyftError,
    ShapeError,
    TemplateError,
    TokenizerError,
)


@pytest.mark.parametrize("kind, cls", [
    ("option", ConfigError), ("shape", ShapeError), ("internal", InternalError), ("template", TemplateError),
    ("tokenizer", TokenizerError), ("file", DataError), ("value", ValueError),
])
def test_each_core_kind_maps_to_its_class(kind, cls):
    with pytest.raises(cls) as info:
        _core._raise_core_error(kind, "/x/model.safetensors" if kind == "file" else "tensor `w`: 3 != 4")
    assert type(info.value) is cls  # exactly this class, not a sibling
    if cls is not ValueError:
        assert isinstance(info.value, PyftError)


def test_new_kinds_are_not_config_errors():
    """A shape mismatch or a pyft bug is not the user's option: `except ConfigError` must not hide it."""
    assert issubclass(ShapeError, PyftError) and issubclass(InternalError, PyftError)
    assert not issubclass(ShapeError, ConfigError) and not issubclass(InternalError, ConfigError)
    assert not issubclass(ShapeError, InternalError) and not issubclass(InternalError, ShapeError)


def test_internal_error_asks_for_a_report():
    with pytest.raises(InternalError) as info:
        _core._raise_core_error("internal", "merge writer stopped")
    assert str(info.value) == ("internal error (a pyft bug; please report it with the command that failed): "
                               "merge writer stopped")


def test_file_kind_names_the_file():
    with pytest.raises(DataError) as info:
        _core._raise_core_error("file", "/x/model.safetensors")
    assert info.value.file == "/x/model.safetensors" and str(info.value).startswith("/x/model.safetensors: ")


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown core error kind `nope`"):
        _core._raise_core_error("nope", "m")


def test_empty_tensor_to_nf4_is_a_shape_error():
    """Real path: NF4 quantization of an empty tensor (was a ConfigError)."""
    with pytest.raises(ShapeError, match="cannot quantize an empty tensor to NF4"):
        _core.nf4_quantize(b"", "float32", 64, "cpu", bytearray(1), array.array("f", [0.0]))


def test_gguf_tensor_that_disagrees_with_config_is_a_shape_error(tokenizer_dirs, tmp_path):
    """Real path: a model whose embedding disagrees with its config.json (was a ConfigError)."""
    pytest.importorskip("transformers")
    from pyft.export import export_gguf
    from pyft.testing.models import make_tiny_model

    model = make_tiny_model(tmp_path / "m", tokenizer_dirs["llama3"], arch="llama")
    config = json.loads((model / "config.json").read_text())
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    config["hidden_size"] = 2 * hidden
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ShapeError, match=rf"has shape \[{vocab}, {hidden}\], which does not match config\.json "
                                         rf"\(vocab_size {vocab} x hidden_size {2 * hidden}\)"):
        export_gguf(model, tmp_path / "m.gguf")
    assert not list(tmp_path.glob("*.gguf*"))
