"""The Grafana dashboards, as data: ``streambed dashboards`` writes them to ``docker/grafana``.

Four dashboards (pipeline overview, freshness, parameter server, serving), each
a list of panels with their PromQL. The queries use Grafana's
``$__rate_interval``; :func:`promql` gives the text Prometheus receives. The
tests run every query of the JSON files in ``docker/grafana/dashboards``
against a real Prometheus scraping a running pipeline, and check that the
files are what this module writes.

Examples
--------
>>> boards = build()
>>> sorted(boards)
['freshness', 'overview', 'ps', 'serving']
>>> promql(boards["overview"]["panels"][0]["targets"][0]["expr"], rate_interval="15s")
'sum by (type) (rate(streambed_worker_events_total[15s]))'
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Q:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Q, ...]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    description: str = ""
    width: int = 12


def rate(metric: str, by: str = "", selector: str = "") -> str:
    """``sum by (by) (rate(metric{selector}[$__rate_interval]))``."""
    grouping = f"sum by ({by}) " if by else "sum "
    return f"{grouping}(rate({metric}{selector}[{RATE}]))"


def quantile(q: float, histogram: str, by: str = "", selector: str = "") -> str:
    """The ``q`` quantile of a histogram over the rate interval, per ``by`` group."""
    keys = ", ".join(["le", *([by] if by else [])])
    return (f"histogram_quantile({q}, sum by ({keys}) "
            f"(rate({histogram}_bucket{selector}[{RATE}])))")  # fmt: skip


def quantiles(histogram: str, selector: str = "", by: str = "") -> tuple[Q, ...]:
    prefix = f"{{{{{by}}}}} " if by else ""
    return tuple(Q(quantile(q, histogram, by, selector), f"{prefix}p{round(q * 100)}")
                 for q in (0.5, 0.95, 0.99))  # fmt: skip


def or_zero(expr: str) -> str:
    """A count that is 0 until something happens: the panel shows 0, not 'No data'."""
    return f"({expr}) or vector(0)"


W, PS, API = "streambed_worker", "streambed_ps", "streambed_api"

BOARDS: dict[str, tuple[str, list[Panel]]] = {
    "overview": ("streambed: pipeline overview", [
        Panel("Events consumed / s by type", (Q(rate(f"{W}_events_total", "type"), "{{type}}"),),
              "ops", description="Valid interaction events the stream workers trained on"),
        Panel("Dead letters / s by reason",
              (Q(or_zero(rate(f"{W}_dead_letters_total", "reason")), "{{reason}}"),), "ops",
              description="Records sent to interactions.dlq, with the reason in each record"),
        Panel("Consumer lag by partition",
              (Q(f"sum by (topic, partition) ({W}_consumer_lag_records)",
                 "{{topic}} p{{partition}}"),), "short",
              description="Records the worker group has not processed yet"),
        Panel("Micro-batch latency", quantiles(f"{W}_batch_seconds"), "s"),
        Panel("Training loss (last micro-batch)",
              (Q(f"avg by (instance) ({W}_training_loss)", "{{instance}}"),), "short"),
        Panel("Micro-batch size (records)", (Q(quantile(0.5, f"{W}_batch_events"), "p50"),
                                             Q(quantile(0.99, f"{W}_batch_events"), "p99")),
              "short"),
        Panel("Vectors published / s", (Q(rate(f"{W}_vectors_published_total", "kind"),
                                          "{{kind}}"),), "ops"),
        Panel("Duplicates and unadmitted events / s",
              (Q(rate(f"{W}_duplicate_events_total"), "duplicate event_id"),
               Q(rate(f"{W}_unadmitted_events_total"), "not yet admitted")), "ops"),
    ]),
    "freshness": ("streambed: freshness", [
        Panel("Freshness: event produced -> item searchable",
              quantiles(f"{API}_freshness_seconds", '{kind="item"}'), "s",
              description="Kafka timestamp of an event (its append to interactions) to "
                          "its changed item vector searchable in a replica", width=24),
        Panel("Freshness p99 by kind",
              (Q(quantile(0.99, f"{API}_freshness_seconds", "kind"), "{{kind}}"),), "s"),
        Panel("Updates searchable within 1 s",
              (Q(f'sum(rate({API}_freshness_seconds_bucket{{le="1.0"}}[{RATE}])) / '
                 f"sum(rate({API}_freshness_seconds_count[{RATE}]))", "share"),), "percentunit",
              kind="stat"),
        Panel("Worker: event age when its batch is processed",
              quantiles(f"{W}_event_age_seconds"), "s"),
        Panel("Replica lag by topic",
              (Q(f"sum by (topic) ({API}_consumer_lag_records)", "{{topic}}"),), "short"),
    ]),
    "ps": ("streambed: parameter server", [
        Panel("Rows by table", (Q(f"sum by (table) ({PS}_rows)", "{{table}}"),), "short"),
        Panel("Admissions / s", (Q(rate(f"{PS}_admissions_total", "table"), "{{table}}"),),
              "ops"),
        Panel("Evictions / s", (Q(rate(f"{PS}_evictions_total", "table"), "{{table}}"),), "ops",
              description="Rows expired by TTL or deleted"),
        Panel("Rows requested / s by op",
              (Q(rate(f"{PS}_rows_requested_total", "job, op"), "{{job}} {{op}}"),), "ops"),
        Panel("Call latency p99 by op",
              (Q(quantile(0.99, f"{PS}_request_seconds", "job, op"), "{{job}} {{op}}"),), "s",
              description="The single worker's calls into its in-process parameter server"),
        Panel("Refused calls / s",
              (Q(or_zero(rate(f"{PS}_errors_total", "reason")), "{{reason}}"),), "ops"),
    ]),
    "serving": ("streambed: serving", [
        Panel("Requests / s by endpoint",
              (Q(rate(f"{API}_request_seconds_count", "endpoint"), "{{endpoint}}"),), "reqps"),
        Panel("Request latency p99 by endpoint",
              (Q(quantile(0.99, f"{API}_request_seconds", "endpoint"), "{{endpoint}}"),), "s"),
        Panel("Items in the index", (Q(f"max({API}_index_items)", "items"),), "short",
              kind="stat", width=6),
        Panel("User vectors", (Q(f"max({API}_users)", "users"),), "short", kind="stat", width=6),
        Panel("Fresh buffer (not yet in the graph)",
              (Q(f"sum by (instance) ({API}_index_fresh_items)", "{{instance}}"),), "short"),
        Panel("Index upserts / s",
              (Q(rate(f"{API}_index_upserts_total"), "upserts"),
               Q(rate(f"{API}_index_buffered_total"), "into the fresh buffer"),
               Q(rate(f"{API}_index_drift_skips_total"), "below the drift threshold"),
               Q(rate(f"{API}_index_graph_writes_total"), "graph writes")), "ops"),
        Panel("Gateway events / s",
              (Q(or_zero(rate(f"{API}_gateway_events_accepted_total")), "accepted"),
               Q(or_zero(rate(f"{API}_gateway_events_rejected_total", "reason")),
                 "rejected {{reason}}")), "ops"),
        Panel("Replica snapshot duration", quantiles(f"{API}_snapshot_seconds"), "s"),
        Panel("Replica starts by source",
              (Q(f"sum by (result) ({API}_restores_total)", "{{result}}"),), "short"),
    ]),
}  # fmt: skip


def dashboard(uid: str, title: str, panels: list[Panel]) -> dict[str, Any]:
    return {
        "uid": f"streambed-{uid}",
        "title": title,
        "tags": ["streambed"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "annotations": {"list": []},
        "templating": {"list": []},
        "panels": list(_panels(panels)),
    }


def _panels(panels: list[Panel]) -> Iterator[dict[str, Any]]:
    x = y = row_height = 0
    for n, p in enumerate(panels, start=1):
        height = 4 if p.kind == "stat" else 8
        if x + p.width > 24:
            x, y, row_height = 0, y + row_height, 0
        yield {
            "id": n,
            "type": p.kind,
            "title": p.title,
            "description": p.description,
            "datasource": DATASOURCE,
            "gridPos": {"h": height, "w": p.width, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
            "options": _options(p.kind),
            "targets": [
                {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": q.expr,
                 "legendFormat": q.legend or "__auto", "range": True}
                for i, q in enumerate(p.queries)
            ],
        }  # fmt: skip
        x, row_height = x + p.width, max(row_height, height)


def _options(kind: str) -> dict[str, Any]:
    if kind == "stat":
        return {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "value", "graphMode": "area"}  # fmt: skip
    return {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"}}  # fmt: skip


def build() -> dict[str, dict[str, Any]]:
    return {uid: dashboard(uid, title, panels) for uid, (title, panels) in BOARDS.items()}


def promql(expr: str, rate_interval: str) -> str:
    """The query as Grafana sends it: its interval variables replaced."""
    return expr.replace(RATE, rate_interval)


def render(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for uid, board in build().items():
        path = directory / f"{uid}.json"
        path.write_text(render(board))
        written.append(path)
    return written


def queries(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expr) of every query of a dashboard's JSON."""
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
