"""`--demo` never passes for the real model or touches the user's files: what the status bar names, the ready
line, and where a copy's fallback file goes (the pty test in test_chat_command.py runs it for real)."""

from __future__ import annotations

from chatglm_tui.cli.engines import DEMO_MODEL, engine_for, for_display
from chatglm_tui.config.settings import Settings
from chatglm_tui.engine.protocol import LoadProgress
from chatglm_tui.tui import clipboard


def test_the_demo_names_itself_and_not_the_configured_model():
    settings = Settings(model="THUDM/chatglm-6b-int4")
    assert for_display(settings, demo=True).model == DEMO_MODEL == "demo (scripted replies)"
    assert for_display(settings).model == "THUDM/chatglm-6b-int4"
    remote = Settings(endpoint="http://gpu-box:8000", endpoint_model="glm")
    assert for_display(remote, demo=True).model == DEMO_MODEL and for_display(remote).model == "glm"


def test_the_demo_engine_says_no_model_is_loaded_when_ready():
    engine = engine_for(Settings(), demo=True)
    events: list[object] = []
    try:
        engine.load(events.append)
    finally:
        engine.close()
    assert events[-1] == LoadProgress("ready", 1, 1, "no model loaded")


def test_copies_kept_in_a_folder_for_the_duration_only(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATGLM_HOME", str(tmp_path / "home"))
    real = tmp_path / "home" / "data" / "last-copy.txt"
    assert clipboard.last_copy_path() == real
    with clipboard.copies_kept_in(tmp_path / "scratch"):
        assert clipboard.save_copy("scripted text") == tmp_path / "scratch" / "last-copy.txt"
    assert clipboard.last_copy_path() == real and not real.exists()
    assert (tmp_path / "scratch" / "last-copy.txt").read_text(encoding="utf-8") == "scripted text"
