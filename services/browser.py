"""Headless Chromium (Debian's package) driven by Playwright: the live page's screenshot
command and its browser tests. Playwright's own browser download is never used (the
machines have no internet); ``STREAMBED_CHROMIUM`` overrides where Chromium is."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Page

# as root in a container: no sandbox; no background calls to Google's hosts (refused here)
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync")  # fmt: skip


def find_chromium() -> str | None:
    explicit = os.environ.get("STREAMBED_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@contextmanager
def browser_page(width: int = 1400, height: int = 1000) -> Iterator[Page]:
    """A page of a fresh headless Chromium with an empty profile, closed on exit."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise RuntimeError("playwright is not installed: pip install -e '.[dev]'") from None
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium on PATH: apt-get install chromium (or set "
                                "STREAMBED_CHROMIUM)")  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="streambed-chromium-") as profile,
        sync_playwright() as p,
    ):
        context = p.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=list(CHROMIUM_ARGS),
            viewport={"width": width, "height": height},
        )  # fmt: skip
        try:
            yield context.new_page()
        finally:
            context.close()


def wait_for_live_page(page: Page, polls: int, timeout_s: float) -> None:
    """Until the live page has polled its data ``polls`` times."""
    page.wait_for_function(
        f"window.streambedLive && window.streambedLive.polls >= {polls}",
        timeout=timeout_s * 1000,
    )


def screenshot(url: str, out: Path, polls: int = 5, timeout_s: float = 30.0) -> Path:
    """Open the live page at ``url``, let it poll ``polls`` times, and save a PNG."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with browser_page() as page:
        page.goto(url)
        wait_for_live_page(page, polls, timeout_s)
        page.screenshot(path=str(out), full_page=True)
    return out
