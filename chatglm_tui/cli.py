"""The `chatglm` command. Heavy imports (torch, textual) happen inside commands so `--help` is instant."""

from __future__ import annotations

import sys

import typer

from chatglm_tui import __version__
from chatglm_tui.errors import ChatGLMError

app = typer.Typer(add_completion=False, help="A fast, faithful terminal chat for ChatGLM-6B.",
                  context_settings={"help_option_names": ["-h", "--help"]})


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"chatglm-tui {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def root(ctx: typer.Context,
         version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """Chat with ChatGLM-6B in the terminal."""
    if ctx.invoked_subcommand is None:
        typer.echo("chatglm: the chat app is not part of this version yet; use the Python API "
                   "(see README: `from chatglm_tui.model import load_model`) or `chatglm --help`.", err=True)
        raise typer.Exit(1)


@app.command("version")
def version_command() -> None:
    """Print the version."""
    typer.echo(f"chatglm-tui {__version__}")


@app.command()
def bench(
    config: str = typer.Option("6b", help="Model size: 6b (ChatGLM-6B) or tiny."),
    quantization: str = typer.Option("int4", help="int4 or int8."),
    prompt_tokens: int = typer.Option(512, help="Length of the random prompt to prefill."),
    new_tokens: int = typer.Option(128, help="Tokens to decode after it."),
    threads: int = typer.Option(0, help="Threads (0: torch's default, the physical cores)."),
    group_size: int = typer.Option(0, help="int4 inputs per scale (0: the default, 128)."),
    model: str = typer.Option("", help="Load this checkpoint directory instead of random weights "
                                       "(measures the real load, through the quantized cache)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", help="auto (the fast int4/int8 kernels on the CPU, float16 on GPUs), "
                                           "float32 (the exact path), bfloat16 or float16."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
) -> None:
    """Measure load, prefill and decode speed and memory on random weights (no download)."""
    from chatglm_tui.model.bench import format_table, run_bench

    result = run_bench(config, quantization, prompt_tokens, new_tokens, threads or None, group_size or None,
                       model or None, device, dtype)
    typer.echo(result.to_json() if as_json else format_table(result))


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and a non-zero exit, no traceback."""
    try:
        app()
    except ChatGLMError as exc:
        typer.echo(f"chatglm: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("chatglm: interrupted", err=True)
        sys.exit(130)
