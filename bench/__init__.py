"""Benchmarks: each prints ratios against a baseline measured in the same run."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def timed(step: Callable[[int], None], n_batches: int, seconds: float) -> tuple[float, int]:
    """Run ``step(i)`` over the batches (cycling) for about ``seconds``; (elapsed, steps)."""
    for i in range(3):  # warm-up
        step(i % n_batches)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step(done % n_batches)
        done += 1
    return time.perf_counter() - started, done


def save(results: dict[str, Any], path: str | Path) -> None:
    """Write a benchmark's results as JSON (making its folder) and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
