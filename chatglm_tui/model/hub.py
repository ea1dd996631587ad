"""Find a model: a local checkpoint directory, the Hugging Face cache, or (when asked) a download.

Only weights, configs and the tokenizer are fetched (`ALLOW_PATTERNS`): never the repository's Python files,
because this project never runs code from a checkpoint. huggingface_hub is imported inside the functions so
that importing this module stays instant and touches no network or disk.
"""

from __future__ import annotations

import importlib
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatglm_tui.errors import CheckpointError
from chatglm_tui.model.config import SUPPORTED_FAMILY, family_in, require_supported
from chatglm_tui.paths import read_checkpoint_json  # refuses a named pipe or a device

if TYPE_CHECKING:
    from huggingface_hub.utils.tqdm import tqdm as HfTqdm

# Download progress for a UI: (bytes done, bytes total, message). Called from huggingface_hub's download threads.
DownloadProgress = Callable[[int, int, str], None]

ALLOW_PATTERNS: tuple[str, ...] = (
    "config.json",
    "tokenizer_config.json",
    "generation_config.json",
    "ice_text.model",
    "*.bin",
    "*.bin.index.json",
    "*.safetensors",
    "*.safetensors.index.json",
)
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_EXAMPLE_REPO = "THUDM/chatglm-6b-int4"
# One part of a repo id, as huggingface_hub's validate_repo_id has it: 1-96 of A-Z a-z 0-9 _ . -, not starting
# or ending with "-" or "." (checked here, without importing huggingface_hub).
_REPO_PART = re.compile(r"\w(?:[\w.-]{0,94}\w)?", re.ASCII)
_PRECISIONS = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
_CONFIG_SUMMARY = ("hidden_size", "num_layers", "num_attention_heads", "vocab_size", "max_sequence_length")


class ModelNotFoundError(CheckpointError):
    """A model reference names no local directory, no cached repository, or one that cannot be downloaded."""


def resolve_model(ref: str, *, download: bool = False, progress: DownloadProgress | None = None,
                  supported_only: bool = True) -> Path:
    """The checkpoint directory `ref` names: a local path, else the HF cache, else (if `download`) the Hub.

    With `progress`, a download reports its bytes there and draws nothing; without, huggingface_hub draws its
    own bars on stderr. With `supported_only` (for loading), a checkpoint whose config.json is of another GLM
    family (ChatGLM2/3, GLM-4) is refused here in one line, before the loader reads a file such models lack;
    `chatglm model info` and `path` turn it off to describe or locate any checkpoint.
    """
    local = _local_directory(ref)
    if local is None:
        local = _cached_snapshot(ref)
    if local is not None:
        return _supported(local) if supported_only else local
    if not download:
        raise ModelNotFoundError(
            f"the model {ref} is not downloaded yet: run `chatglm model pull {ref}` to download it, "
            "or pass --model PATH to a local checkpoint directory"
        )
    return _download(ref, progress)


def pull_model(ref: str, *, progress: DownloadProgress | None = None) -> Path:
    """Download `ref` into the Hugging Face cache (completing or updating it) and return its directory."""
    local = _local_directory(ref)
    if local is not None:
        return local
    if _offline_variable() is not None:
        # Offline there is nothing to update, but a complete cached copy is still a success.
        cached = _cached_snapshot(ref)
        if cached is not None:
            return cached
    return _download(ref, progress)


def _supported(directory: Path) -> Path:
    """`directory`, unless its config.json names a model this project cannot run (then a CheckpointError).

    A missing or unreadable config.json is left to the loader, which says what is wrong with it.
    """
    try:
        config = read_checkpoint_json(directory / "config.json")
    except (FileNotFoundError, CheckpointError):
        return directory
    if isinstance(config, dict):
        require_supported(config, str(directory / "config.json"), directory)
    return directory


