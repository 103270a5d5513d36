"""Edge modules' logic that needs no broker: launcher errors, CLI config, metrics, codecs."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from services.api.metrics import ServingMetrics
from services.cli import DEFAULT_BOOTSTRAP, build_parser
from services.kafka.broker import BrokerConfig, BrokerError, LocalBroker, free_port, install
from services.local import metric_sum
from stream.metrics import WorkerMetrics
from stream.topics import Topics
from stream.training import TrainConfig
from stream.vectors import VectorRecord


def test_broker_without_jars_says_how_to_get_them(tmp_path: Path) -> None:
    broker = LocalBroker(BrokerConfig(tmp_path / "k", port=free_port(), lib_dir=tmp_path / "none"))
    with pytest.raises(BrokerError, match="streambed kafka install"):
        broker.start(timeout=1)
    assert broker.pid() is None and not broker.running()
    assert broker.stop() is False


def test_broker_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        broker = LocalBroker(BrokerConfig(tmp_path / "k", port=port))
        with pytest.raises(BrokerError, match="already in use"):
            broker.start(timeout=1)


def test_install_without_maven_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shutil.which", lambda _: None)
    with pytest.raises(BrokerError, match="mvn"):
        install(tmp_path / "lib")


def test_environment_sets_only_the_default_bootstrap() -> None:
    parser = build_parser({"STREAMBED_BOOTSTRAP": "kafka.internal:9092"})
    assert parser.parse_args(["topics"]).bootstrap == "kafka.internal:9092"
    assert parser.parse_args(["topics", "--bootstrap", "h:1"]).bootstrap == "h:1"
    assert build_parser({}).parse_args(["worker"]).bootstrap == DEFAULT_BOOTSTRAP
    api = build_parser({}).parse_args(["api"])
    assert api.host == "127.0.0.1"  # services bind to loopback unless told otherwise
    assert api.calibrated is False  # as the worker's --calibrate
    assert api.velocity is False  # as the worker's --velocity-weight


def test_worker_learning_defaults_are_the_trainers() -> None:
    # the parser keeps literals (stream.training is imported lazily): they must not drift
    args = build_parser({}).parse_args(["worker"])
    defaults = TrainConfig()
    names = ("lr", "temperature", "negatives", "blend_k", "session_weight", "fold_in",
             "negative_sampler", "calibrate", "velocity_weight")  # fmt: skip
    assert {n: getattr(args, n) for n in names} == {n: getattr(defaults, n) for n in names}
    assert build_parser({}).parse_args(["worker", "--temperature", "1"]).temperature == 1.0


def test_topic_prefix_namespaces_every_topic() -> None:
    topics = Topics.with_prefix("t1-", partitions=2)
    assert topics.partitions == 2
    assert {topics.interactions, topics.dlq, topics.items, topics.item_vectors,
            topics.user_vectors} == {"t1-interactions", "t1-interactions.dlq", "t1-items",
                                     "t1-item-vectors", "t1-user-vectors"}  # fmt: skip


def test_metrics_live_on_the_injected_registry_only() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    WorkerMetrics.create(a).dead_letters.labels(reason="bad_json").inc()
    ServingMetrics.create(a).freshness_seconds.labels(kind="item").observe(0.2)
    WorkerMetrics.create(b)  # a second registry: no duplicate-timeseries clash
    reason = {"reason": "bad_json"}
    assert a.get_sample_value("streambed_worker_dead_letters_total", reason) == 1.0
    assert b.get_sample_value("streambed_worker_dead_letters_total", reason) is None
    count = a.get_sample_value("streambed_api_freshness_seconds_count", {"kind": "item"})
    assert count == 1.0


def test_metric_sum_of_an_unreachable_page_is_zero() -> None:
    assert metric_sum(f"http://127.0.0.1:{free_port()}/metrics", "x") == 0.0


def test_vector_record_rejects_garbage() -> None:
    with pytest.raises((ValueError, KeyError)):
        VectorRecord.decode(b'{"id": "a"}')
    rec = VectorRecord("a", np.arange(3, dtype=np.float32), 1, 5)
    assert VectorRecord.decode(rec.encode()).vector.dtype == np.float32


def test_the_tailer_skips_bad_vector_records_and_applies_the_rest() -> None:
    from types import SimpleNamespace

    from services.ann.updater import VectorTailer
    from services.api.state import ServingState

    registry = CollectorRegistry()
    metrics = ServingMetrics.create(registry)
    state = ServingState(dim=2)
    tailer = VectorTailer("127.0.0.1:1", Topics(), state, metrics)
    good = VectorRecord("ok", np.array([1, 0], dtype=np.float32), 1, 0).encode()
    wrong_dim = VectorRecord("bad", np.ones(3, dtype=np.float32), 1, 0).encode()
    nan = VectorRecord("nan", np.array([np.nan, 0], dtype=np.float32), 1, 0).encode()
    records = [SimpleNamespace(key=b"k", value=v, offset=n)
               for n, v in enumerate([b"garbage", wrong_dim, nan, None, good])]  # fmt: skip
    tailer._apply(Topics().item_vectors, records)
    assert len(state.index) == 1 and "ok" in state.index
    assert registry.get_sample_value("streambed_api_bad_vector_records_total") == 3.0


def test_the_tailer_applies_tombstones_in_order_with_the_vectors_around_them() -> None:
    from types import SimpleNamespace

    from services.ann.updater import VectorTailer
    from services.api.state import ServingState

    registry = CollectorRegistry()
    state = ServingState(dim=2)
    tailer = VectorTailer("127.0.0.1:1", Topics(), state, ServingMetrics.create(registry))
    vec = VectorRecord("a", np.array([1, 0], dtype=np.float32), 1, 0).encode()
    other = VectorRecord("b", np.array([0, 1], dtype=np.float32), 1, 0).encode()

    def recs(*pairs: tuple[bytes, bytes | None]) -> list[SimpleNamespace]:
        return [SimpleNamespace(key=k, value=v, offset=n) for n, (k, v) in enumerate(pairs)]

    tailer._apply(Topics().item_vectors, recs((b"a", vec), (b"b", other), (b"a", None)))
    assert "a" not in state.index and "b" in state.index and len(state.index) == 1
    tailer._apply(Topics().item_vectors, recs((b"b", None), (b"b", other)))  # evicted, back
    assert "b" in state.index
    assert [i for i, _ in state.index.search(np.array([1.0, 1.0], dtype=np.float32), 5)] == ["b"]
    state.apply_users([VectorRecord("u", np.ones(2, dtype=np.float32), 1, 0)], 0)
    tailer._apply(Topics().user_vectors, recs((b"u", None)))
    assert state.user_vector("u") is None
    kinds = {"kind": "item"}, {"kind": "user"}
    got = [registry.get_sample_value("streambed_api_evictions_applied_total", k) for k in kinds]
    assert got == [2.0, 1.0]


def test_cluster_ids_never_look_like_an_option() -> None:
    from services.kafka.broker import cluster_id

    ids = [cluster_id() for _ in range(2000)]  # ~31 of these would start with '-' unguarded
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids) and len(set(ids)) == len(ids)
