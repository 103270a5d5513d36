"""Bootstrap, content blending, similarity settings and the session objective (pure logic)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from paramserver.ps import ParameterServer
from stream.batching import Batcher
from stream.bootstrap import BootstrapConfig, Bootstrapped, bootstrap, load_into
from stream.core import RawRecord, WorkerCore
from stream.model import TwoTower
from stream.schemas import Interaction
from stream.similarity import Similarity, blend_weight, interleave
from stream.training import (
    CONTENT,
    ITEMS,
    TASTE,
    USERS,
    OnlineTrainer,
    StepStats,
    TrainConfig,
)
from stream.vectors import VectorRecord


def clicks(n: int, users: int = 6, items: int = 6, offset: int = 0) -> list[Interaction]:
    # user u likes item i == u (mod items): a learnable diagonal
    return [
        Interaction(
            f"e{offset + k}",
            f"u{k % users}",
            f"i{k % users % items}",
            "click",
            float(offset + k),
            session_id=f"s{k % users}",
        )  # fmt: skip
        for k in range(n)
    ]


def text_of(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def boot() -> Bootstrapped:
    content = dict(zip([f"i{k}" for k in range(6)], text_of(6), strict=True))
    return bootstrap(clicks(600), content, BootstrapConfig(dim=8, epochs=15, batch_size=32))


def test_bootstrap_learns_the_history(boot: Bootstrapped) -> None:
    assert boot.losses[-1] < 0.5 * boot.losses[0]
    trainer = content_trainer()
    load_into(trainer, boot)
    users, _ = trainer.user_vectors([f"u{k}" for k in range(6)])
    items, _ = trainer.item_vectors([f"i{k}" for k in range(6)])
    assert (np.argmax(users @ items.T, axis=1) == np.arange(6)).all()


def test_bootstrap_towers_are_frozen_and_stay_frozen_online(boot: Bootstrapped) -> None:
    assert not any(p.requires_grad for p in boot.towers.parameters())
    trainer = content_trainer()
    load_into(trainer, boot)
    before = {k: v.clone() for k, v in trainer.towers.state_dict().items()}
    trainer.add_content(["new"], text_of(1, seed=3), now=700.0)
    for step in range(5):
        extra = Interaction(f"x{step}", "u1", "new", "like", 2000.0 + step, session_id="s1")
        trainer.apply([*clicks(32, offset=1000 + 32 * step), extra])
    assert not any(p.requires_grad for p in trainer.towers.parameters())
    for key, value in trainer.towers.state_dict().items():
        assert torch.equal(value, before[key]), key
    for key, value in boot.towers.state_dict().items():
        assert torch.equal(value, before[key]), key  # the installed weights are the bootstrap's


def test_bootstrap_checkpoint_round_trip(boot: Bootstrapped, tmp_path: Path) -> None:
    path = tmp_path / "boot.pt"
    boot.save(path)
    back = Bootstrapped.load(path)
    assert back.users == boot.users and back.items == boot.items
    np.testing.assert_array_equal(back.item_rows, boot.item_rows)
    np.testing.assert_array_equal(back.user_counts, boot.user_counts)
    for key, value in boot.towers.state_dict().items():
        assert torch.equal(back.towers.state_dict()[key], value)
    assert not any(p.requires_grad for p in back.towers.parameters())
    with pytest.raises(FileNotFoundError):
        Bootstrapped.load(tmp_path / "missing.pt")


def test_load_into_puts_rows_counts_and_frequency(boot: Bootstrapped) -> None:
    trainer = content_trainer()
    load_into(trainer, boot)
    rows, hit = trainer.ps.pull(ITEMS, boot.items)
    assert hit.all()
    np.testing.assert_array_equal(rows, boot.item_rows)
    updates, _ = trainer.ps.meta(USERS, boot.users)
    assert updates.tolist() == boot.user_counts.astype(int).tolist()
    assert trainer.frequency.counts(["i0"]).tolist() == [100.0]
    with pytest.raises(ValueError, match="dim"):
        load_into(OnlineTrainer.create(TrainConfig(dim=4)), boot)
    with pytest.raises(ValueError, match="similarity"):
        load_into(content_trainer(similarity="dot"), boot)


def test_bootstrap_skips_events_whose_own_weight_is_zero() -> None:
    # weight=0 is a valid event that must not train (it once counted as weight 1 here)
    events = clicks(64) + [Interaction("z", "u0", "muted", "click", 99.0, weight=0.0)]
    boot = bootstrap(events, {}, BootstrapConfig(dim=4, epochs=1, batch_size=16))
    assert "muted" not in boot.items


def test_bootstrap_needs_positives() -> None:
    with pytest.raises(ValueError, match="positive events"):
        bootstrap([Interaction("e", "u", "i", "skip", 1.0)], {}, BootstrapConfig(dim=4))


def content_trainer(**kw: object) -> OnlineTrainer:
    """A trainer whose content projection takes the 16-d test text vectors."""
    cfg = TrainConfig(dim=8, negatives=2, **kw)  # type: ignore[arg-type]
    return OnlineTrainer(ParameterServer(cfg.tables()), TwoTower.create(8, content_dim=16), cfg)


def test_a_new_item_is_served_from_its_content_alone() -> None:
    trainer = content_trainer(content_init=False)
    vecs, hit = trainer.item_vectors(["new", "unknown"])
    assert hit.tolist() == [False, False]
    trainer.add_content(["new"], text_of(1), now=1.0)
    vecs, hit = trainer.item_vectors(["new", "unknown"])
    assert hit.tolist() == [True, False]
    content, _ = trainer._content(["new"])
    np.testing.assert_allclose(vecs[0], content[0], atol=1e-6)
    assert trainer.ps.pull(ITEMS, ["new"])[1].tolist() == [False]  # reading made no row


def test_blend_moves_from_content_to_behaviour_with_interactions() -> None:
    trainer = content_trainer(content_init=False, blend_k=2.0)
    trainer.add_content(["a"], text_of(1), now=1.0)
    content, _ = trainer._content(["a"])
    trainer.apply([Interaction("e0", "u", "a", "click", 2.0)])
    trainer.apply([Interaction("e1", "u", "a", "click", 3.0)])  # n = 2 -> a(n) = 0.5
    rows, _ = trainer.ps.pull(ITEMS, ["a"])
    behaviour = trainer.sim.serve_items(trainer.towers.items(torch.from_numpy(rows))).numpy()
    expected = trainer.sim.serve_items(0.5 * behaviour + 0.5 * content)
    np.testing.assert_allclose(trainer.item_vectors(["a"])[0], expected, atol=1e-5)


def test_without_blending_content_is_never_used() -> None:
    trainer = content_trainer(blend_k=0.0)
    assert trainer.add_content(["a"], text_of(1), now=1.0) == []
    assert trainer.item_vectors(["a"])[1].tolist() == [False]


def test_content_init_gives_a_new_item_its_content_row() -> None:
    trainer = content_trainer(content_init=True)
    assert trainer.add_content(["a"], text_of(1), now=1.0) == ["a"]
    np.testing.assert_array_equal(
        trainer.ps.pull(ITEMS, ["a"])[0], trainer.ps.pull(CONTENT, ["a"])[0]
    )
    assert trainer.add_content(["a"], text_of(1, seed=5), now=2.0) == []  # a row is kept


def test_a_new_user_is_served_from_the_session_items() -> None:
    trainer = content_trainer(content_init=False)
    trainer.add_content(["a", "b"], text_of(2), now=1.0)
    vec, hit = trainer.user_vectors(["stranger"], {"stranger": ["a", "b"]})
    items, _ = trainer.item_vectors(["a", "b"])
    assert hit.tolist() == [True]
    np.testing.assert_allclose(vec[0], trainer.sim.serve_users(items.mean(axis=0)), atol=1e-6)
    assert trainer.user_vectors(["stranger"])[1].tolist() == [False]  # nothing: popularity


def test_session_skip_gram_moves_item_rows_only() -> None:
    trainer = content_trainer(session_weight=1.0)
    batch = [
        Interaction(f"e{k}", "u", f"i{k}", "click", float(k), session_id="s") for k in range(3)
    ]
    trainer.apply(batch)  # admit rows
    plain = content_trainer(session_weight=0.0)
    plain.apply(batch)
    more = [Interaction(f"f{k}", "u", f"i{k}", "click", 10.0 + k, session_id="s") for k in range(3)]
    trainer.apply(more)
    plain.apply(more)
    ids = ["i0", "i1", "i2"]
    assert not np.allclose(trainer.ps.pull(ITEMS, ids)[0], plain.ps.pull(ITEMS, ids)[0])
    np.testing.assert_allclose(trainer.ps.pull(USERS, ["u"])[0], plain.ps.pull(USERS, ["u"])[0])


@pytest.mark.parametrize("kind", ["cosine", "dot", "l2"])
def test_similarity_settings_rank_like_their_definition(kind: str) -> None:
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=(3, 4)), rng.normal(size=(7, 4)) * rng.uniform(0.2, 5, size=(7, 1))
    sim = Similarity(kind)
    scores = sim.scores(sim.serve_users(u), sim.serve_items(v))
    if kind == "cosine":
        truth = (u / np.linalg.norm(u, axis=1, keepdims=True)) @ (
            v / np.linalg.norm(v, axis=1, keepdims=True)
        ).T
    elif kind == "dot":
        truth = u @ v.T
    else:
        truth = -((u[:, None, :] - v[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(scores, truth, atol=1e-9)


def test_norm_power_damps_long_item_vectors() -> None:
    long, short = np.array([[10.0, 0.0]]), np.array([[0.0, 1.0]])
    u = np.array([[0.3, 1.0]])
    for power, winner in ((1.0, 0), (0.0, 1)):
        sim = Similarity("dot", norm_power=power)
        scores = sim.scores(u, sim.serve_items(np.vstack([long, short])))
        assert int(np.argmax(scores)) == winner
    with pytest.raises(ValueError):
        Similarity("manhattan")
    with pytest.raises(ValueError):
        Similarity("dot", norm_power=2.0)


def test_blend_weight_is_monotone_and_bounded() -> None:
    a = blend_weight(np.arange(100), k=5.0)
    assert a[0] == 0 and (np.diff(a) > 0).all() and a[-1] < 1
    assert blend_weight(np.array([0, 3]), k=0).tolist() == [1.0, 1.0]


def test_interleave_gives_personal_its_share_in_order_without_repeats() -> None:
    personal = [f"p{n}" for n in range(10)]
    popular = [f"q{n}" for n in range(10)]
    assert interleave(personal, popular, 1.0, 4) == personal[:4]
    assert interleave(personal, popular, 0.0, 4) == popular[:4]
    for share in (0.2, 0.5, 0.75):
        out = interleave(personal, popular, share, 8)
        mine = [i for i in out if i.startswith("p")]
        assert len(out) == 8 and len(mine) == round(share * 8)
        assert mine == personal[: len(mine)]  # each list keeps its order
        assert [i for i in out if i.startswith("q")] == popular[: 8 - len(mine)]
    # an item both lists hold is placed once, and counts for the list that placed it
    assert interleave(["a", "b", "c"], ["a", "x", "y"], 0.5, 4) == ["a", "x", "b", "y"]
    # a list that runs out leaves its slots to the other; both short: fewer than k
    assert interleave(["a"], ["x", "y", "z"], 1.0, 3) == ["a", "x", "y"]
    assert interleave(["a"], ["a"], 0.5, 3) == ["a"]
    with pytest.raises(ValueError, match="share"):
        interleave(personal, popular, 1.5, 3)


def test_put_sets_rows_without_admission_and_validates() -> None:
    ps = ParameterServer(TrainConfig(dim=4, min_count=3).tables())
    ps.put(ITEMS, ["a", "b"], np.ones((2, 4)), now=5.0, updates=np.array([7, 0]))
    assert ps.pull(ITEMS, ["a", "b"])[1].all()
    assert ps.meta(ITEMS, ["a"])[0].tolist() == [7]
    with pytest.raises(ValueError, match="shape"):
        ps.put(ITEMS, ["c"], np.ones((1, 3)), now=1.0)
    with pytest.raises(ValueError, match="once"):
        ps.put(ITEMS, ["c", "c"], np.ones((2, 4)), now=1.0)
    with pytest.raises(ValueError, match="NaN"):
        ps.put(ITEMS, ["c"], np.full((1, 4), np.nan), now=1.0)
    assert ps.pull(ITEMS, ["c"])[1].tolist() == [False]  # nothing written by refused puts


def test_items_topic_records_become_served_vectors_and_bad_ones_dead_letters() -> None:
    from stream.core import RawRecord, WorkerCore

    core = WorkerCore(content_trainer(content_init=False))
    good = RawRecord(b'{"title": "espresso skillet", "tags": ["kitchen"]}', 5000, key=b"new")
    again = RawRecord(b'{"title": "espresso skillet v2"}', 6000, key=b"new")
    bad = [
        RawRecord(b'{"title": "x"}', 1, key=None),
        RawRecord(b"{oops", 1, key=b"b"),
        RawRecord(b'{"title": "", "tags": []}', 1, key=b"c"),
        RawRecord(b'{"title": 7}', 1, key=b"d"),
        RawRecord(b"[1]", 1, key=b"e"),
    ]
    seen: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        seen.append(texts)
        return text_of(len(texts))

    out = core.add_items([good, *bad, again], encode)
    assert [d.reason for d in out.dead_letters] == [
        "missing_item_id", "bad_json", "missing_content", "bad_content", "not_an_object"
    ]  # fmt: skip
    assert seen == [["espresso skillet v2"]]  # the latest content of an item wins
    assert [(r.key, r.event_ms, r.updates) for r in out.items] == [("new", 6000, 0)]
    np.testing.assert_allclose(out.items[0].vector, core.trainer.item_vectors(["new"])[0][0])
    assert core.trainer.item_vectors(["new"])[1].tolist() == [True]
    assert core.trainer.ps.meta(CONTENT, ["new"])[1].tolist() == [6.0]  # produce time, s
    stamped = RawRecord(b'{"title": "x", "ts": 1700000000.5}', 7000, key=b"new")
    core.add_items([stamped], encode)
    assert core.trainer.ps.meta(CONTENT, ["new"])[1].tolist() == [1700000000.5]  # event time
    late = RawRecord(b'{"title": "x", "ts": "soon"}', 7000, key=b"new")
    assert [d.reason for d in core.add_items([late], encode).dead_letters] == ["bad_ts"]


def test_a_cold_users_first_vector_leans_on_the_batch_items() -> None:
    from stream.core import RawRecord, WorkerCore

    core = WorkerCore(content_trainer(content_init=False, blend_k=5.0))
    core.trainer.add_content(["a"], text_of(1), now=1.0)
    event = b'{"event_id":"e1","user_id":"fresh","item_id":"a","type":"click","ts":5}'
    out = core.process([RawRecord(event, 1000)])
    user = out.users[0]
    rows, _ = core.trainer.ps.pull(USERS, ["fresh"])
    alone = core.trainer.sim.serve_users(core.trainer.towers.users(torch.from_numpy(rows)))
    assert not np.allclose(user.vector, alone.detach().numpy()[0])  # blended with item a


def test_a_restarted_worker_knows_its_rows_came_from_the_bootstrap(boot: Bootstrapped) -> None:
    from paramserver.stores.memory import MemoryStore
    from stream.checkpoint import checkpoint_writes, restore
    from stream.core import RawRecord, WorkerCore

    core = WorkerCore(content_trainer())
    load_into(core.trainer, boot)
    event = b'{"event_id":"e1","user_id":"u1","item_id":"i1","type":"click","ts": 9000}'
    core.process([RawRecord(event, 1000, partition=0, offset=0)])
    store = MemoryStore()
    store.commit(checkpoint_writes(core, "interactions"))
    again = WorkerCore(content_trainer())
    assert not again.trainer.bootstrapped
    load_into(again.trainer, boot, rows=False)  # what the worker does on every start
    restore(again, store, "interactions")
    assert again.trainer.bootstrapped  # so the CLI does not put the bootstrap rows again
    np.testing.assert_array_equal(
        again.trainer.ps.pull(ITEMS, boot.items)[0], core.trainer.ps.pull(ITEMS, boot.items)[0]
    )
    assert again.trainer.frequency.counts(["i1"]) == core.trainer.frequency.counts(["i1"])


def taste_pair() -> tuple[OnlineTrainer, OnlineTrainer]:
    """Two trainers over the same content: one with a content-taste table, one without."""
    pair = []
    for weight in (0.0, 0.7):
        t = content_trainer(content_init=False, taste_weight=weight, session_weight=0.0)
        t.add_content([f"i{k}" for k in range(6)], text_of(6), now=0.0)
        pair.append(t)
    return pair[0], pair[1]


def test_taste_rows_sum_the_content_users_took_and_leave_the_other_tables_alone() -> None:
    plain, taste = taste_pair()
    assert TASTE not in {t.name for t in plain.config.tables()}
    batches = [clicks(12, offset=12 * n) for n in range(3)]
    skip = Interaction("s", "u0", "i3", "skip", 50.0)  # a skip adds nothing to a taste
    bare = Interaction("b", "u0", "no-text", "click", 51.0)  # nor an item without content
    for batch in [*batches, [skip, bare]]:
        plain.apply(batch)
        taste.apply(batch)
    users, items = [f"u{k}" for k in range(6)], [f"i{k}" for k in range(6)]
    for table, ids in ((USERS, users), (ITEMS, items), (CONTENT, items)):
        np.testing.assert_array_equal(taste.ps.pull(table, ids)[0], plain.ps.pull(table, ids)[0])
    rows, hit = taste.ps.pull(TASTE, users)
    content, _ = taste._content(items)
    assert hit.all()
    np.testing.assert_allclose(rows, 6 * content, rtol=1e-5)  # u_k clicked i_k six times
    assert taste.ps.meta(TASTE, users)[0].tolist() == [6] * 6


def test_taste_serves_the_two_halves_side_by_side() -> None:
    _, taste = taste_pair()
    assert taste.config.served_dim == 16
    taste.add_content(["bare"], text_of(1, seed=9), now=0.0)
    for n in range(3):
        taste.apply(clicks(12, offset=12 * n))
    taste.apply([Interaction("x", "u0", "norow", "click", 99.0)])  # behaviour, no content
    ids = ["i0", "bare", "norow"]
    served, hit = taste.item_vectors(ids)
    assert served.shape == (3, 16) and hit.all()
    behaviour, content, a, _, _ = taste._item_parts(ids)
    user, _ = taste.user_vectors(["u0"])
    u_rows, t_row = taste.ps.pull(USERS, ["u0"])[0], taste.ps.pull(TASTE, ["u0"])[0][0]
    u = taste.sim.serve_users(taste.towers.users(torch.from_numpy(u_rows))).numpy()[0]
    t = t_row / np.linalg.norm(t_row)
    g = taste.config.taste_weight
    expected = a[:, 0] * (behaviour @ u) + (1 - a[:, 0]) * g * (content @ t)
    np.testing.assert_allclose(served @ user[0], expected, atol=1e-5)
    assert a[1, 0] == 0.0 and a[2, 0] == 1.0  # no row: content alone; no content: behaviour
    assert 0 < a[0, 0] < 1


def test_a_new_users_taste_half_is_their_session_content() -> None:
    _, taste = taste_pair()
    vec, hit = taste.user_vectors(["stranger"], {"stranger": ["i1", "i2"]})
    content, _ = taste._content(["i1", "i2"])
    assert hit.tolist() == [True]
    np.testing.assert_allclose(vec[0, 8:], taste.sim.serve_users(content.mean(axis=0)),
                               atol=1e-6)  # fmt: skip


def test_load_into_starts_tastes_at_the_bootstrap_user_vectors(boot: Bootstrapped) -> None:
    trainer = content_trainer(taste_weight=0.5)
    load_into(trainer, boot)
    served = trainer.sim.serve_users(trainer.towers.users(torch.from_numpy(boot.user_rows)))
    expected = served.numpy() * boot.user_counts[:, None]  # as heavy as the user's history
    np.testing.assert_allclose(trainer.ps.pull(TASTE, boot.users)[0], expected, rtol=1e-5)
    assert trainer.ps.meta(TASTE, boot.users)[0].tolist() == boot.user_counts.tolist()
    vectors, _ = trainer.user_vectors(boot.users)
    np.testing.assert_allclose(vectors[:, :8], vectors[:, 8:], atol=1e-5)  # one place to start


def test_taste_needs_an_inner_product_and_blending() -> None:
    with pytest.raises(ValueError, match="l2"):
        TrainConfig(taste_weight=0.5, similarity="l2")
    off = TrainConfig(dim=8, taste_weight=0.5, blend_k=0.0)  # no blending: no content at all
    assert not off.taste and off.served_dim == 8
    with pytest.raises(ValueError, match="non-negative"):
        TrainConfig(taste_weight=-1.0)


def test_taste_rows_survive_a_checkpoint_and_restore(boot: Bootstrapped) -> None:
    from paramserver.stores.memory import MemoryStore
    from stream.checkpoint import checkpoint_writes, restore
    from stream.core import RawRecord, WorkerCore

    core = WorkerCore(content_trainer(taste_weight=0.5))
    load_into(core.trainer, boot)
    core.trainer.add_content(["i1"], text_of(1, seed=4), now=1.0)
    event = b'{"event_id":"e1","user_id":"newbie","item_id":"i1","type":"click","ts": 9000}'
    core.process([RawRecord(event, 1000, partition=0, offset=0)])
    store = MemoryStore()
    store.commit(checkpoint_writes(core, "interactions"))
    again = WorkerCore(content_trainer(taste_weight=0.5))
    load_into(again.trainer, boot, rows=False)
    restore(again, store, "interactions")
    ids = [*boot.users, "newbie"]
    rows, hit = again.trainer.ps.pull(TASTE, ids)
    assert hit.all()
    np.testing.assert_array_equal(rows, core.trainer.ps.pull(TASTE, ids)[0])
    np.testing.assert_array_equal(again.trainer.user_vectors(ids)[0],
                                  core.trainer.user_vectors(ids)[0])  # fmt: skip


def test_taste_decay_lets_the_latest_items_weigh_most() -> None:
    trainer = content_trainer(content_init=False, taste_weight=0.5, taste_decay=0.5)
    trainer.add_content(["old", "new"], text_of(2), now=0.0)
    content, _ = trainer._content(["old", "new"])
    trainer.apply([Interaction("e0", "u", "old", "click", 1.0)])
    trainer.apply([Interaction("e1", "u", "new", "click", 2.0),
                   Interaction("e2", "u", "new", "click", 3.0)])  # fmt: skip
    row = trainer.ps.pull(TASTE, ["u"])[0][0]
    np.testing.assert_allclose(row, 0.25 * content[0] + 2 * content[1], rtol=1e-5)
    with pytest.raises(ValueError, match="taste_decay"):
        TrainConfig(taste_decay=0.0)


def test_a_taste_trainer_refuses_a_ps_without_the_taste_table() -> None:
    plain = TrainConfig(dim=8)
    with pytest.raises(ValueError, match="taste table"):
        OnlineTrainer(ParameterServer(plain.tables()), TwoTower.create(8),
                      TrainConfig(dim=8, taste_weight=0.5))  # fmt: skip


def test_calibrated_serving_scores_each_half_by_its_z_score_over_the_catalogue() -> None:
    """With ``calibrate``, an item scores ``a * z(behaviour) + (1 - a) * g * z(content)``:
    each half standardised by the catalogue's mean and spread for that user, so a young
    item's content is weighed on the scale behaviour is. Training is untouched."""
    plain = content_trainer(taste_weight=0.7, session_weight=0.0)
    cal = content_trainer(taste_weight=0.7, session_weight=0.0, calibrate=True)
    ids = [f"i{k}" for k in range(40)]
    for t in (plain, cal):
        t.add_content(ids, text_of(40, seed=3), now=0.0)
        for n in range(3):
            t.apply(clicks(12, items=40, offset=12 * n))
    for table in (USERS, ITEMS, TASTE):  # serving only: the same rows either way
        np.testing.assert_array_equal(cal.ps.pull(table, ids)[0], plain.ps.pull(table, ids)[0])
    assert cal.config.served_dim == 2 * 8 + 2
    items, hit = cal.item_vectors(ids)
    users, _ = cal.user_vectors(["u0", "u1"])
    assert hit.all() and items.shape == (40, 18) and users.shape == (2, 18)
    behaviour, content, a, _, _ = cal._item_parts(ids)
    halves, _ = plain.user_vectors(["u0", "u1"])
    u, taste = halves[:, :8], halves[:, 8:]
    # the sample is drawn with replacement from the 40 rows: its moments are an estimate
    z = lambda s: (s - s.mean(axis=1, keepdims=True)) / s.std(axis=1, keepdims=True)  # noqa: E731
    exact = a.T * z(u @ behaviour.T) + (1 - a.T) * 0.7 * z(taste @ content.T)
    np.testing.assert_allclose(users @ items.T, exact, atol=0.05)
    top = np.argsort(-(users @ items.T), axis=1)[:, :3]
    assert (top == np.argsort(-exact, axis=1)[:, :3]).all()


