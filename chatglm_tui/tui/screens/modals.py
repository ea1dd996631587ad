"""Small modal dialogs: confirm, ask for a line of text, pick from a list."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, OptionList, Static
from textual.widgets.option_list import Option

from chatglm_tui.store.titles import clean_title
from chatglm_tui.tui.inert_display import InertInput, inert_content, inert_label


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; Enter on the focused button, Esc means no."""

    BINDINGS = [Binding("escape", "dismiss(False)", "Cancel", id="modal.cancel",
                        tooltip="Close without changing anything")]

    def __init__(self, title: str, message: str, confirm: str = "Delete", *, danger: bool = True) -> None:
        super().__init__(classes="modal")
        self.title_text, self.message, self.confirm, self.danger = title, message, confirm, danger

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(inert_label(self.title_text), classes="dialog-title")
            yield Static(inert_content(self.message), classes="dialog-body")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Cancel", id="cancel")
                yield Button(self.confirm, id="confirm", variant="error" if self.danger else "primary")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()  # the safe choice has the focus

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm")


class TextPromptScreen(ModalScreen[str | None]):
    """One line of text (e.g. a new title); Enter accepts, Esc cancels; blank text is refused."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="modal.cancel",
                        tooltip="Close without changing anything")]

    def __init__(self, title: str, value: str = "", placeholder: str = "",
                 empty_message: str = "The title cannot be empty.") -> None:
        super().__init__(classes="modal")
        self.title_text, self.value, self.placeholder = title, value, placeholder
        self.empty_message = empty_message

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(inert_label(self.title_text), classes="dialog-title")
            yield InertInput(clean_title(self.value), placeholder=self.placeholder, select_on_focus=True)
            yield Static("Enter to save · Esc to cancel", classes="dialog-hint")

    def on_input_submitted(self, event: InertInput.Submitted) -> None:
        text = clean_title(event.value)
        if not text:
            self.notify(self.empty_message, severity="warning")
            return
        self.dismiss(text)


class PickScreen(ModalScreen[int | None]):
    """Choose one of several items (e.g. which code block to copy); returns its index, or None."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="modal.cancel",
                        tooltip="Close without changing anything")]

    def __init__(self, title: str, items: Sequence[str]) -> None:
        super().__init__(classes="modal")
        self.title_text, self.items = title, list(items)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(inert_label(self.title_text), classes="dialog-title")
            yield OptionList(*[Option(inert_content(item), id=str(index)) for index, item in enumerate(self.items)])
            yield Static("Enter to choose · Esc to cancel", classes="dialog-hint")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option_index)
