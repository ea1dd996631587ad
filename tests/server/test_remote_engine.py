"""The chat app and `chatglm ask` against `chatglm serve` on 127.0.0.1, through RemoteEngine: the same replies as
the model in-process (reference.json), exact token counts with the server's tokenizer, estimates without, and
one-line errors for an unreachable server or a refused key. Every wait is bounded."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import httpx

from chatglm_tui.config.settings import Settings
from chatglm_tui.engine.budget import plan_budget
from chatglm_tui.engine.protocol import (
    ChatRequest,
    GenerationFailed,
    GenerationFinished,
    GenerationParams,
    GenerationStarted,
    LoadFailed,
    TextDelta,
)
from chatglm_tui.engine.remote import RemoteEngine
from chatglm_tui.store import SessionStore
from chatglm_tui.tui.app import make_app
from chatglm_tui.tui.widgets.budget_meter import BudgetMeter
from chatglm_tui.tui.widgets.prompt_input import PromptInput

REPLY_TOKENS = 24


def _ask(server, home, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHATGLM_HOME": str(home), "CHATGLM_API_KEY": server.key or ""}
    return subprocess.run([sys.executable, "-m", "chatglm_tui", "ask", "--endpoint", server.root, *args],
                          capture_output=True, text=True, env=env, input=stdin, timeout=120)


class Events:
    """Collects an engine's events for one request; `wait()` returns the last one (bounded)."""

    def __init__(self) -> None:
        self.events: list = []
        self.done = threading.Event()

    def __call__(self, event) -> None:
        self.events.append(event)
        if isinstance(event, (GenerationFinished, GenerationFailed, LoadFailed)):
            self.done.set()

    def wait(self, timeout: float = 60.0):
        assert self.done.wait(timeout), "the request never ended"
        return self.events[-1]


def test_ask_against_the_server_equals_the_original_and_continues_from_the_local_store(server, reference, tmp_path):
    first, second = reference["chats"][0][:2]
    result = _ask(server, tmp_path, first["query"], "--greedy", "--max-new-tokens", str(REPLY_TOKENS))
    assert result.returncode == 0, result.stderr
    assert result.stdout == first["response"] + "\n"
    result = _ask(server, tmp_path, second["query"], "-c", "--greedy", "--max-new-tokens", str(REPLY_TOKENS))
    assert result.stdout == second["response"] + "\n"  # the history came from this machine's store
    with SessionStore(tmp_path / "data" / "sessions.sqlite3") as store:
        conversation = store.latest()
        assert conversation is not None and conversation.model == server.root  # what answered
        assert store.history(conversation.id) == [(first["query"], first["response"]),
                                                  (second["query"], second["response"])]


def test_a_piped_document_is_summarized_through_the_server(server, tmp_path):
    result = _ask(server, tmp_path, "--greedy", "--max-new-tokens", "8", "--no-save",
                  stdin="The committee met on Monday. It approved the budget.\n")
    assert result.returncode == 0 and result.stdout.strip(), result.stderr


