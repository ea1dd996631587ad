"""The OpenAI chat-completions wire format as `chatglm serve` speaks it: a request body read into a ChatRequest
(every field checked, each problem one `ApiError` with the status and the message to send), and the response
objects and stream chunks built from the engine's results."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from chatglm_tui.engine.openai_messages import MessagesError, from_messages
from chatglm_tui.engine.protocol import ChatRequest, FinishReason, GenerationParams
from chatglm_tui.errors import ChatGLMError

# Fields read (the common OpenAI ones, and vLLM's top_k / repetition_penalty extensions). Fields of features the
# model does not have are refused by name rather than silently ignored.
_FIELDS = {"model", "messages", "stream", "stream_options", "temperature", "top_p", "top_k", "repetition_penalty",
           "max_tokens", "max_completion_tokens", "seed", "stop", "n", "user", "presence_penalty",
           "frequency_penalty"}
_PARAMS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "seed": "seed",
           "repetition_penalty": "repetition_penalty", "max_tokens": "max_new_tokens",
           "max_completion_tokens": "max_new_tokens"}
MAX_STOPS = 4
FINISH_REASONS: dict[FinishReason, str] = {"eos": "stop", "length": "length", "stopped": "stop"}


class ApiError(ChatGLMError):
    """A request the server answers with an error: `status`, and OpenAI's error object around the message."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict[str, object]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class CompletionRequest:
    """A checked chat-completions request: what to run, and how to answer."""

    chat: ChatRequest
    model: str
    stream: bool
    include_usage: bool
    stops: tuple[str, ...]


def parse_body(raw: bytes) -> dict[str, object]:
    """The JSON object of a request body, or a 400 ApiError saying what is wrong with it."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def read_completion(body: Mapping[str, object], served_model: str, defaults: GenerationParams) -> CompletionRequest:
    """A chat-completions body as a CompletionRequest; an ApiError for anything the server cannot honour."""
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise ApiError(400, f"unsupported field {unknown[0]!r}: this server reads {', '.join(sorted(_FIELDS))}",
                       param=unknown[0])
    model = body.get("model")
    if model != served_model:
        raise ApiError(404, f"the model {model!r} is not served here: use {served_model!r} (GET /v1/models)",
                       param="model", code="model_not_found")
    _check_unsupported(body)
    try:
        conversation = from_messages(body.get("messages"))
    except MessagesError as exc:
        raise ApiError(400, str(exc), param="messages") from None
    params = _params(body, defaults)
    chat = ChatRequest(conversation.query, conversation.history, conversation.instruction, params,
                       id=f"chatcmpl-{uuid.uuid4().hex[:24]}", reply_prefix=conversation.reply_prefix)
    stream = _typed(body, "stream", bool, False)
    options = _typed(body, "stream_options", dict, {})
    return CompletionRequest(chat, served_model, stream, bool(options.get("include_usage")), _stops(body))


def _check_unsupported(body: Mapping[str, object]) -> None:
    """Fields accepted only at the value that means "off": the model has one choice and no penalties of this kind."""
    if body.get("n", 1) != 1:
        raise ApiError(400, "n must be 1: the server writes one choice per request", param="n")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name, 0) not in (0, 0.0):
            raise ApiError(400, f"{name} is not supported (use repetition_penalty, e.g. 1.1)", param=name)


def _params(body: Mapping[str, object], defaults: GenerationParams) -> GenerationParams:
    """The generation parameters: the server's defaults, with what the request sets (temperature 0 is greedy)."""
    changes = {_PARAMS[name]: body[name] for name in _PARAMS if body.get(name) is not None}
    try:
        params = defaults.replace(**changes)
    except ChatGLMError as exc:  # GenerationError: names the field, the value and what is allowed
        name = next((field for field in _PARAMS if _PARAMS[field] in str(exc)), None)
        raise ApiError(400, str(exc).replace("max_new_tokens", "max_tokens"), param=name) from None
    return params.replace(do_sample=params.temperature > 0)


def _typed(body: Mapping[str, object], name: str, kind: type, default: object) -> object:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ApiError(400, f"{name} must be a {'boolean' if kind is bool else 'JSON object'}", param=name)
    return value


def _stops(body: Mapping[str, object]) -> tuple[str, ...]:
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise ApiError(400, f"stop must be a non-empty string or a list of up to {MAX_STOPS} of them", param="stop")
    return tuple(stops)


class StopScanner:
    """Cuts streamed text at the first stop sequence, holding back a tail that may still become one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.hold = max((len(stop) for stop in stops), default=1) - 1
        self.text = ""  # everything received
        self.sent = 0  # how much of it has been released
        self.stopped = False

    def feed(self, delta: str) -> str:
        """The text that can be released now; after a stop sequence, nothing more."""
        if self.stopped:
            return ""
        self.text += delta
        # Text before `sent` was released with a held-back tail as long as any stop but one: none starts there.
        found = [index for stop in self.stops if (index := self.text.find(stop, self.sent)) >= 0]
        if found:
            self.stopped = True
            return self._release(min(found))
        return self._release(max(len(self.text) - self.hold, self.sent))

    def flush(self) -> str:
        """The held-back tail, at the end of the reply."""
        return "" if self.stopped else self._release(len(self.text))

    def _release(self, end: int) -> str:
        released, self.sent = self.text[self.sent:end], max(end, self.sent)
        return released

    @property
    def reply(self) -> str:
        return self.text[:self.sent]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(request: CompletionRequest, text: str, finish_reason: str, prompt_tokens: int,
               completion_tokens: int, dropped_rounds: tuple[int, ...]) -> dict[str, object]:
    """The whole reply as a `chat.completion` object (with the rounds left out to fit the window, if any)."""
    return {"id": request.chat.id, "object": "chat.completion", "created": int(time.time()), "model": request.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens), "x_chatglm": _extra(prompt_tokens, dropped_rounds)}


def chunk(request: CompletionRequest, delta: Mapping[str, object], finish_reason: str | None = None,
          **extra: object) -> str:
    """One server-sent event of a streamed reply (`chat.completion.chunk`)."""
    choices = [{"index": 0, "delta": dict(delta), "logprobs": None, "finish_reason": finish_reason}]
    body = {"id": request.chat.id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": request.model, "choices": choices, **extra}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def first_chunk(request: CompletionRequest, prompt_tokens: int, dropped_rounds: tuple[int, ...]) -> str:
    """The stream's opening event: the role, and (an extension) the prompt's size and the rounds left out."""
    return chunk(request, {"role": "assistant", "content": ""}, x_chatglm=_extra(prompt_tokens, dropped_rounds))


def usage_chunk(request: CompletionRequest, prompt_tokens: int, completion_tokens: int) -> str:
    """The last event when `stream_options.include_usage` asks for it: no choices, the token usage."""
    body = {"id": request.chat.id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": request.model, "choices": [], "usage": usage(prompt_tokens, completion_tokens)}
    return f"data: {json.dumps(body)}\n\n"


def error_event(error: ApiError) -> str:
    """An error after the stream has begun (its status line is sent already): as an event, then the end."""
    return f"data: {json.dumps(error.body(), ensure_ascii=False)}\n\ndata: [DONE]\n\n"


def _extra(prompt_tokens: int, dropped_rounds: tuple[int, ...]) -> dict[str, object]:
    return {"prompt_tokens": prompt_tokens, "dropped_rounds": list(dropped_rounds)}
