"""Shown when the model cannot be loaded: what went wrong and what to do; saved chats stay readable."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from chatglm_tui.tui.inert_display import inert_content

ADVICE = """\
What you can do:
  • Download the model:      chatglm model pull {model}
  • Use a local checkpoint:  chatglm --model /path/to/chatglm-6b-int4
  • Set it for good:         model = "..." in {config}
  • Check the setup:         chatglm config show

You can still read, search, rename and export your saved conversations."""


class LoadErrorScreen(ModalScreen[bool]):
    """The load failure and the fixes; returns True to quit, False to keep browsing without the model."""

    BINDINGS = [Binding("escape", "dismiss(False)", "Browse chats", id="modal.cancel",
                        tooltip="Close without changing anything")]

    def __init__(self, message: str, model: str, config: str) -> None:
        super().__init__(classes="modal")
        self.message, self.model, self.config = message, model, config

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide error-dialog"):
            yield Label("The model could not be loaded", classes="dialog-title")
            yield Static(inert_content(self.message), classes="dialog-body error-text")
            yield Static(inert_content(ADVICE.format(model=self.model, config=self.config)), classes="dialog-body")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Browse saved chats", id="browse", variant="primary")
                yield Button("Quit", id="quit", variant="error")

    def on_mount(self) -> None:
        self.query_one("#browse", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "quit")