def is_repo_id(ref: str) -> bool:
    """Whether `ref` has the form of a Hugging Face model repo id, `owner/name` (huggingface_hub's rules)."""
    parts = ref.split("/")
    return (len(parts) == 2 and all(_REPO_PART.fullmatch(part) for part in parts)
            and "--" not in ref and ".." not in ref and not ref.endswith(".git"))


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment as it is now.

    huggingface_hub reads these variables once, when it is imported; reading them at call time means a later
    change (a test's HF_HOME, a CLI option) is honoured.
    """
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    xdg_cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    home = os.environ.get("HF_HOME") or os.path.join(xdg_cache, "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def _local_directory(ref: str) -> Path | None:
    """`ref` as an existing local directory, None when it is a repo id, or an error for anything else."""
    local = Path(ref).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise CheckpointError(
            f"{local} is a file, not a directory: pass the checkpoint directory that holds it "
            f"(--model {local.parent})"
        )
    if is_repo_id(ref):
        return None
    if _looks_like_path(ref):
        raise ModelNotFoundError(
            f"the model directory {local} does not exist: pass --model PATH to an existing checkpoint directory, "
            f"or a Hugging Face repo id such as {_EXAMPLE_REPO}"
        )
    raise ModelNotFoundError(
        f"{ref!r} is neither an existing local directory nor a Hugging Face repo id (owner/name): "
        f"pass --model PATH to a checkpoint directory, or a repo id such as {_EXAMPLE_REPO}"
    )


def _looks_like_path(ref: str) -> bool:
    """Whether the user evidently meant a filesystem path rather than a repo id."""
    return ref.startswith((".", "~", os.sep)) or os.path.isabs(ref) or ref.count("/") > 1 or "\\" in ref


def _cached_snapshot(ref: str) -> Path | None:
    """The complete cached snapshot of repo `ref`, or None; never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(
            ref, allow_patterns=list(ALLOW_PATTERNS), cache_dir=hub_cache_dir(), local_files_only=True
        ))
    except LocalEntryNotFoundError:
        # Also covers IncompleteSnapshotError (a subclass in recent versions): not usable as it is.
        return None
    except OSError as exc:
        raise ModelNotFoundError(f"cannot read the Hugging Face cache {hub_cache_dir()}: {exc.strerror or exc}; "
                                 f"check its permissions or set HF_HOME") from exc
    # An interrupted first download can leave a snapshot folder without config.json; that is not a model yet.
    return folder if (folder / "config.json").is_file() else None


def show_download_progress(enabled: bool) -> None:
    """Turn huggingface_hub's progress bars on or off (off when stderr is not a terminal)."""
    from huggingface_hub.utils.tqdm import disable_progress_bars, enable_progress_bars

    (enable_progress_bars if enabled else disable_progress_bars)()


def _download(ref: str, progress: DownloadProgress | None = None) -> Path:
    """Download repo `ref` and return its snapshot; progress goes to `progress`, else huggingface_hub's bars.

    config.json comes first, alone: a repository of another model family is refused before gigabytes of its
    weights are downloaded.
    """
    if _offline_variable() is not None:
        raise ModelNotFoundError(_offline_message(ref))
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        config = Path(hf_hub_download(ref, "config.json", cache_dir=hub_cache_dir(),
                                      tqdm_class=None if progress is None else _reporting_bar(ref, progress)))
        _supported(config.parent)
        folder = Path(snapshot_download(ref, allow_patterns=list(ALLOW_PATTERNS), cache_dir=hub_cache_dir(),
                                        tqdm_class=None if progress is None else _reporting_bar(ref, progress)))
    except (HfHubHTTPError, LocalEntryNotFoundError, *_connection_errors(), OSError) as exc:
        raise _download_error(ref, exc) from exc
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"the repository {ref} has no config.json: it is not a ChatGLM-6B checkpoint")
    return folder


