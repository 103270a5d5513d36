"""The contenders of the evaluation, behind :class:`~evaluation.prequential.Model`.

* :class:`Streambed` — the system's own learner: an :class:`~stream.training.OnlineTrainer`
  started from the bootstrap, updated online per micro-batch (or ``online=False``:
  the bootstrap frozen), served with content blending (or ``blend_k=0``: without).
* :class:`Popularity` — the most popular items over a recent window of positives.
* :class:`ALS` — ``implicit``'s alternating least squares, retrained from scratch on
  everything seen so far every ``retrain_every`` interactions (a batch peer).
* :class:`ItemKNN` — item-based nearest neighbours over everything seen so far (rebuilt
  every batch): a second, training-free batch peer.
* :class:`GeneratorOracle` — not a learner: ranks by the generator's own item choice
  probabilities (its true popularity, themes and tags; the users' initial tastes), so a
  table shows roughly the best any model could do on the generated stream.

Examples
--------
>>> from stream.schemas import Interaction
>>> pop = Popularity(window=3)
>>> pop.learn([Interaction(f"e{n}", "u", i, "click", 0.0) for n, i in enumerate("abb")])
>>> pop.recommend(["u"], {}, 2, ["a", "b", "c"])
[['b', 'a']]
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from scipy import sparse
from threadpoolctl import threadpool_limits

from evaluation.prequential import top_k
from paramserver.ps import ParameterServer
from services.datagen import InteractionGenerator
from stream.bootstrap import Bootstrapped, load_into
from stream.frequency import POPULAR_WINDOW, RecentCounts
from stream.schemas import Interaction, training_weight
from stream.similarity import blend_weight, interleave
from stream.split import Gradient, ItemStage, SplitPS, follow, positives, view_tables
from stream.training import USERS, OnlineTrainer, TrainConfig

log = logging.getLogger("streambed.evaluation")


class Popularity:
    """Top items by positive events among the last ``window`` positives.

    Counts tied at the k-th place are cut in ``np.argpartition``'s order (see :func:`top_k`),
    not by arrival: a known wart, left so that the reports stay comparable.

    The candidates' counts are kept between calls (the evaluator's candidates only grow):
    a batch refreshes the items whose count it changed, and the last ranking is reused
    until the counts or the candidates change; any other list is scored afresh.
    """

    def __init__(self, window: int = POPULAR_WINDOW, name: str = "popularity") -> None:
        self.name = name
        self.counts = RecentCounts(window)  # as a replica's --popular-window
        self._ids: list[str] = []  # the candidates scored so far, in order
        self._pos: dict[str, int] = {}
        self._scores = np.zeros(0)
        self._changed: set[str] = set()  # items whose count moved since they were scored
        self._ranked: tuple[int, list[str]] | None = None  # (k, ranking) for self._ids

    def add_items(self, ids: list[str], text: np.ndarray, ts: float) -> None:
        pass

    def learn(self, batch: list[Interaction]) -> None:
        items = [e.item_id for e in batch if training_weight(e) > 0]
        self._changed.update(items)
        self._changed.update(self.counts.observe(items))

    def _sync(self, candidates: list[str]) -> None:
        known = len(self._ids)
        if candidates[:known] != self._ids:
            self._ids, self._pos, self._scores, known = [], {}, np.zeros(0), 0
            self._changed.clear()
            self._ranked = None
        rows = [self._pos[i] for i in self._changed if i in self._pos]
        self._changed.clear()
        if rows:
            self._scores[rows] = [self.counts.get(self._ids[r]) for r in rows]
            self._ranked = None
        if len(candidates) > known:
            new = list(candidates[known:])
            self._pos.update((i, known + n) for n, i in enumerate(new))
            self._ids += new
            fresh = np.array([self.counts.get(i) for i in new], dtype=np.float64)
            self._scores = np.concatenate([self._scores, fresh])
            self._ranked = None

    def scores(self, candidates: list[str]) -> np.ndarray:
        """Each candidate's positives in the window."""
        self._sync(candidates)
        return self._scores.copy()

    def ranked(self, k: int, candidates: list[str]) -> list[str]:
        self._sync(candidates)
        if self._ranked is None or self._ranked[0] != k:
            self._ranked = (k, top_k(self._scores[None, :], self._ids, k)[0])
        return list(self._ranked[1])

    def recommend(
        self, users: list[str], sessions: dict[str, list[str]], k: int, candidates: list[str]
    ) -> list[list[str]]:
        top = self.ranked(k, candidates)
        return [top] * len(users)


