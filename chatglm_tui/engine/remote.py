"""RemoteEngine: the Engine protocol over an OpenAI-compatible HTTP server (`chatglm serve` elsewhere, vLLM,
SGLang...), so the chat app and `chatglm ask` run unchanged against a model on another machine.

Loading connects: `GET /v1/models` checks the address, the key and the model, and a `chatglm serve` also hands
over its tokenizer file, so token counts stay exact; against other servers they are estimated (`Budget.exact`).
Each request streams on a thread of its own (the server queues them); a cancel closes the connection, which
stops the generation there. Every failure is an event with one line saying what to do.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from chatglm_tui.engine.budget import estimate_budget, plan_budget
from chatglm_tui.engine.openai_messages import to_messages
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
    Request,
    Round,
    SummarizeRequest,
    TextDelta,
)
from chatglm_tui.engine.summarize import summarize_request
from chatglm_tui.errors import ChatGLMError
from chatglm_tui.model.params import DEFAULT_MAX_NEW_TOKENS
from chatglm_tui.model.tokenizer import ChatGLMTokenizer

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 600.0  # a queued request sends nothing until the server reaches it
_REASONS: dict[str, FinishReason] = {"stop": "eos", "length": "length"}


class RemoteError(ChatGLMError):
    """The server could not be used: unreachable, a refused key, busy, or an error it reported."""


class _Cancelled(Exception):
    """The request was cancelled (or the engine closed) while its reply streamed."""


def api_base(url: str) -> str:
    """The `/v1` base of an endpoint given with or without it (`http://host:8000` or `http://host:8000/v1`)."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class RemoteEngine:
    """Implements engine.protocol.Engine against an OpenAI-compatible server at `url`."""

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None,
                 tokenizer_cache: Path | None = None, transport: httpx.BaseTransport | None = None) -> None:
        self.url, self.base, self.model = url, api_base(url), model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, transport=transport,
                                   timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S))
        self.tokenizer_cache = tokenizer_cache
        self.tokenizer: ChatGLMTokenizer | None = None
        self.window = 2048
        self._ready, self._closing = threading.Event(), threading.Event()
        self._load_error: ChatGLMError | None = None
        self._cancelled: set[str] = set()
        self._threads: list[threading.Thread] = []

    # ---------------------------------------------------------------- the Engine interface

    @property
    def context_window(self) -> int:
        return self.window

    def start_loading(self, on_event: EventCallback | None = None) -> None:
        thread = threading.Thread(target=self._connect, args=(on_event or (lambda event: None),),
                                  name="chatglm-remote-connect", daemon=True)
        thread.start()

    def load(self, on_event: EventCallback | None = None) -> None:
        self.start_loading(on_event)
        self._ready.wait()
        if self._load_error is not None:
            raise self._load_error

    def submit(self, request: Request, on_event: EventCallback) -> None:
        thread = threading.Thread(target=self._serve, args=(request, on_event), name="chatglm-remote", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def cancel(self, request_id: str) -> None:
        self._cancelled.add(request_id)

    def budget(self, history: Sequence[Round], query: str, instruction: str | None = None,
               reserve: int = DEFAULT_MAX_NEW_TOKENS) -> Budget:
        """Exact with the server's ChatGLM tokenizer, else estimated from the text (`exact=False`)."""
        if self.tokenizer is not None:
            return plan_budget(self.tokenizer, self.window, history, query, instruction, reserve)
        return estimate_budget(self.window, history, query, instruction, reserve)

    def close(self, timeout: float = 1.0) -> None:
        self._closing.set()
        for thread in self._threads:
            thread.join(timeout)
        self.client.close()

    # ---------------------------------------------------------------- connecting

    def _connect(self, emit: EventCallback) -> None:
        try:
            emit(LoadProgress("read", 0, 1, f"connecting to {self.url}"))
            card = self._model_card()
            self.model = str(card["id"])
            window = card.get("max_model_len")
            self.window = window if isinstance(window, int) and window > 0 else self.window
            self.tokenizer = self._fetch_tokenizer()
            emit(LoadProgress("ready", 1, 1, f"remote: {self.model} at {self.url}"))
        except ChatGLMError as exc:
            self._load_error = exc
            emit(LoadFailed(str(exc)))
        finally:
            self._ready.set()

    def _model_card(self) -> dict[str, Any]:
        data = self._get_json("/models").get("data")
        cards = [card for card in data if isinstance(card, dict) and "id" in card] if isinstance(data, list) else []
        if not cards:
            raise RemoteError(f"{self.url} serves no model (GET /v1/models is empty)")
        names = [str(card["id"]) for card in cards]
        if self.model is None:
            return cards[0]
        if self.model not in names:
            raise RemoteError(f"{self.url} does not serve {self.model!r}; it serves {', '.join(names)}: pass one of "
                              "them with --endpoint-model")
        return cards[names.index(self.model)]

    def _fetch_tokenizer(self) -> ChatGLMTokenizer | None:
        """The server's tokenizer when it shares one (`chatglm serve` does), cached by content; else None."""
        try:
            response = self.client.get(f"{self.base}/chatglm/tokenizer")
        except httpx.HTTPError:
            return None
        if response.status_code != 200 or self.tokenizer_cache is None:
            return None
        path = self.tokenizer_cache / f"{hashlib.sha256(response.content).hexdigest()[:16]}.model"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(response.content)
            return ChatGLMTokenizer(path)
        except (OSError, ChatGLMError):
            return None  # counts are estimated instead

    def _get_json(self, path: str) -> dict[str, Any]:
        try:
            response = self.client.get(self.base + path)
        except httpx.HTTPError as exc:
            raise RemoteError(_unreachable(self.url, exc)) from None
        _raise_for_status(response, self.url)
        try:
            body = response.json()
        except ValueError:
            raise RemoteError(f"{self.url}{path} did not answer with JSON: is it an OpenAI-compatible server?") \
                from None
        return body if isinstance(body, dict) else {}

    # ---------------------------------------------------------------- serving a request

    def _serve(self, request: Request, on_event: EventCallback) -> None:
        self._ready.wait()
        if self._load_error is not None or self._closing.is_set():
            return
        try:
            if isinstance(request, ChatRequest):
                self._chat(request, on_event)
            else:
                self._summarize(request, on_event)
        except ChatGLMError as exc:
            on_event(GenerationFailed(request.id, str(exc)))
        except Exception as exc:  # noqa: BLE001 (the app must hear of any failure, as one line)
            on_event(GenerationFailed(request.id, f"the remote request failed: {type(exc).__name__}: {exc}"))
        finally:
            self._cancelled.discard(request.id)

    def _chat(self, request: ChatRequest, on_event: EventCallback) -> None:
        budget = self.budget(request.history, request.query, request.instruction, request.params.reply_reserve)
        kept = request.history[len(budget.dropped_rounds):]  # the server would drop them too: the same policy
        messages = to_messages(request.instruction, kept, request.query, request.reply_prefix)
        text, reason, stats = self._stream(request.id, messages, request.params, on_event, budget.dropped_rounds,
                                           budget.used, request.reply_prefix)
        on_event(GenerationFinished(request.id, reason, text, stats))

    def _summarize(self, request: SummarizeRequest, on_event: EventCallback) -> None:
        if self.tokenizer is None:
            raise RemoteError(f"summarizing a document needs the model's tokenizer, which {self.url} does not "
                              "share: ask about a shorter text, or summarize against `chatglm serve`")

        def generate(prompt: str, params: GenerationParams, is_final: bool) -> tuple[str, FinishReason,
                                                                                     GenerationStats]:
            sink = on_event if is_final else (lambda event: None)
            return self._stream(request.id, to_messages(None, (), prompt), params, sink, ())

        summarize_request(request, self.tokenizer, self.window, generate, on_event, lambda: self._stopped(request.id))

    def _stopped(self, request_id: str) -> bool:
        return request_id in self._cancelled or self._closing.is_set()

    def _stream(self, request_id: str, messages: list[dict[str, str]], params: GenerationParams,
                on_event: EventCallback, dropped: tuple[int, ...], prompt_tokens: int = 0,
                reply_prefix: str = "") -> tuple[str, FinishReason, GenerationStats]:
        """One streamed completion: GenerationStarted, TextDeltas, and (text, reason, stats) at the end.

        `chatglm serve` opens the stream with the prompt's exact size and any rounds it left out; from another
        server GenerationStarted carries `prompt_tokens` (the budget's count) when the first text arrives.
        """
        reply = _Reply(request_id, on_event, dropped, prompt_tokens, reply_prefix)
        try:
            with self.client.stream("POST", f"{self.base}/chat/completions",
                                    json=_body(self.model or "", messages, params)) as response:
                _raise_for_status(response, self.url)
                for event in _server_events(response.iter_lines()):
                    if self._stopped(request_id):
                        raise _Cancelled
                    reply.add(event)
        except _Cancelled:
            reply.reason = "stopped"
        except httpx.HTTPError as exc:
            raise RemoteError(_unreachable(self.url, exc)) from None
        return reply.result()


class _Reply:
    """A streamed completion as it arrives: its text, its token counts and timings, and the events it sends."""

    def __init__(self, request_id: str, on_event: EventCallback, dropped: tuple[int, ...], prompt_tokens: int,
                 reply_prefix: str = "") -> None:
        self.request_id, self.on_event, self.dropped = request_id, on_event, dropped
        self.prompt_tokens, self.new_tokens = prompt_tokens, 0
        self.prefix = reply_prefix  # a continued reply begins with it, as the in-process engine's does
        self.text, self.reason = "", "stopped"
        self.start, self.first_at = time.perf_counter(), None
        self.started = False

    def add(self, event: dict[str, Any]) -> None:
        extra, usage = event.get("x_chatglm"), event.get("usage")
        if isinstance(extra, dict) and "prompt_tokens" in extra:
            self.prompt_tokens = int(extra["prompt_tokens"])
            # The server's indices count from the first round it was sent, after those left out here.
            self._start(tuple(len(self.dropped) + int(i) for i in extra.get("dropped_rounds", ())))
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens", self.prompt_tokens))
            self.new_tokens = int(usage.get("completion_tokens", self.new_tokens))
        for choice in event.get("choices") or ():
            delta = (choice.get("delta") or {}).get("content") or ""
            if delta:
                self._start(())
                self.first_at = self.first_at or time.perf_counter()
                self.text += delta
                self.on_event(TextDelta(self.request_id, delta))
            if choice.get("finish_reason"):
                self.reason = _REASONS.get(choice["finish_reason"], "eos")

    def _start(self, dropped_there: tuple[int, ...]) -> None:
        if not self.started:
            self.started = True
            self.on_event(GenerationStarted(self.request_id, self.prompt_tokens, self.dropped + dropped_there))
            if self.prefix:
                self.text = self.prefix
                self.on_event(TextDelta(self.request_id, self.prefix))

    def result(self) -> tuple[str, FinishReason, GenerationStats]:
        if self.reason != "stopped":
            self._start(())  # a reply with no text still started
        end = time.perf_counter()
        first = self.first_at or end
        count = self.new_tokens
        rate = (count - 1) / (end - first) if count > 1 and end > first else 0.0
        stats = GenerationStats(self.prompt_tokens, count, first - self.start, rate, end - self.start)
        return self.text, self.reason, stats  # type: ignore[return-value]


def _body(model: str, messages: list[dict[str, str]], params: GenerationParams) -> dict[str, object]:
    """The request body: the same parameters the in-process engine would use (temperature 0 is greedy)."""
    body: dict[str, object] = {"model": model, "messages": messages, "stream": True,
                               "stream_options": {"include_usage": True},
                               "temperature": params.temperature if params.do_sample else 0.0,
                               "top_p": params.top_p, "max_tokens": params.reply_reserve}
    if params.seed is not None:
        body["seed"] = params.seed
    # Sent only when they differ from "off", so servers without these extensions still accept the request.
    if params.top_k:
        body["top_k"] = params.top_k
    if params.repetition_penalty != 1.0:
        body["repetition_penalty"] = params.repetition_penalty
    return body


def _server_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a server-sent-event stream, up to `data: [DONE]`; an error event raises."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        event = json.loads(data)
        if isinstance(event, dict) and isinstance(event.get("error"), dict):
            raise RemoteError(f"the server failed: {_message(event)}")
        if isinstance(event, dict):
            yield event


def _raise_for_status(response: httpx.Response, url: str) -> None:
    if response.status_code < 400:
        return
    response.read()
    try:
        message = _message(response.json())
    except ValueError:
        message = response.text.strip().splitlines()[0][:200] if response.text.strip() else response.reason_phrase
    status = response.status_code
    if status == 401:
        raise RemoteError(f"{url} refused the API key ({message}): set --api-key or CHATGLM_API_KEY")
    if status == 429:
        raise RemoteError(f"{url} is busy ({message}): try again in a moment")
    raise RemoteError(f"{url} answered {status}: {message}")


def _message(body: object) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else body.get("detail") if isinstance(body, dict) \
        else None
    return " ".join(str(message or body).split())[:300]


def _unreachable(url: str, exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"{url} did not answer in time ({type(exc).__name__}): check that the server is running and reachable"
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return f"cannot reach {url} ({detail}): start `chatglm serve` there, or check --endpoint"
