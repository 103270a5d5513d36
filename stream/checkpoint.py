"""A worker checkpoint: every bit of state that shapes the updates, plus the offsets it reflects.

One :class:`~paramserver.stores.WriteSet` holds the changed table rows (with
optimizer state and metadata), the admission filters, the item-frequency
estimate, the de-duplication window, the trainer's RNG and expiry schedule, and
the ``interactions`` offsets of the first record not yet reflected. The store
commits it atomically, so after a crash the worker restarts from a state and an
offset that belong together: nothing lost, nothing applied twice.

Examples
--------
>>> from paramserver.stores.memory import MemoryStore
>>> from stream.core import RawRecord, WorkerCore
>>> from stream.training import OnlineTrainer, TrainConfig
>>> cfg = TrainConfig(dim=4, negatives=2)
>>> core = WorkerCore(OnlineTrainer.create(cfg))
>>> ev = b'{"event_id":"e1","user_id":"u1","item_id":"i1","type":"click","ts":5}'
>>> _ = core.process([RawRecord(ev, 1000, partition=0, offset=41)])
>>> store = MemoryStore()
>>> store.commit(checkpoint_writes(core, "interactions"))
>>> again = WorkerCore(OnlineTrainer.create(cfg))
>>> restore(again, store, "interactions")
{0: 42}
>>> again.trainer.ps.meta("items", ["i1"])[0].tolist(), again.dedup.check_and_add("e1")
([1], True)
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from paramserver.checkpoint import encode_delta, load_tables
from paramserver.ps import ParameterServer, TableDelta
from paramserver.stores import RowStore, WriteSet
from stream.core import WorkerCore

OFFSETS = b"m/offsets"
TRAINER = b"m/trainer"
FREQUENCY = b"m/frequency"
FREQ_ROW = b"f/"
SEEN_ROW = b"e/"


class CheckpointError(RuntimeError):
    pass


def _local_ps(core: WorkerCore) -> ParameterServer:
    ps = getattr(core.trainer.ps, "inner", core.trainer.ps)  # under a metering wrapper
    if not isinstance(ps, ParameterServer):
        raise CheckpointError(
            "the worker's checkpoints need its in-process parameter server (more workers: "
            "--scale-out, docs/scaling.md)"
        )
    return ps


def checkpoint_writes(core: WorkerCore, topic: str) -> WriteSet:
    """Everything changed since the last checkpoint, and the offsets it reflects (drained:
    a caller that fails to commit these must use :func:`commit_checkpoint` instead)."""
    return _encode(core, topic, _Drained.take(core))


def commit_checkpoint(core: WorkerCore, store: RowStore, topic: str) -> WriteSet:
    """Drain, encode and commit one checkpoint; if any of it fails, the drained changes are
    put back, so the next checkpoint writes them (nothing is lost by a failed try), and
    the error is raised. Call with the core quiet (the worker's lock held)."""
    drained = _Drained.take(core)
    try:
        writes = _encode(core, topic, drained)
        store.commit(writes)
    except BaseException:
        drained.put_back(core)
        raise
    return writes


@dataclass
class _Drained:
    """What one checkpoint took from the tables, the frequency estimate and the window."""

    tables: list[TableDelta]
    counts: dict[str, float]
    gone: list[str]
    total_scale: tuple[float, float]
    added: list[tuple[str, int]]
    dropped: list[str]

    @classmethod
    def take(cls, core: WorkerCore) -> _Drained:
        tables = _local_ps(core).drain()
        counts, gone, total_scale = core.trainer.frequency.drain()
        added, dropped = core.dedup.drain()
        return cls(tables, counts, gone, total_scale, added, dropped)

    def put_back(self, core: WorkerCore) -> None:
        _local_ps(core).undrain(self.tables)
        core.trainer.frequency.undrain(self.counts, self.gone)
        core.dedup.undrain(self.added, self.dropped)


def _encode(core: WorkerCore, topic: str, drained: _Drained) -> WriteSet:
    writes = WriteSet()
    for delta in drained.tables:
        encode_delta(delta, writes)
    for item in drained.gone:
        writes.delete(FREQ_ROW + item.encode())
    for item, count in drained.counts.items():
        writes.put(FREQ_ROW + item.encode(), struct.pack("<d", count))
    total, scale = drained.total_scale
    writes.put(FREQUENCY, json.dumps({"total": total, "scale": scale}).encode())
    for event_id in drained.dropped:
        writes.delete(SEEN_ROW + event_id.encode())
    for event_id, seq in drained.added:
        writes.put(SEEN_ROW + event_id.encode(), seq.to_bytes(8, "big"))
    writes.put(TRAINER, json.dumps(core.trainer.state()).encode())
    positions = sorted(core.checkpoint_positions().items())
    offsets = {str(p): o for p, (o, _) in positions}
    # events of the record at that offset already in the tables (a batch record taken in part)
    within = {str(p): i for p, (_, i) in positions if i}
    writes.put(
        OFFSETS, json.dumps({"topic": topic, "partitions": offsets, "within": within}).encode()
    )
    return writes


def restore(core: WorkerCore, store: RowStore, topic: str) -> dict[int, int] | None:
    """Load a checkpoint into a fresh core; the offsets to resume from (None: no checkpoint)."""
    raw = store.get(OFFSETS)
    if raw is None:
        return None
    saved = json.loads(raw)
    if saved["topic"] != topic:
        raise CheckpointError(
            f"the checkpoint is of topic {saved['topic']!r}, not {topic!r}: "
            "point --state-dir elsewhere"
        )
    load_tables(_local_ps(core), store)
    freq = json.loads(store.get(FREQUENCY) or b'{"total": 0.0, "scale": 1.0}')
    counts = {
        key[len(FREQ_ROW) :].decode(): struct.unpack("<d", value)[0]
        for key, value in store.scan(FREQ_ROW)
    }
    core.trainer.frequency.restore(counts, freq["total"], freq["scale"])
    core.dedup.restore(
        (key[len(SEEN_ROW) :].decode(), int.from_bytes(value, "big"))
        for key, value in store.scan(SEEN_ROW)
    )
    core.trainer.load_state(json.loads(store.get(TRAINER) or b"{}"))
    offsets = {int(p): int(o) for p, o in saved["partitions"].items()}
    core.resume(offsets, {int(p): int(i) for p, i in saved.get("within", {}).items()})
    return offsets