def test_calibrated_moments_follow_the_catalogue_and_replay_the_same() -> None:
    first, again = (content_trainer(taste_weight=0.5, calibrate=True) for _ in range(2))
    for t in (first, again):
        t.add_content([f"i{k}" for k in range(6)], text_of(6), now=0.0)
        t.apply(clicks(12))
    np.testing.assert_array_equal(first.user_vectors(["u0"])[0], again.user_vectors(["u0"])[0])
    before = first._catalogue()[1].mean.copy()
    first.add_content([f"n{k}" for k in range(60)], text_of(60, seed=8), now=1.0)
    for n in range(64):  # MOMENTS_EVERY changes later the estimate is re-drawn
        first.apply(clicks(6, offset=12 + 6 * n))
    assert not np.allclose(first._catalogue()[1].mean, before)


def test_calibrate_needs_a_taste_and_is_inert_without_blending() -> None:
    with pytest.raises(ValueError, match="taste_weight"):
        TrainConfig(calibrate=True)
    off = TrainConfig(dim=8, taste_weight=0.5, calibrate=True, blend_k=0.0)
    assert not off.calibrated and off.served_dim == 8
    empty = content_trainer(taste_weight=0.5, calibrate=True)  # no rows yet: still serves
    vec, hit = empty.user_vectors(["u0"], {"u0": []})
    assert vec.shape == (1, 18) and hit.tolist() == [False]


