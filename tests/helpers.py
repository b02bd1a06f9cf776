"""Shared test data and small helpers (importable: `pythonpath = ["tests"]`)."""

from __future__ import annotations

import json
from pathlib import Path

CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "The capital of France is Paris."}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "Add 2 and 3."},
     {"role": "assistant", "content": "2 plus 3 is 5."},
     {"role": "user", "content": "And 4 and 4?"},
     {"role": "assistant", "content": "4 plus 4 is 8."}],
    [{"role": "user", "content": "Grüß dich! Wie geht's? 你好，世界 🌍"},
     {"role": "assistant", "content": "  Mir geht's gut — danke! Ça va très bien. 😊\n\nПривет!  "}],
    [{"role": "system", "content": "Réponds en français."},
     {"role": "user", "content": "Quelle est la capitale du Brésil ?"},
     {"role": "assistant", "content": "La capitale du Brésil est Brasília."},
     {"role": "user", "content": "Et de la Suisse ?\tMerci."},
     {"role": "assistant", "content": "Berne.   (Zürich n'est pas la capitale.)"},
     {"role": "user", "content": "Spell it.\n\n\n"},
     {"role": "assistant", "content": "B-e-r-n-e"}],
    [{"role": "user", "content": "code?"},
     {"role": "assistant", "content": "```python\ndef f(x):\n    return x  *  2\n```"}],
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    """Write records as UTF-8 JSONL."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path
