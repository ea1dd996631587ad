"""Colour themes as TOML data: shipped in themes/, the user's in <config>/themes/.

Each theme file maps 1:1 to `textual.theme.Theme`. A bad file becomes a one-line warning, never a crash: a
colour or variable Textual cannot parse would otherwise stop the app when the theme is applied.
"""

from __future__ import annotations

import difflib
import math
import site
import sys
from collections.abc import Mapping, Sequence
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
from chatglm_tui.config.settings import toml_str
from chatglm_tui.errors import ChatGLMError

DEFAULT_THEME = "chatglm-dark"
_COLOUR_KEYS = ("primary", "secondary", "accent", "foreground", "background", "surface", "panel", "boost",
                "success", "warning", "error")
_BOOL_KEYS = ("dark", "ansi")
_FRACTION_KEYS = ("luminosity_spread", "text_alpha")
_KEYS: tuple[str, ...] = ("name", *_COLOUR_KEYS, *_BOOL_KEYS, *_FRACTION_KEYS, "variables")
_COLOUR_EXAMPLE = '"#5B9BFF", "rgb(91,155,255)" or "ansi_blue"'


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
