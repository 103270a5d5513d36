"""The outbox publishes less, and a replica ends with the same rows."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core import BatchOutput
from stream.outbox import Outbox
from stream.vectors import VectorRecord

KEYS = st.sampled_from(["a", "b", "c", "d"])
STEP = st.tuples(st.lists(st.tuples(KEYS, st.integers(0, 50))), st.lists(KEYS))


def output(n: int, step: tuple[list[tuple[str, int]], list[str]]) -> BatchOutput:
    vectors, evicted = step
    recs = {k: VectorRecord(k, np.full(2, n, np.float32), n, ms) for k, ms in vectors}
    gone = [k for k in dict.fromkeys(evicted) if k not in recs]
    return BatchOutput(items=list(recs.values()), evicted_items=gone)


def replica(outputs: list[BatchOutput]) -> dict[str, float]:
    rows: dict[str, float] = {}
    for out in outputs:  # a replica applies vectors, then tombstones, as the worker sends them
        rows.update({r.key: float(r.vector[0]) for r in out.items})
        for key in out.evicted_items:
            rows.pop(key, None)
    return rows


@settings(max_examples=300, deadline=None)
@given(st.lists(STEP, max_size=8), st.lists(st.booleans(), min_size=8, max_size=8))
def test_any_grouping_leaves_the_replica_with_the_same_rows(steps, cuts) -> None:  # type: ignore[no-untyped-def]
    outputs = [output(n, s) for n, s in enumerate(steps)]
    box, published, merged = Outbox(), [], 0
    for out, cut in zip(outputs, cuts, strict=False):
        box.add(out, events=1)
        if cut:
            merged += box.merged
            published.append(box.take())
    merged += box.merged
    published.append(box.take())
    assert replica(published) == replica(outputs)
    sent = sum(len(o.items) + len(o.evicted_items) for o in published)
    assert box.merged == 0  # counted per take
    assert sent + merged == sum(len(o.items) + len(o.evicted_items) for o in outputs)
    for out in published:  # each key once per publication
        keys = [r.key for r in out.items] + out.evicted_items
        assert len(keys) == len(set(keys))


def test_a_merged_vector_keeps_the_earliest_event_time() -> None:
    box = Outbox()
    box.add(output(0, ([("a", 0)], [])), events=1)  # changed as a negative: no event time
    box.add(output(1, ([("a", 700)], [])), events=1)
    box.add(output(2, ([("a", 300)], [])), events=1)
    merged = box.merged
    (rec,) = box.take().items
    assert (rec.event_ms, rec.updates, merged) == (300, 2, 2)


def test_deferred_items_publish_what_eager_composition_would() -> None:
    """A worker marks changed items and composes them when it publishes; a replica ends with
    the vectors (and event times) it would have had from per-step composition."""
    from services.datagen import GeneratorConfig, InteractionGenerator, ItemInfo
    from stream.core import RawRecord, WorkerCore
    from stream.training import OnlineTrainer, TrainConfig

    events = [e for e in InteractionGenerator(GeneratorConfig(seed=3)).replay(3_000)
              if not isinstance(e, ItemInfo)]  # fmt: skip
    config = TrainConfig(dim=8, negatives=4)
    eager = WorkerCore(OnlineTrainer.create(config))
    deferred = WorkerCore(OnlineTrainer.create(config), defer_items=True)
    now, later = Outbox(), Outbox()
    batches = [events[i : i + 100] for i in range(0, len(events), 100)]
    for n, batch in enumerate(batches):
        records = [RawRecord(e.to_json(), 1_000 + n, offset=j + 100 * n) for j, e in
                   enumerate(batch)]  # fmt: skip
        a, b = eager.process(records), deferred.process(records)
        assert not b.items and set(b.item_marks) == {r.key for r in a.items}
        now.add(a, len(batch))
        later.add(b, len(batch))
        if n % 3 == 2 or n == len(batches) - 1:  # publish every third step
            x, y = now.take(), later.take(deferred.item_records)
            assert [(r.key, r.event_ms, r.updates) for r in x.items] == [
                (r.key, r.event_ms, r.updates) for r in y.items
            ]
            for r, s in zip(x.items, y.items, strict=True):
                np.testing.assert_array_equal(r.vector, s.vector)


MARKED = st.tuples(st.lists(st.tuples(KEYS, st.integers(0, 50))), st.lists(KEYS), st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.lists(MARKED, max_size=8), st.lists(st.booleans(), min_size=8, max_size=8))
def test_marked_rows_composed_at_take_leave_the_replica_as_eager_ones(steps, cuts) -> None:  # type: ignore[no-untyped-def]
    """Steps that mark their rows (composed when taken, from the rows as they are then) and
    steps that carry composed vectors, mixed with tombstones and cut into publications at
    random, leave a replica with the rows of publishing each step at once."""
    table: dict[str, int] = {}  # the worker's rows: key -> the step that last changed it

    def compose(marks):  # type: ignore[no-untyped-def]
        return [VectorRecord(k, np.full(2, table[k], np.float32), table[k], ms)
                for k, ms in marks.items()]  # fmt: skip

    box, published, eager = Outbox(), [], []
    for n, ((changed, evicted, marked), cut) in enumerate(zip(steps, cuts, strict=False)):
        keys = dict(changed)
        gone = [k for k in dict.fromkeys(evicted) if k not in keys]
        for k in keys:
            table[k] = n
        for k in gone:
            table.pop(k, None)
        vectors = [VectorRecord(k, np.full(2, n, np.float32), n, ms) for k, ms in keys.items()]
        eager.append(BatchOutput(items=vectors, evicted_items=gone))
        box.add(BatchOutput(item_marks=keys, evicted_items=gone) if marked
                else BatchOutput(items=vectors, evicted_items=gone), events=1)  # fmt: skip
        if cut:
            published.append(box.take(compose))
    published.append(box.take(compose))
    assert replica(published) == replica(eager)
