"""`QuestionEdit`: editing one of your questions in the prompt, to send it again as a new version of itself."""

from __future__ import annotations

from chatglm_tui.store import Message
from chatglm_tui.tui.chat_host import ChatHost


class QuestionEdit:
    """Which question is being edited (if any), and the draft the prompt held before the edit began."""

    def __init__(self, host: ChatHost) -> None:
        self.host = host
        self.editing: int | None = None  # the id of the question being edited
        self.draft_before_edit = ""  # what was in the prompt when an edit began, given back when it ends

    def edit_last(self) -> None:
        """Edit the last question of the branch on screen."""
        branch = self.host.session.branch
        question = next((message for message in reversed(branch) if message.role == "user"), None)
        if question is None:
            self.host.notify("There is no question to edit yet.", severity="warning")
        else:
            self.edit(question)

    def edit(self, message: Message) -> None:
        """Put a question in the prompt; sending it makes a new version (the old branch stays reachable)."""
        if message.role != "user":
            self.host.notify("Only your questions can be edited; use ctrl+r for a new reply.", severity="warning")
            return
        prompt = self.host.prompt
        if self.editing is None:
            self.draft_before_edit = prompt.text
        self.set_editing(message.id)
        prompt.load_text(message.text)
        prompt.move_cursor(prompt.document.end)
        prompt.focus()

    def end(self) -> None:
        """Leave edit mode (cancelled or sent): the draft typed before it comes back."""
        if self.editing is None:
            return
        self.set_editing(None)
        prompt = self.host.prompt
        prompt.load_text(self.draft_before_edit)
        prompt.move_cursor(prompt.document.end)
        self.draft_before_edit = ""

    def end_if_left(self) -> None:
        """End the edit if its question is no longer on the branch on screen (a version switch left it)."""
        if self.editing is not None and self.editing not in {message.id for message in self.host.session.branch}:
            self.end()

    def set_editing(self, message_id: int | None) -> None:
        self.editing = message_id
        self.host.show_editing(message_id)
        self.host.refresh_bindings()  # Esc now cancels the edit (or no longer does)
        self.host.refresh_budget()  # the meter counts the branch up to the question being edited
