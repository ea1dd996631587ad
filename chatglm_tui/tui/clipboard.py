"""Copying text out of the TUI: OSC 52 through Textual, a system clipboard tool when there is one, and a file.

OSC 52 cannot report whether the terminal honoured it (macOS Terminal.app and tmux without set-clipboard do
not), so the text is also handed to a clipboard program if one is installed, and always written to a file whose
path the notification shows: copying never fails silently and never crashes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from chatglm_tui import paths
from chatglm_tui.terminal.wording import counted

# Tried in order; the first one installed (and with a display to talk to) gets the text.
_TOOLS: tuple[tuple[str, ...], ...] = (
    ("pbcopy",), ("wl-copy",), ("xclip", "-selection", "clipboard"), ("xsel", "--clipboard", "--input"),
    ("clip.exe",),
)


# Where the last-copy file goes instead of the data directory, while `copies_kept_in` says so (the demo).
_copy_folder: Path | None = None


def last_copy_path() -> Path:
    """The file every copy is also written to: `last-copy.txt` in the data directory (or the demo's folder)."""
    return (_copy_folder or paths.data_dir()) / "last-copy.txt"


@contextlib.contextmanager
def copies_kept_in(folder: Path) -> Iterator[None]:
    """Write the last-copy file in `folder` for the duration: `chatglm --demo` keeps it in its throw-away folder,
    so trying the app never replaces the user's own last-copy.txt (its scripted text is not theirs)."""
    global _copy_folder
    previous, _copy_folder = _copy_folder, folder
    try:
        yield
    finally:
        _copy_folder = previous


def _tool() -> tuple[str, ...] | None:
    for command in _TOOLS:
        if shutil.which(command[0]) is None:
            continue
        if command[0] == "wl-copy" and not os.environ.get("WAYLAND_DISPLAY"):
            continue
        if command[0] in ("xclip", "xsel") and not os.environ.get("DISPLAY"):
            continue
        return command
    return None


def copy_with_tool(text: str) -> str | None:
    """Give `text` to a system clipboard program; returns its name, or None when there is none or it failed."""
    command = _tool()
    if command is None:
        return None
    try:
        subprocess.run(command, input=text.encode("utf-8"), check=True, timeout=2,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return command[0]


def save_copy(text: str) -> Path | None:
    """Write `text` to the last-copy file; None if it cannot be written (a read-only home, a full disk)."""
    path = last_copy_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError:
        return None
    return path


def describe_copy(what: str, text: str, tool: str | None, saved: Path | None) -> str:
    """The notification after a copy: what was copied, how, and where the fallback copy is."""
    size = counted(len(text), "character")
    route = f"clipboard (OSC 52 and {tool})" if tool else "clipboard (OSC 52)"
    message = f"Copied {what} ({size}) to the {route}."
    if saved is not None:
        message += f" Also saved to {saved}"
    return message
