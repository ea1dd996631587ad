"""The signals that stop a reply the way Ctrl+C does, in `chatglm ask` and the chat app alike."""

from __future__ import annotations

import signal

# The partial reply is saved, and the exit code is then 128 + the signal. SIGHUP: the terminal window was closed.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
