"""The live page's data, projection and files, without a browser (tests/integration/
test_live_page.py drives the page itself in headless Chromium)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

import services.api.app as app_module
from services.api.app import create_app
from services.api.live import ASSETS, LiveView, Projection
from services.api.metrics import ServingMetrics
from services.api.seen import SeenItems
from services.api.state import ServingState
from stream.schemas import EVENT_TYPES
from stream.vectors import VectorRecord


def _state(n: int = 40, dim: int = 4, seed: int = 0) -> ServingState:
    rng = np.random.default_rng(seed)
    state = ServingState(dim=dim, seen=SeenItems())
    state.apply_items(
        [VectorRecord(f"i{k}", rng.normal(size=dim).astype(np.float32), n - k, 1000)
         for k in range(n)], now_ms=1500,
    )  # fmt: skip
    for user in ("u1", "u2"):
        state.apply_events([(user, "i0")])
    return state


def test_data_reports_counters_freshness_lag_and_recent_users() -> None:
    state = _state()
    registry = CollectorRegistry()
    metrics = ServingMetrics.create(registry).initialise(EVENT_TYPES)
    metrics.interactions_seen.labels(type="click").inc(7)
    metrics.vectors_applied.labels(kind="item").inc(40)
    metrics.consumer_lag.labels(topic="item-vectors", partition="0").set(12)
    view = LiveView(state, metrics, lambda: {0: 3, 1: 4}, clock=lambda: 2.0)
    body = view.data()
    assert body["events_seen"]["click"] == 7 and set(body["events_seen"]) == set(EVENT_TYPES)
    assert body["vectors_applied"] == {"item": 40.0, "user": 0.0}
    assert body["replica_lag"] == {"item-vectors/0": 12}
    assert body["worker_lag"] == {0: 3, 1: 4}
    fresh = body["freshness_seconds"]  # 40 samples of 0.5 s, observed at t=1.5 (window 30 s)
    assert fresh["samples"] == 40 and fresh["p50"] == pytest.approx(0.5)
    assert body["index"]["items"] == 40 and body["recent_users"] == ["u2", "u1"]


def test_points_keep_their_axes_so_a_learning_item_moves_alone() -> None:
    state = _state()
    clock = iter([0.0, 5.0, 10.0])
    view = LiveView(state, ServingMetrics.create(CollectorRegistry()), clock=lambda: next(clock))
    before = {p[0]: p[1:3] for p in view.points(10)["points"]}
    assert len(before) == 10 and view.points(10)["fitted_at"] == 0.0  # most updated first
    state.apply_items([VectorRecord("i3", np.array([5, 5, 5, 5], np.float32), 99, 0)], 2000)
    after = {p[0]: p[1:3] for p in view.points(10)["points"]}
    assert after["i3"] != before["i3"]
    assert all(after[i] == before[i] for i in before if i != "i3")


def test_a_refit_keeps_each_axis_pointing_the_same_way() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(200, 6)) * np.array([4, 2, 1, 1, 1, 1])
    proj = Projection(refit_seconds=1)
    first = proj.project(vectors, now=0.0)
    assert proj.basis is not None
    proj.basis = -proj.basis  # as if the last fit had found the opposite signs (SVD may)
    again = proj.project(vectors, now=5.0)  # the refit follows the axes on screen
    assert np.allclose(again, -first)


@pytest.fixture
def client() -> TestClient:
    registry = CollectorRegistry()
    return TestClient(create_app(_state(), registry, ServingMetrics.create(registry)))


def test_the_page_and_its_pinned_libraries_are_served_locally(client: TestClient) -> None:
    if not ASSETS["uPlot.iife.min.js"].is_file():
        pytest.skip("web/node_modules is missing: npm ci --prefix web")
    page = client.get("/live")
    assert page.status_code == 200 and "/live/static/uPlot.iife.min.js" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN, no absolute URL
    js = client.get("/live/static/uPlot.iife.min.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert client.get("/live/data").json()["index"]["items"] == 40
    points = client.get("/live/projection?n=5").json()["points"]
    assert [p[0] for p in points] == ["i0", "i1", "i2", "i3", "i4"]


@pytest.mark.parametrize("name", ["../app.py", "live.html", "nope.js", "%2e%2e%2fapp.py"])
def test_only_the_listed_files_are_served(client: TestClient, name: str) -> None:
    assert client.get(f"/live/static/{name}").status_code == 404


def test_a_missing_library_gives_a_clear_503(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    patched = {**ASSETS, "uPlot.iife.min.js": ASSETS["live.js"].with_name("absent.js")}
    monkeypatch.setattr(app_module, "ASSETS", patched)
    response = client.get("/live")
    assert response.status_code == 503 and "npm ci --prefix web" in response.json()["detail"]
    assert client.get("/live/projection?n=0").status_code == 422
