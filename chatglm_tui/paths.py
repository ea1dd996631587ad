"""Where chatglm-tui keeps its files, and how a file someone names is opened.

`CHATGLM_HOME` overrides every directory (one folder holds it all). The config file, the session store and a
checkpoint's JSON files must be regular files: a named pipe would make a plain open or read wait for a writer
forever, a device such as /dev/zero never ends, a socket or a directory cannot be read. `open_regular_file`
refuses each before anything is read, in one line saying what it is. Leaf module: no torch, no UI.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import BinaryIO

import platformdirs

from chatglm_tui.errors import CheckpointError

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


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # POSIX only; Windows has no FIFOs to open by path
# The largest released checkpoint JSON, the fp16 shard index, is about 20 KB; 16 MiB is far above any real file and
# still cheap to read, so a bigger one is damage, not a config.
MAX_JSON_BYTES = 16 << 20


class NotAFileError(OSError):
    """A path that must be a regular file is a FIFO, socket, device or directory (its message says which)."""


def file_kind(mode: int) -> str:
    """What an `os.stat` mode describes, worded for messages: "a file", "a FIFO (named pipe)", "a directory"..."""
    if stat.S_ISREG(mode):
        return "a file"
    return next((kind for is_kind, kind in _KINDS if is_kind(mode)), "a special file")


def open_regular_file(path: Path) -> BinaryIO:
    """Open `path` for reading, refusing anything but a regular file; FileNotFoundError when it is missing.

    The open itself does not block (O_NONBLOCK) and the opened descriptor is checked (fstat), so a path swapped
    for a FIFO between two looks cannot slip by.

    Raises:
        NotAFileError: `path` is a FIFO, socket, device or directory; its strerror reads "it is a FIFO ..., not a
            file".
        OSError: it cannot be opened (permissions, a missing folder...).
    """
    _require_regular(os.stat(path).st_mode, path)  # a socket cannot even be opened: say what it is first
    fd = os.open(path, os.O_RDONLY | _NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        _require_regular(os.fstat(fd).st_mode, path)
        if _NONBLOCK:
            os.set_blocking(fd, True)  # a regular file never blocks; ordinary reads from here on
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _require_regular(mode: int, path: Path) -> None:
    if not stat.S_ISREG(mode):
        raise NotAFileError(errno.EINVAL, f"it is {file_kind(mode)}, not a file", str(path))


def read_checkpoint_json(path: Path, limit: int = MAX_JSON_BYTES) -> object:
    """The JSON value in a checkpoint's `path` (config.json, tokenizer_config.json, a shard index).

    Raises:
        FileNotFoundError: it does not exist (each caller says what it needed the file for).
        CheckpointError: it is not a regular file, cannot be read, is larger than `limit` or is not UTF-8 JSON.
    """
    try:
        with open_regular_file(path) as file:
            data = file.read(limit + 1)  # not st_size: the file may grow after fstat
    except FileNotFoundError:
        raise
    except NotADirectoryError as exc:  # a parent folder is a file: no such file either, as for is_file()
        raise FileNotFoundError(exc.errno, exc.strerror, str(path)) from exc
    except NotAFileError as exc:
        raise CheckpointError(f"{path} is not readable: {exc.strerror}; replace it with the real {path.name} "
                              "(re-download the checkpoint)") from exc
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read ({exc.strerror or exc}); check its permissions") from exc
    if len(data) > limit:
        raise CheckpointError(f"{path} is larger than {limit} bytes, far larger than any real {path.name}: "
                              "it is damaged; re-download it")
    try:
        return json.loads(data.decode("utf-8"))
    # ValueError covers bad UTF-8, bad JSON and an integer of over 4300 digits; RecursionError a deep "[[[[...".
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({str(exc)[:200]}); re-download it") from exc
