"""The evaluation's outputs: results.json, a markdown table, PNG plots (matplotlib, Agg), and
targets.npz (every target's rank per model, to pool runs of one dataset by target)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.prequential import COLD_BELOW, MID_DEPTH, EvalResult, mcnemar_p, signflip_p

TARGETS = "targets.npz"


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
    by_user = result.by_user()
    lines += ["", f"recall@{k} (hits) by the interactions of the target's user the models had "
              "learnt (0: a user no model knows yet, served from their session or popularity):",
              "", "| user's learnt events | targets | " + " | ".join(names) + " |",
              "|---|---|" + "---|" * len(names)]  # fmt: skip
    for b, bucket in enumerate(by_user[names[0]]):
        cells = [f"{_fmt(by_user[n][b]['recall'])} ({by_user[n][b]['hits']})" for n in names]
        lines.append(f"| {bucket['bucket']} | {bucket['targets']} | " + " | ".join(cells) + " |")
    first = names[0]
    lines += ["", f"Paired with {first!r} on the same targets: targets only {first!r} hits / "
              "only the other hits, the recall difference, and the exact McNemar p (small: "
              f"the gap is not a coin's); all targets at @{k}, and items with < "
              f"{COLD_BELOW} earlier positives at @{k} and @{MID_DEPTH}:", ""]  # fmt: skip
    lines.append(f"| against {first} | only {first} / only it | diff | p | cold @{k} | p | "
                 f"cold @{MID_DEPTH} | p |")  # fmt: skip
    lines.append("|---|---|---|---|---|---|---|---|")
    for name, pair in paired(result).items():
        cells = [f"{pair['all']['wins']} / {pair['all']['losses']}",
                 f"{pair['all']['diff']:+.4f}", _p(pair["all"]["p"])]  # fmt: skip
        for part in ("cold", "cold_mid"):
            cells += [f"{pair[part]['wins']} / {pair[part]['losses']}", _p(pair[part]["p"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    header = ", ".join(f"{key}={value}" for key, value in meta.items())
    return f"{header}\n\n" + "\n".join(lines) + "\n"


def paired(result: EvalResult) -> dict[str, dict[str, dict[str, Any]]]:
    """Every other model against the first (the online learner): all targets, and cold ones
    at ``k`` and at ``MID_DEPTH``."""
    first, *others = result.models
    return {name: {"all": result.paired(first, name),
                   "cold": result.paired(first, name, below=COLD_BELOW),
                   "cold_mid": result.paired(first, name, below=COLD_BELOW, k=MID_DEPTH)}
            for name in others}  # fmt: skip


def pool(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Several runs (by seed; each ``{"summary", "paired"}`` as :func:`write` saves them) in
    one: per model the recall@k of each seed, their mean and range; per contender the
    paired counts summed over seeds (targets of different seeds are independent) and the
    McNemar p of the sums. Only the models every run has are pooled (a ``--sweep`` run has
    fewer).

    >>> one = {"summary": {"a": {"recall": 0.5}, "b": {"recall": 0.4}},
    ...        "paired": {"b": {"all": {"wins": 6, "losses": 1, "targets": 10}}}}
    >>> two = {"summary": {"a": {"recall": 0.3}, "b": {"recall": 0.3}},
    ...        "paired": {"b": {"all": {"wins": 4, "losses": 1, "targets": 10}}}}
    >>> pooled = pool({0: one, 1: two})
    >>> pooled["recall"]["a"]["mean"], pooled["paired"]["b"]["all"]["wins"]
    (0.4, 10)
    >>> round(pooled["paired"]["b"]["all"]["p"], 4), pooled["paired"]["b"]["all"]["diff"]
    (0.0386, 0.4)
    """
    seeds = sorted(runs)
    models = _shared([list(runs[s]["summary"]) for s in seeds])
    recall = {name: _spread([float(runs[s]["summary"][name]["recall"]) for s in seeds])
              for name in models}  # fmt: skip
    paired_: dict[str, dict[str, dict[str, Any]]] = {}
    for name, parts in runs[seeds[0]]["paired"].items():
        if name not in models:
            continue
        paired_[name] = {}
        for part in parts:
            wins = sum(int(runs[s]["paired"][name][part]["wins"]) for s in seeds)
            losses = sum(int(runs[s]["paired"][name][part]["losses"]) for s in seeds)
            targets = sum(int(runs[s]["paired"][name][part]["targets"]) for s in seeds)
            paired_[name][part] = {"wins": wins, "losses": losses, "targets": targets,
                                   "diff": (wins - losses) / targets if targets else math.nan,
                                   "p": mcnemar_p(wins, losses)}  # fmt: skip
    return {"seeds": seeds, "recall": recall, "paired": paired_}


