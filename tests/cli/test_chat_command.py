"""`chatglm` with no command, for real: the console entry point in a pseudo-terminal, as a user runs it."""

from __future__ import annotations

import os
import sys
import time

import pytest

from chatglm_tui.cli.ui_bench import Terminal

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a Unix pseudo-terminal")


def run_in_pty(args: list[str], home) -> tuple[int, Terminal]:
    import fcntl
    import pty
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(CHATGLM_HOME=str(home), TERM="xterm-256color", HF_HUB_OFFLINE="1")
        os.execv(sys.executable, [sys.executable, "-m", "chatglm_tui", *args])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 36, 120, 0, 0))
    return pid, Terminal(fd)


def exit_code(pid: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, 9)
    raise AssertionError("chatglm did not exit")


def test_demo_opens_answers_and_quits(tmp_path):
    pid, terminal = run_in_pty(["--demo"], tmp_path)
    terminal.wait_for(lambda out: "● ready" in out, 0, timeout=60)
    # The status bar says it is the demo, never that the configured model is ready.
    terminal.wait_for(lambda out: "demo (scripted replies)" in out and "no model loaded" in out, 0, timeout=10)
    since = terminal.mark()
    terminal.press(*"hello", "enter")
    terminal.wait_for(lambda out: "demo" in out and "mode" in out, since, timeout=30)
    time.sleep(1.0)  # let the scripted reply finish
    since = terminal.mark()
    terminal.press("\x19")  # ctrl+y: copy the last reply
    terminal.wait_for(lambda out: "Copied" in out, since, timeout=10)
    terminal.press("ctrl+q")
    assert exit_code(pid) == 0
    assert "chatglm-6b-int4" not in terminal.output
    # Demo mode keeps the user's own files untouched: a throw-away store, and copies saved beside it.
    assert not (tmp_path / "data" / "sessions.sqlite3").exists()
    assert not (tmp_path / "data" / "last-copy.txt").exists()


def test_a_model_that_cannot_load_shows_what_to_do_and_quit_exits_1(tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    pid, terminal = run_in_pty(["--model", str(missing)], tmp_path)
    terminal.wait_for(lambda out: "could not be loaded" in out and "chatglm model pull" in out, 0, timeout=60)
    since = terminal.mark()
    terminal.press("\t", "enter")  # from "Browse saved chats" to "Quit"
    assert exit_code(pid) == 1
    # After the app has left the screen, the reason is printed as one (terminal-wrapped) line.
    terminal.wait_for(lambda out: "chatglm: the model directory" in out
                      and "does not exist" in out.replace("\r\n", ""), since, timeout=5)
