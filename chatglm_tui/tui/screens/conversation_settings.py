"""Per-conversation instruction and sampling settings, saved with the conversation."""

from __future__ import annotations

import dataclasses

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static, TextArea

from chatglm_tui.config.keymap import default_keys
from chatglm_tui.config.settings import ConfigError, Settings, apply_overrides
from chatglm_tui.engine.protocol import GenerationParams
from chatglm_tui.terminal.inert import inert
from chatglm_tui.tui.inert_display import inert_label

# (field, label, help) in the order shown.
FIELDS = (
    ("temperature", "Temperature", "0 = always the likeliest token; higher = more varied"),
    ("top_p", "Top p", "nucleus sampling: the probability mass kept, (0, 1]"),
    ("top_k", "Top k", "sample among this many likeliest tokens; 0 = no limit"),
    ("max_new_tokens", "Reply limit", "longest reply, in tokens; also reserved in the meter"),
    ("repetition_penalty", "Repetition penalty", "1.0 = off; above 1 discourages repeating"),
    ("seed", "Seed", "empty = random; a number makes replies repeatable"),
)
_INTS = {"top_k", "max_new_tokens", "seed"}

Choice = tuple[GenerationParams, str | None]


def parse_fields(values: dict[str, str], base: Settings) -> GenerationParams:
    """Typed, range-checked parameters from the form's text; a ConfigError names the first bad field."""
    changes: dict[str, object] = {}
    for name, label, _ in FIELDS:
        text = values[name].strip()
        if name == "seed" and not text:
            continue
        try:
            changes[name] = int(text) if name in _INTS else float(text)
        except ValueError:
            kind = "a whole number" if name in _INTS else "a number"
            raise ConfigError(f"{label}: {text!r} is not {kind}") from None
    return apply_overrides(dataclasses.replace(base, seed=None), **changes).generation


class ConversationSettingsScreen(ModalScreen[Choice | None]):
    """Instruction and sampling for this conversation; ctrl+s saves, Esc cancels."""

    BINDINGS = [
        Binding(default_keys("modal.cancel"), "dismiss(None)", "Cancel", id="modal.cancel",
                tooltip="Close without saving"),
        Binding(default_keys("modal.save"), "save", "Save", id="modal.save", priority=True,
                tooltip="Save these settings"),
    ]
    # The first field, so typing goes in at once (by default the scrolling dialog itself would take the focus).
    AUTO_FOCUS = "#instruction"

    def __init__(self, params: GenerationParams, instruction: str | None, settings: Settings, title: str) -> None:
        super().__init__(classes="modal")
        self.params, self.instruction, self.settings, self.title_text = params, instruction, settings, title

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog wide"):
            yield Label(inert_label(f"Settings · {self.title_text}"), classes="dialog-title")
            yield Static("Instruction (ChatGLM-6B has no system role: it is put before the first question, "
                         "and its tokens count in the meter)", classes="field-help")
            # Shown inert; saved back unchanged unless it was edited (see action_save).
            yield TextArea(inert(self.instruction or ""), id="instruction", soft_wrap=True, tab_behavior="focus")
            with Grid(id="sampling-grid"):
                for name, label, help_text in FIELDS:
                    value = getattr(self.params, name)
                    yield Label(label)
                    yield Input("" if value is None else str(value), id=f"field-{name}", compact=True)
                    yield Static(help_text, classes="field-help")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Save", id="save", variant="primary")
            yield Static("ctrl+s save · Esc cancel · Tab next field", classes="dialog-hint")

    def on_mount(self) -> None:
        instruction = self.query_one("#instruction", TextArea)
        instruction.move_cursor(instruction.document.end)  # typing adds to the instruction, not before it

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)

    def on_input_submitted(self) -> None:
        self.action_save()

    def action_save(self) -> None:
        values = {name: self.query_one(f"#field-{name}", Input).value for name, _, _ in FIELDS}
        try:
            params = parse_fields(values, self.settings)
        except ConfigError as exc:
            self.notify(str(exc), title="Not saved", severity="error")
            return
        shown = self.query_one("#instruction", TextArea).text
        unchanged = shown == inert(self.instruction or "")
        instruction = self.instruction if unchanged else shown.strip() or None
        self.dismiss((params, instruction))
