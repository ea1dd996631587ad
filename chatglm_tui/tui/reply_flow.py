"""`ReplyFlow`: the reply being written, from sending the question to saving the answer.

It is the only place that sends requests and (through `ChatSession`) saves: the question when it is sent, the
reply when it finishes or is stopped. The engine's events reach it through the chat screen, which receives them
as `tui.messages` posted from the worker thread; it draws through the screen (`ChatHost`).
"""

from __future__ import annotations

from collections.abc import Callable

from chatglm_tui.engine.protocol import (
    ChunkProgress,
    Engine,
    EventCallback,
    GenerationFailed,
    GenerationFinished,
    GenerationStarted,
    GenerationStats,
    PrefillProgress,
    TextDelta,
    chunk_text,
)
from chatglm_tui.session.chat_session import ChatSession, PendingReply
from chatglm_tui.store import StoreError
from chatglm_tui.terminal.wording import counted
from chatglm_tui.tui.chat_host import ChatHost
from chatglm_tui.tui.question_edit import QuestionEdit
from chatglm_tui.tui.widgets.message_view import MessageView, Versions


class ReplyFlow:
    """The pending reply (at most one): sending, following the engine, stopping, regenerating and saving."""

    def __init__(self, host: ChatHost, engine: Engine, question_edit: QuestionEdit, deliver: EventCallback) -> None:
        self.host, self.engine, self.question_edit = host, engine, question_edit
        self.deliver = deliver  # hands an engine event back to the screen's thread (called from the worker)
        self.pending: PendingReply | None = None
        self.reply_view: MessageView | None = None  # None while the pending reply's chat is not on screen
        self.streamed = ""  # the pending reply's text so far, kept here too: its view may be gone
        self.started = False  # the engine has begun the pending request (else it waits in a queue)
        self.summary_part = ""  # for a long document: "summarizing part 2 of 5 · about 40 s left"

    @property
    def session(self) -> ChatSession:
        return self.host.session

    def is_pending(self, request_id: str) -> bool:
        return self.pending is not None and self.pending.request.id == request_id

    def can_generate(self) -> bool:
        """Whether a new reply may start now; says why not."""
        if self.pending is not None:
            self.host.notify("A reply is being written: wait for it, or press Esc to stop it.", severity="warning")
            return False
        if self.host.load_state == "failed":
            self.host.notify(f"The model is not loaded: {self.host.load_error}", severity="error")
            return False
        return True

    # ---------------------------------------------------------------- starting a reply

    async def send(self, text: str, *, as_document: bool = False) -> None:
        """Save the question (a new version of the one being edited, if any) and start its reply; `as_document`:
        the text is too long for the window, so its summary is asked for, in parts (as `chatglm ask` does)."""
        edit_of = self.question_edit.editing
        try:
            if as_document:
                message, pending = self.session.send_document(text)
            else:
                message, pending = self.session.send(text, edit_of=edit_of)
        except StoreError as exc:  # the prompt keeps the text
            self.host.store_problem(exc)
            return
        self.host.prompt.remember(text)
        self.host.prompt.clear()
        self.question_edit.end()
        if edit_of is not None:
            await self.host.show_branch()
        else:
            await self.host.conversation.add(MessageView(message))
            self.host.show_title()  # the first message names a new conversation
        await self.start(pending)
        self.host.refresh_sidebar()

    async def regenerate(self) -> None:
        """Answer the last question again; the old reply stays as a version."""
        await self._new_version(self.session.regenerate, "There is no question to answer again yet.")

    async def continue_reply(self) -> None:
        """Continue the last reply (cut off at the reply limit, or stopped) as a new version that begins with it."""
        await self._new_version(self.session.continue_reply, "There is no reply to continue yet.")

    async def _new_version(self, request: Callable[[], PendingReply | None], nothing_to_do: str) -> None:
        """Start a new version of the branch's last reply, as the session builds it (None: say `nothing_to_do`)."""
        if not self.can_generate():
            return
        pending = request()
        if pending is None:
            self.host.notify(nothing_to_do, severity="warning")
            return
        await self.host.show_branch()
        await self.start(pending)

    async def start(self, pending: PendingReply) -> None:
        self.pending, self.streamed, self.started, self.summary_part = pending, "", False, ""
        self.reply_view = await self.host.conversation.add(MessageView(None))
        self.reply_view.note = "waiting for the model to load…" if self.host.load_state == "loading" else ""
        self.reply_view.refresh_header()
        self.host.refresh_bindings()
        self.engine.submit(pending.request, self.deliver)

    # ---------------------------------------------------------------- the engine's events

    def handle_started(self, event: GenerationStarted) -> None:
        if self.is_pending(event.request_id):
            self.started = True
        pending = self.pending
        if (pending is None or not self.is_pending(event.request_id) or self.reply_view is None
                or pending.conversation_id != self.session.id):
            return  # the user has moved to another chat meanwhile
        _, sources = self.session.history(before=pending.parent_id)
        dropped = {message_id for index in event.dropped_rounds for message_id in sources[index]}
        self.host.conversation.mark_left_out(dropped)
        self.reply_view.note = "reading the prompt…"
        self.reply_view.refresh_header()

    def handle_prompt_read(self, event: PrefillProgress | ChunkProgress) -> None:
        if self.is_pending(event.request_id) and self.reply_view is not None:
            if isinstance(event, ChunkProgress):  # a long document: which part, and the time left (Esc stops)
                self.summary_part = f"summarizing {chunk_text(event)}"
                self.reply_view.note = self.summary_part
            else:
                prefix = f"{self.summary_part} · " if self.summary_part else ""
                self.reply_view.note = f"{prefix}reading the prompt {event.done}/{event.total}"
            self.reply_view.refresh_header()

    async def handle_delta(self, event: TextDelta) -> None:
        if not self.is_pending(event.request_id):
            return
        self.streamed += event.text
        view = self.reply_view
        if view is None:  # its chat is not on screen
            return
        if view.note:
            view.note = ""
            view.refresh_header()
        await view.append(event.text)

    async def handle_finished(self, event: GenerationFinished) -> None:
        if not self.is_pending(event.request_id) or self.pending is None:
            return
        pending, view = self.pending, self.reply_view
        self.pending, self.reply_view = None, None
        try:
            saved = self.session.save_reply(pending, event)
        except StoreError as exc:  # its conversation was deleted elsewhere meanwhile
            self.host.store_problem(exc)
            if view is not None and view.is_attached:
                await view.finish(None, event.text)
            self.host.refresh_bindings()
            return
        rate = f" · {event.stats.tokens_per_s:.1f} tok/s" if event.stats.tokens_per_s else ""
        self.host.show_reply_speed(f"last reply {counted(event.stats.new_tokens, 'token')}{rate}")
        if view is not None and view.is_attached:
            view.versions = Versions(*self.session.versions(saved))
            await view.finish(saved)
        elif pending.conversation_id == self.session.id:
            await self.host.show_branch()  # back in its chat before the reply ended: show it where it belongs
        if event.reason == "stopped":
            self.host.notify("Stopped. The partial reply is saved and marked stopped.")
        self.host.refresh_bindings()
        self.host.refresh_budget()
        self.host.refresh_sidebar()

    async def handle_failed(self, event: GenerationFailed) -> None:
        if not self.is_pending(event.request_id):
            return
        pending, view = self.pending, self.reply_view
        self.pending, self.reply_view = None, None
        self.host.notify(event.message, title="The reply failed", severity="error", timeout=10)
        self.host.refresh_bindings()
        if pending is not None and self.session.reply_failed(pending):
            await self.host.show_branch()  # a failed regenerate: the reply it was to replace is shown again
        elif view is not None and view.is_attached:
            await view.finish(None, f"*The reply failed: {event.message}*\n\nPress ctrl+r to try again.")

    def model_failed(self, reason: str) -> None:
        """The model will never load: a message sent while it was loading will never be answered, so say so."""
        if self.pending is not None:
            self.deliver(GenerationFailed(self.pending.request.id, f"the model is not loaded: {reason}"))

    # ---------------------------------------------------------------- stopping

    async def stop(self) -> None:
        """Stop the reply (saved, marked stopped, when the engine confirms), or take back one still queued."""
        if self.pending is None:
            return
        self.engine.cancel(self.pending.request.id)
        if not self.started:  # still queued behind the model load: take it back at once
            view, self.pending, self.reply_view = self.reply_view, None, None
            if view is not None:
                await view.remove()
            self.host.refresh_bindings()
            self.host.notify("Not sent to the model; your question is saved. Press ctrl+r to ask it once the "
                             "model is ready.")

    def leave_chat(self, discard: bool = False) -> None:
        """Its chat leaves the screen: stop the reply (saved as stopped when it ends, unless `discard`)."""
        if self.pending is not None:
            self.engine.cancel(self.pending.request.id)
            if discard:  # its conversation is being deleted: nothing to save it into
                self.pending = None
                self.host.refresh_bindings()
            else:
                self.host.notify("The reply was stopped; what it had written is saved in its chat.")
        self.reply_view = None

    def save_partial(self) -> None:
        """On quit mid-reply: save what was written, marked stopped (the engine is closed right after)."""
        if self.pending is None or not self.streamed:
            return
        stats = GenerationStats(0, 0, 0.0, 0.0, 0.0)
        finished = GenerationFinished(self.pending.request.id, "stopped", self.streamed, stats)
        self.engine.cancel(self.pending.request.id)
        try:
            self.session.save_reply(self.pending, finished)
        except StoreError:
            pass  # its conversation was deleted elsewhere: there is nothing to save it into
        self.pending = None
