"""Property-based fuzzing of the retrieval API from its own OpenAPI schema (schemathesis):
every operation, generated inputs valid and invalid, must answer with a documented status
and a body that matches its schema -- never a 5xx."""

from __future__ import annotations

import numpy as np
import schemathesis
from hypothesis import HealthCheck, settings
from prometheus_client import CollectorRegistry

from services.api.app import create_app
from services.api.gateway import MemorySink
from services.api.metrics import ServingMetrics
from services.api.seen import SeenItems
from services.api.state import ServingState
from stream.vectors import VectorRecord

TOKEN = "fuzz-token"


def make_app():  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    state = ServingState(dim=8, seen=SeenItems())
    state.apply_items([VectorRecord(f"i{n}", rng.standard_normal(8).astype(np.float32), n, 0)
                       for n in range(50)], now_ms=0)  # fmt: skip
    state.apply_users([VectorRecord("u1", rng.standard_normal(8).astype(np.float32), 1, 0)],
                      now_ms=0)  # fmt: skip
    state.apply_events([("u1", "i1")])
    registry = CollectorRegistry()
    return create_app(state, registry, ServingMetrics.create(registry), sink=MemorySink(),
                      token=TOKEN)  # fmt: skip


schema = schemathesis.openapi.from_asgi("/openapi.json", make_app())


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_its_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"})
