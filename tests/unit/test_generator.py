from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from services.datagen import GeneratorConfig, InteractionGenerator, ItemInfo
from stream.schemas import EVENT_TYPES, Interaction, parse_event


def stream(n: int = 5000, **kw: float) -> tuple[InteractionGenerator, list]:  # type: ignore[type-arg]
    gen = InteractionGenerator(GeneratorConfig(users=100, items=400, seed=1, **kw))
    return gen, list(gen.replay(n))


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    _, a = stream()
    _, b = stream()
    assert a == b
    other = list(InteractionGenerator(GeneratorConfig(users=100, items=400, seed=2)).replay(5000))
    assert other != a


def test_events_are_valid_time_ordered_and_unique() -> None:
    _, records = stream()
    events = [r for r in records if isinstance(r, Interaction)]
    assert len(events) == 5000
    assert all(parse_event(e.to_json()) == e for e in events[:500])
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert len({e.event_id for e in events}) == len(events)
    assert {e.type for e in events} == set(EVENT_TYPES)


def test_popularity_is_skewed() -> None:
    _, records = stream(20_000)
    counts = sorted(Counter(r.item_id for r in records if isinstance(r, Interaction)).values())
    top_decile = sum(counts[-len(counts) // 10 :])
    assert top_decile / sum(counts) > 0.3  # uniform would be 0.1


def test_sessions_mostly_stay_on_a_theme() -> None:
    gen, records = stream()
    by_session: dict[str, list[int]] = {}
    for r in records:
        if isinstance(r, Interaction) and r.type != "skip":
            by_session.setdefault(r.session_id or "", []).append(gen.cluster_of(r.item_id))
    purity = [Counter(c).most_common(1)[0][1] / len(c) for c in by_session.values() if len(c) > 3]
    assert np.mean(purity) > 0.7


def test_new_items_arrive_with_titles_before_their_first_interaction() -> None:
    gen, records = stream(new_items=0.25)
    arrived: dict[str, int] = {}
    first_use: dict[str, int] = {}
    for n, r in enumerate(records):
        if isinstance(r, ItemInfo):
            arrived[r.item_id] = n
            assert r.title and r.tags and gen.cluster_of(r.item_id) == r.cluster
        else:
            first_use.setdefault(r.item_id, n)
    assert arrived
    initial = {i.item_id for i in gen.catalogue()}
    assert not initial & arrived.keys()
    for item, n in first_use.items():
        assert item in initial or arrived[item] < n


def test_drift_changes_a_users_dominant_theme_over_time() -> None:
    gen, records = stream(40_000, drift=0.3)
    events = [r for r in records if isinstance(r, Interaction) and r.type != "skip"]
    half = len(events) // 2
    moved = 0
    for u in {e.user_id for e in events[:200]}:
        early = Counter(gen.cluster_of(e.item_id) for e in events[:half] if e.user_id == u)
        late = Counter(gen.cluster_of(e.item_id) for e in events[half:] if e.user_id == u)
        if early and late and early.most_common(1)[0][0] != late.most_common(1)[0][0]:
            moved += 1
    assert moved > 0


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        GeneratorConfig(clusters=50)
    with pytest.raises(ValueError):
        GeneratorConfig(items=2, clusters=3)


@pytest.mark.parametrize("affinity", [0.0, 4.0])
def test_preference_is_the_distribution_replay_draws_from(affinity: float) -> None:
    gen = InteractionGenerator(GeneratorConfig(users=30, items=200, clusters=4, seed=3,
                                               tag_affinity=affinity, drift=0.0))  # fmt: skip
    available = ~gen.is_new
    p = gen.preference(0, available)
    assert p.sum() == pytest.approx(1.0)
    assert (p[~available] == 0).all()
    # without drift, the user's first 20,000 events follow it (new items aside)
    events = [r for r in gen.replay(20_000) if isinstance(r, Interaction) and r.user_id == "u0"]
    seen = Counter(int(e.item_id[1:]) for e in events if available[int(e.item_id[1:])])
    top = np.argsort(-p)[:5]
    expected = p[top] / p[available].sum()
    observed = np.array([seen[int(i)] for i in top]) / sum(seen.values())
    assert len(events) > 200
    assert np.abs(observed - expected).max() < 0.05
    if affinity:
        fav = gen.user_tag[0][int(gen.user_primary[0])]
        assert fav in gen.info(int(top[0]), 0.0).tags or fav in gen.info(int(top[1]), 0.0).tags
