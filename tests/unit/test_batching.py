from __future__ import annotations

import pytest

from stream.batching import Batcher
from stream.core import RawRecord


def recs(partition: int, stamps: list[int], first_offset: int = 0) -> list[RawRecord]:
    return [RawRecord(b"x", t, partition, first_offset + n) for n, t in enumerate(stamps)]


def offsets(batches: list[list[RawRecord]]) -> list[list[tuple[int, int]]]:
    return [[(r.partition, r.offset) for r in b] for b in batches]


def test_partitions_share_batches_and_pending_offsets_are_per_partition() -> None:
    b = Batcher(size=3, window_ms=100)
    mixed = [*recs(0, [0, 5]), *recs(1, [6, 7], first_offset=40), *recs(0, [8], first_offset=2)]
    assert offsets(b.add(mixed)) == [[(0, 0), (0, 1), (1, 40)]]
    assert b.pending_offsets() == {1: 41, 0: 2} and len(b) == 2


def test_cuts_do_not_depend_on_how_records_were_grouped_on_delivery() -> None:
    stamps = [0, 3, 60, 61, 62, 200, 201, 202, 203, 204, 900]
    whole = Batcher(size=4, window_ms=50)
    one_by_one = Batcher(size=4, window_ms=50)
    expected = offsets(whole.add(recs(0, stamps)))
    got = []
    for rec in recs(0, stamps):
        got += offsets(one_by_one.add([rec]))
    assert got == expected == [[(0, 0), (0, 1)], [(0, 2), (0, 3), (0, 4)],
                               [(0, 5), (0, 6), (0, 7), (0, 8)], [(0, 9)]]  # fmt: skip


def test_idle_flush_waits_for_window_plus_grace() -> None:
    b = Batcher(size=10, window_ms=50)
    b.add(recs(3, [1000, 1010]))
    assert b.pending_offsets() == {3: 0}
    assert b.flush_idle(now_ms=1049 + 200, grace_ms=200) == []
    assert offsets(b.flush_idle(now_ms=1050 + 200, grace_ms=200)) == [[(3, 0), (3, 1)]]
    assert b.pending_offsets() == {} and len(b) == 0


@pytest.mark.parametrize("size,window", [(0, 10), (5, 0)])
def test_batcher_validates(size: int, window: int) -> None:
    with pytest.raises(ValueError):
        Batcher(size, window)


def test_the_worker_core_keeps_the_batcher_it_is_given() -> None:
    """An empty Batcher is falsy (it has __len__): `batcher or default` threw away the
    worker's --batch-size/--batch-ms and always cut 256 records / 50 ms."""
    from stream.core import WorkerCore
    from stream.training import OnlineTrainer, TrainConfig

    mine = Batcher(size=7, window_ms=250)
    core = WorkerCore(OnlineTrainer.create(TrainConfig(dim=4)), batcher=mine)
    assert core.batcher is mine
