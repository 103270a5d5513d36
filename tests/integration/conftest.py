"""A real Apache Kafka broker (KRaft) for the integration tests.

The session starts one broker from the project's own launcher on free
127.0.0.1 ports, or uses ``STREAMBED_TEST_BOOTSTRAP`` when set. Without a
broker the tests skip on a developer machine, but with ``CI=true`` they fail:
CI must never pass by skipping them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.kafka.broker import BrokerConfig, BrokerError, LocalBroker, free_port
from services.local import LocalPipeline, PipelineConfig


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and no Kafka broker: {reason}", pytrace=False)
    pytest.skip(f"no Kafka broker: {reason}")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("STREAMBED_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    data_dir = tmp_path_factory.mktemp("kafka")
    broker = LocalBroker(BrokerConfig(data_dir, port=free_port(), controller_port=free_port()))
    try:
        broker.start(timeout=90)
    except (BrokerError, OSError) as err:
        _unavailable(str(err))
    try:
        yield broker.config.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def pipeline(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalPipeline]:
    """A worker and an API replica on their own topics (a fresh namespace per module)."""
    tag = uuid.uuid4().hex[:8]
    state: Path = tmp_path_factory.mktemp(f"pipeline-{tag}")
    config = PipelineConfig(
        state, bootstrap=kafka_bootstrap, topic_prefix=f"t{tag}-", app_id=f"worker-{tag}",
        partitions=2,
    )  # fmt: skip
    with LocalPipeline(config) as pipe:
        yield pipe