def test_a_calibrated_worker_publishes_what_the_trainer_serves() -> None:
    from stream.core import RawRecord, WorkerCore

    core = WorkerCore(content_trainer(taste_weight=1.0, calibrate=True))
    core.trainer.add_content([f"i{k}" for k in range(6)], text_of(6), now=0.0)
    event = b'{"event_id":"e1","user_id":"u1","item_id":"i1","type":"click","ts":5}'
    out = core.process([RawRecord(event, 1000)])
    assert out.items and out.users
    item, user = out.items[0], out.users[0]
    assert len(item.vector) == len(user.vector) == core.trainer.config.served_dim == 18
    served, _ = core.trainer.user_vectors(["u1"], {"u1": ["i1"]})  # blended with its batch
    np.testing.assert_allclose(user.vector, served[0], atol=1e-6)
    np.testing.assert_allclose(item.vector, core.trainer.item_vectors([item.key])[0][0], atol=1e-6)


def test_a_restored_calibrated_worker_serves_what_an_uninterrupted_one_does() -> None:
    """The change count and the catalogue's moments travel in the checkpoint: a restarted
    worker does not re-draw them at another point of the stream, so its published user
    vectors are those of a worker that never stopped."""
    from paramserver.stores.memory import MemoryStore
    from stream.batching import Batcher
    from stream.checkpoint import checkpoint_writes, restore
    from stream.core import RawRecord, WorkerCore

    def core(content: bool = True) -> WorkerCore:
        c = WorkerCore(content_trainer(taste_weight=1.0, calibrate=True),
                       batcher=Batcher(size=4, window_ms=50))  # fmt: skip
        if content:  # else restored: the content rows are in the checkpoint's tables
            c.trainer.add_content([f"i{k}" for k in range(6)], text_of(6), now=0.0)
        return c

    def feed(c: WorkerCore, events: list[Interaction], start: int) -> np.ndarray:
        recs = [RawRecord(e.to_json(), 1000 + 10 * n, partition=0, offset=start + n)
                for n, e in enumerate(events)]  # fmt: skip
        batches, _ = c.accept(recs)
        return np.stack([u.vector for b in batches for u in c.process(b).users])

    # 100 batches after the checkpoint: the moments are re-drawn (every MOMENTS_EVERY changes)
    first, rest = clicks(40), clicks(400, offset=40)
    steady, crashed, store = core(), core(), MemoryStore()
    feed(steady, first, 0)
    feed(crashed, first, 0)
    assert crashed.trainer._moments is not None  # estimated when the users were published
    store.commit(checkpoint_writes(crashed, "interactions"))
    saved = json.loads(json.dumps(crashed.trainer.state()))
    resumed = core(content=False)
    restore(resumed, store, "interactions")
    assert resumed.trainer.state() == json.loads(json.dumps(steady.trainer.state()))
    served = feed(steady, rest, 40)
    assert len(served) > 100 and steady.trainer._moments[0] > saved["moments"]["at"]
    np.testing.assert_array_equal(feed(resumed, rest, 40), served)
    forgetful = core(content=False)  # a checkpoint without them (as written before they were kept)
    restore(forgetful, store, "interactions")
    forgetful.trainer.load_state(
        {k: v for k, v in saved.items() if k not in ("changes", "moments")}
    )
    assert forgetful.trainer._moments is None  # re-estimated from the PS when first needed
    assert not np.array_equal(feed(forgetful, rest, 40), served)


