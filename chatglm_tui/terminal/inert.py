"""Untrusted text made inert for display: the one rule for every text from the model, the store, a checkpoint
or the user, wherever it is shown (terminal, pipe, file, the chat app).

Such text can carry escape sequences and control characters: written raw to a terminal they retitle the
window, write to the clipboard (OSC 52), move the cursor or wipe the screen; bidi overrides make text read
differently from what it is (CVE-2021-42574). `inert` makes every one of them visible instead: C0 controls
and DEL become their Unicode Control Pictures (`␛`, `␇`, `␡`), C1 controls, bidi overrides and unpaired
surrogates become `<U+XXXX>`. Newline and tab are kept; CRLF becomes LF. The text stays readable and nothing
in it is interpreted. Stored text and JSON keep the exact characters (`inert_json` escapes them instead).
"""

from __future__ import annotations

import json
import re

# C0 controls except tab and newline, DEL, C1 controls, the bidi embeddings/overrides/isolates, and lone
# surrogates (from undecodable input; they cannot even be encoded for output).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# In JSON, where C0 is already escaped by the encoder: DEL, C1, bidi, the line/paragraph separators (which
# some tools still read as line breaks) and lone surrogates.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# Titles drop whole escape sequences (CSI ... final byte; OSC/DCS/APC/PM/SOS ... terminator; two-byte escapes)
# rather than show them: a title is a short label made from text, not the text itself.
_ESCAPE_SEQUENCE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_]?)")
_C1_CSI = re.compile(r"\x9b[0-?]*[ -/]*[@-~]|[\x90\x98\x9d\x9e\x9f][^\x07\x1b\x9c]*[\x07\x9c]?")


def _picture(char: str) -> str:
    code = ord(char)
    if code < 0x20:
        return chr(0x2400 + code)  # ␀ … ␟ (␛ for ESC)
    if code == 0x7F:
        return "\u2421"  # ␡
    return f"<U+{code:04X}>"


def inert(text: str) -> str:
    """`text` with every control character, bidi override and lone surrogate made visible (newline, tab kept)."""
    text = text.replace("\r\n", "\n")
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(lambda match: _picture(match.group()), text)


def inert_line(text: str) -> str:
    """`inert(text)` on one line: runs of whitespace, newlines included, folded to one space."""
    return " ".join(inert(text).split())


def inert_json(value: object, *, indent: int | None = None) -> str:
    """`json.dumps(value)` keeping non-ASCII text readable but escaping every character a terminal could act on.

    The encoder already escapes C0 controls; DEL, C1, bidi overrides, U+2028/2029 and lone surrogates are escaped
    here too (`\\u202e`), so the output is inert on a terminal and decodes back to exactly the same text.
    """
    dumped = json.dumps(value, ensure_ascii=False, indent=indent)
    # Outside strings JSON has only ASCII structure, so these characters can only be inside strings.
    return _JSON_UNSAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", dumped)


def strip_escapes(text: str) -> str:
    """`text` without escape sequences (7-bit and C1) and with no control characters left at all."""
    text = _C1_CSI.sub("", _ESCAPE_SEQUENCE.sub("", text))
    return _UNSAFE.sub(" ", text.replace("\t", " ").replace("\n", " "))


class StreamingInert:
    """`inert` for text that arrives in pieces: a CR at the end of a piece waits to see if an LF follows."""

    def __init__(self) -> None:
        self._held = ""

    def feed(self, text: str) -> str:
        """The inert form of what can be shown of `text` now."""
        text, self._held = self._held + text, ""
        if text.endswith("\r"):
            text, self._held = text[:-1], "\r"
        return inert(text)

    def flush(self) -> str:
        """Whatever is held back, at the end of the stream."""
        held, self._held = self._held, ""
        return inert(held)
