from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from paramserver.ps import ParameterServer
from services.datagen import GeneratorConfig, InteractionGenerator, ItemInfo
from stream.frequency import ItemFrequency
from stream.model import TwoTower, freeze
from stream.schemas import Interaction
from stream.training import OnlineTrainer, TrainConfig


def ev(n: int, user: str, item: str, kind: str = "click", ts: float = 1.0) -> Interaction:
    return Interaction(f"e{n}", user, item, kind, ts)


def score(trainer: OnlineTrainer, user: str, item: str) -> float:
    return float(trainer.user_vectors([user])[0][0] @ trainer.item_vectors([item])[0][0])


def test_towers_are_frozen_and_never_change_online() -> None:
    trainer = OnlineTrainer.create(TrainConfig(dim=8, negatives=4))
    before = {k: v.clone() for k, v in trainer.towers.state_dict().items()}
    for n in range(20):
        trainer.apply([ev(n, f"u{n % 3}", f"i{n % 5}"), ev(100 + n, "u9", "i1", "skip")])
    assert not any(p.requires_grad for p in trainer.towers.parameters())
    assert not trainer.towers.training
    for key, value in trainer.towers.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_only_the_batch_rows_and_sampled_negatives_move() -> None:
    trainer = OnlineTrainer.create(TrainConfig(dim=8, negatives=0))
    trainer.apply([ev(0, "u0", "i0"), ev(1, "u1", "i1")])
    untouched_user = trainer.ps.pull("users", ["u1"])[0].copy()
    untouched_item = trainer.ps.pull("items", ["i1"])[0].copy()
    stats = trainer.apply([ev(2, "u0", "i0"), ev(3, "u0", "i2")])
    assert set(stats.users) == {"u0"} and set(stats.items) == {"i0", "i2"}
    assert np.array_equal(trainer.ps.pull("users", ["u1"])[0], untouched_user)
    assert np.array_equal(trainer.ps.pull("items", ["i1"])[0], untouched_item)


def test_a_click_raises_and_a_skip_lowers_the_pair_score() -> None:
    trainer = OnlineTrainer.create(TrainConfig(dim=8, negatives=8))
    trainer.apply([ev(n, f"w{n}", f"i{n}") for n in range(20)])  # some items to sample from
    trainer.apply([ev(100, "u", "a"), ev(101, "u", "b")])
    before = score(trainer, "u", "a"), score(trainer, "u", "b")
    trainer.apply([ev(102, "u", "a", "click"), ev(103, "u", "b", "skip")])
    assert score(trainer, "u", "a") > before[0]
    assert score(trainer, "u", "b") < before[1]


def fold_in_pair() -> tuple[OnlineTrainer, OnlineTrainer]:
    """Two identical trainers with some history; the second then folds new users in."""
    trainers = []
    for _ in range(2):
        t = OnlineTrainer.create(TrainConfig(dim=8, negatives=8))
        for start in (0, 100, 200):  # three batches: every w-user has 3 updates, not cold
            t.apply([ev(n, f"w{n % 7}", f"i{n % 100}") for n in range(start, start + 100)])
        trainers.append(t)
    trainers[1].config = replace(trainers[1].config, fold_in=3)
    return trainers[0], trainers[1]


def test_fold_in_moves_only_a_new_users_row_further_toward_their_items() -> None:
    plain, folded = fold_in_pair()
    burst = [ev(1000 + n, "new", f"i{n}") for n in range(6)] + [ev(2000, "w1", "i9")]
    for t in (plain, folded):
        t.apply(burst)
    mean_score = [np.mean([score(t, "new", f"i{n}") for n in range(6)]) for t in (plain, folded)]
    assert mean_score[1] > mean_score[0]
    # the items, and a user past the threshold, get exactly the plain step
    ids = [f"i{n}" for n in range(100)]
    assert np.array_equal(plain.ps.pull("items", ids)[0], folded.ps.pull("items", ids)[0])
    assert np.array_equal(plain.ps.pull("users", ["w1"])[0], folded.ps.pull("users", ["w1"])[0])
    # 1 step + 3 fold-in steps for the new user
    assert folded.ps.meta("users", ["new"])[0].tolist() == [4]
    assert plain.ps.meta("users", ["new"])[0].tolist() == [1]


def test_fold_in_is_deterministic() -> None:
    a, b = fold_in_pair()[1], fold_in_pair()[1]
    burst = [ev(1000 + n, "new", f"i{n}") for n in range(6)]
    a.apply(burst)
    b.apply(burst)
    assert np.array_equal(a.ps.pull("users", ["new"])[0], b.ps.pull("users", ["new"])[0])


def test_zero_weight_events_are_ignored() -> None:
    trainer = OnlineTrainer.create(TrainConfig(dim=4, type_weights={"view": 0.0, "click": 1.0}))
    stats = trainer.apply([ev(0, "u", "i", "view")])
    assert stats.positives == 0 and trainer.ps.size("users") == 0


def test_reads_create_no_rows() -> None:
    trainer = OnlineTrainer.create(TrainConfig(dim=4))
    _, hit = trainer.item_vectors(["nope"])
    _, user_hit = trainer.user_vectors(["nobody"])
    assert not hit[0] and not user_hit[0]
    assert trainer.ps.size("items") == 0 and trainer.ps.size("users") == 0


