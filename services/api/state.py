"""What a retrieval replica holds and serves: the item index, user vectors, freshness samples.

Pure of Kafka and HTTP: the tailer feeds it decoded vector records, the API
asks it for recommendations. :meth:`ServingState.save` writes it with the topic
offsets it reflects, so a new replica loads the last save and catches up from
there instead of reading the topics from the beginning.

Examples
--------
>>> import numpy as np
>>> from stream.vectors import VectorRecord
>>> state = ServingState(dim=2)
>>> vec = lambda *x: np.array(x, dtype=np.float32)
>>> state.apply_items([VectorRecord("a", vec(1, 0), 5, 1000), VectorRecord("b", vec(0, 1), 9, 0)],
...                   now_ms=1250)
[0.25]
>>> state.recommend("nobody", k=1)                     # unknown user: popularity prior
('popular', [('b', 9.0)])
>>> state.apply_users([VectorRecord("u", vec(0.9, 0.1), 1, 1100)], now_ms=1200)
[0.1]
>>> state.recommend("u", k=1)[0], state.recommend("u", k=1)[1][0][0]
('personal', 'a')
>>> state.recommend("u", k=1, exclude={"a"})[1][0][0]
'b'

With ``popular_mix=m`` a user whose vector has ``n`` updates gets the share
``n / (n + m)`` of the list from it and the rest from the popular items:

>>> mixed = ServingState(dim=2, popular_mix=1.0)
>>> _ = mixed.apply_items([VectorRecord("a", vec(1, 0), 5, 0), VectorRecord("b", vec(.8, .6), 1, 0),
...                        VectorRecord("c", vec(0, 1), 9, 0)], now_ms=0)
>>> _ = mixed.apply_users([VectorRecord("u", vec(1, 0), 1, 0)], now_ms=0)
>>> mixed.recommend("u", k=2)         # 1 update: half personal (a, b), half popular (c, a)
('mixed', [('a', 1.0), ('c', 9.0)])
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.ann.index import AnnIndex, IndexConfig
from services.api.seen import SeenItems
from stream.frequency import RecentCounts
from stream.similarity import blend_weight, interleave
from stream.vectors import VectorRecord

Offsets = dict[str, dict[int, int]]  # topic -> partition -> next offset to read

log = logging.getLogger("streambed.api")


class ServingState:
    def __init__(
        self,
        dim: int,
        index: IndexConfig | None = None,
        *,
        seen: SeenItems | None = None,
        freshness_window: int = 100_000,
        popular_mix: float = 0.0,
        popular_window: int = 0,
        calibrated: bool = False,
        velocity: bool = False,
    ) -> None:
        if popular_mix < 0 or popular_window < 0:
            raise ValueError(f"popular_mix and popular_window must be non-negative, got "
                             f"{popular_mix} and {popular_window}")  # fmt: skip
        halves = dim - int(velocity)
        if calibrated and (halves < 4 or halves % 2):
            raise ValueError(f"calibrated vectors are 2 * dim + 2 long (even, >= 4; one more "
                             f"with velocity), got {dim}")  # fmt: skip
        self.dim = dim
        self.popular_mix = popular_mix
        # served vectors in the worker's --calibrate layout: an item ends in [a, 1 - a], the
        # coordinates that meet a user's offsets; item-item similarity leaves them out
        self.calibrated = calibrated
        # with the worker's --velocity-weight an item ends in its velocity term too, meant for
        # the user's 1: item-item similarity leaves that out as well
        self.velocity = velocity
        # popularity: positives among the last `popular_window` interactions (0: items'
        # total update counts), ties broken by update counts
        self.recent = RecentCounts(popular_window) if popular_window > 0 else None
        self.index = AnnIndex(dim, index)
        self.seen = seen  # None: the replica does not follow interactions
        self._users: dict[str, np.ndarray] = {}
        self._user_updates: dict[str, int] = {}  # -1: unknown (a save from before they were kept)
        self._item_updates: dict[str, int] = {}
        self._lock = threading.Lock()
        # (observed at, seconds): recent freshness samples, for exact percentiles
        self.freshness: deque[tuple[float, float]] = deque(maxlen=freshness_window)

    @property
    def users(self) -> int:
        return len(self._users)

    @property
    def follows_events(self) -> bool:
        """Whether the replica reads ``interactions`` (for exclude-seen or popularity)."""
        return self.seen is not None or self.recent is not None

    def apply_items(self, records: Sequence[VectorRecord], now_ms: int) -> list[float]:
        """Upsert item vectors; returns the freshness (seconds) of those that carry an event."""
        if not records:
            return []
        latest = {r.key: r for r in records}  # coalesce: only the last vector of an id matters
        self.index.upsert(list(latest), np.stack([r.vector for r in latest.values()]))
        with self._lock:
            for r in latest.values():
                self._item_updates[r.key] = r.updates
        return self._fresh(records, now_ms)

    def apply_users(self, records: Sequence[VectorRecord], now_ms: int) -> list[float]:
        with self._lock:
            for r in records:
                self._users[r.key] = r.vector
                self._user_updates[r.key] = r.updates
        return self._fresh(records, now_ms)

    def remove_items(self, keys: Sequence[str]) -> int:
        """Evicted items leave the index (a tombstone on ``item-vectors``)."""
        with self._lock:
            for key in keys:
                self._item_updates.pop(key, None)
        return self.index.remove(keys)

    def remove_users(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._users.pop(key, None)
                self._user_updates.pop(key, None)

    def apply_events(self, events: Sequence[tuple[str, str]]) -> None:
        """(user, item) pairs from the ``interactions`` topic, for exclude-seen filters."""
        if self.seen is not None:
            for user_id, item_id in events:
                self.seen.add(user_id, item_id)

    def count_popular(self, items: Sequence[str]) -> None:
        """Items of positive events from the ``interactions`` topic, for popularity."""
        if self.recent is not None and items:
            with self._lock:
                self.recent.observe(items)

    def seen_by(self, user_id: str) -> frozenset[str]:
        return frozenset() if self.seen is None else self.seen.get(user_id)

    def _fresh(self, records: Sequence[VectorRecord], now_ms: int) -> list[float]:
        ages = [max(0, now_ms - r.event_ms) / 1000 for r in records if r.event_ms > 0]
        self.freshness.extend((now_ms / 1000, age) for age in ages)
        return ages

    def user_vector(self, user_id: str) -> np.ndarray | None:
        with self._lock:
            return self._users.get(user_id)

    def popular(self, k: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """The items with vectors most popular now: ``(item, count)``, the count being
        positives in the window (with ``popular_window``) or total updates (without)."""
        with self._lock:
            updates = self._item_updates
            recent = self.recent if self.recent is not None and len(self.recent) else None
            count = updates.__getitem__ if recent is None else recent.get
            top = heapq.nlargest(k + len(exclude), updates, key=lambda i: (count(i), updates[i]))
            return [(item, float(count(item))) for item in top if item not in exclude][:k]

    def recommend(
        self, user_id: str, k: int, exclude: Collection[str] = ()
    ) -> tuple[str, list[tuple[str, float]]]:
        """``("popular" | "personal" | "mixed", [(item, score), ...])``.

        In a mixed list the order is the ranking; an item from the personal list keeps its
        similarity, one only from the popular list its popularity count.
        """
        with self._lock:
            vector = self._users.get(user_id)
            updates = self._user_updates.get(user_id, -1)
        if vector is None:
            return "popular", self.popular(k, exclude)
        personal = self.index.search(vector, k, exclude)
        if self.popular_mix <= 0 or updates < 0:
            return "personal", personal
        share = float(blend_weight(np.array(updates), self.popular_mix))
        if share >= 1.0:
            return "personal", personal
        popular = self.popular(k, exclude)
        scores = dict(popular) | dict(personal)  # the similarity where there is one
        ranked = interleave([i for i, _ in personal], [i for i, _ in popular], share, k)
        strategy = "personal" if ranked == [i for i, _ in personal] else "mixed"
        return strategy, [(item, scores[item]) for item in ranked]

    def similar(
        self, item_id: str, k: int, exclude: Collection[str] = ()
    ) -> list[tuple[str, float]] | None:
        vector = self.index.vector(item_id)
        if vector is None:
            return None
        # else a1 a2 + (1 - a1)(1 - a2) would pull items of the same age together, and
        # t1 t2 young items that are taking off
        tail = 2 * int(self.calibrated) + int(self.velocity)
        if tail:
            vector = np.concatenate([vector[:-tail], np.zeros(tail, vector.dtype)])
        return self.index.search(vector, k, exclude={item_id, *exclude})

    def freshness_percentiles(self, since: float = 0.0) -> dict[str, Any]:
        """p50/p95/p99 of the recent samples observed at or after ``since`` (unix seconds)."""
        samples = np.array([age for at, age in list(self.freshness) if at >= since])
        if samples.size == 0:
            return {"p50": None, "p95": None, "p99": None, "samples": 0}
        p50, p95, p99 = np.percentile(samples, [50, 95, 99])
        return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "samples": samples.size}

    # -- persistence --------------------------------------------------------------------

    def save(self, root: Path, offsets: Mapping[str, Mapping[int, int]]) -> Path:
        """Write a snapshot under ``root`` with the offsets it reflects; the previous one
        is replaced only once this one is complete (``root/LATEST`` names it)."""
        root.mkdir(parents=True, exist_ok=True)
        name = f"snapshot-{time.time_ns()}"
        tmp = root / f".{name}.tmp"
        self.index.save(tmp)
        with self._lock:
            users = list(self._users)
            user_vectors = np.stack([self._users[u] for u in users]) if users else None
            user_updates = np.array([self._user_updates.get(u, -1) for u in users], np.int64)
            updates = dict(self._item_updates)
            recent = None if self.recent is None else self.recent.to_list()
        np.savez(
            tmp / "users.npz",
            ids=np.array(users, dtype=str),
            vectors=user_vectors if user_vectors is not None else np.zeros((0, self.dim)),
            updates=user_updates,
        )
        body = {"offsets": {t: {str(p): o for p, o in parts.items()}
                            for t, parts in offsets.items()},
                "item_updates": updates, "saved_at": time.time(),
                "recent": recent,
                "seen": None if self.seen is None else self.seen.to_json()}  # fmt: skip
        (tmp / "state.json").write_text(json.dumps(body))
        write_manifest(tmp)  # last: a save without its manifest is incomplete
        tmp.rename(root / name)
        latest = root / ".LATEST.tmp"
        latest.write_text(name)
        os.replace(latest, root / "LATEST")
        keep = {name, *sorted(p.name for p in root.glob("snapshot-*"))[-KEEP_SAVES:]}
        for old in [*root.glob("snapshot-*"), *root.glob(".snapshot-*.tmp")]:
            if old.name not in keep:  # older snapshots, and any a failed save left half-written
                shutil.rmtree(old, ignore_errors=True)
        return root / name

    def restore(self, root: Path) -> Offsets | None:
        """Replace this state with the newest intact snapshot under ``root`` (``LATEST``
        first, then the one kept before it); returns the offsets it reflects, or ``None`` if
        there is none. A damaged snapshot (its checksums, or a file hnswlib or numpy cannot
        read) is reported in one log line and skipped. ``ValueError`` if it was written for
        another dimension or space, :class:`DamagedSave` if every snapshot is damaged
        (then nothing here changed: the caller rebuilds from the topics)."""
        try:
            latest = (root / "LATEST").read_text().strip()
        except FileNotFoundError:
            return None
        names = [latest, *sorted((p.name for p in root.glob("snapshot-*")), reverse=True)]
        damaged = []
        for name in dict.fromkeys(names):
            directory = root / name
            try:
                verify_manifest(directory)
                return self._restore_from(directory)
            except DamagedSave as err:
                problem = str(err)
            except ValueError:
                raise  # another dimension or space: no older save will fit either
            except Exception as err:  # noqa: BLE001 - hnswlib's RuntimeError, a bad npz, ...
                problem = f"{directory}: unreadable ({type(err).__name__}: {err})"
            log.warning("damaged replica save, skipped: %s", problem)
            damaged.append(problem)
        raise DamagedSave("; ".join(damaged))

    def _restore_from(self, directory: Path) -> Offsets:
        index = AnnIndex.load(directory, self.dim, self.index.config)
        with np.load(directory / "users.npz", allow_pickle=False) as saved:
            ids, vectors = saved["ids"], saved["vectors"]
            # saves from before update counts were kept: unknown (-1), served unmixed
            counts = saved["updates"] if "updates" in saved.files else np.full(len(ids), -1)
        if len(ids) and vectors.shape[1] != self.dim:
            raise ValueError(f"saved user vectors have dim {vectors.shape[1]}, not {self.dim}")
        body = json.loads((directory / "state.json").read_text())
        with self._lock:
            self.index.close()
            self.index = index
            self._users = {str(u): vectors[n].astype(np.float32) for n, u in enumerate(ids)}
            self._user_updates = {str(u): int(counts[n]) for n, u in enumerate(ids)}
            self._item_updates = {str(i): int(n) for i, n in body["item_updates"].items()}
            if self.recent is not None:  # a save without a window: none (it refills)
                saved_recent = map(str, body.get("recent") or ())
                self.recent = RecentCounts.from_list(saved_recent, self.recent.window)
            if self.seen is not None and body.get("seen") is not None:
                self.seen = SeenItems.from_json(
                    body["seen"], self.seen.per_user, self.seen.max_users
                )
        return {t: {int(p): int(o) for p, o in parts.items()}
                for t, parts in body["offsets"].items()}  # fmt: skip

    def reset(self) -> None:
        """Forget everything (a replica about to rebuild from the topics)."""
        with self._lock:
            self.index.close()
            self.index = AnnIndex(self.dim, self.index.config)
            self._users.clear()
            self._user_updates.clear()
            self._item_updates.clear()
            if self.seen is not None:
                self.seen = SeenItems(self.seen.per_user, self.seen.max_users)
            if self.recent is not None:
                self.recent = RecentCounts(self.recent.window)


KEEP_SAVES = 2  # snapshots kept: the latest, and one to fall back to if it is damaged
MANIFEST = "MANIFEST.json"


class DamagedSave(OSError):
    """A replica save whose files do not match their checksums (or cannot be read)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    """Record every file's size and SHA-256 in ``directory/MANIFEST.json``."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(directory.iterdir()) if p.name != MANIFEST}  # fmt: skip
    (directory / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def verify_manifest(directory: Path) -> None:
    """:class:`DamagedSave` unless every file matches the manifest written with it."""
    try:
        files = json.loads((directory / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DamagedSave(f"{directory}: no readable manifest ({type(err).__name__})") from None
    for name, want in files.items():
        path = directory / name
        size = path.stat().st_size if path.exists() else None
        if size != want["bytes"]:
            raise DamagedSave(f"{path}: {size} bytes, the save wrote {want['bytes']}")
        if _sha256(path) != want["sha256"]:
            raise DamagedSave(f"{path}: checksum differs from the one saved with it")
