"""The parameter server's API over string ids: named tables, each with its own key map.

:class:`ParameterServer` is the implementation; :class:`ParamServerAPI` is what the
training step needs from one (the scale-out worker's user stage implements it over its
own rows and a view of the item rows, :mod:`stream.split`). It validates ids and
gradients before touching a table, so a bad request never half-applies.

Examples
--------
>>> import numpy as np
>>> from paramserver.config import TableConfig
>>> ps = ParameterServer([TableConfig("items", dim=4)])
>>> ps.pull("items", ["a"])[1].tolist()        # reads create nothing
[False]
>>> ps.admit("items", ["a", "b", "a"], now=1.0).tolist()
[True, True, True]
>>> ps.push("items", ["a", "a"], np.ones((2, 4), dtype=np.float32), now=2.0)
>>> ps.meta("items", ["a", "b", "zz"])[0].tolist()   # duplicate ids: one update
[1, 0, -1]
>>> ps.size("items"), sorted(ps.sample("items", 3, seed=1)) <= ["b", "b", "b"]
(2, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from paramserver.config import TableConfig
from paramserver.keys import KeyMap, check_ids
from paramserver.table import EmbeddingTable, TableChanges


class ParamServerAPI(Protocol):
    """What the training step needs from a parameter server."""

    def dim(self, table: str) -> int: ...

    def size(self, table: str) -> int: ...

    def pull(self, table: str, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]: ...

    def admit(self, table: str, ids: Sequence[str], *, now: float) -> np.ndarray: ...

    def push(self, table: str, ids: Sequence[str], grads: np.ndarray, *, now: float) -> None: ...

    def meta(self, table: str, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]: ...

    def put(
        self,
        table: str,
        ids: Sequence[str],
        rows: np.ndarray,
        *,
        now: float,
        updates: np.ndarray | None = None,
    ) -> None: ...

    def sample(self, table: str, n: int, *, seed: int) -> list[str]: ...

    def expire(self, *, now: float) -> dict[str, list[str]]: ...


@dataclass
class TableDelta:
    """A table's changes since the last checkpoint, with the string id of every written row."""

    name: str
    changes: TableChanges
    strings: list[str]
    high_water: int
    filter_counts: bytes | None  # the admission filter, when it is in use


