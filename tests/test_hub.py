"""Model resolution: local directories, a hand-built Hugging Face cache, and one-line errors; never the network."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import httpx2
import huggingface_hub
import huggingface_hub.constants
import pytest
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
)

from chatglm_tui.errors import CheckpointError
from chatglm_tui.model.hub import (
    ALLOW_PATTERNS,
    ModelNotFoundError,
    hub_cache_dir,
    is_repo_id,
    model_info,
    pull_model,
    resolve_model,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "owner/tiny-chatglm"


@pytest.fixture(autouse=True)
def offline_hub(tmp_path, monkeypatch) -> Path:
    """HF_HOME in a temporary folder and the Hub offline, read at call time by chatglm_tui.model.hub."""
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    # huggingface_hub read HF_HUB_OFFLINE when it was imported; force it too, so no request can leave.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return home


def _cache_repo(home: Path, repo: str = REPO, files: tuple[str, ...] = ("config.json",),
                config: dict | None = None) -> Path:
    """The Hugging Face cache layout by hand: refs/main -> commit, snapshots/<commit>/<files> (each holding
    `config`, by default a ChatGLM-6B-shaped one); adds to what is there."""
    storage = home / "hub" / ("models--" + repo.replace("/", "--"))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(COMMIT, encoding="utf-8")
    snapshot = storage / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    for name in files:
        (snapshot / name).write_text(json.dumps(config or {"hidden_size": 64}), encoding="utf-8")
    return snapshot


def _one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


def test_local_directory_resolves(tmp_path):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    assert resolve_model(str(checkpoint)) == checkpoint
    assert resolve_model(str(checkpoint), download=True) == checkpoint
    assert pull_model(str(checkpoint)) == checkpoint


def test_file_path_asks_for_the_directory(tmp_path):
    weights = tmp_path / "pytorch_model.bin"
    weights.write_bytes(b"x")
    with pytest.raises(CheckpointError) as error:
        resolve_model(str(weights))
    message = _one_line(error)
    assert "is a file, not a directory" in message and f"--model {tmp_path}" in message


@pytest.mark.parametrize("ref", ["chatglm-6b", "owner/bad--name", "owner/", "a b/c"])
def test_bad_ref(ref):
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model(ref, download=True)
    message = _one_line(error)
    assert "neither an existing local directory nor a Hugging Face repo id" in message
    assert "--model PATH" in message


@pytest.mark.parametrize("ref", ["./models/chatglm", "/no/such/dir", "models/chatglm/int4"])
def test_missing_path(ref):
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model(ref, download=True)
    assert "does not exist" in _one_line(error)


def test_cached_repo_resolves_offline(offline_hub):
    snapshot = _cache_repo(offline_hub, files=("config.json", "ice_text.model", "pytorch_model.bin"))
    assert resolve_model(REPO) == snapshot
    assert resolve_model(REPO, download=True) == snapshot
    assert pull_model(REPO) == snapshot


def test_cache_follows_hf_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hub_cache_dir() == tmp_path / "elsewhere"
    snapshot = _cache_repo(tmp_path / "elsewhere-home")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere-home" / "hub"))
    assert resolve_model(REPO) == snapshot


def test_hub_cache_dir_follows_hf_home(offline_hub):
    assert hub_cache_dir() == offline_hub / "hub"


def test_absent_repo_offline_message(offline_hub):
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model(REPO, download=True)
    message = _one_line(error)
    assert message == (
        f"the model {REPO} is not downloaded and the Hugging Face Hub cannot be reached: run "
        f"`chatglm model pull {REPO}` when online, or pass --model PATH to a local checkpoint directory "
        "(HF_HUB_OFFLINE is set)"
    )
    with pytest.raises(ModelNotFoundError, match="cannot be reached"):
        pull_model(REPO)


def test_not_downloaded_gives_pull_hint(offline_hub):
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model(REPO)
    message = _one_line(error)
    assert f"the model {REPO} is not downloaded yet" in message
    assert f"`chatglm model pull {REPO}`" in message and "--model PATH" in message
    assert "cannot be reached" not in message


def test_snapshot_without_config_is_not_a_model(offline_hub):
    _cache_repo(offline_hub, files=("ice_text.model",))  # an interrupted first download
    with pytest.raises(ModelNotFoundError, match="not downloaded yet"):
        resolve_model(REPO)


def _fake_config_download(monkeypatch, calls: list[dict], config: dict | None = None,
                          error: BaseException | None = None) -> None:
    """hf_hub_download, as `_download` asks it for config.json first: it puts `config` (a ChatGLM-6B one by
    default) in the cache and returns its path, or raises `error`; every call is recorded in `calls`."""
    def fake_hf_hub_download(repo_id: str, filename: str, **kwargs: object) -> str:
        calls.append({"repo_id": repo_id, "filename": filename, **kwargs})
        if error is not None:
            raise error
        return str(_cache_repo(Path(hub_cache_dir()).parent, repo_id, (filename,), config) / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)


def _fake_hub(monkeypatch, error: BaseException, config_error: BaseException | None = None) -> list[dict]:
    """Online mode where snapshot_download raises `error` (the cache lookup finds nothing) after config.json
    came down (or failed with `config_error`); records calls."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls: list[dict] = []

    def fake_snapshot_download(repo_id: str, **kwargs: object) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        if kwargs.get("local_files_only"):
            raise LocalEntryNotFoundError("not in the cache")
        raise error

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    _fake_config_download(monkeypatch, calls, error=config_error)
    return calls


