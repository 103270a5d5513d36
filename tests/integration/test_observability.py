"""Metrics and dashboards against a real Prometheus (Debian's package) scraping a running
pipeline: a broker, a worker and an API replica, with events flowing.

Every PromQL query of the Grafana dashboards in ``docker/grafana/dashboards`` must be
accepted by Prometheus and answer with at least one finite number, and every
process's ``/metrics`` must pass ``promtool check metrics`` (the naming conventions).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from services.dashboards import promql, queries
from services.local import LocalPipeline, PipelineConfig
from services.prometheus import LocalPrometheus, PromQLError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "docker" / "grafana" / "dashboards"
TOKEN = "test-token-" + uuid.uuid4().hex[:8]
RATE_INTERVAL = "30s"  # covers the whole load below at a 1 s scrape interval


def _require(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and no {tool!r}: scripts/setup.sh installs it", pytrace=False)
        pytest.skip(f"no {tool!r} on PATH (apt-get install prometheus)")


@pytest.fixture(scope="module")
def observed(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalPipeline, LocalPrometheus]]:
    """The pipeline after ~12 s of events (valid, bad and through the gateway) and requests,
    with Prometheus having scraped it every second throughout."""
    _require("prometheus")
    tag = uuid.uuid4().hex[:8]
    state = tmp_path_factory.mktemp(f"observed-{tag}")
    config = PipelineConfig(
        state, bootstrap=kafka_bootstrap, topic_prefix=f"o{tag}-", app_id=f"worker-{tag}",
        partitions=2, api_args=("--save-seconds", "2"), env={"STREAMBED_API_TOKEN": TOKEN},
    )  # fmt: skip
    with LocalPipeline(config) as pipe:
        prom = LocalPrometheus(state / "prometheus", pipe.metrics_targets, interval=1.0,
                               rule_files=[ROOT / "docker" / "alerts.yml"])  # fmt: skip
        with prom:
            _drive(pipe)
            yield pipe, prom


def _drive(pipe: LocalPipeline) -> None:
    topic = pipe.config.topics.interactions
    producer = KafkaProducer(bootstrap_servers=pipe.bootstrap)
    for bad in (b"{broken", b'{"event_id": "x"}', b"[]"):  # three dead-letter reasons
        producer.send(topic, bad)
    producer.flush()
    producer.close()
    replay = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "replay", "--bootstrap", pipe.bootstrap,
         "--topic-prefix", pipe.config.topic_prefix, "--api", pipe.api_url,
         "--group", pipe.config.app_id, "--generate", "3000", "--rate", "250", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        n = 0
        while replay.poll() is None and time.monotonic() < deadline:
            n += 1
            pipe.get(f"/recommendations/u{n % 50}?k=5")
            status = _post_events(pipe, [_event(n)])
            assert status == 202, status
            time.sleep(0.25)
        _post_events(pipe, [{"event_id": "bad"}])  # refused by the gateway: one reason
        out, _ = replay.communicate(timeout=60)
    finally:
        if replay.poll() is None:  # a failed step above must not leave the load running
            replay.kill()
            replay.wait(10)
    assert replay.returncode == 0, out.decode()
    with contextlib.suppress(urllib.error.HTTPError):  # a 404 is a request served too
        urllib.request.urlopen(pipe.api_url + "/items/nope/similar", timeout=5).close()
    time.sleep(3)  # a few more scrapes after the load


def _event(n: int) -> dict[str, Any]:
    return {"event_id": f"gw-{n}", "user_id": f"u{n % 50}", "item_id": f"i{n % 20}",
            "type": "click", "ts": time.time()}  # fmt: skip


def _post_events(pipe: LocalPipeline, events: list[dict[str, Any]]) -> int:
    request = urllib.request.Request(
        pipe.api_url + "/events", data=json.dumps({"events": events}).encode(), method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _boards() -> list[tuple[str, dict[str, Any]]]:
    return [(path.stem, json.loads(path.read_text())) for path in sorted(DASHBOARDS.glob("*.json"))]


def test_every_target_is_scraped(observed: tuple[LocalPipeline, LocalPrometheus]) -> None:
    _, prom = observed
    health = prom.targets_up()
    assert sorted({name.split("/")[0] for name in health}) == ["api", "worker"]
    assert len(health) == 2 and set(health.values()) == {"up"}, health


def test_every_dashboard_query_answers_with_numbers(
    observed: tuple[LocalPipeline, LocalPrometheus],
) -> None:
    _, prom = observed
    boards = _boards()
    assert [name for name, _ in boards] == ["freshness", "overview", "ps", "serving"]
    failures, checked = [], 0
    for name, board in boards:
        for title, expr in queries(board):
            checked += 1
            try:
                series = prom.query(promql(expr, RATE_INTERVAL))
            except PromQLError as err:
                failures.append(f"{name} / {title}: {err}")
                continue
            values = [float(s["value"][1]) for s in series]
            if not any(math.isfinite(v) for v in values):
                failures.append(f"{name} / {title}: no finite value ({expr} -> {values})")
    assert checked >= 30
    assert not failures, "\n".join(failures)


def test_the_panels_show_what_happened(observed: tuple[LocalPipeline, LocalPrometheus]) -> None:
    """Not just numbers: the ones the load above must have produced."""
    _, prom = observed

    def by(expr: str, label: str) -> dict[str, float]:
        return {s["metric"].get(label, ""): float(s["value"][1]) for s in prom.query(expr)}

    reasons = by("sum by (reason) (streambed_worker_dead_letters_total)", "reason")
    assert {"bad_json", "missing_user_id", "empty_batch"} <= set(reasons), reasons
    consumed = by("sum by (type) (streambed_worker_events_total)", "type")
    assert sum(consumed.values()) >= 3000 and consumed["click"] > 0
    lag = by("sum by (partition) (streambed_worker_consumer_lag_records)", "partition")
    assert lag == {"0": 0.0, "1": 0.0}  # drained: nothing left to process
    rows = by("sum by (table) (streambed_ps_rows)", "table")
    assert rows["items"] > 0 and rows["users"] > 0
    served = by("sum by (job) (rate(streambed_ps_request_seconds_count[30s]))", "job")
    assert served["worker"] > 0  # the worker's calls into its parameter server
    accepted = prom.query("sum(streambed_api_gateway_events_accepted_total)")
    assert float(accepted[0]["value"][1]) > 10
    rejected = by("sum by (reason) (streambed_api_gateway_events_rejected_total)", "reason")
    assert rejected.get("missing_user_id") == 1
    fresh = prom.query(
        promql(
            "histogram_quantile(0.5, sum by (le) (rate(streambed_api_freshness_seconds_bucket"
            '{kind="item"}[$__rate_interval])))',
            RATE_INTERVAL,
        )  # fmt: skip
    )
    assert 0 < float(fresh[0]["value"][1]) < 30
    endpoints = by("sum by (endpoint) (streambed_api_request_seconds_count)", "endpoint")
    assert endpoints["/recommendations/{user_id}"] > 10 and endpoints["/events"] > 10


def test_the_alerts_evaluate_on_the_real_series_and_agree_with_them(
    observed: tuple[LocalPipeline, LocalPrometheus],
) -> None:
    """docker/alerts.yml against a running pipeline: every rule evaluates without error;
    the five about failures stay inactive; the freshness rule is pending exactly when the
    p99 over its own window is above 1 s. That each rule fires on bad series is tested with
    promtool (tests/alerts_test.yml)."""
    _, prom = observed
    rules = {r["name"]: r for r in prom.rules()}
    assert len(rules) == 6
    assert all(r["health"] == "ok" and not r.get("lastError") for r in rules.values()), rules
    rule_expr = rules["StreambedFreshnessSlow"]["query"].rsplit(">", 1)[0]  # its own p99
    p99 = float(prom.query(rule_expr)[0]["value"][1])
    expected = {name: "inactive" for name in rules}
    expected["StreambedFreshnessSlow"] = "pending" if p99 > 1 else "inactive"
    assert {name: r["state"] for name, r in rules.items()} == expected, f"p99 {p99:.2f} s"


def test_every_process_follows_the_naming_conventions(
    observed: tuple[LocalPipeline, LocalPrometheus],
) -> None:
    """``promtool check metrics``: base units, ``_total`` counters, no reserved suffixes."""
    _require("promtool")
    pipe, _ = observed
    for job, targets in pipe.metrics_targets.items():
        for target in targets:
            with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as resp:
                text = resp.read()
            check = subprocess.run(["promtool", "check", "metrics"], input=text,
                                   capture_output=True, timeout=30)  # fmt: skip
            problems = (check.stdout + check.stderr).decode().strip()
            assert check.returncode == 0 and not problems, f"{job} {target}: {problems}"