class ParameterServer:
    """Named :class:`EmbeddingTable` s addressed by string ids (one :class:`KeyMap` each)."""

    def __init__(self, configs: Sequence[TableConfig]) -> None:
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"table names must be distinct, got {names}")
        self.tables = {c.name: EmbeddingTable(c) for c in configs}
        self.keymaps = {c.name: KeyMap() for c in configs}

    def _table(self, name: str) -> EmbeddingTable:
        try:
            return self.tables[name]
        except KeyError:
            raise KeyError(f"no table {name!r}; tables: {sorted(self.tables)}") from None

    def dim(self, table: str) -> int:
        return self._table(table).dim

    def size(self, table: str) -> int:
        return len(self._table(table))

    def ids(self, table: str) -> list[str]:
        """Every id with a row (a read; in slot order)."""
        return self.keymaps[table].strings_of(self._table(table).keys().tolist())

    def _find(self, table: str, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Keys and known mask; ids with no row are validated (known ones were, on admission)."""
        try:
            keys, known = self.keymaps[table].find(ids)
        except TypeError:  # an unhashable id: let the validator say what is wrong
            check_ids(ids)
            raise
        if not known.all():
            check_ids([ids[i] for i in np.flatnonzero(~known).tolist()])
        return keys, known

    def pull(self, table: str, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        t = self._table(table)
        keys, known = self._find(table, ids)
        vecs, hit = t.pull(keys)
        hit &= known
        vecs[~hit] = 0.0
        return vecs, hit

    def admit(self, table: str, ids: Sequence[str], *, now: float) -> np.ndarray:
        t, keymap = self._table(table), self.keymaps[table]
        _, known = self._find(table, ids)
        if known.all():
            return np.ones(len(ids), dtype=bool)
        # sightings are counted under a provisional key (the string's hash); a collision
        # there only shares a counter, which the count-min filter tolerates anyway
        unknown = np.flatnonzero(~known)
        provisional = keymap.assign([ids[i] for i in unknown.tolist()])
        hit = known.copy()
        hit[unknown] = t.admit(provisional, now=now)
        # ids that were not admitted must not keep a key
        keymap.forget(np.unique(provisional[~hit[unknown]]).tolist())
        return hit

    def push(self, table: str, ids: Sequence[str], grads: np.ndarray, *, now: float) -> None:
        t = self._table(table)
        keys, known = self._find(table, ids)
        if not known.all():
            missing = [ids[i] for i in np.flatnonzero(~known)[:5]]
            raise KeyError(f"push to ids without a row (admit them first): {missing}")
        t.push(keys, grads, now=now)

    def put(
        self,
        table: str,
        ids: Sequence[str],
        rows: np.ndarray,
        *,
        now: float,
        updates: np.ndarray | None = None,
    ) -> None:
        """Set rows outright (bootstrap, content vectors): no admission, fresh optimizer state."""
        t = self._table(table)
        self._find(table, ids)  # validates ids that have no row yet
        if len(set(ids)) != len(ids):
            raise ValueError("put takes each id once")
        rows = np.asarray(rows, dtype=np.float32)
        if rows.shape != (len(ids), t.dim):
            raise ValueError(f"rows must have shape ({len(ids)}, {t.dim}), got {rows.shape}")
        t.put(self.keymaps[table].assign(ids), rows, now=now, updates=updates)

    def meta(self, table: str, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        t = self._table(table)
        keys, known = self._find(table, ids)
        updates, last = t.meta(keys)
        updates[~known], last[~known] = -1, np.nan
        return updates, last

    def sample(self, table: str, n: int, *, seed: int) -> list[str]:
        keys = self._table(table).sample(n, np.random.default_rng(seed))
        return self.keymaps[table].strings_of(keys.tolist())

    def expire(self, *, now: float) -> dict[str, list[str]]:
        """Evict idle rows of every table; the evicted ids per table (to publish)."""
        out: dict[str, list[str]] = {}
        for name, t in self.tables.items():
            gone = t.expire(now=now)
            if len(gone):
                out[name] = self.keymaps[name].forget(gone.tolist())
        return out

    def remove(self, table: str, ids: Sequence[str]) -> list[str]:
        """Delete rows by id; returns the ids that had one."""
        keys, known = self._find(table, ids)
        gone = self._table(table).remove(keys[known])
        return self.keymaps[table].forget(gone.tolist())

    def drain(self) -> list[TableDelta]:
        """Every table's changes since the last drain, ready to be checkpointed."""
        deltas = []
        for name, t in self.tables.items():
            changes = t.drain_changes()
            filter_counts = t.filter.to_bytes() if t.filter.enabled else None
            strings = self.keymaps[name].strings_of(changes.keys.tolist())
            deltas.append(TableDelta(name, changes, strings, t.high_water, filter_counts))
        return deltas

    def undrain(self, deltas: list[TableDelta]) -> None:
        """Put back what :meth:`drain` returned, after a checkpoint that failed to commit."""
        for delta in deltas:
            self._table(delta.name).undrain(delta.changes)

    def restore(self, delta: TableDelta) -> None:
        """Load a table's rows back from a checkpoint (into an empty table)."""
        t = self._table(delta.name)
        t.load_rows(delta.changes, delta.high_water)
        keymap = self.keymaps[delta.name]
        for key, value in zip(delta.changes.keys.tolist(), delta.strings, strict=True):
            keymap.restore(key, value)
        if delta.filter_counts is not None and t.filter.enabled:
            t.filter.load_bytes(delta.filter_counts)