def test_moments_survive_json_exactly_and_refuse_mismatched_shapes() -> None:
    from stream.similarity import Moments

    m = Moments.of(np.random.default_rng(0).normal(size=(50, 4)))
    back = Moments.from_json(json.loads(json.dumps(m.to_json())))
    np.testing.assert_array_equal(back.mean, m.mean)
    np.testing.assert_array_equal(back.cov, m.cov)
    with pytest.raises(ValueError, match="mismatched"):
        Moments.from_json({"mean": [0.0, 1.0], "cov": [[1.0]]})


def test_velocity_adds_a_young_items_term_to_its_score_in_one_more_coordinate() -> None:
    """Served: the item's ``beta * (1 - a) * level`` against the user's 1, on top of the
    scores without it; training is the same either way."""
    plain, fast = (content_trainer(taste_weight=1.0, calibrate=True, velocity_weight=v)
                   for v in (0.0, 0.5))  # fmt: skip
    assert (plain.config.served_dim, fast.config.served_dim) == (18, 19)
    items = [f"i{k}" for k in range(6)] + ["new"]
    for t in (plain, fast):
        t.add_content(items[:-1], text_of(6), now=0.0)  # the catalogue the stream starts with
        t.apply(clicks(12))
        t.add_content(["new"], text_of(7)[-1:], now=15.0)  # a new item arrives
        t.apply([Interaction("x", "u0", "new", "click", 20.0)])
    users, _ = fast.user_vectors(["u0", "u1"])
    assert users[:, -1].tolist() == [1.0, 1.0]
    np.testing.assert_array_equal(users[:, :-1], plain.user_vectors(["u0", "u1"])[0])
    served, _ = fast.item_vectors(items)
    np.testing.assert_array_equal(served[:, :-1], plain.item_vectors(items)[0])
    a = blend_weight(fast.frequency.counts(items), fast.config.blend_k)
    term = 0.5 * (1 - a) * fast.velocity.levels(items)
    np.testing.assert_allclose(served[:, -1], term, rtol=1e-6)
    # the new item: 1 positive, 1 positive old, at the cap: 1 * 20; i0, in the catalogue the
    # stream started with: not young, its plain count of 2
    assert served[-1, -1] == pytest.approx(0.5 * (1 - 1 / 6) * round(np.log1p(20) / 0.05) * 0.05)
    assert served[0, -1] == pytest.approx(0.5 * (1 - 2 / 7) * round(np.log1p(2) / 0.05) * 0.05)


