"""`chatglm model …`: download a checkpoint, describe it, print where it is."""

from __future__ import annotations

import sys
from typing import Any, Optional

import typer

from chatglm_tui.cli.output import echo
from chatglm_tui.terminal.inert import inert_json, inert_line
from chatglm_tui.terminal.wording import counted, human_size

app = typer.Typer(help="Model checkpoints: download, inspect, locate.", no_args_is_help=True)
_REF_HELP = "A checkpoint directory or Hub repo id (default: the configured model)."


def _ref(ref: Optional[str]) -> str:
    if ref:
        return ref
    from chatglm_tui.config.settings import load_settings

    return load_settings()[0].model


@app.command("pull")
def pull(ref: Optional[str] = typer.Argument(None, help=_REF_HELP)) -> None:
    """Download a model from the Hugging Face Hub (only its weights, config and tokenizer; never code)."""
    from chatglm_tui.cli.output import is_terminal
    from chatglm_tui.model.hub import pull_model, show_download_progress

    show_download_progress(is_terminal(sys.stderr))
    echo(str(pull_model(_ref(ref))))


@app.command("path")
def path(ref: Optional[str] = typer.Argument(None, help=_REF_HELP)) -> None:
    """Print the local directory of a model (without downloading)."""
    from chatglm_tui.model.hub import resolve_model

    echo(str(resolve_model(_ref(ref), supported_only=False)))


def _backend_plan(directory: object) -> dict[str, str]:
    """Which backend the configured device, dtype and quantization would run this checkpoint on, and its numerics."""
    from chatglm_tui.config.settings import load_settings
    from chatglm_tui.errors import ChatGLMError
    from chatglm_tui.model.chat import plan_load

    settings = load_settings()[0]
    quantization = None if settings.quantization == "none" else settings.quantization
    try:
        backend = plan_load(str(directory), quantization, settings.device, settings.dtype)[1]
    except ChatGLMError as exc:  # e.g. device = "cuda" configured on a machine without one: still describe the files
        return {"backend": f"none here: {exc}"}
    return {"backend": backend.describe(), "numerics": backend.numerics}


@app.command("info")
def info(ref: Optional[str] = typer.Argument(None, help=_REF_HELP),
         as_json: bool = typer.Option(False, "--json", help="One JSON object.")) -> None:
    """Describe a local model: sizes, layout, quantization, files, and the backend it would run on here."""
    from chatglm_tui.model.hub import model_info, resolve_model

    directory = resolve_model(_ref(ref), supported_only=False)  # describe any checkpoint, and say if it runs
    details = model_info(directory)
    if details["supported"]:
        details.update(_backend_plan(directory))
    else:
        details["backend"] = "none: only ChatGLM-6B checkpoints run here"
    if as_json:
        echo(inert_json(details, indent=2))  # the exact data: sizes in bytes
        return
    for line in describe(details):
        echo(line)


def describe(details: dict[str, Any]) -> list[str]:
    """`model info` for people: `key: value` lines, sizes such as "3.9 GB", the config and the files indented.

    Every value from the checkpoint (names, the directory, config values) is made one inert line.
    """
    family = inert_line(str(details["family"]))
    if not details["supported"]:
        family += " (not supported: chatglm-tui runs only ChatGLM-6B)"
    weights = [(inert_line(weight["name"]), human_size(weight["size"])) for weight in details["weights"]]
    lines = [f"directory: {inert_line(details['directory'])}", f"family: {family}", f"layout: {details['layout']}",
             f"size: {human_size(details['total_size'])} in {counted(len(weights), 'weight file')}", "config:"]
    lines += [f"  {key}: {inert_line(str(value))}" for key, value in details["config"].items() if value is not None]
    width = max((len(name) for name, _ in weights), default=0)
    lines += ["weights:"] + [f"  {name:<{width}}  {size:>9}" for name, size in weights]
    lines += [f"{key}: {inert_line(str(details[key]))}" for key in ("backend", "numerics") if key in details]
    return lines
