"""What the built-in live page (``/live``) shows, for a user with no Grafana.

:class:`LiveView` answers the page's two polls: ``/live/data`` (cumulative
counters, which the page turns into rates between polls, recent freshness
percentiles, consumer lag of the replica and of the worker group, index size)
and ``/live/projection`` (a 2-D projection of the most interacted-with items).
The projection keeps its axes between refits, so the points move as the
vectors learn rather than as the axes spin; a refit keeps each axis's sign.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> vectors = rng.normal(size=(50, 8)) * np.array([5, 2, 1, 1, 1, 1, 1, 1])
>>> proj = Projection(refit_seconds=30)
>>> xy = proj.project(vectors, now=0.0)
>>> xy.shape, bool(np.abs(proj.basis[0, 0]) > 0.9)          # first axis: the widest direction
((50, 2), True)
>>> moved = proj.project(vectors + np.eye(8)[0], now=10.0)   # same axes: x shifts by one
>>> bool(np.allclose(moved[:, 0] - xy[:, 0], moved[0, 0] - xy[0, 0]))
True
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.metrics import MetricWrapperBase

from services.api.metrics import ServingMetrics
from services.api.state import ServingState
from stream.schemas import EVENT_TYPES

log = logging.getLogger("streambed.live")

STATIC = Path(__file__).with_name("static")
# the npm packages of web/package.json (pinned), installed by scripts/setup.sh (npm ci)
NODE_MODULES = Path(__file__).resolve().parents[2] / "web" / "node_modules"
ASSETS = {  # name served under /live/static/ -> file
    "live.js": STATIC / "live.js",
    "live.css": STATIC / "live.css",
    "uPlot.iife.min.js": NODE_MODULES / "uplot" / "dist" / "uPlot.iife.min.js",
    "uPlot.min.css": NODE_MODULES / "uplot" / "dist" / "uPlot.min.css",
}


class Projection:
    """PCA axes of a sample of vectors, refit at most every ``refit_seconds``."""

    def __init__(self, refit_seconds: float = 30.0) -> None:
        self.refit_seconds = refit_seconds
        self.basis: np.ndarray | None = None  # (2, dim)
        self.center: np.ndarray | None = None
        self.fitted_at = -np.inf

    def project(self, vectors: np.ndarray, now: float) -> np.ndarray:
        if len(vectors) == 0:
            return np.zeros((0, 2))
        stale = self.basis is None or self.basis.shape[1] != vectors.shape[1]
        if stale or now - self.fitted_at >= self.refit_seconds:
            self._fit(vectors.astype(np.float64))
            self.fitted_at = now
        assert self.basis is not None and self.center is not None
        return np.asarray((vectors - self.center) @ self.basis.T)

    def _fit(self, vectors: np.ndarray) -> None:
        center = vectors.mean(axis=0)
        _, _, vt = np.linalg.svd(vectors - center, full_matrices=False)
        basis = np.zeros((2, vectors.shape[1]))
        basis[: min(2, len(vt))] = vt[:2]
        if self.basis is not None and self.basis.shape == basis.shape:
            signs = np.sign(np.sum(basis * self.basis, axis=1))  # keep each axis's direction
            basis *= np.where(signs == 0, 1.0, signs)[:, None]
        self.basis, self.center = basis, center


class LiveView:
    def __init__(
        self,
        state: ServingState,
        metrics: ServingMetrics,
        group_lag: Callable[[], dict[int, int] | None] | None = None,
        *,
        window_seconds: float = 30.0,
        points_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.metrics = metrics
        self.group_lag = group_lag
        self.window_seconds = window_seconds
        self.clock = clock
        self.projection = Projection()
        # a projection costs ~10 ms at 100k items (bench/http): however many pages watch,
        # it is computed at most once per points_seconds (for the last n asked)
        self.points_seconds = points_seconds
        self._points: tuple[int, float, dict[str, Any]] | None = None  # (n, at, answer)
        self._lock = threading.Lock()

    def data(self) -> dict[str, Any]:
        now = self.clock()
        m = self.metrics  # read from the metrics themselves, not a whole-registry collect
        seen_by_type = _values(m.interactions_seen, "type")
        applied = _values(m.vectors_applied, "kind")
        lag = {
            f"{topic}/{part}": int(v)
            for (topic, part), v in _values(m.consumer_lag, "topic", "partition").items()
        }
        live, deleted = self.state.index.graph_nodes
        seen = self.state.seen
        return {
            "ts": now,
            "events_seen": {t: seen_by_type.get((t,), 0.0) for t in EVENT_TYPES},
            "vectors_applied": {k: applied.get((k,), 0.0) for k in ("item", "user")},
            "freshness_seconds": {
                "window_seconds": self.window_seconds,
                **self.state.freshness_percentiles(now - self.window_seconds),
            },
            "replica_lag": lag,
            "worker_lag": None if self.group_lag is None else self.group_lag(),
            "index": {"items": len(self.state.index), "users": self.state.users,
                      "fresh": self.state.index.pending, "graph_nodes": live,
                      "deleted_nodes": deleted},
            "recent_users": [] if seen is None else seen.recent(5),
        }  # fmt: skip

    def points(self, n: int) -> dict[str, Any]:
        """The ``n`` items with the most updates, projected to 2-D on the current axes."""
        with self._lock:
            now = self.clock()
            if self._points is not None:
                last_n, at, answer = self._points
                if last_n == n and now - at < self.points_seconds:
                    return answer
            popular = self.state.popular(n)
            ids, vectors = self.state.index.vectors([item for item, _ in popular])
            updates = dict(popular)
            xy = self.projection.project(vectors, now)
            fitted_at = self.projection.fitted_at
            body = {
                "fitted_at": fitted_at if np.isfinite(fitted_at) else None,
                "points": [[i, round(float(x), 5), round(float(y), 5), int(updates[i])]
                           for i, (x, y) in zip(ids, xy.tolist(), strict=True)],
            }  # fmt: skip
            self._points = (n, now, body)
            return body


def _values(metric: MetricWrapperBase, *labels: str) -> dict[tuple[str, ...], float]:
    """A labelled metric's current values by label values (counters: their ``_total``)."""
    return {tuple(s.labels[k] for k in labels): s.value
            for family in metric.collect() for s in family.samples
            if not s.name.endswith("_created")}  # fmt: skip


class GroupLagWatcher:
    """The worker group's lag on ``interactions``, read every ``every`` seconds in a thread
    started by the first caller (a replica nobody watches never asks Kafka)."""

    def __init__(self, bootstrap: str, group: str, topic: str, every: float = 2.0) -> None:
        self.bootstrap, self.group, self.topic, self.every = bootstrap, group, topic, every
        self.latest: dict[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._start_lock = threading.Lock()

    def __call__(self) -> dict[int, int] | None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="group-lag", daemon=True)
                self._thread.start()
        return self.latest

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        from services.replay import GroupLag

        try:
            with GroupLag(self.bootstrap, self.group, self.topic) as lag:
                while not self._stop.is_set():
                    try:
                        self.latest = lag.read()
                    except Exception:  # noqa: BLE001 - the page shows the last value
                        log.warning("reading the lag of group %s failed", self.group, exc_info=True)
                    self._stop.wait(self.every)
        except Exception:  # noqa: BLE001 - no broker: the page shows no worker lag
            log.warning("cannot watch the lag of group %s", self.group, exc_info=True)
