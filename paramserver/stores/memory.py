"""A dict-backed :class:`~paramserver.stores.RowStore`, for tests and ephemeral runs.

Examples
--------
>>> store = MemoryStore()
>>> w = WriteSet()
>>> w.put(b"a/1", b"x"); w.put(b"b/1", b"y")
>>> store.commit(w)
>>> list(store.scan(b"a/")), store.get(b"b/1")
([(b'a/1', b'x')], b'y')
"""

from __future__ import annotations

from collections.abc import Iterator

from paramserver.stores import WriteSet


class MemoryStore:
    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}

    def commit(self, writes: WriteSet) -> None:
        writes.check()
        staged = dict(self._data)  # build aside, then swap: all or nothing
        for key in writes.deletes:
            staged.pop(bytes(key), None)
        for key, value in writes.puts:
            staged[bytes(key)] = bytes(value)
        self._data = staged

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key in sorted(k for k in self._data if k.startswith(prefix)):
            yield key, self._data[key]

    def close(self) -> None:
        pass
