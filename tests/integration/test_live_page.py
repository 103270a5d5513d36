"""The built-in live page in headless Chromium (Debian's package, driven by Playwright)
against a running pipeline while events flow: it must render real numbers, move the
projected item points, list a user's recommendations, and load nothing from elsewhere."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.local import LocalPipeline

pytestmark = pytest.mark.integration

NUMBER = re.compile(r"^\d[\d,]*(\.\d+)?$")
DURATION = re.compile(r"^\d[\d,]*(\.\d+)? (ms|s)$")


def _browser_or_skip() -> None:
    from services.browser import find_chromium

    problem = None
    try:
        import playwright  # noqa: F401
    except ImportError:
        problem = "playwright is not installed"
    if find_chromium() is None:
        problem = "no chromium on PATH (apt-get install chromium)"
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {problem}: scripts/setup.sh installs it", pytrace=False)
        pytest.skip(problem)


def test_the_live_page_shows_the_pipeline_as_it_learns(
    pipeline: LocalPipeline, tmp_path: Path
) -> None:
    _browser_or_skip()
    from services.browser import browser_page, wait_for_live_page

    config = pipeline.config
    replay = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "replay", "--bootstrap", pipeline.bootstrap,
         "--topic-prefix", config.topic_prefix, "--api", pipeline.api_url,
         "--group", config.app_id, "--generate", "5000", "--rate", "250", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    requests: list[str] = []
    problems: list[str] = []
    try:
        with browser_page() as page:
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.goto(pipeline.api_url + "/live")
            wait_for_live_page(page, polls=2, timeout_s=30)
            user_with_vector = _user_with_vector(pipeline)
            # events flow: the rates are real numbers above zero, and so is freshness
            live = "window.streambedLive"
            page.wait_for_function(f"{live}.rates && {live}.rates.events > 0", timeout=30_000)
            page.wait_for_function("window.streambedLive.data.freshness_seconds.samples > 0",
                                   timeout=30_000)  # fmt: skip
            # the projection is drawn and its points move as the vectors learn
            page.wait_for_function("window.streambedLive.points > 0 && "
                                   "window.streambedLive.moved > 0", timeout=30_000)  # fmt: skip
            # a recently active user (filled in by the page) gets a list
            page.wait_for_function("window.streambedLive.recs.length > 0", timeout=30_000)
            page.wait_for_function("document.getElementById('worker-lag').textContent !== '–'",
                                   timeout=30_000)  # fmt: skip
            # driving it: another user typed in gets their own list
            page.fill("#user", "someone-with-no-events")
            page.wait_for_function(f"{live}.recsUser === 'someone-with-no-events'",
                                   timeout=10_000)  # fmt: skip
            stranger = page.inner_text("#recs-info")
            page.fill("#user", user_with_vector)
            page.wait_for_function(f"{live}.recsUser === {user_with_vector!r}", timeout=10_000)
            known = page.inner_text("#recs-info")
            text = {name: page.inner_text(f"#{name}").strip()
                    for name in ("events-rate", "vectors-rate", "fresh-p50", "fresh-p99",
                                 "worker-lag", "replica-lag", "items", "users")}  # fmt: skip
            recs = page.locator("#recs li").all_inner_texts()
            user = page.input_value("#user")
            state = page.evaluate("window.streambedLive")
            shot = tmp_path / "live.png"
            page.screenshot(path=str(shot), full_page=True)
    finally:
        replay.wait(timeout=120)
    for name in ("events-rate", "vectors-rate", "worker-lag", "replica-lag", "items", "users"):
        assert NUMBER.match(text[name]), (name, text[name])
    assert float(text["items"].replace(",", "")) > 0
    assert DURATION.match(text["fresh-p50"]) and DURATION.match(text["fresh-p99"]), text
    assert user and 1 <= len(recs) <= 10
    assert stranger.startswith("popular") and known.startswith("personal"), (stranger, known)
    assert all(re.match(r"^\S+\s+-?\d+\.\d{3}$", r) for r in recs), recs
    assert state["polls"] >= 2 and state["errors"] == 0 and state["moved"] > 0
    assert not problems, problems
    foreign = [u for u in requests if not u.startswith(pipeline.api_url)]
    assert not foreign, f"the page loaded from elsewhere: {foreign}"
    assert any(u.endswith("/live/static/uPlot.iife.min.js") for u in requests)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def _user_with_vector(pipeline: LocalPipeline, timeout: float = 30.0) -> str:
    """A user the replica already holds a vector for (recommended "personal")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for user in pipeline.get("/live/data")["recent_users"]:
            if pipeline.get(f"/recommendations/{user}?k=1")["strategy"] == "personal":
                return str(user)
        time.sleep(0.5)
    raise AssertionError("no user got a vector")


def test_the_screenshot_command_writes_a_png(pipeline: LocalPipeline, tmp_path: Path) -> None:
    _browser_or_skip()
    out = tmp_path / "shot.png"
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "screenshot", "--url", pipeline.api_url + "/live",
         "--out", str(out), "--polls", "2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:4] == b"\x89PNG" and str(out) in done.stdout
