"""The `chatglm` command line: every command, and what they write to a terminal.

Importing this stays light (no torch, no Textual): each command imports what it needs when it runs.
"""

from __future__ import annotations

from chatglm_tui.cli.app import app, main

__all__ = ["app", "main"]
