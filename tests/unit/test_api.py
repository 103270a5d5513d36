from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from services.api.app import create_app
from services.api.metrics import ServingMetrics
from services.api.state import DamagedSave, ServingState, write_manifest
from stream.vectors import VectorRecord


@pytest.fixture
def client() -> TestClient:
    state = ServingState(dim=2)
    vec = lambda *x: np.array(x, dtype=np.float32)  # noqa: E731
    state.apply_items(
        [VectorRecord("a", vec(1, 0), 3, 1000), VectorRecord("b", vec(0, 1), 7, 1000),
         VectorRecord("c", vec(0.8, 0.6), 1, 0)],
        now_ms=1400,
    )  # fmt: skip
    state.apply_users([VectorRecord("u1", vec(1, 0.1), 2, 1000)], now_ms=1100)
    registry = CollectorRegistry()
    return TestClient(create_app(state, registry, ServingMetrics.create(registry)))


def test_personal_recommendations_are_ranked_by_score(client: TestClient) -> None:
    body = client.get("/recommendations/u1?k=2").json()
    assert body["strategy"] == "personal"
    assert [i["item_id"] for i in body["items"]] == ["a", "c"]


def test_unknown_user_gets_the_popularity_prior(client: TestClient) -> None:
    body = client.get("/recommendations/stranger?k=2").json()
    assert body["strategy"] == "popular"
    assert [i["item_id"] for i in body["items"]] == ["b", "a"]


def test_popular_mix_serves_a_new_user_part_popular_and_survives_a_save(tmp_path) -> None:  # type: ignore[no-untyped-def]
    vec = lambda *x: np.array(x, dtype=np.float32)  # noqa: E731
    state = ServingState(dim=2, popular_mix=2.0)
    state.apply_items([VectorRecord("a", vec(1, 0), 3, 0), VectorRecord("b", vec(0, 1), 7, 0),
                       VectorRecord("c", vec(0.8, 0.6), 1, 0)], now_ms=0)  # fmt: skip
    state.apply_users([VectorRecord("new", vec(1, 0.1), 1, 0),        # share 1/3
                       VectorRecord("old", vec(1, 0.1), 10**6, 0)], now_ms=0)  # fmt: skip
    strategy, items = state.recommend("new", k=3)
    assert strategy == "mixed"  # its own top item, then popularity's (b, c): b and c are in
    # its personal list too, so they keep their similarity as score
    assert items == [("a", pytest.approx(1.0)), ("b", pytest.approx(0.1)),
                     ("c", pytest.approx(0.86))]  # fmt: skip
    assert state.recommend("new", k=3, exclude={"a"})[1][0][0] == "c"
    strategy, items = state.recommend("old", k=2)
    assert strategy == "personal" and [i for i, _ in items] == ["a", "c"]  # share ~1
    plain = ServingState(dim=2)  # off by default
    plain.apply_items([VectorRecord("a", vec(1, 0), 3, 0)], now_ms=0)
    plain.apply_users([VectorRecord("new", vec(1, 0), 1, 0)], now_ms=0)
    assert plain.recommend("new", k=1)[0] == "personal"
    # the update counts are saved with the vectors; a save without them serves unmixed
    state.save(tmp_path / "s", {})
    again = ServingState(dim=2, popular_mix=2.0)
    again.restore(tmp_path / "s")
    assert again.recommend("new", k=3) == state.recommend("new", k=3)
    directory = tmp_path / "s" / (tmp_path / "s" / "LATEST").read_text()
    np.savez(directory / "users.npz", ids=np.array(["new"]), vectors=np.array([[1.0, 0.1]]))
    write_manifest(directory)  # as such an older save was, whole
    again.restore(tmp_path / "s")
    assert again.recommend("new", k=3)[0] == "personal"
    with pytest.raises(ValueError, match="popular_mix"):
        ServingState(dim=2, popular_mix=-1.0)


def test_a_damaged_save_is_skipped_for_the_one_before_it(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    vec = lambda *x: np.array(x, dtype=np.float32)  # noqa: E731
    state = ServingState(dim=2)
    state.apply_items([VectorRecord("a", vec(1, 0), 3, 0)], now_ms=0)
    first = state.save(tmp_path / "s", {"t": {0: 1}})
    state.apply_items([VectorRecord("b", vec(0, 1), 7, 0)], now_ms=0)
    second = state.save(tmp_path / "s", {"t": {0: 2}})
    assert sorted(p.name for p in (tmp_path / "s").glob("snapshot-*")) == [first.name, second.name]
    graph = second / "graph.bin"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])  # kill -9, then a cut
    again = ServingState(dim=2)
    assert again.restore(tmp_path / "s") == {"t": {0: 1}}  # the one before, intact
    assert len(again.index) == 1
    assert "damaged replica save" in caplog.text and "graph.bin" in caplog.text
    (first / "MANIFEST.json").unlink()  # no manifest: not known to be whole
    with pytest.raises(DamagedSave):
        ServingState(dim=2).restore(tmp_path / "s")