def _response(status: int) -> httpx2.Response:
    return httpx2.Response(status, request=httpx2.Request("GET", f"https://huggingface.co/api/models/{REPO}"))


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (GatedRepoError("gated", response=_response(401)), f"{REPO} is gated: accept its terms"),
        (RepositoryNotFoundError("404 Client Error", response=_response(404)), "does not exist or is private"),
        (HfHubHTTPError("500 Server Error\ndetails", response=_response(500)),
         f"downloading {REPO} from the Hugging Face Hub failed (HTTP 500): 500 Server Error;"),
        (LocalEntryNotFoundError("connection problem"), "cannot be reached"),
        (httpx2.ConnectError("refused"), "cannot be reached"),
        (TimeoutError("slow"), "cannot be reached"),
        (OSError(28, "No space left on device"), "could not save"),
    ],
)
def test_download_errors_are_one_line(monkeypatch, error, expected):
    calls = _fake_hub(monkeypatch, error)
    with pytest.raises(ModelNotFoundError) as info:
        pull_model(REPO)
    message = _one_line(info)
    assert expected in message
    assert "HF_HUB_OFFLINE" not in message  # mentioned only when it is set
    assert calls[-1]["repo_id"] == REPO and not calls[-1].get("local_files_only")


def test_download_asks_only_for_weights_and_configs(monkeypatch, offline_hub):
    calls = _fake_hub(monkeypatch, httpx2.ConnectError("refused"))
    with pytest.raises(ModelNotFoundError):
        resolve_model(REPO, download=True)
    assert [(call.get("filename"), call.get("local_files_only", False)) for call in calls] == [
        (None, True), ("config.json", False), (None, False)]  # the cache, config.json alone, then the snapshot
    for call in calls:
        assert "trust_remote_code" not in call
        assert call["cache_dir"] == offline_hub / "hub"
        assert "filename" in call or call["allow_patterns"] == list(ALLOW_PATTERNS)


@pytest.mark.parametrize(("error", "expected"), [
    (RemoteEntryNotFoundError("404 Client Error", response=_response(404)),
     f"the repository {REPO} has no config.json: it is not a ChatGLM-6B checkpoint"),
    (GatedRepoError("gated", response=_response(401)), f"{REPO} is gated: accept its terms"),
    (httpx2.ConnectError("refused"), "cannot be reached"),
])
def test_a_failed_config_download_is_one_line_and_downloads_nothing_more(monkeypatch, error, expected):
    calls = _fake_hub(monkeypatch, AssertionError("the snapshot must not be downloaded"), config_error=error)
    with pytest.raises(ModelNotFoundError) as info:
        pull_model(REPO)
    assert expected in _one_line(info)
    assert [call.get("filename") for call in calls if not call.get("local_files_only")] == ["config.json"]


