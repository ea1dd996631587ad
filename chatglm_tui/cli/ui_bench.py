"""`chatglm bench --ui`: the chat app's responsiveness, measured the way a user feels it, in a pseudo-terminal.

The app runs in a child process on a pty (a real terminal as far as Textual knows, so every frame is rendered
and written). The parent plays the user: it writes key bytes and times how long until the terminal output shows
their effect. Measured: keystroke-to-screen latency while a reply streams (and at rest, for comparison), the
time to open a 500-message conversation, and the time for a page of scrolling in it. With `--model` the real
engine generates on the same CPU cores the UI uses; without it the scripted engine streams at a stress rate.
"""

from __future__ import annotations

import codecs
import json
import os
import select
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LONG_TITLE = "Long chat (500 messages)"
SHORT_TITLE = "Short chat"
END_MARK = "END-OF-LONG-CHAT"
SIZE = (120, 36)
# A long Markdown reply (~9,000 characters: more than the 2048-token window allows) of paragraphs, lists and
# code, streamed in 16-character deltas every 40 ms: ten times the rate the real engine sends them.
STRESS_REPLY = ("Streaming keeps the interface responsive because only the new text is parsed and drawn. " * 5
                + "\n\n- first point\n- second point\n\n```python\nfor i in range(3):\n    print(i)\n```\n\n") * 12
KEYS = {"ctrl+o": "\x0f", "enter": "\r", "escape": "\x1b", "ctrl+q": "\x11", "pageup": "\x1b[5~",
        "ctrl+n": "\x0e"}


@dataclass(frozen=True)
class UiBenchResult:
    engine: str
    typing_while_streaming_ms: list[float]
    typing_at_rest_ms: list[float]
    open_long_chat_ms: list[float]
    page_up_ms: list[float]

    def summary(self) -> dict[str, object]:
        def stats(values: list[float]) -> dict[str, float]:
            ordered = sorted(values)
            return {"median": round(statistics.median(ordered), 1),
                    "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
                    "max": round(ordered[-1], 1), "n": len(ordered)}

        return {"engine": self.engine, "typing_while_streaming_ms": stats(self.typing_while_streaming_ms),
                "typing_at_rest_ms": stats(self.typing_at_rest_ms),
                "open_500_message_chat_ms": stats(self.open_long_chat_ms), "page_up_ms": stats(self.page_up_ms)}


def format_ui_table(result: UiBenchResult) -> str:
    rows = [("keystroke → screen while a reply streams", "typing_while_streaming_ms"),
            ("keystroke → screen at rest", "typing_at_rest_ms"),
            ("open a 500-message conversation", "open_500_message_chat_ms"),
            ("page up in it", "page_up_ms")]
    summary = result.summary()
    lines = [f"engine: {result.engine}", f"{'measure':<42} {'median':>8} {'p95':>8} {'max':>8}   n"]
    for label, key in rows:
        row = summary[key]
        assert isinstance(row, dict)
        lines.append(f"{label:<42} {row['median']:>6} ms {row['p95']:>5} ms {row['max']:>5} ms   {row['n']}")
    return "\n".join(lines)


def seed_store(path: Path) -> None:
    """A short chat and a 500-message one (250 rounds with Markdown replies), written straight to the store."""
    from chatglm_tui.store import SessionStore

    with SessionStore(path) as store:
        short = store.create_conversation(SHORT_TITLE)
        store.add_message(short.id, "user", "hi")
        store.add_message(short.id, "assistant", "Hello!")
        long = store.create_conversation(LONG_TITLE)
        for n in range(1, 251):
            store.add_message(long.id, "user", f"Question {n}: how does part {n} work?")
            reply = (f"Part {n} works in **three** steps:\n\n1. read\n2. think\n3. answer\n\n"
                     f"```python\ndef part_{n}(x):\n    return x * {n}\n```")
            store.add_message(long.id, "assistant", reply + (f"\n\n{END_MARK}" if n == 250 else ""))


