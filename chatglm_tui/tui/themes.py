"""Colour themes as TOML data (shipped in themes/, the user's in <config>/themes/) and the saved theme choice.

Each theme file maps 1:1 to `textual.theme.Theme`. A bad file becomes a one-line warning, never a crash: a
colour or variable Textual cannot parse would otherwise stop the app when the theme is applied.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import site
import stat
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib; tomli is the same parser
    import tomli as tomllib

from textual.color import Color, ColorParseError
from textual.css.errors import DeclarationError
from textual.css.parse import parse_declarations
from textual.css.tokenizer import TokenError
from textual.theme import Theme

from chatglm_tui import paths
from chatglm_tui.errors import ChatGLMError
from chatglm_tui.settings import ConfigError, config_path, toml_str

DEFAULT_THEME = "chatglm-dark"
_COLOUR_KEYS = ("primary", "secondary", "accent", "foreground", "background", "surface", "panel", "boost",
                "success", "warning", "error")
_BOOL_KEYS = ("dark", "ansi")
_FRACTION_KEYS = ("luminosity_spread", "text_alpha")
_KEYS: tuple[str, ...] = ("name", *_COLOUR_KEYS, *_BOOL_KEYS, *_FRACTION_KEYS, "variables")
_COLOUR_EXAMPLE = '"#5B9BFF", "rgb(91,155,255)" or "ansi_blue"'
# A top-level `theme = ...` line, bare or quoted key (TOML allows both).
_THEME_KEY = re.compile(r"""[ \t]*(?:theme|"theme"|'theme')[ \t]*=""")


class ThemeFileError(ChatGLMError):
    """A theme file cannot be read or does not describe a valid Textual theme."""


def shipped_themes_dir() -> Path:
    """The themes that come with the app: the checkout's themes/ folder, else the wheel's data files."""
    source = Path(__file__).resolve().parents[2] / "themes"
    candidates = [source, Path(sys.prefix) / "share" / "chatglm-tui" / "themes"]
    # `pip install --user` puts data files under the user base rather than sys.prefix.
    candidates.append(Path(site.getuserbase()) / "share" / "chatglm-tui" / "themes")
    return next((path for path in candidates if path.is_dir()), candidates[1])


SHIPPED_THEMES_DIR = shipped_themes_dir()


def user_themes_dir() -> Path:
    """Where the user's own theme files live (not created here)."""
    return paths.config_dir() / "themes"


def load_themes(dirs: Sequence[Path] | None = None) -> tuple[list[Theme], list[str]]:
    """Themes from `dirs` (default: shipped, then user; a later name wins) and one warning per bad file."""
    dirs = (SHIPPED_THEMES_DIR, user_themes_dir()) if dirs is None else dirs
    themes: dict[str, Theme] = {}
    warnings: list[str] = []
    for directory in dirs:
        files = sorted(directory.glob("*.toml"), key=lambda path: path.name) if directory.is_dir() else []
        for path in files:
            try:
                theme = load_theme_file(path)
            except ThemeFileError as exc:
                warnings.append(str(exc))
                continue
            themes[theme.name] = theme
    return list(themes.values()), warnings


