"""The evaluation's outputs: results.json, a markdown table, and PNG plots (matplotlib, Agg)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from evaluation.prequential import MID_DEPTH, EvalResult


def table(result: EvalResult, meta: dict[str, Any]) -> str:
    k = result.k
    lines = [
        f"| model | recall@{k} | NDCG@{k} | targets |",
        "|---|---|---|---|",
    ]
    for name, row in result.summary().items():
        lines.append(f"| {name} | {row['recall']:.4f} | {row['ndcg']:.4f} | {row['targets']} |")
    cold = result.cold_start(cold_total=True)
    names = list(cold)
    lines += ["", f"recall@{k} (hits) by the target item's earlier positive events (cold start):",
              ""]  # fmt: skip
    lines.append("| interactions before | targets | " + " | ".join(names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    for b, bucket in enumerate(cold[names[0]]):
        cells = [f"{_fmt(cold[n][b]['recall'])} ({cold[n][b]['hits']})" for n in names]
        lines.append(f"| {bucket['bucket']} | {bucket['targets']} | " + " | ".join(cells) + " |")
    depth = result.depth
    lines += ["", f"How near the misses were: recall@{MID_DEPTH} / recall@{depth} / median rank "
              f"(misses count as {depth}) by the same buckets:", ""]  # fmt: skip
    lines.append("| interactions before | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for b, bucket in enumerate(cold[names[0]]):
        cells = [f"{_fmt(cold[n][b]['recall_50'])} / {_fmt(cold[n][b]['recall_deep'])} / "
                 f"{_fmt(cold[n][b]['median_rank'], 0)}" for n in names]  # fmt: skip
        lines.append(f"| {bucket['bucket']} | " + " | ".join(cells) + " |")
    header = ", ".join(f"{key}={value}" for key, value in meta.items())
    return f"{header}\n\n" + "\n".join(lines) + "\n"


def _fmt(x: float, digits: int = 4) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def write(result: EvalResult, meta: dict[str, Any], out: Path, window: int = 2_000) -> list[Path]:
    """Write results.json, table.md, recall_over_time.png and cold_start.png into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "table.md", out / "recall_over_time.png",
             out / "cold_start.png"]  # fmt: skip
    body = {"meta": meta, "k": result.k, "summary": result.summary(),
            "cold_start": result.cold_start(cold_total=True)}  # fmt: skip
    paths[0].write_text(json.dumps(body, indent=2, default=str) + "\n")
    paths[1].write_text(table(result, meta))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, curve in result.over_time(window).items():
        ax.plot(range(len(curve)), curve, label=name, linewidth=1.2)
    ax.set_xlabel(f"target events in stream order (rolling window of {window})")
    ax.set_ylabel(f"recall@{result.k}")
    ax.set_title("Prequential recall over the stream")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=120)
    plt.close(fig)

    cold = result.cold_start()
    names = list(cold)
    buckets = [b["bucket"] for b in cold[names[0]]]
    counts = [b["targets"] for b in cold[names[0]]]
    cold_end = next((n for n, b in enumerate(buckets) if b.startswith("5")), len(buckets))
    fig, (ax_all, ax_cold) = plt.subplots(
        1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [len(buckets), cold_end]}
    )
    width = 0.8 / len(names)
    for ax, upto in ((ax_all, len(buckets)), (ax_cold, cold_end)):
        for n, name in enumerate(names):
            ys = [0.0 if math.isnan(b["recall"]) else b["recall"] for b in cold[name][:upto]]
            ax.bar([x + n * width for x in range(upto)], ys, width, label=name)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(upto)])
        ax.set_xticklabels([f"{b}\n(n={c})" for b, c in zip(buckets[:upto], counts, strict=False)])
        ax.set_ylabel(f"recall@{result.k}")
        ax.grid(alpha=0.3, axis="y")
    ax_all.set_xlabel("positive events the target item had before (cold -> warm)")
    ax_all.set_title("Cold start: recall by item interaction count")
    ax_cold.set_title("zoom: fewer than 5 interactions")
    ax_all.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[3], dpi=120)
    plt.close(fig)
    return paths
