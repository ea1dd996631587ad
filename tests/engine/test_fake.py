"""The scripted FakeEngine honours the same protocol as the real worker, without torch."""

from __future__ import annotations

import subprocess
import sys
import threading

from chatglm_tui.engine.fake import FakeEngine
from chatglm_tui.engine.protocol import ChatRequest, GenerationFinished, TextDelta


def _run(engine: FakeEngine, request) -> list:
    events: list = []
    done = threading.Event()

    def on_event(event) -> None:
        events.append(event)
        if isinstance(event, GenerationFinished):
            done.set()

    engine.submit(request, on_event)
    assert done.wait(10)
    return events


def test_scripted_replies_in_turn_and_requests_recorded():
    engine = FakeEngine(["first reply", "second"], chunk_size=3)
    first = _run(engine, ChatRequest("a"))
    second = _run(engine, ChatRequest("b", history=(("a", "first reply"),)))
    assert "".join(e.text for e in first if isinstance(e, TextDelta)) == "first reply"
    assert [len(e.text) for e in first if isinstance(e, TextDelta)] == [3, 3, 3, 2]
    assert first[-1].text == "first reply" and second[-1].text == "second"
    assert [r.query for r in engine.requests] == ["a", "b"]


def test_cancel_stops_and_keeps_the_partial_reply():
    engine = FakeEngine(["x" * 400], chunk_size=1, delay=0.001)
    request = ChatRequest("q")
    events: list = []
    done = threading.Event()

    def on_event(event) -> None:
        events.append(event)
        if isinstance(event, TextDelta) and len(events) == 3:
            engine.cancel(request.id)
        if isinstance(event, GenerationFinished):
            done.set()

    engine.submit(request, on_event)
    assert done.wait(10)
    assert events[-1].reason == "stopped" and 0 < len(events[-1].text) < 400
    engine.close()


def test_fake_budget_drops_oldest_rounds():
    engine = FakeEngine(window=200)
    history = [("q" * 100, "r" * 100)] * 3
    budget = engine.budget(history, "hello", reserve=50)
    assert budget.fits and budget.dropped_rounds == (0, 1) and budget.used + 50 <= 200


def test_engine_protocol_and_budget_import_without_torch():
    code = ("import sys; import chatglm_tui.engine.protocol, chatglm_tui.engine.fake, chatglm_tui.engine.budget, "
            "chatglm_tui.engine.worker; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
