"""Frozen, typed configuration for embedding tables."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TableConfig:
    """One embedding table.

    ``init_scale`` is the standard deviation of the deterministic per-id
    initialisation; ``lr``, ``eps`` and ``initial_accumulator`` configure the
    row-wise Adagrad optimizer that runs inside the table on ``push``.
    """

    name: str
    dim: int = 32
    init_scale: float = 0.1
    lr: float = 0.05
    eps: float = 1e-8
    initial_accumulator: float = 0.1
    initial_capacity: int = 1024

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"dim must be positive, got {self.dim}")
        if self.lr <= 0 or self.eps <= 0 or self.initial_accumulator < 0:
            raise ValueError("lr and eps must be positive, initial_accumulator non-negative")
        if self.initial_capacity <= 0:
            raise ValueError("initial_capacity must be positive")
