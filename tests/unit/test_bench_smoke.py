"""The benchmarks run end to end at toy sizes (no timing is asserted: that is their job)."""

from __future__ import annotations

from pathlib import Path

from bench import ann, http, sampler, velocity


def test_ann_benchmark_runs_and_reports_every_contender(tmp_path: Path) -> None:
    out = tmp_path / "ann.json"
    results = ann.main(["--items", "3000", "--queries", "20", "--seconds", "0.5",
                        "--update-items", "3000", "--freshness-seconds", "0.3",
                        "--freshness-rates", "300", "--ef-sweep", "64",
                        "--out", str(out)])  # fmt: skip
    assert out.exists()
    paths = results["update_paths"]
    assert set(paths) == {"hnswlib_readd", "hnswlib_replace_deleted", "graph_only",
                          "fresh_buffer"}  # fmt: skip
    assert paths["fresh_buffer"]["300"]["applied"] == paths["fresh_buffer"]["300"]["sent"]
    size = results["sizes"][0]
    assert size["static"]["recall_at_10"] > 0.8 and size["while_updating"]["queries"] > 0
    assert "baseline" in ann.report(results)


def test_http_benchmark_runs_against_a_real_server(tmp_path: Path) -> None:
    results = http.main(["--items", "500", "--users", "50", "--seconds", "0.3",
                         "--concurrency", "2", "--out", str(tmp_path / "http.json")])  # fmt: skip
    row = results["runs"][2]
    assert row["recommendations k=10"]["requests"] > 0
    assert all(r["errors"] == 0 for r in row.values())


def test_sampler_benchmark_checks_both_draws_agree_and_times_them(tmp_path: Path) -> None:
    # measure() raises if the incremental draw and the re-read-every-count one ever differ
    results = sampler.main(["--items", "500,3000", "--seconds", "0.1",
                            "--out", str(tmp_path / "sampler.json")])  # fmt: skip
    assert [r["items"] for r in results["rows"]] == [500, 3000]
    assert all(r["baseline_steps_s"] > 0 and r["sample_steps_s"] > 0 for r in results["rows"])


def test_velocity_benchmark_runs_both_workers_over_one_stream(tmp_path: Path) -> None:
    # main() raises if the two trained different rows (velocity is served, never trained)
    results = velocity.main(["--history", "1500", "--events", "1500",
                             "--out", str(tmp_path / "velocity.json")])  # fmt: skip
    assert results["steps"] >= 100 and results["ratio"] > 0
    published = results["items_published_per_step"]
    assert published["velocity"] >= published["baseline"] > 0
    assert results["trainer_state_bytes"]["velocity"] > results["trainer_state_bytes"]["baseline"]