def pool_targets(runs: dict[int, Path]) -> dict[str, Any]:
    """Runs of one fixed dataset (by seed; each directory holding :func:`save_targets`'
    file) in one. The seeds share their targets, so paired counts do not add up as
    independent evidence (:func:`pool` is for independent streams). Instead each target is
    one unit, with a balance: the seeds on which the first model (the online learner) hits it
    less the seeds on which the contender does. ``wins``/``losses`` count the targets whose
    balance is above/below zero; ``p`` is the exact paired permutation test of the balances
    (:func:`~evaluation.prequential.signflip_p`: a target that separates the two on every
    seed weighs more than one that does on one), ``p_sign`` the sign test of ``wins`` against
    ``losses``, which ignores those weights. ``wins_summed`` / ``losses_summed``: the runs'
    own discordant counts added up, for reading alongside.

    Raises ValueError when the runs are not of the same targets.
    """
    seeds = sorted(runs)
    loaded = {s: _load_targets(runs[s]) for s in seeds}
    first = loaded[seeds[0]]
    for s in seeds[1:]:
        if not (np.array_equal(loaded[s]["position"], first["position"])
                and np.array_equal(loaded[s]["item_count"], first["item_count"])):  # fmt: skip
            raise ValueError(f"{runs[s]} and {runs[seeds[0]]} are not runs over the same "
                             "targets (another dataset or protocol): not poolable")  # fmt: skip
    models = _shared([loaded[s]["models"] for s in seeds])
    k = int(first["k"])
    cold = first["item_count"] < COLD_BELOW

    # each model's ranks, per seed (rows) and target (columns)
    ranks = {name: np.stack([loaded[s]["rank"][loaded[s]["models"].index(name)] for s in seeds])
             for name in models}  # fmt: skip

    def hits(name: str, cut: int) -> np.ndarray:
        return (ranks[name] >= 0) & (ranks[name] < cut)

    recall = {name: _spread([float(v) for v in hits(name, k).mean(axis=1)]) for name in models}
    paired_: dict[str, dict[str, dict[str, Any]]] = {}
    lead, *others = models
    parts = {"all": (None, k), "cold": (cold, k), "cold_mid": (cold, MID_DEPTH)}
    for name in others:
        paired_[name] = {}
        for part, (sel, cut) in parts.items():
            a, b = hits(lead, cut), hits(name, cut)
            if sel is not None:
                a, b = a[:, sel], b[:, sel]
            balance = a.sum(axis=0).astype(np.int64) - b.sum(axis=0)
            wins, losses = int((balance > 0).sum()), int((balance < 0).sum())
            paired_[name][part] = {
                "wins": wins, "losses": losses, "targets": int(a.shape[1]),
                "diff": float((a.mean(axis=1) - b.mean(axis=1)).mean()) if a.size else math.nan,
                "p": signflip_p(balance), "p_sign": mcnemar_p(wins, losses),
                "wins_summed": int((a & ~b).sum()), "losses_summed": int((b & ~a).sum()),
            }  # fmt: skip
    return {"seeds": seeds, "recall": recall, "paired": paired_, "shared_targets": True}


def _shared(models: list[list[str]]) -> list[str]:
    """The models every run has, in the first run's order (a ``--sweep`` run has fewer)."""
    return [m for m in models[0] if all(m in other for other in models[1:])]


def _spread(values: list[float]) -> dict[str, Any]:
    """A model's recall over the seeds: each seed's, their mean and range."""
    return {"seeds": values, "mean": sum(values) / len(values),
            "min": min(values), "max": max(values)}  # fmt: skip


