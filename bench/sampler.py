"""Frequency-drawn negatives: the cost of one worker step's draw, by catalogue size.

``TrainConfig.negative_sampler = "frequency"`` draws each batch's sampled negatives from
:class:`~stream.frequency.ItemFrequency` in proportion to the smoothed positive counts.
Per step the worker observes a batch of positives, then draws ``--negatives`` ids.

* baseline: the draw as first written, re-reading every count from the dict per call
  (``probability`` over the sorted ids, then the cumulative sum): O(items) in Python;
* contender: ``ItemFrequency.sample`` as it is now, which keeps the sorted counts in an
  array and writes only the counts the batch moved (O(batch) in Python, O(items) in numpy).

Both draw from the same generator state and must draw the same ids (checked on 64 steps
before the timing).

Usage: ``python -m bench.sampler [--items 10000,100000,1000000] [--batch 12] [--seconds 2]``
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from bench import save, timed
from stream.frequency import ItemFrequency


def baseline_draw(
    freq: ItemFrequency, ids: list[str], n: int, rng: np.random.Generator
) -> list[str]:
    """The first version of ``ItemFrequency.sample``: every count read afresh per call."""
    cum = np.cumsum(freq.probability(ids))
    picks = np.searchsorted(cum, rng.random(n) * cum[-1], side="right")
    return [ids[i] for i in np.minimum(picks, len(ids) - 1).tolist()]


def measure(items: int, batch: int, negatives: int, seconds: float) -> dict[str, float]:
    rng = np.random.default_rng(0)
    catalogue = [f"item{n}" for n in range(items)]
    freq = ItemFrequency()
    freq.add({i: float(c) for i, c in zip(catalogue, rng.zipf(1.3, items) - 1, strict=True)})
    ids = sorted(catalogue)
    batches = [[catalogue[min(r, items - 1)] for r in rng.zipf(1.1, batch) - 1] for _ in range(64)]

    for i in range(64):  # first, that the two draw the same (untimed)
        freq.observe(batches[i])
        drawn = freq.sample(negatives, np.random.default_rng(i))
        if drawn != baseline_draw(freq, ids, negatives, np.random.default_rng(i)):
            raise AssertionError(f"the draws differ at step {i} ({items:,} items)")

    def contender(i: int) -> None:
        freq.observe(batches[i])
        freq.sample(negatives, np.random.default_rng(i))

    def baseline(i: int) -> None:
        freq.observe(batches[i])
        baseline_draw(freq, ids, negatives, np.random.default_rng(i))

    elapsed, steps = timed(baseline, len(batches), seconds)
    base = steps / elapsed
    elapsed, steps = timed(contender, len(batches), seconds)
    ours = steps / elapsed
    return {"items": items, "baseline_steps_s": base, "sample_steps_s": ours, "ratio": ours / base}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", default="10000,100000,1000000")
    p.add_argument("--batch", type=int, default=12, help="positives per step (a live batch)")
    p.add_argument("--negatives", type=int, default=32)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--out", default="bench/results/sampler.json")
    args = p.parse_args(argv)
    rows = []
    print(f"{'items':>9}  {'baseline steps/s':>16}  {'sample steps/s':>14}  ratio")
    for items in (int(x) for x in args.items.split(",")):
        row = measure(items, args.batch, args.negatives, args.seconds)
        rows.append(row)
        print(f"{items:>9,}  {row['baseline_steps_s']:>16,.0f}  {row['sample_steps_s']:>14,.0f}"
              f"  {row['ratio']:.1f}x")  # fmt: skip
    results = {"batch": args.batch, "negatives": args.negatives, "rows": rows}
    save(results, args.out)
    return results


if __name__ == "__main__":
    main()