def load_theme_file(path: Path) -> Theme:
    """The validated `Theme` a TOML file describes.

    Raises:
        ThemeFileError: the file is unreadable, not UTF-8, not TOML, or holds an unknown key or a bad value.
    """
    data = _read_toml(path)
    for key in data:
        if key not in _KEYS:
            close = difflib.get_close_matches(key, _KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            allowed = ", ".join(known for known in _KEYS if known != "variables")
            raise ThemeFileError(f"unknown key {key!r} in theme file {path}{hint}: allowed keys are {allowed} "
                                 "and the [variables] table")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ThemeFileError(f'theme file {path} needs a name: add name = "my-theme" (a non-empty string)')
    if "primary" not in data:
        raise ThemeFileError(f'theme file {path} has no primary colour: add primary = "#RRGGBB"')
    fields: dict[str, Any] = {key: _checked(key, value, path) for key, value in data.items()}
    theme = Theme(**fields)
    try:
        # The same call Textual makes when the theme is applied; anything it rejects would stop the app.
        theme.to_color_system().generate()
    except ColorParseError as exc:
        raise ThemeFileError(f"theme file {path} does not build a colour system ({exc}): fix the colours") from exc
    return theme


def _read_toml(path: Path) -> dict[str, Any]:
    """A theme file's TOML table, or a ThemeFileError saying why it cannot be had."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ThemeFileError(f"cannot read theme file {path}: {exc.strerror or exc}; "
                             "fix its permissions or remove it") from exc
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ThemeFileError(f"theme file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}): "
                             "save it as UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends with "(at line N, column M)".
        raise ThemeFileError(f"invalid TOML in theme file {path}: {str(exc).splitlines()[0]}; "
                             "fix it or remove it") from exc


def _checked(key: str, value: object, path: Path) -> object:
    """`value` if it suits the Theme field `key`, else a ThemeFileError naming the key, the value and the rule."""
    if key == "variables":
        return _checked_variables(value, path)
    ok = True
    if key == "name":
        rule = "a non-empty string"
    elif key in _COLOUR_KEYS:
        rule = f"a colour such as {_COLOUR_EXAMPLE}"
        ok = isinstance(value, str) and _is_colour(value)
    elif key in _BOOL_KEYS:
        rule = "true or false"
        ok = isinstance(value, bool)
    else:
        rule = "a number from 0 to 1"
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
            and 0 <= value <= 1
    if not ok:
        raise ThemeFileError(f"invalid {key} = {_shown(value)} in theme file {path}: expected {rule}")
    return value


def _is_colour(text: str) -> bool:
    """Whether Textual's colour parser accepts `text`."""
    try:
        Color.parse(text)
    except ColorParseError:
        return False
    return True


def _checked_variables(value: object, path: Path) -> dict[str, str]:
    """The [variables] table, each value checked against the CSS property its Textual default is used for."""
    if not isinstance(value, Mapping):
        raise ThemeFileError(f"invalid variables = {_shown(value)} in theme file {path}: "
                             'expected a [variables] table of "name" = "value" strings')
    variables: dict[str, str] = {}
    for key, text in value.items():
        prop = _variable_properties().get(key)
        if not isinstance(text, str):
            problem = 'expected a string such as "#5B9BFF"'
        elif prop is not None and not _is_css_value(prop, text):
            problem = f"expected {_RULE_FOR_PROPERTY[prop]}"
        else:
            variables[key] = text
            continue
        raise ThemeFileError(f"invalid variable {key!r} = {_shown(text)} in theme file {path}: {problem}")
    return variables


_RULE_FOR_PROPERTY = {
    "color": 'a colour such as "#5B9BFF", "#5B9BFF 35%", "transparent" or "auto 87%"',
    "text-style": 'a text style such as "none", "bold" or "bold underline"',
}


@lru_cache(maxsize=1)
def _variable_properties() -> dict[str, str]:
    """Textual's built-in theme variables -> the CSS property their values must suit (colour or text style)."""
    defaults = Theme(name="probe", primary="#0178D4").to_color_system().generate()
    properties: dict[str, str] = {}
    for key, default in defaults.items():
        if "-style" in key:
            properties[key] = "text-style"
        elif _is_css_value("color", default):
            properties[key] = "color"
    return properties


def _is_css_value(prop: str, text: str) -> bool:
    """Whether Textual's CSS parser accepts `prop: text;` (the way a theme variable ends up in a stylesheet)."""
    if any(char in text for char in ";{}\n"):
        return False  # would end the declaration early and smuggle in other CSS
    try:
        parse_declarations(f"{prop}: {text};", ("theme", ""))
    except (DeclarationError, TokenError):
        return False
    return True


def _shown(value: object) -> str:
    """A bad value as the user wrote it, shortened so the message stays one readable line."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = toml_str(value)
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from exc
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
