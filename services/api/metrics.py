"""Prometheus metrics of a retrieval replica, created on an injected registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        )  # fmt: skip
