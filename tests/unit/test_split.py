"""The scale-out stages without Kafka: gradients, changelog rows, the user stage's view."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from paramserver.ps import ParameterServer
from services.datagen import GeneratorConfig, InteractionGenerator
from stream.batching import Batcher
from stream.core import RawRecord
from stream.schemas import DEFAULT_TYPE_WEIGHTS, Interaction, training_weight
from stream.split import (
    Gradient,
    ItemStage,
    Rows,
    UserStage,
    by_table,
    coalesce,
    follow,
    pack_gradients,
    unpack_gradients,
    view_tables,
)
from stream.training import ITEMS, USERS, TrainConfig

CONFIG = TrainConfig(dim=8, negatives=4)


def events(n: int, seed: int = 3) -> list[Interaction]:
    gen = InteractionGenerator(GeneratorConfig(users=40, items=90, clusters=4, seed=seed))
    out = [e for e in gen.replay(n) if isinstance(e, Interaction)]
    return list({e.event_id: e for e in out}.values())


def raw(evs: list[Interaction]) -> list[RawRecord]:
    return [RawRecord(e.to_json(), 1000 + i, offset=i) for i, e in enumerate(evs)]


def run_stages(evs: list[Interaction], step: int = 64) -> tuple[UserStage, ItemStage]:
    view = ParameterServer(view_tables(CONFIG))
    users, items = UserStage(CONFIG, view, Batcher(step, 50)), ItemStage(CONFIG)
    records = raw(evs)
    for k in range(0, len(records), step):
        result = users.process(records[k : k + step])
        wire = unpack_gradients(pack_gradients(result.gradients))
        applied = items.apply(wire)
        follow(view, items.changelog(applied.evicted))
    return users, items


def test_packed_gradients_round_trip_any_id_and_refuse_other_bytes() -> None:
    ids = ["item-é", "a\nb", '"q"', "\ud800x"]  # any string an id may be
    grads = [Gradient(i, np.full(4, k, np.float32), events=k, event_ms=-k, now=k / 2)
             for k, i in enumerate(ids)]  # fmt: skip
    back = unpack_gradients(pack_gradients(grads))
    assert [(g.item, g.grad.tolist(), g.events, g.event_ms, g.now) for g in back] == [
        (g.item, g.grad.tolist(), g.events, g.event_ms, g.now) for g in grads]  # fmt: skip
    assert unpack_gradients(pack_gradients([])) == []
    for bad in (b"", b"\x00" * 5, pack_gradients(grads)[:-3], b"\x01\x00\x00\x00" * 3 + b"[1]"):
        with pytest.raises(ValueError, match="packed gradient record"):
            unpack_gradients(bad)


def test_coalesce_sums_an_items_gradients_and_keeps_its_earliest_event() -> None:
    one = np.ones(2, np.float32)
    got = coalesce([Gradient("a", one, 0, 0, 1.0), Gradient("a", one, 2, 50, 2.0),
                    Gradient("b", one, 1, 9, 1.0), Gradient("a", one, 1, 40, 1.5)])  # fmt: skip
    assert [(g.item, g.grad.tolist(), g.events, g.event_ms, g.now) for g in got] == [
        ("a", [3.0, 3.0], 3, 40, 2.0), ("b", [1.0, 1.0], 1, 9, 1.0)]  # fmt: skip


def test_every_event_is_counted_once_by_its_user_and_its_positive_item() -> None:
    evs = events(1500)
    users, items = run_stages(evs)
    assert users.events == Counter(e.user_id for e in evs)
    positives = Counter(e.item_id for e in evs if training_weight(e, DEFAULT_TYPE_WEIGHTS) > 0)
    assert +items.events == positives
    # and the item stage's frequency estimate is the same count the single worker keeps
    ids = sorted(positives)
    assert items.core.trainer.frequency.counts(ids).tolist() == [positives[i] for i in ids]


def test_item_rows_move_only_at_their_owner_and_the_view_follows() -> None:
    users, items = run_stages(events(600))
    ids = items.ps.ids(ITEMS)
    owner = items.ps.pull(ITEMS, ids)[0]
    seen = users.ps.view.pull(ITEMS, ids)[0]
    np.testing.assert_array_equal(owner, seen)
    # pushes to items reached the owner as updates, not the view
    assert (items.ps.meta(ITEMS, ids)[0] > 0).any()
    assert users.ps._grads == {}  # every gradient was taken


def test_user_rows_restore_from_their_changelog_with_optimizer_state() -> None:
    users, _ = run_stages(events(800))
    log = users.changelog([])
    fresh = UserStage(CONFIG, users.ps.view, Batcher(64, 50))
    fresh.restore({t: {i: v for i, v in e.items() if v is not None}
                   for t, e in by_table(log).items()})  # fmt: skip
    ids = users.ps.local.ids(USERS)
    a, b = users.ps.local, fresh.ps.local
    np.testing.assert_array_equal(a.pull(USERS, ids)[0], b.pull(USERS, ids)[0])
    np.testing.assert_array_equal(a.meta(USERS, ids)[0], b.meta(USERS, ids)[0])
    ta, tb = a.tables[USERS], b.tables[USERS]
    state_a = ta._state[ta._slots(a.keymaps[USERS].find(ids)[0])]
    state_b = tb._state[tb._slots(b.keymaps[USERS].find(ids)[0])]
    np.testing.assert_array_equal(state_a, state_b)  # the Adagrad accumulators came back
    assert state_a.any()
    assert fresh.events == users.events
    assert not any(len(d.strings) for d in b.drain())  # what was loaded is not re-logged


def test_an_evicted_user_leaves_tombstones() -> None:
    users, _ = run_stages(events(200))
    some = users.ps.local.ids(USERS)[0]
    log = by_table(users.changelog([some]))
    assert log[USERS][some] is None
    assert some not in users.events


def test_rows_decode_refuses_a_short_value() -> None:
    with pytest.raises(ValueError, match="shorter than dim"):
        Rows.decode({"u": b"\x00" * 20 + b"\x00" * 8}, dim=8)
