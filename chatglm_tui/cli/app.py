"""The `chatglm` command. Heavy imports (torch, textual) happen inside commands so `--help` is instant.

Exit codes: 0 ok, 1 a user error (one line on stderr), 2 usage, 130 interrupted (Ctrl+C).
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import NoReturn, Optional

import typer

from chatglm_tui import __version__
from chatglm_tui.cli import options
from chatglm_tui.cli.output import EXIT_READER_GONE, discard_output
from chatglm_tui.errors import ChatGLMError
from chatglm_tui.terminal.inert import inert_line

app = typer.Typer(add_completion=False, help="A fast, faithful terminal chat for ChatGLM-6B.",
                  context_settings={"help_option_names": ["-h", "--help"]}, rich_markup_mode=None)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"chatglm-tui {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
    model: options.Model = None,
    quantization: options.Quantization = None,
    dtype: options.Dtype = None,
    device: options.Device = None,
    endpoint: options.Endpoint = None,
    endpoint_model: options.EndpointModel = None,
    api_key: options.ApiKey = None,
    theme: Optional[str] = typer.Option(None, help="Colour theme (the choice made in the app is saved)."),
    continue_last: bool = typer.Option(False, "--continue", "-c", help="Open the last conversation."),
    session: Optional[str] = typer.Option(None, "--session", "-s", help="Open this conversation (id, unique id "
                                                                         "prefix or exact title)."),
    demo: bool = typer.Option(False, "--demo", help="Try the app with scripted replies (no model is loaded)."),
) -> None:
    """Chat with ChatGLM-6B in the terminal. With no command, opens the chat app."""
    if ctx.invoked_subcommand is not None:
        chat_options = (model, quantization, dtype, device, endpoint, endpoint_model, api_key, theme, session,
                        continue_last or None, demo or None)
        if any(value not in (None, False) for value in chat_options):
            raise typer.BadParameter("chat options go without a command: `chatglm --model PATH`, or after "
                                     f"the command: `chatglm {ctx.invoked_subcommand} --help`")
        return
    from chatglm_tui.cli.chat import ChatOptions, run_chat
    from chatglm_tui.config.settings import apply_overrides, load_settings

    settings, _ = load_settings()
    settings = apply_overrides(settings, model=model, quantization=quantization, dtype=dtype, device=device,
                               endpoint=endpoint, endpoint_model=endpoint_model, api_key=api_key, theme=theme)
    raise typer.Exit(run_chat(ChatOptions(settings, continue_last, session, demo)))


@app.command("version")
def version_command() -> None:
    """Print the version."""
    typer.echo(f"chatglm-tui {__version__}")


@app.command()
def ask(
    question: Optional[str] = typer.Argument(None, help="The question. With text piped on stdin, the question "
                                                        "about it; without one, the text is summarized."),
    model: options.Model = None,
    quantization: options.Quantization = None,
    dtype: options.Dtype = None,
    device: options.Device = None,
    endpoint: options.Endpoint = None,
    endpoint_model: options.EndpointModel = None,
    api_key: options.ApiKey = None,
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature (0: greedy)."),
    top_p: Optional[float] = typer.Option(None, help="Nucleus sampling mass."),
    top_k: Optional[int] = typer.Option(None, help="Sample among this many best tokens (0: all)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Longest reply, in tokens."),
    seed: Optional[int] = typer.Option(None, help="Random seed: the same seed gives the same reply."),
    greedy: bool = typer.Option(False, "--greedy", help="Always take the most likely token (no sampling)."),
    instruction: Optional[str] = typer.Option(None, help="An instruction the model follows for this chat."),
    continue_last: bool = typer.Option(False, "--continue", "-c", help="Continue the last conversation."),
    session: Optional[str] = typer.Option(None, "--session", "-s", help="Continue this conversation (id, "
                                                                         "unique id prefix or exact title)."),
    no_save: bool = typer.Option(False, "--no-save", help="Do not save this exchange."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (reply, tokens, timings, id)."),
    render: bool = typer.Option(False, "--render", help="Render the reply as Markdown (on a terminal)."),
) -> None:
    """Ask one question, or summarize / ask about text piped on stdin; the reply streams to stdout."""
    from chatglm_tui.cli.ask import AskOptions, run_ask
    from chatglm_tui.config.settings import apply_overrides, load_settings

    settings, _ = load_settings()
    settings = apply_overrides(settings, model=model, quantization=quantization, dtype=dtype, device=device,
                               endpoint=endpoint, endpoint_model=endpoint_model, api_key=api_key,
                               temperature=0.0 if greedy else temperature, top_p=top_p, top_k=top_k,
                               max_new_tokens=max_new_tokens, seed=seed, instruction=instruction)
    options = AskOptions(question, settings, continue_last, session, not no_save, as_json, render)
    raise typer.Exit(run_ask(options, sys.stdin, sys.stdout, sys.stderr))


def _register_commands() -> None:
    """The commands that live in modules of their own (each imports its heavy parts when it runs)."""
    from chatglm_tui.cli import bench, config, model, serve, sessions

    app.command("bench")(bench.bench)
    app.command("serve")(serve.serve)
    app.add_typer(config.app, name="config")
    app.add_typer(sessions.app, name="sessions")
    app.add_typer(model.app, name="model")


_register_commands()


def undecodable_argument(argv: list[str]) -> str | None:
    """A one-line complaint about the first argument that is not valid UTF-8, or None if all are."""
    for position, argument in enumerate(argv, start=1):
        try:
            argument.encode("utf-8")
        except UnicodeEncodeError:  # Python keeps undecodable bytes as lone surrogates (surrogateescape)
            raw = argument.encode("utf-8", "surrogateescape")
            return (f"argument {position} ({raw!r}) is not valid UTF-8: pass UTF-8 text, e.g. convert it with "
                    "`iconv -t UTF-8`")
    return None


def _fail(message: str, code: int) -> NoReturn:
    """Say `message` as one inert line on stderr (if stderr can still take it) and exit with `code`."""
    try:
        sys.stderr.write(f"chatglm: {inert_line(message)}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # stderr closed or gone: the exit code still tells
        pass
    sys.exit(code)


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and a non-zero exit, no traceback.

    CHATGLM_DEBUG=1 prints the traceback as well.
    """
    from chatglm_tui.model.memory import return_large_frees_to_the_os

    return_large_frees_to_the_os()
    problem = undecodable_argument(sys.argv[1:])
    if problem is not None:
        _fail(problem, 2)
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # usage errors (bad options): the parser's message, inert, exit 2
        _fail(_usage_message(exc), getattr(exc, "exit_code", 2))
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    except BrokenPipeError:  # the reader of stdout left (`chatglm sessions list | head`): quietly, as SIGPIPE
        discard_output(sys.stdout)
        sys.exit(EXIT_READER_GONE)
    except ChatGLMError as exc:
        if os.environ.get("CHATGLM_DEBUG"):
            traceback.print_exc()
        _fail(str(exc), exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def _usage_message(exc: typer.TyperException) -> str:
    ctx = getattr(exc, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return f"{exc.format_message()}{hint}"
