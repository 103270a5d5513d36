"""The docker stack, validated without an engine: docker-compose's `config` (Debian's package)
resolves docker/compose.yml, and the pieces it names must fit together."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
SECRETS = {"GRAFANA_ADMIN_PASSWORD": "grafana-secret"}


def _compose(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if shutil.which("docker-compose") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true and no docker-compose: scripts/setup.sh installs it")
        pytest.skip("no docker-compose (apt-get install docker-compose)")
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS and k != "STREAMBED_API_TOKEN"}
    return subprocess.run(
        ["docker-compose", "-p", "streambed", "-f", str(DOCKER / "compose.yml"), "config"],
        env={**clean, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    done = _compose(SECRETS)
    assert done.returncode == 0, done.stderr
    return dict(yaml.safe_load(done.stdout))


def test_the_stack_has_every_part(stack: dict[str, Any]) -> None:
    assert set(stack["services"]) == {"kafka", "topics", "worker", "api", "prometheus",
                                      "grafana"}  # fmt: skip
    kafka = stack["services"]["kafka"]
    pinned = re.search(
        r"<kafka.version>(.+)</kafka.version>", (DOCKER / "kafka/pom.xml").read_text()
    )
    assert pinned and kafka["image"] == f"apache/kafka:{pinned.group(1)}"  # the tested version
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    for name in ("topics", "worker", "api"):
        service = stack["services"][name]
        assert service["image"] == "streambed:latest"
        assert (ROOT / service["build"]["dockerfile"]).is_file()
        assert service["environment"]["STREAMBED_BOOTSTRAP"] == "kafka:9092"
    # workers scale out on Kafka: one consumer group, state in changelog topics; every
    # topic a worker reads has the partitions the topics service created
    worker = stack["services"]["worker"]["command"]
    assert "--scale-out" in worker and "--ps-shards" not in worker
    topics = stack["services"]["topics"]["command"]
    assert worker[worker.index("--partitions") + 1] == topics[topics.index("--partitions") + 1]


def test_published_ports_are_loopback_only_and_secrets_go_where_needed(
    stack: dict[str, Any],
) -> None:
    for name, service in stack["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    env = {name: s.get("environment", {}) for name, s in stack["services"].items()}
    assert env["api"]["STREAMBED_API_TOKEN"] == ""  # the gateway is off unless given a token


def test_workers_and_replicas_can_be_scaled(stack: dict[str, Any]) -> None:
    """`--scale worker=N --scale api=N` needs no fixed names, and a port range for the API."""
    for name in ("worker", "api"):
        assert "container_name" not in stack["services"][name]
    assert stack["services"]["api"]["ports"] == ["127.0.0.1:8000-8009:8000/tcp"]
    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    by_job = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    found = {job: by_job[job]["dns_sd_configs"][0] for job in ("worker", "api")}
    assert found["worker"]["names"] == ["worker"] and found["worker"]["port"] == 9100
    assert found["api"]["names"] == ["api"] and found["api"]["port"] == 8000
    assert "9100" in stack["services"]["worker"]["command"]


def test_mounted_files_exist(stack: dict[str, Any]) -> None:
    mounts = [v for s in stack["services"].values() for v in s.get("volumes", [])]
    binds = [str(v).split(":")[0] for v in mounts if str(v).startswith("/")]
    assert len(binds) == 4 and all(Path(b).exists() for b in binds), binds


def test_a_missing_secret_is_a_clear_error() -> None:
    done = _compose({})
    assert done.returncode != 0 and "set GRAFANA_ADMIN_PASSWORD" in done.stderr


def test_the_dockerfile_copies_what_exists_and_pins_torch() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert "torch==2.13.0" in text and "\nUSER streambed" in text
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