def test_velocity_is_off_without_blending_and_not_with_l2() -> None:
    off = TrainConfig(dim=8, velocity_weight=0.2, blend_k=0.0)
    assert not off.velocity and off.served_dim == 8
    assert TrainConfig(dim=8, velocity_weight=0.2).served_dim == 9
    with pytest.raises(ValueError, match="inner product"):
        TrainConfig(velocity_weight=0.2, similarity="l2")
    with pytest.raises(ValueError, match="velocity_weight"):
        TrainConfig(velocity_weight=-0.1)


def velocity_stream(n: int, offset: int = 0) -> list[Interaction]:
    """Six regular items taken in turn, and a new item every 7 events, taken a few times."""
    out = []
    for k in range(offset, offset + n):
        item = f"i{k % 6}" if k % 7 else f"n{k // 21}"
        out.append(Interaction(f"e{k}", f"u{k % 5}", item, "click", float(k), session_id="s"))
    return out


def velocity_core(content: bool = True) -> WorkerCore:
    core = WorkerCore(content_trainer(velocity_weight=0.5, velocity_window=40, velocity_cap=10.0),
                      batcher=Batcher(size=3, window_ms=50))  # fmt: skip
    if content:  # else restored: the content rows are in the checkpoint's tables
        core.trainer.add_content([f"i{k}" for k in range(6)], text_of(6), now=0.0)
    return core


