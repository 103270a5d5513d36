"""bench.scale end to end at toy sizes on the test broker (no timing is asserted)."""

from __future__ import annotations

from pathlib import Path

from bench import scale


def test_scale_drains_with_one_and_two_workers(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    r = scale.main(["--bootstrap", kafka_bootstrap, "--events", "1500", "--workers", "2",
                    "--out", str(out)])  # fmt: skip
    assert out.exists() and r["raw_kafka_python_consume_eps"] > 0
    assert set(r["runs"]) == {"single", "scale1", "scale2"}
    assert all(run["eps"] > 0 for run in r["runs"].values())
    assert r["runs"]["scale2"]["workers"] == 2 and r["ratio_scaleN_to_scale1"] > 0