class Terminal:
    """The parent's side of the pty: write keys, and wait for text to appear in what the app draws."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.output = ""
        self._lock = threading.Lock()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.5)
                data = os.read(self.fd, 65536) if ready else b""
            except OSError:
                return
            if data:
                with self._lock:
                    self.output += self._decoder.decode(data)

    def mark(self) -> int:
        with self._lock:
            return len(self.output)

    def wait_for(self, predicate: Callable[[str], bool], since: int, timeout: float = 60.0) -> float:
        """Seconds until the output written after `since` satisfies `predicate`."""
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            with self._lock:
                new = self.output[since:]
            if predicate(new):
                return time.perf_counter() - start
            time.sleep(0.0005)
        raise TimeoutError("the app did not draw what was expected in time")

    def press(self, *keys: str) -> None:
        for key in keys:
            os.write(self.fd, KEYS.get(key, key).encode("utf-8"))
            time.sleep(0.05)

    def timed_press(self, key: str, predicate: Callable[[str], bool]) -> float:
        since = self.mark()
        os.write(self.fd, KEYS.get(key, key).encode("utf-8"))
        return self.wait_for(predicate, since) * 1000


def _shows(text: str) -> Callable[[str], bool]:
    """A predicate: the output contains `text`."""

    def shows(output: str) -> bool:
        return text in output

    return shows


def _redrawn(output: str) -> bool:
    """A page of scrolling has been drawn (a scroll redraws most of the screen: far more than 200 characters)."""
    return len(output) > 200


def _typing(terminal: Terminal, samples: int) -> list[float]:
    """Type '@' keys one at a time; each is on screen when the prompt line shows that many."""
    times = []
    for count in range(1, samples + 1):
        times.append(terminal.timed_press("@", _shows("@" * count)))
        time.sleep(0.15)
    terminal.press("ctrl+n")  # a fresh, empty prompt for what comes next
    return times


def _open_long_chat(terminal: Terminal, times: int) -> list[float]:
    """Open the 500-message chat from the sidebar (filter, list, Enter), then go back to a new chat."""
    durations = []
    for _ in range(times):
        terminal.press("ctrl+o", *"500 messages", "enter")
        time.sleep(0.3)
        durations.append(terminal.timed_press("enter", _shows(END_MARK)))
        time.sleep(0.3)
        terminal.press("ctrl+n", "ctrl+o", *"\x15")  # ctrl+u clears the filter
        time.sleep(0.3)
    return durations


def run_ui_bench(model: str | None, samples: int = 30) -> UiBenchResult:
    """Run the app on a pty and measure (see the module docstring)."""
    if sys.platform == "win32":
        from chatglm_tui.errors import ChatGLMError

        raise ChatGLMError("`chatglm bench --ui` needs a Unix pseudo-terminal (Linux or macOS)")
    import pty

    home = Path(tempfile.mkdtemp(prefix="chatglm-bench-ui-"))
    (home / "data").mkdir(parents=True)
    seed_store(home / "data" / "sessions.sqlite3")
    pid, fd = pty.fork()
    if pid == 0:  # the child: the app itself, in the pseudo-terminal
        os.environ.update(CHATGLM_HOME=str(home), TERM="xterm-256color", COLUMNS=str(SIZE[0]), LINES=str(SIZE[1]))
        os.execv(sys.executable, [sys.executable, "-m", "chatglm_tui.cli.ui_bench", "--child", model or ""])
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", SIZE[1], SIZE[0], 0, 0))
    terminal = Terminal(fd)
    try:
        terminal.wait_for(lambda out: "● ready" in out, 0, timeout=600)
        time.sleep(1.0)
        at_rest = _typing(terminal, samples)
        opened = _open_long_chat(terminal, 5)
        terminal.press("ctrl+o", *"500 messages", "enter", "enter")
        time.sleep(1.0)
        page_up = [terminal.timed_press("pageup", _redrawn) for _ in range(10)]
        since = terminal.mark()
        terminal.press("ctrl+n", *"Write a long story.", "enter")
        terminal.wait_for(_shows("writing"), since, timeout=120)  # the reply's header while it streams
        time.sleep(3.0)  # past the prompt: text is streaming in now
        streaming = _typing(terminal, samples)
        terminal.press("escape")
    finally:
        terminal.press("ctrl+q")
        time.sleep(0.5)
        os.waitpid(pid, 0)
    return UiBenchResult(model or "scripted (FakeEngine, 25 deltas/s)", streaming, at_rest, opened, page_up)


def _child(model: str) -> None:
    """The app, with the real engine on `model`, or the scripted engine streaming a very long reply."""
    from chatglm_tui.config.settings import Settings
    from chatglm_tui.engine.fake import FakeEngine
    from chatglm_tui.engine.protocol import Engine
    from chatglm_tui.store import SessionStore, default_store_path
    from chatglm_tui.tui.app import make_app

    engine: Engine
    if model:
        from chatglm_tui.engine.worker import InferenceWorker, resolving_loader

        engine = InferenceWorker(resolving_loader(model, "int4", "cpu", "auto"))
    else:
        engine = FakeEngine([STRESS_REPLY], chunk_size=16, delay=0.04)
    with SessionStore(default_store_path()) as store:
        make_app(Settings(model=model or "scripted"), engine, store, persist_theme=False).run()
    engine.close()


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    _child(sys.argv[2] if len(sys.argv) > 2 else "")
elif __name__ == "__main__":
    print(json.dumps(run_ui_bench(sys.argv[1] if len(sys.argv) > 1 else None).summary(), indent=2))
