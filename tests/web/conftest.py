"""Browser tests: the real app under uvicorn on 127.0.0.1, the real database, headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils.browser import chromium, unavailable
from tests.utils.server import Server, app_env, running_app

REASON = unavailable()


@pytest.fixture(scope="module")
def served(direct_url: str) -> Iterator[Server]:
    if REASON:
        pytest.skip(REASON)
    with running_app(app_env(direct_url)) as server:
        yield server


@pytest.fixture
def browser(tmp_path: Path):
    if REASON:
        pytest.skip(REASON)
    driver = chromium(tmp_path / "profile")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def offline_browser(tmp_path: Path):
    """A browser that reaches 127.0.0.1 and nothing else."""
    if REASON:
        pytest.skip(REASON)
    driver = chromium(tmp_path / "profile", offline=True)
    try:
        yield driver
    finally:
        driver.quit()
