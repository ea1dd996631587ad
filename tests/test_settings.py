"""Settings: defaults, then the TOML file, then CHATGLM_* variables; every problem is a one-line ConfigError."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from chatglm_tui.config.settings import (
    FIELDS,
    ConfigError,
    Settings,
    apply_overrides,
    config_path,
    format_settings,
    load_settings,
)
from chatglm_tui.errors import ChatGLMError, GenerationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _error(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path, env or {})
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_with_no_file(tmp_path):
    settings, sources = load_settings(tmp_path / "missing.toml", {})
    assert settings == Settings()
    assert settings.model == "THUDM/chatglm-6b-int4" and settings.quantization == "int4"
    assert settings.seed is None and settings.instruction is None and settings.keymap == {}
    assert sources == {name: "default" for name in FIELDS}


def test_config_path_follows_chatglm_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATGLM_HOME", str(tmp_path))
    assert config_path() == tmp_path / "config" / "config.toml"
    assert not config_path().exists()  # looking it up creates nothing


def test_default_path_and_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATGLM_HOME", str(tmp_path))
    config_path().parent.mkdir(parents=True)
    config_path().write_text('theme = "light"\n', encoding="utf-8")
    monkeypatch.setenv("CHATGLM_TOP_K", "7")
    settings, sources = load_settings()
    assert (settings.theme, settings.top_k) == ("light", 7)
    assert sources["theme"] == "config file" and sources["top_k"] == "env CHATGLM_TOP_K"


def test_file_overrides_defaults(tmp_path):
    path = _write(tmp_path, """
