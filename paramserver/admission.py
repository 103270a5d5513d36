"""Feature admission: an id earns a row after ``min_count`` sightings.

A count-min sketch (``depth`` rows of ``width`` saturating uint16 counters)
counts sightings of ids that have no row yet, in fixed memory however many
distinct ids pass by. It can overestimate (admit an id a little early when it
shares counters with busy ids) but never underestimates, so an id seen
``min_count`` times is always admitted.

Examples
--------
>>> import numpy as np
>>> f = CountingFilter(min_count=3, width=1024)
>>> ids = np.array([11, 11, 12], dtype=np.uint64)
>>> f.observe(ids).tolist()          # 11 seen twice, 12 once
[False, False, False]
>>> f.observe(np.array([11, 12], dtype=np.uint64)).tolist()
[True, False]
"""

from __future__ import annotations

import numpy as np

_SEEDS = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
     0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9],
    dtype=np.uint64,
)  # fmt: skip
_CAP = np.iinfo(np.uint16).max


class CountingFilter:
    def __init__(self, min_count: int, width: int = 1 << 20, depth: int = 4) -> None:
        if min_count < 1 or min_count > _CAP:
            raise ValueError(f"min_count must be in [1, {_CAP}], got {min_count}")
        if width < 1 or width & (width - 1):
            raise ValueError(f"width must be a power of two, got {width}")
        if not 1 <= depth <= len(_SEEDS):
            raise ValueError(f"depth must be in [1, {len(_SEEDS)}], got {depth}")
        self.min_count = min_count
        self.counts = np.zeros((depth, width), dtype=np.uint16)
        self._shift = np.uint64(64 - (width.bit_length() - 1)) if width > 1 else None

    @property
    def enabled(self) -> bool:
        return self.min_count > 1

    def _cells(self, keys: np.ndarray) -> np.ndarray:
        if self._shift is None:
            return np.zeros((len(_SEEDS[: len(self.counts)]), len(keys)), dtype=np.int64)
        mixed = (keys[None, :] ^ (keys[None, :] >> np.uint64(29))) * _SEEDS[
            : len(self.counts), None
        ]
        return (mixed >> self._shift).astype(np.int64)

    def observe(self, keys: np.ndarray) -> np.ndarray:
        """Count one sighting per occurrence; True where the id has now been seen enough."""
        keys = np.asarray(keys, dtype=np.uint64)
        if not self.enabled:
            return np.ones(len(keys), dtype=bool)
        cells = self._cells(keys)
        estimate = np.full(len(keys), _CAP, dtype=np.int64)
        for row, cell in zip(self.counts, cells, strict=True):
            touched, inverse, hits = np.unique(cell, return_inverse=True, return_counts=True)
            bumped = np.minimum(row[touched].astype(np.int64) + hits, _CAP)
            row[touched] = bumped
            np.minimum(estimate, bumped[inverse.ravel()], out=estimate)
        return estimate >= self.min_count

    def to_bytes(self) -> bytes:
        return self.counts.astype("<u2").tobytes()

    def load_bytes(self, data: bytes) -> None:
        counts = np.frombuffer(data, dtype="<u2")
        if counts.size != self.counts.size:
            raise ValueError("admission filter size differs from the checkpoint's")
        self.counts[...] = counts.reshape(self.counts.shape)