def test_ask_says_in_one_line_what_is_wrong_with_the_endpoint(server, tmp_path):
    env = {**os.environ, "CHATGLM_HOME": str(tmp_path)}
    refused = subprocess.run([sys.executable, "-m", "chatglm_tui", "ask", "hi", "--endpoint", server.root,
                              "--api-key", "wrong"], capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "refused the API key" in refused.stderr and "Traceback" not in refused.stderr
    with socket_that_refuses() as url:
        unreachable = subprocess.run([sys.executable, "-m", "chatglm_tui", "ask", "hi", "--endpoint", url],
                                     capture_output=True, text=True, env=env, timeout=60)
    assert unreachable.returncode == 1 and unreachable.stderr.count("\n") == 1
    assert "cannot reach" in unreachable.stderr and "chatglm serve" in unreachable.stderr
    wrong_model = subprocess.run([sys.executable, "-m", "chatglm_tui", "ask", "hi", "--endpoint", server.root,
                                  "--api-key", server.key, "--endpoint-model", "other"],
                                 capture_output=True, text=True, env=env, timeout=60)
    assert wrong_model.returncode == 1 and "it serves tiny-chatglm" in wrong_model.stderr


class socket_that_refuses:
    """A loopback address with nothing listening (a port bound, then closed)."""

    def __enter__(self) -> str:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        pass


def test_a_cancel_closes_the_stream_and_frees_the_server(server, tmp_path):
    engine = RemoteEngine(server.root, api_key=server.key, tokenizer_cache=tmp_path)
    try:
        engine.load()
        events = Events()
        request = ChatRequest("写一篇很长的文章", params=GenerationParams(do_sample=False, max_new_tokens=2000))
        engine.submit(request, events)
        deadline = time.monotonic() + 30
        while not any(isinstance(event, TextDelta) for event in events.events):
            assert time.monotonic() < deadline, "no text arrived"
            time.sleep(0.01)
        engine.cancel(request.id)
        finished = events.wait()
        assert isinstance(finished, GenerationFinished) and finished.reason == "stopped"
        assert 0 < len(finished.text) and finished.stats.new_tokens < 2000
    finally:
        engine.close()
    health = httpx.get(f"{server.root}/health", headers={"Authorization": f"Bearer {server.key}"}, timeout=10)
    deadline = time.monotonic() + 10
    while health.json()["pending"]:
        assert time.monotonic() < deadline, "the server kept generating for a client that left"
        time.sleep(0.05)
        health = httpx.get(f"{server.root}/health", headers={"Authorization": f"Bearer {server.key}"}, timeout=10)


def test_without_the_servers_tokenizer_counts_are_estimates(server, tokenizer):
    exact = RemoteEngine(server.root, api_key=server.key, tokenizer_cache=None)  # cannot keep the file: estimates
    try:
        exact.load()
        budget = exact.budget([("你好", "你好！")], "介绍一下清华大学", None, 128)
        assert not budget.exact and budget.fits and budget.window == 2048
        real = plan_budget(tokenizer, 2048, [("你好", "你好！")], "介绍一下清华大学", None, 128)
        assert abs(budget.used - real.used) <= real.used  # the right size, not the exact count
        assert "estimated (≈)" in BudgetMeter.explain(budget)  # the meter says so
        events = Events()
        exact.submit(ChatRequest("你好", params=GenerationParams(do_sample=False, max_new_tokens=4)), events)
        assert isinstance(events.wait(), GenerationFinished)
        assert isinstance(events.events[0], GenerationStarted)
    finally:
        exact.close()


async def test_the_chat_app_against_the_server(server, reference, tmp_path):
    turns = reference["chats"][1]
    settings = Settings(model=server.model, temperature=0.0, max_new_tokens=REPLY_TOKENS, endpoint=server.root)
    engine = RemoteEngine(server.root, api_key=server.key, tokenizer_cache=tmp_path / "tokenizers")
    store = SessionStore(tmp_path / "sessions.sqlite3")
    try:
        app = make_app(settings, engine, store, persist_theme=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.chat_screen
            await _wait_for(pilot, lambda: screen.load_state == "ready", "the connection")
            assert f"remote: tiny-chatglm at {server.root}" in str(screen.query_one("#status-model").render())
            for number, turn in enumerate(turns, start=1):
                await pilot.press(*turn["query"])
                await pilot.press("enter")
                await _wait_for(pilot, lambda: screen.pending is None and screen.reply_view is None, "a reply")
                assert screen.conversation.views[-1].text == turn["response"]
            meter = screen.query_one(BudgetMeter)
            await pilot.press(*"ok")
            await _wait_for(pilot, lambda: meter.budget is not None and meter.budget.query_tokens > 0, "the meter")
            history = store.history(store.latest().id)
            assert meter.budget == plan_budget(engine.tokenizer, 2048, history, "ok", None, REPLY_TOKENS)
            assert meter.budget.exact and "≈" not in str(meter.render())
            assert screen.query_one(PromptInput).text == "ok"
    finally:
        engine.close()
        store.close()


async def _wait_for(pilot, predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)
