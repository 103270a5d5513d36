"""The Grafana files in docker/ against the code that writes them (the queries themselves are
run against a real Prometheus in tests/integration/test_observability.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
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


def test_the_dashboards_type_check_against_grafanas_published_schema() -> None:
    """Each dashboard as a TypeScript object literal typed ``Dashboard`` from @grafana/schema
    (the version of Grafana in docker/compose.yml): ``tsc --strict`` rejects a missing or
    mistyped field and, literals being fresh, any field the schema does not know."""
    web = DOCKER.parent / "web"
    tsc = web / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true and no web/node_modules: scripts/setup.sh runs npm ci")
        pytest.skip("no web/node_modules (npm ci --prefix web)")
    pinned = json.loads((web / "package.json").read_text())["devDependencies"]["@grafana/schema"]
    assert f"grafana/grafana:{pinned}" in (DOCKER / "compose.yml").read_text()
    with tempfile.TemporaryDirectory(dir=web, prefix=".dashboards-") as tmp:
        files = []
        for path in sorted((DOCKER / "grafana" / "dashboards").glob("*.json")):
            source = Path(tmp) / f"{path.stem}.ts"
            source.write_text('import type { Dashboard } from "@grafana/schema";\n'
                              f"export const board: Dashboard = {path.read_text()};\n")  # fmt: skip
            files.append(source.name)
        assert len(files) == 4
        (Path(tmp) / "tsconfig.json").write_text(json.dumps({
            "compilerOptions": {"strict": True, "noEmit": True, "moduleResolution": "node",
                                "module": "esnext", "target": "es2020", "skipLibCheck": True},
            "files": files,
        }))  # fmt: skip
        done = subprocess.run([str(tsc), "-p", tmp], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promql_replaces_grafanas_interval_variables() -> None:
    assert promql("rate(x[$__rate_interval])", "1m") == "rate(x[1m])"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true and no promtool: scripts/setup.sh installs prometheus")
        pytest.skip("no promtool (apt-get install prometheus)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60,
                          cwd=DOCKER.parent)  # fmt: skip


def test_every_alert_fires_on_bad_series_and_stays_quiet_on_good_ones() -> None:
    """``promtool test rules``: made-up series through docker/alerts.yml."""
    checked = _promtool("check", "rules", "docker/alerts.yml")
    assert checked.returncode == 0 and "6 rules found" in checked.stdout, checked.stderr
    tested = _promtool("test", "rules", "tests/alerts_test.yml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_prometheus_config_is_valid() -> None:
    done = _promtool("check", "config", "docker/prometheus.yml")  # loads alerts.yml too
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = {"worker", "api"}
    assert all(f"job_name: {job}" in (DOCKER / "prometheus.yml").read_text() for job in jobs)
    json.dumps(build())  # plain JSON all the way down
