"""Frozen, typed configuration for embedding tables."""

from __future__ import annotations

from dataclasses import dataclass, field

from paramserver.optim import Optimizer, RowwiseAdagrad


@dataclass(frozen=True)
class TableConfig:
    """One embedding table.

    ``init_scale`` is the standard deviation of the deterministic per-id
    initialisation (``seed`` picks the family). ``optimizer`` runs server-side on
    ``push``. An id gets a row after ``min_count`` sightings (1: at once); rows
    whose last update is more than ``ttl_seconds`` (event time) old are evicted
    by :meth:`~paramserver.table.EmbeddingTable.expire` (None: never).
    """

    name: str
    dim: int = 32
    init_scale: float = 0.1
    optimizer: Optimizer = field(default_factory=RowwiseAdagrad)
    min_count: int = 1
    ttl_seconds: float | None = None
    seed: int = 0
    initial_capacity: int = 1024
    filter_width: int = 1 << 18

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"dim must be positive, got {self.dim}")
        if self.init_scale < 0:
            raise ValueError(f"init_scale must be non-negative, got {self.init_scale}")
        if self.min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {self.min_count}")
        if self.ttl_seconds is not None and not self.ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be positive or None, got {self.ttl_seconds}")
        if self.initial_capacity <= 0:
            raise ValueError("initial_capacity must be positive")