CHATGLM3_CONFIG = {"_name_or_path": "THUDM/chatglm3-6b", "model_type": "chatglm", "architectures": ["ChatGLMModel"],
                   "auto_map": {"AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration"},
                   "padded_vocab_size": 65024, "multi_query_attention": True, "kv_channels": 128, "seq_length": 8192,
                   "ffn_hidden_size": 13696, "num_layers": 28, "hidden_size": 4096, "num_attention_heads": 32}
GLM4_CONFIG = {"_name_or_path": "THUDM/glm-4-9b-chat", "model_type": "chatglm", "padded_vocab_size": 151552,
               "rope_ratio": 500, "seq_length": 131072, "num_layers": 40, "multi_query_attention": True}


@pytest.mark.parametrize(("config", "family"), [(CHATGLM3_CONFIG, "ChatGLM3-6B"), (GLM4_CONFIG, "GLM-4")])
def test_pull_refuses_another_family_before_downloading_the_weights(monkeypatch, offline_hub, config, family):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls: list[dict] = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda *args, **kwargs: pytest.fail("the weights were asked for"))
    _fake_config_download(monkeypatch, calls, config)
    with pytest.raises(CheckpointError) as info:
        pull_model(REPO)
    message = _one_line(info)
    assert f"this is a {family} checkpoint, which is not supported" in message and "ChatGLM-6B" in message
    assert [(call["repo_id"], call["filename"], call["cache_dir"]) for call in calls] == [
        (REPO, "config.json", offline_hub / "hub")]  # the same cache the snapshot uses


def test_pull_of_a_chatglm_6b_repository_goes_on_to_the_snapshot(monkeypatch, offline_hub):
    calls = _fake_hub(monkeypatch, OSError(28, "No space left on device"))
    with pytest.raises(ModelNotFoundError, match="could not save"):
        pull_model(REPO)
    assert [call.get("filename") for call in calls if not call.get("local_files_only")] == ["config.json", None]


def test_allow_patterns_exclude_code():
    def allowed(name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in ALLOW_PATTERNS)

    for name in ("config.json", "ice_text.model", "pytorch_model-00001-of-00008.bin", "pytorch_model.bin.index.json",
                 "model.safetensors", "model.safetensors.index.json", "tokenizer_config.json"):
        assert allowed(name), name
    for name in ("modeling_chatglm.py", "quantization.py", "tokenization_chatglm.py", "README.md"):
        assert not allowed(name), name


@pytest.mark.parametrize(("ref", "expected"), [
    ("THUDM/chatglm-6b", True), ("THUDM/chatglm-6b-int4", True), ("chatglm-6b", False),
    ("a/b/c", False), ("a/b--c", False), ("/abs/path", False),
])
def test_is_repo_id(ref, expected):
    assert is_repo_id(ref) is expected


def test_model_info_fp16(fixture_dir):
    info = model_info(fixture_dir / "fp16")
    assert info["directory"] == str(fixture_dir / "fp16")
    assert info["config"] == {"hidden_size": 64, "num_layers": 2, "num_attention_heads": 4, "vocab_size": 130528,
                              "max_sequence_length": 2048, "quantization_bit": 0}
    assert [w["name"] for w in info["weights"]] == [f"pytorch_model-0000{i}-of-00004.bin" for i in range(1, 5)]
    sizes = [(fixture_dir / "fp16" / w["name"]).stat().st_size for w in info["weights"]]
    assert [w["size"] for w in info["weights"]] == sizes and info["total_size"] == sum(sizes)
    assert (info["precision"], info["sharded"], info["format"]) == ("fp16", True, "bin")
    assert info["layout"] == "fp16, 4 bin shards"


def test_model_info_int4(fixture_dir):
    info = model_info(fixture_dir / "int4")
    assert info["config"]["quantization_bit"] == 4
    assert info["weights"] == [{"name": "pytorch_model.bin",
                                "size": (fixture_dir / "int4" / "pytorch_model.bin").stat().st_size}]
    assert (info["precision"], info["sharded"], info["format"]) == ("int4", False, "bin")
    assert info["layout"] == "int4, single bin file"


def test_model_info_safetensors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"quantization_bit": 8, "num_layers": 28}), encoding="utf-8")
    (tmp_path / "model.safetensors").write_bytes(b"0" * 10)
    info = model_info(tmp_path)
    assert (info["precision"], info["format"], info["sharded"], info["total_size"]) == ("int8", "safetensors",
                                                                                       False, 10)
    assert info["config"]["num_layers"] == 28 and info["config"]["hidden_size"] is None


