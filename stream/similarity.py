"""How users and items are compared, and how content and behaviour blend: pure policy.

The towers emit raw vectors. A :class:`Similarity` turns them into *served*
vectors such that ranking by the configured similarity is ranking by inner
product (``cosine``, ``dot``) or by L2 distance (``l2``) over served vectors, so
the training step, the evaluator and the hnswlib index all rank the same way.

``norm_power`` is the norm control for ``dot``: an item vector ``v`` is served
as ``v * |v| ** (norm_power - 1)``. At 1 that is the plain dot product, where
popular items (whose rows are pushed most) grow long and top everyone's list;
at 0 the item norm is gone and the ranking is cosine's; in between, a damped
popularity effect.

Cold start is :func:`blend_weight`: an item seen ``n`` times is served as
``a(n) * behaviour + (1 - a(n)) * content`` with ``a(n) = n / (n + k)``.

Examples
--------
>>> import numpy as np
>>> v = np.array([[3.0, 4.0], [0.6, 0.8]])
>>> Similarity("cosine").serve_items(v).round(2).tolist()
[[0.6, 0.8], [0.6, 0.8]]
>>> Similarity("dot", norm_power=0.5).serve_items(v).round(3).tolist()   # |v|: 5 -> ~2.24
[[1.342, 1.789], [0.6, 0.8]]
>>> blend_weight(np.array([0, 1, 5, 95]), k=5).tolist()
[0.0, 0.16666666666666666, 0.5, 0.95]

A user with few updates gets the same treatment at serving, against popularity:
:func:`interleave` gives their personal list the share ``blend_weight(updates, m)`` of
the slots and fills the rest from the popular list.

>>> interleave(["p1", "p2", "p3"], ["q1", "p2", "q2"], share=0.5, k=4)
['p1', 'q1', 'p2', 'q2']

With a content taste the two halves are scored on their own scales, which differ (and
move with the learning rate). :func:`calibrated_items` and :func:`calibrated_users` score
each half by how far it stands out for that user over the catalogue, its z-score, still
as one inner product: ``a * z_behaviour + (1 - a) * weight * z_content``.

>>> rng = np.random.default_rng(0)
>>> b, c = unit(rng.normal(size=(50, 4))), unit(rng.normal(size=(50, 4)))
>>> u, t = unit(rng.normal(size=(1, 4))), unit(rng.normal(size=(1, 4)))
>>> a = np.full((50, 1), 0.25)
>>> served = calibrated_users(u, t, Moments.of(b), Moments.of(c), weight=0.5)
>>> scores = served @ calibrated_items(a, b, c).T
>>> z = lambda s: (s - s.mean()) / s.std()
>>> bool(np.allclose(scores, 0.25 * z(u @ b.T) + 0.75 * 0.5 * z(t @ c.T), atol=1e-5))
True
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch.nn import functional as F

KINDS = ("cosine", "dot", "l2")
A = TypeVar("A", np.ndarray, torch.Tensor)
T = TypeVar("T", bound=Hashable)


@dataclass(frozen=True)
class Similarity:
    kind: str = "cosine"
    norm_power: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"similarity must be one of {KINDS}, got {self.kind!r}")
        if not 0.0 <= self.norm_power <= 1.0:
            raise ValueError(f"norm_power must be within [0, 1], got {self.norm_power}")

    @property
    def index_space(self) -> str:
        """The hnswlib space that ranks served vectors the same way."""
        return "l2" if self.kind == "l2" else "ip"

    def serve_users(self, u: A) -> A:
        return unit(u) if self.kind == "cosine" else u

    def serve_items(self, v: A) -> A:
        if self.kind == "cosine":
            return unit(v)
        if self.kind == "dot" and self.norm_power != 1.0:
            norm = _norm(v)
            return v * (norm + 1e-12) ** (self.norm_power - 1.0)
        return v

    def scores(self, u: A, v: A) -> A:
        """Scores of served users ``u`` (n, d) against served items ``v`` (m, d); higher: closer."""
        dots = u @ v.T
        if self.kind != "l2":
            return dots
        # -|u - v|^2 = 2 u.v - |u|^2 - |v|^2
        return 2 * dots - (_norm(u) ** 2) - (_norm(v) ** 2).reshape(1, -1)


def blend_weight(n: np.ndarray, k: float) -> np.ndarray:
    """Weight of behaviour after ``n`` interactions: ``n / (n + k)``; ``k = 0`` never blends."""
    n = np.maximum(np.asarray(n, dtype=np.float64), 0.0)
    if k <= 0:
        return np.ones_like(n)
    return n / (n + k)


def interleave(personal: Sequence[T], popular: Sequence[T], share: float, k: int) -> list[T]:
    """The first ``k`` distinct items of two ranked lists, ``personal`` taking ``share`` of
    the slots: position ``j`` (from 0) is personal while fewer than ``share * (j + 1)`` of
    the list so far are, so with any share above 0 the personal list leads (a user's own
    top item, then popularity, ...); a source that runs out leaves its slots to the other.
    Each list keeps its own order; an item already placed is skipped wherever it comes again.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    out: list[T] = []
    placed: set[T] = set()
    mine = theirs = taken = 0
    while len(out) < k and (mine < len(personal) or theirs < len(popular)):
        if mine < len(personal) and (taken < share * (len(out) + 1) - 1e-9
                                     or theirs >= len(popular)):  # fmt: skip
            item, mine = personal[mine], mine + 1
            if item not in placed:
                taken += 1
        else:
            item, theirs = popular[theirs], theirs + 1
        if item not in placed:
            placed.add(item)
            out.append(item)
    return out


