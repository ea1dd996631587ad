"""What the CLI and the TUI see of the engine: requests, events and the Engine protocol. Imports no torch.

Events are delivered by calling the `on_event` callback given with each request, from the worker thread; a UI
must hand them over to its own thread (Textual: `app.post_message`), never touch widgets from the callback.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

# The engine speaks the model's own types (torch-free modules): one Round, one GenerationParams, one FinishReason.
from chatglm_tui.model.params import DEFAULT_MAX_NEW_TOKENS, FinishReason, GenerationParams
from chatglm_tui.model.prompt import Round

LoadStage = Literal["download", "read", "quantize", "ready"]


def new_request_id() -> str:
    return uuid.uuid4().hex[:12]


# What a request runs with unless it says otherwise: the original's sampling, and a reply limit that the context
# budget keeps room for.
DEFAULT_PARAMS = GenerationParams(max_new_tokens=DEFAULT_MAX_NEW_TOKENS)


@dataclass(frozen=True)
class ChatRequest:
    """A query after `history`, with an optional instruction (ChatGLM-6B has no system role: see budget.py)."""

    query: str
    history: tuple[Round, ...] = ()
    instruction: str | None = None
    params: GenerationParams = DEFAULT_PARAMS
    id: str = field(default_factory=new_request_id)
    # Continue this reply (one cut off at its limit): the model reads it as the start of its answer, and the reply
    # sent back (deltas, the final text) begins with it.
    reply_prefix: str = ""


@dataclass(frozen=True)
class SummarizeRequest:
    """A document to summarize, or to answer `question` about, however long it is."""

    document: str
    question: str | None = None
    params: GenerationParams = DEFAULT_PARAMS
    id: str = field(default_factory=new_request_id)


Request = ChatRequest | SummarizeRequest


@dataclass(frozen=True)
class LoadProgress:
    stage: LoadStage
    done: int
    total: int
    message: str = ""


STAGE_WORDS = {"download": "downloading", "read": "reading weights", "quantize": "quantizing", "ready": "ready"}


def load_text(progress: LoadProgress) -> str:
    """A load event in words, as the status bar and `ask` show it: 'reading weights 3/8', 'downloading 1.2/3.9 GB'."""
    word = STAGE_WORDS.get(progress.stage, progress.stage)
    if progress.stage == "ready":
        return word
    if progress.stage == "download" and progress.total > 1_000_000:
        return f"{word} {progress.done / 1e9:.2f}/{progress.total / 1e9:.2f} GB"
    return f"{word} {progress.done}/{progress.total}" if progress.total > 1 else word


def chunk_text(progress: ChunkProgress) -> str:
    """A summary's progress in words, as the chat app and `ask` show it: 'part 2 of 5 · about 40 s left'."""
    text = f"part {min(progress.done + 1, progress.total)} of {progress.total}"
    if progress.eta_s is None:
        return text
    seconds = round(progress.eta_s)
    left = f"{seconds} s" if seconds < 90 else f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{text} · about {left} left"


@dataclass(frozen=True)
class LoadFailed:
    message: str


@dataclass(frozen=True)
class GenerationStarted:
    request_id: str
    prompt_tokens: int
    dropped_rounds: tuple[int, ...] = ()  # indices into the request's history that the model will not see


@dataclass(frozen=True)
class PrefillProgress:
    """The prompt is being read: `done` of `total` tokens' worth of work."""

    request_id: str
    done: int
    total: int


@dataclass(frozen=True)
class ChunkProgress:
    """Long-document summarization: part `done` of `total` model calls finished (0 when the first begins), and
    the time the rest should take at the pace so far (None before a part has finished)."""

    request_id: str
    done: int
    total: int
    eta_s: float | None = None


@dataclass(frozen=True)
class TextDelta:
    request_id: str
    text: str


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    new_tokens: int
    time_to_first_token_s: float
    tokens_per_s: float
    total_s: float


@dataclass(frozen=True)
class GenerationFinished:
    request_id: str
    reason: FinishReason
    text: str  # the whole reply (for a summary: the final one); equals the joined deltas
    stats: GenerationStats


@dataclass(frozen=True)
class GenerationFailed:
    request_id: str
    message: str  # one line, for the user


Event = (LoadProgress | LoadFailed | GenerationStarted | PrefillProgress | ChunkProgress | TextDelta
         | GenerationFinished | GenerationFailed)
EventCallback = Callable[[Event], None]


@dataclass(frozen=True)
class Budget:
    """How a prompt uses the context window, in tokens, exactly as the model would read it."""

    window: int
    history_tokens: int  # the kept rounds, with their markers and [gMASK] <sop>
    instruction_tokens: int
    query_tokens: int  # the draft being typed
    reserved: int  # room kept for the reply
    dropped_rounds: tuple[int, ...]  # oldest-first indices of rounds left out to make room
    fits: bool  # False: even alone, the query (with the instruction) leaves no room for the reply
    # The ids of that prompt (kept rounds, instruction, query, [gMASK] <sop>), so nothing encodes it again.
    prompt_ids: tuple[int, ...] = field(default=(), compare=False, repr=False)
    exact: bool = True  # False: estimated from characters (a remote model whose tokenizer is unknown here)

    @property
    def used(self) -> int:
        return self.history_tokens + self.instruction_tokens + self.query_tokens

    @property
    def free(self) -> int:
        return self.window - self.used - self.reserved


class Engine(Protocol):
    """The small interface both the CLI and the TUI use."""

    @property
    def context_window(self) -> int: ...

    def start_loading(self, on_event: EventCallback | None = None) -> None:
        """Start loading the model and return at once. Progress, then LoadProgress("ready") or LoadFailed,
        arrive on `on_event` from the loading thread; requests submitted meanwhile wait for the load."""

    def load(self, on_event: EventCallback | None = None) -> None:
        """Load the model (blocking), reporting progress; raises a ChatGLMError on failure."""

    def submit(self, request: Request, on_event: EventCallback) -> None:
        """Queue a request; returns at once. Events arrive on `on_event` from the worker thread."""

    def cancel(self, request_id: str) -> None:
        """Stop a request within one token; what was generated is kept (finished with reason "stopped")."""

    def budget(self, history: Sequence[Round], query: str, instruction: str | None = None,
               reserve: int = DEFAULT_MAX_NEW_TOKENS) -> Budget:
        """The context budget of a prompt (tokenizer only, fast enough for every keystroke)."""

    def close(self, timeout: float = 1.0) -> None:
        """Stop the worker (cancelling what runs) and join it."""
