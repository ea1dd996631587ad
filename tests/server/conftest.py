"""`chatglm serve` for real: a subprocess on 127.0.0.1 (any free port) over the shared tiny checkpoint."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

API_KEY = "test-key-123"
START_TIMEOUT_S = 90.0
_ADDRESS = re.compile(r"chatglm serve: (\S+) at (http://127\.0\.0\.1:\d+/v1)")


@dataclass
class Server:
    """A running `chatglm serve`: its API base URL, the model name it serves and its own CHATGLM_HOME."""

    process: subprocess.Popen[str]
    base: str
    model: str
    home: Path
    key: str | None = None

    @property
    def root(self) -> str:
        return self.base.removesuffix("/v1")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _start(checkpoint: Path, home: Path, *extra: str) -> Server:
    """Start the server and wait (bounded) for the line that names its address; stderr is drained all along, so
    whatever the server logs later can never fill the pipe and block it."""
    env = {**os.environ, "CHATGLM_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "chatglm_tui", "serve", "--model", str(checkpoint),
                                "--quantization", "none", "--dtype", "float32", "--port", "0", *extra],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()  # type: ignore
    deadline, seen = time.monotonic() + START_TIMEOUT_S, []
    while time.monotonic() < deadline and process.poll() is None:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(line)
        match = _ADDRESS.search(line)
        if match:
            key = extra[extra.index("--api-key") + 1] if "--api-key" in extra else None
            return Server(process, match.group(2), match.group(1), home, key)
    process.kill()
    raise AssertionError(f"chatglm serve did not start: {''.join(seen)[-2000:]}")


@pytest.fixture(scope="module")
def server(fixture_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for a module's tests: the tiny fp16 checkpoint, an API key, room for 3 requests at once."""
    running = _start(fixture_dir / "fp16", tmp_path_factory.mktemp("serve-home"), "--api-key", API_KEY,
                           "--max-pending", "3", "--name", "tiny-chatglm")
    yield running
    running.stop()


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    """`start_server(checkpoint, home, *options)`: another server for one test, stopped after it."""
    started: list[Server] = []

    def start(checkpoint: Path, home: Path, *extra: str) -> Server:
        started.append(_start(checkpoint, home, *extra))
        return started[-1]

    yield start
    for running in started:
        running.stop()
