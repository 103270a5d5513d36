from __future__ import annotations

import numpy as np
import pytest

from paramserver.admission import CountingFilter
from paramserver.keys import HashIndex, KeyMap, check_ids


def test_hash_index_matches_a_dict_through_inserts_removes_and_rehashes() -> None:
    rng = np.random.default_rng(0)
    index, truth = HashIndex(capacity=4), {}
    next_slot = 0
    for _ in range(30):
        fresh = np.unique(rng.integers(0, 2**64 - 1, size=300, dtype=np.uint64, endpoint=True))
        fresh = fresh[[int(k) not in truth for k in fresh]]
        slots = np.arange(next_slot, next_slot + len(fresh))
        next_slot += len(fresh)
        index.insert(fresh, slots)
        truth.update(zip(fresh.tolist(), slots.tolist(), strict=True))
        gone = np.array(list(truth)[::7], dtype=np.uint64)
        removed = index.remove(gone)
        assert removed.tolist() == [truth.pop(k) for k in gone.tolist()]
        probe = np.concatenate([fresh, gone, np.array(list(truth)[:50], dtype=np.uint64)])
        assert index.lookup(probe).tolist() == [truth.get(k, -1) for k in probe.tolist()]
    assert len(index) == len(truth)
    keys, slots = index.items()
    assert dict(zip(keys.tolist(), slots.tolist(), strict=True)) == truth


def test_key_map_never_gives_two_strings_one_key_even_when_the_hash_collides() -> None:
    weak = lambda value, salt: hash(value) % 4 if not salt else 1000 + salt * 7 + len(value)  # noqa: E731
    keys = KeyMap(hasher=weak)
    names = [f"item-{i}" for i in range(40)]
    assigned = keys.assign(names)
    assert len(set(assigned.tolist())) == 40 and keys.collisions > 0
    found, known = keys.find(names + ["never-seen"])
    assert found[:40].tolist() == assigned.tolist() and known.tolist() == [True] * 40 + [False]
    assert keys.strings_of(assigned.tolist()) == names
    # forgetting a string whose key others stepped past must not confuse the rest
    keys.forget(assigned[:5].tolist())
    assert keys.find(names[5:])[0].tolist() == assigned[5:].tolist()
    assert not keys.find(names[:5])[1].any()
    again = KeyMap(hasher=weak)
    for key, name in zip(assigned[5:].tolist(), names[5:], strict=True):
        again.restore(key, name)
    assert again.find(names[5:])[0].tolist() == assigned[5:].tolist()


@pytest.mark.parametrize("bad", [[""], [None], [42], ["x" * 2000]])
def test_malformed_ids_are_rejected_with_a_reason(bad: list) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match="id #0"):
        check_ids(bad)


def test_counting_filter_never_admits_late_and_round_trips() -> None:
    f = CountingFilter(min_count=4, width=64, depth=3)  # tiny: shared counters on purpose
    keys = np.arange(500, dtype=np.uint64)
    for _ in range(3):
        f.observe(keys)
    assert f.observe(keys).all()  # fourth sighting: every id, whatever it shares
    g = CountingFilter(min_count=4, width=64, depth=3)
    g.load_bytes(f.to_bytes())
    assert np.array_equal(g.counts, f.counts)
    with pytest.raises(ValueError, match="power of two"):
        CountingFilter(2, width=100)
