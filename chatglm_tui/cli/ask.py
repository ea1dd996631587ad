"""`chatglm ask`: one question (or a piped document) in, the streamed answer out, the exchange saved.

stdout carries only the answer, written inertly (see `chatglm_tui.terminal.inert`); progress and notices go to stderr,
and only when stderr is a terminal. Ctrl+C, SIGTERM and SIGHUP (the terminal closed) stop the reply cleanly: the
partial reply is saved as stopped, and the exit code is 128 + the signal (130 for Ctrl+C). The reply is saved
whatever happens to stdout: a reader that leaves (`| head`) stops the reply (saved as stopped, exit 141, as
for SIGPIPE); any other write failure (a full disk, a closed stdout) is reported once the whole reply is saved.
"""

from __future__ import annotations

import dataclasses
import errno
import queue
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, TextIO

from chatglm_tui.cli.engines import engine_for, for_display, load_with_progress
from chatglm_tui.cli.output import EXIT_READER_GONE, StatusLine, discard_output, is_terminal
from chatglm_tui.config.settings import Settings
from chatglm_tui.engine.protocol import (
    ChatRequest,
    ChunkProgress,
    Engine,
    Event,
    GenerationFailed,
    GenerationFinished,
    GenerationParams,
    GenerationStarted,
    PrefillProgress,
    Request,
    SummarizeRequest,
    TextDelta,
    chunk_text,
)
from chatglm_tui.engine.summarize import history_stand_in
from chatglm_tui.errors import ChatGLMError, GenerationError
from chatglm_tui.session.chat_session import PendingReply, reply_stats
from chatglm_tui.session.documents import decode_document
from chatglm_tui.store.titles import title_from
from chatglm_tui.terminal.inert import StreamingInert, inert, inert_json
from chatglm_tui.terminal.signals import STOP_SIGNALS
from chatglm_tui.terminal.wording import counted

EXIT_INTERRUPTED = 130
_ACCEPTED = (GenerationStarted, PrefillProgress, ChunkProgress, TextDelta)  # the engine took the request


class OutputError(ChatGLMError):
    """stdout could not take the reply (which is saved nonetheless)."""


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


def read_document(stream: TextIO | None) -> str | None:
    """The text piped on `stream`, or None for a terminal, a closed stdin or empty input; DocumentError for binary
    or non-UTF-8 input."""
    if stream is None or is_terminal(stream):
        return None
    data = stream.buffer.read() if hasattr(stream, "buffer") else stream.read().encode()
    text = decode_document(data, "stdin", "pipe text, e.g. `pdftotext report.pdf - | chatglm ask`",
                           "`iconv -f GBK -t UTF-8 file.txt | chatglm ask`")
    return text if text.strip() else None


class _Conversation:
    """Which saved conversation an `ask` continues, and when its messages are saved (through `ChatSession`).

    The question is saved once the engine has taken it (a question it refuses, e.g. too long, is not), under the
    end of the branch the model was given as history; the reply is saved under its question. So several
    `ask -s ID` running at once on one conversation each save their reply under their own question.
    """

    def __init__(self, options: AskOptions, question: str | None, document: str | None) -> None:
        from chatglm_tui.session.chat_session import ChatSession
        from chatglm_tui.store import SessionStore, default_store_path

        self.options = options
        needs_store = options.save or options.continue_last or options.session
        self.session = ChatSession(SessionStore(default_store_path()), options.settings) if needs_store else None
        if self.session is not None and options.session:
            self.session.open(self.session.store.resolve(options.session).id)
        elif self.session is not None and options.continue_last:
            latest = self.session.store.latest()
            if latest is None:
                raise UsageError("there is no saved conversation to continue: ask without -c first")
            self.session.open(latest.id)
        self.history = tuple(self.session.history()[0]) if self.session is not None else ()
        # A continued conversation keeps its instruction unless a new one is given.
        self.instruction = options.settings.instruction or (self.session.instruction if self.session else None)
        self.title = title_from(question) if question else title_from(document or "", prefix="Summary: ")
        self.pending: PendingReply | None = None

    @property
    def id(self) -> str | None:
        return self.session.id if self.session else None

    def save_question(self, text: str, history_text: str | None = None) -> None:
        """Commit the question once the engine has taken it (a question it refuses, e.g. too long, is not saved)."""
        if self.pending is not None or not self.options.save or self.session is None:
            return
        _, self.pending = self.session.send(text, title=self.title, history_text=history_text)

    def save_reply(self, finished: GenerationFinished) -> None:
        """Commit the reply (whole, or partial and marked stopped) under its question."""
        if self.pending is not None and self.session is not None:
            self.session.save_reply(self.pending, finished)

    def close(self) -> None:
        if self.session is not None:
            self.session.store.close()


