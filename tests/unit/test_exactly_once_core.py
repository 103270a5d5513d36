"""Exactly once, as pure logic: crash anywhere, restore the checkpoint, replay, same tables.

The broker test kills a real worker; this one checks the same property over many crash
points in milliseconds, with the worker's own pieces (batcher, core, checkpoint codec) and
an in-memory store standing in for RocksDB.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from paramserver.stores.memory import MemoryStore
from services.datagen import GeneratorConfig, InteractionGenerator
from stream.batching import Batcher
from stream.checkpoint import CheckpointError, checkpoint_writes, restore
from stream.core import RawRecord, WorkerCore
from stream.schemas import Interaction
from stream.training import ITEMS, USERS, OnlineTrainer, TrainConfig

CFG = TrainConfig(dim=8, negatives=8, min_count=2, ttl_seconds=120.0, sweep_seconds=30.0)
TOPIC = "interactions"


def records() -> list[RawRecord]:
    gen = InteractionGenerator(GeneratorConfig(users=40, items=150, seed=9))
    out, clock = [], 1_000_000
    rng = random.Random(3)
    for event in (r for r in gen.replay(2500) if isinstance(r, Interaction)):
        clock += rng.choice((1, 2, 5, 80))  # produce-time gaps: some close a window
        payload = event.to_json() if rng.random() > 0.01 else b"{broken"
        out.append(RawRecord(payload, clock, partition=0, offset=len(out)))
        if rng.random() < 0.02:  # a duplicated event_id
            out.append(RawRecord(event.to_json(), clock, partition=0, offset=len(out)))
    return out


def packed(recs: list[RawRecord], seed: int = 5) -> list[RawRecord]:
    """The same events as batch records of 1..40 events each (a producer that packs them),
    appended 1..30 ms apart so that micro-batches fill by size and often end inside one: a
    broken event becomes a non-object element, that element's own dead letter."""
    rng, out, n = random.Random(seed), [], 0
    while n < len(recs):
        group = recs[n : n + rng.randint(1, 40)]
        n += len(group)
        values = [r.value if r.value != b"{broken" else b'"broken"' for r in group]
        body = b"[" + b",".join(v for v in values if v is not None) + b"]"
        clock = (out[-1].timestamp_ms if out else 1_000_000) + rng.randint(1, 30)
        out.append(RawRecord(body, clock, partition=0, offset=len(out)))
    return out


def fresh_core() -> WorkerCore:
    return WorkerCore(OnlineTrainer.create(CFG), batcher=Batcher(size=64, window_ms=50))


def feed(core: WorkerCore, recs: list[RawRecord], chunk: int) -> None:
    """Deliver records in fetches of ``chunk`` (delivery grouping must not matter)."""
    for start in range(0, len(recs), chunk):
        batches, _ = core.accept(recs[start : start + chunk])
        for batch in batches:
            core.process(batch)


def finish(core: WorkerCore) -> None:
    for batch in core.batcher.flush_idle(now_ms=2**62, grace_ms=0):
        core.process(batch)


def snapshot(core: WorkerCore) -> dict[str, object]:
    ps = core.trainer.ps
    out: dict[str, object] = {}
    for table in (USERS, ITEMS):
        ids = sorted(ps.ids(table))  # type: ignore[attr-defined]
        out[table] = (ids, ps.pull(table, ids)[0].tobytes(), ps.meta(table, ids)[0].tolist())
        t = ps.tables[table]  # type: ignore[attr-defined]
        # live rows' optimizer state (a freed slot keeps stale state until reused, which resets it)
        out[f"{table}-state"] = t._state[: t.high_water][t._live[: t.high_water]].tobytes()
    out["rng"] = core.trainer.state()
    return out


