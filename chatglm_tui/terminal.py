"""Writing untrusted text to a terminal safely, and progress on stderr.

Model output and stored text can carry escape sequences (a piped document can make the model print them):
on a terminal they could retitle the window, move the cursor, hide text or write to the clipboard. Before
such text reaches a terminal, escape sequences and control characters other than newline and tab are removed.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TextIO

# ESC-introduced sequences (CSI ... final byte, OSC/DCS/APC/PM/SOS ... terminator, two-byte escapes), then any
# remaining C0/C1 control character except \t and \n, and DEL.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_]?)")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def sanitize(text: str) -> str:
    """`text` without escape sequences or control characters (newline and tab kept)."""
    return _CONTROLS.sub("", _ESCAPES.sub("", text.replace("\r\n", "\n")))


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def safe_for(stream: TextIO, text: str) -> str:
    """`text` as it may be written to `stream`: sanitized for a terminal, unchanged for a pipe or file."""
    return sanitize(text) if is_terminal(stream) else text


def colour_enabled(stream: TextIO = sys.stderr) -> bool:
    """Colour only on a terminal and only without NO_COLOR (https://no-color.org)."""
    return is_terminal(stream) and not os.environ.get("NO_COLOR")


class StatusLine:
    """A one-line progress display on stderr, shown only when stderr is a terminal."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.enabled = is_terminal(stream)
        self.shown = False

    def show(self, text: str) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[2K" + sanitize(text))
            self.stream.flush()
            self.shown = True

    def clear(self) -> None:
        if self.enabled and self.shown:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self.shown = False
