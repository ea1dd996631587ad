"""Saving a choice made in the app (the theme) into the config file, keeping the file as the user wrote it."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from chatglm_tui.config.editing import save_theme_choice
from chatglm_tui.config.settings import ConfigError, config_path, load_settings


def _write(folder: Path, file: str, text: str | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_save_creates_the_file_and_folder(tmp_path: Path) -> None:
    path = tmp_path / "config" / "config.toml"
    save_theme_choice("chatglm-light", path)
    assert path.read_text(encoding="utf-8") == 'theme = "chatglm-light"\n'
    assert load_settings(path, {})[0].theme == "chatglm-light"
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]  # no temp file left behind


def test_save_defaults_to_the_config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATGLM_HOME", str(tmp_path))
    save_theme_choice("chatglm-high-contrast")
    assert config_path() == tmp_path / "config" / "config.toml"
    assert load_settings(config_path(), {})[0].theme == "chatglm-high-contrast"


def test_save_replaces_the_top_level_theme_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "config.toml", '# my settings\nmodel = "x/y"\n  theme   = "old"  # was\ntop_k = 5\n')
    save_theme_choice("chatglm-light", path)
    assert path.read_text(encoding="utf-8") == '# my settings\nmodel = "x/y"\ntheme = "chatglm-light"\ntop_k = 5\n'


def test_save_inserts_before_a_keymap_table_keeping_everything(tmp_path: Path) -> None:
    original = (
        "# chatglm-tui settings\n"
        'model = "THUDM/chatglm-6b"  # local mirror\n'
        "temperature = 0.5\n"
        'instruction = """\n'
        "Be brief.\n"
        'theme = "not a key, just text"\n'
        "[not a table either]\n"
        '"""\n'
        "\n"
        "# Key bindings\n"
        "[keymap]\n"
        '"chat.send" = "ctrl+j"\n'
        'theme = "a keymap entry, not the setting"\n'
    )
    path = _write(tmp_path, "config.toml", original)
    save_theme_choice("chatglm-high-contrast", path)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines.index('theme = "chatglm-high-contrast"') < lines.index("[keymap]")
    assert text.replace('theme = "chatglm-high-contrast"\n', "", 1) == original
    settings, sources = load_settings(path, {})
    assert settings.theme == "chatglm-high-contrast" and sources["theme"] == "config file"
    assert settings.model == "THUDM/chatglm-6b" and settings.temperature == 0.5
    assert settings.instruction is not None and "[not a table either]" in settings.instruction
    assert settings.keymap["chat.send"] == "ctrl+j"


def test_save_with_only_comments_above_the_table(tmp_path: Path) -> None:
    path = _write(tmp_path, "config.toml", "# header\n\n# Key bindings\n[keymap]\n")
    save_theme_choice("chatglm-light", path)
    assert path.read_text(encoding="utf-8") == '# header\n\ntheme = "chatglm-light"\n# Key bindings\n[keymap]\n'


def test_save_appends_with_a_trailing_newline_and_keeps_crlf(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.toml", "top_k = 5")
    save_theme_choice("x", path)
    assert path.read_text(encoding="utf-8") == 'top_k = 5\ntheme = "x"\n'
    crlf = tmp_path / "b.toml"
    crlf.write_bytes(b"top_k = 5\r\n[keymap]\r\n")
    save_theme_choice("x", crlf)
    assert crlf.read_bytes() == b'top_k = 5\r\ntheme = "x"\r\n[keymap]\r\n'


def test_save_escapes_the_name(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    save_theme_choice('odd "name" \\ here', path)
    assert load_settings(path, {})[0].theme == 'odd "name" \\ here'


@pytest.mark.parametrize(
    "content",
    [b'model = "x\ntheme = "y"\n', b"top_k = = 3\n", b'theme = "a"\ntheme = "b"\n', b"model = \"\xff\"\n"],
    ids=["unclosed-string", "bad-syntax", "duplicate-key", "not-utf8"],
)
def test_save_refuses_a_broken_file_and_leaves_it_alone(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        save_theme_choice("chatglm-light", path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert path.read_bytes() == content
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]


def test_save_refuses_an_empty_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        save_theme_choice("  ", tmp_path / "config.toml")
    assert not (tmp_path / "config.toml").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_save_writes_through_a_symlinked_config(tmp_path: Path) -> None:
    real = _write(tmp_path / "dotfiles", "config.toml", "top_k = 5\n")
    link = tmp_path / "config.toml"
    link.symlink_to(real)
    save_theme_choice("chatglm-light", link)
    assert link.is_symlink() and 'theme = "chatglm-light"' in real.read_text(encoding="utf-8")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX-only")
def test_save_refuses_a_fifo_config_without_hanging_or_replacing_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bounded: Callable[..., BaseException | None]) -> None:
    monkeypatch.setenv("CHATGLM_HOME", str(tmp_path))
    path = config_path()
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    error = bounded(lambda: save_theme_choice("chatglm-light"), path)
    assert isinstance(error, ConfigError)
    assert str(error) == (f"cannot read the config file {path}: it is a FIFO (named pipe), not a file; "
                          "replace it with a TOML file, or remove it to use the defaults")
    assert path.is_fifo() and [p.name for p in path.parent.iterdir()] == ["config.toml"]  # not replaced
