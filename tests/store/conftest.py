"""Fixtures for the session-store tests: a store in `tmp_path` with the deterministic `clock` (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chatglm_tui.store import SessionStore


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """A not-yet-existing store file inside a not-yet-existing folder."""
    return tmp_path / "data" / "sessions.sqlite3"


@pytest.fixture
def store(store_path: Path, clock) -> Iterator[SessionStore]:
    with SessionStore(store_path, clock=clock) as opened:
        yield opened
