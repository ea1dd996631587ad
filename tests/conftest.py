"""Shared test fixtures: the read-only `../shared` folder beside the project (or $CHATGLM_SHARED)."""

from __future__ import annotations

import json
import os
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
