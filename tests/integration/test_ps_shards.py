"""Parameter-server shards as separate processes over gRPC (localhost only)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from paramserver.ps import ParameterServer
from paramserver.remote import METHOD, RemotePS, encode_frame
from services.datagen import GeneratorConfig, InteractionGenerator
from services.kafka.broker import free_port
from services.kafka.topics import ensure_topics
from services.local import metric_sum
from services.producer import EventProducer
from stream.model import TwoTower
from stream.schemas import Interaction
from stream.topics import Topics
from stream.training import OnlineTrainer, TrainConfig

pytestmark = pytest.mark.integration

TRAIN = TrainConfig(dim=8, lr=0.1)
SHARD_ARGS = ["--dim", "8", "--lr", "0.1"]


class Shard:
    def __init__(self, log: Path, state_dir: Path | None = None) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log, self.state_dir = log, state_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        extra = ["--state-dir", str(self.state_dir)] if self.state_dir else []
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "ps-shard", "--port", str(self.port),
                 *SHARD_ARGS, *extra],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        channel = grpc.insecure_channel(self.address)
        try:
            grpc.channel_ready_future(channel).result(timeout=60)
        except grpc.FutureTimeoutError:
            raise AssertionError(f"shard did not start; see {self.log}") from None
        finally:
            channel.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)


@pytest.fixture
def shards(tmp_path: Path) -> Iterator[list[Shard]]:
    started = [Shard(tmp_path / f"shard{n}.log", tmp_path / f"db{n}") for n in range(2)]
    try:
        for shard in started:
            shard.start()
        yield started
    finally:
        for shard in started:
            shard.stop()


def test_two_remote_shards_behave_like_the_in_process_server(shards: list[Shard]) -> None:
    remote = RemotePS([s.address for s in shards])
    local = ParameterServer(TRAIN.tables())
    rng = np.random.default_rng(0)
    ids = [f"item-{n}" for n in range(300)]
    try:
        for step in range(5):
            batch = [ids[i] for i in rng.integers(0, len(ids), size=256)]  # with duplicates
            assert np.array_equal(
                remote.admit("items", batch, now=step), local.admit("items", batch, now=step)
            )
            grads = rng.standard_normal((len(batch), 8)).astype(np.float32)
            remote.push("items", batch, grads, now=step)
            local.push("items", batch, grads, now=step)
        probe = ids + ["never-seen"]
        r_vecs, r_hit = remote.pull("items", probe)
        l_vecs, l_hit = local.pull("items", probe)
        assert np.array_equal(r_hit, l_hit) and np.array_equal(r_vecs, l_vecs)
        assert np.array_equal(remote.meta("items", probe)[0], local.meta("items", probe)[0])
        assert remote.size("items") == local.size("items")
        sampled = remote.sample("items", 50, seed=1)
        assert len(sampled) == 50 and set(sampled) <= set(ids)
        assert remote.sample("items", 50, seed=1) == sampled  # seeded: deterministic
        assert remote.pull("users", ["nobody"])[1].tolist() == [False]  # reads create nothing
        assert remote.size("users") == 0
        # put (a bootstrap's rows) lands on the right shards, with its update counts
        rows = rng.standard_normal((40, 8)).astype(np.float32)
        users = [f"boot-{n}" for n in range(40)]
        counts = np.arange(40)
        remote.put("users", users, rows, now=9.0, updates=counts)
        local.put("users", users, rows, now=9.0, updates=counts)
        assert np.array_equal(remote.pull("users", users)[0], rows)
        assert remote.meta("users", users)[0].tolist() == counts.tolist()
        with pytest.raises(ValueError, match="shape"):
            remote.put("users", ["x"], rows[:1, :4], now=1.0)
    finally:
        remote.close()


def test_bad_requests_get_clear_errors_and_leave_the_tables_alone(shards: list[Shard]) -> None:
    remote = RemotePS([s.address for s in shards])
    try:
        remote.admit("items", ["a", "b", "c"], now=0)
        before = remote.pull("items", ["a", "b", "c"])[0]
        with pytest.raises(ValueError, match="shape"):
            remote.push("items", ["a"], np.ones((1, 3), dtype=np.float32), now=1)
        with pytest.raises(ValueError, match="non-empty string"):
            remote.pull("items", ["a", ""])
        with pytest.raises(ValueError, match="non-empty string"):
            remote.pull("items", ["a", 7])  # type: ignore[list-item]
        with pytest.raises(KeyError, match="no table"):
            remote.pull("nope", ["a"])
        with pytest.raises(ValueError, match="--taste-weight"):  # shards without the taste table
            OnlineTrainer(remote, TwoTower.create(8), TrainConfig(dim=8, taste_weight=0.5))
        with pytest.raises(KeyError, match="admit them first"):
            remote.push("items", ["zzz"], np.ones((1, 8), dtype=np.float32), now=1)
        channel = grpc.insecure_channel(shards[0].address)
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        for frame in (b"\x01", b"\xff\xff\xff\x00{}", encode_frame({"op": "explode"}),
                      encode_frame({"op": "push", "table": "items", "ids": ["a"], "now": 1},
                                   np.ones(3, dtype=np.float32))):  # fmt: skip
            with pytest.raises(grpc.RpcError) as err:
                call(frame, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        channel.close()
        assert np.array_equal(remote.pull("items", ["a", "b", "c"])[0], before)
        assert remote.meta("items", ["a"])[0].tolist() == [0]
    finally:
        remote.close()


def test_a_shard_with_a_token_refuses_calls_without_it() -> None:
    from paramserver.remote import ShardServer

    server = ShardServer(ParameterServer(TRAIN.tables()), token="s3cret")
    server.start()
    try:
        anonymous = RemotePS([server.address])
        with pytest.raises(PermissionError, match="token"):
            anonymous.admit("items", ["a"], now=0)
        anonymous.close()
        wrong = RemotePS([server.address], token="guess")
        with pytest.raises(PermissionError):
            wrong.size("items")
        wrong.close()
        assert server.ps.size("items") == 0
        trusted = RemotePS([server.address], token="s3cret")
        assert trusted.admit("items", ["a"], now=0).tolist() == [True]
        trusted.close()
    finally:
        server.stop()


def test_a_shard_killed_with_sigkill_restarts_from_its_last_checkpoint(
    shards: list[Shard],
) -> None:
    remote = RemotePS([s.address for s in shards])
    ids = [f"u{n}" for n in range(100)]
    try:
        remote.admit("users", ids, now=0)
        remote.push("users", ids, np.ones((100, 8), dtype=np.float32), now=1)
        remote.checkpoint()
        saved = remote.pull("users", ids)[0]
        for shard in shards:
            shard.stop(signal.SIGKILL)
            shard.start()
        assert np.array_equal(remote.pull("users", ids)[0], saved)
        assert remote.meta("users", ids)[0].tolist() == [1] * 100
    finally:
        remote.close()


def test_the_worker_trains_through_remote_shards(
    shards: list[Shard], kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"s{uuid.uuid4().hex[:8]}-"
    topics = Topics.with_prefix(prefix, partitions=2)
    ensure_topics(kafka_bootstrap, topics)
    gen = InteractionGenerator(GeneratorConfig(users=50, items=200, seed=2))
    events = [r for r in gen.replay(1500) if isinstance(r, Interaction)]
    port = free_port()
    log = tmp_path / "worker.log"
    with open(log, "ab") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker", "--bootstrap", kafka_bootstrap,
             "--topic-prefix", prefix, "--partitions", "2", "--app-id", f"w{prefix}",
             "--dim", "8", "--lr", "0.1", "--ps-shards", ",".join(s.address for s in shards),
             "--metrics-port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        with EventProducer(kafka_bootstrap, topics) as producer:
            for event in events:
                producer.send(event)
        deadline = time.monotonic() + 120
        consumed = 0.0
        while consumed < len(events) and time.monotonic() < deadline:
            assert worker.poll() is None, f"worker died; see {log}"
            time.sleep(0.5)
            try:
                consumed = metric_sum(url, "streambed_worker_events_total")
            except OSError:
                continue
        assert consumed == len(events), f"consumed {consumed} of {len(events)}; see {log}"
        remote = RemotePS([s.address for s in shards])
        try:
            users = {e.user_id for e in events}
            assert remote.size("users") == len(users)
            assert all(remote.meta("users", sorted(users))[0] > 0)
        finally:
            remote.close()
        assert metric_sum(url, "streambed_ps_requests_total") > 0
    finally:
        worker.terminate()
        worker.wait(timeout=30)
