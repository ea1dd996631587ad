"""Fixtures for the session-store tests: a store in `tmp_path` with a deterministic clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chatglm_tui.store import SessionStore


class TickingClock:
    """A clock that advances one second per reading, so every timestamp (and ordering) is deterministic."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """A not-yet-existing store file inside a not-yet-existing folder."""
    return tmp_path / "data" / "sessions.sqlite3"


@pytest.fixture
def clock() -> TickingClock:
    return TickingClock()


@pytest.fixture
def store(store_path: Path, clock: TickingClock) -> Iterator[SessionStore]:
    with SessionStore(store_path, clock=clock) as opened:
        yield opened
