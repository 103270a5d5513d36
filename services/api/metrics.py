"""Prometheus metrics of a retrieval replica, created on an injected registry."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.ann.index import AnnIndex

FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2, 3, 5, 10, 30)
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class ServingMetrics:
    freshness_seconds: Histogram
    vectors_applied: Counter
    bad_vectors: Counter
    evictions_applied: Counter
    index_items: Gauge
    users: Gauge
    request_seconds: Histogram
    snapshot_seconds: Histogram
    restores: Counter
    events_accepted: Counter
    events_rejected: Counter
    consumer_lag: Gauge
    interactions_seen: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry, prefix: str = "streambed_api") -> ServingMetrics:
        r, p = registry, prefix
        return cls(
            freshness_seconds=Histogram(
                f"{p}_freshness_seconds",
                "Event produced -> its changed vector searchable in this replica",
                ["kind"], buckets=FRESHNESS_BUCKETS, registry=r),
            vectors_applied=Counter(f"{p}_vectors_applied", "Vector records applied", ["kind"],
                                    registry=r),
            evictions_applied=Counter(f"{p}_evictions_applied",
                                      "Tombstones applied: evicted ids dropped", ["kind"],
                                      registry=r),
            bad_vectors=Counter(f"{p}_bad_vector_records", "Undecodable vector records skipped",
                                registry=r),
            index_items=Gauge(f"{p}_index_items", "Items in the ANN index", registry=r),
            users=Gauge(f"{p}_users", "User vectors held", registry=r),
            request_seconds=Histogram(f"{p}_request_seconds", "HTTP request latency",
                                      ["endpoint"], buckets=REQUEST_BUCKETS, registry=r),
            snapshot_seconds=Histogram(f"{p}_snapshot_seconds",
                                       "Time to save the index, users and offsets", registry=r),
            restores=Counter(f"{p}_restores", "Replica starts by how the state was obtained",
                             ["result"], registry=r),
            events_accepted=Counter(f"{p}_gateway_events_accepted",
                                    "Events accepted by POST /events and produced", registry=r),
            events_rejected=Counter(f"{p}_gateway_events_rejected",
                                    "Events refused by POST /events", ["reason"], registry=r),
            consumer_lag=Gauge(f"{p}_consumer_lag_records",
                               "Records on the partition this replica has not read yet",
                               ["topic", "partition"], registry=r),
            interactions_seen=Counter(f"{p}_interactions_seen",
                                      "Interaction events this replica read (exclude-seen)",
                                      ["type"], registry=r),
        )  # fmt: skip

    def initialise(self, event_types: Iterable[str]) -> ServingMetrics:
        """Create the known label values at zero, so a rate over them is 0, not absent."""
        for kind in ("item", "user"):
            self.freshness_seconds.labels(kind=kind)
            self.vectors_applied.labels(kind=kind)
            self.evictions_applied.labels(kind=kind)
        for kind in event_types:
            self.interactions_seen.labels(type=kind)
        return self


class IndexCollector(Collector):
    """The index's own counters, read at scrape time (the index may be swapped on restore)."""

    def __init__(self, index: Callable[[], AnnIndex], prefix: str = "streambed_api") -> None:
        self._index = index
        self._prefix = prefix

    def collect(self) -> Iterator[Metric]:
        index, p = self._index(), self._prefix
        stats = index.stats
        yield GaugeMetricFamily(f"{p}_index_fresh_items",
                                "Vectors in the exact fresh buffer, not yet in the graph",
                                value=index.pending)  # fmt: skip
        for name, doc, value in (
            ("index_upserts", "Vectors upserted into the index", stats.upserts),
            ("index_buffered", "Upserts that went into the fresh buffer", stats.buffered),
            ("index_drift_skips", "Upserts below the drift threshold: graph left as is",
             stats.drift_skips),
            ("index_graph_writes", "Vectors written into the hnswlib graph", stats.graph_writes),
        ):  # fmt: skip
            yield CounterMetricFamily(f"{p}_{name}", doc, value=value)
