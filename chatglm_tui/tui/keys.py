"""Every key binding by id: the app's own, and the table the help screen is built from.

The default keys, and which ids may share a key, are data in `config.keymap` (no Textual there, so `chatglm config
show` checks a keymap too). Users remap keys in the config's `[keymap]` table by binding id
(`"chat.copy_code" = "f6"`); Textual applies it through `App.set_keymap`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from textual.binding import Binding

from chatglm_tui.config.keymap import default_keys
from chatglm_tui.tui.screens.chat import ChatScreen
from chatglm_tui.tui.screens.conversation_settings import ConversationSettingsScreen
from chatglm_tui.tui.screens.help import HelpScreen
from chatglm_tui.tui.screens.modals import ConfirmScreen
from chatglm_tui.tui.widgets.message_view import MessageView
from chatglm_tui.tui.widgets.prompt_input import PromptInput
from chatglm_tui.tui.widgets.sidebar import Sidebar

APP_BINDINGS: list[Binding | tuple[str, str] | tuple[str, str, str]] = [
    Binding(default_keys("app.help"), "help", "Help", id="app.help", tooltip="Keys and what the context meter means"),
    Binding(default_keys("app.quit"), "quit", "Quit", id="app.quit", priority=True,
            tooltip="Quit (a reply being written is saved)"),
]


def _dialog_bindings() -> list[Binding]:
    """Each dialog binding once: the dialogs share their ids (`modal.cancel` is Esc in every one)."""
    found: dict[str, Binding] = {}
    for screen in (ConfirmScreen, ConversationSettingsScreen, HelpScreen):
        for binding in screen.BINDINGS:
            if isinstance(binding, Binding) and binding.id and binding.id not in found:
                found[binding.id] = binding
    return list(found.values())


# Where each group applies, for the help table.
GROUPS: tuple[tuple[str, list[Binding]], ...] = (
    ("anywhere", [b for b in APP_BINDINGS if isinstance(b, Binding)]),
    ("chat", [b for b in ChatScreen.BINDINGS if isinstance(b, Binding)]),
    ("prompt", [b for b in PromptInput.BINDINGS if isinstance(b, Binding)]),
    ("a focused message", [b for b in MessageView.BINDINGS if isinstance(b, Binding)]),
    ("the conversation filter", [b for b in Sidebar.BINDINGS if isinstance(b, Binding)]),
    ("dialogs", _dialog_bindings()),
)


def binding_rows(keymap: Mapping[str, str], key_display: Callable[[Binding], str]) -> list[tuple[str, str, str]]:
    """(keys as shown, what it does and where, binding id) for every binding, with the keymap applied."""
    rows = [("ctrl+p", "Command palette: every action, open a conversation, change theme", "—")]
    for where, bindings in GROUPS:
        for binding in bindings:
            keys = keymap.get(binding.id or "", binding.key)
            shown = " / ".join(key_display(Binding(key.strip(), binding.action)) for key in keys.split(","))
            rows.append((shown, f"{binding.description or binding.action} ({where})", binding.id or ""))
    return rows
