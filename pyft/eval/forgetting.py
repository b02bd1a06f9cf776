"""The forgetting plot of ``pyft eval --compare``: new-task gain against general-domain change."""

from __future__ import annotations

import os
from typing import Any

from pyft._atomic import atomic_file

PathLike = str | os.PathLike[str]


def forgetting_png(report: dict[str, Any], path: PathLike, *, overwrite: bool = True) -> None:
    """Two panels: (left) the tuned model's task gain (y, the primary task metric's change) against its
    general-domain perplexity change in percent (x), the base at the origin; (right) general perplexity
    per language, base and tuned.

    Args:
        report: :func:`pyft.eval.run.compare_reports` output (``task_gain``, ``task_metric``,
            ``general_change_pct``, ``base``/``tuned`` general ``by_lang``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    x, y = report["general_change_pct"], report["task_gain"]
    ax.axhline(0, color="#999", lw=0.8)
    ax.axvline(0, color="#999", lw=0.8)
    ax.scatter([0], [0], color="#777", label="base", zorder=3)
    ax.scatter([x], [y], color="#d62728", label="tuned", zorder=3)
    ax.annotate("", xy=(x, y), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": "#d62728"})
    span = max(abs(x), 1.0) * 1.3
    ax.set_xlim(-span, span)
    ax.set_xlabel("general-domain perplexity change (%)  →  more forgetting")
    ax.set_ylabel(f"task gain ({report['task_metric']})")
    ax.set_title("New-task gain vs general-domain change")
    ax.legend(loc="best")
    langs = sorted(set(report["base"]["general"]["by_lang"]) | set(report["tuned"]["general"]["by_lang"]))
    pos = range(len(langs))
    width = 0.4
    bx.bar([p - width / 2 for p in pos], [report["base"]["general"]["by_lang"].get(lang, 0) for lang in langs],
           width, label="base", color="#777")
    bx.bar([p + width / 2 for p in pos], [report["tuned"]["general"]["by_lang"].get(lang, 0) for lang in langs],
           width, label="tuned", color="#d62728")
    bx.set_xticks(list(pos), langs)
    bx.set_yscale("log")
    bx.set_ylabel("perplexity (log scale)")
    bx.set_title("General-domain perplexity by language")
    bx.legend(loc="best")
    fig.tight_layout()
    with atomic_file(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