def feed(core: WorkerCore, events: list[Interaction], start: int) -> list[list[VectorRecord]]:
    """The item records each batch published."""
    recs = [RawRecord(e.to_json(), 1000 + 10 * n, partition=0, offset=start + n)
            for n, e in enumerate(events)]  # fmt: skip
    batches, _ = core.accept(recs)
    return [core.process(b).items for b in batches]


def test_a_replica_that_takes_what_the_worker_publishes_keeps_every_items_term() -> None:
    """An item's velocity level moves as it ages and as its positives leave the window,
    with no event of its own: the worker publishes those items again (StepStats.aged), so
    a replica applying the records holds, after every batch, what the trainer serves. New
    items with an even number announce their content 10 events before their first positive
    (their age counts from it), the others arrive with their first positive."""
    core = velocity_core()
    ids = [f"i{k}" for k in range(6)] + [f"n{k}" for k in range(30)]
    replica = {r.key: r.vector for r in core.vectors(ids, []).items}
    texts = dict(zip(ids, text_of(len(ids), seed=3), strict=True))
    aged: list[str] = []
    apply = core.trainer.apply

    def recording(events: list[Interaction]) -> StepStats:
        stats = apply(events)
        aged.extend(stats.aged)
        return stats

    core.trainer.apply = recording  # type: ignore[method-assign]
    recs = [RawRecord(e.to_json(), 1000 + 10 * n, partition=0, offset=n)
            for n, e in enumerate(velocity_stream(600))]  # fmt: skip
    announced = counted = 0
    for batch in core.accept(recs)[0]:
        while announced < 30 and 21 * announced <= batch[-1].offset + 10:
            if announced % 2 == 0:  # published at once, as the worker's add_items does
                core.trainer.add_content([f"n{announced}"], texts[f"n{announced}"][None], now=0)
                replica.update((r.key, r.vector) for r in core.vectors([f"n{announced}"], []).items)
            announced += 1
        out = core.process(batch)
        replica.update((r.key, r.vector) for r in out.items)
        counted += out.aged  # what the worker's metric counts
        # (read one by one or together: float rounding apart; a stale term is >= 1e-3 off)
        np.testing.assert_allclose(np.stack([replica[i] for i in ids]),
                                   core.trainer.item_vectors(ids)[0], atol=1e-6)  # fmt: skip
    assert counted == len(aged) > 30  # republished for their age alone, many times


