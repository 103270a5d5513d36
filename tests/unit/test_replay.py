from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from services.datagen import ItemInfo
from services.replay import (
    BadLine,
    Pace,
    ReplayReport,
    delta,
    freshness_percentiles,
    histogram_quantile,
    read_events,
    replay,
    schedule,
)
from stream.schemas import Interaction, InvalidEvent

INF = float("inf")


def ev(n: int, ts: float) -> Interaction:
    return Interaction(f"e{n}", "u", "i", "click", ts)


def test_speedup_follows_event_time_and_never_goes_back() -> None:
    events = [ev(0, 50.0), ev(1, 52.0), ev(2, 51.0), ev(3, 60.0)]
    assert [d for d, _ in schedule(events, Pace(speedup=2))] == [0.0, 1.0, 1.0, 5.0]


def test_rate_spaces_records_evenly_and_bad_lines_keep_their_place() -> None:
    bad = BadLine(2, "nope", InvalidEvent("bad_json", "x"))
    got = list(schedule([ev(0, 1), bad, ev(1, 9)], Pace(rate=10)))
    assert [d for d, _ in got] == [0.0, 0.1, 0.2] and got[1][1] is bad
    assert [d for d, _ in schedule([ev(0, 1), ev(1, 1e9)], Pace())] == [0.0, 0.0]


@pytest.mark.parametrize("pace", [{"speedup": 0}, {"rate": -1}, {"rate": math.nan},
                                  {"rate": 1, "speedup": 1}])  # fmt: skip
def test_bad_paces_are_refused(pace: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Pace(**pace)


def test_histogram_quantile_matches_promql_interpolation() -> None:
    buckets = [(0.1, 0), (0.2, 50), (0.5, 90), (1.0, 100), (INF, 100)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.2)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.75)
    assert histogram_quantile(0.5, [(0.1, 0), (INF, 0)]) is None
    assert histogram_quantile(0.99, [(0.1, 1), (INF, 10)]) == 0.1  # past the last finite bound


def test_freshness_over_a_window_is_the_difference_of_two_scrapes() -> None:
    before = [(0.1, 10), (1.0, 10), (INF, 10)]
    after = [(0.1, 10), (1.0, 30), (INF, 30)]
    window = delta(after, before)
    assert window == [(0.1, 0), (1.0, 20), (INF, 20)]
    got = freshness_percentiles(window)
    assert got["samples"] == 20 and got["p50"] == pytest.approx(0.55)


def test_read_events_keeps_bad_lines_with_their_reason(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good = ev(0, 5.0).to_json().decode()
    path.write_text(f"{good}\n\n{{broken\n" + json.dumps({"event_id": "x"}) + "\n")
    got = list(read_events(path))
    assert got[0] == ev(0, 5.0)
    assert [(b.number, b.error.reason) for b in got[1:] if isinstance(b, BadLine)] == [
        (3, "bad_json"), (4, "missing_user_id")]  # fmt: skip


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[object] = []

    def send(self, event: Interaction) -> None:
        self.sent.append(event)

    def send_item(self, item_id: str, content: dict[str, object]) -> None:
        self.sent.append((item_id, content))

    def send_dead_letter(self, payload: str, err: InvalidEvent, **context: object) -> None:
        self.sent.append((err.reason, context))

    def flush(self) -> None:
        pass


def test_replay_sends_each_kind_where_it_belongs_and_stops_at_the_duration() -> None:
    info = ItemInfo("new", "jazz", ("bebop",), 0, 3.0)
    bad = BadLine(7, "nope", InvalidEvent("bad_json", "x"))
    producer = RecordingProducer()
    report = replay(schedule([ev(0, 1), info, bad, ev(1, 2)], Pace(rate=1000)),
                    producer)  # type: ignore[arg-type]  # fmt: skip
    assert isinstance(report, ReplayReport) and report.sent == 2 and report.items == 1
    assert report.dead_lettered == {"bad_json": 1}
    assert producer.sent[1] == ("new", {"title": "jazz", "tags": ["bebop"], "ts": 3.0})
    assert producer.sent[2] == ("bad_json", {"line": 7})
    slow = replay(schedule([ev(n, n) for n in range(100)], Pace(rate=50)), RecordingProducer(),
                  duration=0.2)  # type: ignore[arg-type]  # fmt: skip
    assert slow.stopped_early and 5 <= slow.sent <= 15


def test_a_fast_replay_sleeps_per_millisecond_not_per_event(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """At 10,000 ev/s a sleep per event cost the load generator more than its sends; it now
    sleeps only when a millisecond or more ahead, and never sends a record earlier than that."""
    import services.replay as replay_module

    sleeps: list[float] = []
    real_sleep = time.sleep
    monkeypatch.setattr(replay_module.time, "sleep", lambda s: (sleeps.append(s), real_sleep(s)))
    sent_at: list[float] = []

    class Clocked(RecordingProducer):
        def send(self, event: object) -> None:
            sent_at.append(time.monotonic())

    records = list(schedule([ev(n, n) for n in range(2_000)], Pace(rate=10_000)))
    start = time.monotonic()
    replay(records, Clocked())  # type: ignore[arg-type]
    assert len(sent_at) == 2_000
    # each sleep waits for more than SLEEP_SLACK_S of schedule: at most one per millisecond
    assert len(sleeps) <= records[-1][0] / replay_module.SLEEP_SLACK_S + 1
    early = [start + due - t for (due, _), t in zip(records, sent_at, strict=True)]
    assert max(early) <= replay_module.SLEEP_SLACK_S + 1e-4
