"""The chat screen's key bindings, by id (their default keys are data in `config.keymap`)."""

from __future__ import annotations

from textual.binding import Binding

from chatglm_tui.config.keymap import default_keys

CHAT_BINDINGS: list[Binding | tuple[str, str] | tuple[str, str, str]] = [
    Binding(default_keys("chat.stop"), "stop", "Stop", id="chat.stop",
            tooltip="Stop the reply (what was written is kept)"),
    Binding(default_keys("chat.regenerate"), "regenerate", "Regenerate", id="chat.regenerate", priority=True,
            tooltip="Answer the last question again (the old reply stays as a version)"),
    Binding(default_keys("chat.edit"), "edit_last", "Edit last", id="chat.edit", show=False,
            tooltip="Edit the last question and send it as a new version"),
    Binding(default_keys("chat.copy_reply"), "copy_reply", "Copy reply", id="chat.copy_reply", priority=True,
            tooltip="Copy the last reply"),
    Binding(default_keys("chat.copy_code"), "copy_code", "Copy code", id="chat.copy_code", priority=True,
            show=False, tooltip="Copy a code block of the last reply"),
    Binding(default_keys("chat.editor"), "open_editor", "Editor", id="chat.editor", priority=True, show=False,
            tooltip="Write the prompt in $EDITOR"),
    Binding(default_keys("chat.new"), "new_chat", "New chat", id="chat.new", priority=True,
            tooltip="Start a new chat"),
    Binding(default_keys("chat.find"), "find_chat", "Find chat", id="chat.find", priority=True, show=False,
            tooltip="Filter the saved conversations"),
    Binding(default_keys("chat.sidebar"), "toggle_sidebar", "Sidebar", id="chat.sidebar", priority=True,
            show=False, tooltip="Show or hide the conversations"),
    Binding(default_keys("chat.rename"), "rename", "Rename", id="chat.rename", show=False,
            tooltip="Rename this conversation"),
    Binding(default_keys("chat.settings"), "conversation_settings", "Settings", id="chat.settings",
            tooltip="This chat's instruction and sampling settings"),
    Binding(default_keys("chat.export"), "export", "Export", id="chat.export", show=False,
            tooltip="Export this conversation to Markdown"),
    Binding(default_keys("chat.continue"), "continue_reply", "Continue", id="chat.continue", show=False,
            tooltip="Continue the last reply (cut off at the reply limit, or stopped) as a new version"),
    Binding(default_keys("chat.attach"), "attach_file", "Attach", id="chat.attach", show=False,
            tooltip="Put a text file in the prompt (one too long for the window is summarized in parts)"),
    Binding(default_keys("chat.delete"), "delete", "Delete", id="chat.delete", show=False,
            tooltip="Delete this conversation"),
    Binding(default_keys("chat.page_up"), "scroll_transcript(-1)", "Scroll up", id="chat.page_up", priority=True,
            show=False, tooltip="Scroll the conversation up"),
    Binding(default_keys("chat.page_down"), "scroll_transcript(1)", "Scroll down", id="chat.page_down",
            priority=True, show=False, tooltip="Scroll the conversation down"),
]
