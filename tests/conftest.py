"""Shared guards: a test must not leak environment variables or non-daemon threads."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

# libraries set these once, lazily, on first use; not a test's doing: torch the first time
# an optimizer steps, implicit (the evaluation's ALS) when it is first imported
TORCH_SETS = {"TORCHINDUCTOR_CACHE_DIR", "KMP_DUPLICATE_LIB_OK"}


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    env_before = dict(os.environ)
    threads_before = {t.ident for t in threading.enumerate()}
    yield
    leaked_env = {k for k in os.environ.keys() ^ env_before.keys()} - TORCH_SETS
    assert not leaked_env, f"test changed environment variables: {sorted(leaked_env)}"
    leaked = [
        t.name
        for t in threading.enumerate()
        if t.ident not in threads_before and t.is_alive() and not t.daemon
    ]
    assert not leaked, f"test leaked threads: {leaked}"
