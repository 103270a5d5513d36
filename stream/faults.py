"""Fault injection for the crash tests, off unless its environment variables are set.

``STREAMBED_FAULT_CHECKPOINT_PAUSE_S``: each checkpoint sleeps that long (blocking, as a
slow disk would) just before it drains and commits (a scale-out worker: with its
transaction open, everything sent, just before it commits); ``STREAMBED_FAULT_MARK`` names
a file touched first, so a test can kill -9 the worker inside a checkpoint.

``STREAMBED_FAULT_FAIL_SEND_AT``: the worker's N-th send (a batch of vectors or one dead
letter) raises, as a send the broker refuses would; once per environment (the restarted
process inherits ``STREAMBED_FAULT_SEND_FAILED`` and sends normally), so a test sees the
halt and the recovery.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


class InjectedFault(RuntimeError):
    pass


def checkpoint_pause() -> None:
    pause = float(os.environ.get("STREAMBED_FAULT_CHECKPOINT_PAUSE_S") or 0)
    if pause > 0:
        mark = os.environ.get("STREAMBED_FAULT_MARK")
        if mark:
            Path(mark).touch()
        time.sleep(pause)


class SendFault:
    """Counts sends; raises on the configured one."""

    def __init__(self) -> None:
        at = os.environ.get("STREAMBED_FAULT_FAIL_SEND_AT")
        done = os.environ.get("STREAMBED_FAULT_SEND_FAILED")
        self.at = int(at) if at and not done else 0
        self.sent = 0

    def check(self) -> None:
        if not self.at:
            return
        self.sent += 1
        if self.sent == self.at:
            os.environ["STREAMBED_FAULT_SEND_FAILED"] = "1"
            raise InjectedFault(f"injected: send {self.sent} refused")