model = "/models/chatglm-6b"
quantization = "none"
device = "cuda:1"
dtype = "bfloat16"
temperature = 0
top_p = 1
top_k = 0
repetition_penalty = 1.2
max_new_tokens = 64
seed = 42
instruction = "Be brief."
theme = "chatglm-light"
endpoint = "https://glm.example:8443/v1"
endpoint_model = "glm-4"
api_key = "k"
""")
    settings, sources = load_settings(path, {})
    assert settings == Settings(
        model="/models/chatglm-6b", quantization="none", device="cuda:1", dtype="bfloat16", temperature=0.0,
        top_p=1.0, top_k=0, repetition_penalty=1.2, max_new_tokens=64, seed=42, instruction="Be brief.",
        theme="chatglm-light", endpoint="https://glm.example:8443/v1", endpoint_model="glm-4", api_key="k",
    )
    assert isinstance(settings.temperature, float) and isinstance(settings.top_p, float)
    assert {sources[name] for name in FIELDS if name != "keymap"} == {"config file"}
    assert sources["keymap"] == "default"


def test_env_overrides_file_and_sources_per_field(tmp_path):
    path = _write(tmp_path, 'model = "a/b"\ntemperature = 0.5\ntop_k = 5\n')
    env = {
        "CHATGLM_TEMPERATURE": "0.1",
        "CHATGLM_SEED": "7",
        "CHATGLM_INSTRUCTION": "Answer in English.",
        "CHATGLM_MODEL": "c/d",
        "CHATGLM_HOME": "/somewhere",  # a path override for paths.py, not a setting
        "CHATGLM_SHARED": "/elsewhere",
    }
    settings, sources = load_settings(path, env)
    assert (settings.model, settings.temperature, settings.top_k) == ("c/d", 0.1, 5)
    assert (settings.seed, settings.instruction) == (7, "Answer in English.")
    assert sources["model"] == "env CHATGLM_MODEL"
    assert sources["temperature"] == "env CHATGLM_TEMPERATURE"
    assert sources["top_k"] == "config file"
    assert sources["seed"] == "env CHATGLM_SEED"
    assert sources["top_p"] == "default"


def test_env_can_unset_optional_values(tmp_path):
    path = _write(tmp_path, 'seed = 3\ninstruction = "x"\n')
    settings, sources = load_settings(path, {"CHATGLM_SEED": "none", "CHATGLM_INSTRUCTION": ""})
    assert settings.seed is None and settings.instruction is None
    assert sources["seed"] == "env CHATGLM_SEED"


def test_bad_toml_names_file_and_line(tmp_path):
    path = _write(tmp_path, 'model = "a/b"\ntemperature = = 1\n')
    message = _error(path)
    assert str(path) in message and "invalid TOML" in message and "line 2" in message


def test_config_error_is_a_chatglm_error():
    assert issubclass(ConfigError, ChatGLMError)


def test_unknown_key(tmp_path):
    path = _write(tmp_path, "temprature = 0.5\n")
    message = _error(path)
    assert "unknown key 'temprature'" in message and str(path) in message
    assert "did you mean 'temperature'" in message and "top_p" in message


def test_unknown_table_is_an_unknown_key(tmp_path):
    assert "unknown key 'generation'" in _error(_write(tmp_path, "[generation]\ntop_k = 3\n"))


def test_unreadable_file(tmp_path):
    (tmp_path / "config.toml").mkdir()
    assert "cannot read the config file" in _error(tmp_path / "config.toml")


def test_non_utf8_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b'theme = "\xff"\n')
    assert "not UTF-8" in _error(path)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('temperature = "hot"', 'invalid temperature = "hot"'),
        ("temperature = -0.1", "expected a number from 0 to 100"),
        ("top_p = 0", "invalid top_p = 0"),
        ("top_p = 1.5", "expected a number > 0 and <= 1"),
        ("top_k = -1", "expected an integer from 0 to 130528"),
        ("top_k = 2.5", "invalid top_k = 2.5"),
        ("max_new_tokens = 0", "expected an integer from 1 to 2000"),
        ("max_new_tokens = true", "invalid max_new_tokens = true"),
        ("repetition_penalty = 0", "expected a number from 1e-06 to 100"),
        ("seed = -1", "invalid seed = -1"),
        ('quantization = "int3"', "expected one of int4, int8, none"),
        ('dtype = "fp16"', "expected one of auto, float32, bfloat16, float16"),
        ('device = "gpu"', "expected auto, cpu, cuda, cuda:N or mps"),
        ('device = "cuda:x"', 'invalid device = "cuda:x"'),
        ('model = ""', 'invalid model = ""'),
        ("model = 3", "invalid model = 3"),
        ("temperature = nan", "invalid temperature = nan"),
        ("temperature = inf", "invalid temperature = inf"),
    ],
)
def test_bad_values_in_file(tmp_path, line, expected):
    path = _write(tmp_path, line + "\n")
    message = _error(path)
    assert expected in message and str(path) in message and "expected" in message


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("CHATGLM_TEMPERATURE", "hot", "invalid temperature = 'hot' in environment variable CHATGLM_TEMPERATURE"),
        ("CHATGLM_TOP_P", "2", "expected a number > 0 and <= 1"),
        ("CHATGLM_TOP_K", "1.5", "invalid top_k = '1.5'"),
        ("CHATGLM_SEED", "abc", "expected an integer from 0 to 18446744073709551615 (2**64 - 1), or unset"),
        ("CHATGLM_QUANTIZATION", "int2", "expected one of int4, int8, none"),
        ("CHATGLM_MODEL", "", "invalid model = ''"),
    ],
)
def test_bad_values_in_env(tmp_path, var, value, expected):
    message = _error(tmp_path / "missing.toml", {var: value})
    assert expected in message and var in message


def test_keymap_table(tmp_path):
    path = _write(tmp_path, 'theme = "x"\n[keymap]\n"chat.send" = "ctrl+j"\n"app.help" = "f1"\n')
    settings, sources = load_settings(path, {})
    assert settings.keymap == {"chat.send": "ctrl+j", "app.help": "f1"}
    assert sources["keymap"] == "config file"
    hash(settings)  # the frozen dataclass stays hashable despite the dict field


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('keymap = "ctrl+j"\n', "expected a [keymap] table"),
        ('[keymap]\n"chat.send" = 3\n', "invalid keymap entry 'chat.send' = 3"),
        ('[keymap]\n"chat.send" = ""\n', "expected a non-empty key name"),
    ],
)
def test_bad_keymap(tmp_path, text, expected):
    path = _write(tmp_path, text)
    message = _error(path)
    assert expected in message and str(path) in message


def test_format_settings_round_trips_through_toml(tmp_path):
    path = _write(tmp_path, 'instruction = "say \\"hi\\"\\n\\tthen stop \\\\ ok"\ntop_p = 0.25\n'
                            '[keymap]\n"chat.send" = "ctrl+j"\n')
    settings, sources = load_settings(path, {"CHATGLM_TEMPERATURE": "1e-05", "CHATGLM_SEED": "3"})
    text = format_settings(settings, sources)
    data = tomllib.loads(text)
    assert data["instruction"] == 'say "hi"\n\tthen stop \\ ok'
    assert data["temperature"] == 1e-05 and data["seed"] == 3
    assert data["keymap"] == {"chat.send": "ctrl+j"}
    reloaded, _ = load_settings(_write(tmp_path, text), {})
    assert reloaded == settings
    lines = text.splitlines()
    assert any(line.startswith("top_p = 0.25") and line.endswith("# config file") for line in lines)
    assert any(line.startswith("seed = 3") and line.endswith("# env CHATGLM_SEED") for line in lines)
    assert any(line.startswith("model = ") and line.endswith("# default") for line in lines)


def test_format_settings_leaves_unset_values_unset():
    settings = Settings()
    text = format_settings(settings, {name: "default" for name in FIELDS})
    assert "seed" not in tomllib.loads(text) and "# seed = (not set)" in text
    assert tomllib.loads(text)["keymap"] == {}


def test_format_settings_escapes_control_characters(tmp_path):
    settings = dataclasses.replace(Settings(), instruction="a\x00b\x7fc😀")
    data = tomllib.loads(format_settings(settings, {}))
    assert data["instruction"] == "a\x00b\x7fc😀"


def test_apply_overrides_replaces_and_validates():
    base = Settings()
    changed = apply_overrides(base, temperature=0, top_k=None, model="x/y", keymap={"app.help": "f2"})
    assert changed.temperature == 0.0 and isinstance(changed.temperature, float)
    assert changed.top_k == base.top_k and changed.model == "x/y" and changed.keymap == {"app.help": "f2"}
    assert base == Settings()  # the original is untouched (frozen)
    with pytest.raises(ConfigError, match=r"invalid top_p = 2\.0: expected a number > 0 and <= 1"):
        apply_overrides(base, top_p=2.0)
    with pytest.raises(ConfigError, match="expected one of int4, int8, none"):
        apply_overrides(base, quantization="int3")
    with pytest.raises(ConfigError, match="invalid max_new_tokens = true"):
        apply_overrides(base, max_new_tokens=True)
    with pytest.raises(TypeError, match="colour"):
        apply_overrides(base, colour="red")


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().model = "x"  # type: ignore[misc]


def test_settings_module_imports_no_heavy_packages():
    import subprocess

    code = "import sys, chatglm_tui.config.settings, chatglm_tui.model.hub; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.split())
    heavy = {"torch", "textual", "huggingface_hub", "chatglm_tui.model.chat"}  # model/ itself is light until used
    assert not loaded & heavy


# (field, a value that used to be accepted or is just past a bound, the allowed range the message must state)
OUT_OF_RANGE = [
    ("temperature", 1e308, "a number from 0 to 100 (0 means greedy; otherwise at least 1e-06)"),
    ("temperature", float("inf"), "a number from 0 to 100"),
    ("temperature", float("nan"), "a number from 0 to 100"),
    ("temperature", 100.5, "a number from 0 to 100"),
    ("temperature", 1e-300, "otherwise at least 1e-06"),
    ("top_p", float("nan"), "a number > 0 and <= 1"),
    ("repetition_penalty", 1e308, "a number from 1e-06 to 100 (1.0 turns it off)"),
    ("repetition_penalty", float("inf"), "a number from 1e-06 to 100"),
    ("repetition_penalty", float("nan"), "a number from 1e-06 to 100"),
    ("repetition_penalty", 1e-300, "a number from 1e-06 to 100"),
    ("seed", 2**64, "an integer from 0 to 18446744073709551615 (2**64 - 1), or unset"),
    ("seed", -1, "an integer from 0 to 18446744073709551615"),
    ("max_new_tokens", 10**12, "an integer from 1 to 2000 (the 2048-token window also holds the prompt)"),
    ("max_new_tokens", 2001, "an integer from 1 to 2000"),
    ("max_new_tokens", -5, "an integer from 1 to 2000"),
    ("top_k", -1, "an integer from 0 to 130528 (0 turns top-k off)"),
    ("top_k", 130_529, "an integer from 0 to 130528"),
    ("top_k", 10**30, "an integer from 0 to 130528"),
]
AT_THE_BOUNDS = [("temperature", 0.0), ("temperature", 1e-6), ("temperature", 100.0), ("repetition_penalty", 1e-6),
                 ("repetition_penalty", 100.0), ("seed", 0), ("seed", 2**64 - 1), ("max_new_tokens", 1),
                 ("max_new_tokens", 2000), ("top_k", 0), ("top_k", 130_528)]


@pytest.mark.parametrize(("name", "value", "allowed"), OUT_OF_RANGE)
def test_out_of_range_values_are_refused_on_every_path(tmp_path, name, value, allowed):
    expected = f"invalid {name} = {value!r}"
    with pytest.raises(ConfigError) as raised:
        apply_overrides(Settings(), **{name: value})  # the CLI's --temperature etc. and the TUI's settings form
    message = str(raised.value)
    assert message.startswith(f"{expected}: expected ") and allowed in message and "\n" not in message
    in_file = _error(_write(tmp_path, f"{name} = {value!r}\n"))
    assert in_file.startswith(f"{expected} in {tmp_path / 'config.toml'}: expected ") and allowed in in_file
    var = f"CHATGLM_{name.upper()}"
    in_env = _error(tmp_path / "missing.toml", {var: repr(value)})
    assert in_env.startswith(f"invalid {name} = {repr(value)!r} in environment variable {var}: expected ")
    assert allowed in in_env


@pytest.mark.parametrize(("name", "value"), AT_THE_BOUNDS)
def test_values_at_the_bounds_are_accepted(tmp_path, name, value):
    assert getattr(apply_overrides(Settings(), **{name: value}), name) == value
    assert getattr(load_settings(_write(tmp_path, f"{name} = {value!r}\n"), {})[0], name) == value
    env = {f"CHATGLM_{name.upper()}": repr(value)}
    assert getattr(load_settings(tmp_path / "missing.toml", env)[0], name) == value


def test_the_bounds_are_what_the_sampler_really_takes():
    torch = pytest.importorskip("torch")
    from chatglm_tui.model.params import (
        MAX_REPETITION_PENALTY,
        MAX_SEED,
        MAX_TEMPERATURE,
        MAX_TOP_K,
        MIN_DIVISOR,
        GenerationParams,
    )
    from chatglm_tui.model.sampling import TokenSampler

    logits = torch.randn(1, 1000, generator=torch.Generator().manual_seed(0)) * 30  # (1, V) real-model sized
    ids = torch.arange(0, 1000, 7).unsqueeze(0)  # (1, T): many tokens get the repetition penalty
    for temperature, penalty in [(MIN_DIVISOR, MIN_DIVISOR), (MIN_DIVISOR, MAX_REPETITION_PENALTY),
                                 (MAX_TEMPERATURE, MIN_DIVISOR), (MAX_TEMPERATURE, MAX_REPETITION_PENALTY)]:
        sampler = TokenSampler(GenerationParams(temperature=temperature, repetition_penalty=penalty,
                                                top_k=MAX_TOP_K, top_p=1.0, seed=MAX_SEED), 1000)
        scores = sampler.scores(ids, logits) / temperature  # penalty (and the guard), then temperature
        assert bool(torch.isfinite(scores).all()) and scores.count_nonzero() > 1  # the guard did not fire
        assert 0 <= sampler(ids, logits) < 1000
    # Just past the bounds every reply would fail. The one params type refuses such values, so they are forced in
    # here (bypassing its check) to show what the sampler would do with them.
    past_seed, tiny_temperature, huge = GenerationParams(), GenerationParams(top_p=1.0), GenerationParams()
    object.__setattr__(past_seed, "seed", MAX_SEED + 1)
    object.__setattr__(tiny_temperature, "temperature", 1e-300)
    object.__setattr__(huge, "repetition_penalty", 1e308)
    with pytest.raises((ValueError, RuntimeError)):
        TokenSampler(past_seed, 1000)
    with pytest.raises(RuntimeError, match="probability tensor"):  # a tiny temperature overflows to inf
        TokenSampler(tiny_temperature, 1000)(ids, logits)
    for name, value in [("seed", MAX_SEED + 1), ("temperature", 1e-300), ("repetition_penalty", 1e308)]:
        with pytest.raises(GenerationError, match=f"invalid {name}"):
            GenerationParams(**{name: value})
    huge_penalty = TokenSampler(huge, 1000)
    forced = huge_penalty.scores(ids, logits)  # the penalty makes scores infinite: the guard fires
    assert float(forced[5]) == 5e4 and int(forced.count_nonzero()) == 1
    assert {huge_penalty(ids, logits) for _ in range(5)} == {5}  # so token 5 comes every time


@pytest.mark.parametrize("kind", ["fifo", "character device"])
def test_a_config_path_that_is_not_a_file_is_refused_without_hanging(tmp_path, monkeypatch, kind, bounded):
    import os

    monkeypatch.setenv("CHATGLM_HOME", str(tmp_path))
    path = config_path()
    path.parent.mkdir(parents=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/null")  # harmless to read by mistake, unlike /dev/zero, which never ends
    error = bounded(load_settings, path if kind == "fifo" else None)
    assert isinstance(error, ConfigError)
    shown = "a FIFO (named pipe)" if kind == "fifo" else "a character device"
    assert str(error) == (f"cannot read the config file {path}: it is {shown}, not a file; "
                          "replace it with a TOML file, or remove it to use the defaults")


def test_the_endpoint_settings_and_a_key_that_is_never_shown(tmp_path):
    path = _write(tmp_path, 'endpoint = "http://gpu-box:8000"\nendpoint_model = "chatglm-6b"\n')
    settings, sources = load_settings(path, {"CHATGLM_API_KEY": "s3cret"})
    assert (settings.endpoint, settings.endpoint_model, settings.api_key) == ("http://gpu-box:8000", "chatglm-6b",
                                                                             "s3cret")
    shown = format_settings(settings, sources)
    assert "s3cret" not in shown and "# api_key = (set, not shown)" in shown
    assert 'endpoint = "http://gpu-box:8000"' in shown
    with pytest.raises(ConfigError, match=r"invalid endpoint = \"gpu-box:8000\".*an http:// or https:// URL"):
        apply_overrides(Settings(), endpoint="gpu-box:8000")
    assert load_settings(tmp_path / "none.toml", {"CHATGLM_ENDPOINT": ""})[0].endpoint is None


# ---------------------------------------------------------------- `config show` checks the keymap


def test_format_settings_flags_unknown_binding_ids_and_conflicting_keys(tmp_path):
    # The README's old example: ctrl+o was already chat.find, so the footer said "New line" but ctrl+o still filtered.
    path = _write(tmp_path, '[keymap]\n"chat.newline" = "ctrl+o"\n"chat.sned" = "x"\n"chat.copy_code" = "f6"\n')
    settings, sources = load_settings(path, {})
    text = format_settings(settings, sources)
    lines = text.splitlines()
    assert '"chat.sned" = "x"   # unknown binding id: ignored (F1 in the app lists them)' in lines
    assert '"chat.copy_code" = "f6"' in lines and '"chat.newline" = "ctrl+o"' in lines  # fine ones: no comment
    [conflict] = [line for line in lines if line.startswith("# conflict:")]
    assert "ctrl+o" in conflict and "chat.find (default)" in conflict and "chat.newline ([keymap])" in conflict
    assert "give chat.newline another key" in conflict
    assert tomllib.loads(text)["keymap"] == settings.keymap  # the comments keep it valid TOML


def test_format_settings_keeps_a_strange_key_inside_its_comment():
    strange = "z\n[x]\u001b"  # a key is the user's text: it must not end the comment or reach the terminal raw
    settings = dataclasses.replace(Settings(), keymap={"chat.newline": strange, "chat.find": strange})
    text = format_settings(settings, {})
    assert [line for line in text.splitlines() if line.startswith("# conflict:")]
    assert tomllib.loads(text)["keymap"] == settings.keymap and "x" not in tomllib.loads(text)
    assert "\u001b" not in text


def test_format_settings_without_problems_adds_no_comment():
    settings = dataclasses.replace(Settings(), keymap={"chat.newline": "ctrl+t", "app.help": "f1,f12"})
    assert "# conflict" not in format_settings(settings, {}) and "unknown" not in format_settings(settings, {})


def test_config_show_prints_the_keymap_problems(tmp_path):
    import os
    import subprocess

    home = tmp_path / "home"
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.toml").write_text('[keymap]\n"chat.newline" = "ctrl+o"\n"nope" = "f9"\n')
    shown = subprocess.run([sys.executable, "-m", "chatglm_tui", "config", "show"], capture_output=True, text=True,
                           env={**os.environ, "CHATGLM_HOME": str(home)}, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert '"nope" = "f9"   # unknown binding id' in shown.stdout
    assert "# conflict: ctrl+o is bound to chat.find (default) and chat.newline ([keymap])" in shown.stdout


def test_the_keymap_data_loads_no_textual():
    import subprocess

    code = ("import sys, chatglm_tui.config.keymap, chatglm_tui.config.settings; "
            "print(any(m.split('.')[0] == 'textual' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"
