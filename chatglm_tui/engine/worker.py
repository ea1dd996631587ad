"""InferenceWorker: one long-lived thread owns the model and serves requests one at a time.

Requests queue; text deltas are batched (every few tokens or tens of milliseconds, never dropped); a cancel
takes effect within one token (or one layer of the prompt) and keeps what was generated; an exception becomes a
GenerationFailed event and the thread serves the next request; close() joins promptly.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from chatglm_tui import hub, paths
from chatglm_tui.engine.budget import plan_budget, prompt_text
from chatglm_tui.engine.protocol import (
    Budget,
    ChatRequest,
    ChunkProgress,
    EventCallback,
    FinishReason,
    GenerationFailed,
    GenerationFinished,
    GenerationStarted,
    GenerationStats,
    LoadFailed,
    LoadProgress,
    LoadStage,
    PrefillProgress,
    Request,
    Round,
    SamplingParams,
    SummarizeRequest,
    TextDelta,
)
from chatglm_tui.engine.summarize import Summarizer
from chatglm_tui.errors import ChatGLMError, ContextOverflowError, EngineNotReadyError
from chatglm_tui.model.tokenizer import ChatGLMTokenizer

if TYPE_CHECKING:  # the model (and torch) is imported on the worker thread only
    from chatglm_tui.model.chat import ChatGLM

LoadCallback = Callable[[LoadProgress | LoadFailed], None]


class LoadReporter:
    """What InferenceWorker hands its loader: call it with load events; pass the tokenizer on once it is read."""

    def __init__(self, emit: LoadCallback, publish: Callable[[ChatGLMTokenizer], None]) -> None:
        self._emit, self._publish = emit, publish

    def __call__(self, event: LoadProgress | LoadFailed) -> None:
        self._emit(event)

    def tokenizer_ready(self, tokenizer: ChatGLMTokenizer) -> None:
        """Let budget() count tokens from now on, while the weights are still being read."""
        self._publish(tokenizer)


# A loader builds the model on the worker thread. It may take a plain event callback: a LoadReporter is one.
Loader = Callable[[LoadReporter], "ChatGLM"]


class _Stopped(Exception):
    """Raised inside generation when the request was cancelled or the worker is closing."""


class InferenceWorker(threading.Thread):
    """The engine: implements engine.protocol.Engine on a dedicated thread."""

    def __init__(self, loader: Loader, flush_tokens: int = 4, flush_seconds: float = 0.04) -> None:
        super().__init__(name="chatglm-inference", daemon=True)
        self._loader = loader
        self.flush_tokens, self.flush_seconds = flush_tokens, flush_seconds
        self._requests: queue.Queue[tuple[Request, EventCallback] | None] = queue.Queue()
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._ready = threading.Event()
        self._load_error: ChatGLMError | None = None
        self._on_load: EventCallback | None = None
        self._tokenizer: ChatGLMTokenizer | None = None  # set once, by the loader, before the weights are read
        self.glm: ChatGLM | None = None

    # ---------------------------------------------------------------- the Engine interface (any thread)

    @property
    def context_window(self) -> int:
        return self.glm.context_window if self.glm is not None else 2048

    def load(self, on_event: EventCallback | None = None) -> None:
        """Start the thread, load the model on it and wait; re-raise a load failure here."""
        self._on_load = on_event
        if not self.is_alive():
            self.start()
        self._ready.wait()
        if self._load_error is not None:
            raise self._load_error

    def submit(self, request: Request, on_event: EventCallback) -> None:
        self._requests.put((request, on_event))

    def cancel(self, request_id: str) -> None:
        with self._lock:
            self._cancelled.add(request_id)

    def budget(self, history: Sequence[Round], query: str, instruction: str | None = None,
               reserve: int = 512) -> Budget:
        """The context budget; works as soon as the loader has read the tokenizer, else EngineNotReadyError."""
        return plan_budget(self._counting_tokenizer(), self.context_window, history, query, instruction, reserve)

    def close(self, timeout: float = 1.0) -> None:
        self._closing.set()
        self._requests.put(None)
        if self.is_alive():
            self.join(timeout)

    # ---------------------------------------------------------------- the thread

    def run(self) -> None:
        try:
            self.glm = self._loader(LoadReporter(self._emit_load, self._publish_tokenizer))
        except ChatGLMError as exc:
            self._fail_load(exc)
            return
        except Exception as exc:  # noqa: BLE001 (else the thread dies and load() returns with no model; reported)
            detail = "".join(f": {line}" for line in str(exc).strip().splitlines()[:1])  # one line, if any
            error = ChatGLMError(f"loading the model failed: {type(exc).__name__}{detail}")
            error.__cause__ = exc
            self._fail_load(error)
            return
        finally:
            self._ready.set()
        while not self._closing.is_set():
            item = self._requests.get()
            if item is None:
                break
            self._serve(*item)

    @property
    def _model(self) -> ChatGLM:
        if self.glm is None:
            raise EngineNotReadyError("the model is not loaded yet: wait for it to finish loading")
        return self.glm

    def _counting_tokenizer(self) -> ChatGLMTokenizer:
        glm, tokenizer = self.glm, self._tokenizer
        if glm is not None:
            return glm.tokenizer
        if tokenizer is None:
            raise EngineNotReadyError("the tokenizer is not loaded yet: token counts come once the model starts "
                                      "loading")
        return tokenizer

    def _publish_tokenizer(self, tokenizer: ChatGLMTokenizer) -> None:
        # One attribute assignment: atomic, so budget() on another thread sees None or the whole tokenizer.
        self._tokenizer = tokenizer

    def _emit_load(self, event: LoadProgress | LoadFailed) -> None:
        if self._on_load is not None:
            self._on_load(event)

    def _fail_load(self, error: ChatGLMError) -> None:
        self._load_error = error
        self._emit_load(LoadFailed(str(error)))

    def _check(self, request_id: str) -> None:
        with self._lock:
            stopped = request_id in self._cancelled
        if stopped or self._closing.is_set():
            raise _Stopped

    def _serve(self, request: Request, on_event: EventCallback) -> None:
        try:
            with self._lock:
                cancelled_while_queued = request.id in self._cancelled
            if cancelled_while_queued:  # e.g. stopped while the model was still loading: nothing to compute
                on_event(GenerationFinished(request.id, "stopped", "", GenerationStats(0, 0, 0.0, 0.0, 0.0)))
            elif isinstance(request, ChatRequest):
                self._chat(request, on_event)
            else:
                self._summarize(request, on_event)
        except ChatGLMError as exc:
            on_event(GenerationFailed(request.id, str(exc)))
        except Exception as exc:  # noqa: BLE001 (the thread must outlive any one request; reported as an event)
            on_event(GenerationFailed(request.id, f"generation failed: {type(exc).__name__}: {exc}"))
        finally:
            with self._lock:
                self._cancelled.discard(request.id)

    def _chat(self, request: ChatRequest, on_event: EventCallback) -> None:
        params = request.params
        budget = self.budget(request.history, request.query, request.instruction, params.max_new_tokens)
        if not budget.fits:
            raise ContextOverflowError(
                f"the message is {budget.query_tokens + budget.instruction_tokens} tokens; with room for a "
                f"{params.max_new_tokens}-token reply it does not fit the {budget.window}-token window: "
                "shorten it, or ask for a shorter reply")
        kept = request.history[len(budget.dropped_rounds):]
        ids = self._model.tokenizer.encode(prompt_text(kept, request.query, request.instruction),
                                           parse_special=False)
        on_event(GenerationStarted(request.id, len(ids), budget.dropped_rounds))
        text, reason, stats = self._generate(request.id, ids, params, on_event, stream=True)
        on_event(GenerationFinished(request.id, reason, text, stats))

    def _summarize(self, request: SummarizeRequest, on_event: EventCallback) -> None:
        started = time.perf_counter()
        final: dict[str, object] = {}

        def generate(prompt: str, max_new_tokens: int, is_final: bool) -> str:
            ids = self._model.tokenizer.encode(prompt, parse_special=False)
            if is_final:
                on_event(GenerationStarted(request.id, len(ids)))
            params = dataclasses.replace(request.params, max_new_tokens=max_new_tokens)
            text, reason, stats = self._generate(request.id, ids, params, on_event, stream=is_final)
            final.update(text=text, reason=reason, stats=stats)
            if reason == "stopped":
                raise _Stopped
            return text

        summarizer = Summarizer(self._model.tokenizer, self.context_window, generate,
                                lambda done, total: on_event(ChunkProgress(request.id, done, total)),
                                check_cancelled=lambda: self._check(request.id))  # planning stops on cancel too
        try:
            summarizer.run(request.document, request.question, request.params.max_new_tokens)
        except _Stopped:
            pass
        stats = final.get("stats")
        total = time.perf_counter() - started
        if isinstance(stats, GenerationStats):
            stats = GenerationStats(stats.prompt_tokens, stats.new_tokens, stats.time_to_first_token_s,
                                    stats.tokens_per_s, total)
        else:
            stats = GenerationStats(0, 0, 0.0, 0.0, total)
        reason = final.get("reason", "stopped")
        on_event(GenerationFinished(request.id, reason, str(final.get("text", "")), stats))  # type: ignore[arg-type]

    def _generate(self, request_id: str, ids: list[int], params: SamplingParams, on_event: EventCallback,
                  stream: bool) -> tuple[str, FinishReason, GenerationStats]:
        """Run one generation; emit batched deltas if `stream`; return (text, reason, stats)."""
        from chatglm_tui.model.sampling import GenerationParams  # torch-side, imported on the worker only

        start = time.perf_counter()
        gen = GenerationParams(**dataclasses.asdict(params))  # the same fields, validated on the model side

        def on_layer(done: int, total: int) -> None:
            self._check(request_id)
            on_event(PrefillProgress(request_id, len(ids) * done // total, len(ids)))

        decoder = self._model.response_decoder()
        batch = _DeltaBatcher(request_id, on_event if stream else None, self.flush_tokens, self.flush_seconds)
        tokens = self._model.generate_ids(ids, gen, on_prefill_layer=on_layer)
        reason: FinishReason = "stopped"
        try:
            for token in tokens:
                batch.add(decoder.add([token]))
                self._check(request_id)
            reason = tokens.finish_reason or "eos"
        except _Stopped:
            pass
        batch.add(decoder.flush(), final=True)
        return decoder.text, reason, batch.stats(len(ids), start)


class _DeltaBatcher:
    """Collects per-token text and sends it every few tokens or tens of milliseconds; never drops any."""

    def __init__(self, request_id: str, on_event: EventCallback | None, every_tokens: int,
                 every_seconds: float) -> None:
        self.request_id, self.on_event = request_id, on_event
        self.every_tokens, self.every_seconds = every_tokens, every_seconds
        self.pending, self.pending_tokens, self.tokens = "", 0, 0
        self.last_flush = time.perf_counter()
        self.first_token_at: float | None = None

    def add(self, text: str, final: bool = False) -> None:
        now = time.perf_counter()
        if not final:
            self.tokens += 1
            self.pending_tokens += 1
            self.first_token_at = self.first_token_at or now
        self.pending += text
        due = self.pending_tokens >= self.every_tokens or now - self.last_flush >= self.every_seconds
        if self.on_event is not None and self.pending and (due or final):
            self.on_event(TextDelta(self.request_id, self.pending))
            self.pending, self.pending_tokens, self.last_flush = "", 0, now

    def stats(self, prompt_tokens: int, start: float) -> GenerationStats:
        end = time.perf_counter()
        first = self.first_token_at or end
        rate = (self.tokens - 1) / (end - first) if self.tokens > 1 and end > first else 0.0
        return GenerationStats(prompt_tokens, self.tokens, first - start, rate, end - start)


def model_loader(path: str, quantization: str | None = "int4", device: str = "auto", dtype: str = "auto") -> Loader:
    """A loader for InferenceWorker that loads a checkpoint directory with load_model()."""
    return lambda report: _load_directory(path, quantization, device, dtype, report)


def resolving_loader(ref: str, quantization: str | None = "int4", device: str = "auto",
                     dtype: str = "auto") -> Loader:
    """A loader for a model reference: a checkpoint directory, or a Hugging Face repo id (downloaded if needed).

    The download reports LoadProgress("download", bytes done, bytes total, message) events; a reference that
    cannot be resolved fails the load like any other checkpoint problem (LoadFailed, then load() raises).
    """

    def load(report: LoadReporter) -> ChatGLM:
        def on_download(done: int, total: int, message: str) -> None:
            report(LoadProgress("download", done, total, message))

        directory = hub.resolve_model(ref, download=True, progress=on_download)
        return _load_directory(str(directory), quantization, device, dtype, report)

    return load


def _load_directory(path: str, quantization: str | None, device: str, dtype: str, report: LoadReporter) -> ChatGLM:
    """Read the tokenizer and hand it over (budget() works from then on), then load the weights."""
    report(LoadProgress("read", 0, 1, f"loading {path}"))
    directory = Path(path).expanduser()
    # A missing directory is left to load_model, whose message for it is the established one.
    tokenizer = ChatGLMTokenizer.from_dir(directory) if directory.is_dir() else None
    if tokenizer is not None:
        report.tokenizer_ready(tokenizer)
    from chatglm_tui.model.chat import load_model  # torch is imported here, on the worker thread

    glm = load_model(path, quantization=quantization, device=device, dtype=dtype, tokenizer=tokenizer,
                     cache_dir=paths.quantized_cache_dir(),
                     progress=lambda stage, done, total: report(LoadProgress(cast(LoadStage, stage), done, total)))
    report(LoadProgress("ready", 1, 1, glm.backend.describe()))  # what runs: "cuda: fp16-resident, CUDA graph"
    return glm
