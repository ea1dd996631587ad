"""A document someone gives the chat as text: piped into `chatglm ask`, or attached to a message in the app.
One set of rules for both: UTF-8 text (a BOM is dropped), never binary, a regular file of a sane size."""

from __future__ import annotations

from pathlib import Path

from chatglm_tui.errors import ChatGLMError
from chatglm_tui.paths import NotAFileError, open_regular_file
from chatglm_tui.terminal.wording import human_size

# About 2.5 million tokens: far beyond what a summary of parts should be asked to read in one go.
MAX_DOCUMENT_BYTES = 8_000_000


class DocumentError(ChatGLMError):
    """The text given cannot be used as a document; the message says how to convert it."""


def decode_document(data: bytes, where: str, binary_hint: str, convert_hint: str) -> str:
    """The text of `data`, or a DocumentError naming `where` it came from and what to do instead."""
    if b"\x00" in data:
        raise DocumentError(f"{where} looks binary (it contains NUL bytes): {binary_hint}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{where} is not valid UTF-8 (at byte {exc.start}): convert it first, e.g. "
                            f"{convert_hint}") from exc


def read_document_file(path: Path) -> str:
    """A text file's contents (a FIFO, a device or a folder is refused before anything is read)."""
    path = path.expanduser()
    try:
        with open_regular_file(path) as file:
            data = file.read(MAX_DOCUMENT_BYTES + 1)
    except FileNotFoundError:
        raise DocumentError(f"there is no file {path}") from None
    except NotAFileError as exc:
        raise DocumentError(f"cannot attach {path}: {exc.strerror}") from None
    except OSError as exc:
        raise DocumentError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DocumentError(f"{path} is larger than {human_size(MAX_DOCUMENT_BYTES)}: attach a part of it")
    return decode_document(data, str(path), "attach a text file (convert a PDF with `pdftotext`)",
                           f"`iconv -f GBK -t UTF-8 {path.name} > {path.stem}-utf8{path.suffix}`")
