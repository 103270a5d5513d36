"""Training split in two stages for more than one worker: the pure parts (no Kafka).

With ``streambed worker --scale-out`` each worker process runs both stages, and
adding a worker is starting another process with the same settings (docs/scaling.md):

* the **user stage** owns partitions of ``interactions`` (events keyed by user). It trains
  its users' rows as the single worker does, against a *view* of the item rows (the
  compacted ``item-rows`` topic, tailed), and instead of changing item rows it emits each
  step's item-row gradients as :class:`Gradient` records keyed by item;
* the **item stage** owns partitions of ``gradients`` (and of ``items``, co-partitioned),
  applies them to its item rows (rowwise Adagrad, one update per item per applied batch),
  and publishes item vectors and the rows the views read.

Each stage's rows live in a compacted changelog topic (``user-rows``, ``item-rows``) as
:func:`row_records`; the I/O loop writes outputs, changelog and input offsets in one Kafka
transaction, so a kill -9 anywhere neither loses nor doubles an update.

Examples
--------
>>> g = Gradient("i1", np.ones(2, np.float32), events=3, event_ms=7, now=1.5)
>>> [back] = unpack_gradients(pack_gradients(coalesce([g, g])))
>>> back.item, back.grad.tolist(), back.events, back.event_ms, back.now
('i1', [2.0, 2.0], 6, 7, 1.5)
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from paramserver.config import TableConfig
from paramserver.ps import ParameterServer, ParamServerAPI, TableDelta
from paramserver.table import TableChanges
from stream.batching import Batcher
from stream.bootstrap import Bootstrapped, load_into
from stream.core import BatchOutput, RawRecord, WorkerCore
from stream.schemas import LETTER_PAYLOAD_BYTES, Interaction
from stream.training import CONTENT, ITEMS, TASTE, USERS, OnlineTrainer, TrainConfig
from stream.vectors import VectorRecord

_ROW = struct.Struct("<IdQ")  # updates, last update, events; then row and optimizer state


@dataclass(frozen=True, slots=True)
class Gradient:
    """One step's gradient for one item row, from a user stage to the item's owner.

    ``events``: the step's events that took this item as their positive (0 for a sampled
    negative); ``event_ms``: the Kafka timestamp of the earliest of them (freshness);
    ``now``: the step's event time (the row's last update).
    """

    item: str
    grad: np.ndarray
    events: int
    event_ms: int
    now: float



_PACK = struct.Struct("<III")  # gradients, dim, bytes of the ids' JSON


def _packed_dtype(dim: int) -> np.dtype:
    return np.dtype([("events", "<u4"), ("event_ms", "<i8"), ("now", "<f8"),
                     ("grad", "<f4", (dim,))])  # fmt: skip


def coalesce(gradients: Iterable[Gradient]) -> list[Gradient]:
    """One gradient per item: the sum (the owner sums an item's gradients into one update
    anyway), its events summed, the earliest ``event_ms``, the latest ``now``."""
    out: dict[str, Gradient] = {}
    for g in gradients:
        held = out.get(g.item)
        if held is None:
            out[g.item] = g
            continue
        first = min(held.event_ms, g.event_ms) if held.events and g.events else (
            held.event_ms if held.events else g.event_ms)  # fmt: skip
        out[g.item] = Gradient(g.item, held.grad + g.grad, held.events + g.events, first,
                               max(held.now, g.now))  # fmt: skip
    return list(out.values())


def pack_gradients(gradients: Sequence[Gradient]) -> bytes:
    """Many gradients as one record (the ``gradients`` topic is internal, not compacted:
    one record per item partition per commit instead of one per item)."""
    dim = len(gradients[0].grad) if gradients else 0
    ids = json.dumps([g.item for g in gradients]).encode()
    fixed = np.empty(len(gradients), dtype=_packed_dtype(dim))
    fixed["events"] = [g.events for g in gradients]
    fixed["event_ms"] = [g.event_ms for g in gradients]
    fixed["now"] = [g.now for g in gradients]
    if gradients:
        fixed["grad"] = np.stack([g.grad for g in gradients])
    return _PACK.pack(len(gradients), dim, len(ids)) + ids + fixed.tobytes()


def unpack_gradients(value: bytes) -> list[Gradient]:
    """Raises ValueError on a record that is not a packed gradient record."""
    try:
        n, dim, id_bytes = _PACK.unpack_from(value)
        ids = json.loads(value[_PACK.size : _PACK.size + id_bytes])
        fixed = np.frombuffer(value, dtype=_packed_dtype(dim), count=n,
                              offset=_PACK.size + id_bytes)  # fmt: skip
    except (struct.error, ValueError, TypeError) as err:
        raise ValueError(f"not a packed gradient record: {err}") from None
    if not isinstance(ids, list) or len(ids) != n or not all(isinstance(i, str) for i in ids):
        raise ValueError("not a packed gradient record: its ids do not match its gradients")
    grads = fixed["grad"].astype(np.float32)
    return [Gradient(i, grads[k], int(e), int(ms), float(t)) for k, (i, e, ms, t) in enumerate(
        zip(ids, fixed["events"].tolist(), fixed["event_ms"].tolist(), fixed["now"].tolist(),
            strict=True))]  # fmt: skip


def row_key(table: str, row_id: str) -> bytes:
    return f"{table}/{row_id}".encode()


def split_key(key: bytes) -> tuple[str, str]:
    """``(table, id)`` of a changelog key."""
    table, _, row_id = key.decode().partition("/")
    return table, row_id


def by_table(
    records: Iterable[tuple[bytes, bytes | None]],
    into: dict[str, dict[str, bytes | None]] | None = None,
) -> dict[str, dict[str, bytes | None]]:
    """Changelog records (key, value) by table, then id, the last value of an id winning
    (None: a tombstone); added to ``into`` when given."""
    tables: dict[str, dict[str, bytes | None]] = {} if into is None else into
    for key, value in records:
        table, row_id = split_key(key)
        tables.setdefault(table, {})[row_id] = value
    return tables


def _row_dtype(dim: int, width: int) -> np.dtype:
    """A changelog value: ``_ROW``'s fields, then the row and its optimizer state."""
    return np.dtype([("updates", "<u4"), ("last", "<f8"), ("events", "<u8"),
                     ("row", "<f4", (dim,)), ("state", "<f4", (width,))])  # fmt: skip


