"""The young-item velocity tracker: pure logic (stream.velocity)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream.velocity import Velocity


def on_grid(x: float, grid: float = 0.05) -> float:
    return round(x / grid) * grid


def test_a_young_items_level_is_its_rate_over_its_age_capped_and_floored() -> None:
    v = Velocity(window=100, cap=20.0)
    v.observe(["old"] * 3, new=())  # seen before the tracker: its plain window count
    v.observe(["young"], new={"young"})
    assert v.levels(["young"])[0] == pytest.approx(on_grid(np.log1p(20)))  # age 1: capped
    v.observe(["old"] * 19, new=())  # young is 20 positives old: 100 / 20 = 5 times
    assert v.levels(["young"])[0] == pytest.approx(on_grid(np.log1p(5)))
    v.observe(["old"] * 60, new=())  # 80 old: 100 / 80 = 1.25 times
    assert v.levels(["young"])[0] == pytest.approx(on_grid(np.log1p(1.25)))
    assert v.levels(["old"])[0] == pytest.approx(on_grid(np.log1p(82)))
    assert v.levels(["never"])[0] == 0.0
    v.observe(["old"] * 20, new=())  # a window old: no longer tracked, scale 1
    assert "young" not in v.born
    assert v.levels(["young"])[0] == pytest.approx(on_grid(np.log1p(1)))
    v.observe(["old"] * 100, new=())  # its positive left the window
    assert v.levels(["young"])[0] == 0.0


@pytest.mark.parametrize(
    ("window", "cap", "grid"),
    [(50, 10.0, 0.05), (200, 20.0, 0.05), (37, 3.0, 0.2), (400, 20.0, 0.01)],
)
def test_observe_returns_exactly_the_unbatched_items_whose_level_moved(
    window: int, cap: float, grid: float
) -> None:
    """What a replica needs: with the batch's items and these republished, every served
    level equals the tracker's (checked against every item's level read before and after
    each batch: the tracker itself looks only where a level may have moved)."""
    rng = np.random.default_rng(window)
    v = Velocity(window=window, cap=cap, grid=grid)
    seen: set[str] = set()
    universe = [f"i{k}" for k in range(60)]
    moved_total = 0
    for step in range(600):
        # a Zipf-ish batch, new items now and then; some announce their content first
        batch = [universe[min(int(rng.zipf(1.5)) - 1, 59)] for _ in range(int(rng.integers(1, 6)))]
        if step % 7 == 0:  # as the trainer does: only an item never seen before arrives
            v.arrive([i for i in [universe[int(rng.integers(60))]] if i not in seen])
        everyone = sorted(seen | set(batch) | set(v.born))
        before = dict(zip(everyone, v.levels(everyone).tolist(), strict=True))
        moved = v.observe(batch, new={i for i in batch if i not in seen})
        seen |= set(batch)
        after = dict(zip(everyone, v.levels(everyone).tolist(), strict=True))
        expected = sorted(i for i in everyone if i not in batch and before[i] != after[i])
        assert moved == expected, step
        moved_total += len(moved)
    assert moved_total > 50  # ageing and leaving the window both happened, many times


def test_a_restored_tracker_goes_on_as_the_original() -> None:
    first = Velocity(window=30, cap=5.0)
    for n in range(40):
        first.observe([f"i{n % 7}", f"n{n}"], new={f"n{n}"})
    again = Velocity(window=30, cap=5.0)
    again.load_json(json.loads(json.dumps(first.to_json())))
    for n in range(40, 60):
        batch = [f"i{n % 7}", f"n{n}"]
        assert again.observe(batch, new={f"n{n}"}) == first.observe(batch, new={f"n{n}"})
    ids = [f"n{n}" for n in range(60)] + [f"i{k}" for k in range(7)]
    np.testing.assert_array_equal(again.levels(ids), first.levels(ids))
    assert again.levels(["n59"])[0] > 0


def test_forgotten_items_are_young_no_more_and_settings_are_checked() -> None:
    v = Velocity(window=10)
    v.observe(["a"], new={"a"})
    v.forget(["a"])
    assert v.born == {} and v.levels(["a"])[0] == pytest.approx(on_grid(np.log1p(1)))
    with pytest.raises(ValueError, match="cap"):
        Velocity(cap=0.5)
    with pytest.raises(ValueError, match="window"):
        Velocity(window=0)


def test_age_counts_from_an_items_content_when_it_came_first() -> None:
    """A positive soon after an item's arrival reads as a fast item's; one after a long
    wait as a slow item's, though both are the item's first."""
    v = Velocity(window=100, cap=20.0)
    v.arrive(["catalogue"])  # before the first positive: the catalogue the stream starts with
    v.observe(["x"], new=())
    v.arrive(["early", "soon"])
    v.observe(["x"] * 50, new=())
    v.arrive(["soon", "late"])  # "soon" arrived already: its age is not reset
    v.observe(["early", "late", "catalogue"], new=())
    levels = v.levels(["early", "late", "soon", "catalogue"])
    assert levels[0] == pytest.approx(on_grid(np.log1p(100 / 52)))  # 52 positives old
    assert levels[1] == pytest.approx(on_grid(np.log1p(20)))  # 2 old: at the cap
    assert levels[2] == 0.0 and v.born["soon"] == 1
    assert levels[3] == pytest.approx(on_grid(np.log1p(1))) and "catalogue" not in v.born
