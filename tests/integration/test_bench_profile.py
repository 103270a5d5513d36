"""bench.profile end to end at toy sizes on the test broker (no timing is asserted)."""

from __future__ import annotations

from pathlib import Path

from bench import profile


def test_profile_gives_cpu_per_event_per_process(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    results = profile.main(["--bootstrap", kafka_bootstrap, "--events", "3000", "--warmup", "500",
                            "--rate", "500", "--seconds", "2", "--out", str(out)])  # fmt: skip
    assert out.exists() and results["raw_kafka_python_consume_eps"] > 0
    for phase in ("drain", "paced"):
        cpu = results[phase]["cpu_us"]
        assert set(cpu) == {"worker", "api", "producer"}  # the broker is not this run's
        assert cpu["worker"] > 0 and results[phase]["eps"] > 0
    assert results["paced"]["freshness_s"]["samples"] > 0
    assert "ratio to baseline" in profile.report(results)
