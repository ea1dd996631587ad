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
