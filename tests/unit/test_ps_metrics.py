from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from paramserver.config import TableConfig
from paramserver.metrics import MeteredPS, PSMetrics
from paramserver.ps import ParameterServer


def test_metered_ps_counts_calls_rows_latency_errors_admissions_and_evictions() -> None:
    reg = CollectorRegistry()
    ticks = iter(np.arange(0.0, 100.0, 0.5))
    ps = MeteredPS(
        ParameterServer([TableConfig("items", dim=2, ttl_seconds=10.0, min_count=2)]),
        PSMetrics.create(reg),
        clock=lambda: float(next(ticks)),
    )
    ps.admit("items", ["a", "b", "a"], now=0.0)  # a: 2 sightings -> admitted; b: 1
    ps.push("items", ["a"], np.ones((1, 2), dtype=np.float32), now=1.0)
    with pytest.raises(ValueError):
        ps.push("items", ["a"], np.ones((1, 3), dtype=np.float32), now=1.0)
    ps.expire(now=100.0)

    def value(name: str, **labels: str) -> float | None:
        return reg.get_sample_value(name, labels)

    assert value("streambed_ps_admissions_total", table="items") == 1.0
    assert value("streambed_ps_evictions_total", table="items") == 1.0
    assert value("streambed_ps_rows", table="items") == 0.0
    assert value("streambed_ps_requests_total", op="push", table="items") == 1.0
    assert value("streambed_ps_rows_requested_total", op="admit", table="items") == 3.0
    assert value("streambed_ps_errors_total", op="push", reason="ValueError") == 1.0
    assert value("streambed_ps_request_seconds_sum", op="admit") == 0.5  # the injected clock
