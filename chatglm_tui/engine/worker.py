"""InferenceWorker: one long-lived thread owns the model and serves requests one at a time.

Requests queue; text deltas are batched (every few tokens or tens of milliseconds, never dropped); a cancel
takes effect within one token (or one layer of the prompt) and keeps what was generated; an exception becomes a
GenerationFailed event and the thread serves the next request; close() joins promptly.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from chatglm_tui import paths
from chatglm_tui.engine.budget import plan_budget
from chatglm_tui.engine.protocol import (
    Budget,
    ChatRequest,
    EventCallback,
    FinishReason,
    GenerationFailed,
    GenerationFinished,
    GenerationParams,
    GenerationStarted,
    GenerationStats,
    LoadFailed,
    LoadProgress,
    LoadStage,
    PrefillProgress,
    Request,
    Round,
    SummarizeRequest,
    TextDelta,
)
from chatglm_tui.engine.summarize import summarize_request
from chatglm_tui.errors import ChatGLMError, ContextOverflowError, EngineNotReadyError
from chatglm_tui.model import hub
from chatglm_tui.model.params import DEFAULT_MAX_NEW_TOKENS
from chatglm_tui.model.tokenizer import ChatGLMTokenizer
from chatglm_tui.terminal.wording import counted

if TYPE_CHECKING:  # the model (and torch) is imported on the worker thread only
    from chatglm_tui.config.settings import Settings
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

    def start_loading(self, on_event: EventCallback | None = None) -> None:
        """Start the thread, which loads the model first; returns at once (events arrive on `on_event`)."""
        self._on_load = on_event
        if not self.is_alive():
            self.start()

    def load(self, on_event: EventCallback | None = None) -> None:
        """Start the thread, load the model on it and wait; re-raise a load failure here."""
        self.start_loading(on_event)
        self._ready.wait()
        if self._load_error is not None:
            raise self._load_error

    def submit(self, request: Request, on_event: EventCallback) -> None:
        self._requests.put((request, on_event))

    def cancel(self, request_id: str) -> None:
        with self._lock:
            self._cancelled.add(request_id)

    def budget(self, history: Sequence[Round], query: str, instruction: str | None = None,
               reserve: int = DEFAULT_MAX_NEW_TOKENS) -> Budget:
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

    def _stop_requested(self, request_id: str) -> bool:
        """Whether the request was cancelled, or the worker is closing."""
        with self._lock:
            stopped = request_id in self._cancelled
        return stopped or self._closing.is_set()

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
        reserve = params.reply_reserve  # with no limit the reply may run on, past what is reserved
        tokenizer = self._model.tokenizer
        prefix = tokenizer.encode_text(request.reply_prefix, parse_special=False) if request.reply_prefix else []
        budget = self.budget(request.history, request.query, request.instruction, reserve + len(prefix))
        if not budget.fits:
            raise ContextOverflowError(
                f"the message is {counted(budget.query_tokens + budget.instruction_tokens, 'token')}; with room "
                f"for a {reserve}-token reply it does not fit the {budget.window}-token window: "
                "shorten it, or ask for a shorter reply")
        ids = list(budget.prompt_ids) + prefix  # a continued reply's start comes after <sop>, as if generated
        on_event(GenerationStarted(request.id, len(ids), budget.dropped_rounds))
        text, reason, stats = self._generate(request.id, ids, params, on_event, stream=True, prefix_ids=prefix)
        on_event(GenerationFinished(request.id, reason, text, stats))

    def _summarize(self, request: SummarizeRequest, on_event: EventCallback) -> None:
        def generate(prompt: str, params: GenerationParams,
                     is_final: bool) -> tuple[str, FinishReason, GenerationStats]:
            ids = self._model.tokenizer.encode(prompt, parse_special=False)
            if is_final:
                on_event(GenerationStarted(request.id, len(ids)))
            return self._generate(request.id, ids, params, on_event, stream=is_final)

        summarize_request(request, self._model.tokenizer, self.context_window, generate, on_event,
                          lambda: self._stop_requested(request.id))

    def _generate(self, request_id: str, ids: list[int], params: GenerationParams, on_event: EventCallback,
                  stream: bool, prefix_ids: Sequence[int] = ()) -> tuple[str, FinishReason, GenerationStats]:
        """Run one generation; emit batched deltas if `stream`; return (text, reason, stats)."""
        reply = self._model.stream_reply(
            ids, params, should_stop=lambda: self._stop_requested(request_id),
            on_prefill=lambda done, total: on_event(PrefillProgress(request_id, done, total)),
            every_tokens=self.flush_tokens, every_seconds=self.flush_seconds, prefix_ids=prefix_ids)
        for chunk in reply:
            if stream:
                on_event(TextDelta(request_id, chunk))
        stats = GenerationStats(len(ids), reply.new_tokens, reply.time_to_first_token_s, reply.tokens_per_s,
                                reply.total_s)
        return reply.text, reply.finish_reason or "stopped", stats


def worker_for(settings: Settings) -> InferenceWorker:
    """The engine for the configured model, as the chat and `ask` run it: nothing happens until it is started;
    then the model is resolved (downloaded on first use, reporting progress) and loaded on the worker thread."""
    quantization = None if settings.quantization == "none" else settings.quantization
    return InferenceWorker(resolving_loader(settings.model, quantization, settings.device, settings.dtype))


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
