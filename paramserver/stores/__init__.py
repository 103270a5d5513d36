"""Durable backends for checkpoints: one small interface, a dict and a RocksDB implementation.

Every backend applies a :class:`WriteSet` atomically: all of its puts and
deletes land, or none do. The contract suite in ``tests/contract`` runs against
each backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class WriteSet:
    """Deletes then puts, applied in that order and atomically by :meth:`RowStore.commit`."""

    puts: list[tuple[bytes, bytes]] = field(default_factory=list)
    deletes: list[bytes] = field(default_factory=list)

    def put(self, key: bytes, value: bytes) -> None:
        self.puts.append((key, value))

    def delete(self, key: bytes) -> None:
        self.deletes.append(key)

    def __len__(self) -> int:
        return len(self.puts) + len(self.deletes)

    def check(self) -> None:
        """Raise TypeError unless every key and value is bytes (before anything is written)."""
        for key in self.deletes:
            if not isinstance(key, bytes):
                raise TypeError(f"keys must be bytes, got {type(key).__name__}")
        for key, value in self.puts:
            if not isinstance(key, bytes) or not isinstance(value, bytes):
                raise TypeError(
                    f"keys and values must be bytes, got {type(key).__name__}, "
                    f"{type(value).__name__}"
                )


class RowStore(Protocol):
    def commit(self, writes: WriteSet) -> None: ...

    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs whose key starts with ``prefix``, in key order."""
        ...

    def close(self) -> None: ...
