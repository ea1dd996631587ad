"""`chatglm sessions …`: list, show, search, export, rename and delete saved conversations."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from chatglm_tui.cli.output import echo
from chatglm_tui.errors import ChatGLMError
from chatglm_tui.terminal.inert import inert_json, inert_line

if TYPE_CHECKING:
    from chatglm_tui.store import SessionStore

app = typer.Typer(help="Saved conversations (shared by `ask` and the chat app).", no_args_is_help=True)


def _open() -> SessionStore:
    from chatglm_tui.store import SessionStore, default_store_path

    return SessionStore(default_store_path())


class ExportError(ChatGLMError):
    """An export could not be written where it was asked to go."""


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


@app.command("list")
def list_sessions(limit: int = typer.Option(20, help="How many, newest first (0: all)."),
                  as_json: bool = typer.Option(False, "--json", help="One JSON array.")) -> None:
    """List conversations, newest first."""
    with _open() as store:
        conversations = store.list_conversations(limit=limit or None)
    if as_json:
        echo(inert_json([c.__dict__ for c in conversations], indent=2))
        return
    for c in conversations:
        echo(f"{c.id}  {_when(c.updated_at)}  {inert_line(c.title)}")


@app.command("show")
def show(session: str = typer.Argument(..., help="Id, unique id prefix or exact title.")) -> None:
    """Print a conversation (its current branch)."""
    with _open() as store:
        echo(store.export_markdown(store.resolve(session).id))


@app.command("search")
def search(text: str = typer.Argument(..., help="Words to find in any message."),
           limit: int = typer.Option(20, help="At most this many hits.")) -> None:
    """Find messages by full-text search."""
    with _open() as store:
        hits = store.search(text, limit=limit)
    for conversation, message in hits:
        snippet = inert_line(message.text)[:100]
        echo(f"{conversation.id}  {inert_line(conversation.title)}  [{message.role}] {snippet}")


@app.command("export")
def export(session: str = typer.Argument(..., help="Id, unique id prefix or exact title."),
           fmt: str = typer.Option("md", "--format", "-f", help="md (Markdown) or json."),
           output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file.")) -> None:
    """Export a conversation as Markdown or JSON."""
    if fmt not in ("md", "json"):
        raise typer.BadParameter("use md or json", param_hint="--format")
    with _open() as store:
        conversation = store.resolve(session)
        if fmt == "md":
            text = store.export_markdown(conversation.id)
        else:
            text = inert_json(store.export_json(conversation.id), indent=2)
    if output is None:
        echo(text)
        return
    try:
        output.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    except OSError as exc:
        raise ExportError(f"cannot write {output}: {exc.strerror or exc}; choose another file with -o") from exc


@app.command("rename")
def rename(session: str = typer.Argument(..., help="Id, unique id prefix or exact title."),
           title: str = typer.Argument(..., help="The new title.")) -> None:
    """Rename a conversation."""
    with _open() as store:
        store.rename(store.resolve(session).id, title)


@app.command("rm")
def remove(session: str = typer.Argument(..., help="Id, unique id prefix or exact title."),
           yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")) -> None:
    """Delete a conversation and its messages."""
    with _open() as store:
        conversation = store.resolve(session)
        question = f"Delete {conversation.id} “{inert_line(conversation.title)}”?"
        if not yes and not typer.confirm(question, default=False):
            raise typer.Exit(1)
        store.delete(conversation.id)
