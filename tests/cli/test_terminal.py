"""Untrusted text is inert wherever it is written: escape sequences and controls shown, never interpreted."""

from __future__ import annotations

import io
import json

from chatglm_tui.cli.ask import _Printer
from chatglm_tui.store.titles import clean_title, title_from
from chatglm_tui.terminal.inert import StreamingInert, inert, inert_json, inert_line, strip_escapes

HOSTILE = ("ok\x1b]0;pwned\x07 \x1b[2J\x1b]52;c;ZXZpbA==\x1b\\done\x9b31m\r\x00\ttab\nline"
           "\u202eevil\u202c\u2066x\u2069\ud800\x7f")
# Everything a terminal (or a bidi-aware viewer) would act on.
ACTIVE = set("\x1b\x07\x9b\r\x00\x7f\u202e\u202c\u2066\u2069\ud800")


def test_inert_shows_every_control_and_keeps_newline_and_tab():
    shown = inert(HOSTILE)
    assert not ACTIVE & set(shown)
    assert shown.startswith("ok␛]0;pwned␇ ␛[2J␛]52;c;ZXZpbA==␛\\done<U+009B>31m␍␀\ttab\nline")
    assert "<U+202E>evil<U+202C><U+2066>x<U+2069><U+D800>␡" in shown
    family = "中文 émoji 👋 family 👨‍👩‍👧\n"
    assert inert(family) == family  # the zero-width joiner in the emoji is not a control
    assert inert("a\r\nb") == "a\nb"
    assert inert_line("  one\n two\t ") == "one two"


def test_streamed_text_is_the_same_as_whole_text_whatever_the_cuts():
    for cut in range(len(HOSTILE) + 1):
        stream = StreamingInert()
        assert stream.feed(HOSTILE[:cut]) + stream.feed(HOSTILE[cut:]) + stream.flush() == inert(HOSTILE)
    stream = StreamingInert()
    assert stream.feed("a\r") + stream.feed("\nb") + stream.flush() == "a\nb"


def test_json_escapes_what_a_terminal_would_act_on_and_round_trips_exactly():
    dumped = inert_json({"text": HOSTILE, "中文": "保持"})
    assert not ACTIVE & set(dumped)
    assert "中文" in dumped and "\\u202e" in dumped and "\\u009b" in dumped and "\\ud800" in dumped
    assert json.loads(dumped) == {"text": HOSTILE, "中文": "保持"}


def test_titles_drop_escape_sequences_and_fold_to_one_line():
    assert strip_escapes("Report \x1b]52;c;cm0gLXJmIH4K\x07\x1b]0;DOC\x07 body") == "Report  body"
    assert clean_title("Report \x1b]52;c;cm0gLXJmIH4K\x07\x1b]0;DOC\x07\n\x9b2J x\u202e") == "Report x"
    assert title_from("\x1b[2J\n\nReport \x1b]0;DOC\x07\nbody") == "Report"
    assert title_from("\n \x1b[2J \n", prefix="Summary: ") == "Summary:"
    assert title_from("x" * 80) == "x" * 59 + "…"
    assert title_from("") == "New chat"


def test_streamed_reply_is_inert_whatever_stdout_is_and_saved_exactly():
    for stdout in (io.StringIO(), _Terminal()):
        printer = _Printer(stdout, streaming=True)
        printer.write(HOSTILE[:10])
        printer.write(HOSTILE[10:])
        printer.end()
        assert not ACTIVE & set(stdout.getvalue())
        assert stdout.getvalue() == inert(HOSTILE) + "\n"
        assert printer.text == HOSTILE  # what is saved is what the model said


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True
