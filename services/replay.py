"""Replay / load test: a timestamped event stream into Kafka at a chosen speed-up or rate.

The pure part is :func:`schedule` -- when, relative to the start, each record is
due -- and :func:`histogram_quantile`, which reads percentiles off a Prometheus
histogram the way PromQL's ``histogram_quantile`` does. The edge is
:func:`replay` (sleep until due, produce with kafka-python, a progress bar),
:class:`GroupLag` (consumer lag from the worker group's committed offsets) and
:func:`scrape_histogram` (freshness from the API's ``/metrics``).

Records are events (to ``interactions``), item content (``ItemInfo``, to
``items``) or lines that failed validation (:class:`BadLine`, dead-lettered with
their reason, never dropped). Event ``ts`` (event time) is kept as recorded;
the Kafka timestamp (on ``interactions``, the broker's append time: see
``services.kafka.topics``) is what freshness is measured from.

Examples
--------
>>> from stream.schemas import Interaction
>>> events = [Interaction(f"e{n}", "u", "i", "click", ts=100.0 + 10 * n) for n in range(3)]
>>> [due for due, _ in schedule(events, Pace(speedup=10))]    # 10 s of event time per second
[0.0, 1.0, 2.0]
>>> [due for due, _ in schedule(events, Pace(rate=4))]        # 4 events per second
[0.0, 0.25, 0.5]
>>> round(histogram_quantile(0.5, [(0.1, 10), (0.5, 30), (float("inf"), 40)]), 6)
0.3
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from services.datagen import ItemInfo
from stream.schemas import Interaction, InvalidEvent, parse_event

if TYPE_CHECKING:
    from services.producer import EventProducer

FRESHNESS = "streambed_api_freshness_seconds"
# the replay sleeps only when it is this far ahead of the schedule, and sends what is due
# meanwhile at once: at 10,000 ev/s a sleep per event (every 100 us) costs the load
# generator more than the events it sends (docs/scaling.md); a record leaves at most this
# early, the rate over any longer span is the schedule's
SLEEP_SLACK_S = 0.001


@dataclass(frozen=True)
class BadLine:
    """A line of the input that is not a valid event: it goes to the DLQ with its reason."""

    number: int
    line: str
    error: InvalidEvent


Record = Interaction | ItemInfo | BadLine


@dataclass(frozen=True)
class Pace:
    """How fast to replay: ``speedup`` seconds of event time per wall second, or a fixed
    ``rate`` of records per second; neither means as fast as the producer goes."""

    speedup: float | None = None
    rate: float | None = None

    def __post_init__(self) -> None:
        if self.speedup is not None and self.rate is not None:
            raise ValueError("choose a speed-up or a rate, not both")
        for name, value in (("speedup", self.speedup), ("rate", self.rate)):
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value}")


def schedule(records: Iterable[Record], pace: Pace) -> Iterator[tuple[float, Record]]:
    """``(seconds after the start, record)`` in input order; never earlier than the record
    before (an event stamped earlier than its predecessor goes out right after it)."""
    first: float | None = None
    due = 0.0
    for n, rec in enumerate(records):
        if pace.rate is not None:
            due = n / pace.rate
        elif pace.speedup is not None and not isinstance(rec, BadLine):
            first = rec.ts if first is None else first
            due = max(due, (rec.ts - first) / pace.speedup)
        yield due, rec


def read_events(path: Path) -> Iterator[Interaction | BadLine]:
    """JSON-lines events from a file; a line that does not validate comes back as a BadLine."""
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield parse_event(line)
            except InvalidEvent as err:
                yield BadLine(number, line.decode("utf-8", "replace"), err)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q``-quantile of a cumulative histogram ``[(upper bound, count), ...]`` (sorted,
    ending at +Inf), interpolated linearly inside its bucket as PromQL does; ``None``
    if it holds no samples. Falls back to the highest finite bound past the last one."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            share = (rank - lower_count) / (count - lower_count)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass
class ReplayReport:
    sent: int = 0
    items: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    stopped_early: bool = False

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


class Progress(Protocol):
    def update(self, n: int = 1) -> object: ...


def replay(
    records: Iterable[tuple[float, Record]],
    producer: EventProducer,
    *,
    duration: float | None = None,
    progress: Progress | None = None,
) -> ReplayReport:
    """Produce each record when it is due; stop after ``duration`` seconds if given."""
    report = ReplayReport()
    start = time.monotonic()
    for due, rec in records:
        now = time.monotonic()
        if duration is not None and now - start >= duration:
            report.stopped_early = True
            break
        if (wait := start + due - now) > SLEEP_SLACK_S:
            time.sleep(wait)
        if isinstance(rec, BadLine):
            producer.send_dead_letter(rec.line, rec.error, line=rec.number)
            report.dead_lettered[rec.error.reason] += 1
        elif isinstance(rec, ItemInfo):
            producer.send_item(rec.item_id, {"title": rec.title, "tags": list(rec.tags),
                                             "ts": rec.ts})  # fmt: skip
            report.items += 1
        else:
            producer.send(rec)
            report.sent += 1
        if progress is not None and not isinstance(rec, ItemInfo):
            progress.update(1)
    producer.flush()
    report.seconds = time.monotonic() - start
    return report


# -- reading the pipeline's state (edges: Kafka admin, HTTP) -------------------------------


class GroupLag:
    """Consumer lag of a group on one topic, read with one consumer that never joins it."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        from kafka import KafkaConsumer

        self.topic = topic
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                       enable_auto_commit=False,
                                       client_id="streambed-replay")  # fmt: skip

    def __enter__(self) -> GroupLag:
        return self

    def __exit__(self, *exc: object) -> None:
        self._consumer.close()

    def read(self) -> dict[int, int] | None:
        """Per partition: end offset minus the group's committed offset (a partition the
        group never committed counts from the beginning); ``None`` if the group has
        committed nothing."""
        from kafka import TopicPartition

        found = self._consumer.partitions_for_topic(self.topic) or ()
        partitions = [TopicPartition(self.topic, p) for p in sorted(found)]
        committed = {tp: self._consumer.committed(tp) for tp in partitions}
        if all(offset is None for offset in committed.values()):
            return None
        end = self._consumer.end_offsets(partitions)
        begin = self._consumer.beginning_offsets(partitions)
        return {tp.partition: max(0, end[tp] - (committed[tp] or begin[tp])) for tp in partitions}


def scrape_histogram(url: str, name: str, labels: dict[str, str]) -> list[tuple[float, float]]:
    """The cumulative buckets of one histogram series on a /metrics page ([] if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != name + "_bucket":
                continue
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                buckets.append((float(sample.labels["le"]), float(sample.value)))
    return sorted(buckets)


def delta(after: list[tuple[float, float]], before: list[tuple[float, float]]
          ) -> list[tuple[float, float]]:  # fmt: skip
    """Buckets observed between two scrapes of the same histogram."""
    earlier = dict(before)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]


def freshness_percentiles(buckets: list[tuple[float, float]]) -> dict[str, Any]:
    return {
        "samples": int(buckets[-1][1]) if buckets else 0,
        **{f"p{int(q * 100)}": histogram_quantile(q, buckets) for q in (0.5, 0.95, 0.99)},
    }


def api_stats(api: str, since: float) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{api}/stats?since={since}", timeout=5) as resp:
            return dict(json.loads(resp.read())["freshness_seconds"])
    except (OSError, urllib.error.URLError, ValueError, KeyError):
        return None
