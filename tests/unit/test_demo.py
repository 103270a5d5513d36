"""The demo's own state: a second run must not resume the first one's worker."""

from __future__ import annotations

from pathlib import Path

from services.demo import RUN_STATE, fresh_state


def test_a_demo_run_clears_the_last_runs_broker_worker_and_replica(tmp_path: Path) -> None:
    for name in RUN_STATE:
        (tmp_path / name / "deep").mkdir(parents=True)
        (tmp_path / name / "deep" / "data").write_bytes(b"x")
    (tmp_path / "bootstrap.pt").write_bytes(b"weights")
    (tmp_path / "worker.log").write_text("log")
    gone = fresh_state(tmp_path)
    assert sorted(p.name for p in gone) == sorted(RUN_STATE)
    assert not any((tmp_path / name).exists() for name in RUN_STATE)
    assert (tmp_path / "bootstrap.pt").read_bytes() == b"weights"  # the bootstrap is reused
    assert (tmp_path / "worker.log").exists()
    assert fresh_state(tmp_path) == []  # nothing left to clear