@dataclass(frozen=True)
class Moments:
    """The mean and covariance of a set of served vectors (one half of the catalogue): what a
    user's scores over that set average (``u @ mean``) and spread (``sqrt(u cov u)``)."""

    mean: np.ndarray
    cov: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        """The moments of the rows of ``x`` (none: a zero mean and unit spread every way)."""
        x = np.asarray(x, dtype=np.float64)
        if len(x) == 0:
            return cls(np.zeros(x.shape[1]), np.eye(x.shape[1]))
        mean = x.mean(axis=0)
        centred = x - mean
        return cls(mean, centred.T @ centred / len(x))

    def to_json(self) -> dict[str, list[float] | list[list[float]]]:
        """JSON-safe lists (a float64 survives JSON's round trip exactly)."""
        return {"mean": self.mean.tolist(), "cov": self.cov.tolist()}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Moments:
        mean = np.asarray(raw["mean"], dtype=np.float64)
        cov = np.asarray(raw["cov"], dtype=np.float64)
        if mean.ndim != 1 or cov.shape != (len(mean), len(mean)):
            raise ValueError(f"moments of mismatched shapes: mean {mean.shape}, cov {cov.shape}")
        return cls(mean, cov)

    def standardise(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row of ``u``: the mean of its scores over the set, and their spread."""
        u = np.asarray(u, dtype=np.float64)
        spread = np.sqrt(np.maximum(np.einsum("nd,de,ne->n", u, self.cov, u), 1e-12))
        return u @ self.mean, spread


def calibrated_items(a: np.ndarray, behaviour: np.ndarray, content: np.ndarray) -> np.ndarray:
    """Served items ``[a * behaviour, (1 - a) * content, a, 1 - a]`` (``a``: (n, 1))."""
    return np.concatenate([a * behaviour, (1.0 - a) * content, a, 1.0 - a], axis=1).astype(
        np.float32
    )


def calibrated_users(
    users: np.ndarray, tastes: np.ndarray, behaviour: Moments, content: Moments, weight: float
) -> np.ndarray:
    """Served users whose inner product with :func:`calibrated_items` is ``a * (B - mean_B) /
    sd_B + (1 - a) * weight * (C - mean_C) / sd_C``, ``B``/``C`` the user's scores of an
    item's behaviour/content and the means and spreads those of the catalogue's."""
    mean_b, sd_b = behaviour.standardise(users)
    mean_c, sd_c = content.standardise(tastes)
    halves = [users / sd_b[:, None], weight * tastes / sd_c[:, None],
              (-mean_b / sd_b)[:, None], (-weight * mean_c / sd_c)[:, None]]  # fmt: skip
    return np.concatenate(halves, axis=1).astype(np.float32)


def _norm(x: A) -> A:
    if isinstance(x, torch.Tensor):
        return x.norm(dim=-1, keepdim=True)
    return np.linalg.norm(x, axis=-1, keepdims=True)


def unit(x: A) -> A:
    """Each row scaled to length 1 (a zero row stays zero)."""
    if isinstance(x, torch.Tensor):
        return F.normalize(x, dim=-1)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
