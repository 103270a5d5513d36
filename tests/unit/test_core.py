from __future__ import annotations

import json

from stream.app import process_safely
from stream.core import RawRecord, WorkerCore
from stream.dedup import RecentIds
from stream.schemas import Interaction
from stream.training import OnlineTrainer, TrainConfig
from stream.vectors import VectorRecord


def core() -> WorkerCore:
    return WorkerCore(OnlineTrainer.create(TrainConfig(dim=8, negatives=2)))


def rec(event: Interaction, ms: int = 1000, offset: int = 0) -> RawRecord:
    return RawRecord(event.to_json(), ms, partition=1, offset=offset)


def test_invalid_records_are_dead_lettered_and_valid_ones_still_train() -> None:
    c = core()
    good = Interaction("e1", "u1", "i1", "click", 5.0)
    out = c.process([RawRecord(b"{bad", 900, 1, 7), rec(good, 1000, 8), RawRecord(None, 1, 1, 9)])
    assert out.accepted == 1
    assert [d.reason for d in out.dead_letters] == ["bad_json", "empty"]
    first = json.loads(out.dead_letters[0].payload)
    assert (first["payload"], first["partition"], first["offset"]) == ("{bad", 1, 7)
    assert [r.key for r in out.users] == ["u1"] and "i1" in [r.key for r in out.items]
    assert out.by_type == {"click": 1}


def test_duplicate_event_ids_are_applied_once_across_batches() -> None:
    c = core()
    event = Interaction("dup", "u1", "i1", "click", 5.0)
    first = c.process([rec(event), rec(event)])
    second = c.process([rec(event)])
    assert (first.accepted, first.duplicates) == (1, 1)
    assert (second.accepted, second.duplicates) == (0, 1)
    assert c.trainer.ps.meta("users", ["u1"])[0].tolist() == [1]


def test_vectors_carry_the_earliest_produce_time_of_their_own_events() -> None:
    c = core()
    c.process([rec(Interaction(f"w{n}", "w", f"x{n}", "click", 1.0)) for n in range(5)])
    out = c.process(
        [
            rec(Interaction("a", "u1", "i1", "click", 5.0), ms=2000),
            rec(Interaction("b", "u1", "i2", "like", 6.0), ms=1500),
        ]
    )
    users = {r.key: r.event_ms for r in out.users}
    items = {r.key: r.event_ms for r in out.items}
    assert users == {"u1": 1500}
    assert (items["i1"], items["i2"]) == (2000, 1500)
    # sampled negatives changed too, but no event of theirs is being timed
    assert all(ms == 0 for key, ms in items.items() if key.startswith("x"))
    assert out.oldest_event_ms == 1500


def test_vectors_published_decode_to_what_the_trainer_serves() -> None:
    c = core()
    out = c.process([rec(Interaction("a", "u1", "i1", "click", 5.0))])
    item = VectorRecord.decode(out.items[0].encode())
    served, _ = c.trainer.item_vectors([item.key])
    assert item.vector.tolist() == served[0].tolist()
    assert item.updates == 1


def test_a_failure_outside_the_step_halts_instead_of_checkpointing() -> None:
    import pytest

    from stream.app import Settler, WorkerHalted
    from stream.metrics import WorkerMetrics

    class Broken(WorkerCore):
        def process(self, records):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    from prometheus_client import CollectorRegistry

    broken = Broken(OnlineTrainer.create(TrainConfig(dim=4)), RecentIds(10))
    metrics = WorkerMetrics.create(CollectorRegistry())
    settler = Settler(broken, None, "t", metrics, 1.0)
    records = [rec(Interaction("a", "u", "i", "click", 1.0)), RawRecord(b"x", 1)]
    with pytest.raises(WorkerHalted, match="boom"):
        process_safely(broken, records, settler)
    assert settler.halted and "boom" in settler.halted