class Streambed:
    """The online learner (or, with ``online=False``, the frozen bootstrap).

    ``popular_mix``: a user with ``n`` row updates gets the share ``n / (n + popular_mix)``
    of their list from their vector and the rest from popularity, as the API serves it
    with ``--popular-mix`` (0: off; users with no vector get popularity either way).
    Popularity is the popularity baseline's: over the last ``popular_window`` positives,
    ``history`` included.
    """

    def __init__(
        self,
        name: str,
        boot: Bootstrapped,
        config: TrainConfig,
        *,
        online: bool = True,
        popular_mix: float = 0.0,
        history: Sequence[Interaction] = (),
        popular_window: int = POPULAR_WINDOW,
    ) -> None:
        self.name = name
        self.online = online
        self.popular_mix = popular_mix  # as the API's --popular-mix (0: off)
        self.trainer = OnlineTrainer.create(replace(config, dim=boot.config.dim))
        load_into(self.trainer, copy.deepcopy(boot))
        self.user_trainer = self.trainer  # serves the users (the split learner's differs)
        self.fallback = Popularity(popular_window, name=f"{name}-fallback")
        self.fallback.learn(list(history))
        self._ids: list[str] = []
        self._pos: dict[str, int] = {}
        self._matrix: np.ndarray | None = None
        self._hit = np.zeros(0, dtype=bool)
        self._stale: set[str] = set()  # items whose served vector may have moved since read

    def add_items(self, ids: list[str], text: np.ndarray, ts: float) -> None:
        self.trainer.add_content(ids, text, now=ts)
        self._stale.update(ids)

    def learn(self, batch: list[Interaction]) -> None:
        self.fallback.learn(batch)
        if self.online:
            stats = self.trainer.apply(batch)
            # the rows the step pushed, and the batch's items (their counts, admissions)
            self._stale.update(stats.items)
            self._stale.update(stats.aged)  # their velocity level moved as they aged
            self._stale.update(e.item_id for e in batch)

    def _items(self, candidates: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Served vectors of the candidates, kept between calls: items that arrived since are
        appended and only the items the model touched since are read again (a served vector
        depends on its own item's row, content and count alone; with a decaying frequency
        estimate every count moves, so everything is read again)."""
        known = len(self._ids)
        if (self._matrix is None or candidates[:known] != self._ids
                or (self._stale and self.trainer.frequency.decay != 1.0)):  # fmt: skip
            self._ids = list(candidates)
            self._pos = {i: n for n, i in enumerate(self._ids)}
            matrix, hit = self.trainer.item_vectors(self._ids)
            self._matrix, self._hit = np.array(matrix), np.array(hit)
            self._stale.clear()
            return self._matrix, self._hit
        rows = [self._pos[i] for i in self._stale if i in self._pos]
        self._stale.clear()
        if rows:
            matrix, hit = self.trainer.item_vectors([self._ids[r] for r in rows])
            self._matrix, self._hit = self._matrix.copy(), self._hit.copy()  # returned before
            self._matrix[rows], self._hit[rows] = matrix, hit
        if len(candidates) > known:
            new = list(candidates[known:])
            matrix, hit = self.trainer.item_vectors(new)
            self._pos.update((i, known + n) for n, i in enumerate(new))
            self._ids += new
            self._matrix = np.concatenate([self._matrix, matrix])
            self._hit = np.concatenate([self._hit, hit])
        return self._matrix, self._hit

    def recommend(
        self, users: list[str], sessions: dict[str, list[str]], k: int, candidates: list[str]
    ) -> list[list[str]]:
        if not users:
            return []
        matrix, servable = self._items(candidates)
        ids = [i for i, ok in zip(candidates, servable.tolist(), strict=True) if ok]
        matrix = matrix[servable]
        vectors, hit = self.user_trainer.user_vectors(users, sessions)
        scores = self.trainer.sim.scores(vectors, matrix)
        personal = top_k(scores, ids, k)
        popular = self.fallback.ranked(k, candidates)
        if self.popular_mix > 0:  # users with few updates: part popularity (see the API)
            updates, _ = self.user_trainer.ps.meta(USERS, users)
            shares = blend_weight(updates, self.popular_mix).tolist()
            personal = [interleave(p, popular, a, k) for p, a in zip(personal, shares, strict=True)]
        return [p if h else popular for p, h in zip(personal, hit.tolist(), strict=True)]


class SplitStreambed(Streambed):
    """The online learner split as the scale-out worker splits it (:mod:`stream.split`): user
    steps train against a view of the item rows ``lag`` steps old and send item gradients;
    the item stage applies each step's gradients ``lag`` steps later, and serves the items.
    ``lag`` 1: the view is as fresh as the item rows can be (one commit behind)."""

    def __init__(self, name: str, boot: Bootstrapped, config: TrainConfig, *, lag: int = 1,
                 **kwargs: Any) -> None:  # fmt: skip
        if lag < 1:
            raise ValueError(f"lag is in steps, at least 1, got {lag}")
        super().__init__(name, boot, config, **kwargs)
        cfg = self.trainer.config
        self.view = ParameterServer(view_tables(cfg))
        self.split_ps = SplitPS(cfg, self.view)
        self.user_trainer = OnlineTrainer(self.split_ps, copy.deepcopy(self.trainer.towers), cfg)
        load_into(self.user_trainer, copy.deepcopy(boot))
        self.items_stage = ItemStage(cfg)
        self.items_stage.core.trainer = self.trainer  # the owner: serves the item vectors
        self.items_stage.ps = self.trainer.ps  # type: ignore[assignment]
        self.trainer.ps.drain()  # type: ignore[attr-defined]  # the bootstrap is in the view
        self.lag = lag
        self._in_flight: list[list[Gradient]] = []

    def add_items(self, ids: list[str], text: np.ndarray, ts: float) -> None:
        super().add_items(ids, text, ts)
        self._follow()

    def learn(self, batch: list[Interaction]) -> None:
        self.fallback.learn(batch)
        if not self.online:
            return
        stats = self.user_trainer.apply(batch)
        taken, _ = positives(batch, [0] * len(batch), self.user_trainer.weight)
        self._in_flight.append(self.split_ps.take_gradients(taken, {}))
        while len(self._in_flight) >= self.lag:
            step = self.items_stage.apply(self._in_flight.pop(0))
            self._stale.update(r.key for r in step.items)
        self._stale.update(stats.items)
        self._stale.update(e.item_id for e in batch)
        self._follow()

    def _follow(self) -> None:
        """The view takes the owner's changed rows (what tailing ``item-rows`` gives)."""
        follow(self.view, self.items_stage.changelog([]))


class GeneratorOracle:
    """Ranks the candidates by :meth:`InteractionGenerator.preference` (learns nothing)."""

    def __init__(self, generator: InteractionGenerator, name: str = "oracle") -> None:
        self.name = name
        self.gen = generator

    def add_items(self, ids: list[str], text: np.ndarray, ts: float) -> None:
        pass

    def learn(self, batch: list[Interaction]) -> None:
        pass

    def recommend(
        self, users: list[str], sessions: dict[str, list[str]], k: int, candidates: list[str]
    ) -> list[list[str]]:
        if not users:
            return []
        index = np.array([int(i[1:]) for i in candidates])
        available = np.zeros(self.gen.config.items, dtype=bool)
        available[index] = True
        scores = np.stack([self.gen.preference(int(u[1:]), available)[index] for u in users])
        return top_k(scores, candidates, k)


class ALS:
    """``implicit`` ALS retrained every ``retrain_every`` interactions on all data so far."""

    def __init__(
        self,
        history: list[Interaction],
        *,
        factors: int = 32,
        retrain_every: int = 5_000,
        regularization: float = 0.05,
        iterations: int = 15,
        alpha: float = 1.0,
        seed: int = 0,
        name: str = "als",
        popular_window: int = POPULAR_WINDOW,
    ) -> None:
        self.name = name
        self.factors, self.reg, self.iterations, self.seed = (
            factors,
            regularization,
            iterations,
            seed,
        )
        self.retrain_every = retrain_every
        self.alpha = alpha  # confidence = alpha * summed event-type weights
        self.events: list[Interaction] = [e for e in history if training_weight(e) > 0]
        self.fallback = Popularity(popular_window, name=f"{name}-fallback")
        self.fallback.learn(history)
        self.since = 0
        self.retrains = 0
        self._fit()

    def add_items(self, ids: list[str], text: np.ndarray, ts: float) -> None:
        pass

    def _fit(self) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        self.users = {u: n for n, u in enumerate(dict.fromkeys(e.user_id for e in self.events))}
        self.items = list(dict.fromkeys(e.item_id for e in self.events))
        item_at = {i: n for n, i in enumerate(self.items)}
        rows = [self.users[e.user_id] for e in self.events]
        cols = [item_at[e.item_id] for e in self.events]
        vals = [self.alpha * training_weight(e) for e in self.events]
        # confidence: summed event-type weights (duplicates add up in the CSR)
        self.user_items = sparse.csr_matrix(
            (np.array(vals, dtype=np.float32), (rows, cols)),
            shape=(len(self.users), len(self.items)),
        )
        with threadpool_limits(1, "blas"):  # implicit's own advice: BLAS threads slow ALS
            self.model = AlternatingLeastSquares(
                factors=self.factors, regularization=self.reg, iterations=self.iterations,
                random_state=self.seed, num_threads=1, calculate_training_loss=False,
            )  # fmt: skip
            self.model.fit(self.user_items, show_progress=False)
        self.retrains += 1

    def learn(self, batch: list[Interaction]) -> None:
        self.fallback.learn(batch)
        self.events.extend(e for e in batch if training_weight(e) > 0)
        self.since += len(batch)
        if self.since >= self.retrain_every:
            self.since = 0
            self._fit()

    def recommend(
        self, users: list[str], sessions: dict[str, list[str]], k: int, candidates: list[str]
    ) -> list[list[str]]:
        def rank(known: list[str]) -> list[list[str]]:
            rows = np.array([self.users[u] for u in known])
            ids, _ = self.model.recommend(
                rows, self.user_items[rows], N=k, filter_already_liked_items=False
            )
            return [[self.items[j] for j in row if j >= 0] for row in np.atleast_2d(ids).tolist()]

        return known_or_popular(users, self.users, self.fallback.ranked(k, candidates), rank)


def known_or_popular(
    users: list[str],
    known: Mapping[str, int],
    popular: list[str],
    rank: Callable[[list[str]], list[list[str]]],
) -> list[list[str]]:
    """A batch peer's lists: ``rank(users it knows)``, in one call, and ``popular`` for the rest."""
    mine = [u for u in users if u in known]
    out = dict.fromkeys(users, popular)
    if mine:
        out.update(zip(mine, rank(mine), strict=True))
    return [out[u] for u in users]


class ItemKNN:
    """Item-based neighbours (Sarwar et al., WWW 2001), over every positive seen so far.

    A user's positives are the set ``S``; an item ``i`` scores
    ``sum_{j in S} c(j, i) / (n_j ** 0.5 * n_i ** alpha)``, ``c`` counting the users who
    took both, ``n`` each item's users: ``alpha = 0.5`` is cosine, smaller leans towards
    popular items. The user-item matrix holds every batch learnt (no training, so
    nothing to retrain at intervals); users it does not know get popularity, and items
    no neighbour reaches follow in popularity order.

    >>> from stream.schemas import Interaction
    >>> took = {"a": "xy", "b": "xy", "c": "xz", "d": "z", "e": "x", "f": "z", "g": "y"}
    >>> knn = ItemKNN([Interaction(f"{u}{i}", u, i, "click", 0.0)
    ...                for u, items in took.items() for i in items])
    >>> knn.recommend(["d", "g", "new"], {}, 3, ["w", "x", "y", "z"])
    [['z', 'x', 'y'], ['y', 'x', 'z'], ['x', 'z', 'y']]
    """

    def __init__(self, history: list[Interaction], *, alpha: float = 0.5, name: str = "item kNN",
                 popular_window: int = POPULAR_WINDOW) -> None:  # fmt: skip
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.name = name
        self.alpha = alpha
        self.users: dict[str, int] = {}
        self.items: dict[str, int] = {}
        self._rows: list[int] = []
        self._cols: list[int] = []
        self._dirty = True
        self.fallback = Popularity(popular_window, name=f"{name}-fallback")
        self.learn(history)

    def add_items(self, ids: list[str], text: np.ndarray, ts: float) -> None:
        pass

    def learn(self, batch: list[Interaction]) -> None:
        self.fallback.learn(batch)
        for e in batch:
            if training_weight(e) > 0:
                self._rows.append(self.users.setdefault(e.user_id, len(self.users)))
                self._cols.append(self.items.setdefault(e.item_id, len(self.items)))
                self._dirty = True

    def _build(self) -> None:
        """The user-item matrix of every positive learnt, built when asked for after a change
        (batches of a few events learn far more often than anyone asks)."""
        if not self._dirty:
            return
        self._dirty = False
        taken = sparse.csr_matrix(
            (np.ones(len(self._rows), dtype=np.float32), (self._rows, self._cols)),
            shape=(len(self.users), len(self.items)),
        )
        taken.data[:] = 1.0  # duplicates summed by the constructor: who took it, not how often
        self.taken = taken
        self.n = np.maximum(np.asarray(taken.sum(axis=0)).ravel(), 1.0)

    def recommend(
        self, users: list[str], sessions: dict[str, list[str]], k: int, candidates: list[str]
    ) -> list[list[str]]:
        def rank(known: list[str]) -> list[list[str]]:
            self._build()
            mine = self.taken[[self.users[u] for u in known]].multiply(self.n**-0.5).tocsr()
            scores = ((mine @ self.taken.T) @ self.taken).toarray() * self.n**-self.alpha
            col = np.array([self.items.get(i, -1) for i in candidates], dtype=np.int64)
            at = np.where(col >= 0, scores[:, np.maximum(col, 0)], 0.0)
            # candidates no neighbour reaches follow every reached one, in popularity order
            counts = self.fallback.scores(candidates)
            tail = -2.0 + counts / (counts.max(initial=0.0) + 1.0)
            return top_k(np.where(at > 0, at, tail), candidates, k)

        return known_or_popular(users, self.users, self.fallback.ranked(k, candidates), rank)
