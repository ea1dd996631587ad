"""Text written to a terminal cannot carry escape sequences; pipes get the text unchanged."""

from __future__ import annotations

import io

from chatglm_tui.ask import _Printer
from chatglm_tui.terminal import safe_for, sanitize

HOSTILE = "ok\x1b]0;pwned\x07 \x1b[2J\x1b]52;c;ZXZpbA==\x1b\\done\x9b31m\r\x00\ttab\nline"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_sanitize_removes_escapes_and_controls():
    assert sanitize(HOSTILE) == "ok done31m\ttab\nline"
    assert sanitize("中文 émoji 👋\n") == "中文 émoji 👋\n"


def test_only_terminals_are_sanitized():
    assert safe_for(io.StringIO(), HOSTILE) == HOSTILE
    assert "\x1b" not in safe_for(FakeTerminal(), HOSTILE)


def test_streamed_reply_is_sanitized_on_a_terminal():
    terminal = FakeTerminal()
    printer = _Printer(terminal, streaming=True)
    printer.write(HOSTILE[:10])
    printer.write(HOSTILE[10:])
    printer.end()
    assert "\x1b" not in terminal.getvalue() and "\x07" not in terminal.getvalue()
    assert printer.text == HOSTILE  # what is saved is what the model said