@pytest.mark.parametrize("pack", [False, True], ids=["one-event-records", "batch-records"])
def test_crashes_at_random_points_end_in_the_tables_of_an_uninterrupted_run(pack: bool) -> None:
    """With batch records a checkpoint often falls inside one (micro-batches cut events, not
    records): Kafka's commit stays at that record, and the restored core skips the events
    of it already in the tables."""
    recs = packed(records()) if pack else records()
    steady = fresh_core()
    feed(steady, recs, chunk=97)
    finish(steady)
    expected = snapshot(steady)
    assert len(expected[USERS][0]) >= 3 and len(expected[ITEMS][0]) >= 10  # type: ignore[index]

    rng = random.Random(11)
    store = MemoryStore()
    core = fresh_core()
    position = 0  # where the (simulated) consumer resumes: Kafka's committed offset
    inside_a_record = [False]
    crashes = 0
    for _ in range(10_000):  # bounded; each round ends in a crash or at the end of the stream
        chunk = rng.choice((1, 13, 64, 200))
        upto = min(len(recs), position + rng.randint(len(recs) // 50, len(recs) // 4))
        for start in range(position, upto, chunk):
            batches, _ = core.accept(recs[start : min(start + chunk, upto)])
            for batch in batches:
                core.process(batch)
            if rng.random() < 0.3:  # a checkpoint now and then
                inside_a_record[0] |= core.checkpoint_positions()[0][1] > 0
                store.commit(checkpoint_writes(core, TOPIC))
                committed = core.checkpoint_offsets()[0]
                # Kafka's commit trails the checkpoint (acks follow it), by some records
                position = rng.randint(max(0, committed - 100), committed)
        if upto < len(recs):  # crash: everything since the last checkpoint is lost
            crashes += 1
            core = fresh_core()
            restore(core, store, TOPIC)
        else:
            break
    else:
        pytest.fail("never reached the end of the stream")
    finish(core)
    assert crashes > 3
    assert snapshot(core) == expected
    if pack:  # some checkpoint fell inside a batch record
        assert inside_a_record[0]


def test_delivery_grouping_does_not_change_the_tables() -> None:
    recs = records()[:1500]
    assert tables_after(recs, chunk=1) == tables_after(recs, chunk=500)


def tables_after(recs: list[RawRecord], chunk: int) -> dict[str, object]:
    """The tables a fresh core ends with, fed ``recs`` in fetches of ``chunk``."""
    core = fresh_core()
    feed(core, recs, chunk)
    finish(core)
    return snapshot(core)


def test_restore_refuses_another_topic_and_a_remote_ps() -> None:
    core = fresh_core()
    feed(core, records()[:200], chunk=50)
    store = MemoryStore()
    store.commit(checkpoint_writes(core, TOPIC))
    with pytest.raises(CheckpointError, match="other-topic|not"):
        restore(fresh_core(), store, "other-topic")
    assert restore(fresh_core(), MemoryStore(), TOPIC) is None

    class Remote:
        def dim(self, table: str) -> int:
            return 8

    remote_core = WorkerCore(OnlineTrainer(Remote(), core.trainer.towers, CFG))  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="in-process"):
        checkpoint_writes(remote_core, TOPIC)


def test_records_below_the_checkpoint_are_skipped_not_applied() -> None:
    recs = records()[:300]
    core = fresh_core()
    feed(core, recs[:200], chunk=50)
    store = MemoryStore()
    store.commit(checkpoint_writes(core, TOPIC))
    resumed = fresh_core()
    offsets = restore(resumed, store, TOPIC)
    assert offsets is not None
    before = snapshot(resumed)
    batches, skipped = resumed.accept(recs[: offsets[0]])  # a replay of what is in the tables
    assert batches == [] and skipped == offsets[0]
    assert snapshot(resumed) == before
    assert np.isfinite(offsets[0])


def test_a_batch_record_is_its_events_one_by_one() -> None:
    """Same tables as the events sent one per record (stamped as their batch record was);
    each bad element its own letter."""
    recs = records()[:400]
    good = packed([r for r in recs if r.value != b"{broken"])
    one_by_one = [
        RawRecord(json.dumps(event).encode(), rec.timestamp_ms, offset=n)
        for n, (rec, event) in enumerate(
            (rec, event) for rec in good for event in json.loads(rec.value or b"")
        )
    ]
    assert tables_after(one_by_one, chunk=50) == tables_after(good, chunk=7)

    core = fresh_core()
    ev = recs[0].value
    assert ev is not None
    body = b"[" + ev + b', 7, {"event_id": "x"}]'
    out = core.process([RawRecord(body, 1000, partition=2, offset=9)])
    assert out.accepted == 1
    letters = [json.loads(d.payload) for d in out.dead_letters]
    assert [(x["reason"], x["offset"], x["index"], x["payload"]) for x in letters] == [
        ("not_an_object", 9, 1, "7"),
        ("missing_user_id", 9, 2, '{"event_id":"x"}'),
    ]
    assert core.checkpoint_positions() == {2: (10, 0)}
