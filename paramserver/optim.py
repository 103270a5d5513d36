"""Server-side optimizers: pure numpy functions over a batch of rows.

The optimizer state lives beside the row (one accumulator per row for row-wise
Adagrad), so the parameter server can apply updates without any torch state.

Examples
--------
>>> import numpy as np
>>> rows = np.ones((2, 3), dtype=np.float32)
>>> acc = np.zeros(2, dtype=np.float32)
>>> rowwise_adagrad(rows, acc, np.full((2, 3), 0.5, dtype=np.float32), lr=0.1, eps=1e-8)
>>> acc.tolist()
[0.25, 0.25]
>>> [round(float(x), 4) for x in rows[0]]
[0.9, 0.9, 0.9]
"""

from __future__ import annotations

import numpy as np


def rowwise_adagrad(
    rows: np.ndarray, accumulators: np.ndarray, grads: np.ndarray, *, lr: float, eps: float
) -> None:
    """Row-wise Adagrad, in place: ``acc += mean(g**2)``; ``row -= lr * g / sqrt(acc + eps)``.

    This is the update of torchrec's ``RowWiseAdagrad`` / FBGEMM's
    ``EXACT_ROWWISE_ADAGRAD``: one accumulator per row, holding the mean of the
    squared gradient over the row's dimensions.
    """
    accumulators += np.mean(np.square(grads), axis=1, dtype=np.float32)
    scale = lr / np.sqrt(accumulators + eps)
    rows -= grads * scale[:, None]


def sum_duplicates(ids: list[str], grads: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Sum the gradient rows of repeated ids, keeping first-seen order.

    >>> import numpy as np
    >>> u, g = sum_duplicates(["a", "b", "a"], np.array([[1.0], [2.0], [3.0]]))
    >>> u, g.tolist()
    (['a', 'b'], [[4.0], [2.0]])
    """
    position: dict[str, int] = {}
    index = np.empty(len(ids), dtype=np.int64)
    for i, key in enumerate(ids):
        index[i] = position.setdefault(key, len(position))
    if len(position) == len(ids):
        return list(ids), grads
    summed = np.zeros((len(position), grads.shape[1]), dtype=grads.dtype)
    np.add.at(summed, index, grads)
    return list(position), summed
