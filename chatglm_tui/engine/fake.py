"""FakeEngine: the Engine protocol with scripted replies, for UI tests and demos. Imports no torch."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from chatglm_tui.engine.protocol import (
    Budget,
    ChatRequest,
    EventCallback,
    FinishReason,
    GenerationFinished,
    GenerationStarted,
    GenerationStats,
    LoadFailed,
    LoadProgress,
    Request,
    Round,
    TextDelta,
)
from chatglm_tui.errors import ChatGLMError
from chatglm_tui.model.params import DEFAULT_MAX_NEW_TOKENS


class FakeEngine:
    """Replies with scripted text in chunks, on a background thread, like the real worker.

    `replies` are used in turn (the last one repeats); each is sent as `chunk_size`-character deltas with
    `delay` seconds between them. Every request is recorded in `requests`. Token counts are characters / 2,
    rounded up, plus 2 for [gMASK] <sop>: not the real tokenizer, but monotonic and deterministic; budget()
    works before load(), as the real worker's does once its tokenizer is read.

    load() sends `load_stages` in order, `load_delay` seconds apart, then waits for `load_gate` (if given;
    close() releases it too), then ends with LoadProgress("ready", 1, 1, backend) (the real worker names the
    backend that runs, e.g. "cuda: fp16-resident, CUDA graph"), or with LoadFailed(load_error) and
    ChatGLMError(load_error) raised when `load_error` is set. As with the real worker, a request submitted
    while a load is under way waits for it, and none is answered after a failed load.
    """

    def __init__(self, replies: Sequence[str] = ("Hello from the fake engine.",), chunk_size: int = 4,
                 delay: float = 0.0, window: int = 2048, *, load_stages: Sequence[LoadProgress] = (),
                 load_delay: float = 0.0, load_error: str | None = None,
                 load_gate: threading.Event | None = None, backend: str = "") -> None:
        self.replies = list(replies)
        self.backend = backend
        self.chunk_size, self.delay, self.window = chunk_size, delay, window
        self.load_stages, self.load_delay = list(load_stages), load_delay
        self.load_error, self.load_gate = load_error, load_gate
        self.requests: list[Request] = []
        self._cancelled: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self._load_started, self._load_ended = threading.Event(), threading.Event()
        self._load_failed = False

    @property
    def context_window(self) -> int:
        return self.window

    def start_loading(self, on_event: EventCallback | None = None) -> None:
        """Run load() on a thread of its own; a failure reaches `on_event` as LoadFailed, like the worker's."""

        def load_quietly() -> None:
            try:
                self.load(on_event)
            except ChatGLMError:
                pass  # already reported as LoadFailed

        self._load_started.set()  # before returning: a request submitted next waits for this load
        threading.Thread(target=load_quietly, name="fake-load", daemon=True).start()

    def load(self, on_event: EventCallback | None = None) -> None:
        """Send the scripted load events (blocking, like the real worker); raise ChatGLMError for `load_error`."""
        self._load_started.set()
        try:
            self._load(on_event or (lambda event: None))
        except ChatGLMError:
            self._load_failed = True
            raise
        finally:
            self._load_ended.set()

    def _load(self, emit: EventCallback) -> None:
        for index, stage in enumerate(self.load_stages):
            if index:
                time.sleep(self.load_delay)
            emit(stage)
        if self.load_stages:
            time.sleep(self.load_delay)
        while self.load_gate is not None and not self.load_gate.is_set() and not self._closed.is_set():
            self.load_gate.wait(0.05)  # polled, so that close() releases a test that never opens the gate
        if self.load_error is not None:
            emit(LoadFailed(self.load_error))
            raise ChatGLMError(self.load_error)
        emit(LoadProgress("ready", 1, 1, self.backend))

    def submit(self, request: Request, on_event: EventCallback) -> None:
        self.requests.append(request)
        reply = self.replies[min(len(self.requests) - 1, len(self.replies) - 1)]
        thread = threading.Thread(target=self._reply, args=(request, reply, on_event), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _loaded(self) -> bool:
        """Wait for a load under way (the real worker queues requests behind it); False if it failed or closed."""
        if not self._load_started.is_set():
            return True
        while not self._load_ended.wait(0.02):
            if self._closed.is_set():
                return False
        return not self._load_failed

    def _reply(self, request: Request, reply: str, on_event: EventCallback) -> None:
        if not self._loaded():
            return
        query = request.query if isinstance(request, ChatRequest) else request.document
        on_event(GenerationStarted(request.id, self._count(query)))
        sent = ""
        for start in range(0, len(reply), self.chunk_size):
            if request.id in self._cancelled:
                break
            time.sleep(self.delay)
            delta = reply[start:start + self.chunk_size]
            sent += delta
            on_event(TextDelta(request.id, delta))
        reason: FinishReason = "stopped" if request.id in self._cancelled else "eos"
        stats = GenerationStats(self._count(query), len(sent), self.delay, 0.0, self.delay * len(sent))
        on_event(GenerationFinished(request.id, reason, sent, stats))

    def cancel(self, request_id: str) -> None:
        self._cancelled.add(request_id)

    @staticmethod
    def _count(text: str) -> int:
        return -(-len(text) // 2)

    def budget(self, history: Sequence[Round], query: str, instruction: str | None = None,
               reserve: int = DEFAULT_MAX_NEW_TOKENS) -> Budget:
        history = list(history)
        costs = [self._count(q) + self._count(r) + 8 for q, r in history]
        fixed = self._count(query) + self._count(instruction or "") + 2
        dropped = 0
        while dropped < len(history) and sum(costs[dropped:]) + fixed + reserve > self.window:
            dropped += 1
        return Budget(self.window, sum(costs[dropped:]) + 2, self._count(instruction or ""),
                      self._count(query), reserve, tuple(range(dropped)),
                      fixed + reserve <= self.window)

    def close(self, timeout: float = 1.0) -> None:
        self._closed.set()
        for request in self.requests:
            self._cancelled.add(request.id)
        for thread in self._threads:
            thread.join(timeout)
