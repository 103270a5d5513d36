"""Prequential (test-then-train) evaluation over a time-ordered stream.

Interactions are cut into micro-batches as the worker's :class:`~stream.batching.Batcher`
cuts them: a batch closes at ``batch_size`` events or, with ``batch_ms`` set, when an event
comes ``batch_ms`` or more (of event time) after the batch's first, i.e. as a worker with
that window cuts the stream replayed at its own pace (at a replay speed-up S, the worker's
window covers S times as much event time). Each model learns a batch only after every
event in it has been tested: each
user with a target event (click, like or purchase) is first asked for their top-k,
from what the model learnt before the batch; a target is a hit if its item is in
that list (recall@k with one held-out item per event; NDCG@k counts where). Items
become candidates when their content arrives, which may be inside a batch: the
events before the arrival are tested then, the rest after it, and the batch is
learnt when it is full, as a worker learns its micro-batch whatever the ``items``
topic does meanwhile. (Arrivals used to end a batch early: on MovieLens, where a
film arrives just before its first rating, the median batch was 3 events.) What a
user has done counts for their session and exclude-seen filter as soon as it is
tested, as a replica reading ``interactions`` sees it. Each target also records how
many positive events its item had before, for the cold-start curve.

Two models are compared on the same targets by :meth:`EvalResult.paired`: the targets
only one of them hits, and an exact McNemar test of whether that split could be a coin's,
so a table says which gaps the stream can tell apart from noise.

Examples
--------
>>> from stream.schemas import Interaction
>>> class Oracle:                               # recommends what the user will click
...     name = "oracle"
...     def add_items(self, ids, text, ts): pass
...     def recommend(self, users, sessions, k, candidates): return [["i1"]] * len(users)
...     def learn(self, batch): pass
>>> stream = [ItemArrival("i1", "a", 0.0), ItemArrival("i2", "b", 0.0)] + [
...     Interaction(f"e{n}", "u", "i1", "click", float(n)) for n in range(1, 5)]
>>> result = prequential(stream, [Oracle()], lambda texts: np.zeros((len(texts), 2)),
...                      EvalConfig(k=10, batch_size=2))
>>> result.summary()["oracle"]["recall"], result.summary()["oracle"]["targets"]
(1.0, 4)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from scipy.stats import binom

from evaluation.data import ItemArrival, Record
from stream.batching import BATCH_SIZE, window_closed
from stream.schemas import Interaction, training_weight

TARGET_TYPES = frozenset({"click", "like", "purchase"})
COLD_BUCKETS: tuple[tuple[int, int], ...] = ((0, 0), (1, 1), (2, 4), (5, 9), (10, 19), (20, 49),
                                             (50, 10**9))  # fmt: skip
# the target's user by the interactions the models had learnt from them (0: a user no model
# has learnt yet, served from their session or popularity)
USER_BUCKETS: tuple[tuple[int, int], ...] = ((0, 0), (1, 19), (20, 99), (100, 10**9))
MID_DEPTH = 50  # a second, deeper cut-off for the cold-start tables
COLD_BELOW = 5  # the cold-start bar: items with fewer earlier positives than this


class Model(Protocol):
    name: str

    def add_items(self, ids: list[str], text: np.ndarray, ts: float) -> None: ...

    def recommend(
        self,
        users: list[str],
        sessions: dict[str, list[str]],
        k: int,
        candidates: list[str],
    ) -> list[list[str]]: ...

    def learn(self, batch: list[Interaction]) -> None: ...


@dataclass(frozen=True)
class EvalConfig:
    """``k``: the cut-off of recall/NDCG; ``depth``: how deep ranks are recorded for the
    diagnostics (recall@depth, median rank), so one run shows how near the misses were."""

    k: int = 10
    batch_size: int = BATCH_SIZE
    # None: batches close by size alone (a replay fast enough to fill them, as a load test
    # does); the worker's window (BATCH_MS): as the worker would cut the stream live
    batch_ms: float | None = None
    depth: int = 500
    # drop items the user has interacted with before from every model's list (a rating
    # site: nobody rates a movie twice); off where people come back to items
    exclude_seen: bool = False


@dataclass
class EvalResult:
    """Per model: one row per target (position, rank within ``depth`` or -1, the item's prior
    count); a hit is a rank below ``k``."""

    k: int
    models: list[str]
    depth: int = 500
    position: list[int] = field(default_factory=list)  # index of the target among all targets
    ts: list[float] = field(default_factory=list)
    item_count: list[int] = field(default_factory=list)
    # the user's interactions the models had learnt when the target was tested
    user_events: list[int] = field(default_factory=list)
    rank: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    batches: int = 0  # micro-batches learnt

    def _arrays(self, name: str, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        rank = np.array(self.rank[name])
        hit = (rank >= 0) & (rank < (self.k if k is None else k))
        ndcg = np.where(hit, 1.0 / np.log2(np.maximum(rank, 0) + 2.0), 0.0)
        return hit, ndcg

    def summary(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name in self.models:
            hit, ndcg = self._arrays(name)
            out[name] = {
                "recall": float(hit.mean()) if hit.size else math.nan,
                "ndcg": float(ndcg.mean()) if ndcg.size else math.nan,
                "targets": int(hit.size),
            }
        return out

    def cold_start(self, cold_total: bool = False) -> dict[str, list[dict[str, Any]]]:
        """recall@k per model by the target item's number of earlier positive events, with
        recall@50, recall@depth and the median rank to show how near the misses were.
        ``cold_total``: one more row, every item with fewer than ``COLD_BELOW`` (the
        cold-start bar)."""
        counts = np.array(self.item_count)
        buckets = [*COLD_BUCKETS, (0, COLD_BELOW - 1)] if cold_total else list(COLD_BUCKETS)
        out: dict[str, list[dict[str, Any]]] = {}
        for name in self.models:
            hit, _ = self._arrays(name)
            rank = np.array(self.rank[name])
            deep = rank >= 0
            capped = np.where(deep, rank, self.depth)  # a miss ranks "beyond depth"
            mid = deep & (rank < MID_DEPTH)
            rows = []
            for n, (lo, hi) in enumerate(buckets):
                sel = (counts >= lo) & (counts <= hi)
                label = _label(lo, hi)
                if n == len(COLD_BUCKETS):
                    label = f"<{COLD_BELOW} (all cold)"
                any_ = bool(sel.any())
                rows.append({
                    "bucket": label, "targets": int(sel.sum()),
                    "recall": float(hit[sel].mean()) if any_ else math.nan,
                    "hits": int(hit[sel].sum()),
                    "recall_50": float(mid[sel].mean()) if any_ else math.nan,
                    "recall_deep": float(deep[sel].mean()) if any_ else math.nan,
                    "median_rank": float(np.median(capped[sel])) if any_ else math.nan,
                })  # fmt: skip
            out[name] = rows
        return out

    def by_user(self) -> dict[str, list[dict[str, Any]]]:
        """recall@k (and hits) per model by how many of the target user's interactions the
        models had learnt (:data:`USER_BUCKETS`): where a stream of new users is decided.

        >>> r = EvalResult(k=1, models=["a"], user_events=[0, 0, 30])
        >>> r.rank.update(a=[0, -1, 0])
        >>> [(row["bucket"], row["targets"], row["hits"]) for row in r.by_user()["a"]]
        [('0', 2, 1), ('1-19', 0, 0), ('20-99', 1, 1), ('100+', 0, 0)]
        """
        events = np.array(self.user_events, dtype=np.int64)
        out: dict[str, list[dict[str, Any]]] = {}
        for name in self.models:
            hit, _ = self._arrays(name)
            rows = []
            for lo, hi in USER_BUCKETS:
                sel = (events >= lo) & (events <= hi)
                rows.append({"bucket": _label(lo, hi), "targets": int(sel.sum()),
                             "recall": float(hit[sel].mean()) if sel.any() else math.nan,
                             "hits": int(hit[sel].sum())})  # fmt: skip
            out[name] = rows
        return out

    def paired(
        self, a: str, b: str, *, below: int | None = None, k: int | None = None
    ) -> dict[str, Any]:
        """Model ``a`` against ``b`` on the same targets (``below``: only targets whose item
        had fewer earlier positives; ``k``: hits within another cut-off, up to ``depth``):
        ``wins`` (a hits, b misses), ``losses`` (the other way), the recall difference, and
        ``p``, the exact two-sided McNemar test of a 50/50 split of the discordant targets
        (1.0 when there are none).

        >>> r = EvalResult(k=1, models=["a", "b"], item_count=[0, 0, 9, 9])
        >>> r.rank.update(a=[0, 0, 0, -1], b=[-1, -1, 0, 0])
        >>> r.paired("a", "b")
        {'wins': 2, 'losses': 1, 'diff': 0.25, 'targets': 4, 'p': 1.0}
        >>> r.paired("a", "b", below=5)["wins"], round(r.paired("a", "b", below=5)["p"], 2)
        (2, 0.5)
        >>> r.rank.update(b=[-1, 1, 0, 0])                      # rank 1: a hit only at k >= 2
        >>> r.paired("a", "b")["wins"], r.paired("a", "b", k=2)["wins"]
        (2, 1)
        """
        hit_a, hit_b = (self._arrays(name, k)[0] for name in (a, b))
        if below is not None:
            sel = np.array(self.item_count, dtype=np.int64) < below
            hit_a, hit_b = hit_a[sel], hit_b[sel]
        wins = int((hit_a & ~hit_b).sum())
        losses = int((hit_b & ~hit_a).sum())
        diff = (wins - losses) / hit_a.size if hit_a.size else math.nan
        return {"wins": wins, "losses": losses, "diff": diff, "targets": int(hit_a.size),
                "p": mcnemar_p(wins, losses)}  # fmt: skip

    def over_time(self, window: int) -> dict[str, np.ndarray]:
        """Rolling recall@k over the last ``window`` targets, per model."""
        out = {}
        for name in self.models:
            hit, _ = self._arrays(name)
            csum = np.concatenate(([0.0], np.cumsum(hit)))
            w = min(window, max(len(hit), 1))
            out[name] = (csum[w:] - csum[:-w]) / w
        return out


def prequential(
    stream: Sequence[Record],
    models: Sequence[Model],
    encode: Callable[[list[str]], np.ndarray],
    config: EvalConfig,
    prior_counts: dict[str, int] | None = None,
    progress: Callable[[int], None] | None = None,
    prior_seen: Sequence[Interaction] = (),
) -> EvalResult:
    """Run every model over ``stream``; ``encode`` embeds item texts (cached per item).

    ``prior_counts``: positive events per item before the stream (the history);
    ``prior_seen``: the history's interactions, for ``config.exclude_seen``.
    ``progress(n)`` is called with the number of interactions consumed so far.
    """
    result = EvalResult(k=config.k, models=[m.name for m in models], depth=config.depth)
    depth = max(config.depth, config.k)
    counts: dict[str, int] = defaultdict(int, prior_counts or {})
    sessions: dict[str, list[str]] = defaultdict(list)
    seen: dict[str, set[str]] = defaultdict(set)
    learnt: dict[str, int] = defaultdict(int)
    for e in prior_seen:
        seen[e.user_id].add(e.item_id)
        learnt[e.user_id] += 1
    candidates: list[str] = []
    known: set[str] = set()
    arrivals: list[ItemArrival] = []
    batch: list[Interaction] = []  # tested, not yet learnt
    segment: list[Interaction] = []  # not yet tested
    consumed = 0

    def flush_arrivals() -> None:
        fresh = [a for a in arrivals if a.item_id not in known]
        arrivals.clear()
        if not fresh:
            return
        text = encode([a.text for a in fresh])
        ids = [a.item_id for a in fresh]
        for m in models:
            m.add_items(ids, text, max(a.ts for a in fresh))
        known.update(ids)
        candidates.extend(ids)

    def test_segment() -> None:
        """Rank the targets among the untested events, then record what they did."""
        targets = [e for e in segment if e.type in TARGET_TYPES and e.item_id in known]
        users = list(dict.fromkeys(e.user_id for e in targets))
        user_sessions = {e.user_id: list(sessions.get(e.session_id or "", ())) for e in targets}
        extra = max((len(seen[u]) for u in users), default=0) if config.exclude_seen else 0
        for m in models if users else ():
            lists = m.recommend(users, user_sessions, depth + extra, candidates)
            if extra:
                lists = [
                    [i for i in top if i not in seen[u]]
                    for u, top in zip(users, lists, strict=True)
                ]
            recs = dict(zip(users, lists, strict=True))
            for e in targets:
                top = recs[e.user_id][:depth]
                result.rank[m.name].append(top.index(e.item_id) if e.item_id in top else -1)
        for e in targets:
            result.position.append(len(result.position))
            result.ts.append(e.ts)
            result.item_count.append(counts[e.item_id])
            result.user_events.append(learnt[e.user_id])
        for e in segment:
            seen[e.user_id].add(e.item_id)
            if training_weight(e) > 0:
                counts[e.item_id] += 1
                if e.session_id is not None:
                    sessions[e.session_id].append(e.item_id)
        batch.extend(segment)
        segment.clear()

    def learn_batch() -> None:
        test_segment()
        for m in models:
            m.learn(batch)
        result.batches += 1
        for e in batch:
            learnt[e.user_id] += 1
        batch.clear()
        if progress is not None:
            progress(consumed)

    for rec in stream:
        if isinstance(rec, ItemArrival):
            arrivals.append(rec)
            continue
        if arrivals:
            if segment:
                test_segment()
            flush_arrivals()
        pending, window = batch or segment, config.batch_ms  # its first event opens the window
        if (window is not None and pending
                and window_closed(pending[0].ts * 1000.0, rec.ts * 1000.0, window)):  # fmt: skip
            learn_batch()
        segment.append(rec)
        consumed += 1
        if len(batch) + len(segment) >= config.batch_size:
            learn_batch()
    if arrivals:
        if segment:
            test_segment()
        flush_arrivals()
    if batch or segment:
        learn_batch()
    if progress is not None:
        progress(consumed)
    return result


def _label(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else (f"{lo}+" if hi >= 10**9 else f"{lo}-{hi}")


def mcnemar_p(wins: int, losses: int) -> float:
    """The exact two-sided McNemar p: how likely a split of ``wins + losses`` discordant
    targets at least this uneven is, were each a fair coin (1.0 with none).

    >>> mcnemar_p(10, 2), mcnemar_p(3, 3), mcnemar_p(0, 0)
    (0.03857421875, 1.0, 1.0)
    """
    n = wins + losses
    return 1.0 if n == 0 else min(1.0, 2.0 * float(binom.cdf(min(wins, losses), n, 0.5)))


def signflip_p(balance: Sequence[int] | np.ndarray) -> float:
    """The exact two-sided paired permutation (sign-flip) test of per-unit integer balances:
    how likely a total at least this far from 0 is, were each unit's sign a fair coin (1.0
    with no nonzero unit). For a target scored on several seeds, its balance is the seeds
    on which one model hits it less those on which the other does, so a target that
    separates the two on every seed weighs more than one that does on one; with balances of
    -1, 0 and 1 alone it is :func:`mcnemar_p`. Exact: the sum's distribution is the
    convolution, per magnitude ``m`` held by ``c`` units, of ``m * (2 B - c)``, ``B`` ~
    Binomial(c, 1/2).

    >>> round(signflip_p([1] * 10 + [-1] * 2 + [0] * 5), 12) == round(mcnemar_p(10, 2), 12)
    True
    >>> round(signflip_p([2, 2, 2, 2, 1, -1]) * 64, 9)  # sums of 8 or 10 either way: 6 of 64
    6.0
    >>> signflip_p([3, -3]), signflip_p([])
    (1.0, 1.0)
    """
    b = np.asarray(balance, dtype=np.int64)
    mags = np.abs(b[b != 0])
    if mags.size == 0:
        return 1.0
    pmf, low = np.ones(1), 0  # the distribution of the sum, over low, low + 1, ...
    for m in np.unique(mags).tolist():
        c = int((mags == m).sum())
        step = np.zeros(2 * m * c + 1)
        step[:: 2 * m] = binom.pmf(np.arange(c + 1), c, 0.5)  # -m c, -m c + 2m, ..., m c
        pmf, low = np.convolve(pmf, step), low - m * c
    observed = abs(int(b.sum()))
    values = np.arange(pmf.size) + low
    return float(min(1.0, pmf[np.abs(values) >= observed].sum()))


def top_k(scores: np.ndarray, ids: Sequence[str], k: int) -> list[list[str]]:
    """The ``k`` highest-scoring ids per row of ``scores`` (users x candidates), best first."""
    k = min(k, scores.shape[1])
    if k == 0:
        return [[] for _ in range(len(scores))]
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
    best = np.take_along_axis(part, order, axis=1)
    return [[ids[j] for j in row] for row in best.tolist()]
