"""A Prometheus server (Debian's ``prometheus`` package) on 127.0.0.1, scraping a local pipeline.

Used by the dashboard tests, which run every PromQL query of ``docker/grafana``
against it, and by ``streambed demo --prometheus`` for a look at the metrics
without the docker stack. The scrape configuration is written as JSON, which
is YAML too.

Examples
--------
>>> import json
>>> json.loads(scrape_config({"worker": ["127.0.0.1:9100"]}, interval=1.0))["scrape_configs"]
[{'job_name': 'worker', 'static_configs': [{'targets': ['127.0.0.1:9100']}]}]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from services.kafka.broker import free_port


class PromQLError(RuntimeError):
    """Prometheus refused a query (a syntax error, an unknown function, ...)."""


def scrape_config(
    targets: Mapping[str, Sequence[str]], interval: float, rule_files: Sequence[Path] = ()
) -> str:
    """A ``prometheus.yml`` scraping ``/metrics`` of each job's ``host:port`` targets."""
    every = f"{max(1, round(interval))}s"
    return json.dumps({
        "global": {"scrape_interval": every, "evaluation_interval": every},
        "rule_files": [str(path.resolve()) for path in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(hosts)}]}
            for job, hosts in targets.items()
        ],
    })  # fmt: skip


class LocalPrometheus:
    def __init__(
        self,
        data_dir: Path,
        targets: Mapping[str, Sequence[str]],
        *,
        interval: float = 1.0,
        port: int = 0,
        binary: str = "prometheus",
        rule_files: Sequence[Path] = (),
    ) -> None:
        self.data_dir = data_dir
        self.rule_files = rule_files
        self.targets = targets
        self.interval = interval
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.binary = binary
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available(binary: str = "prometheus") -> bool:
        return shutil.which(binary) is not None

    def __enter__(self) -> LocalPrometheus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> None:
        if not self.available(self.binary):
            raise FileNotFoundError(
                f"no {self.binary!r} on PATH: install Debian's package (apt-get install "
                "prometheus; scripts/setup.sh does)"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "prometheus.yml"
        config.write_text(scrape_config(self.targets, self.interval, self.rule_files))
        log = open(self.data_dir / "prometheus.log", "ab")  # noqa: SIM115 - the child's
        self._proc = subprocess.Popen(
            [self.binary, f"--config.file={config}",
             f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self._proc.returncode}; see "
                                   f"{self.data_dir / 'prometheus.log'}")  # fmt: skip
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"prometheus did not get ready in {timeout:.0f} s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)

    def api(self, path: str, **params: str) -> Any:
        """One HTTP API call; its ``data``. A refused query raises :class:`PromQLError`."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as err:  # 400/422: the query is broken
            body = json.loads(err.read() or b"{}")
        if body.get("status") != "success":
            raise PromQLError(f"{body.get('errorType')}: {body.get('error')} ({params})")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's series (``[{"metric": {...}, "value": [t, "v"]}, ...]``)."""
        data = self.api("query", query=expr)
        if data["resultType"] not in ("vector", "matrix"):
            return [{"metric": {}, "value": data["result"]}]  # a scalar
        return list(data["result"])

    def rules(self) -> list[dict[str, Any]]:
        """Every alerting/recording rule with its ``health``, ``lastError`` and ``state``."""
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def targets_up(self) -> dict[str, str]:
        """``job/instance`` -> health of every active scrape target."""
        found = self.api("targets")["activeTargets"]
        return {f"{t['labels']['job']}/{t['labels']['instance']}": t["health"] for t in found}
