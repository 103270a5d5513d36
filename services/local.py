"""Run the whole pipeline on this machine: broker, topics, a worker and an API replica.

Used by ``streambed demo``, the integration tests and the benchmarks, so all
three exercise the same processes a user would start by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.kafka.broker import DEFAULT_LIB_DIR, BrokerConfig, LocalBroker, free_port
from services.kafka.topics import ensure_topics
from stream.topics import Topics


@dataclass(frozen=True)
class PipelineConfig:
    state_dir: Path
    bootstrap: str | None = None  # None: start a local broker in state_dir/kafka
    topic_prefix: str = ""
    partitions: int = 4
    app_id: str = "streambed-worker"
    worker_args: tuple[str, ...] = ()
    api_args: tuple[str, ...] = ()
    lib_dir: Path = DEFAULT_LIB_DIR
    env: Mapping[str, str] = field(default_factory=dict)  # added to every process's environment
    start_timeout: float = 90.0

    @property
    def topics(self) -> Topics:
        return Topics.with_prefix(self.topic_prefix, partitions=self.partitions)


@dataclass
class LocalPipeline:
    config: PipelineConfig
    broker: LocalBroker | None = None
    bootstrap: str = ""
    api_url: str = ""
    worker_metrics_url: str = ""
    # Prometheus scrape targets (host:port, path /metrics) by job: worker, api
    metrics_targets: dict[str, list[str]] = field(default_factory=dict)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __enter__(self) -> LocalPipeline:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        if cfg.bootstrap is None:
            self.broker = LocalBroker(
                BrokerConfig(cfg.state_dir / "kafka", port=free_port(),
                             controller_port=free_port(), lib_dir=cfg.lib_dir)
            )  # fmt: skip
            self.broker.start(timeout=cfg.start_timeout)
            self.bootstrap = self.broker.config.bootstrap
        else:
            self.bootstrap = cfg.bootstrap
        ensure_topics(self.bootstrap, cfg.topics)
        self.start_worker()
        self.start_api()

    def _common(self) -> list[str]:
        return ["--bootstrap", self.bootstrap, "--topic-prefix", self.config.topic_prefix,
                "--partitions", str(self.config.partitions)]  # fmt: skip

    def _wait_for(self, url: str, what: str) -> None:
        deadline = time.monotonic() + self.config.start_timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"{what} did not start; see the logs in {self.config.state_dir}")

    def start_worker(self) -> None:
        port = free_port()
        self.worker_metrics_url = f"http://127.0.0.1:{port}/metrics"
        self.metrics_targets["worker"] = [f"127.0.0.1:{port}"]
        self._spawn(
            "worker",
            ["worker", *self._common(), "--app-id", self.config.app_id,
             "--metrics-port", str(port), "--state-dir", str(self.config.state_dir / "worker"),
             *self.config.worker_args],
        )  # fmt: skip
        # its /metrics comes up once the worker has loaded (encoder, bootstrap, checkpoint)
        self._wait_for(self.worker_metrics_url, "worker")

    def start_api(self) -> None:
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        self.metrics_targets["api"] = [f"127.0.0.1:{port}"]
        self._spawn("api", ["api", *self._common(), "--port", str(port),
                            "--save-dir", str(self.config.state_dir / "api"),
                            "--worker-group", self.config.app_id,
                            *self.config.api_args])  # fmt: skip
        deadline = time.monotonic() + self.config.start_timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(OSError, ValueError):
                if self.get("/healthz")["caught_up"]:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"API did not become ready; see {self.log_path('api')}")

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.log_path(name), "ab")  # noqa: SIM115 - handed to the child process
        self._procs[name] = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "--log-level", "INFO", *args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **self.config.env},
        )  # fmt: skip
        log.close()

    def log_path(self, name: str) -> Path:
        return self.config.state_dir / f"{name}.log"

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}; see {self.log_path(name)}"
                )

    def pid(self, name: str) -> int | None:
        """The process id of one of the pipeline's processes (None: not running)."""
        proc = self._procs.get(name)
        return None if proc is None or proc.poll() is not None else proc.pid

    def alive(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def get(self, path: str, timeout: float = 5.0) -> Any:
        with urllib.request.urlopen(self.api_url + path, timeout=timeout) as resp:
            return json.loads(resp.read())

    def worker_metric(self, name: str) -> float:
        """Sum of all samples of one metric on the worker's /metrics (0 when unreachable)."""
        return metric_sum(self.worker_metrics_url, name)

    def api_metric(self, name: str) -> float:
        return metric_sum(self.api_url + "/metrics", name)

    def consumed(self) -> float:
        """Records the worker has finished with: learnt, dead-lettered or dropped as duplicate."""
        return sum(
            self.worker_metric(f"streambed_worker_{name}_total")
            for name in ("events", "dead_letters", "duplicate_events")
        )

    def stop_process(self, name: str, timeout: float = 20.0) -> None:
        proc = self._procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop(self) -> None:
        for name in ("api", "worker"):
            self.stop_process(name)
        if self.broker is not None:
            self.broker.stop()


def metric_sum(url: str, name: str) -> float:
    """Sum of the samples of metric ``name`` (a bare name, or one with a label selector
    written exactly as exposed) in a Prometheus text page; 0 when unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except (OSError, urllib.error.URLError):
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total
