"""`chatglm config`: the effective configuration and where it lives."""

from __future__ import annotations

import typer

from chatglm_tui.cli.output import echo

app = typer.Typer(help="Show the effective configuration and where it lives.", no_args_is_help=True)


@app.command("show")
def config_show() -> None:
    """Print every setting with its value and where it came from (default, config file, environment); keymap ids
    that name no binding and keys given to two bindings are flagged in comments."""
    from chatglm_tui.config.settings import format_settings, load_settings

    echo(format_settings(*load_settings()))


@app.command("path")
def config_path_command() -> None:
    """Print the path of the config file (it need not exist)."""
    from chatglm_tui.config.settings import config_path

    echo(str(config_path()))
