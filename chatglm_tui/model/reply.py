"""A reply as text: the post-processed deltas of a generation, stoppable between tokens (and prompt layers), and
batched by token count or time. `ChatGLM.stream_chat` and the engine's worker both read replies through it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from chatglm_tui.model.generate import TokenGenerator
from chatglm_tui.model.modeling import LayerCallback
from chatglm_tui.model.params import FinishReason
from chatglm_tui.model.tokenizer import IncrementalDecoder

# (prompt tokens read, prompt tokens in all), after each layer of the prompt's forward pass.
PrefillCallback = Callable[[int, int], None]


class _StopRequested(Exception):
    """Raised from the prefill's layer callback to abandon the forward pass when a stop is asked for."""


class ReplyStream:
    """Iterates over a reply's text in chunks; afterwards `text`, `finish_reason` and the timings are set.

    Each chunk joins the deltas of at least `every_tokens` tokens, or of the tokens of `every_seconds` (whichever
    comes first); the last chunk holds what the decoder kept back. No text is ever dropped: the chunks joined
    equal `text`. `should_stop` is asked after every token and every layer of the prompt; when it says yes the
    reply ends with the text so far and `finish_reason` "stopped".
    """

    def __init__(self, generate: Callable[[LayerCallback], TokenGenerator], decoder: IncrementalDecoder, *,
                 should_stop: Callable[[], bool] | None = None, on_prefill: PrefillCallback | None = None,
                 every_tokens: int = 1, every_seconds: float = 0.0, prefix_ids: Sequence[int] = ()) -> None:
        self.tokens = generate(self._prefill_layer)  # the prefill reports each layer here, where a stop can end it
        self.decoder = decoder
        self.prefix_ids = list(prefix_ids)  # the start of the reply, already in the prompt (a continuation)
        self.should_stop = should_stop or (lambda: False)
        self.on_prefill = on_prefill
        self.every_tokens, self.every_seconds = every_tokens, every_seconds
        self.finish_reason: FinishReason | None = None
        self.new_tokens = 0
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.ended: float | None = None

    @property
    def text(self) -> str:
        """The reply so far (all of it once iteration has ended), post-processed."""
        return self.decoder.text

    def _prefill_layer(self, done: int, total: int) -> None:
        if self.should_stop():
            raise _StopRequested
        if self.on_prefill is not None:
            prompt = len(self.tokens.prompt_ids)
            self.on_prefill(prompt * done // total, prompt)

    def __iter__(self) -> Iterator[str]:
        pending = self.decoder.add(self.prefix_ids) if self.prefix_ids else ""
        pending_tokens, last_flush = 0, time.perf_counter()
        self.finish_reason = "stopped"
        try:
            for token in self.tokens:
                now = time.perf_counter()
                self.first_token_at = self.first_token_at or now
                self.new_tokens += 1
                pending += self.decoder.add([token])
                pending_tokens += 1
                if pending and (pending_tokens >= self.every_tokens or now - last_flush >= self.every_seconds):
                    yield pending
                    pending, pending_tokens, last_flush = "", 0, now
                if self.should_stop():
                    break
            else:
                self.finish_reason = self.tokens.finish_reason or "eos"
        except _StopRequested:
            pass
        pending += self.decoder.flush()
        self.ended = time.perf_counter()
        if pending:
            yield pending

    @property
    def time_to_first_token_s(self) -> float:
        return (self.first_token_at or self._end) - self.started

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: the tokens after the first over the time after the first."""
        first, end = self.first_token_at, self._end
        return (self.new_tokens - 1) / (end - first) if first is not None and self.new_tokens > 1 and end > first \
            else 0.0

    @property
    def total_s(self) -> float:
        return self._end - self.started

    @property
    def _end(self) -> float:
        return self.ended if self.ended is not None else time.perf_counter()
