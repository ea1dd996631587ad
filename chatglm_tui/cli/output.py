"""What the commands write: untrusted text written inertly to any stream, and progress on stderr.

Model output, stored text, checkpoint contents and echoed arguments can carry escape sequences (a piped document
can make the model print them). Whatever stdout or stderr is (a terminal, or a pipe into `less -R` or `head` that
ends on one), such text is written through `chatglm_tui.terminal.inert`: nothing in it is ever interpreted.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from chatglm_tui.terminal.inert import inert, inert_line

EXIT_READER_GONE = 128 + 13  # as for SIGPIPE: the program reading stdout has gone (`| head`)


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def echo(text: str, *, err: bool = False) -> None:
    """Print untrusted `text` inertly on stdout (or stderr), with a final newline unless it has one.

    When the reader of the stream has gone (`chatglm sessions list | head`), the command ends at once, quietly,
    with the exit code of SIGPIPE, as Unix filters do.
    """
    stream = sys.stderr if err else sys.stdout
    shown = inert(text)
    try:
        stream.write(shown if shown.endswith("\n") else shown + "\n")
        stream.flush()
    except BrokenPipeError:
        discard_output(stream)
        sys.exit(EXIT_READER_GONE)


def discard_output(stream: TextIO) -> None:
    """Point `stream`'s file descriptor at /dev/null, so nothing (not the interpreter's last flush) fails on it."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (tests): nothing will flush it later
        pass


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
            self._write("\r\x1b[2K" + inert_line(text))
            self.shown = True

    def clear(self) -> None:
        if self.enabled and self.shown:
            self._write("\r\x1b[2K")
            self.shown = False

    def notice(self, text: str) -> None:
        """A line that stays (e.g. "stopped: the partial reply is saved"), after clearing the progress."""
        if self.enabled:
            self.clear()
            self._write(inert_line(text) + "\n")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except OSError:  # the terminal went away (hang-up): progress is not worth failing for
            self.enabled = False
