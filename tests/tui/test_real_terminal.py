"""The chat app in a real terminal emulator (tmux): hostile stored text is shown, never obeyed; signals and a
closed terminal window save the reply being written, as ctrl+q does.

tmux with `set-clipboard on` takes OSC 52 into a paste buffer and OSC 0 into the pane title, so each test first
shows that the attack text works when written raw, then that the app never lets it through.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chatglm_tui.store import SessionStore

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None or sys.platform == "win32",
                                reason="needs tmux (a real terminal emulator) on a Unix host")

ATTACK = "Report \x1b]52;c;cm0gLXJmIH4K\x07\x1b]0;DOC\x07\x1b[2J \u202eevil\u202c [/b] [/INST]"
MARKUP_BOMB = "[" + "1" * 3000


class Tmux:
    """One tmux server of its own, running one command (through sh, which records its exit status) in a 120x36
    pane."""

    def __init__(self, tmp: Path, command: str, env: dict[str, str]) -> None:
        self.socket = f"chatglm-test-{uuid.uuid4().hex[:8]}"
        self.status_file = tmp / f"{self.socket}.status"
        config = tmp / "tmux.conf"
        config.write_text("set -g set-clipboard on\nset -g allow-rename on\nset -g remain-on-exit on\n")
        exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
        self._tmux("-f", str(config), "new-session", "-d", "-x", "120", "-y", "36", "-s", "t",
                   f"env {exports} {command}; echo $? > {shlex.quote(str(self.status_file))}")

    def _tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10,
                              check=check)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "t").stdout

    def title(self) -> str:
        return self._tmux("display", "-p", "-t", "t", "#{pane_title}").stdout.strip()

    def clipboard(self) -> str | None:
        shown = self._tmux("show-buffer", check=False)
        return shown.stdout if shown.returncode == 0 else None

    def pid(self) -> int:
        """The program's pid: the child of the pane's shell."""
        shell = int(self._tmux("display", "-p", "-t", "t", "#{pane_pid}").stdout)
        return int(Path(f"/proc/{shell}/task/{shell}/children").read_text().split()[0])

    def dead_status(self) -> int | None:
        text = self.status_file.read_text() if self.status_file.exists() else ""
        return int(text) if text.strip() else None

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def wait_for(self, predicate: Callable[[str], object], what: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; the screen:\n{self.screen()}")

    def wait_dead(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (status := self.dead_status()) is not None:
                return status
            time.sleep(0.1)
        raise AssertionError(f"the program did not exit; the screen:\n{self.screen()}")

    def close_window(self) -> None:
        self._tmux("kill-server", check=False)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Callable[..., Tmux]]:
    started: list[Tmux] = []

    def start(command: str, env: dict[str, str] | None = None) -> Tmux:
        started.append(Tmux(tmp_path, command, {"TERM": "xterm-256color", **(env or {})}))
        return started[-1]

    yield start
    for server in started:
        server.close_window()


def _chatglm(*args: str) -> str:
    return " ".join(shlex.quote(part) for part in (sys.executable, "-m", "chatglm_tui", *args))


def _assert_not_obeyed(terminal: Tmux) -> None:
    assert terminal.title() not in ("DOC", "code"), "the stored text retitled the terminal"
    assert terminal.clipboard() is None, "the stored text wrote to the terminal's clipboard"


def test_the_attack_works_when_written_raw(tmux):
    terminal = tmux(f"printf %s {shlex.quote(ATTACK)}")
    terminal.wait_dead()
    assert terminal.title() == "DOC" and terminal.clipboard() == "rm -rf ~\n"


def _seed_hostile_store(home: Path) -> str:
    path = home / "data" / "sessions.sqlite3"
    with SessionStore(path) as store:
        store.create_conversation(MARKUP_BOMB)
        conversation = store.create_conversation("placeholder", instruction=f"Obey {ATTACK}")
        store.add_message(conversation.id, "user", f"{ATTACK}\n\nThe body of the report.")
        store.add_message(conversation.id, "assistant", f"Sure: {ATTACK}\n\n```\n\x1b]0;code\x07\n```\n")
    with sqlite3.connect(path) as conn:  # a title saved before titles were cleaned, as old stores hold
        conn.execute("UPDATE conversations SET title = ? WHERE id = ?", (ATTACK, conversation.id))
    return conversation.id


def test_hostile_stored_text_is_shown_never_obeyed(tmux, tmp_path):
    home = tmp_path / "home"
    _seed_hostile_store(home)
    terminal = tmux(_chatglm("-c", "--model", str(tmp_path / "no-model")),
                    {"CHATGLM_HOME": str(home), "HF_HUB_OFFLINE": "1"})
    terminal.wait_for(lambda s: "could not be loaded" in s, "the load-error screen")
    terminal.keys("Escape")  # browse the saved chats
    screen = terminal.wait_for(lambda s: "The body of the report" in s, "the conversation")
    assert "␛]52;c;cm0gLXJmIH4K␇␛]0;DOC␇␛[2J" in screen and "<U+202E>evil<U+202C> [/b] [/INST]" in screen
    _assert_not_obeyed(terminal)
    terminal.keys("C-p")
    terminal.wait_for(lambda s: "Search for commands" in s, "the command palette")
    terminal.keys(*"Report")
    terminal.wait_for(lambda s: "Open conversation: Report" in s, "the conversation in the palette")
    terminal.keys("Escape")
    terminal.keys("F2")
    terminal.wait_for(lambda s: "Rename conversation" in s, "the rename dialog")
    terminal.keys("Escape", "F8")
    terminal.wait_for(lambda s: "Delete conversation?" in s, "the delete dialog")
    terminal.keys("Escape", "F3")
    terminal.wait_for(lambda s: "Instruction" in s and "Obey Report ␛]52" in s, "the settings dialog")
    terminal.keys("Escape")
    _assert_not_obeyed(terminal)
    terminal.keys("C-p")  # the markup bomb: opens at once, the app stays responsive
    terminal.wait_for(lambda s: "Search for commands" in s, "the command palette")
    terminal.keys(*"1111", "Enter")
    terminal.wait_for(lambda s: "[11111" in s and "The body of the report" not in s, "the bomb conversation")
    terminal.keys("C-q")
    assert terminal.wait_dead(timeout=10) == 0
    _assert_not_obeyed(terminal)


@pytest.mark.parametrize("how", ["SIGTERM", "closed window"])
def test_a_signal_or_a_closed_window_saves_the_reply_being_written(tmux, tmp_path, fixture_dir, tiny_fp16, how):
    question = "写一篇很长的文章"
    opening = "".join(tiny_fp16.stream_chat(question, history=[], do_sample=False, max_new_tokens=6)).strip()
    home = tmp_path / "home"
    env = {"CHATGLM_HOME": str(home), "HF_HUB_OFFLINE": "1", "CHATGLM_MAX_NEW_TOKENS": "1800",
           "CHATGLM_TEMPERATURE": "0"}
    terminal = tmux(_chatglm("--model", str(fixture_dir / "fp16"), "--quantization", "none",
                                       "--dtype", "float32"), env)
    terminal.wait_for(lambda s: "● ready" in s, "the model to load")
    terminal.keys(*question)
    terminal.wait_for(lambda s: question in s, "the question in the prompt")
    terminal.keys("Enter")  # on its own: in one burst with the text a terminal may deliver it as a paste
    # The greedy reply's opening words on screen, and Esc (stop) still offered: the reply is being written.
    terminal.wait_for(lambda s: opening[:4] in s and "esc Stop" in s, "the reply to stream")
    if how == "SIGTERM":
        os.kill(terminal.pid(), 15)
        assert terminal.wait_dead() == 128 + 15
    else:
        pid = terminal.pid()
        terminal.close_window()  # the pty goes away: the app gets SIGHUP
        _wait_gone(pid)
    with SessionStore(home / "data" / "sessions.sqlite3") as store:
        messages = store.messages(store.latest().id)
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[-1].stopped and messages[-1].text.startswith(opening[:4])


def _wait_gone(pid: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    raise AssertionError("the app did not exit after its terminal closed")


def test_alt_enter_under_tmux_is_a_new_line_and_a_quick_enter_still_sends(tmux, tmp_path):
    # tmux sends alt+enter as ESC CR, which Textual alone reads as a bare Enter: the question would go.
    terminal = tmux(_chatglm("--demo"), {"CHATGLM_HOME": str(tmp_path / "home")})
    terminal.wait_for(lambda s: "● ready" in s and "Ask ChatGLM-6B anything" in s, "the demo to start")
    terminal.keys(*"one")
    terminal.keys("M-Enter")
    terminal.keys(*"two")

    def on_two_lines(screen: str) -> bool:  # the prompt's rows: "one" was not sent, "two" is on the next line
        lines = screen.splitlines()
        return any("▊ one" in line and "▊ two" in below for line, below in zip(lines, lines[1:]))

    terminal.wait_for(on_two_lines, "one and two on two lines of the prompt", timeout=15)
    terminal.keys("C-j", *"three", "Enter")  # in one burst: the Enter still comes after the text it sends
    terminal.wait_for(lambda s: "You" in s and "Ask ChatGLM-6B anything" not in s, "the question to be sent")
    terminal.keys("C-q")
    assert terminal.wait_dead(timeout=10) == 0
