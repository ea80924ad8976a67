"""``docs/benchmarks.md``'s generated section and its plot, from one run's figures.

The run's section sits between two HTML comments (``BEGIN``/``END`` below); a new run
replaces only that part, so the hand-written sections of the document stay. The plot is a
matplotlib PNG beside the document (imported here only, with the Agg backend: no display).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.report import (
    BROKER_LABELS,
    HEADERS,
    METRICS,
    RATIO_HEADERS,
    SYSTEM_LABELS,
    Figure,
    PeerRatios,
    Ratio,
    figure_rows,
    fmt_ratio,
    ratio_rows,
)

__all__ = ["BEGIN", "END", "plot", "render_section", "splice"]

BEGIN = "<!-- BEGIN benchmarks/run.py: generated, do not edit by hand -->"
END = "<!-- END benchmarks/run.py -->"

#: The panels of the plot: one metric each, grouped by broker, one bar per system.
PLOT_METRICS = (
    "throughput",
    "enq_single_conf",
    "latency_p50",
    "latency_p99",
    "rss_idle",
    "rss_backlog",
)


def _md_table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    align = ["---:" if i in right else "---" for i in range(len(headers))]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows]
    return out


def render_section(
    figures: Sequence[Figure],
    ratios: Sequence[Ratio],
    peer_ratios: Sequence[PeerRatios],
    meta: dict[str, Any],
    plot_name: str | None,
) -> str:
    """The generated section: command, versions, targets, ratios, figures, plot."""
    versions = meta.get("versions", {})
    settings = {k: v for k, v in meta.items() if k not in ("versions", "command")}
    passed = sum(r.verdict == "PASS" for r in ratios)
    judged = sum(r.verdict in ("PASS", "FAIL") for r in ratios)
    out = [
        BEGIN,
        "## uno_jobs, Celery, Dramatiq and raw kombu: one run of `benchmarks/run.py`",
        "",
        "Produced by this command (what each measure times: "
        "[`benchmarks/README.md`](../benchmarks/README.md)):",
        "",
        "```bash",
        str(meta.get("command", "")),
        "```",
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + ".",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        f"### Targets: {passed} of {judged} met",
        "",
    ]
    target_rows = [[r.label, fmt_ratio(r), r.bound, f"**{r.verdict}**"] for r in ratios]
    out += _md_table(
        ["target (medians of this run)", "value", "bound", "verdict"], target_rows, {1}
    )
    if peer_ratios:
        out += [
            "",
            "### Ratios: uno_jobs ÷ each peer",
            "",
            "Each ratio is the median over the rounds of that round's ratio (a target too). "
            "For the measures marked *lower* (latency, memory) a ratio "
            "below 1 is uno_jobs' advantage; for the others a ratio above 1. Celery's column "
            "divides by its best pool for that measure (named).",
            "",
        ]
        out += _md_table(RATIO_HEADERS, ratio_rows(peer_ratios), set())
    out += ["", "### Every figure", ""]
    out += _md_table(HEADERS, figure_rows(figures), {3, 4})
    if plot_name:
        out += ["", f"![benchmark figures]({plot_name})"]
    out += ["", END]
    return "\n".join(out) + "\n"


def splice(document: str, section: str) -> str:
    """``document`` with its generated section replaced by ``section``.

    Without a generated section yet, ``section`` goes before the first ``## `` heading
    (after the document's title and introduction), or at the end.
    """
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)
    if pattern.search(document):
        return pattern.sub(lambda _: section, document, count=1)
    at = document.find("\n## ")
    if at < 0:
        return document.rstrip("\n") + "\n\n" + section
    return document[: at + 1] + section + "\n" + document[at + 1 :]


def plot(figures: Sequence[Figure], path: Path) -> bool:
    """Draw the figures of ``PLOT_METRICS`` into a PNG; ``False`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    index = {f.key: f for f in figures}
    brokers = [b for b in BROKER_LABELS if any(f.broker == b for f in figures)]
    systems = [s for s in SYSTEM_LABELS if any(f.system == s for f in figures)]
    palette = plt.get_cmap("tab10")
    colours = {s: palette(i % 10) for i, s in enumerate(SYSTEM_LABELS)}
    fig, axes = plt.subplots(3, 2, figsize=(13, 12))
    for ax, metric in zip(axes.flat, PLOT_METRICS, strict=True):
        meta = METRICS[metric]
        present = [s for s in systems if any((s, b, metric) in index for b in brokers)]
        width = 0.8 / max(len(present), 1)
        for i, system in enumerate(present):
            heights = []
            for broker in brokers:
                f = index.get((system, broker, metric))
                heights.append(f.value if f is not None and f.value is not None else 0.0)
            xs = [b + (i - (len(present) - 1) / 2) * width for b in range(len(brokers))]
            ax.bar(xs, heights, width, label=SYSTEM_LABELS[system], color=colours[system])
        ax.set_xticks(range(len(brokers)), [BROKER_LABELS[b] for b in brokers])
        ax.set_title(f"{meta.label} ({'higher' if meta.higher_is_better else 'lower'} is better)")
        ax.set_ylabel(meta.unit)
        if meta.unit == "ms":  # latencies of different systems differ by orders of magnitude
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = [], []
    for ax in axes.flat:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            if text not in labels:
                handles.append(handle)
                labels.append(text)
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize="small")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
