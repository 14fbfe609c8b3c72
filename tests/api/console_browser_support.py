"""Helpers of the web console's browser tests: Debian's Chromium driven by Playwright (async
API), started and closed within bounded times, and screenshots kept as test artifacts."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("VOXQ_TEST_CHROMIUM", "/usr/bin/chromium")
PAGE_TIMEOUT_MS = 30_000
SAME_HOST = re.compile(r"^(https?|wss?)://127\.0\.0\.1:\d+/|^(data|blob):")


def artifact_dir(tmp_path: Path) -> Path:
    """Where screenshots go: $VOXQ_TEST_ARTIFACTS/console if set, else the test's tmp path."""
    base = os.environ.get("VOXQ_TEST_ARTIFACTS")
    out = Path(base) / "console" if base else tmp_path / "artifacts"
    out.mkdir(parents=True, exist_ok=True)
    return out


def have_chromium() -> bool:
    """Is the system Chromium there (.ci/run installs Debian's `chromium`)?"""
    return Path(CHROMIUM).exists()


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A headless Chromium (the system's, not a downloaded one); closed within 30 s."""
    if not have_chromium():
        missing = f"no Chromium at {CHROMIUM} (.ci/run installs Debian's `chromium`)"
        if os.environ.get("VOXQ_REQUIRE_CHROMIUM"):  # CI: a missing browser is a failure
            pytest.fail(missing)
        pytest.skip(missing)
    from playwright.async_api import async_playwright

    pw = await async_playwright().start()
    try:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, timeout=PAGE_TIMEOUT_MS,
                                           args=["--no-sandbox"])
        try:
            yield browser
        finally:
            async with asyncio.timeout(30):
                await browser.close()
    finally:
        async with asyncio.timeout(30):
            await pw.stop()


@dataclass
class Tab:
    """A page and what went wrong on it: script errors, answers of 400 and more (but the 404 of
    /v1/whoami on an API without access control, which the page expects), and requests to any
    other host."""

    page: Any
    errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)

    def csp_errors(self) -> list[str]:
        """Console errors that are Content-Security-Policy violations."""
        return [e for e in self.errors if "Content Security Policy" in e]


async def new_tab(browser: Any, width: int = 1280, height: int = 860) -> Tab:
    """A page in a fresh context (its own storage) that accepts downloads and records the
    console's errors and every request that leaves for another host."""
    context = await browser.new_context(viewport={"width": width, "height": height},
                                        accept_downloads=True)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    tab = Tab(await context.new_page())
    tab.page.on("pageerror", lambda e: tab.errors.append(str(e)))
    tab.page.on("console", lambda m: tab.errors.append(m.text)
                if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    tab.page.on("response", lambda a: tab.failed.append(f"{a.status} {a.url}")
                if a.status >= 400 and not a.url.endswith("/v1/whoami") else None)
    tab.page.on("request", lambda r: None if SAME_HOST.match(r.url) else tab.foreign.append(r.url))
    return tab


async def shot(tab: Tab, out: Path, name: str) -> Path:
    """Save a screenshot of the page as ``name``.png in the artifact directory."""
    path = out / f"{name}.png"
    await tab.page.screenshot(path=str(path), full_page=True)
    return path
