"""Chat-screen actions that make or move between branches: regenerate, edit and resend, switch versions, and
the actions on a focused message (copy it, copy its code, edit it)."""

from __future__ import annotations

from textual import on
from textual.widgets import Static

from chatglm_tui.store import Message
from chatglm_tui.tui.chat_session import PendingReply
from chatglm_tui.tui.screens.chat_actions import ConversationActions
from chatglm_tui.tui.widgets.message_view import MessageView

EDIT_BANNER = ("Editing a question: Enter sends it as a new version (the old one stays: ←/→ on it) · "
               "Esc cancels")


class BranchActions(ConversationActions):
    """Regenerate, edit and versions; ChatScreen builds on this."""

    draft_before_edit = ""  # what was in the prompt when an edit began, given back when it ends

    # Implemented by ChatScreen.
    def can_generate(self) -> bool:
        raise NotImplementedError

    async def start_reply(self, pending: PendingReply) -> None:
        raise NotImplementedError

    async def action_regenerate(self) -> None:
        if not self.can_generate():
            return
        pending = self.session.regenerate()
        if pending is None:
            self.notify("There is no question to answer again yet.", severity="warning")
            return
        await self.show_branch()
        await self.start_reply(pending)

    def action_edit_last(self) -> None:
        question = next((message for message in reversed(self.session.branch) if message.role == "user"), None)
        if question is None:
            self.notify("There is no question to edit yet.", severity="warning")
        else:
            self.edit(question)

    def edit(self, message: Message) -> None:
        """Put a question in the prompt; sending it makes a new version (the old branch stays reachable)."""
        if message.role != "user":
            self.notify("Only your questions can be edited; use ctrl+r for a new reply.", severity="warning")
            return
        if self.editing is None:
            self.draft_before_edit = self.prompt.text
        self.set_editing(message.id)
        self.prompt.load_text(message.text)
        self.prompt.move_cursor(self.prompt.document.end)
        self.prompt.focus()

    def end_edit(self) -> None:
        """Leave edit mode (cancelled or sent): the draft typed before it comes back."""
        if self.editing is None:
            return
        self.set_editing(None)
        self.prompt.load_text(self.draft_before_edit)
        self.prompt.move_cursor(self.prompt.document.end)
        self.draft_before_edit = ""

    def set_editing(self, message_id: int | None) -> None:
        self.editing = message_id
        banner = self.query_one("#edit-banner", Static)
        banner.update(EDIT_BANNER if message_id is not None else "")
        banner.display = message_id is not None
        for view in self.conversation.views:
            view.set_class(view.message is not None and view.message.id == message_id, "-editing")
        self.refresh_bindings()
        self.refresh_budget()

    @on(MessageView.CopyRequested)
    def copy_message(self, event: MessageView.CopyRequested) -> None:
        self.copy_text("the message", event.view.text)

    @on(MessageView.CodeCopyRequested)
    def copy_message_code(self, event: MessageView.CodeCopyRequested) -> None:
        self.copy_code_from(event.view.text)

    @on(MessageView.EditRequested)
    def edit_message(self, event: MessageView.EditRequested) -> None:
        if event.view.message is None:
            self.notify("Wait for the reply to finish first.", severity="warning")
        else:
            self.edit(event.view.message)

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
        if self.editing is not None and self.editing not in {m.id for m in self.session.branch}:
            self.end_edit()  # the question being edited is on the branch just left
        await self.show_branch(focus=shown)