@pytest.mark.parametrize(("files", "expected"), [
    ({}, "has no config.json"),
    ({"config.json": "{not json"}, "is not readable JSON"),
    ({"config.json": "[1, 2]"}, "is not a JSON object"),
    ({"config.json": "{}"}, "has no weight files"),
])
def test_model_info_errors(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(CheckpointError) as error:
        model_info(tmp_path)
    assert expected in _one_line(error)


def test_model_info_needs_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        model_info(tmp_path / "missing")


def _fake_download(monkeypatch, sizes: dict[str, int], chunk: int = 1000) -> list[dict]:
    """Online mode with a snapshot_download that drives `tqdm_class` as huggingface_hub 2.x does, offline."""
    from huggingface_hub.utils._xet_progress_reporting import _update_transfer_bar
    from huggingface_hub.utils.tqdm import _create_progress_bar, hf_thread_map
    from huggingface_hub.utils.tqdm import tqdm as hf_tqdm

    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls: list[dict] = []

    def fake_snapshot_download(repo_id: str, **kwargs) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        if kwargs.get("local_files_only"):
            raise LocalEntryNotFoundError("not in the cache")
        cls = kwargs.get("tqdm_class") or hf_tqdm
        transfer = _create_progress_bar(cls=cls, log_level=20, name="huggingface_hub.snapshot_download.transfer",
                                        desc="Downloading bytes", total=0, initial=0, unit="B", unit_scale=True)
        written = _create_progress_bar(cls=cls, log_level=20, name="huggingface_hub.snapshot_download",
                                       desc="Reconstructing (incomplete total...)", total=0, initial=0, unit="B",
                                       unit_scale=True)

        def fetch(name: str) -> None:  # what snapshot_download's _AggregatedTqdm does for each file
            written.total += sizes[name]
            transfer.total += sizes[name]
            written.refresh()
            for start in range(0, sizes[name], chunk):
                written.update(min(chunk, sizes[name] - start))
                _update_transfer_bar(transfer, 3 * chunk)  # network bytes, with a growing estimated total

        hf_thread_map(fetch, list(sizes), desc=f"Fetching {len(sizes)} files", max_workers=1, tqdm_class=cls)
        transfer.set_description_str("Download complete")
        written.set_description("Reconstruction complete")
        snapshot = _cache_repo(Path(hub_cache_dir()).parent)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    _fake_config_download(monkeypatch, [])
    return calls


def test_download_progress_goes_to_the_callback_in_bytes(monkeypatch, capfd):
    monkeypatch.setenv("TQDM_POSITION", "-1")  # huggingface_hub's own bars would draw even on a pipe
    sizes = {"config.json": 300, "pytorch_model.bin": 250_000}
    calls = _fake_download(monkeypatch, sizes)
    reports: list[tuple[int, int, str]] = []
    folder = resolve_model(REPO, download=True, progress=lambda *report: reports.append(report))
    assert (folder / "config.json").is_file()
    assert capfd.readouterr().err == ""  # nothing drawn: a TUI owns the terminal
    assert issubclass(calls[-1]["tqdm_class"], huggingface_hub.utils.tqdm)
    assert reports[-1] == (sum(sizes.values()), sum(sizes.values()), f"downloading {REPO} (2 of 2 files)")
    assert all(message.startswith(f"downloading {REPO}") for _, _, message in reports)
    assert {total for _, total, _ in reports} == {300, 250_300}  # bytes written of the files started so far
    assert all(done <= total for done, total, _ in reports)
    assert [done for done, _, _ in reports] == sorted(done for done, _, _ in reports)
    assert len(reports) < 20  # throttled: not one report per 1000-byte chunk


def test_without_a_callback_huggingface_hub_draws_its_bars(monkeypatch, capfd):
    monkeypatch.setenv("TQDM_POSITION", "-1")
    calls = _fake_download(monkeypatch, {"config.json": 300})
    pull_model(REPO)
    assert calls[-1]["tqdm_class"] is None
    assert "Fetching 1 files" in capfd.readouterr().err


def test_download_progress_is_reported_with_bars_disabled(monkeypatch, capfd):
    from huggingface_hub.utils.tqdm import disable_progress_bars, enable_progress_bars

    _fake_download(monkeypatch, {"config.json": 300, "pytorch_model.bin": 5000})
    reports: list[tuple[int, int, str]] = []
    disable_progress_bars()  # what `chatglm ask` does when stderr is not a terminal
    try:
        pull_model(REPO, progress=lambda *report: reports.append(report))
    finally:
        enable_progress_bars()
    assert reports[-1][:2] == (5300, 5300) and capfd.readouterr().err == ""


def test_a_real_snapshot_download_reports_bytes(monkeypatch, capfd):
    """huggingface_hub's own snapshot_download, served by an in-process transport (no network)."""
    from huggingface_hub.utils import _http

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("TQDM_POSITION", "-1")
    files = {"config.json": b'{"hidden_size": 64}', "pytorch_model.bin": bytes(300_000), "modeling.py": b"x"}
    served: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        served.append(path)
        if path.startswith(f"/api/models/{REPO}/tree/"):
            return httpx2.Response(200, json=[{"type": "file", "path": name, "size": len(body), "oid": "0" * 40}
                                              for name, body in files.items()])
        if path == f"/api/models/{REPO}/revision/main":
            return httpx2.Response(200, json={"id": REPO, "sha": COMMIT,
                                              "siblings": [{"rfilename": name} for name in files]})
        name = path.rsplit("/", 1)[-1]
        # config.json is asked for alone first, by branch (main), then the snapshot's files by commit.
        if path in (f"/{REPO}/resolve/{COMMIT}/{name}", f"/{REPO}/resolve/main/{name}") and name in files:
            body = files[name]
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"etag-{name}"', "Content-Length": str(len(body))}
            return httpx2.Response(200, headers=headers, content=b"" if request.method == "HEAD" else body)
        return httpx2.Response(404)

    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(handler)))
    try:
        reports: list[tuple[int, int, str]] = []
        folder = pull_model(REPO, progress=lambda *report: reports.append(report))
    finally:
        _http.set_client_factory(_http.default_client_factory)
    assert sorted(path.name for path in folder.iterdir()) == ["config.json", "pytorch_model.bin"]
    # config.json comes first, alone (its family is checked before the weights); the snapshot then has it.
    config_size, weights_size = len(files["config.json"]), len(files["pytorch_model.bin"])
    assert reports[0] == (config_size, config_size, f"downloading {REPO}")
    assert reports[-1] == (weights_size, weights_size, f"downloading {REPO} (2 of 2 files)")
    assert sum(1 for path in served if path.endswith("/config.json")) <= 2  # HEAD and GET once, not again
    assert capfd.readouterr().err == ""
    assert not any("modeling" in path for path in served)


