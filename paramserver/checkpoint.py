"""Checkpoint encoding: table changes <-> key/value writes. Pure; a store makes them durable.

Layout (one key per row, so a checkpoint writes only what changed)::

    r/<table>/<id, 8 bytes big-endian>  ->  slot i64 | updates u32 | last f64 | row f32[dim]
                                            | optimizer state f32[w] | string id (UTF-8)
    m/high/<table>                      ->  slots used so far (ASCII int)
    m/filter/<table>                    ->  admission-filter counters

The row, its optimizer state and its metadata share one value, so they can never
disagree; callers add their own entries (e.g. Kafka offsets) to the same
:class:`~paramserver.stores.WriteSet`, which a store commits atomically.

Examples
--------
>>> import numpy as np
>>> from paramserver.config import TableConfig
>>> from paramserver.ps import ParameterServer
>>> from paramserver.stores import WriteSet
>>> from paramserver.stores.memory import MemoryStore
>>> ps = ParameterServer([TableConfig("items", dim=4)])
>>> _ = ps.admit("items", ["a", "b"], now=1.0)
>>> store, writes = MemoryStore(), WriteSet()
>>> for delta in ps.drain():
...     encode_delta(delta, writes)
>>> store.commit(writes)
>>> again = ParameterServer([TableConfig("items", dim=4)])
>>> load_tables(again, store)
>>> bool(np.array_equal(again.pull("items", ["a", "b"])[0], ps.pull("items", ["a", "b"])[0]))
True
"""

from __future__ import annotations

import numpy as np

from paramserver.ps import ParameterServer, TableDelta
from paramserver.stores import RowStore, WriteSet
from paramserver.table import TableChanges

ROW = b"r/"
HIGH = b"m/high/"
FILTER = b"m/filter/"


def _row_dtype(dim: int, width: int) -> np.dtype:
    return np.dtype(
        [("slot", "<i8"), ("updates", "<u4"), ("last", "<f8"),
         ("row", "<f4", (dim,)), ("state", "<f4", (width,))]
    )  # fmt: skip


def row_prefix(table: str) -> bytes:
    return ROW + table.encode() + b"/"


def encode_delta(delta: TableDelta, writes: WriteSet) -> None:
    """Add one table's changes (rows written, rows deleted, high-water, filter) to ``writes``."""
    c = delta.changes
    prefix = row_prefix(delta.name)
    for key in c.deleted.tolist():
        writes.delete(prefix + int(key).to_bytes(8, "big"))
    dim, width = c.rows.shape[1], c.state.shape[1]
    fixed = np.empty(len(c), dtype=_row_dtype(dim, width))
    fixed["slot"], fixed["updates"], fixed["last"] = c.slots, c.updates, c.last_update
    fixed["row"], fixed["state"] = c.rows, c.state
    # numpy hands out each row's bytes (a void view keeps trailing zero bytes, unlike "S")
    values = fixed.view(np.dtype(("V", fixed.dtype.itemsize))).tolist()
    keys = c.keys.astype(">u8").view("V8").tolist()
    writes.puts.extend(
        (prefix + key, value + text.encode())
        for key, value, text in zip(keys, values, delta.strings, strict=True)
    )
    writes.put(HIGH + delta.name.encode(), str(delta.high_water).encode())
    if delta.filter_counts is not None:
        writes.put(FILTER + delta.name.encode(), delta.filter_counts)


def decode_table(ps: ParameterServer, name: str, store: RowStore) -> TableDelta:
    """Read one table's rows back from ``store``."""
    table = ps.tables[name]
    width = table.optimizer.state_width(table.dim)
    dtype = _row_dtype(table.dim, width)
    size = dtype.itemsize
    keys: list[int] = []
    fixed: list[bytes] = []
    strings: list[str] = []
    prefix = row_prefix(name)
    for key, value in store.scan(prefix):
        keys.append(int.from_bytes(key[len(prefix) :], "big"))
        fixed.append(value[:size])
        strings.append(value[size:].decode())
    records = np.frombuffer(b"".join(fixed), dtype=dtype)
    high = store.get(HIGH + name.encode())
    changes = TableChanges(
        keys=np.array(keys, dtype=np.uint64),
        slots=records["slot"].astype(np.int64),
        rows=records["row"].astype(np.float32).reshape(len(keys), table.dim),
        state=records["state"].astype(np.float32).reshape(len(keys), width),
        updates=records["updates"].astype(np.uint32),
        last_update=records["last"].astype(np.float64),
    )
    return TableDelta(
        name, changes, strings, int(high) if high else len(keys), store.get(FILTER + name.encode())
    )


def load_tables(ps: ParameterServer, store: RowStore) -> None:
    """Restore every table of ``ps`` from ``store``."""
    for name in ps.tables:
        ps.restore(decode_table(ps, name, store))


def drain_into(ps: ParameterServer, writes: WriteSet) -> int:
    """Add every table's changes since the last drain to ``writes``; rows written."""
    rows = 0
    for delta in ps.drain():
        encode_delta(delta, writes)
        rows += len(delta.changes)
    return rows


def checkpoint(ps: ParameterServer, store: RowStore) -> int:
    """Write every table's changes in one atomic commit; rows written."""
    writes = WriteSet()
    rows = drain_into(ps, writes)
    store.commit(writes)
    return rows