class _Progress:
    """What the stderr status line says while a request runs (which part of a long document, how far into its
    prompt), and what the engine reported that the answer must mention (rounds left out of the prompt)."""

    def __init__(self) -> None:
        self.part = ""
        self.dropped_rounds: tuple[int, ...] = ()

    def text(self, event: Event) -> str | None:
        if isinstance(event, ChunkProgress):
            self.part = f"summarizing {chunk_text(event)} · "
            return self.part + "starting"
        if isinstance(event, PrefillProgress):
            return f"{self.part}reading the prompt: {event.done}/{event.total} tokens"
        return None


class _Printer:
    """Streams reply text to stdout, inertly, unless the answer is printed at the end; remembers a failed write.

    A write that fails (the reader left, a full disk, a closed stdout) never stops the reply from being saved:
    stdout is pointed at /dev/null so nothing else (not even the interpreter's final flush) fails on it again.
    """

    def __init__(self, stdout: TextIO | None, streaming: bool) -> None:
        self.stdout, self.streaming, self.text = stdout, streaming, ""
        self.failure: OSError | None = None if stdout is not None else OSError(errno.EBADF, "stdout is closed")
        self._inert = StreamingInert()

    @property
    def reader_gone(self) -> bool:
        return self.failure is not None and self.failure.errno == errno.EPIPE

    def write(self, text: str) -> None:
        self.text += text
        if self.streaming:
            self.out(self._inert.feed(text))

    def end(self) -> None:
        if self.streaming and self.text:
            self.out(self._inert.flush() + "\n")

    def out(self, text: str) -> None:
        """Write and flush `text` (already inert) unless stdout has failed before."""
        if self.failure is not None or self.stdout is None:
            return
        try:
            self.stdout.write(text)
            self.stdout.flush()
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed
            self.failure = exc if isinstance(exc, OSError) else OSError(errno.EBADF, str(exc))
            discard_output(self.stdout)


class _StopSignals:
    """While a reply streams, Ctrl+C, SIGTERM and SIGHUP only ask for a stop (so no write is cut in half and the
    partial reply is saved); a second one interrupts for real."""

    def __init__(self) -> None:
        self.pressed = threading.Event()
        self.signal: int | None = None
        self.previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.pressed.is_set():
            raise KeyboardInterrupt
        self.signal = signum
        self.pressed.set()

    @property
    def exit_code(self) -> int:
        return 128 + (self.signal or signal.SIGINT)

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)


def _wait(engine: Engine, request: Request, events: queue.Queue[Event], printer: _Printer, status: StatusLine,
          progress: _Progress, accepted: Callable[[], None]) -> tuple[GenerationFinished | GenerationFailed, int]:
    """Consume events until the request ends; a stop signal or a reader that left (EPIPE) cancels it and keeps
    waiting for the partial reply. Returns the last event and the exit code it implies (0 if none)."""
    cancelled = False
    with _StopSignals() as stop:
        while True:
            if (stop.pressed.is_set() or printer.reader_gone) and not cancelled:
                cancelled = True
                engine.cancel(request.id)
            try:
                event = events.get(timeout=0.05)
            except queue.Empty:
                continue
            if isinstance(event, _ACCEPTED):
                accepted()
            ended = _handle(event, printer, status, progress)
            if ended is not None:
                code = stop.exit_code if stop.pressed.is_set() else EXIT_READER_GONE if printer.reader_gone else 0
                return ended, code


def _handle(event: Event, printer: _Printer, status: StatusLine,
            progress: _Progress) -> GenerationFinished | GenerationFailed | None:
    """Show one event; return it if it ends the request."""
    if isinstance(event, TextDelta):
        status.clear()
        printer.write(event.text)
    elif isinstance(event, GenerationStarted) and event.dropped_rounds:
        progress.dropped_rounds = event.dropped_rounds
        count = len(event.dropped_rounds)
        status.notice(f"note: the {count} oldest round{'s are' if count > 1 else ' is'} left out to fit the window "
                      "(they stay saved)")  # a line that stays: the reply below did not see them
    elif (text := progress.text(event)) is not None:
        status.show(text)
    elif isinstance(event, (GenerationFinished, GenerationFailed)):
        status.clear()
        return event
    return None


