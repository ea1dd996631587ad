"""The help screen: every key (as remapped by the user's keymap) and what the context meter means."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

METER_HELP = """\
## The context meter

ChatGLM-6B reads at most **{window:,} tokens** at once: the prompt *and* the reply. The meter above the prompt
counts them with the model's own tokenizer, exactly as the model will see them:

| part | what it is |
|---|---|
| **history** | earlier rounds of this chat, with their `[Round N]` / `问：` / `答：` markers |
| **instruction** | this chat's instruction (ChatGLM-6B has no system role: it is put before the first question) |
| **draft** | what you are typing, updated as you type, with the 2 tokens (`[gMASK] <sop>`) that end every prompt |
| **reply** | room kept for the answer: the reply limit in settings (F3) |

It turns amber past 75% and red past 90%. When the chat no longer fits, the **oldest whole rounds are left
out** of what the model reads: the meter says how many before you send, and those messages are marked
*left out of the model's context* in the chat. Nothing is deleted: they stay saved, searchable and exported.
Lower the reply limit or start a new chat (ctrl+n) to keep more history. Against a remote server whose tokenizer
is not known here (`--endpoint`), the counts are estimates, marked ≈.

A message too long for the window on its own (a pasted document, or a file attached with ctrl+f) is offered a
**summary in parts**, as `chatglm ask` does: the parts are read in turn ("part 2 of 5 · about 40 s left"; Esc
stops), the whole text is saved, and follow-up questions see its summary. A reply that the reply limit cut off
is marked *cut off*: **F9 continues it** (a new version that goes on from where it stopped).

## Messages

Focus a message with **shift+tab** from the prompt, move with **↑/↓**; then **y** copies it, **c** copies a
code block, **e** edits a question (sent as a new version), and **←/→** flip between versions of a message
(regenerated replies and edited questions are kept as versions, shown as ‹ 2/3 ›).

## Copying

Copies go to the clipboard by OSC 52 (and a clipboard program when one is installed) and are also saved to a
file, shown in the notification, for terminals that ignore OSC 52 (macOS Terminal.app; tmux without
`set-clipboard on`).

Keys can be remapped in the config file's `[keymap]` table by binding id, e.g. `"chat.newline" = "ctrl+o"`.
"""


def keys_table(rows: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table of (keys, action, binding id)."""
    lines = ["## Keys", "", "| keys | action | binding id |", "|---|---|---|"]
    lines += [f"| `{keys}` | {action} | `{binding_id}` |" for keys, action, binding_id in rows]
    return "\n".join(lines)


class HelpScreen(ModalScreen[None]):
    """Keys and concepts, as Markdown; Esc or F1 closes it."""

    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close", id="modal.close", tooltip="Close the help")]

    def __init__(self, rows: Sequence[tuple[str, str, str]], window: int) -> None:
        super().__init__(classes="modal")
        self.text = "# chatglm help\n\n" + keys_table(rows) + "\n\n" + METER_HELP.format(window=window)

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog wide tall"):
            yield Markdown(self.text)
