"""The dependency rules hold: model/ never imports UI or storage code; the CLI's --help needs no torch."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_model_imports_no_ui():
    loaded = _modules_after("from chatglm_tui.model import load_model")
    assert "torch" in loaded
    assert not {m for m in loaded if m.split(".")[0] in {"textual", "typer", "rich"}}


def test_cli_help_is_light():
    loaded = _modules_after("import chatglm_tui.cli")
    assert "torch" not in loaded and "transformers" not in loaded


def test_cli_version_and_no_command():
    version = subprocess.run([sys.executable, "-m", "chatglm_tui", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("chatglm-tui ")
    # Without a terminal the chat cannot open: one line pointing at `chatglm ask`, exit 2 (usage).
    bare = subprocess.run([sys.executable, "-m", "chatglm_tui"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    assert bare.returncode == 2 and "Traceback" not in bare.stderr and bare.stderr.count("\n") == 1
    assert "needs a terminal" in bare.stderr and "chatglm ask" in bare.stderr
    mixed = subprocess.run([sys.executable, "-m", "chatglm_tui", "--demo", "sessions", "list"],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert mixed.returncode == 2 and "Traceback" not in mixed.stderr
