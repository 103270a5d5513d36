"""Young-item velocity: what it adds to the worker's per-batch step.

With ``--velocity-weight`` the trainer counts each batch's positives in a window, and the
worker publishes again the items whose velocity level moved as they aged (``StepStats.aged``).
This runs the worker's pure step (:meth:`stream.core.WorkerCore.process`) over the same
generated stream (its new items' content included) twice, batch by batch in turn, after
``--history`` events whose positives seed both trainers' counts as a bootstrap's would (so
the catalogue they cover is old, and only items new since are young):

* baseline: the worker as it runs without velocity (``velocity_weight`` 0);
* contender: the same with ``velocity_weight`` 0.2 (the evaluation's choice).

It reports the mean step time of each and their ratio, the item vectors each published per
batch, and the size of the trainer state a checkpoint writes; and checks that the two
trained the same rows (velocity is served, never trained).

Usage: ``python -m bench.velocity [--history 10000] [--events 30000] [--batch 12]``
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from bench import save
from services.datagen import GeneratorConfig, InteractionGenerator, ItemInfo
from stream.core import RawRecord, WorkerCore
from stream.model import CONTENT_DIM
from stream.schemas import Interaction
from stream.training import ITEMS, USERS, OnlineTrainer, TrainConfig


def core(velocity: float, seed: int) -> WorkerCore:
    return WorkerCore(OnlineTrainer.create(TrainConfig(seed=seed, velocity_weight=velocity)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--history", type=int, default=10_000)
    p.add_argument("--events", type=int, default=30_000)
    p.add_argument("--batch", type=int, default=12, help="events per step (a live batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/velocity.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    gen = InteractionGenerator(GeneratorConfig(seed=args.seed))
    rng = np.random.default_rng(args.seed)
    cores = {"baseline": core(0.0, args.seed), "velocity": core(0.2, args.seed)}
    seconds = {name: 0.0 for name in cores}
    published = {name: 0 for name in cores}
    steps, offset = 0, 0
    pending: list[Interaction] = []

    def step() -> None:
        nonlocal steps, offset
        batch = [RawRecord(e.to_json(), 1000, offset=offset + n) for n, e in enumerate(pending)]
        offset += len(batch)
        for name, c in cores.items():
            started = time.perf_counter()
            out = c.process(batch)
            seconds[name] += time.perf_counter() - started
            published[name] += len(out.items)
        steps += 1
        pending.clear()

    replayed = list(gen.replay(args.history + args.events))
    history = [r for r in replayed[: args.history] if not isinstance(r, ItemInfo)]
    counts: dict[str, float] = {}
    for event in history:
        if cores["baseline"].trainer.weight(event) > 0:
            counts[event.item_id] = counts.get(event.item_id, 0.0) + 1.0
    for c in cores.values():  # as load_into: the history's counts before any content
        c.trainer.frequency.add(counts)
    for at, record in enumerate(replayed):
        if at < args.history and not isinstance(record, ItemInfo):
            continue
        if isinstance(record, ItemInfo):  # content arrives: stored, not timed
            text = rng.normal(size=(1, CONTENT_DIM)).astype(np.float32)
            for c in cores.values():
                c.trainer.add_content([record.item_id], text, now=record.ts)
            continue
        pending.append(record)
        if len(pending) == args.batch:
            step()
    if pending:
        step()
    base, fast = (c.trainer.ps for c in cores.values())
    for table in (USERS, ITEMS):
        ids = base.sample(table, 1000, seed=0)
        if not np.array_equal(base.pull(table, ids)[0], fast.pull(table, ids)[0]):
            raise AssertionError(f"velocity changed the trained {table} rows")
    state = {n: len(json.dumps(c.trainer.state()).encode()) for n, c in cores.items()}
    ms = {n: 1000 * s / steps for n, s in seconds.items()}
    results = {
        "events": args.events, "batch": args.batch, "steps": steps,
        "step_ms": ms, "ratio": ms["velocity"] / ms["baseline"],
        "items_published_per_step": {n: published[n] / steps for n in cores},
        "trainer_state_bytes": state,
    }  # fmt: skip
    print(f"{steps} steps of {args.batch} events over {args.events:,} generated events")
    print(f"{'':>9}  {'step ms':>8}  {'item vectors/step':>17}  {'checkpointed state':>18}")
    for n in cores:
        print(f"{n:>9}  {ms[n]:>8.3f}  {published[n] / steps:>17.1f}  {state[n]:>16,} B")
    print(f"velocity / baseline step time: {results['ratio']:.3f}x")
    save(results, args.out)
    return results


if __name__ == "__main__":
    main()
