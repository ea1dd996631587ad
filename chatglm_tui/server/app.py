"""The engine behind an OpenAI-compatible HTTP API: `POST /v1/chat/completions` (streamed or whole),
`GET /v1/models`, `GET /health`, and `GET /v1/chatglm/tokenizer` (so a remote client counts tokens exactly).

One model, many clients: requests queue on the engine's worker, at most `max_pending` at a time (429 beyond);
a client that disconnects cancels its generation; a prompt that cannot fit the window is a 400 saying by how
much, and older rounds are left out by the chat's own policy (reported in the response).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from chatglm_tui.engine.protocol import (
    ChatRequest,
    Engine,
    Event,
    GenerationFailed,
    GenerationFinished,
    GenerationParams,
    GenerationStarted,
    TextDelta,
)
from chatglm_tui.server.completions import (
    FINISH_REASONS,
    ApiError,
    CompletionRequest,
    StopScanner,
    chunk,
    completion,
    error_event,
    first_chunk,
    parse_body,
    read_completion,
    usage_chunk,
)
from chatglm_tui.terminal.wording import counted

CLIENT_CLOSED = 499  # nginx's status for a client that left before the answer (logged, never received)
# Called after each finished reply (in a thread): `chatglm serve --save` stores the exchange.
OnFinished = Callable[[ChatRequest, GenerationFinished], None]


@dataclass(frozen=True)
class ServerOptions:
    """What the API serves and how: the model's name, the defaults a request starts from, the limits."""

    model_name: str
    defaults: GenerationParams
    api_key: str | None = None
    max_pending: int = 16
    tokenizer_file: Path | None = None
    on_finished: OnFinished | None = None


class _ClientGone(Exception):
    """The client closed the connection while its request waited."""


class _Exchange:
    """One request on the engine: its events handed over to the event loop, and its place in the queue."""

    def __init__(self, engine: Engine, request: CompletionRequest, release: Callable[[], None]) -> None:
        self.engine, self.request, self.release = engine, request, release
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.done = False
        self.ended = False  # the engine has sent the request's last event
        self.skip = len(request.chat.reply_prefix)  # a continued reply: the client has its start already

    def submit(self) -> None:
        self.engine.submit(self.request.chat, lambda event: self.loop.call_soon_threadsafe(self.events.put_nowait,
                                                                                           event))

    async def next(self) -> Event:
        event = await self.events.get()
        self.ended = isinstance(event, (GenerationFinished, GenerationFailed))
        return event

    def new_text(self, event: Event) -> str:
        """The text an event adds for the client: a continued reply's deltas begin with the start it sent."""
        if not isinstance(event, TextDelta):
            return ""
        skipped = min(self.skip, len(event.text))
        self.skip -= skipped
        return event.text[skipped:]

    def close(self) -> None:
        """The answer is over (or abandoned): stop the generation if it still runs, free the queue place."""
        if not self.done:
            self.done = True
            if not self.ended:
                self.engine.cancel(self.request.chat.id)
            self.release()


