"""A worker subprocess for the crash tests: started with its own /metrics port and any extra
environment (fault hooks), killed with SIGKILL, stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from services.kafka.broker import free_port


class WorkerProcess:
    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args  # the command line, without --metrics-port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_url = ""
        self.env: dict[str, str] = {}  # added to the environment of every start

    def start(self) -> None:
        port = free_port()
        self.metrics_url = f"http://127.0.0.1:{port}/metrics"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.args, "--metrics-port", str(port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
            )  # fmt: skip

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.alive(), f"worker died; see {self.log}: {self.log.read_text()[-2000:]}"
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
