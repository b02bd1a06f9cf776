"""A synthetic preference task with a rule a tiny model can learn: polite answers are preferred.

Every prompt asks about a coloured object (``Tell me about the red box.``). An answer either follows
the rule — it opens with ``Sure!`` — (``Sure! Happy to help.``) or breaks it (``No. Go away.``). The
SFT set mixes both styles (mostly rule-breaking, so a model fine-tuned on it answers ``No.``), the
preference pairs always prefer the rule, and the KTO set labels rule-following answers desirable.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

COLORS = ("red", "blue", "green", "black", "white", "brown", "pink", "gray", "gold", "orange", "purple", "yellow")
THINGS = ("box", "car", "cat", "dog", "hat", "cup", "door", "book", "tree", "ball", "lamp", "bird")
RULE_PREFIX = "Sure!"
BREAK_PREFIX = "No."


def follows_rule(answer: str) -> bool:
    """Whether an answer follows the task's rule (opens with ``Sure!``)."""
    return answer.strip().startswith(RULE_PREFIX)


def _prompt(color: str, thing: str) -> str:
    return f"Tell me about the {color} {thing}."


def _answer(color: str, thing: str, polite: bool) -> str:
    return f"{RULE_PREFIX} Happy to help." if polite else f"{BREAK_PREFIX} Go away."


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def rule_task(out_dir: str | os.PathLike[str], seed: int = 0, polite_share: float = 0.45,
              desirable_share: float = 0.2) -> dict[str, Path]:
    """Write the task's JSONL files into ``out_dir``.

    Args:
        out_dir: directory to write (created).
        seed: shuffling seed.
        polite_share: share of rule-following answers in the SFT set (below one half, so greedy decoding
            after SFT breaks the rule).
        desirable_share: share of desirable examples in the KTO set (0.2 = 1:4).

    Returns:
        Paths ``sft`` (chat data on 120 of the 144 colour-object combinations), ``pref``
        (preference pairs, one per combination) and ``kto`` (two unpaired examples per
        combination). Prepare ``pref``/``kto`` with a validation split to hold combinations out.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    combos = [(c, t) for c in COLORS for t in THINGS]
    rng.shuffle(combos)
    sft = [{"messages": [{"role": "user", "content": _prompt(c, t)},
                         {"role": "assistant", "content": _answer(c, t, rng.random() < polite_share)}]}
           for c, t in combos[24:]]
    pref = [{"prompt": [{"role": "user", "content": _prompt(c, t)}],
             "chosen": [{"role": "assistant", "content": _answer(c, t, True)}],
             "rejected": [{"role": "assistant", "content": _answer(c, t, False)}]} for c, t in combos]
    kto = []
    for c, t in combos * 2:
        good = rng.random() < desirable_share
        kto.append({"prompt": [{"role": "user", "content": _prompt(c, t)}],
                    "completion": [{"role": "assistant", "content": _answer(c, t, good)}], "label": good})
    rng.shuffle(kto)
    return {"sft": _write(out / "sft.jsonl", sft), "pref": _write(out / "pref.jsonl", pref),
            "kto": _write(out / "kto.jsonl", kto)}