def test_a_restored_worker_keeps_the_velocity_of_one_that_never_stopped() -> None:
    from paramserver.stores.memory import MemoryStore
    from stream.checkpoint import checkpoint_writes, restore

    steady, crashed, store = velocity_core(), velocity_core(), MemoryStore()
    first, rest = velocity_stream(90), velocity_stream(150, offset=90)
    feed(steady, first, 0)
    feed(crashed, first, 0)
    store.commit(checkpoint_writes(crashed, "interactions"))
    saved = json.loads(json.dumps(crashed.trainer.state()))
    assert saved["velocity"]["born"]  # young items in flight at the checkpoint
    resumed = velocity_core(content=False)
    restore(resumed, store, "interactions")

    def vectors(records: list[list[VectorRecord]]) -> np.ndarray:
        return np.stack([r.vector for batch in records for r in batch])

    served = vectors(feed(steady, rest, 90))
    np.testing.assert_array_equal(vectors(feed(resumed, rest, 90)), served)
    forgetful = velocity_core(content=False)  # a checkpoint without it: every item old
    restore(forgetful, store, "interactions")
    forgetful.trainer.load_state({k: v for k, v in saved.items() if k != "velocity"})
    assert not np.array_equal(vectors(feed(forgetful, rest, 90)), served)
