"""The RocksDB :class:`~paramserver.stores.RowStore` (rocksdict); the only rocksdict import.

A commit is one RocksDB ``WriteBatch``, so rows, optimizer state and the Kafka
offsets they reflect become durable together. RocksDB's write-ahead log makes a
committed batch survive the process being killed; ``sync=True`` also makes it
survive the machine losing power, at the price of an fsync per checkpoint.

Examples
--------
>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     store = RocksStore(d)
...     w = WriteSet()
...     w.put(b"r/1", b"row"); w.put(b"m/offsets", b"{}")
...     store.commit(w)
...     store.close()
...     again = RocksStore(d)
...     print(list(again.scan(b"r/")), again.get(b"m/offsets"))
...     again.close()
[(b'r/1', b'row')] b'{}'
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rocksdict import AccessType, Options, Rdict, WriteBatch, WriteOptions

from paramserver.stores import WriteSet


class RocksStore:
    def __init__(self, path: str | Path, *, sync: bool = False, read_only: bool = False) -> None:
        """Open (creating) the store; ``read_only`` opens a snapshot beside a live writer."""
        self.path = str(path)
        if read_only:
            if not Path(path, "CURRENT").exists():
                raise FileNotFoundError(f"no RocksDB store at {path}")
            access = AccessType.read_only()
        else:
            Path(path).mkdir(parents=True, exist_ok=True)
            access = AccessType.read_write()
        self._db = Rdict(self.path, Options(raw_mode=True), access_type=access)
        self._write_options = WriteOptions()
        self._write_options.sync = sync

    def commit(self, writes: WriteSet) -> None:
        writes.check()
        batch = WriteBatch(raw_mode=True)
        for key in writes.deletes:
            batch.delete(key)
        for key, value in writes.puts:
            batch.put(key, value)
        self._db.write(batch, self._write_options)

    def get(self, key: bytes) -> bytes | None:
        value = self._db.get(key)
        return None if value is None else bytes(value)

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items(from_key=prefix):
            assert isinstance(key, bytes)  # raw mode: keys are bytes
            if not key.startswith(prefix):
                break
            yield key, value

    def close(self) -> None:
        self._db.close()
