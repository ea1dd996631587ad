"""Themes as TOML data: shipped files load and apply, user files override, bad files warn."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.color import Color
from textual.theme import Theme
from textual.widgets import Footer, Input, Markdown, OptionList

from chatglm_tui.config.settings import Settings
from chatglm_tui.tui.themes import (
    DEFAULT_THEME,
    SHIPPED_THEMES_DIR,
    ThemeFileError,
    load_theme_file,
    load_themes,
    shipped_themes_dir,
    user_themes_dir,
)

REQUIRED = {"chatglm-dark": True, "chatglm-light": False, "chatglm-high-contrast": True}
GOOD = 'name = "{name}"\nprimary = "#336699"\n'


def _write(folder: Path, file: str, text: str | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _luminance(colour: str) -> float:
    """WCAG 2 relative luminance."""
    channels = [value / 255 for value in Color.parse(colour).rgb]
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(first: str, second: str) -> float:
    high, low = sorted((_luminance(first), _luminance(second)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def _shipped() -> dict[str, Theme]:
    return {path.stem: load_theme_file(path) for path in sorted(SHIPPED_THEMES_DIR.glob("*.toml"))}


# --- shipped themes ---------------------------------------------------------------------------------------------


def test_theme_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert shipped_themes_dir() == SHIPPED_THEMES_DIR == Path(__file__).resolve().parents[2] / "themes"
    monkeypatch.setenv("CHATGLM_HOME", str(tmp_path))
    assert user_themes_dir() == tmp_path / "config" / "themes" and not user_themes_dir().exists()


def test_every_shipped_file_loads_and_names_match_files() -> None:
    themes = _shipped()
    assert set(REQUIRED) <= set(themes)
    for stem, theme in themes.items():
        assert theme.name == stem
    for name, dark in REQUIRED.items():
        assert themes[name].dark is dark
    assert DEFAULT_THEME == Settings().theme in themes
    loaded, warnings = load_themes([SHIPPED_THEMES_DIR])
    assert warnings == [] and {t.name for t in loaded} == set(themes)


def test_high_contrast_meets_wcag_aaa() -> None:
    theme = _shipped()["chatglm-high-contrast"]
    assert theme.background is not None and theme.foreground is not None
    assert _contrast(theme.foreground, theme.background) >= 7
    # The accents are used for text too (footer keys, headings, links), so they get the same bar.
    for colour in (theme.primary, theme.secondary, theme.accent, theme.success, theme.warning, theme.error):
        assert colour is not None and _contrast(colour, theme.background) >= 7, colour


def test_dark_and_light_body_text_is_readable() -> None:
    for name in ("chatglm-dark", "chatglm-light"):
        theme = _shipped()[name]
        assert theme.background is not None and theme.foreground is not None
        assert _contrast(theme.foreground, theme.background) >= 7, name


class _Probe(App[None]):
    """An app with the widgets whose CSS uses theme variables (cursor, selection, footer keys, headings)."""

    def compose(self) -> ComposeResult:
        yield Input("text")
        yield OptionList("one", "two")
        yield Markdown("# Heading\n\nbody")
        yield Footer()


def test_shipped_themes_apply_in_a_headless_app() -> None:
    async def run() -> None:
        for app in (App[None](), _Probe()):
            async with app.run_test() as pilot:
                for theme in _shipped().values():
                    app.register_theme(theme)
                    app.theme = theme.name
                    await pilot.pause()
                    assert app.theme == theme.name
                    assert app.current_theme.name == theme.name
            assert app.return_code in (None, 0)

    asyncio.run(run())


# --- user themes and bad files ---------------------------------------------------------------------------------


def test_user_theme_overrides_shipped_and_adds_new(tmp_path: Path) -> None:
    user = tmp_path / "user"
    _write(user, "my-dark.toml", 'name = "chatglm-dark"\nprimary = "#ff0000"\n')
    _write(user, "sunset.toml", GOOD.format(name="sunset") + "dark = false\n")
    themes, warnings = load_themes([SHIPPED_THEMES_DIR, user, tmp_path / "missing"])
    by_name = {theme.name: theme for theme in themes}
    assert warnings == []
    assert by_name["chatglm-dark"].primary == "#ff0000"
    assert by_name["sunset"].dark is False
    assert {"chatglm-light", "chatglm-high-contrast"} <= set(by_name)
    assert [theme.name for theme in themes].count("chatglm-dark") == 1


def test_default_dirs_are_shipped_then_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATGLM_HOME", str(tmp_path))
    _write(user_themes_dir(), "zz-extra.toml", GOOD.format(name="zz-extra"))
    themes, warnings = load_themes()
    assert warnings == [] and {"chatglm-dark", "zz-extra"} <= {theme.name for theme in themes}


BAD_FILES: list[tuple[str, str | bytes, str]] = [
    ("invalid-toml", 'name = "x"\nprimary = \n', "invalid TOML"),
    ("unknown-key", 'name = "x"\nprimry = "#123456"\n', "did you mean 'primary'"),
    ("bad-colour", 'name = "x"\nprimary = "#12345z"\n', 'primary = "#12345z"'),
    ("missing-primary", 'name = "x"\nbackground = "#000000"\n', "no primary"),
    ("not-utf8", b'name = "x\xff"\nprimary = "#123456"\n', "not UTF-8"),
    ("missing-name", 'primary = "#123456"\n', "needs a name"),
    ("bad-bool", 'name = "x"\nprimary = "#123456"\ndark = "yes"\n', 'dark = "yes"'),
    ("bad-variable", 'name = "x"\nprimary = "#123456"\n[variables]\n"footer-key-foreground" = "blurple"\n',
     "'footer-key-foreground'"),
    ("bad-style", 'name = "x"\nprimary = "#123456"\n[variables]\n"block-cursor-text-style" = "shiny"\n',
     "text style"),
    ("variables-not-table", 'name = "x"\nprimary = "#123456"\nvariables = 3\n', "[variables] table"),
]


@pytest.mark.parametrize(("stem", "text", "expected"), BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_file_warns_and_the_rest_load(tmp_path: Path, stem: str, text: str | bytes, expected: str) -> None:
    bad = _write(tmp_path, f"{stem}.toml", text)
    _write(tmp_path, "a-good.toml", GOOD.format(name="good-a"))
    _write(tmp_path, "z-good.toml", GOOD.format(name="good-z"))
    themes, warnings = load_themes([tmp_path])
    assert [theme.name for theme in themes] == ["good-a", "good-z"]
    assert len(warnings) == 1 and str(bad) in warnings[0] and expected in warnings[0]
    assert "\n" not in warnings[0]
    with pytest.raises(ThemeFileError):
        load_theme_file(bad)


def test_variables_accept_textual_forms(tmp_path: Path) -> None:
    text = GOOD.format(name="forms") + (
        '[variables]\n"input-selection-background" = "#336699 35%"\n"text-muted" = "auto 70%"\n'
        '"link-style-hover" = "bold not underline"\n"my-own-variable" = "anything"\n'
    )
    theme = load_theme_file(_write(tmp_path, "forms.toml", text))
    assert theme.variables["input-selection-background"] == "#336699 35%"
    assert theme.variables["my-own-variable"] == "anything"


def test_themes_module_imports_no_torch() -> None:
    code = "import sys, chatglm_tui.tui.themes; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
