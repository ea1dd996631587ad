"""In-place edits of the config file that keep it as the user wrote it: comments, order, other keys.

Used to save choices made in the chat app (the theme). The edit is checked by parsing the result: it must change
the one key and nothing else, or the file is left untouched.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib; tomli is the same parser
    import tomli as tomllib

from chatglm_tui.config.settings import ConfigError, config_path, read_config_bytes, toml_str

# A top-level `theme = ...` line, bare or quoted key (TOML allows both).
_THEME_KEY = re.compile(r"""[ \t]*(?:theme|"theme"|'theme')[ \t]*=""")


def save_theme_choice(name: str, path: Path | None = None) -> None:
    """Set `theme = name` in the config file, keeping every other line (comments included) as it was.

    Raises:
        ConfigError: the file cannot be read or written, is not valid TOML, or could not be edited safely;
            the file is then left untouched.
    """
    path = config_path() if path is None else path
    if not name.strip():
        raise ConfigError("cannot save an empty theme name: pick one of the listed themes")
    text = _read_config_text(path)
    old = _parse_config(text, path)
    new_text = _with_theme_line(text, name)
    try:
        new: dict[str, Any] | None = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        new = None
    # The edit must change the theme and nothing else, whatever the scanner made of the file.
    if new != {**old, "theme": name}:
        raise ConfigError(f"could not set the theme in {path} without changing other settings: "
                          f"add theme = {toml_str(name)} above the first [table] by hand")
    _write_atomically(path, new_text)


def _read_config_text(path: Path) -> str:
    """The config file's text; empty when there is no file."""
    raw = read_config_bytes(path)  # refuses a FIFO or device unread, so the edit can neither hang nor replace it
    if raw is None:
        return ""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}): "
                          "save it as UTF-8, then choose the theme again") from exc


def _parse_config(text: str, path: Path) -> dict[str, Any]:
    """The config file's TOML table, or a ConfigError: a broken file is never rewritten."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {path}: {str(exc).splitlines()[0]}; fix it, then choose the theme "
                          "again") from exc


def _with_theme_line(text: str, name: str) -> str:
    """`text` with its top-level theme line replaced, else one added after the last top-level key or at the end."""
    # Split on "\n" only: str.splitlines also breaks on characters TOML allows inside strings and comments.
    lines = text.split("\n")
    crlf = "\r\n" in text
    if lines[-1] == "":
        lines.pop()
    elif crlf:
        lines[-1] += "\r"  # the last line had no line break; give it the file's own
    new_line = f"theme = {toml_str(name)}" + ("\r" if crlf else "")
    insert_at, last_end = len(lines), None
    for start, end in _statements(lines):
        if lines[start].lstrip(" \t").startswith("["):
            insert_at = _above_comments(lines, start) if last_end is None else last_end
            break
        if _THEME_KEY.match(lines[start]):
            lines[start:end] = [new_line]
            return "".join(line + "\n" for line in lines)
        last_end = end
    lines.insert(insert_at, new_line)
    return "".join(line + "\n" for line in lines)


def _above_comments(lines: Sequence[str], index: int) -> int:
    """The first line of the comment block directly above line `index` (it describes that line)."""
    while index > 0 and lines[index - 1].lstrip(" \t").startswith("#"):
        index -= 1
    return index


def _statements(lines: Sequence[str]) -> Iterator[tuple[int, int]]:
    """(first, end) line span of each statement (key = value or [table] header); skips blanks and comments."""
    index = 0
    while index < len(lines):
        stripped = lines[index].strip(" \t\r")
        if not stripped or stripped.startswith("#"):
            index += 1
            continue
        end = _statement_end(lines, index)
        yield index, end
        index = end


def _statement_end(lines: Sequence[str], start: int) -> int:
    """The line after the statement starting at `start`: its multi-line strings and arrays are closed."""
    depth, quote = 0, ""  # quote: the open string's delimiter (", ', \"\"\" or ''')
    for index in range(start, len(lines)):
        line, pos = lines[index], 0
        while pos < len(line):
            if quote:
                if quote[0] == '"' and line[pos] == "\\":
                    pos += 2
                elif line.startswith(quote, pos):
                    pos += len(quote)
                    # Up to two more quotes right before a closing delimiter are part of the string.
                    while len(quote) == 3 and line.startswith(quote[0], pos):
                        pos += 1
                    quote = ""
                else:
                    pos += 1
                continue
            char = line[pos]
            if char == "#":
                break
            if line.startswith(('"""', "'''"), pos):
                quote = line[pos:pos + 3]
            elif char in "\"'":
                quote = char
            elif char in "[{":
                depth += 1
            elif char in "]}":
                depth -= 1
            pos += len(quote) or 1
        if len(quote) == 1:
            quote = ""  # a one-line string cannot go on (the file would not parse; the caller's check refuses it)
        if not quote and depth <= 0:
            return index + 1
    return len(lines)


def _write_atomically(path: Path, text: str) -> None:
    """Replace the file's contents in one step, so a crash never leaves half a config file."""
    target = path.resolve()  # write through a symlinked config (dotfiles) instead of replacing the link
    try:
        mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else None
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(text.encode("utf-8"))
                file.flush()
                os.fsync(file.fileno())
            if mode is not None:
                os.chmod(temp, mode)
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ConfigError(f"cannot write the config file {path}: {exc.strerror or exc}") from exc
