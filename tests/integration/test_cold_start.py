"""Cold start on the real broker: a worker started from a bootstrap serves new items at once.

The worker runs with users' content tastes on (``--taste-weight``), so served vectors are
twice ``--dim`` long and the replica is told so (``--dim 64``); and again as MovieLens is
evaluated at the worker's cadence: the halves calibrated (``--calibrate``: ``2 * dim + 2``)
and young items' velocity served (``--velocity-weight``: one more), the replica at
``--dim 67 --calibrated --velocity``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from evaluation.data import generated_stream, split
from evaluation.run import CachedEncoder, run_bootstrap
from services.local import LocalPipeline, PipelineConfig
from services.producer import EventProducer
from stream.bootstrap import BootstrapConfig, Bootstrapped
from stream.content import MiniLM

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def boot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bootstrapped, Path]:
    path: Path = tmp_path_factory.mktemp("boot") / "boot.pt"
    history, _ = split(generated_stream(users=80, items=240, clusters=4, events=3000, seed=5), 0.9)
    boot = run_bootstrap(history, CachedEncoder(MiniLM().encode), BootstrapConfig(epochs=3))
    boot.save(path)
    return boot, path


SERVING = {  # worker args beside --init-from, api args
    "taste": (("--taste-weight", "0.5"), ("--dim", "64")),
    "calibrated": (
        ("--taste-weight", "1", "--calibrate", "--velocity-weight", "0.2"),
        ("--dim", "67", "--calibrated", "--velocity"),
    ),
}


@pytest.fixture(scope="module", params=list(SERVING))
def booted(
    request: pytest.FixtureRequest,
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
    boot: tuple[Bootstrapped, Path],
) -> Iterator[LocalPipeline]:
    tag = uuid.uuid4().hex[:8]
    worker, api = SERVING[request.param]
    config = PipelineConfig(
        tmp_path_factory.mktemp("cold"), bootstrap=kafka_bootstrap, topic_prefix=f"c{tag}-",
        app_id=f"cold-{tag}", partitions=1, api_args=api,
        worker_args=("--init-from", str(boot[1]), *worker),
    )  # fmt: skip
    with LocalPipeline(config) as pipe:
        yield pipe


def wait_for(check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def similar(pipe: LocalPipeline, item: str) -> Any:
    try:
        return pipe.get(f"/items/{item}/similar?k=5")
    except OSError:  # 404 until the item's vector is in the index
        return None


def test_a_fresh_worker_publishes_the_bootstrap(
    booted: LocalPipeline, boot: tuple[Bootstrapped, Path]
) -> None:
    n_items = len(boot[0].items)
    assert wait_for(lambda: booted.get("/stats")["items"] >= n_items, 90), booted.get("/stats")


def test_a_new_item_is_retrievable_once_its_content_arrives(booted: LocalPipeline) -> None:
    with EventProducer(booted.bootstrap, booted.config.topics) as producer:
        producer.send_item("brand-new-lp", {"title": "vintage jazz vinyl", "tags": ["bebop"]})
        producer.send_item("no-content", {"title": "", "tags": []})  # dead-lettered, counted
        producer.flush()
    found = wait_for(lambda: similar(booted, "brand-new-lp"), 60)
    assert found and len(found["items"]) == 5, f"see {booted.log_path('worker')}"
    assert booted.worker_metric("streambed_worker_content_items_total") >= 1
    dead = 'streambed_worker_dead_letters_total{reason="missing_content"}'
    assert wait_for(lambda: booted.worker_metric(dead) >= 1, 10)
    assert similar(booted, "no-content") is None


def test_a_new_user_who_takes_a_new_item_gets_personal_recommendations(
    booted: LocalPipeline,
) -> None:
    with EventProducer(booted.bootstrap, booted.config.topics) as producer:
        producer.send_item("taste-lp", {"title": "modal jazz vinyl", "tags": ["bebop"]})
        producer.flush()
        assert wait_for(lambda: similar(booted, "taste-lp"), 60)
        producer.send({"event_id": "taste-1", "user_id": "taste-user", "item_id": "taste-lp",
                       "type": "purchase", "ts": time.time()})  # fmt: skip
        producer.flush()

    def personal() -> Any:
        got = booted.get("/recommendations/taste-user?k=5")
        return got if got["strategy"] != "popular" else None

    got = wait_for(personal, 60)
    assert got and len(got["items"]) == 5, f"see {booted.log_path('worker')}"
    assert booted.get("/stats")["users"] >= 1