def test_popular_follows_the_recent_window_and_survives_a_save(tmp_path) -> None:  # type: ignore[no-untyped-def]
    vec = lambda *x: np.array(x, dtype=np.float32)  # noqa: E731
    state = ServingState(dim=2, popular_window=3)
    state.apply_items([VectorRecord("a", vec(1, 0), 3, 0), VectorRecord("b", vec(0, 1), 7, 0),
                       VectorRecord("c", vec(0.8, 0.6), 1, 0)], now_ms=0)  # fmt: skip
    assert state.follows_events and state.popular(3) == [("b", 7.0), ("a", 3.0), ("c", 1.0)]
    state.count_popular(["c", "c", "a"])  # no window yet: update counts; now the window
    assert state.popular(3) == [("c", 2.0), ("a", 1.0), ("b", 0.0)]
    state.count_popular(["a"])  # the window keeps the last 3: c, a, a
    assert state.popular(2, exclude={"a"}) == [("c", 1.0), ("b", 0.0)]
    state.count_popular(["z"])  # an item with no vector is counted but never served
    assert [i for i, _ in state.popular(5)] == ["a", "b", "c"]
    state.save(tmp_path / "s", {})
    again = ServingState(dim=2, popular_window=3)
    again.restore(tmp_path / "s")
    assert again.popular(3) == state.popular(3)
    assert not ServingState(dim=2).follows_events  # neither seen items nor a window
    with pytest.raises(ValueError, match="popular_window"):
        ServingState(dim=2, popular_window=-1)


def test_similar_items_exclude_the_item_itself(client: TestClient) -> None:
    body = client.get("/items/a/similar?k=5").json()
    assert [i["item_id"] for i in body["items"]] == ["c", "b"]
    missing = client.get("/items/nope/similar")
    assert missing.status_code == 404 and "no vector" in missing.json()["detail"]


BAD_K = ["/recommendations/u1?k=0", "/recommendations/u1?k=abc", "/recommendations/u1?k=100000",
         "/items/a/similar?k=-1"]  # fmt: skip


@pytest.mark.parametrize("path", BAD_K)
def test_bad_parameters_are_clear_4xx(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "k"


def test_health_stats_metrics_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "caught_up": True, "items": 3,
                                             "users": 1}  # fmt: skip
    stats = client.get("/stats").json()
    assert stats["freshness_seconds"]["samples"] == 3
    assert stats["freshness_seconds"]["p50"] == pytest.approx(0.4)
    assert client.get("/stats?since=99999999999").json()["freshness_seconds"]["samples"] == 0
    client.get("/recommendations/u1")
    metrics = client.get("/metrics").text
    assert (
        'streambed_api_request_seconds_count{endpoint="/recommendations/{user_id}"} 1.0' in metrics
    )
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/recommendations/{user_id}", "/items/{item_id}/similar", "/healthz"} <= set(paths)


def test_a_calibrated_replica_leaves_the_offset_coordinates_out_of_similar_items() -> None:
    """Calibrated item vectors end in ``[a, 1 - a]`` (``stream.similarity``), meant for a
    user's offsets; between two items they would add ``a1 a2 + (1 - a1)(1 - a2)``, pulling
    items of the same age together whatever their halves say."""
    from services.ann.index import IndexConfig
    from stream.similarity import calibrated_items

    def served(a: float, direction: tuple[float, float]) -> np.ndarray:
        x = np.array([direction], dtype=np.float32)
        return calibrated_items(np.array([[a]]), x, x)[0]

    # q: warm; twin: young, the same halves as q; other: warm, its halves orthogonal to q's
    records = [
        VectorRecord("q", served(0.9, (1, 0)), 50, 0),
        VectorRecord("twin", served(0.1, (1, 0)), 1, 0),
        VectorRecord("other", served(0.9, (0, 1)), 50, 0),
    ]
    ranked = {}
    for calibrated in (False, True):
        state = ServingState(dim=6, index=IndexConfig(space="ip"), calibrated=calibrated)
        state.apply_items(records, now_ms=0)
        ranked[calibrated] = [i for i, _ in state.similar("q", k=2) or []]
    assert ranked == {False: ["other", "twin"], True: ["twin", "other"]}
    with pytest.raises(ValueError, match="2 \\* dim \\+ 2"):
        ServingState(dim=33, calibrated=True)


def test_a_velocity_replica_leaves_the_term_out_of_similar_items() -> None:
    """With --velocity an item ends in its velocity term, meant for the user's 1: between
    two young items taking off it would add t1 * t2 whatever their vectors say."""
    from services.ann.index import IndexConfig

    records = [
        VectorRecord("q", np.array([1, 0, 0, 0, 2], np.float32), 1, 0),  # young, taking off
        VectorRecord("fast", np.array([0, 1, 0, 0, 2], np.float32), 1, 0),  # another one
        VectorRecord("near", np.array([0.9, 0.1, 0, 0, 0], np.float32), 50, 0),  # warm, alike
    ]
    ranked = {}
    for velocity in (False, True):
        state = ServingState(dim=5, index=IndexConfig(space="ip"), velocity=velocity)
        state.apply_items(records, now_ms=0)
        ranked[velocity] = [i for i, _ in state.similar("q", k=2) or []]
    assert ranked == {False: ["fast", "near"], True: ["near", "fast"]}
    ServingState(dim=19, calibrated=True, velocity=True)  # 2 * 8 + 2 + 1
    with pytest.raises(ValueError, match="one more"):
        ServingState(dim=18, calibrated=True, velocity=True)