def row_records(
    delta: TableDelta, events: Mapping[str, int]
) -> list[tuple[bytes, bytes]]:
    """A table's changed rows as changelog records: key ``table/id``, value the update count,
    last update, events learnt, then the row and its optimizer state (float32)."""
    c = delta.changes
    if not len(c):
        return []
    fixed = np.empty(len(c), dtype=_row_dtype(c.rows.shape[1], c.state.shape[1]))
    fixed["updates"], fixed["last"] = c.updates, c.last_update
    fixed["events"] = [int(events.get(row_id, 0)) for row_id in delta.strings]
    fixed["row"], fixed["state"] = c.rows, c.state
    # each record's bytes, as paramserver.checkpoint encodes its rows (a void view keeps
    # trailing zero bytes)
    values = fixed.view(np.dtype(("V", fixed.dtype.itemsize))).tolist()
    return [(row_key(delta.name, row_id), value)
            for row_id, value in zip(delta.strings, values, strict=True)]  # fmt: skip


@dataclass(frozen=True)
class Rows:
    """Changelog values of one table decoded: ids, rows, optimizer state, counts."""

    ids: list[str]
    rows: np.ndarray
    state: np.ndarray
    updates: np.ndarray
    last: np.ndarray
    events: np.ndarray

    @classmethod
    def decode(cls, entries: Mapping[str, bytes], dim: int) -> Rows:
        ids, values = list(entries), list(entries.values())
        least = _ROW.size + 4 * dim
        for row_id, value in zip(ids, values, strict=True):
            if len(value) < least:
                raise ValueError(f"row {row_id!r} is shorter than dim {dim}")
            if (len(value) - _ROW.size) % 4:
                raise ValueError(f"row {row_id!r} is not whole float32 values after its head")
        sizes = {len(v) for v in values}
        if len(sizes) > 1:
            raise ValueError("rows of one table with different optimizer state widths")
        if not values:
            zeros = np.zeros(0)
            return cls([], np.zeros((0, dim), np.float32), np.zeros((0, 0), np.float32),
                       zeros.astype(np.uint32), zeros, zeros.astype(np.int64))  # fmt: skip
        width = (sizes.pop() - least) // 4
        records = np.frombuffer(b"".join(values), dtype=_row_dtype(dim, width))
        return cls(ids, records["row"].astype(np.float32).reshape(len(ids), dim),
                   records["state"].astype(np.float32).reshape(len(ids), width),
                   records["updates"].astype(np.uint32), records["last"].astype(np.float64),
                   records["events"].astype(np.int64))  # fmt: skip

    def load(self, ps: ParameterServer, table: str) -> None:
        """Into an empty table of ``ps``, optimizer state and counts included."""
        n = len(self.ids)
        width = ps.tables[table].optimizer.state_width(ps.dim(table))
        state = self.state if n else np.zeros((0, width), np.float32)
        keys = ps.keymaps[table].assign(self.ids)
        changes = TableChanges(keys, np.arange(n, dtype=np.int64), self.rows, state,
                               self.updates, self.last)  # fmt: skip
        ps.tables[table].load_rows(changes, n)


