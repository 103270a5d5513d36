"""The Grafana files in docker/ against the code that writes them (the queries themselves are
run against a real Prometheus in tests/integration/test_observability.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from services.dashboards import DATASOURCE, build, promql, queries, render

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def test_the_committed_dashboards_are_what_the_code_writes() -> None:
    for uid, board in build().items():
        path = DOCKER / "grafana" / "dashboards" / f"{uid}.json"
        assert path.read_text() == render(board), f"run: streambed dashboards ({path} is stale)"


def test_every_panel_has_a_query_on_the_provisioned_datasource_and_fits_the_grid() -> None:
    provisioned = (DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text()
    assert f"uid: {DATASOURCE['uid']}" in provisioned
    for board in build().values():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in board["panels"]:
            assert panel["targets"] and panel["datasource"] == DATASOURCE
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24
        exprs = [expr for _, expr in queries(board)]
        assert all(e.startswith(("sum", "avg", "max", "histogram_quantile", "(")) for e in exprs)


def test_promql_replaces_grafanas_interval_variables() -> None:
    assert promql("rate(x[$__rate_interval])", "1m") == "rate(x[1m])"


def test_prometheus_config_is_valid() -> None:
    if shutil.which("promtool") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true and no promtool: scripts/setup.sh installs prometheus")
        pytest.skip("no promtool (apt-get install prometheus)")
    done = subprocess.run(["promtool", "check", "config", str(DOCKER / "prometheus.yml")],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = {"worker", "ps", "api"}
    assert all(f"job_name: {job}" in (DOCKER / "prometheus.yml").read_text() for job in jobs)
    json.dumps(build())  # plain JSON all the way down
