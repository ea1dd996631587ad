"""The chat screen: sidebar, transcript, prompt, context meter and status bar.

The screen draws and routes; the parts it is composed of act, and reach it only as a `ChatHost`: `ReplyFlow`
sends questions and follows and saves the reply, `QuestionEdit` holds an edit of a question, and
`ConversationActions` opens, renames, exports, deletes and copies. Engine events arrive as `tui.messages`
posted from the worker thread and are handed to the reply flow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Button, Footer, Static

from chatglm_tui.engine.protocol import Engine
from chatglm_tui.session.chat_session import ChatSession, PendingReply
from chatglm_tui.store import StoreError
from chatglm_tui.terminal.inert import inert_line
from chatglm_tui.tui.budget_count import BudgetCount
from chatglm_tui.tui.conversation_actions import ConversationActions
from chatglm_tui.tui.inert_display import inert_label
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
from chatglm_tui.tui.question_edit import QuestionEdit
from chatglm_tui.tui.reply_flow import ReplyFlow
from chatglm_tui.tui.screens.chat_bindings import CHAT_BINDINGS
from chatglm_tui.tui.screens.modals import ConfirmScreen
from chatglm_tui.tui.widgets.budget_meter import BudgetMeter
from chatglm_tui.tui.widgets.conversation import Conversation, Entry
from chatglm_tui.tui.widgets.message_view import MessageView, Versions
from chatglm_tui.tui.widgets.prompt_input import PromptInput
from chatglm_tui.tui.widgets.sidebar import Sidebar
from chatglm_tui.tui.widgets.status_bar import StatusBar

EDIT_BANNER = ("Editing a question: Enter sends it as a new version (the old one stays: ←/→ on it) · "
               "Esc cancels")


class ChatScreen(Screen[None]):
    """The main screen."""

    BINDINGS = CHAT_BINDINGS

    STORE_POLL_SECONDS = 3.0  # the store is shared with `chatglm ask` and other windows
    # The prompt has the focus from the first frame: keys typed while a long chat opens go there, Enter included.
    AUTO_FOCUS = "#prompt"

    def __init__(self, session: ChatSession, engine: Engine, model_label: tuple[str, str, str],
                 conversation_id: str | None = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__(id="chat")
        self.initial_conversation, self.clock = conversation_id, clock
        self.session, self.engine = session, engine
        self.model_label = model_label
        self.load_state, self.load_error = "loading", ""  # the model's, as the status bar shows it
        self.question_edit = QuestionEdit(self)
        self.reply_flow = ReplyFlow(self, engine, self.question_edit, partial(post_engine_event, self))
        self.conversation_actions = ConversationActions(self, self.reply_flow)
        self.budget_count = BudgetCount(self, engine, self.reply_flow, self.question_edit,
                                        lambda: self.query_one(BudgetMeter))

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield Sidebar(id="sidebar", clock=self.clock)
            with Vertical(id="chat-pane"):
                yield Static(id="chat-title")
                yield Conversation(id="conversation")
                yield Static("", id="edit-banner")
                yield PromptInput(id="prompt")
                yield BudgetMeter(self.refresh_budget, id="meter")
        yield StatusBar(*self.model_label, id="status")
        yield Footer()

    async def on_mount(self) -> None:
        if self.initial_conversation is not None:
            self.session.open(self.initial_conversation)
        await self.show_branch()
        self.refresh_sidebar()
        self.set_interval(self.STORE_POLL_SECONDS, self.watch_store)

    # ---------------------------------------------------------------- the parts' state (the demo and tests read it)

    @property
    def pending(self) -> PendingReply | None:
        return self.reply_flow.pending

    @property
    def reply_view(self) -> MessageView | None:
        return self.reply_flow.reply_view

    @property
    def streamed(self) -> str:
        return self.reply_flow.streamed

    @property
    def editing(self) -> int | None:
        return self.question_edit.editing

    # ---------------------------------------------------------------- widgets

    @property
    def conversation(self) -> Conversation:
        return self.query_one(Conversation)

    @property
    def prompt(self) -> PromptInput:
        return self.query_one(PromptInput)

    async def show_branch(self, focus: int | None = None) -> None:
        """Render the branch on screen from the session (after opening, switching version or editing)."""
        versions = self.session.versions
        await self.conversation.show([Entry(message, Versions(*versions(message))) for message in self.session.branch])
        self.show_title()
        self.refresh_budget()
        for view in self.conversation.views:
            if focus is not None and view.message is not None and view.message.id == focus:
                view.focus()
                view.scroll_visible(animate=False)

    def show_title(self) -> None:
        """The conversation's title above the transcript."""
        conversation = self.session.conversation
        self.query_one("#chat-title", Static).update(inert_label(conversation.title) if conversation else "New chat")

    def show_editing(self, message_id: int | None) -> None:
        """The edit banner, and the question being edited marked, while one is (None: no edit)."""
        banner = self.query_one("#edit-banner", Static)
        banner.update(EDIT_BANNER if message_id is not None else "")
        banner.display = message_id is not None
        for view in self.conversation.views:
            view.set_class(view.message is not None and view.message.id == message_id, "-editing")

    def show_reply_speed(self, text: str) -> None:
        self.query_one(StatusBar).speed = text

    def stop_for_switch(self, discard: bool = False) -> None:
        """Leaving the chat on screen: stop its reply (saved as stopped, unless `discard`) and end an edit."""
        self.reply_flow.leave_chat(discard)
        self.question_edit.end()

    def action_scroll_transcript(self, pages: int) -> None:
        self.conversation.scroll_pages(pages)  # from anywhere, the prompt included (reading while typing)

    @on(Button.Pressed, "#show-earlier")
    async def show_earlier(self) -> None:
        await self.conversation.show_earlier()

    # ---------------------------------------------------------------- the sidebar

    def refresh_sidebar(self, only_if_changed: bool = False) -> None:
        """List the saved conversations (filtered); with `only_if_changed`, redraw only if the store changed."""
        sidebar = self.query_one(Sidebar)
        conversations = self.conversation_actions.matching(sidebar.filter_text.strip())
        if only_if_changed and conversations == sidebar.conversations:
            return  # redrawing would reset the list's scroll and highlight for nothing
        sidebar.show(conversations, self.session.id)

    def watch_store(self) -> None:
        """Every few seconds: show conversations that `chatglm ask` or another window added, renamed or deleted."""
        try:
            self.refresh_sidebar(only_if_changed=True)
        except StoreError:
            pass  # a busy or briefly unreadable database: the next tick tries again

    def store_problem(self, exc: StoreError) -> None:
        """A store operation failed (deleted elsewhere, disk full…): say so and refresh the list; the app goes on."""
        self.notify(f"{exc}. The list of conversations is refreshed.", title="Not done", severity="error",
                    timeout=10)
        self.refresh_sidebar()

    @on(Sidebar.FilterChanged)
    def filter_sidebar(self) -> None:
        self.refresh_sidebar()

    @on(Sidebar.Selected)
    async def open_selected(self, event: Sidebar.Selected) -> None:
        await self.open_conversation(event.conversation_id)

    async def open_conversation(self, conversation_id: str) -> None:
        """Show a saved conversation (a reply being written is stopped first and saved as stopped)."""
        await self.conversation_actions.open(conversation_id)

    def action_find_chat(self) -> None:
        self.query_one(Sidebar).find()

    def action_toggle_sidebar(self) -> None:
        self.query_one(Sidebar).toggle()

    # ---------------------------------------------------------------- focus: Tab, and leaving a message

    def focus_next(self, selector: object = "*") -> Widget | None:
        return self.cycle_focus(1)

    def focus_previous(self, selector: object = "*") -> Widget | None:
        return self.cycle_focus(-1)

    def cycle_focus(self, step: int) -> Widget:
        """Tab / shift+tab go round the filter, the list and the prompt; shift+tab also stops at the last message
        (↑/↓ then walk the messages), but Tab never walks through every message."""
        views = self.conversation.views
        ring: list[Widget | None] = [*self.query_one(Sidebar).focus_stops, None, self.prompt]  # None: the messages
        focused = self.focused if self.focused in ring else None  # a message, "Show earlier" or nothing
        index = (ring.index(focused) + step) % len(ring)
        if ring[index] is None and (step > 0 or not views):
            index = (index + step) % len(ring)
        target = ring[index] or views[-1]
        target.focus()
        return target

    @on(MessageView.Left)
    def back_to_prompt(self, event: MessageView.Left) -> None:
        self.prompt.focus()
        if event.typed:
            self.prompt.insert(event.typed)

    # ---------------------------------------------------------------- the context meter

    @on(PromptInput.Changed)
    def draft_changed(self) -> None:
        self.query_one(BudgetMeter).recount_soon()

    def refresh_budget(self) -> None:
        self.budget_count.refresh()

    # ---------------------------------------------------------------- model loading

    def on_model_load_progressed(self, message: ModelLoadProgressed) -> None:
        self.query_one(StatusBar).show_progress(message.event)
        if message.event.stage == "ready":
            self.load_state = "ready"
        if message.event.stage == "ready" or self.query_one(BudgetMeter).budget is None:
            self.refresh_budget()  # the tokenizer arrives before the weights: count as soon as it can

    def on_model_load_failed(self, message: ModelLoadFailed) -> None:
        from chatglm_tui.config.settings import config_path
        from chatglm_tui.tui.screens.load_error import LoadErrorScreen

        self.load_state, self.load_error = "failed", message.event.message
        status = self.query_one(StatusBar)
        status.state, status.detail = "failed", "model not loaded (F1 for help)"
        self.refresh_budget()
        self.reply_flow.model_failed(message.event.message)

        def quit_if_asked(quit_app: bool | None) -> None:
            if quit_app:
                self.app.exit(return_code=1, message=f"chatglm: {inert_line(self.load_error or '')}")

        self.app.push_screen(LoadErrorScreen(message.event.message, self.model_label[0], str(config_path())),
                             quit_if_asked)

    # ---------------------------------------------------------------- the reply, handed to its flow

    @on(PromptInput.Submitted)
    async def send(self, event: PromptInput.Submitted) -> None:
        if not self.reply_flow.can_generate():
            return
        text = event.text.strip("\n")
        if self.budget_count.prompt_fits(offer_summary=self.editing is None):
            await self.reply_flow.send(text)
        elif self.editing is None:  # too long on its own: a document to summarize in parts, if the user wants
            self.app.push_screen(ConfirmScreen("Too long for the window", self.budget_count.summary_offer(),
                                               "Summarize", danger=False),
                                 partial(self.summarize_draft, text))

    async def summarize_draft(self, text: str, confirmed: bool | None) -> None:
        if confirmed and self.reply_flow.can_generate():
            await self.reply_flow.send(text, as_document=True)

    def on_reply_started(self, message: ReplyStarted) -> None:
        self.reply_flow.handle_started(message.event)

    def on_prompt_read(self, message: PromptRead) -> None:
        self.reply_flow.handle_prompt_read(message.event)

    async def on_reply_delta(self, message: ReplyDelta) -> None:
        await self.reply_flow.handle_delta(message.event)
        self.query_one(BudgetMeter).recount_soon(throttle=True)  # the reply so far counts: the meter follows it

    async def on_reply_finished(self, message: ReplyFinished) -> None:
        await self.reply_flow.handle_finished(message.event)

    async def on_reply_failed(self, message: ReplyFailed) -> None:
        await self.reply_flow.handle_failed(message.event)

    def save_partial(self) -> None:
        """On quit mid-reply: save what was written, marked stopped (the engine is closed right after)."""
        self.reply_flow.save_partial()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.pending is not None or self.editing is not None
        if action in ("regenerate", "continue_reply"):
            return self.pending is None
        return True

    async def action_stop(self) -> None:
        """Esc: stop the reply (it is saved, marked stopped), or cancel an edit."""
        if self.pending is None:
            self.question_edit.end()
        else:
            await self.reply_flow.stop()

    async def action_regenerate(self) -> None:
        await self.reply_flow.regenerate()

    def action_edit_last(self) -> None:
        self.question_edit.edit_last()

    async def action_continue_reply(self) -> None:
        await self.reply_flow.continue_reply()

    def action_attach_file(self) -> None:
        self.conversation_actions.attach_file()

    # ---------------------------------------------------------------- a focused message's requests

    @on(MessageView.CopyRequested)
    def copy_message(self, event: MessageView.CopyRequested) -> None:
        self.conversation_actions.copy_text("the message", event.view.text)

    @on(MessageView.CodeCopyRequested)
    def copy_message_code(self, event: MessageView.CodeCopyRequested) -> None:
        self.conversation_actions.copy_code_from(event.view.text)

    @on(MessageView.EditRequested)
    def edit_message(self, event: MessageView.EditRequested) -> None:
        if event.view.message is None:
            self.notify("Wait for the reply to finish first.", severity="warning")
        else:
            self.question_edit.edit(event.view.message)

    @on(MessageView.VersionRequested)
    async def switch_version(self, event: MessageView.VersionRequested) -> None:
        message = event.view.message
        if message is None or self.pending is not None:
            self.notify("Wait for the reply to finish (or stop it) before switching versions.", severity="warning")
            return
        shown = self.session.switch_version(message.id, event.step)
        if shown is None:
            index, count = self.session.versions(message)
            self.notify(f"This is version {index} of {count}.")
            return
        self.question_edit.end_if_left()  # the question being edited may be on the branch just left
        await self.show_branch(focus=shown)

    # ---------------------------------------------------------------- actions on the whole conversation

    async def action_new_chat(self) -> None:
        await self.conversation_actions.new_chat()

    def action_rename(self) -> None:
        self.conversation_actions.rename()

    def action_delete(self) -> None:
        self.conversation_actions.delete()

    def action_export(self) -> None:
        self.conversation_actions.export()

    def action_conversation_settings(self) -> None:
        self.conversation_actions.settings()

    def action_copy_reply(self) -> None:
        self.conversation_actions.copy_reply()

    def action_copy_code(self) -> None:
        self.conversation_actions.copy_code()

    def action_open_editor(self) -> None:
        self.conversation_actions.open_editor()
