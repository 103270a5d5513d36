"""One contract, every RowStore backend (dict and RocksDB)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from paramserver.checkpoint import encode_delta, load_tables
from paramserver.config import TableConfig
from paramserver.optim import Ftrl
from paramserver.ps import ParameterServer
from paramserver.stores import RowStore, WriteSet
from paramserver.stores.memory import MemoryStore
from paramserver.stores.rocks import RocksStore


@pytest.fixture(params=["memory", "rocksdb"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], RowStore]:
    """A factory: calling it again reopens the same store (a restart)."""
    opened: list[RowStore] = []
    memory = MemoryStore()

    def make() -> RowStore:
        if opened and request.param == "rocksdb":
            opened[-1].close()
        store = memory if request.param == "memory" else RocksStore(tmp_path / "db")
        opened.append(store)
        return store

    yield make
    if request.param == "rocksdb" and opened:
        opened[-1].close()


def test_commit_applies_deletes_then_puts_and_survives_reopen(open_store) -> None:  # type: ignore[no-untyped-def]
    store = open_store()
    first = WriteSet()
    for i in range(5):
        first.put(f"r/{i}".encode(), bytes([i]))
    store.commit(first)
    second = WriteSet()
    second.delete(b"r/1")
    second.delete(b"r/2")
    second.put(b"r/2", b"back")  # delete then put in one set: the put wins
    second.put(b"m/x", b"1")
    store.commit(second)
    store = open_store()
    assert [k for k, _ in store.scan(b"r/")] == [b"r/0", b"r/2", b"r/3", b"r/4"]
    assert store.get(b"r/2") == b"back" and store.get(b"r/1") is None
    assert list(store.scan(b"zz")) == []


def test_a_failing_commit_writes_nothing(open_store) -> None:  # type: ignore[no-untyped-def]
    store = open_store()
    bad = WriteSet()
    bad.put(b"r/ok", b"1")
    bad.put(None, b"2")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.commit(bad)
    assert store.get(b"r/ok") is None


def test_tables_round_trip_with_optimizer_state_and_deletes(open_store) -> None:  # type: ignore[no-untyped-def]
    configs = [TableConfig("users", dim=3, ttl_seconds=10.0),
               TableConfig("items", dim=3, optimizer=Ftrl(alpha=0.2), min_count=2)]  # fmt: skip
    ps = ParameterServer(configs)
    store = open_store()
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(30)]
    items = [f"i{i}" for i in range(30)]
    for step in range(6):
        now = float(step * 4)
        ps.admit("users", users[step * 5 : step * 5 + 8], now=now)
        hit = ps.admit("items", items[: 10 + step * 3], now=now)
        ids = [i for i, h in zip(items, hit, strict=False) if h]
        if ids:
            ps.push("items", ids, rng.standard_normal((len(ids), 3)).astype(np.float32), now=now)
        ps.expire(now=now)
        writes = WriteSet()
        for delta in ps.drain():
            encode_delta(delta, writes)
        store.commit(writes)
    back = ParameterServer(configs)
    load_tables(back, open_store())
    for name, ids in (("users", users), ("items", items)):
        a, b = ps.pull(name, ids), back.pull(name, ids)
        assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])
        assert np.array_equal(ps.meta(name, ids)[0], back.meta(name, ids)[0])
        assert ps.sample(name, 10, seed=3) == back.sample(name, 10, seed=3)
    grads = np.ones((2, 3), dtype=np.float32)  # the optimizer state came back too
    ps.push("items", items[:2], grads, now=30)
    back.push("items", items[:2], grads, now=30)
    assert np.array_equal(ps.pull("items", items[:2])[0], back.pull("items", items[:2])[0])
    assert (
        ps.admit("items", ["i29"], now=31).tolist() == back.admit("items", ["i29"], now=31).tolist()
    )