def _download_error(ref: str, exc: BaseException) -> ModelNotFoundError:
    """The one line for a download that failed with `exc`."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
    )

    if isinstance(exc, GatedRepoError):  # before RepositoryNotFoundError, its base class
        return ModelNotFoundError(
            f"the Hugging Face repository {ref} is gated: accept its terms at https://huggingface.co/{ref}, "
            f"log in with `hf auth login`, then run `chatglm model pull {ref}` again")
    if isinstance(exc, RepositoryNotFoundError):
        return ModelNotFoundError(
            f"the Hugging Face repository {ref} does not exist or is private: check the name (for example "
            f"{_EXAMPLE_REPO}), log in with `hf auth login` if it is private, or pass --model PATH")
    if isinstance(exc, RemoteEntryNotFoundError):  # before HfHubHTTPError: a 404 for config.json
        return ModelNotFoundError(f"the repository {ref} has no config.json: it is not a ChatGLM-6B checkpoint")
    if isinstance(exc, HfHubHTTPError):
        return ModelNotFoundError(_http_message(ref, exc))
    # LocalEntryNotFoundError: huggingface_hub's word for a Hub it cannot reach (connection error, timeout).
    if isinstance(exc, (LocalEntryNotFoundError, *_connection_errors())):
        return ModelNotFoundError(_offline_message(ref))
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return ModelNotFoundError(
        f"could not save {ref} in {hub_cache_dir()}: {reason}; free some disk space or set HF_HOME to a "
        "writable folder, then run `chatglm model pull` again")


class _DownloadReport:
    """One download's progress, shared by its bars: counts them (from several threads) and calls `progress`."""

    interval = 0.1  # seconds between reports: a UI needs no more, and a multi-GB download has many chunks

    def __init__(self, ref: str, progress: DownloadProgress) -> None:
        self.ref, self.progress = ref, progress
        self.lock = threading.RLock()  # re-entrant: a callback that touches a bar must not deadlock
        self.files_done, self.files_total = 0, 0

    def started(self, bar: HfTqdm, options: dict[str, Any]) -> None:
        """Classify a new bar: the file count, the bytes written (reported), or something else (ignored)."""
        name = str(options.get("name") or "")
        bar.is_bytes = options.get("unit") == "B" and not name.endswith(".transfer")
        bar.is_files = options.get("unit", "it") == "it"
        bar.reported_at = 0.0
        if bar.is_files:
            self.files_total = int(bar.total or 0)

    def update(self, bar: HfTqdm, n: float) -> None:
        """Count `n` more units on `bar` (a disabled tqdm does not count) and report, at most every interval."""
        with self.lock:
            bar.n += n
            if bar.is_files:
                self.files_done = int(bar.n)
        self.send(bar, force=False)

    def send(self, bar: HfTqdm, force: bool) -> None:
        """Call `progress` with a byte bar's counts: now if `force`, else if the interval has passed."""
        now = time.monotonic()
        if not bar.is_bytes or not (force or now - bar.reported_at >= self.interval):
            return
        bar.reported_at = now
        with self.lock:
            total = int(bar.total or 0)
            self.progress(min(int(bar.n), total) if total else int(bar.n), total, self.message())

    def message(self) -> str:
        files = f" ({self.files_done} of {self.files_total} files)" if self.files_total else ""
        return f"downloading {self.ref}{files}"


def _reporting_bar(ref: str, progress: DownloadProgress) -> type[HfTqdm]:
    """A tqdm class for snapshot_download that sends byte progress to `progress` and never draws.

    huggingface_hub 2.x gives the class three bars: "Fetching N files" (files done), a transfer bar (bytes off
    the network, with an estimated total) and "huggingface_hub.snapshot_download" (bytes written, out of the
    files' sizes). The last is the download progress; the file count goes into the message.
    """
    from huggingface_hub.utils.tqdm import tqdm as hf_tqdm

    report = _DownloadReport(ref, progress)

    class ReportingBar(hf_tqdm):
        """A disabled tqdm, so it writes nothing even when bars are forced on, that reports instead."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "disable": True})  # type: ignore[no-untyped-call]
            report.started(self, kwargs)

        def update(self, n: float | None = 1) -> None:
            report.update(self, n or 0)

        def refresh(self, *args: Any, **kwargs: Any) -> None:
            # snapshot_download refreshes when a file's size joins the total and when the download is done.
            report.send(self, force=True)

    return ReportingBar


def _connection_errors() -> tuple[type[BaseException], ...]:
    """Network failures as the installed HTTP stack raises them (httpx2, httpx or requests by version)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                               ("requests", ("ConnectionError", "Timeout"))):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        errors += [getattr(module, name) for name in names if hasattr(module, name)]
    return tuple(errors)


