"""The chat screen: sidebar, transcript, prompt, context meter and status bar, and the flow of a reply.

It is the only place that sends requests and (through `ChatSession`) saves: the question when it is sent, the
reply when it finishes or is stopped. Engine events arrive as `tui.messages` posted from the worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.timer import Timer
from textual.widgets import Button, Footer, Static

from chatglm_tui.engine.protocol import Engine, GenerationFailed, GenerationFinished, GenerationStats
from chatglm_tui.errors import ChatGLMError
from chatglm_tui.inert import inert_line
from chatglm_tui.store import Message, StoreError
from chatglm_tui.tui.chat_session import ChatSession, PendingReply
from chatglm_tui.tui.messages import (
    ModelLoadFailed,
    ModelLoadProgressed,
    PromptRead,
    ReplyDelta,
    ReplyFailed,
    ReplyFinished,
    ReplyStarted,
    post_engine_event,
)
from chatglm_tui.tui.screens.chat_branches import BranchActions
from chatglm_tui.tui.widgets.budget_meter import BudgetMeter
from chatglm_tui.tui.widgets.conversation import Conversation, Entry
from chatglm_tui.tui.widgets.message_view import MessageView, Versions
from chatglm_tui.tui.widgets.prompt_input import PromptInput
from chatglm_tui.tui.widgets.sidebar import Sidebar
from chatglm_tui.tui.widgets.status_bar import StatusBar

BUDGET_DELAY = 0.08  # seconds of typing pause before the meter recounts (exact counts cost ~1-6 ms)


class ChatScreen(BranchActions):
    """The main screen."""

    BINDINGS = [
        Binding("escape", "stop", "Stop", id="chat.stop", tooltip="Stop the reply (what was written is kept)"),
        Binding("ctrl+r", "regenerate", "Regenerate", id="chat.regenerate", priority=True,
                tooltip="Answer the last question again (the old reply stays as a version)"),
        Binding("f5", "edit_last", "Edit last", id="chat.edit", show=False,
                tooltip="Edit the last question and send it as a new version"),
        Binding("ctrl+y", "copy_reply", "Copy reply", id="chat.copy_reply", priority=True,
                tooltip="Copy the last reply"),
        Binding("ctrl+b", "copy_code", "Copy code", id="chat.copy_code", priority=True, show=False,
                tooltip="Copy a code block of the last reply"),
        Binding("ctrl+g", "open_editor", "Editor", id="chat.editor", priority=True, show=False,
                tooltip="Write the prompt in $EDITOR"),
        Binding("ctrl+n", "new_chat", "New chat", id="chat.new", priority=True, tooltip="Start a new chat"),
        Binding("ctrl+o", "find_chat", "Find chat", id="chat.find", priority=True, show=False,
                tooltip="Filter the saved conversations"),
        Binding("ctrl+s", "toggle_sidebar", "Sidebar", id="chat.sidebar", priority=True, show=False,
                tooltip="Show or hide the conversations"),
        Binding("f2", "rename", "Rename", id="chat.rename", show=False, tooltip="Rename this conversation"),
        Binding("f3", "conversation_settings", "Settings", id="chat.settings",
                tooltip="This chat's instruction and sampling settings"),
        Binding("f4", "export", "Export", id="chat.export", show=False,
                tooltip="Export this conversation to Markdown"),
        Binding("f8", "delete", "Delete", id="chat.delete", show=False, tooltip="Delete this conversation"),
        Binding("pageup", "scroll_transcript(-1)", "Scroll up", id="chat.page_up", priority=True, show=False,
                tooltip="Scroll the conversation up"),
        Binding("pagedown", "scroll_transcript(1)", "Scroll down", id="chat.page_down", priority=True,
                show=False, tooltip="Scroll the conversation down"),
    ]

    STORE_POLL_SECONDS = 3.0  # the store is shared with `chatglm ask` and other windows

    def __init__(self, session: ChatSession, engine: Engine, model_label: tuple[str, str, str],
                 conversation_id: str | None = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__(id="chat")
        self.initial_conversation, self.clock = conversation_id, clock
        self.session, self.engine = session, engine
        self.model_label = model_label
        self.pending: PendingReply | None = None
        self.reply_view: MessageView | None = None  # None while the pending reply's chat is not on screen
        self.streamed = ""  # the pending reply's text so far, kept here too: its view may be gone
        self.reply_started = False  # the engine has begun the pending request (else it waits in a queue)
        self.editing: int | None = None  # the message being edited, if any
        self.load_state = "loading"
        self.load_error = ""
        self._budget_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield Sidebar(id="sidebar", clock=self.clock)
            with Vertical(id="chat-pane"):
                yield Static(id="chat-title")
                yield Conversation(id="conversation")
                yield Static("", id="edit-banner")
                yield PromptInput(id="prompt")
                yield BudgetMeter(id="meter")
        yield StatusBar(*self.model_label, id="status")
        yield Footer()

    async def on_mount(self) -> None:
        if self.initial_conversation is not None:
            self.session.open(self.initial_conversation)
        await self.show_branch()
        self.refresh_sidebar()
        self.query_one(PromptInput).focus()
        self.set_interval(self.STORE_POLL_SECONDS, self.watch_store)

    # ---------------------------------------------------------------- widgets

    def entry(self, message: Message) -> Entry:
        return Entry(message, Versions(*self.session.versions(message)))

    async def show_branch(self, focus: int | None = None) -> None:
        """Render the branch on screen from the session (after opening, switching version or editing)."""
        await self.conversation.show([self.entry(message) for message in self.session.branch])
        self.show_title()
        self.refresh_budget()
        for view in self.conversation.views:
            if focus is not None and view.message is not None and view.message.id == focus:
                view.focus()
                view.scroll_visible(animate=False)

    def stop_for_switch(self, discard: bool = False) -> None:
        """Leaving the chat on screen: stop its reply (saved as stopped, unless `discard`) and end an edit."""
        if self.pending is not None:
            self.engine.cancel(self.pending.request.id)
            if discard:  # its conversation is being deleted: nothing to save it into
                self.pending = None
                self.refresh_bindings()
            else:
                self.notify("The reply was stopped; what it had written is saved in its chat.")
        self.reply_view = None
        self.end_edit()

    def action_scroll_transcript(self, pages: int) -> None:
        """Page through the transcript from anywhere, the prompt included (reading while typing)."""
        conversation = self.conversation
        if pages < 0:
            conversation.scroll_page_up(animate=False)
        else:
            conversation.scroll_page_down(animate=False)

    @on(Button.Pressed, "#show-earlier")
    async def show_earlier(self) -> None:
        await self.conversation.show_earlier()

    # ---------------------------------------------------------------- the context meter

    @on(PromptInput.Changed)
    def draft_changed(self) -> None:
        if self._budget_timer is not None:
            self._budget_timer.stop()
        self._budget_timer = self.set_timer(BUDGET_DELAY, self.refresh_budget)

    def refresh_budget(self) -> None:
        """Recount the window for the branch, the instruction, the draft and the reply reserve (exact)."""
        meter = self.query_one(BudgetMeter)
        rounds, sources = self.session.history(before=self.editing)
        pending = self.pending
        if (pending is not None and self.editing is None and sources and sources[-1] == (pending.parent_id,)):
            rounds[-1] = (rounds[-1][0], self.streamed)  # the round being answered, with the reply so far
        try:
            budget = self.engine.budget(rounds, self.prompt.text, self.session.instruction,
                                        reserve=self.session.params.max_new_tokens)
        except ChatGLMError:  # no tokenizer yet (or ever, when the load failed)
            meter.budget = None
            meter.note = ("not counted: the model's tokenizer is not loaded" if self.load_state == "failed"
                          else "counted once the tokenizer is loaded")
            return
        meter.budget = budget
        left_out = {message_id for index in budget.dropped_rounds for message_id in sources[index]}
        self.conversation.mark_left_out(left_out)

    # ---------------------------------------------------------------- model loading

    def on_model_load_progressed(self, message: ModelLoadProgressed) -> None:
        self.query_one(StatusBar).show_progress(message.event)
        if message.event.stage == "ready":
            self.load_state = "ready"
        if message.event.stage == "ready" or self.query_one(BudgetMeter).budget is None:
            self.refresh_budget()  # the tokenizer arrives before the weights: count as soon as it can

    def on_model_load_failed(self, message: ModelLoadFailed) -> None:
        from chatglm_tui.settings import config_path
        from chatglm_tui.tui.screens.load_error import LoadErrorScreen

        self.load_state, self.load_error = "failed", message.event.message
        status = self.query_one(StatusBar)
        status.state, status.detail = "failed", "model not loaded (F1 for help)"
        self.refresh_budget()
        if self.pending is not None:  # a message sent while loading will never be answered: say so
            self.post_message(ReplyFailed(GenerationFailed(self.pending.request.id,
                                                           f"the model is not loaded: {message.event.message}")))

        def quit_if_asked(quit_app: bool | None) -> None:
            if quit_app:
                self.app.exit(return_code=1, message=f"chatglm: {inert_line(self.load_error or '')}")

        self.app.push_screen(LoadErrorScreen(message.event.message, self.model_label[0], str(config_path())),
                             quit_if_asked)

    # ---------------------------------------------------------------- sending and streaming

    @on(PromptInput.Submitted)
    async def send(self, event: PromptInput.Submitted) -> None:
        if not self.can_generate():
            return
        self.refresh_budget()  # count what is in the prompt now, not what was there at the last pause
        budget = self.query_one(BudgetMeter).budget
        if budget is not None and not budget.fits:
            self.notify("This message does not fit in the context window: shorten it, or lower the reply limit "
                        "(F3).", severity="error")
            return
        text, edit_of = event.text.strip("\n"), self.editing
        try:
            message, pending = self.session.send(text, edit_of=edit_of)
        except StoreError as exc:  # the prompt keeps the text
            self.store_problem(exc)
            return
        self.prompt.remember(text)
        self.prompt.clear()
        self.end_edit()
        if edit_of is not None:
            await self.show_branch()
        else:
            await self.conversation.add(MessageView(message))
            self.show_title()  # the first message names a new conversation
        await self.start_reply(pending)
        self.refresh_sidebar()

    def can_generate(self) -> bool:
        """Whether a new reply may start now; says why not."""
        if self.pending is not None:
            self.notify("A reply is being written: wait for it, or press Esc to stop it.", severity="warning")
            return False
        if self.load_state == "failed":
            self.notify(f"The model is not loaded: {self.load_error}", severity="error")
            return False
        return True

    async def start_reply(self, pending: PendingReply) -> None:
        self.pending, self.streamed, self.reply_started = pending, "", False
        self.reply_view = await self.conversation.add(MessageView(None))
        self.reply_view.note = "waiting for the model to load…" if self.load_state == "loading" else ""
        self.reply_view.refresh_header()
        self.refresh_bindings()
        self.engine.submit(pending.request, lambda engine_event: post_engine_event(self, engine_event))

    def is_pending(self, request_id: str) -> bool:
        return self.pending is not None and self.pending.request.id == request_id

    def on_reply_started(self, message: ReplyStarted) -> None:
        if self.is_pending(message.event.request_id):
            self.reply_started = True
        pending = self.pending
        if (pending is None or not self.is_pending(message.event.request_id) or self.reply_view is None
                or pending.conversation_id != self.session.id):
            return  # the user has moved to another chat meanwhile
        _, sources = self.session.history(before=pending.parent_id)
        dropped = {message_id for index in message.event.dropped_rounds for message_id in sources[index]}
        self.conversation.mark_left_out(dropped)
        self.reply_view.note = "reading the prompt…"
        self.reply_view.refresh_header()

    def on_prompt_read(self, message: PromptRead) -> None:
        if self.is_pending(message.event.request_id) and self.reply_view is not None:
            event = message.event
            self.reply_view.note = f"reading the prompt {event.done}/{event.total}"
            self.reply_view.refresh_header()

    async def on_reply_delta(self, message: ReplyDelta) -> None:
        if not self.is_pending(message.event.request_id):
            return
        self.streamed += message.event.text
        view = self.reply_view
        if view is None:  # its chat is not on screen
            return
        if view.note:
            view.note = ""
            view.refresh_header()
        await view.append(message.event.text)

    async def on_reply_finished(self, message: ReplyFinished) -> None:
        if not self.is_pending(message.event.request_id) or self.pending is None:
            return
        pending, view = self.pending, self.reply_view
        self.pending, self.reply_view = None, None
        try:
            saved = self.session.save_reply(pending, message.event)
        except StoreError as exc:  # its conversation was deleted elsewhere meanwhile
            self.store_problem(exc)
            if view is not None and view.is_attached:
                await view.finish(None, message.event.text)
            self.refresh_bindings()
            return
        stats = message.event.stats
        rate = f" · {stats.tokens_per_s:.1f} tok/s" if stats.tokens_per_s else ""
        self.query_one(StatusBar).speed = f"last reply {stats.new_tokens} tokens{rate}"
        if view is not None and view.is_attached:
            view.versions = Versions(*self.session.versions(saved))
            await view.finish(saved)
        elif pending.conversation_id == self.session.id:
            await self.show_branch()  # back in its chat before the reply ended: show it where it belongs
        if message.event.reason == "stopped":
            self.notify("Stopped. The partial reply is saved and marked stopped.")
        self.refresh_bindings()
        self.refresh_budget()
        self.refresh_sidebar()

    async def on_reply_failed(self, message: ReplyFailed) -> None:
        if not self.is_pending(message.event.request_id):
            return
        pending, view = self.pending, self.reply_view
        self.pending, self.reply_view = None, None
        self.notify(message.event.message, title="The reply failed", severity="error", timeout=10)
        self.refresh_bindings()
        if pending is not None and self.session.reply_failed(pending):
            await self.show_branch()  # a failed regenerate: the reply it was to replace is shown again
        elif view is not None and view.is_attached:
            await view.finish(None, f"*The reply failed: {message.event.message}*\n\nPress ctrl+r to try again.")

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

    # ---------------------------------------------------------------- stop, regenerate, edit, versions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.pending is not None or self.editing is not None
        if action == "regenerate":
            return self.pending is None
        return True

    async def action_stop(self) -> None:
        """Esc: stop the reply (it is saved, marked stopped), or cancel an edit."""
        if self.pending is None:
            self.end_edit()
            return
        self.engine.cancel(self.pending.request.id)
        if not self.reply_started:  # still queued behind the model load: take it back at once
            view, self.pending, self.reply_view = self.reply_view, None, None
            if view is not None:
                await view.remove()
            self.refresh_bindings()
            self.notify("Not sent to the model; your question is saved. Press ctrl+r to ask it once the model "
                        "is ready.")
