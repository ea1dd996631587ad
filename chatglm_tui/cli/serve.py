"""`chatglm serve`: the local model behind an OpenAI-compatible HTTP API (uvicorn), for editors, scripts, other
chat tools, and `chatglm --endpoint` on other machines."""

from __future__ import annotations

import errno
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from chatglm_tui.cli import options
from chatglm_tui.cli.output import echo
from chatglm_tui.errors import ChatGLMError

if TYPE_CHECKING:
    from chatglm_tui.config.settings import Settings
    from chatglm_tui.server.app import OnFinished

API_KEY_VARIABLE = "CHATGLM_SERVE_API_KEY"


class ServeError(ChatGLMError):
    """The server cannot start: the address is taken or not allowed."""


@dataclass(frozen=True)
class ServeOptions:
    host: str
    port: int
    name: str | None
    api_key: str | None
    max_pending: int
    save: bool


def serve(
    model: options.Model = None,
    quantization: options.Quantization = None,
    dtype: options.Dtype = None,
    device: options.Device = None,
    host: str = typer.Option("127.0.0.1", help="The address to listen on (0.0.0.0: every interface; then set "
                                               "--api-key)."),
    port: int = typer.Option(8000, min=0, max=65535, help="The port (0: any free one; the address is printed)."),
    name: Optional[str] = typer.Option(None, help="The model name clients ask for (default: the checkpoint's "
                                                  "folder or repo name, e.g. chatglm-6b-int4)."),
    api_key: Optional[str] = typer.Option(None, envvar=API_KEY_VARIABLE, help="Require this key on every request "
                                          f"(Authorization: Bearer KEY); also read from {API_KEY_VARIABLE}."),
    max_pending: int = typer.Option(16, min=1, help="Requests waiting for or using the model at once; more are "
                                                    "answered 429."),
    save: bool = typer.Option(False, "--save", help="Save every exchange to the session store (off: nothing is "
                                                    "saved)."),
) -> None:
    """Serve the model over an OpenAI-compatible API: /v1/chat/completions, /v1/models, /health."""
    from chatglm_tui.config.settings import apply_overrides, load_settings

    settings = apply_overrides(load_settings()[0], model=model, quantization=quantization, dtype=dtype,
                               device=device)
    raise typer.Exit(run_server(settings, ServeOptions(host, port, name, api_key or None, max_pending, save)))


def run_server(settings: Settings, serve_options: ServeOptions) -> int:
    """Load the model, listen, and serve until Ctrl+C or SIGTERM; the address is printed on stderr."""
    import uvicorn

    from chatglm_tui.cli.engines import load_with_progress
    from chatglm_tui.cli.output import StatusLine
    from chatglm_tui.engine.worker import worker_for
    from chatglm_tui.server.app import ServerOptions, make_server_app

    listener = _listen(serve_options.host, serve_options.port)  # before loading: a taken port fails at once
    engine = worker_for(settings)  # always the local model: serving a remote one would only add a hop
    try:
        load_with_progress(engine, StatusLine(sys.stderr))
        directory = engine.glm.path if engine.glm is not None else None
        tokenizer = directory / "ice_text.model" if directory is not None else None
        name = serve_options.name or _served_name(settings.model)
        server_options = ServerOptions(name, settings.generation, serve_options.api_key, serve_options.max_pending,
                                       tokenizer if tokenizer is not None and tokenizer.is_file() else None,
                                       _saver(settings) if serve_options.save else None)
        app = make_server_app(engine, server_options)
        host, port = listener.getsockname()[:2]
        # The name comes from --name or the model's path: written inert, like all text a user can choose.
        echo(f"chatglm serve: {name} at http://{_url_host(host)}:{port}/v1 (Ctrl+C stops)", err=True)
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        engine.close()
        listener.close()
    return 0


def _listen(host: str, port: int) -> socket.socket:
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        reason = str(exc.strerror or exc).split(" (while attempting")[0]
        advice = ("pick another --port (0 takes any free one)" if exc.errno == errno.EADDRINUSE
                  else "check --host (an address of this machine, e.g. 127.0.0.1 or 0.0.0.0) and --port")
        raise ServeError(f"cannot listen on {host}:{port}: {reason}: {advice}") from None


def _served_name(model: str) -> str:
    """The name clients use by default: the last part of the checkpoint path or repo id."""
    return Path(model.rstrip("/")).name or model


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _saver(settings: Settings) -> OnFinished:
    """`--save`: each exchange becomes a conversation in the session store (opened per save: any thread)."""
    from chatglm_tui.engine.protocol import ChatRequest, GenerationFinished
    from chatglm_tui.session.chat_session import ChatSession
    from chatglm_tui.store import SessionStore, default_store_path

    def save(request: ChatRequest, finished: GenerationFinished) -> None:
        with SessionStore(default_store_path()) as store:
            ChatSession(store, settings).record(request, finished)

    return save
