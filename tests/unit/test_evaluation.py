"""The prequential harness and the contenders, on small generated streams (no broker)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from evaluation.data import ItemArrival, generated_stream, read_jsonl, split, write_jsonl
from evaluation.models import (
    ALS,
    GeneratorOracle,
    ItemKNN,
    Popularity,
    SplitStreambed,
    Streambed,
)
from evaluation.prequential import (
    EvalConfig,
    EvalResult,
    mcnemar_p,
    prequential,
    signflip_p,
    top_k,
)
from evaluation.report import pool_targets, write
from evaluation.run import (
    DATASET_LR,
    DATASET_LR_LIVE,
    DATASET_NEGATIVES_LIVE,
    DATASET_POPULAR_MIX,
    DATASET_POPULAR_WINDOW,
    DATASET_TRAIN,
    DATASET_TRAIN_LIVE,
    CachedEncoder,
    RunConfig,
    build_models,
    check_seeds,
    run,
    run_seeds,
)
from services.cli import build_parser
from services.datagen import GeneratorConfig, InteractionGenerator
from stream.bootstrap import BootstrapConfig, bootstrap
from stream.schemas import Interaction
from stream.training import TrainConfig


def fake_encode(texts: list[str]) -> np.ndarray:
    """Bag of hashed words (pure, deterministic): enough to tell themes apart in tests."""
    out = np.zeros((len(texts), 384), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.replace(".", " ").replace(",", " ").split():
            out[row, sum(map(ord, word)) % 384] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


class Recorder:
    """Records what it was shown, to check test-then-train ordering."""

    name = "recorder"

    def __init__(self) -> None:
        self.learnt: list[str] = []
        self.asked_after: list[int] = []
        self.items: list[str] = []

    def add_items(self, ids: list[str], text: np.ndarray, ts: float) -> None:
        self.items.extend(ids)

    def recommend(self, users, sessions, k, candidates):  # type: ignore[no-untyped-def]
        self.asked_after.append(len(self.learnt))
        return [list(candidates[:k]) for _ in users]

    def learn(self, batch: list[Interaction]) -> None:
        self.learnt.extend(e.event_id for e in batch)


def test_each_batch_is_tested_before_it_is_learnt() -> None:
    stream = [ItemArrival(f"i{n}", f"item {n}", 0.0) for n in range(3)] + [
        Interaction(f"e{n}", "u", f"i{n % 3}", "click", float(n)) for n in range(6)
    ]
    rec = Recorder()
    result = prequential(stream, [rec], fake_encode, EvalConfig(k=2, batch_size=2))
    assert rec.asked_after == [0, 2, 4]  # asked before each batch was learnt
    assert rec.learnt == [f"e{n}" for n in range(6)]
    # the list is always [i0, i1, i2]: targets i0, i1, i2, ... rank 0, 1, 2; a hit is rank < 2
    assert result.rank["recorder"] == [0, 1, 2, 0, 1, 2]
    summary = result.summary()["recorder"]
    assert summary["recall"] == pytest.approx(4 / 6)
    assert summary["ndcg"] == pytest.approx((2 * 1.0 + 2 / math.log2(3)) / 6)
    assert result.item_count == [0, 0, 0, 1, 1, 1]
    assert result.user_events == [0, 0, 2, 2, 4, 4]  # what the models had learnt from u
    assert [row["targets"] for row in result.by_user()["recorder"]] == [2, 4, 0, 0]
    first = result.cold_start()["recorder"][0]  # targets whose item had no earlier event
    assert (first["recall"], first["recall_deep"], first["median_rank"]) == (2 / 3, 1.0, 1.0)


class BatchRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.candidates_seen: list[list[str]] = []

    def recommend(self, users, sessions, k, candidates):  # type: ignore[no-untyped-def]
        self.candidates_seen.append(list(candidates))
        return super().recommend(users, sessions, k, candidates)

    def learn(self, batch: list[Interaction]) -> None:
        self.batches.append([e.event_id for e in batch])
        super().learn(batch)


def test_an_item_arriving_inside_a_batch_does_not_cut_it() -> None:
    # i1 arrives after e1: e0-e1 are tested without it, e2-e3 with it, and the model learns
    # e0-e3 as one batch of 4 (as a worker's micro-batch), then e4-e5
    stream: list[Interaction | ItemArrival] = [ItemArrival("i0", "zero", 0.0)]
    stream += [Interaction(f"e{n}", "u", "i0", "click", float(n)) for n in range(2)]
    stream += [ItemArrival("i1", "one", 2.0)]
    stream += [Interaction(f"e{n}", "u", "i1", "click", float(n)) for n in range(2, 6)]
    rec = BatchRecorder()
    result = prequential(stream, [rec], fake_encode, EvalConfig(k=2, batch_size=4))
    assert rec.batches == [["e0", "e1", "e2", "e3"], ["e4", "e5"]]
    assert rec.candidates_seen == [["i0"], ["i0", "i1"], ["i0", "i1"]]
    assert rec.asked_after == [0, 0, 4]  # the second test waited for nothing, learnt nothing
    assert result.summary()["recorder"]["targets"] == 6
    # an item's earlier positives count what was tested before, learnt or not
    assert result.item_count == [0, 0, 0, 0, 2, 2]


def test_batch_ms_closes_a_batch_by_event_time_as_the_worker_window_does() -> None:
    # events at 0, 0.01, 0.2, 0.21, 0.22 s; a 50 ms window cuts [e0 e1] [e2 e3 e4] (the
    # worker's Batcher on the same timestamps), size 2 then cuts [e2 e3] [e4]
    stream: list[Interaction | ItemArrival] = [ItemArrival("i0", "zero", 0.0)]
    stream += [Interaction(f"e{n}", "u", "i0", "click", t)
               for n, t in enumerate([0.0, 0.01, 0.2, 0.21, 0.22])]  # fmt: skip
    by_size = BatchRecorder()
    prequential(stream, [by_size], fake_encode, EvalConfig(k=1, batch_size=256))
    assert by_size.batches == [["e0", "e1", "e2", "e3", "e4"]]
    live = BatchRecorder()
    result = prequential(stream, [live], fake_encode, EvalConfig(k=1, batch_size=3, batch_ms=50))
    assert live.batches == [["e0", "e1"], ["e2", "e3", "e4"]]
    assert result.batches == 2
    assert live.asked_after == [0, 2]  # e2-e4 were tested after e0-e1 were learnt
    sized = BatchRecorder()
    prequential(stream, [sized], fake_encode, EvalConfig(k=1, batch_size=2, batch_ms=50))
    assert sized.batches == [["e0", "e1"], ["e2", "e3"], ["e4"]]


def test_events_on_items_without_content_are_not_targets() -> None:
    stream = [
        ItemArrival("a", "a", 0.0),
        Interaction("e1", "u", "ghost", "click", 1.0),
        Interaction("e2", "u", "a", "view", 2.0),
        Interaction("e3", "u", "a", "like", 3.0),
    ]
    result = prequential(stream, [Recorder()], fake_encode, EvalConfig(k=1, batch_size=10))
    assert result.summary()["recorder"]["targets"] == 1  # views and unknown items don't count


def test_exclude_seen_drops_what_the_user_had_from_every_list() -> None:
    items = [ItemArrival(f"i{n}", f"item {n}", 0.0) for n in range(4)]
    history = [Interaction("h", "u", "i0", "skip", 0.5)]  # seen before the stream
    stream = items + [
        Interaction("e1", "u", "i1", "click", 1.0),
        Interaction("e2", "v", "i1", "click", 1.5),
        Interaction("e3", "u", "i2", "like", 2.0),
    ]
    on = EvalConfig(k=1, batch_size=2, exclude_seen=True)
    result = prequential(stream, [Recorder()], fake_encode, on, prior_seen=history)
    # the list is [i0, i1, i2, i3]; u had i0 (history), then i1: i1 ranks 0, then i2 ranks 0;
    # v had nothing, so i1 ranks 1 for v
    assert result.rank["recorder"] == [0, 1, 0]
    off = prequential(stream, [Recorder()], fake_encode, EvalConfig(k=1, batch_size=2))
    assert off.rank["recorder"] == [1, 1, 2]


def test_cold_start_buckets_and_rolling_recall() -> None:
    stream = [ItemArrival("a", "a", 0.0)] + [
        Interaction(f"e{n}", "u", "a", "click", float(n)) for n in range(30)
    ]
    result = prequential(stream, [Recorder()], fake_encode, EvalConfig(k=1, batch_size=1))
    rows = {r["bucket"]: r["targets"] for r in result.cold_start()["recorder"]}
    assert rows == {"0": 1, "1": 1, "2-4": 3, "5-9": 5, "10-19": 10, "20-49": 10, "50+": 0}
    assert result.over_time(10)["recorder"].tolist() == [1.0] * 21
    total = result.cold_start(cold_total=True)["recorder"][-1]
    assert (total["bucket"], total["targets"], total["hits"]) == ("<5 (all cold)", 5, 5)


def test_paired_counts_discordant_targets_and_tests_them_exactly() -> None:
    from scipy.stats import binomtest

    # 10 targets only a hits, 2 only b, 5 both, 3 neither; the first 4 are on a cold item
    ranks_a = [0] * 10 + [-1] * 2 + [0] * 5 + [-1] * 3
    ranks_b = [-1] * 10 + [0] * 2 + [0] * 5 + [3] * 3
    result = EvalResult(k=1, models=["a", "b"], item_count=[0] * 4 + [7] * 16)
    result.rank.update(a=ranks_a, b=ranks_b)  # rank 3 is within depth, a miss at k = 1
    pair = result.paired("a", "b")
    assert (pair["wins"], pair["losses"], pair["targets"]) == (10, 2, 20)
    assert pair["diff"] == pytest.approx(8 / 20)
    assert pair["p"] == pytest.approx(binomtest(10, 12).pvalue)  # 0.039
    assert result.paired("b", "a")["p"] == pytest.approx(pair["p"])
    cold = result.paired("a", "b", below=5)
    assert (cold["wins"], cold["losses"], cold["targets"]) == (4, 0, 4)
    assert cold["p"] == pytest.approx(2 * 0.5**4)
    assert result.paired("a", "a")["p"] == 1.0  # no discordant targets
    deep = result.paired("a", "b", k=5)  # b's rank-3 targets are hits at 5: 3 more losses
    assert (deep["wins"], deep["losses"]) == (10, 5)


def test_the_generator_oracle_ranks_by_the_true_choice_probabilities() -> None:
    config = GeneratorConfig(users=40, items=120, clusters=3, seed=4)
    stream = generated_stream(users=40, items=120, clusters=3, events=4000, seed=4)
    oracle = GeneratorOracle(InteractionGenerator(config))
    result = prequential(stream, [oracle, Popularity()], fake_encode, EvalConfig(k=10))
    summary = result.summary()
    # it knows each user's themes: above one list for everybody (0.64 vs 0.54 here)
    assert summary["oracle"]["recall"] > summary["popularity"]["recall"] + 0.05
    lists = oracle.recommend(["u1", "u1"], {}, 3, ["i1", "i2", "i3", "i4"])
    assert lists[0] == lists[1] and len(lists[0]) == 3
    assert oracle.recommend([], {}, 3, ["i1", "i2"]) == []  # nobody asked: nothing scored


def test_top_k_orders_best_first() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.7]])
    assert top_k(scores, ["a", "b", "c", "d"], 3) == [["b", "d", "c"]]
    assert top_k(scores, ["a", "b", "c", "d"], 10) == [["b", "d", "c", "a"]]


def test_popularity_forgets_outside_its_window() -> None:
    pop = Popularity(window=2)
    pop.learn([Interaction(f"e{n}", "u", i, "click", 0.0) for n, i in enumerate("aab")])
    assert pop.counts.get("a") == 1 and pop.counts.get("b") == 1
    pop.learn([Interaction("s", "u", "c", "skip", 0.0)])  # skips are not popularity
    assert pop.counts.get("c") == 0


def test_popularity_kept_between_calls_matches_a_fresh_count() -> None:
    rng = np.random.default_rng(3)
    pop = Popularity(window=50)
    candidates = [f"i{n}" for n in range(20)]
    for step in range(30):
        if step % 7 == 6:  # an arrival: the candidates grow
            candidates.append(f"i{len(candidates)}")
        batch = [Interaction(f"e{step}-{n}", "u", f"i{rng.integers(len(candidates))}",
                             "click" if n % 5 else "skip", 0.0) for n in range(12)]  # fmt: skip
        before = pop.ranked(5, candidates)
        assert pop.ranked(5, candidates) == before  # kept until something changes
        pop.learn(batch)  # evicts from the window after the first few batches
        fresh = Popularity(window=50)
        fresh.counts = pop.counts
        np.testing.assert_array_equal(pop.scores(candidates), fresh.scores(candidates))
        assert pop.ranked(5, candidates) == fresh.ranked(5, candidates)
    assert pop.scores(["i3", "i1"]).tolist() == [pop.counts.get("i3"), pop.counts.get("i1")]


def test_als_retrains_and_serves_known_users() -> None:
    # user u clicks items i(2u) and i(2u + 1)
    events = [Interaction(f"e{n}", f"u{n % 4}", f"i{(n % 4) * 2 + (n // 4) % 2}", "click", n)
              for n in range(200)]  # fmt: skip
    als = ALS(events[:100], factors=4, retrain_every=50, iterations=5)
    als.learn(events[100:160])
    assert als.retrains == 2
    recs = als.recommend(["u1", "stranger"], {}, 2, [f"i{n}" for n in range(8)])
    assert set(recs[0]) == {"i2", "i3"}  # u1's items
    assert len(recs[1]) == 2  # popularity for a user ALS has never seen


def test_item_knn_follows_each_batch_and_leans_to_popular_items_as_alpha_falls() -> None:
    # u0 takes i0, i1, i3; u1 takes i0, i1; five others take i0 and i2
    took = {"u0": (0, 1, 3), "u1": (0, 1), **{f"p{n}": (0, 2) for n in range(5)}}
    events = [Interaction(f"{u}-{i}", u, f"i{i}", "click", 0.0) for u, items in took.items()
              for i in items]  # fmt: skip
    candidates = ["i0", "i1", "i2", "i3"]
    cosine, popular = ItemKNN(events, alpha=0.5), ItemKNN(events, alpha=0.0)
    assert cosine.recommend(["u9"], {}, 2, candidates) == [["i0", "i2"]]  # unknown: popular
    for knn in (cosine, popular):
        knn.learn([Interaction("u9-1", "u9", "i1", "click", 1.0)])  # known after one batch
    # from i1: i3 shares 1 of its 1 user, i0 2 of its 7; i2 none (last, as the tail)
    assert cosine.recommend(["u9"], {}, 4, candidates) == [["i1", "i3", "i0", "i2"]]
    assert popular.recommend(["u9"], {}, 4, candidates) == [["i1", "i0", "i3", "i2"]]
    with pytest.raises(ValueError, match="alpha"):
        ItemKNN(events, alpha=1.5)


def _small_boot(epochs: int = 1):  # type: ignore[no-untyped-def]
    """A small generated stream split in half, and a bootstrap on its first half."""
    stream = generated_stream(users=40, items=80, clusters=3, events=3000, seed=2)
    history, rest = split(stream, 0.5)
    arrivals = {r.item_id: r.text for r in history if isinstance(r, ItemArrival)}
    content = dict(zip(arrivals, fake_encode(list(arrivals.values())), strict=True))
    events = [r for r in history if isinstance(r, Interaction)]
    return history, rest, bootstrap(events, content, BootstrapConfig(dim=8, epochs=epochs))


def test_streambed_online_learns_and_frozen_does_not() -> None:
    history, rest, boot = _small_boot(epochs=2)

    online = Streambed("online", boot, TrainConfig(dim=8))
    frozen = Streambed("frozen", boot, TrainConfig(dim=8), online=False)
    before = frozen.trainer.ps.pull("items", boot.items[:5])[0].copy()
    seed_items = [r for r in history if isinstance(r, ItemArrival)]
    result = prequential(seed_items + rest, [online, frozen], CachedEncoder(fake_encode),
                         EvalConfig(k=10, batch_size=64))  # fmt: skip
    np.testing.assert_array_equal(frozen.trainer.ps.pull("items", boot.items[:5])[0], before)
    assert not np.array_equal(online.trainer.ps.pull("items", boot.items[:5])[0], before)
    summary = result.summary()
    assert summary["online"]["targets"] == summary["frozen"]["targets"] > 100
    assert 0.0 < summary["frozen"]["recall"] <= 1.0


def test_streambed_appends_arrivals_to_its_item_matrix_and_rereads_what_learning_moved() -> None:
    history, rest, boot = _small_boot(epochs=1)
    model = Streambed("online", boot, TrainConfig(dim=8, taste_weight=0.5, negatives=4))
    candidates = list(boot.items)
    matrix, _ = model._items(candidates)
    fresh = ["new-a", "new-b"]
    model.add_items(fresh, fake_encode(["red kettle", "blue kettle"]), ts=1e9)
    grown, hit = model._items(candidates + fresh)
    full, full_hit = model.trainer.item_vectors(candidates + fresh)
    assert grown.shape == (len(candidates) + 2, 16) and hit[-2:].all()
    np.testing.assert_allclose(grown, full, atol=1e-6)
    np.testing.assert_array_equal(hit, full_hit)
    read: list[int] = []
    real = model.trainer.item_vectors
    model.trainer.item_vectors = lambda ids: (read.append(len(ids)), real(ids))[1]  # type: ignore[method-assign]
    model.learn([e for e in rest if isinstance(e, Interaction)][:8])
    again, _ = model._items(candidates + fresh)
    np.testing.assert_allclose(again, real(candidates + fresh)[0], atol=1e-6)
    assert not np.allclose(again, grown)  # learning moved vectors: read again, not kept
    assert 0 < sum(read) < len(candidates) // 2  # only the items the step touched
    assert model._items(candidates + fresh)[0] is again and len(read) == 1  # then kept


def test_run_writes_the_table_and_plots(tmp_path: Path) -> None:
    cfg = RunConfig(out=tmp_path / "eval", events=2000, users=30, items=60, clusters=3,
                    epochs=1, dim=8, als_every=500)  # fmt: skip
    out = run(cfg, encode=fake_encode)
    for path in out["paths"]:
        assert path.exists() and path.stat().st_size > 0
    assert (tmp_path / "eval" / "recall_over_time.png").read_bytes()[:4] == b"\x89PNG"
    body = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(body["summary"]) >= {
        "online",
        "online, no session skip-gram",
        "frozen bootstrap",
        "popularity",
        "online, no blending",
    }  # the ablations too
    table = (tmp_path / "eval" / "table.md").read_text()
    assert "| online |" in table and "interactions before" in table
    # every contender paired with the online learner, on all targets and on cold ones
    assert set(body["paired"]) == set(body["summary"]) - {"online"}
    pair = body["paired"]["popularity"]
    assert set(pair) == {"all", "cold", "cold_mid"} and 0.0 <= pair["all"]["p"] <= 1.0
    assert pair["all"]["targets"] == body["summary"]["online"]["targets"]
    assert "McNemar" in table and "| popularity |" in table.split("McNemar")[1]
    by_user = body["by_user"]["online"]  # recall by what the models had learnt of the user
    assert sum(row["targets"] for row in by_user) == body["summary"]["online"]["targets"]
    assert "user's learnt events" in table


def test_run_seeds_pools_independent_streams_and_refuses_fixed_datasets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = RunConfig(out=tmp_path / "eval", events=1200, users=20, items=50, clusters=3,
                    epochs=1, dim=8, als_every=400)  # fmt: skip
    pooled = run_seeds(cfg, [3, 5], encode=fake_encode)
    per_seed = {s: json.loads((tmp_path / "eval" / f"seed-{s}" / "results.json").read_text())
                for s in (3, 5)}  # fmt: skip
    assert pooled["seeds"] == [3, 5]
    assert per_seed[3]["summary"]["online"] != per_seed[5]["summary"]["online"]  # two streams
    for name, parts in pooled["paired"].items():
        for part, row in parts.items():
            runs = [per_seed[s]["paired"][name][part] for s in (3, 5)]
            assert row["wins"] == sum(r["wins"] for r in runs)
            assert row["losses"] == sum(r["losses"] for r in runs)
            assert row["targets"] == sum(r["targets"] for r in runs)
    mean = pooled["recall"]["popularity"]["mean"]
    assert mean == pytest.approx(sum(per_seed[s]["summary"]["popularity"]["recall"]
                                     for s in (3, 5)) / 2)  # fmt: skip
    assert json.loads((tmp_path / "eval" / "pooled.json").read_text()) == pooled
    assert "| popularity |" in (tmp_path / "eval" / "pooled.md").read_text()
    with pytest.raises(ValueError, match="two different seeds"):
        check_seeds(cfg, [4, 4])
    args = ["evaluate", "--seeds", "0,x", "--out", str(tmp_path / "no")]
    parsed = build_parser({}).parse_args(args)
    assert parsed.func(parsed) == 2 and "whole numbers" in capsys.readouterr().err
    args = ["evaluate", "--dataset", "movielens", "--seeds", "0,1", "--pool-only",
            "--out", str(tmp_path / "no")]  # fmt: skip
    parsed = build_parser({}).parse_args(args)
    assert parsed.func(parsed) == 2 and "run that seed first" in capsys.readouterr().err
    parsed = build_parser({}).parse_args(["evaluate", "--pool-only"])
    assert parsed.func(parsed) == 2 and "--seeds" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
    again = run_seeds(cfg, [3, 5], pool_only=True)  # the generator's runs, pooled again
    assert again == pooled
    # a --sweep run of another seed pools with them, over the models all three have
    run(replace(cfg, sweep=True, seed=7, out=tmp_path / "eval" / "seed-7"), encode=fake_encode)
    mixed = run_seeds(cfg, [3, 5, 7], pool_only=True)
    assert set(mixed["recall"]) == {"online", "online, no blending", "popularity"}
    seven = json.loads((tmp_path / "eval" / "seed-7" / "results.json").read_text())
    wins = [r["paired"]["popularity"]["all"]["wins"] for r in (mixed, pooled, seven)]
    assert wins[0] == wins[1] + wins[2]
    # one at other settings does not: it would pool two learners as one
    run(replace(cfg, sweep=True, seed=7, lr=0.5, out=tmp_path / "eval" / "seed-7"),
        encode=fake_encode)  # fmt: skip
    with pytest.raises(ValueError, match="differ in more than the seed \\(lr: None / 0.5"):
        run_seeds(cfg, [3, 5, 7], pool_only=True)


def test_run_seeds_pools_a_fixed_dataset_target_by_target(tmp_path: Path) -> None:
    """The seeds of one dataset share their targets: each target is one unit, counted by
    the seeds on which online hits it less those on which the contender does."""
    path = tmp_path / "s.jsonl"
    write_jsonl(generated_stream(users=20, items=50, clusters=3, events=1200, seed=2), path)
    cfg = RunConfig(out=tmp_path / "eval", events_file=path, epochs=1, dim=8, als_every=400,
                    sweep=True)  # fmt: skip
    pooled = run_seeds(cfg, [3, 5, 8], encode=fake_encode)
    assert pooled["shared_targets"] and pooled["seeds"] == [3, 5, 8]
    runs = [np.load(tmp_path / "eval" / f"seed-{s}" / "targets.npz") for s in (3, 5, 8)]
    assert all(np.array_equal(r["position"], runs[0]["position"]) for r in runs)
    models = [str(m) for m in runs[0]["models"]]
    hits = {m: np.stack([(r["rank"][n] >= 0) & (r["rank"][n] < 10) for r in runs])
            for n, m in enumerate(models)}  # fmt: skip
    balance = hits["online"].sum(axis=0) - hits["popularity"].sum(axis=0)
    row = pooled["paired"]["popularity"]["all"]
    assert (row["wins"], row["losses"]) == ((balance > 0).sum(), (balance < 0).sum())
    assert row["p"] == signflip_p(balance) and row["p_sign"] == mcnemar_p(
        row["wins"], row["losses"]
    )
    assert row["wins_summed"] == sum(
        json.loads((tmp_path / "eval" / f"seed-{s}" / "results.json").read_text())
        ["paired"]["popularity"]["all"]["wins"] for s in (3, 5, 8))  # fmt: skip
    assert row["wins"] <= row["wins_summed"] and row["targets"] == runs[0]["rank"].shape[1]
    assert (tmp_path / "eval" / "pooled.md").read_text().count("permutation test") == 1
    assert run_seeds(cfg, [3, 5, 8], pool_only=True) == pooled
    other = RunConfig(out=tmp_path / "gen", events=1200, users=20, items=50, clusters=3,
                      epochs=1, dim=8, sweep=True, seed=3)  # fmt: skip
    run(replace(other, out=tmp_path / "eval" / "seed-9"), encode=fake_encode)
    with pytest.raises(ValueError, match="events_file=None"):  # another stream's run in the way
        run_seeds(cfg, [3, 9], pool_only=True)
    with pytest.raises(ValueError, match="same targets"):  # and by its targets, if asked
        pool_targets({s: tmp_path / "eval" / f"seed-{s}" for s in (3, 9)})
    with pytest.raises(ValueError, match="--events-file"):  # pooled as generated streams: no
        run_seeds(replace(cfg, events_file=None), [3, 5], pool_only=True)


def test_run_config_uses_the_dataset_settings_unless_told_otherwise() -> None:
    # the generator's are the worker's defaults but for its content taste (two flags: the
    # worker's --taste-weight and the replica's --dim must agree, so the worker's is off)
    assert RunConfig().train() == TrainConfig(seed=0, **DATASET_TRAIN["generator"])
    assert RunConfig(taste_weight=0.0).train() == TrainConfig(seed=0)
    movielens = RunConfig(dataset="movielens").train()
    assert movielens.lr == DATASET_LR["movielens"]
    assert all(getattr(movielens, k) == v for k, v in DATASET_TRAIN["movielens"].items())
    given = RunConfig(dataset="movielens", lr=0.3, session_weight=0.0).train(blend_k=0.0)
    assert (given.lr, given.session_weight, given.blend_k) == (0.3, 0.0, 0.0)
    assert RunConfig().mix == 0.0 and RunConfig(dataset="movielens").mix == DATASET_POPULAR_MIX[
        "movielens"] > 0  # fmt: skip
    assert RunConfig(dataset="movielens", popular_mix=0.0).mix == 0.0
    # batches close by size alone unless a window is given, as `evaluate --batch-ms` gives it
    assert RunConfig().eval_config().batch_ms is None
    assert build_parser({}).parse_args(["evaluate"]).batch_ms is None
    parsed = build_parser({}).parse_args(["evaluate", "--batch-ms", "50"])
    assert RunConfig(batch_ms=parsed.batch_ms).eval_config().batch_ms == 50.0
    # the rate is chosen per cadence: per-event batches want their own on MovieLens
    live = RunConfig(dataset="movielens", batch_ms=50.0)
    assert live.train().lr == DATASET_LR_LIVE["movielens"] != movielens.lr
    assert RunConfig(batch_ms=50.0).train().lr == DATASET_LR["generator"] == TrainConfig.lr
    assert RunConfig(dataset="movielens", batch_ms=50.0, lr=0.3).train().lr == 0.3
    # and so are the sampled negatives: by-size batches keep the uniform draws
    assert movielens.negative_sampler == "uniform" == TrainConfig.negative_sampler
    assert live.train().negative_sampler == DATASET_NEGATIVES_LIVE["movielens"] == "frequency"
    parsed = build_parser({}).parse_args(["evaluate", "--negative-sampler", "uniform"])
    given_live = RunConfig(dataset="movielens", batch_ms=50.0,
                           negative_sampler=parsed.negative_sampler)  # fmt: skip
    assert given_live.train().negative_sampler == "uniform"
    # and so is how the content half is weighed: calibrated on MovieLens live, at its weight
    assert live.train().calibrated and not movielens.calibrate
    assert live.train().taste_weight == DATASET_TRAIN_LIVE["movielens"]["taste_weight"]
    assert not RunConfig(batch_ms=50.0).train().calibrate
    assert not live.train(blend_k=0.0).calibrated  # no blending, no halves to weigh
    assert not live.train(taste_weight=0.0).calibrate  # no content taste: nothing to calibrate
    parsed = build_parser({}).parse_args(["evaluate", "--no-calibrate", "--taste-weight", "0.6"])
    off = RunConfig(dataset="movielens", batch_ms=50.0, calibrate=parsed.calibrate,
                    taste_weight=parsed.taste_weight).train()  # fmt: skip
    assert not off.calibrate and off.taste_weight == DATASET_TRAIN["movielens"]["taste_weight"]
    assert build_parser({}).parse_args(["evaluate"]).calibrate is None


def test_popular_mix_gives_users_with_few_updates_part_of_the_popular_list() -> None:
    history, rest, boot = _small_boot()
    mixed = Streambed("mixed", boot, TrainConfig(dim=8), popular_mix=1e9)  # share ~0
    plain = Streambed("plain", boot, TrainConfig(dim=8))
    events = [r for r in rest if isinstance(r, Interaction)][:500]
    for model in (mixed, plain):
        model.learn(events)
    users = list(dict.fromkeys(e.user_id for e in events))[:5]
    candidates = list(boot.items)
    popular = mixed.fallback.ranked(5, candidates)
    # the personal list leads (its top item), popular fills the rest
    for got, own in zip(mixed.recommend(users, {}, 5, candidates),
                        plain.recommend(users, {}, 5, candidates), strict=True):  # fmt: skip
        assert got == [own[0], *[i for i in popular if i != own[0]][:4]] and got != own
    # a small m: well-trained users are served (almost) only from their vectors
    some = Streambed("some", boot, TrainConfig(dim=8), popular_mix=1e-9)
    some.learn(events)
    assert some.recommend(users, {}, 5, candidates) == plain.recommend(users, {}, 5, candidates)
    models = [m.name for m in build_models(boot, history, RunConfig(dataset="movielens", dim=8))]
    assert "online, no popularity mix" in models
    assert "online, no popularity mix" not in [
        m.name for m in build_models(boot, history, RunConfig(dim=8))
    ]
    # a sweep keeps the two bars' comparisons, with the same learners the full run has
    cfg = RunConfig(dataset="movielens", dim=8, sweep=True)
    swept = build_models(boot, history, cfg)
    assert [m.name for m in swept] == ["online", "online, no blending", "popularity"]
    full = {m.name: m for m in build_models(boot, history, replace(cfg, sweep=False))}
    for m in swept[:2]:
        assert isinstance(m, Streambed) and m.trainer.config == full[m.name].trainer.config
    assert build_parser({}).parse_args(["evaluate", "--sweep"]).sweep


def test_every_model_falls_back_on_the_baselines_popularity_history_included() -> None:
    # the online learner's fallback used to start empty, so early in the stream it served
    # a fresher popular list than the baseline's (which counts the history): on MovieLens
    # that alone was its edge over popularity
    history, rest, boot = _small_boot()
    cfg = RunConfig(dim=8, popular_window=50)
    models = build_models(boot, history, cfg)
    baseline = next(m for m in models if m.name == "popularity")
    candidates = list(boot.items)
    popular = baseline.recommend(["nobody"], {}, 10, candidates)[0]
    assert len(set(popular)) == 10
    for model in models:
        fallback = getattr(model, "fallback", None)
        if fallback is not None:
            assert fallback.counts.window == 50
            assert fallback.ranked(10, candidates) == popular, model.name
    events = [r for r in rest if isinstance(r, Interaction)][:100]
    for model in models:
        model.learn(events)
    popular = baseline.recommend(["nobody"], {}, 10, candidates)[0]
    assert all(m.fallback.ranked(10, candidates) == popular for m in models
               if hasattr(m, "fallback"))  # fmt: skip


def test_popular_window_is_the_datasets_unless_given() -> None:
    assert RunConfig().window == DATASET_POPULAR_WINDOW["generator"]
    assert RunConfig(dataset="movielens").window == DATASET_POPULAR_WINDOW["movielens"]
    assert RunConfig(events_file=Path("x.jsonl"), dataset="other").window == 20_000
    assert RunConfig(dataset="movielens", popular_window=7).window == 7


def test_stream_files_round_trip_and_reject_bad_lines(tmp_path: Path) -> None:
    stream = generated_stream(users=5, items=20, clusters=2, events=30, seed=0)
    path = tmp_path / "s.jsonl"
    write_jsonl(stream, path)
    back = read_jsonl(path)
    assert [type(r) for r in back] == [type(r) for r in stream]
    assert [r.ts for r in back] == [r.ts for r in stream]
    path.write_text(path.read_text() + '{"event_id": "x", "type": "poke"}\n')
    with pytest.raises(ValueError, match=r"s\.jsonl:\d+"):
        read_jsonl(path)


def test_report_write_survives_empty_buckets(tmp_path: Path) -> None:
    stream = [ItemArrival("a", "a", 0.0), Interaction("e", "u", "a", "click", 1.0)]
    result = prequential(stream, [Recorder()], fake_encode, EvalConfig())
    paths = write(result, {"note": "tiny"}, tmp_path)
    assert all(p.exists() for p in paths)


def test_the_split_learner_with_a_current_view_is_the_single_learner() -> None:
    """The scale-out worker's split (user steps against a view of the item rows, item rows
    moved only by the gradients sent) changes nothing while the view is current (lag 1): the
    same rows and lists as the single learner. A staler view (lag 2) moves them."""
    history, rest, boot = _small_boot(epochs=1)
    config = TrainConfig(dim=8, negatives=8)
    single = Streambed("online", boot, config)
    split_1 = SplitStreambed("split, lag 1", boot, config, lag=1)
    split_2 = SplitStreambed("split, lag 2", boot, config, lag=2)
    seed_items = [r for r in history if isinstance(r, ItemArrival)]
    result = prequential(seed_items + rest, [single, split_1, split_2], CachedEncoder(fake_encode),
                         EvalConfig(k=10, batch_size=64))  # fmt: skip
    items, users = boot.items, split_1.split_ps.local.ids("users")
    np.testing.assert_allclose(split_1.trainer.ps.pull("items", items)[0],
                               single.trainer.ps.pull("items", items)[0], atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(split_1.split_ps.local.pull("users", users)[0],
                               single.trainer.ps.pull("users", users)[0], atol=1e-6)  # fmt: skip
    summary = result.summary()
    assert summary["split, lag 1"] == summary["online"]
    assert not np.allclose(split_2.trainer.ps.pull("items", items)[0],
                           single.trainer.ps.pull("items", items)[0], atol=1e-6)  # fmt: skip
