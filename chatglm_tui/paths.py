"""Where chatglm-tui keeps its files. `CHATGLM_HOME` overrides everything (one folder holds it all)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "chatglm-tui"


def _home() -> Path | None:
    value = os.environ.get("CHATGLM_HOME")
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """Re-creatable data: quantized model caches. Not created here (no work at import or lookup time)."""
    home = _home()
    return home / "cache" if home else platformdirs.user_cache_path(APP_NAME)


def quantized_cache_dir() -> Path:
    """Where the CPU kernels' converted weights are cached, one file per checkpoint and format."""
    return cache_dir() / "quantized"


def data_dir() -> Path:
    """User data: the session store."""
    home = _home()
    return home / "data" if home else platformdirs.user_data_path(APP_NAME)


def config_dir() -> Path:
    """The config file and user themes."""
    home = _home()
    return home / "config" if home else platformdirs.user_config_path(APP_NAME)
