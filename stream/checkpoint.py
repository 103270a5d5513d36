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

from paramserver.checkpoint import drain_into, load_tables
from paramserver.ps import ParameterServer
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
            "exactly-once checkpoints need the in-process parameter server; remote shards "
            "checkpoint themselves (see README)"
        )
    return ps


def checkpoint_writes(core: WorkerCore, topic: str) -> WriteSet:
    """Everything changed since the last checkpoint, and the offsets it reflects."""
    writes = WriteSet()
    drain_into(_local_ps(core), writes)
    counts, gone, (total, scale) = core.trainer.frequency.drain()
    for item in gone:
        writes.delete(FREQ_ROW + item.encode())
    for item, count in counts.items():
        writes.put(FREQ_ROW + item.encode(), struct.pack("<d", count))
    writes.put(FREQUENCY, json.dumps({"total": total, "scale": scale}).encode())
    added, dropped = core.dedup.drain()
    for event_id in dropped:
        writes.delete(SEEN_ROW + event_id.encode())
    for event_id, seq in added:
        writes.put(SEEN_ROW + event_id.encode(), seq.to_bytes(8, "big"))
    writes.put(TRAINER, json.dumps(core.trainer.state()).encode())
    offsets = {str(p): o for p, o in sorted(core.checkpoint_offsets().items())}
    writes.put(OFFSETS, json.dumps({"topic": topic, "partitions": offsets}).encode())
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
    core.resume(offsets)
    return offsets
