from __future__ import annotations

import numpy as np
import pytest

from paramserver.config import TableConfig
from paramserver.optim import rowwise_adagrad, sum_duplicates
from paramserver.table import EmbeddingTable, initial_row


def table(dim: int = 4, **kw: float) -> EmbeddingTable:
    return EmbeddingTable(TableConfig("t", dim=dim, initial_capacity=2, **kw))


def test_pull_is_aligned_and_never_creates_rows() -> None:
    t = table()
    t.ensure(["b"], now=0.0)
    vectors, hit = t.pull(["a", "b", "a"])
    assert hit.tolist() == [False, True, False]
    assert np.all(vectors[0] == 0) and np.all(vectors[2] == 0)
    assert np.array_equal(vectors[1], initial_row("b", 4, 0.1))
    assert len(t) == 1 and "a" not in t


def test_initialisation_is_deterministic_per_id() -> None:
    a, b = table(), table()
    a.ensure(["x", "y"], now=0)
    b.ensure(["y", "x"], now=0)
    assert np.array_equal(a.pull(["x", "y"])[0], b.pull(["x", "y"])[0])
    assert not np.array_equal(a.pull(["x"])[0], a.pull(["y"])[0])


def test_distinct_ids_never_share_a_row_and_the_table_grows() -> None:
    t = table(dim=2)
    ids = [f"id{i}" for i in range(1000)]
    t.ensure(ids, now=0)
    t.push(ids[:1], np.ones((1, 2), dtype=np.float32), now=1)
    vectors, hit = t.pull(ids)
    assert hit.all() and len(t) == 1000
    assert len({v.tobytes() for v in vectors}) == 1000


def reference_rowwise_adagrad(row, acc, grad, lr, eps):  # type: ignore[no-untyped-def]
    """Straightforward per-row loop: the definition, for equivalence."""
    acc = acc + float(np.mean(grad.astype(np.float64) ** 2))
    return row - lr * grad / np.sqrt(acc + eps), acc


def test_push_matches_the_reference_rowwise_adagrad_with_duplicates_summed() -> None:
    rng = np.random.default_rng(0)
    t = table(dim=3, lr=0.1, initial_accumulator=0.5)
    t.ensure(["a", "b"], now=0)
    rows = {k: t.pull([k])[0][0].astype(np.float64) for k in "ab"}
    acc = {"a": 0.5, "b": 0.5}
    for step in range(5):
        ids = ["a", "b", "a"]
        grads = rng.standard_normal((3, 3)).astype(np.float32)
        t.push(ids, grads, now=step)
        summed = {"a": grads[0] + grads[2], "b": grads[1]}
        for k in "ab":
            rows[k], acc[k] = reference_rowwise_adagrad(rows[k], acc[k], summed[k], 0.1, 1e-8)
    for k in "ab":
        np.testing.assert_allclose(t.pull([k])[0][0], rows[k], rtol=1e-5, atol=1e-6)
    assert t.meta("a").updates == 5 and t.meta("a").last_update == 4


def test_push_rejects_bad_input_without_touching_the_table() -> None:
    t = table()
    t.ensure(["a"], now=0)
    before = t.pull(["a"])[0].copy()
    with pytest.raises(ValueError, match="shape"):
        t.push(["a"], np.ones((1, 3)), now=1)
    with pytest.raises(ValueError, match="NaN"):
        t.push(["a"], np.full((1, 4), np.nan), now=1)
    with pytest.raises(KeyError, match="ensure"):
        t.push(["a", "zzz"], np.ones((2, 4)), now=1)
    assert np.array_equal(t.pull(["a"])[0], before)


def test_sum_duplicates_keeps_first_seen_order() -> None:
    ids, grads = sum_duplicates(["x", "y", "x", "z", "y"], np.arange(5, dtype=np.float32)[:, None])
    assert ids == ["x", "y", "z"]
    assert grads[:, 0].tolist() == [2.0, 5.0, 3.0]


def test_rowwise_adagrad_accumulates_mean_squared_gradient() -> None:
    rows = np.zeros((1, 2), dtype=np.float32)
    acc = np.zeros(1, dtype=np.float32)
    rowwise_adagrad(rows, acc, np.array([[3.0, 4.0]], dtype=np.float32), lr=1.0, eps=0.0)
    assert acc[0] == pytest.approx(12.5)
    np.testing.assert_allclose(rows[0], [-3 / 12.5**0.5, -4 / 12.5**0.5], rtol=1e-6)


def test_sample_reads_existing_rows_only() -> None:
    t = table()
    rng = np.random.default_rng(0)
    assert t.sample(5, rng) == []
    t.ensure(["a", "b"], now=0)
    assert set(t.sample(50, rng)) == {"a", "b"}
    assert len(t) == 2


@pytest.mark.parametrize("bad", [{"dim": 0}, {"lr": 0.0}, {"initial_capacity": 0}])
def test_config_validation(bad: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError):
        TableConfig("t", **bad)
