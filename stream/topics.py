"""Names of the pipeline's topics (plain data; creating them is an edge concern)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    interactions: str = "interactions"
    dlq: str = "interactions.dlq"
    items: str = "items"
    item_vectors: str = "item-vectors"
    user_vectors: str = "user-vectors"
    # the scale-out worker's (stream.scaleout): item-row gradients keyed by item, and the
    # compacted changelogs of the user and item rows
    gradients: str = "gradients"
    user_rows: str = "user-rows"
    item_rows: str = "item-rows"
    partitions: int = 4

    @classmethod
    def with_prefix(cls, prefix: str, partitions: int = 4) -> Topics:
        """Namespaced topics, e.g. for tests sharing one broker."""
        d = cls()
        return cls(
            interactions=prefix + d.interactions,
            dlq=prefix + d.dlq,
            items=prefix + d.items,
            item_vectors=prefix + d.item_vectors,
            user_vectors=prefix + d.user_vectors,
            gradients=prefix + d.gradients,
            user_rows=prefix + d.user_rows,
            item_rows=prefix + d.item_rows,
            partitions=partitions,
        )
