"""Prometheus metrics of a parameter server (an edge module: the tables stay metric-free).

:class:`MeteredPS` wraps any :class:`~paramserver.ps.ParamServerAPI`, times every
call and counts its rows; for an in-process server it also mirrors the tables' own
counters (rows, admissions, evictions).

Examples
--------
>>> import numpy as np
>>> from prometheus_client import CollectorRegistry
>>> from paramserver.config import TableConfig
>>> from paramserver.ps import ParameterServer
>>> reg = CollectorRegistry()
>>> ps = MeteredPS(ParameterServer([TableConfig("items", dim=2)]), PSMetrics.create(reg))
>>> _ = ps.admit("items", ["a", "b"], now=0.0)
>>> _ = ps.pull("items", ["a", "zz"])
>>> reg.get_sample_value("streambed_ps_rows_requested_total", {"op": "pull", "table": "items"})
2.0
>>> reg.get_sample_value("streambed_ps_admissions_total", {"table": "items"})
2.0
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from paramserver.ps import ParameterServer, ParamServerAPI

BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass(frozen=True)
class PSMetrics:
    requests: Counter
    rows_requested: Counter
    request_seconds: Histogram
    errors: Counter
    rows: Gauge
    admissions: Counter
    evictions: Counter
    _mirrored: dict[tuple[str, str], int] = field(default_factory=dict)

    @classmethod
    def create(cls, registry: CollectorRegistry, prefix: str = "streambed_ps") -> PSMetrics:
        r, p = registry, prefix
        return cls(
            requests=Counter(f"{p}_requests", "PS calls", ["op", "table"], registry=r),
            rows_requested=Counter(f"{p}_rows_requested", "Ids in PS calls", ["op", "table"],
                                   registry=r),
            request_seconds=Histogram(f"{p}_request_seconds", "PS call latency", ["op"],
                                      buckets=BUCKETS, registry=r),
            errors=Counter(f"{p}_errors", "PS calls refused", ["op", "reason"], registry=r),
            rows=Gauge(f"{p}_rows", "Rows held", ["table"], registry=r),
            admissions=Counter(f"{p}_admissions", "Rows created after admission", ["table"],
                               registry=r),
            evictions=Counter(f"{p}_evictions", "Rows evicted (expiry or delete)", ["table"],
                              registry=r),
        )  # fmt: skip

    def initialise(self, tables: Iterable[str]) -> PSMetrics:
        """Create each table's series at zero, so a rate over them is 0, not absent."""
        for name in tables:
            self.rows.labels(table=name)
            self.admissions.labels(table=name)
            self.evictions.labels(table=name)
        return self

    def observe(
        self,
        op: str,
        table: str,
        n: int,
        seconds: float,
        error: str | None,
        ps: ParameterServer | None = None,
    ) -> None:
        """Record one PS call: refused (by reason), or counted with its rows and latency.

        With an in-process ``ps``, calls that create or evict rows also mirror its tables.
        """
        if error:
            self.errors.labels(op=op, reason=error).inc()
            return
        self.request_seconds.labels(op=op).observe(seconds)
        self.requests.labels(op=op, table=table).inc()
        self.rows_requested.labels(op=op, table=table).inc(n)
        if ps is not None and op in ("admit", "expire"):
            self.mirror(ps)

    def mirror(self, ps: ParameterServer, tables: Iterable[str] | None = None) -> None:
        """Bring rows/admissions/evictions up to date with the tables' own counters (of
        ``tables``, default all)."""
        for name in ps.tables if tables is None else tables:
            table = ps.tables[name]
            self.rows.labels(table=name).set(len(table))
            for kind, counter, total in (("a", self.admissions, table.stats.admissions),
                                         ("e", self.evictions, table.stats.evictions)):  # fmt: skip
                seen = self._mirrored.get((kind, name), 0)
                if total > seen:  # counters only go up: add the gap
                    counter.labels(table=name).inc(total - seen)
                    self._mirrored[(kind, name)] = total


    def rebase(self, ps: ParameterServer, tables: Iterable[str] | None = None) -> None:
        """Take ``ps`` 's counters as already counted (a server rebuilt from a changelog,
        its counters starting again from zero): later mirrors add what it does next."""
        for name in ps.tables if tables is None else tables:
            stats = ps.tables[name].stats
            self._mirrored[("a", name)] = stats.admissions
            self._mirrored[("e", name)] = stats.evictions
        self.mirror(ps, tables)


class MeteredPS:
    """A :class:`ParamServerAPI` that records every call's count, rows, latency and refusal."""

    def __init__(
        self,
        inner: ParamServerAPI,
        metrics: PSMetrics,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.inner = inner
        self.metrics = metrics
        self.clock = clock

    def _call(self, op: str, table: str, n: int, fn: Callable[[], Any]) -> Any:
        started = self.clock()
        try:
            result = fn()
        except (ValueError, KeyError, TypeError) as err:
            self.metrics.observe(op, table, n, 0.0, type(err).__name__)
            raise
        local = self.inner if isinstance(self.inner, ParameterServer) else None
        self.metrics.observe(op, table, n, self.clock() - started, None, local)
        return result

    def dim(self, table: str) -> int:
        return self.inner.dim(table)

    def size(self, table: str) -> int:
        return self.inner.size(table)

    def pull(self, table: str, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self._call("pull", table, len(ids), lambda: self.inner.pull(table, ids))

    def admit(self, table: str, ids: Sequence[str], *, now: float) -> np.ndarray:
        return self._call("admit", table, len(ids), lambda: self.inner.admit(table, ids, now=now))

    def push(self, table: str, ids: Sequence[str], grads: np.ndarray, *, now: float) -> None:
        self._call("push", table, len(ids), lambda: self.inner.push(table, ids, grads, now=now))

    def put(
        self,
        table: str,
        ids: Sequence[str],
        rows: np.ndarray,
        *,
        now: float,
        updates: np.ndarray | None = None,
    ) -> None:
        put = self.inner.put
        self._call("put", table, len(ids), lambda: put(table, ids, rows, now=now, updates=updates))

    def meta(self, table: str, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self._call("meta", table, len(ids), lambda: self.inner.meta(table, ids))

    def sample(self, table: str, n: int, *, seed: int) -> list[str]:
        return self._call("sample", table, n, lambda: self.inner.sample(table, n, seed=seed))

    def expire(self, *, now: float) -> dict[str, list[str]]:
        return self._call("expire", "*", 0, lambda: self.inner.expire(now=now))
