"""SVG snapshots of the main screens, from the same scenes as the README's screenshots (tui/demo.py).

The app runs on the seeded demo store (fixed clock) and the scripted engine. After an intended change to the
look, review the new pictures and accept them: `.venv/bin/pytest tests/tui/test_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chatglm_tui.tui.demo import SCENES, SCREEN_SIZE, build_demo_app


@pytest.fixture
def demo_app(tmp_path: Path):
    def build(theme: str | None = None):
        app = build_demo_app(tmp_path / "demo.sqlite3", theme=theme)
        built.append(app)
        return app

    built: list = []
    yield build
    for app in built:
        app.store.close()


class TestChatScreen:
    def test_empty_chat(self, snap_compare, demo_app):
        assert snap_compare(demo_app(), run_before=SCENES["empty"], terminal_size=SCREEN_SIZE)

    def test_streamed_reply_with_code(self, snap_compare, demo_app):
        assert snap_compare(demo_app(), run_before=SCENES["reply-with-code"], terminal_size=SCREEN_SIZE)

    def test_streamed_reply_with_code_light_theme(self, snap_compare, demo_app):
        assert snap_compare(demo_app("chatglm-light"), run_before=SCENES["reply-with-code"],
                            terminal_size=SCREEN_SIZE)

    def test_meter_near_full_with_rounds_left_out(self, snap_compare, demo_app):
        assert snap_compare(demo_app(), run_before=SCENES["meter-near-full"], terminal_size=SCREEN_SIZE)


class TestSessions:
    def test_sessions_list(self, snap_compare, demo_app):
        assert snap_compare(demo_app(), run_before=SCENES["sessions"], terminal_size=SCREEN_SIZE)


class TestHelpScreen:
    def test_help(self, snap_compare, demo_app):
        assert snap_compare(demo_app(), run_before=SCENES["help"], terminal_size=SCREEN_SIZE)