def test_model_info_names_the_family_and_whether_it_runs(fixture_dir, tmp_path):
    assert (model_info(fixture_dir / "int4")["family"], model_info(fixture_dir / "int4")["supported"]) == (
        "ChatGLM-6B", True)
    (tmp_path / "config.json").write_text(json.dumps(CHATGLM3_CONFIG), encoding="utf-8")
    (tmp_path / "model.safetensors").write_bytes(b"0")
    info = model_info(tmp_path)
    assert (info["family"], info["supported"]) == ("ChatGLM3-6B", False)
    assert info["config"]["vocab_size"] is None and info["total_size"] == 1  # the same summary keys for every family


def test_resolving_a_checkpoint_of_another_family_to_load_it_is_refused(tmp_path, offline_hub):
    local = tmp_path / "glm4"
    local.mkdir()
    (local / "config.json").write_text(json.dumps(GLM4_CONFIG), encoding="utf-8")
    with pytest.raises(CheckpointError) as error:
        resolve_model(str(local), download=True)  # what the engine's loader asks, before reading the tokenizer
    assert "this is a GLM-4 checkpoint, which is not supported" in _one_line(error)
    assert resolve_model(str(local), supported_only=False) == local  # `model info` and `model path`
    cached = _cache_repo(offline_hub, config=CHATGLM3_CONFIG)
    with pytest.raises(CheckpointError, match="this is a ChatGLM3-6B checkpoint"):
        resolve_model(REPO)
    assert resolve_model(REPO, supported_only=False) == cached