class SplitPS:
    """The user stage's parameter server: users (and taste) are its own rows; items and
    content are a view of the item stages' rows, and item pushes are collected as gradients.

    An item the view does not have yet gets a provisional row, the same initial row its
    owner will give it (rows start from a hash of the id), and its gradients go out like any
    other; the owner admits it or not.
    """

    def __init__(self, config: TrainConfig, view: ParameterServer) -> None:
        local = [t for t in config.tables() if t.name in (USERS, TASTE)]
        self.local = ParameterServer(local)
        self.view = view
        self._grads: dict[str, np.ndarray] = {}
        self._now = 0.0

    def _ps(self, table: str) -> ParameterServer:
        return self.view if table in (ITEMS, CONTENT) else self.local

    def dim(self, table: str) -> int:
        return self._ps(table).dim(table)

    def size(self, table: str) -> int:
        return self._ps(table).size(table)

    def pull(self, table: str, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self._ps(table).pull(table, ids)

    def admit(self, table: str, ids: Sequence[str], *, now: float) -> np.ndarray:
        return self._ps(table).admit(table, ids, now=now)

    def push(self, table: str, ids: Sequence[str], grads: np.ndarray, *, now: float) -> None:
        if table != ITEMS:
            self.local.push(table, ids, grads, now=now)
            return
        self.view.pull(table, ids)  # validates the ids, as a push would
        grads = np.asarray(grads, np.float32)
        for row_id, grad in zip(ids, grads, strict=True):
            held = self._grads.get(row_id)
            self._grads[row_id] = grad.copy() if held is None else held + grad
        self._now = max(self._now, now)

    def meta(self, table: str, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self._ps(table).meta(table, ids)

    def put(
        self,
        table: str,
        ids: Sequence[str],
        rows: np.ndarray,
        *,
        now: float,
        updates: np.ndarray | None = None,
    ) -> None:
        self._ps(table).put(table, ids, rows, now=now, updates=updates)

    def sample(self, table: str, n: int, *, seed: int) -> list[str]:
        return self._ps(table).sample(table, n, seed=seed)

    def expire(self, *, now: float) -> dict[str, list[str]]:
        return self.local.expire(now=now)  # item rows expire with their owner

    def take_gradients(
        self, positives: Mapping[str, int], first_ms: Mapping[str, int]
    ) -> list[Gradient]:
        """The item gradients pushed since the last take, one per item (summed)."""
        out = [
            Gradient(item, grad, positives.get(item, 0), first_ms.get(item, 0), self._now)
            for item, grad in self._grads.items()
        ]
        self._grads = {}
        return out


def view_tables(config: TrainConfig) -> list[TableConfig]:
    """The tables of a user stage's item view: every row it is sent is taken, none expire."""
    return [replace(t, min_count=1, ttl_seconds=None)
            for t in config.tables() if t.name in (ITEMS, CONTENT)]  # fmt: skip


def follow(view: ParameterServer, records: Iterable[tuple[bytes, bytes | None]]) -> None:
    """Apply changelog records of the item stages to a user stage's view of their rows."""
    for table, entries in by_table(records).items():
        upsert_view(view, table, entries)


def positives(
    events: Iterable[Interaction], times: Iterable[int], weight: Callable[[Interaction], float]
) -> tuple[Counter[str], dict[str, int]]:
    """Per item, how many of ``events`` took it as their positive (``weight`` > 0), and the
    earliest of their ``times``."""
    counts: Counter[str] = Counter()
    first: dict[str, int] = {}
    for event, ms in zip(events, times, strict=True):
        if weight(event) > 0:
            counts[event.item_id] += 1
            first[event.item_id] = min(ms, first.get(event.item_id, ms))
    return counts, first


def upsert_view(view: ParameterServer, table: str, entries: Mapping[str, bytes | None]) -> None:
    """Apply changelog records (None: a tombstone) to a view table, last value wins."""
    gone = [i for i, v in entries.items() if v is None]
    if gone:
        view.remove(table, gone)
    live = {i: v for i, v in entries.items() if v is not None}
    if not live:
        return
    rows = Rows.decode(live, view.dim(table))
    view.put(table, rows.ids, rows.rows, now=float(rows.last.max()), updates=rows.updates)


def boot_part(boot: Bootstrapped, users: Callable[[str], bool],
              items: Callable[[str], bool]) -> Bootstrapped:  # fmt: skip
    """The bootstrap's rows and counts of the users and items kept (its towers shared)."""
    u = [n for n, x in enumerate(boot.users) if users(x)]
    i = [n for n, x in enumerate(boot.items) if items(x)]
    return replace(
        boot, users=[boot.users[n] for n in u], user_rows=boot.user_rows[u],
        user_counts=boot.user_counts[u], items=[boot.items[n] for n in i],
        item_rows=boot.item_rows[i], item_counts=boot.item_counts[i],
    )  # fmt: skip


@dataclass
class StepResult:
    """What one user-stage step leaves to write: the core's output and the gradients."""

    out: BatchOutput
    gradients: list[Gradient]


class UserStage:
    """A :class:`WorkerCore` over a :class:`SplitPS`, counting the events each user learnt."""

    def __init__(
        self,
        config: TrainConfig,
        view: ParameterServer,
        batcher: Batcher,
        letter_bytes: int = LETTER_PAYLOAD_BYTES,
        meter: Callable[[ParamServerAPI], ParamServerAPI] | None = None,
    ) -> None:
        self.ps = SplitPS(config, view)
        api: ParamServerAPI = self.ps if meter is None else meter(self.ps)  # e.g. MeteredPS
        self.core = WorkerCore(OnlineTrainer.create(config, api), batcher=batcher,
                               letter_bytes=letter_bytes, defer_items=True)  # fmt: skip
        self.events: Counter[str] = Counter()  # events learnt per user (in the changelog)

    def process(self, batch: Sequence[RawRecord]) -> StepResult:
        out = self.core.process(batch)
        self.events.update(e.user_id for e in out.trained)
        taken, first_ms = positives(out.trained, out.trained_ms, self.core.trainer.weight)
        out.item_marks = {}  # item vectors are the item stage's to publish
        return StepResult(out, self.ps.take_gradients(taken, first_ms))

    def changelog(self, evicted: Iterable[str]) -> list[tuple[bytes, bytes | None]]:
        """Changed user (and taste) rows since the last call; tombstones for ``evicted``."""
        out: list[tuple[bytes, bytes | None]] = []
        for delta in self.ps.local.drain():
            out.extend(row_records(delta, self.events if delta.name == USERS else {}))
        for user in evicted:
            self.events.pop(user, None)
            out.extend((row_key(t, user), None) for t in self.ps.local.tables)
        return out

    def seed(self, part: Bootstrapped) -> BatchOutput:
        """Start from a bootstrap: the rows of ``part`` 's users; their vectors to publish
        (the rows reach the changelog with the first commit)."""
        load_into(self.core.trainer, replace(part, items=[], item_rows=part.item_rows[:0],
                                             item_counts=part.item_counts[:0]))  # fmt: skip
        return self.core.vectors([], part.users)

    def restore(self, tables: Mapping[str, Mapping[str, bytes]]) -> None:
        """Load changelog values (by table, then id) into this fresh stage."""
        for table, entries in tables.items():
            if table not in self.ps.local.tables:
                raise ValueError(f"a user-rows record of table {table!r}")
            rows = Rows.decode(entries, self.ps.local.dim(table))
            rows.load(self.ps.local, table)
            if table == USERS:
                self.events.update(dict(zip(rows.ids, rows.events.tolist(), strict=True)))
        self.ps.local.drain()  # what was loaded is in the changelog already


@dataclass
class ItemStep:
    items: list[VectorRecord]
    evicted: list[str]
    unadmitted: int


class ItemStage:
    """The item rows of some partitions: applies gradients, takes content, composes vectors."""

    def __init__(self, config: TrainConfig, letter_bytes: int = LETTER_PAYLOAD_BYTES) -> None:
        self.core = WorkerCore(OnlineTrainer.create(config), letter_bytes=letter_bytes)
        self.ps: ParameterServer = self.core.trainer.ps  # type: ignore[assignment]
        # positive events counted per item (a bootstrap's history, then those learnt): the
        # frequency estimate's counts, carried in the changelog
        self.events: Counter[str] = Counter()

    def apply(self, gradients: Sequence[Gradient]) -> ItemStep:
        """Apply gradients (those of one item summed into one update)."""
        if not gradients:
            return ItemStep([], [], 0)
        trainer = self.core.trainer
        now = max(g.now for g in gradients)
        ids = [g.item for g in gradients]
        admitted = self.ps.admit(ITEMS, ids, now=now)
        kept = [g for g, ok in zip(gradients, admitted.tolist(), strict=True) if ok]
        if kept:
            grads = np.stack([g.grad for g in kept])
            self.ps.push(ITEMS, [g.item for g in kept], grads, now=now)
        positives: Counter[str] = Counter()
        first_ms: dict[str, int] = {}
        for g in kept:
            if g.events:
                positives[g.item] += g.events
                first_ms[g.item] = min(g.event_ms, first_ms.get(g.item, g.event_ms))
        self.events.update(positives)
        trainer.frequency.add(positives)
        evicted = trainer.expire_due(now).get(ITEMS, [])
        for item in evicted:
            self.events.pop(item, None)
        changed = [i for i in dict.fromkeys(g.item for g in kept) if i not in set(evicted)]
        items = self.core.item_records({i: first_ms.get(i, 0) for i in changed})
        return ItemStep(items, evicted, len(gradients) - len(kept))

    def changelog(self, evicted: Iterable[str]) -> list[tuple[bytes, bytes | None]]:
        out: list[tuple[bytes, bytes | None]] = []
        for delta in self.ps.drain():
            if delta.name in (ITEMS, CONTENT):
                out.extend(row_records(delta, self.events if delta.name == ITEMS else {}))
        out.extend((row_key(ITEMS, i), None) for i in evicted)
        return out

    def seed(self, part: Bootstrapped) -> BatchOutput:
        """Start from a bootstrap: its towers, the rows and counts of ``part`` 's items;
        their vectors to publish (the rows reach the changelog with the first commit)."""
        load_into(self.core.trainer, replace(part, users=[], user_rows=part.user_rows[:0],
                                             user_counts=part.user_counts[:0]))  # fmt: skip
        counts = np.rint(part.item_counts).astype(np.int64).tolist()  # history counts: whole
        self.events.update(dict(zip(part.items, counts, strict=True)))
        return self.core.vectors(part.items, [])

    def restore(self, tables: Mapping[str, Mapping[str, bytes]]) -> None:
        for table, entries in tables.items():
            if table not in (ITEMS, CONTENT):
                raise ValueError(f"an item-rows record of table {table!r}")
            rows = Rows.decode(entries, self.ps.dim(table))
            rows.load(self.ps, table)
            if table == ITEMS:
                counts = dict(zip(rows.ids, rows.events.tolist(), strict=True))
                self.events.update(counts)
                self.core.trainer.frequency.add({k: v for k, v in counts.items() if v})
        self.ps.drain()
