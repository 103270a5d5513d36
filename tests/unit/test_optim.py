"""Each server-side optimizer, through EmbeddingTable.push, against a reference implementation.

Every push repeats ids, so the tests also check that duplicates are summed
before the update (torch's sparse gradients coalesce the same way).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from paramserver.config import TableConfig
from paramserver.optim import Adagrad, Ftrl, RowwiseAdagrad, Sgd, make_optimizer
from paramserver.table import EmbeddingTable

DIM, ROWS, STEPS = 5, 6, 8


def pushes(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(STEPS):
        keys = rng.integers(0, ROWS, size=9).astype(np.uint64)  # 9 draws of 6 ids: duplicates
        out.append((keys, rng.standard_normal((9, DIM)).astype(np.float32)))
    return out


def run_table(optimizer: object) -> tuple[np.ndarray, np.ndarray]:
    table = EmbeddingTable(TableConfig("t", dim=DIM, optimizer=optimizer))  # type: ignore[arg-type]
    keys = np.arange(ROWS, dtype=np.uint64)
    table.admit(keys, now=0)
    start = table.pull(keys)[0].copy()
    for step, (k, g) in enumerate(pushes()):
        table.push(k, g, now=step)
    return start, table.pull(keys)[0]


def run_torch(start: np.ndarray, make: object) -> np.ndarray:
    emb = torch.nn.Embedding(ROWS, DIM, sparse=True)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(start))
    opt = make(emb.parameters())  # type: ignore[operator]
    for keys, grads in pushes():
        opt.zero_grad()
        out = emb(torch.from_numpy(keys.astype(np.int64)))
        out.backward(torch.from_numpy(grads))  # d(sum(out * g))/d(rows) = g, summed per id
        opt.step()
    return emb.weight.detach().numpy()


def test_sgd_matches_torch_sgd_on_sparse_embeddings() -> None:
    start, ours = run_table(Sgd(lr=0.07))
    ref = run_torch(start, lambda p: torch.optim.SGD(p, lr=0.07))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("initial", [0.0, 0.1])
def test_adagrad_matches_torch_adagrad_on_sparse_embeddings(initial: float) -> None:
    opt = Adagrad(lr=0.3, eps=1e-10, initial_accumulator=initial)
    start, ours = run_table(opt)
    ref = run_torch(
        start,
        lambda p: torch.optim.Adagrad(p, lr=0.3, eps=1e-10, initial_accumulator_value=initial),
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_rowwise_adagrad_matches_a_per_row_loop() -> None:
    lr, eps, initial = 0.2, 1e-8, 0.05
    start, ours = run_table(RowwiseAdagrad(lr=lr, eps=eps, initial_accumulator=initial))
    rows = start.astype(np.float64)
    acc = np.full(ROWS, initial)
    for keys, grads in pushes():
        summed = {}
        for k, g in zip(keys.tolist(), grads.astype(np.float64), strict=True):
            summed[k] = summed.get(k, 0.0) + g
        for k, g in summed.items():
            acc[k] += sum(x * x for x in g) / DIM
            rows[k] = rows[k] - lr * g / (math.sqrt(acc[k]) + eps)
    np.testing.assert_allclose(ours, rows, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (0.05, 0.1)])
def test_ftrl_matches_the_per_coordinate_algorithm(l1: float, l2: float) -> None:
    """McMahan et al. (2013), Algorithm 1, one coordinate at a time."""
    alpha, beta = 0.5, 1.0
    start, ours = run_table(Ftrl(alpha=alpha, beta=beta, l1=l1, l2=l2))
    z = np.zeros((ROWS, DIM))
    n = np.zeros((ROWS, DIM))
    w = np.zeros((ROWS, DIM))
    for r in range(ROWS):  # z chosen so FTRL's weights start at the initial vector
        for i in range(DIM):
            x = float(start[r, i])
            z[r, i] = -(x * (beta / alpha + l2) + math.copysign(l1, x) * (x != 0))
            w[r, i] = x if abs(z[r, i]) > l1 else 0.0
    for keys, grads in pushes():
        summed: dict[int, np.ndarray] = {}
        for k, g in zip(keys.tolist(), grads.astype(np.float64), strict=True):
            summed[k] = summed.get(k, 0.0) + g
        for k, g in summed.items():
            for i in range(DIM):
                sigma = (math.sqrt(n[k, i] + g[i] ** 2) - math.sqrt(n[k, i])) / alpha
                z[k, i] += g[i] - sigma * w[k, i]
                n[k, i] += g[i] ** 2
                if abs(z[k, i]) <= l1:
                    w[k, i] = 0.0
                else:
                    sign = math.copysign(1.0, z[k, i])
                    w[k, i] = -(z[k, i] - sign * l1) / ((beta + math.sqrt(n[k, i])) / alpha + l2)
    np.testing.assert_allclose(ours, w, rtol=1e-4, atol=1e-6)


def test_ftrl_l1_keeps_coordinates_with_weak_evidence_at_exactly_zero() -> None:
    opt = Ftrl(alpha=0.1, beta=1.0, l1=1.0)
    rows = np.zeros((1, 3), dtype=np.float32)
    state = opt.init_state(rows)
    for _ in range(5):  # cumulative gradient 0.5 on two coordinates (< l1), 5.0 on the third
        opt.apply(rows, state, np.array([[0.1, -0.1, 1.0]], dtype=np.float32))
    assert rows[0, 0] == 0.0 and rows[0, 1] == 0.0 and rows[0, 2] < 0.0


def test_optimizers_by_name_and_validation() -> None:
    assert make_optimizer("ftrl", 0.3) == Ftrl(alpha=0.3)
    assert make_optimizer("sgd", 0.3) == Sgd(lr=0.3)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("adam", 0.1)
    with pytest.raises(ValueError, match="learning rate"):
        RowwiseAdagrad(lr=0.0)
    with pytest.raises(ValueError, match="eps"):
        Adagrad(eps=-1.0)