def _load_targets(directory: Path) -> dict[str, Any]:
    path = directory / TARGETS
    if not path.exists():
        raise ValueError(f"{path} is missing: run that seed first (runs before the "
                         "per-target file was written cannot be pooled by target)")  # fmt: skip
    with np.load(path) as raw:
        return {"models": [str(m) for m in raw["models"]], "rank": raw["rank"],
                "position": raw["position"], "item_count": raw["item_count"],
                "k": raw["k"]}  # fmt: skip


def pooled_table(pooled: dict[str, Any], k: int) -> str:
    seeds = pooled["seeds"]
    lines = [f"{len(seeds)} runs, seeds {', '.join(map(str, seeds))}: recall@{k} per seed",
             "", "| model | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | range |",
             "|---|" + "---|" * (len(seeds) + 2)]  # fmt: skip
    for name, row in pooled["recall"].items():
        cells = [f"{v:.4f}" for v in row["seeds"]]
        lines.append(f"| {name} | " + " | ".join(cells) +
                     f" | {row['mean']:.4f} | {row['min']:.4f}-{row['max']:.4f} |")  # fmt: skip
    first = next(iter(pooled["recall"]))
    parts: dict[str, Any] = next(iter(pooled["paired"].values()), {})
    label = {"all": f"all @{k}", "cold": f"< {COLD_BELOW} @{k}",
             "cold_mid": f"< {COLD_BELOW} @{MID_DEPTH}"}  # fmt: skip
    shared = bool(pooled.get("shared_targets"))
    if shared:  # one dataset: each target counted once, by its seeds' balance
        intro = (f"Paired with {first!r} on the targets every seed shares, each target one "
                 f"unit: targets {first!r} hits on more seeds than the other / on fewer (in "
                 "brackets the seeds' discordant counts added up, which are not "
                 "independent), and the exact permutation test's p of the targets' balances "
                 "(seeds hit by one less the other; in brackets the sign test's, of the "
                 "counts alone):")  # fmt: skip
    else:
        intro = (f"Paired with {first!r}, summed over the seeds: targets only {first!r} hits "
                 f"/ only the other hits, and the McNemar p of the sums:")  # fmt: skip
    lines += ["", intro + f" all targets; items with < {COLD_BELOW} earlier positives", "",
              "| against " + first + " | " +
              " | ".join(f"{label.get(part, part)} | p" for part in parts) + " |",
              "|---|" + "---|---|" * len(parts)]  # fmt: skip
    for name, row in pooled["paired"].items():
        cells = []
        for part in parts:
            cell = f"{row[part]['wins']} / {row[part]['losses']}"
            p = _p(row[part]["p"])
            if shared:
                cell += f" ({row[part]['wins_summed']} / {row[part]['losses_summed']})"
                p += f" ({_p(row[part]['p_sign'])})"
            cells.append(f"{cell} | {p}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save_targets(result: EvalResult, path: Path) -> None:
    """Every target's rank per model (-1: beyond ``depth``), its item's earlier positives and
    its place in the stream: what :func:`pool_targets` pools runs of one dataset by."""
    np.savez_compressed(
        path,
        models=np.array(result.models),
        rank=np.array([result.rank[m] for m in result.models], dtype=np.int32).reshape(
            len(result.models), len(result.position)
        ),
        position=np.array(result.position, dtype=np.int64),
        item_count=np.array(result.item_count, dtype=np.int64),
        k=np.array(result.k),
    )


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else "<0.001"


def _fmt(x: float, digits: int = 4) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def write(result: EvalResult, meta: dict[str, Any], out: Path, window: int = 2_000) -> list[Path]:
    """Write results.json, table.md, recall_over_time.png, cold_start.png and targets.npz
    (:func:`save_targets`) into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "table.md", out / "recall_over_time.png",
             out / "cold_start.png", out / TARGETS]  # fmt: skip
    save_targets(result, paths[4])
    body = {"meta": meta, "k": result.k, "summary": result.summary(),
            "cold_start": result.cold_start(cold_total=True), "by_user": result.by_user(),
            "paired": paired(result)}  # fmt: skip
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
