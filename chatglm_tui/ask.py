"""`chatglm ask`: one question (or a piped document) in, the streamed answer out, the exchange saved.

stdout carries only the answer; progress and notices go to stderr, and only when stderr is a terminal. Ctrl+C
stops the reply cleanly: the partial reply is printed, saved as stopped, and the exit code is 130.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import signal
import sys
import threading
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal, TextIO

from chatglm_tui.engine.protocol import (
    ChatRequest,
    ChunkProgress,
    Event,
    GenerationFailed,
    GenerationFinished,
    GenerationStarted,
    LoadProgress,
    PrefillProgress,
    Request,
    SamplingParams,
    SummarizeRequest,
    TextDelta,
)
from chatglm_tui.errors import ChatGLMError, GenerationError
from chatglm_tui.settings import Settings
from chatglm_tui.terminal import StatusLine, is_terminal, safe_for

if TYPE_CHECKING:
    from chatglm_tui.engine.worker import InferenceWorker
    from chatglm_tui.store import Conversation, SessionStore

EXIT_INTERRUPTED = 130


class InputError(ChatGLMError):
    """The text piped in cannot be used."""


class UsageError(ChatGLMError):
    """The command was called in a way that cannot work."""

    exit_code = 2


@dataclass(frozen=True)
class AskOptions:
    question: str | None
    settings: Settings
    continue_last: bool = False
    session: str | None = None
    save: bool = True
    as_json: bool = False
    render: bool = False


def read_document(stream: TextIO) -> str | None:
    """The text piped on `stream`, or None for a terminal or empty input; InputError for binary or non-UTF-8."""
    if is_terminal(stream):
        return None
    data = stream.buffer.read() if hasattr(stream, "buffer") else stream.read().encode()
    if b"\x00" in data:
        raise InputError("stdin looks binary (it contains NUL bytes): pipe text, e.g. "
                         "`pdftotext report.pdf - | chatglm ask`")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"stdin is not valid UTF-8 (at byte {exc.start}): convert it first, e.g. "
                         "`iconv -f GBK -t UTF-8 file.txt | chatglm ask`") from exc
    return text if text.strip() else None


def _title(question: str | None, document: str | None) -> str:
    if question:
        text = question
    else:
        text = "Summary: " + next((line for line in (document or "").splitlines() if line.strip()), "")
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:59] + "…"


class _Conversation:
    """The saved side of one `ask`: which conversation, its history, and saving as messages complete."""

    def __init__(self, options: AskOptions, question: str | None, document: str | None) -> None:
        from chatglm_tui.store import SessionStore, default_store_path

        self.options = options
        needs_store = options.save or options.continue_last or options.session
        self.store: SessionStore | None = SessionStore(default_store_path()) if needs_store else None
        self.conversation: Conversation | None = None
        if self.store is not None and options.session:
            self.conversation = self.store.resolve(options.session)
        elif self.store is not None and options.continue_last:
            self.conversation = self.store.latest()
            if self.conversation is None:
                raise UsageError("there is no saved conversation to continue: ask without -c first")
        self.history = (tuple(self.store.history(self.conversation.id))
                        if self.store is not None and self.conversation else ())
        # A continued conversation keeps its instruction unless a new one is given.
        self.instruction = options.settings.instruction or (self.conversation.instruction if self.conversation
                                                            else None)
        self.title = _title(question, document)

    @property
    def id(self) -> str | None:
        return self.conversation.id if self.conversation else None

    def save(self, role: Literal["user", "assistant"], text: str, **extra: Any) -> None:
        """Commit one message, creating the conversation with the first one (an aborted start saves nothing)."""
        if not self.options.save or self.store is None:
            return
        if self.conversation is None:
            settings = self.options.settings
            self.conversation = self.store.create_conversation(
                self.title, model=settings.model,
                params=dataclasses.asdict(SamplingParams.from_settings(settings)),
                instruction=self.instruction)
        self.store.add_message(self.conversation.id, role, text, **extra)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def _load_engine(settings: Settings, status: StatusLine) -> InferenceWorker:
    from chatglm_tui.engine.worker import InferenceWorker, model_loader
    from chatglm_tui.hub import resolve_model, show_download_progress

    show_download_progress(status.enabled)  # progress only when stderr is a terminal
    path = resolve_model(settings.model, download=True)
    quantization = None if settings.quantization == "none" else settings.quantization
    engine = InferenceWorker(model_loader(str(path), quantization, settings.device, settings.dtype))

    def on_load(event: object) -> None:
        if isinstance(event, LoadProgress):
            status.show(f"{event.stage} {event.done}/{event.total} {event.message}".strip())

    engine.load(on_load)
    status.clear()
    return engine


class _Progress:
    """The stderr status text: which part of a long document is being read, and how far into its prompt."""

    def __init__(self) -> None:
        self.part = ""

    def text(self, event: Event) -> str | None:
        if isinstance(event, ChunkProgress):
            self.part = f"summarizing part {min(event.done + 1, event.total)} of {event.total} · "
            return self.part + "starting"
        if isinstance(event, PrefillProgress):
            return f"{self.part}reading the prompt: {event.done}/{event.total} tokens"
        return None


class _Printer:
    """Streams reply text to stdout (sanitized on a terminal) unless the answer is printed at the end."""

    def __init__(self, stdout: TextIO, streaming: bool) -> None:
        self.stdout, self.streaming, self.text = stdout, streaming, ""

    def write(self, text: str) -> None:
        self.text += text
        if self.streaming:
            self.stdout.write(safe_for(self.stdout, text))
            self.stdout.flush()

    def end(self) -> None:
        if self.streaming and self.text:
            self.stdout.write("\n")
            self.stdout.flush()


class _CtrlC:
    """While a reply streams, the first Ctrl+C only asks for a stop (so no write is cut in half); a second
    one interrupts for real."""

    def __init__(self) -> None:
        self.pressed = threading.Event()
        self.previous: Any = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.pressed.is_set():
            raise KeyboardInterrupt
        self.pressed.set()

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _wait(engine: InferenceWorker, request: Request, events: queue.Queue[Event], printer: _Printer,
          status: StatusLine) -> tuple[GenerationFinished | GenerationFailed, bool]:
    """Consume events until the request ends; Ctrl+C cancels it and keeps waiting for the partial reply."""
    cancelled, progress = False, _Progress()
    with _CtrlC() as ctrl_c:
        while True:
            if ctrl_c.pressed.is_set() and not cancelled:
                cancelled = True
                engine.cancel(request.id)
            try:
                event = _handle(events.get(timeout=0.05), printer, status, progress)
            except queue.Empty:
                continue
            if event is not None:
                return event, ctrl_c.pressed.is_set()


def _handle(event: Event, printer: _Printer, status: StatusLine,
            progress: _Progress) -> GenerationFinished | GenerationFailed | None:
    """Show one event; return it if it ends the request."""
    if isinstance(event, TextDelta):
        status.clear()
        printer.write(event.text)
    elif isinstance(event, GenerationStarted) and event.dropped_rounds:
        status.show(f"note: the {len(event.dropped_rounds)} oldest rounds are left out to fit the window")
    elif (text := progress.text(event)) is not None:
        status.show(text)
    elif isinstance(event, (GenerationFinished, GenerationFailed)):
        status.clear()
        return event
    return None


def _report(finished: GenerationFinished, conversation: _Conversation, options: AskOptions,
            stdout: TextIO) -> None:
    if options.as_json:
        stats = finished.stats
        stdout.write(json.dumps({
            "reply": finished.text, "reason": finished.reason, "session_id": conversation.id,
            "prompt_tokens": stats.prompt_tokens, "new_tokens": stats.new_tokens,
            "time_to_first_token_s": round(stats.time_to_first_token_s, 3),
            "tokens_per_s": round(stats.tokens_per_s, 2), "total_s": round(stats.total_s, 3),
        }, ensure_ascii=False) + "\n")
    elif options.render:
        if is_terminal(stdout):
            from rich.console import Console
            from rich.markdown import Markdown

            Console(file=stdout).print(Markdown(safe_for(stdout, finished.text)))
        else:
            stdout.write(finished.text + "\n")


def run_ask(options: AskOptions, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout,
            stderr: TextIO = sys.stderr) -> int:
    """Answer, print, save; return the exit code (0, or 130 when interrupted)."""
    document = read_document(stdin)
    question = options.question.strip() if options.question and options.question.strip() else None
    if question is None and document is None:
        raise UsageError("nothing to ask: give a question, or pipe a document in to summarize it")
    settings, status = options.settings, StatusLine(stderr)
    conversation = _Conversation(options, question, document)
    engine = None
    try:
        engine = _load_engine(settings, status)
        params = SamplingParams.from_settings(settings)
        request: Request
        if document is not None:
            request = SummarizeRequest(document, question, params)
            conversation.save("user", f"{question}\n\n{document}" if question else document)
        else:
            assert question is not None  # checked above: a question or a document
            request = ChatRequest(question, conversation.history, conversation.instruction, params)
            conversation.save("user", question)
        events: queue.Queue[Event] = queue.Queue()
        engine.submit(request, events.put)
        printer = _Printer(stdout, streaming=not (options.as_json or options.render))
        event, interrupted = _wait(engine, request, events, printer, status)
        if isinstance(event, GenerationFailed):
            raise GenerationError(event.message)
        printer.end()
        stats = event.stats
        conversation.save("assistant", event.text, stopped=event.reason == "stopped",
                          prompt_tokens=stats.prompt_tokens, new_tokens=stats.new_tokens,
                          stats={"time_to_first_token_s": stats.time_to_first_token_s,
                                 "tokens_per_s": stats.tokens_per_s, "total_s": stats.total_s,
                                 "reason": event.reason})
        _report(event, conversation, options, stdout)
        if interrupted and status.enabled:
            stderr.write("stopped" + (": the partial reply is saved\n" if options.save else "\n"))
        return EXIT_INTERRUPTED if interrupted else 0
    finally:
        if engine is not None:
            engine.close()
        conversation.close()