def _offline_variable() -> str | None:
    """The name of the variable that puts huggingface_hub offline, read now (not at its import)."""
    for var in _OFFLINE_VARIABLES:
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return var
    return None


def _offline_message(ref: str) -> str:
    """The one line for a model that is not cached while the Hub is unreachable."""
    var = _offline_variable()
    reason = f" ({var} is set)" if var else ""
    return (f"the model {ref} is not downloaded and the Hugging Face Hub cannot be reached: run "
            f"`chatglm model pull {ref}` when online, or pass --model PATH to a local checkpoint directory{reason}")


def _http_message(ref: str, exc: Exception) -> str:
    """One line for an HTTP failure: its status and the first line of the server's message."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    code = f" (HTTP {status})" if status else ""
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return (f"downloading {ref} from the Hugging Face Hub failed{code}: {detail}; try again later, "
            "or pass --model PATH to a local checkpoint directory")


def model_info(path: Path) -> dict[str, object]:
    """A summary of a checkpoint directory for `chatglm model info`: its model family (and whether it runs here:
    only ChatGLM-6B does), config, weight files, sizes (bytes) and layout."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a checkpoint directory: pass the folder that holds config.json")
    config = _read_config(directory)
    family = family_in(directory, config)
    weights, file_format = _weight_files(directory)
    sizes = [(file.name, file.stat().st_size) for file in weights]
    sharded = len(weights) > 1 or any(directory.glob("*.index.json"))
    precision = _precision(config)
    count = f"{len(weights)} {file_format} shards" if sharded else f"single {file_format} file"
    bit = config.get("quantization_bit")
    return {
        "directory": str(directory),
        "family": family or f"not a GLM model (model_type {config.get('model_type')!r})",
        "supported": family == SUPPORTED_FAMILY,
        "config": {**{key: config.get(key) for key in _CONFIG_SUMMARY}, "quantization_bit": bit or 0},
        "weights": [{"name": name, "size": size} for name, size in sizes],
        "total_size": sum(size for _, size in sizes),
        "precision": precision,
        "sharded": sharded,
        "format": file_format,
        "layout": f"{precision}, {count}",
    }


def _read_config(directory: Path) -> dict[str, object]:
    """config.json as a dict, read as plain JSON (torch stays unimported)."""
    file = directory / "config.json"
    try:
        config = read_checkpoint_json(file)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{directory} has no config.json: it is not a ChatGLM checkpoint directory") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} is not a JSON object; re-download it")
    return config


def _weight_files(directory: Path) -> tuple[list[Path], str]:
    """Every weight file downloaded (what the folder holds, not only what an index names), and their format;
    safetensors win when both exist, as in the loader."""
    for file_format, pattern in (("safetensors", "*.safetensors"), ("bin", "*.bin")):
        files = sorted(file for file in directory.glob(pattern) if file.is_file())
        if files:
            return files, file_format
    raise CheckpointError(f"{directory} has no weight files (*.safetensors or *.bin): finish the download "
                          "with `chatglm model pull`, or pass a complete checkpoint directory")


def _precision(config: dict[str, object]) -> str:
    """The stored precision: int4/int8 for quantized checkpoints, else the float type (fp16 for ChatGLM-6B)."""
    bit = config.get("quantization_bit")
    if isinstance(bit, int) and bit > 0:
        return f"int{bit}"
    return _PRECISIONS.get(str(config.get("torch_dtype", "float16")), "fp16")
