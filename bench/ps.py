"""Parameter-server benchmark: row updates/s against torch, and to RocksDB.

One run, one machine, same ids for every contender:

* memory: bytes per row of a table of ``--rows`` x ``--dim`` (row-wise Adagrad)
  against the raw vector (``4 * dim``); and what string ids add (the key map);
* in-process: ``pull`` + ``push`` of batches of ``--batch`` ids (Zipf-distributed,
  so batches repeat ids) with row-wise Adagrad, on the uint64 table and through
  the string-id :class:`~paramserver.ps.ParameterServer`;
* baseline: the same update with ``torch.nn.Embedding(sparse=True)`` and
  ``torch.optim.Adagrad`` / ``torch.optim.SparseAdam`` (forward = pull,
  backward + step = push), on a dense table of the same size;
* checkpoint: every row (and its optimizer state) to RocksDB in one write
  batch, rows/s; restoring them; and a steady-state checkpoint of the rows a
  second of updates touches.

Usage: ``python -m bench.ps [--rows 1000000] [--dim 64] [--batch 1024] [--seconds 3]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench import timed
from paramserver.checkpoint import checkpoint, load_tables
from paramserver.config import TableConfig
from paramserver.keys import KeyMap
from paramserver.optim import RowwiseAdagrad
from paramserver.ps import ParameterServer, ParamServerAPI
from paramserver.stores.rocks import RocksStore
from paramserver.table import EmbeddingTable

RESULTS = Path(__file__).parent / "results"


def zipf_batches(rows: int, batch: int, n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    ranks = rng.zipf(1.1, size=(n, batch)) - 1
    perm = rng.permutation(rows)  # popular ids scattered over the id space
    return [perm[np.minimum(r, rows - 1)].astype(np.uint64) for r in ranks]


def build_table(rows: int, dim: int) -> EmbeddingTable:
    table = EmbeddingTable(TableConfig("items", dim=dim, optimizer=RowwiseAdagrad(lr=0.05),
                                       initial_capacity=rows))  # fmt: skip
    ids = np.arange(rows, dtype=np.uint64)
    for start in tqdm(range(0, rows, 65536), desc="building table", unit="chunk", leave=False):
        table.admit(ids[start : start + 65536], now=0.0)
    return table


def keymap_bytes_per_id(n: int) -> float:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    keys = KeyMap()
    strings = [f"item-{i:08d}" for i in range(n)]
    keys.assign(strings)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / n


def torch_rate(batches: list[np.ndarray], grads: np.ndarray, rows: int, dim: int,
               optimizer: str, seconds: float) -> float:  # fmt: skip
    emb = torch.nn.Embedding(rows, dim, sparse=True)
    opt: torch.optim.Optimizer
    if optimizer == "adagrad":
        opt = torch.optim.Adagrad(emb.parameters(), lr=0.05)
    else:
        opt = torch.optim.SparseAdam(emb.parameters(), lr=0.001)
    idx = [torch.from_numpy(b.astype(np.int64)) for b in batches]
    g = torch.from_numpy(grads)

    def step(i: int) -> None:
        out = emb(idx[i])
        out.backward(g)
        opt.step()
        opt.zero_grad(set_to_none=True)

    elapsed, steps = timed(step, len(idx), seconds)
    return steps * len(batches[0]) / elapsed


def string_rate(ps: ParamServerAPI, batches: list[list[str]], grads: np.ndarray,
                seconds: float) -> float:  # fmt: skip
    """Row updates/s of pull + push through a string-id PS (rows admitted first)."""
    for b in batches:
        ps.admit("items", b, now=0.0)

    def step(i: int) -> None:
        ps.pull("items", batches[i])
        ps.push("items", batches[i], grads, now=1.0)

    elapsed, steps = timed(step, len(batches), seconds)
    return steps * len(batches[0]) / elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--seconds", type=float, default=3.0, help="per timed contender")
    args = p.parse_args(argv)
    rows, dim, batch = args.rows, args.dim, args.batch
    warnings.filterwarnings("ignore", "Sparse invariant checks")  # torch's sparse Adagrad
    torch.set_num_threads(1)  # like the worker (--torch-threads 1); numpy here is 1 thread too
    results: dict[str, float] = {}
    rng = np.random.default_rng(1)
    grads = (rng.standard_normal((batch, dim)) * 0.01).astype(np.float32)
    batches = zipf_batches(rows, batch, 64)
    distinct = np.mean([len(np.unique(b)) for b in batches])
    print(f"rows={rows:,} dim={dim} batch={batch} (Zipf 1.1: {distinct:.0f} distinct ids a batch)"
          f"; torch threads={torch.get_num_threads()}")  # fmt: skip

    started = time.perf_counter()
    table = build_table(rows, dim)
    results["build_rows_per_s"] = rows / (time.perf_counter() - started)
    results["bytes_per_row"] = table.nbytes / len(table)
    results["raw_bytes_per_row"] = 4 * dim
    results["keymap_bytes_per_string_id"] = keymap_bytes_per_id(min(rows, 200_000))

    def ours(i: int) -> None:
        table.pull(batches[i])
        table.push(batches[i], grads, now=1.0)

    elapsed, steps = timed(ours, len(batches), args.seconds)
    results["inprocess_rows_per_s"] = steps * batch / elapsed

    ps = ParameterServer([TableConfig("items", dim=dim, initial_capacity=rows)])
    string_batches = [[f"item-{int(k)}" for k in b] for b in batches]
    results["inprocess_string_ids_rows_per_s"] = string_rate(
        ps, string_batches, grads, args.seconds
    )

    results["torch_adagrad_rows_per_s"] = torch_rate(batches, grads, rows, dim, "adagrad",
                                                     args.seconds)  # fmt: skip
    results["torch_sparseadam_rows_per_s"] = torch_rate(batches, grads, rows, dim, "sparseadam",
                                                        args.seconds)  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        big = ParameterServer([TableConfig("items", dim=dim, initial_capacity=rows)])
        big.tables["items"] = table  # the 1M-row table built above (all rows changed)
        big.keymaps["items"] = KeyMap()
        for key in table.keys().tolist():
            big.keymaps["items"].restore(key, f"item-{key}")
        store = RocksStore(Path(tmp) / "db")
        started = time.perf_counter()
        written = checkpoint(big, store)
        seconds = time.perf_counter() - started
        results["checkpoint_rows"] = written
        results["checkpoint_rows_per_s"] = written / seconds
        for i in range(len(batches)):  # a second's worth of updates, then its checkpoint
            ours(i)
        touched = len(table.drain_changes())
        for i in range(len(batches)):
            ours(i)
        started = time.perf_counter()
        written = checkpoint(big, store)
        results["incremental_checkpoint_rows"] = written
        results["incremental_checkpoint_seconds"] = time.perf_counter() - started
        store.close()
        del touched
        again = ParameterServer([TableConfig("items", dim=dim, initial_capacity=rows)])
        store = RocksStore(Path(tmp) / "db")
        started = time.perf_counter()
        load_tables(again, store)
        results["restore_rows_per_s"] = again.size("items") / (time.perf_counter() - started)
        store.close()

    base = results["torch_adagrad_rows_per_s"]
    print(f"\n{'contender':44s} {'row updates/s':>14s} {'vs torch Adagrad':>17s}")
    for name, key in (
        ("torch Embedding(sparse)+Adagrad  [baseline]", "torch_adagrad_rows_per_s"),
        ("torch Embedding(sparse)+SparseAdam", "torch_sparseadam_rows_per_s"),
        ("streambed table, uint64 ids, in-process", "inprocess_rows_per_s"),
        ("streambed PS, string ids, in-process", "inprocess_string_ids_rows_per_s"),
    ):
        print(f"{name:44s} {results[key]:14,.0f} {results[key] / base:16.2f}x")
    print(
        f"\nbytes/row {results['bytes_per_row']:.1f} vs raw {4 * dim} "
        f"({results['bytes_per_row'] / (4 * dim):.2f}x); string ids add "
        f"{results['keymap_bytes_per_string_id']:.0f} B/id for the key map"
    )
    print(f"checkpoint to RocksDB: {results['checkpoint_rows']:,} rows at "
          f"{results['checkpoint_rows_per_s']:,.0f} rows/s; restore "
          f"{results['restore_rows_per_s']:,.0f} rows/s; incremental "
          f"{results['incremental_checkpoint_rows']:,} rows in "
          f"{results['incremental_checkpoint_seconds']:.3f} s")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ps.json").write_text(json.dumps({"args": vars(args), **results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
