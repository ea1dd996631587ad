"""The scripted FakeEngine honours the same protocol as the real worker, without torch."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time

import pytest

from chatglm_tui.engine.fake import FakeEngine
from chatglm_tui.engine.protocol import ChatRequest, GenerationFinished, LoadFailed, LoadProgress, TextDelta
from chatglm_tui.errors import ChatGLMError

STAGES = (LoadProgress("download", 10, 100, "downloading owner/model"), LoadProgress("read", 1, 2),
          LoadProgress("quantize", 3, 4))


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


def test_load_by_default_sends_ready_only():
    events: list = []
    FakeEngine().load(events.append)
    assert events == [LoadProgress("ready", 1, 1)]


def test_load_sends_the_scripted_stages_then_ready_with_the_delay_between():
    events: list = []
    start = time.perf_counter()
    FakeEngine(load_stages=STAGES, load_delay=0.05).load(events.append)
    assert events == [*STAGES, LoadProgress("ready", 1, 1)]
    assert time.perf_counter() - start >= 0.15  # three gaps between four events


def test_load_error_is_reported_then_raised():
    events: list = []
    with pytest.raises(ChatGLMError, match="^no weights here$"):
        FakeEngine(load_stages=STAGES[:1], load_error="no weights here").load(events.append)
    assert events == [STAGES[0], LoadFailed("no weights here")]


def test_load_waits_for_the_gate_and_budget_works_meanwhile():
    gate = threading.Event()
    engine = FakeEngine(load_stages=STAGES, load_gate=gate)
    events: list = []
    loading = threading.Thread(target=engine.load, args=(events.append,))
    loading.start()
    deadline = time.monotonic() + 5
    while len(events) < len(STAGES) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert events == list(STAGES) and loading.is_alive()  # mid-load: a UI test inspects the screen here
    assert engine.budget([("q", "r")], "hello").fits
    gate.set()
    loading.join(5)
    assert not loading.is_alive() and events[-1] == LoadProgress("ready", 1, 1)


@pytest.mark.parametrize(("load_error", "reply"), [(None, "late"), ("no weights here", None)])
def test_a_request_sent_during_the_load_waits_for_it(load_error, reply):
    """As with the real worker: queued behind the load, and never answered after a failed one."""
    gate = threading.Event()
    engine = FakeEngine(["late"], load_gate=gate, load_error=load_error)

    def load() -> None:
        with contextlib.suppress(ChatGLMError):
            engine.load()

    loading = threading.Thread(target=load)
    loading.start()
    deadline = time.monotonic() + 5
    while not engine._load_started.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    events: list = []
    engine.submit(ChatRequest("early"), events.append)
    time.sleep(0.2)
    assert events == []
    gate.set()
    loading.join(5)
    for thread in engine._threads:
        thread.join(5)
    finished = [event for event in events if isinstance(event, GenerationFinished)]
    assert [event.text for event in finished] == ([reply] if reply else [])
    engine.close()


def test_close_releases_a_gated_load():
    engine = FakeEngine(load_gate=threading.Event())
    loading = threading.Thread(target=engine.load)
    loading.start()
    engine.close()
    loading.join(5)
    assert not loading.is_alive()