class CompletionsService:
    """The routes, over one engine."""

    def __init__(self, engine: Engine, options: ServerOptions) -> None:
        self.engine, self.options = engine, options
        self.pending = 0
        self.started = int(time.time())

    # ---------------------------------------------------------------- routes

    async def health(self, request: Request) -> Response:
        self._authorize(request)
        return JSONResponse({"status": "ok", "model": self.options.model_name, "pending": self.pending,
                             "max_pending": self.options.max_pending})

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        card = {"id": self.options.model_name, "object": "model", "created": self.started,
                "owned_by": "chatglm-tui", "max_model_len": self.engine.context_window}
        return JSONResponse({"object": "list", "data": [card]})

    async def tokenizer(self, request: Request) -> Response:
        self._authorize(request)
        if self.options.tokenizer_file is None:
            raise ApiError(404, "this server has no tokenizer file to share", kind="not_found_error")
        return FileResponse(self.options.tokenizer_file, media_type="application/octet-stream")

    async def chat_completions(self, request: Request) -> Response:
        self._authorize(request)
        completion_request = read_completion(parse_body(await request.body()), self.options.model_name,
                                             self.options.defaults)
        await self._check_fits(completion_request.chat)
        exchange = self._admit(completion_request)
        exchange.submit()
        if completion_request.stream:  # the status line goes out at once: a queued client knows it was accepted
            return StreamingResponse(self._stream(exchange), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            return JSONResponse(await self._whole(exchange, request))
        except _ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        finally:
            exchange.close()

    # ---------------------------------------------------------------- the steps of a completion

    def _authorize(self, request: Request) -> None:
        key = self.options.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise ApiError(401, "missing or wrong API key: send the header `Authorization: Bearer KEY` with the "
                                "key given to `chatglm serve --api-key`", code="invalid_api_key")

    async def _check_fits(self, chat: ChatRequest) -> None:
        """A 400 when the last message (with the instruction) cannot fit even with every earlier round left out."""
        budget = await run_in_threadpool(self.engine.budget, chat.history, chat.query, chat.instruction,
                                         chat.params.reply_reserve)
        if not budget.fits:
            over = budget.used + budget.reserved - budget.window
            size = counted(budget.query_tokens + budget.instruction_tokens, "token")
            raise ApiError(400, f"the last message is {size} (with the instruction); with room for a "
                                f"{budget.reserved}-token reply it is {counted(over, 'token')} over the "
                                f"{budget.window}-token window: shorten it by {counted(over, 'token')}, or "
                                "lower max_tokens", param="messages", code="context_length_exceeded")

    def _admit(self, request: CompletionRequest) -> _Exchange:
        if self.pending >= self.options.max_pending:
            raise ApiError(429, f"the server is busy: {self.pending} requests are queued for the model (at most "
                                f"{self.options.max_pending}); retry in a moment", code="server_busy",
                           kind="rate_limit_error")
        self.pending += 1
        return _Exchange(self.engine, request, self._release)

    def _release(self) -> None:
        self.pending -= 1

    async def _first_event(self, exchange: _Exchange) -> tuple[GenerationStarted, Event]:
        """Wait (in the queue, then while the prompt is read) for the reply to start: the start, and the first
        event that matters (the start itself, or text, the end or a failure when it did not say it started)."""
        while True:
            event = await exchange.next()
            if isinstance(event, GenerationStarted):
                return event, event
            if isinstance(event, (GenerationFinished, GenerationFailed, TextDelta)):
                return GenerationStarted(exchange.request.chat.id, 0), event

    async def _whole(self, exchange: _Exchange, client: Request) -> dict[str, object]:
        """The whole reply, or _ClientGone as soon as the client disconnects (the caller cancels the generation)."""
        reply = asyncio.ensure_future(self._collect(exchange))
        gone = asyncio.ensure_future(_disconnected(client))
        await asyncio.wait({reply, gone}, return_when=asyncio.FIRST_COMPLETED)
        for task in (reply, gone):
            task.cancel()
        if not reply.done() or reply.cancelled():
            raise _ClientGone
        return reply.result()

    async def _collect(self, exchange: _Exchange) -> dict[str, object]:
        """Wait for the whole reply; it is cut at a stop sequence."""
        started, event = await self._first_event(exchange)
        scanner = StopScanner(exchange.request.stops)
        while not isinstance(event, (GenerationFinished, GenerationFailed)):
            scanner.feed(exchange.new_text(event))
            if scanner.stopped:
                self.engine.cancel(exchange.request.chat.id)
            event = await exchange.next()
        if isinstance(event, GenerationFailed):
            raise ApiError(500, event.message, kind="server_error")
        scanner.flush()
        await self._finished(exchange.request.chat, event, scanner)
        reason = "stop" if scanner.stopped else FINISH_REASONS[event.reason]
        return completion(exchange.request, scanner.reply, reason, started.prompt_tokens, event.stats.new_tokens,
                          started.dropped_rounds)

    async def _stream(self, exchange: _Exchange) -> AsyncIterator[str]:
        """The reply as server-sent events. A client that disconnects cancels this (Starlette does), and with it
        the generation; a failure after the status line is an error event."""
        request, scanner = exchange.request, StopScanner(exchange.request.stops)
        try:
            started, event = await self._first_event(exchange)
            yield first_chunk(request, started.prompt_tokens, started.dropped_rounds)
            while not isinstance(event, (GenerationFinished, GenerationFailed)):
                text = scanner.feed(exchange.new_text(event))
                if text:
                    yield chunk(request, {"content": text})
                if scanner.stopped:
                    self.engine.cancel(request.chat.id)
                event = await exchange.next()
            if isinstance(event, GenerationFailed):
                yield error_event(ApiError(500, event.message, kind="server_error"))
                return
            tail = scanner.flush()
            if tail:
                yield chunk(request, {"content": tail})
            yield chunk(request, {}, "stop" if scanner.stopped else FINISH_REASONS[event.reason])
            if request.include_usage:
                yield usage_chunk(request, started.prompt_tokens, event.stats.new_tokens)
            yield "data: [DONE]\n\n"
            await self._finished(request.chat, event, scanner)
        finally:  # also when the client disconnects mid-stream: the generation is cancelled
            exchange.close()

    async def _finished(self, chat: ChatRequest, finished: GenerationFinished, scanner: StopScanner) -> None:
        if self.options.on_finished is not None:
            reply = GenerationFinished(finished.request_id, finished.reason, chat.reply_prefix + scanner.reply,
                                       finished.stats)
            await run_in_threadpool(self.options.on_finished, chat, reply)


async def _disconnected(client: Request) -> None:
    """Return when the client disconnects. Its body is read already, so the next ASGI message can only be the
    disconnect (what Starlette's StreamingResponse listens for; `is_disconnected()` may not see it in time)."""
    while (await client.receive())["type"] != "http.disconnect":
        pass


def make_server_app(engine: Engine, options: ServerOptions) -> Starlette:
    """The ASGI app over a loaded engine (the caller runs it, e.g. with uvicorn, and closes the engine)."""
    service = CompletionsService(engine, options)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        headers = {"Retry-After": "1"} if exc.status == 429 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    async def not_found(request: Request, exc: Exception) -> Response:
        error = ApiError(404, f"no such endpoint: {request.method} {request.url.path} (see /v1/models, "
                              "/v1/chat/completions, /health)", kind="not_found_error")
        return JSONResponse(error.body(), status_code=404)

    async def wrong_method(request: Request, exc: Exception) -> Response:
        error = ApiError(405, f"{request.method} is not allowed on {request.url.path}")
        return JSONResponse(error.body(), status_code=405)

    routes = [Route("/health", service.health), Route("/v1/models", service.models),
              Route("/v1/chatglm/tokenizer", service.tokenizer),
              Route("/v1/chat/completions", service.chat_completions, methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={ApiError: api_error, 404: not_found, 405: wrong_method})
    app.state.service = service
    return app
