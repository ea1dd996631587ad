"""Shared test fixtures: the read-only `../shared` folder beside the project (or $CHATGLM_SHARED)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CHATGLM_SHARED", ROOT.parent / "shared"))
FIXTURE = SHARED / "fixtures" / "tiny-chatglm"
TOKENIZER_DIR = SHARED / "chatglm-6b"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: these tests need the shared fixtures beside the project "
                    "(../shared, or set CHATGLM_SHARED)")
    return path


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    """The tiny random-weight checkpoint in the released layouts (fp16/ and int4/)."""
    return _require(FIXTURE)


@pytest.fixture(scope="session")
def reference(fixture_dir: Path) -> dict:
    """Outputs of the original implementation on the tiny checkpoint."""
    return json.loads((fixture_dir / "reference.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def tokenizer_file() -> Path:
    """The released ice_text.model."""
    return _require(TOKENIZER_DIR / "ice_text.model")


@pytest.fixture(scope="session")
def tokenizer(tokenizer_file: Path):
    from chatglm_tui.model.tokenizer import ChatGLMTokenizer

    return ChatGLMTokenizer(tokenizer_file)


@pytest.fixture(scope="session")
def tiny_fp16(fixture_dir: Path):
    """The tiny fp16 checkpoint loaded exactly (float32), shared by the tests that only read it."""
    from chatglm_tui.model import load_model

    return load_model(fixture_dir / "fp16", dtype="float32")


@pytest.fixture(scope="session")
def tiny_int4(fixture_dir: Path):
    """The tiny checkpoint in the official int4 layout, loaded through the exact float32 path."""
    from chatglm_tui.model import load_model

    return load_model(fixture_dir / "int4", dtype="float32")


class TickingClock:
    """A clock one second later at every reading, so every timestamp (and ordering) is deterministic."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def clock() -> TickingClock:
    """A fresh `TickingClock`, for stores under test."""
    return TickingClock()


BOUNDED_SECONDS = 10.0  # a refusal takes milliseconds; a read of a FIFO with no writer never returns


def raised_within(call: Callable[[], object], unblock: Path | None = None,
                  timeout: float = BOUNDED_SECONDS) -> BaseException | None:
    """Run `call` in a thread for at most `timeout` seconds; return what it raised (None if nothing).

    If it is still running, the FIFO `unblock` gets a writer that opens and closes at once (EOF for a reader
    stuck on it), so a failing test does not leave a thread blocked for ever, and the test fails.
    """
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 (handed to the test to assert on)
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if unblock is not None:
            os.close(os.open(unblock, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(timeout)
        pytest.fail(f"still blocked after {timeout} s" + (f" on {unblock}" if unblock is not None else ""))
    return outcome[0]


@pytest.fixture
def bounded() -> Callable[..., BaseException | None]:
    """`bounded(call, unblock=None)`: `raised_within` for tests of things that must never wait on a FIFO."""
    return raised_within


@pytest.fixture(autouse=True, scope="session")
def isolated_home(tmp_path_factory) -> Path:
    """Every test writes caches and data under a temporary CHATGLM_HOME, never the user's directories."""
    home = tmp_path_factory.mktemp("chatglm-home")
    previous = os.environ.get("CHATGLM_HOME")
    os.environ["CHATGLM_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("CHATGLM_HOME", None)
    else:
        os.environ["CHATGLM_HOME"] = previous