def test_dimension_mismatch_is_refused() -> None:
    cfg = TrainConfig(dim=4)
    with pytest.raises(ValueError, match="dimension"):
        OnlineTrainer(ParameterServer(cfg.tables()), TwoTower.create(8), cfg)


def test_freeze_is_for_good() -> None:
    towers = freeze(TwoTower.create(4))
    rows = torch.randn(2, 4, requires_grad=True)
    towers.users(rows).sum().backward()
    assert rows.grad is not None
    assert all(p.grad is None for p in towers.parameters())


def test_online_learning_recovers_user_tastes_from_the_generator() -> None:
    """Behaviour, not speed: after one pass, users' top-10 lean to their taste clusters."""
    gen = InteractionGenerator(GeneratorConfig(users=200, items=800, seed=3))
    events = [r for r in gen.replay(12_000) if not isinstance(r, ItemInfo)]
    trainer = OnlineTrainer.create(TrainConfig(dim=32))
    for start in range(0, len(events), 256):
        trainer.apply(events[start : start + 256])
    items = trainer.ps.ids("items")
    item_vecs, _ = trainer.item_vectors(items)
    clusters = np.array([gen.cluster_of(i) for i in items])
    activity = Counter(e.user_id for e in events)
    shares = []
    for user, count in activity.items():
        if count < 10:
            continue
        top = np.argsort(-(item_vecs @ trainer.user_vectors([user])[0][0]))[:10]
        u = int(user[1:])
        tastes = {gen.user_primary[u], gen.user_secondary[u]}
        shares.append(np.mean([clusters[j] in tastes for j in top]))
    # a random top-10 would hold about 2/8 = 25% of a user's two taste clusters
    assert np.mean(shares) > 0.5


def test_item_frequency_follows_counts_and_decays() -> None:
    freq = ItemFrequency()
    freq.observe(["a"] * 8 + ["b"] * 2)
    p = freq.probability(["a", "b", "c"])
    assert p[0] > p[1] > p[2] > 0
    decaying = ItemFrequency(decay=0.5)
    decaying.observe(["a"] * 10)
    for _ in range(10):
        decaying.observe(["b"])
    pa, pb = decaying.probability(["a", "b"])
    assert pb > pa
    with pytest.raises(ValueError):
        ItemFrequency(decay=0.0)


def test_frequency_sampling_draws_seen_items_by_their_smoothed_counts() -> None:
    freq = ItemFrequency()
    assert freq.sample(5, np.random.default_rng(0)) == []
    freq.observe(["a"] * 89 + ["b"] * 9)  # smoothed: 90 and 10
    drawn = Counter(freq.sample(20_000, np.random.default_rng(0)))
    assert set(drawn) == {"a", "b"}
    assert drawn["a"] / 20_000 == pytest.approx(0.9, abs=0.01)


def test_frequency_negatives_leave_items_nobody_took_alone() -> None:
    """With ``negative_sampler="frequency"`` a catalogue item no one has taken is never a
    sampled negative, so its row stays where its content put it; uniform sampling moves it."""
    moved = {}
    for sampler in ("uniform", "frequency"):
        t = OnlineTrainer.create(TrainConfig(dim=8, negatives=16, negative_sampler=sampler))
        t.add_content([f"new{n}" for n in range(8)], np.ones((8, 384), np.float32), now=0.0)
        ids = [f"new{n}" for n in range(8)]
        before = t.ps.pull("items", ids)[0].copy()
        for start in range(0, 60, 6):
            t.apply([ev(n, f"u{n % 3}", f"i{n % 10}") for n in range(start, start + 6)])
        moved[sampler] = not np.array_equal(t.ps.pull("items", ids)[0], before)
    assert moved == {"uniform": True, "frequency": False}
    with pytest.raises(ValueError, match="negative_sampler"):
        TrainConfig(negative_sampler="popular")


def test_a_restored_frequency_estimate_draws_the_same_negatives() -> None:
    freq = ItemFrequency()
    freq.observe(["c", "a", "b", "a", "d"])
    counts, _, (total, scale) = freq.drain()
    restored = ItemFrequency()
    restored.restore(dict(reversed(list(counts.items()))), total, scale)  # another order
    draws = [f.sample(50, np.random.default_rng(3)) for f in (freq, restored)]
    assert draws[0] == draws[1]
    freq.forget(["a"])
    assert "a" not in freq.sample(200, np.random.default_rng(0))


def test_frequency_sampling_kept_up_to_date_draws_what_a_rebuilt_estimate_draws() -> None:
    """``sample`` keeps its sorted weights between calls and writes only the moved counts;
    after any mix of observing, decaying, seeding, forgetting and rescaling it draws
    exactly what a freshly restored copy (which rebuilds them) draws."""
    rng = np.random.default_rng(7)
    freq = ItemFrequency(decay=0.9)  # 0.9 ** -263 > 1e12: the counts rescale once in the loop
    for step in range(400):
        freq.observe([f"i{n}" for n in rng.integers(0, 60, size=5)])
        if step % 50 == 0:
            freq.add({"seeded": 3.0})
        if step % 70 == 69:
            freq.forget(["i1", "i2"])
        if step % 3 == 0:  # between draws: 1-3 batches of updates, written incrementally
            fresh = ItemFrequency(decay=0.9)
            fresh.restore(freq._counts, freq._total, freq._scale)
            draws = [f.sample(64, np.random.default_rng(step)) for f in (freq, fresh)]
            assert draws[0] == draws[1]