def _report(finished: GenerationFinished, conversation: _Conversation, options: AskOptions, printer: _Printer,
            progress: _Progress) -> None:
    """The reply at the end, for --json (exact text, escaped) and --render (Markdown, inert)."""
    if options.as_json:
        stats = reply_stats(finished)
        printer.out(inert_json({
            "reply": finished.text, "reason": finished.reason, "session_id": conversation.id,
            "prompt_tokens": finished.stats.prompt_tokens, "new_tokens": finished.stats.new_tokens,
            **{name: stats[name] for name in ("time_to_first_token_s", "tokens_per_s", "total_s")},
            "dropped_rounds": list(progress.dropped_rounds),
        }) + "\n")
    elif options.render and printer.stdout is not None and is_terminal(printer.stdout):
        from rich.console import Console
        from rich.markdown import Markdown

        try:
            Console(file=printer.stdout).print(Markdown(inert(finished.text)))
        except OSError as exc:
            printer.failure = exc
            discard_output(printer.stdout)
    elif options.render:
        printer.out(inert(finished.text) + "\n")


def _output_problem(printer: _Printer, conversation: _Conversation) -> OutputError:
    failure = printer.failure
    reason = (failure.strerror if failure is not None else None) or str(failure)
    where = (f"it is saved: `chatglm sessions show {conversation.id}`" if conversation.id
             else "it was not saved (--no-save)")
    return OutputError(f"the reply could not be written to stdout ({reason}); {where}")


def _request(question: str | None, document: str | None, conversation: _Conversation,
             params: GenerationParams) -> tuple[Request, tuple[str, str | None]]:
    """The request, and what to save as the question: its text and, for a document, what follow-ups give the
    model instead (what was asked; the summary is the reply)."""
    if document is not None:
        saved = f"{question}\n\n{document}" if question else document
        return SummarizeRequest(document, question, params), (saved, history_stand_in(document, question))
    assert question is not None  # the caller checked: a question or a document
    return ChatRequest(question, conversation.history, conversation.instruction, params), (question, None)


def _notice_end(finished: GenerationFinished, code: int, options: AskOptions, status: StatusLine) -> None:
    """A line on stderr when the reply did not end by itself: stopped, or cut off at the reply limit."""
    if code not in (0, EXIT_READER_GONE):
        status.notice("stopped" + (": the partial reply is saved" if options.save else ""))
    elif finished.reason == "length":
        status.notice(f"the reply was cut off at the limit of {counted(finished.stats.new_tokens, 'token')}: "
                      "continue it with `chatglm ask -c \"continue\"`, or ask again with a larger --max-new-tokens")


def run_ask(options: AskOptions, stdin: TextIO | None = sys.stdin, stdout: TextIO | None = sys.stdout,
            stderr: TextIO = sys.stderr) -> int:
    """Answer, print, save; return the exit code (0; 128 + N after stop signal N; 141 when stdout's reader left)."""
    document = read_document(stdin)
    question = options.question.strip() if options.question and options.question.strip() else None
    if question is None and document is None:
        raise UsageError("nothing to ask: give a question, or pipe a document in to summarize it")
    settings, status = options.settings, StatusLine(stderr)
    conversation = _Conversation(dataclasses.replace(options, settings=for_display(settings)), question, document)
    engine = None
    try:
        engine = engine_for(settings)
        load_with_progress(engine, status)
        request, saved = _request(question, document, conversation, settings.generation)
        events: queue.Queue[Event] = queue.Queue()
        engine.submit(request, events.put)
        printer, progress = _Printer(stdout, streaming=not (options.as_json or options.render)), _Progress()
        event, code = _wait(engine, request, events, printer, status, progress,
                            accepted=lambda: conversation.save_question(*saved))
        if isinstance(event, GenerationFailed):
            raise GenerationError(event.message)
        conversation.save_question(*saved)  # e.g. stopped while still queued: the question is kept
        conversation.save_reply(event)
        printer.end()
        _report(event, conversation, options, printer, progress)
        if printer.failure is not None and code == 0:
            raise _output_problem(printer, conversation)
        _notice_end(event, code, options, status)
        return code
    finally:
        if engine is not None:
            engine.close()
        conversation.close()
