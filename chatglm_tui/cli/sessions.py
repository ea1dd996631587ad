"""`chatglm sessions …`: list, show, search, export, import, rename and delete saved conversations."""

from __future__ import annotations

import datetime
import errno
import json
import os
import secrets
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from chatglm_tui.cli.output import echo
from chatglm_tui.errors import ChatGLMError
from chatglm_tui.paths import NotAFileError, open_regular_file
from chatglm_tui.terminal.inert import inert_json, inert_line
from chatglm_tui.terminal.wording import counted

if TYPE_CHECKING:
    from chatglm_tui.store import SessionStore

app = typer.Typer(help="Saved conversations (shared by `ask` and the chat app).", no_args_is_help=True)

_SESSION_HELP = "Id, unique id prefix or exact title."
_EXPORT_HINT = "give the file `chatglm sessions export ID --format json -o FILE` wrote"
# An export holds text only; far beyond any conversation, and still a size that is safe to read into memory.
MAX_IMPORT_BYTES = 1 << 30
# Errors of link() on filesystems that have no hard links (FAT, some network mounts): replace() is used there.
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV}


def _open() -> SessionStore:
    from chatglm_tui.store import SessionStore, default_store_path

    return SessionStore(default_store_path())


class ExportError(ChatGLMError):
    """An export could not be written where it was asked to go."""


class ImportFileError(ChatGLMError):
    """A file given to `sessions import` cannot be read, or is not a JSON export."""


class NotConfirmedError(ChatGLMError):
    """A deletion needed a yes on stdin, which had nothing more to read: like a missing option, a usage error."""

    exit_code = 2


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
def show(session: str = typer.Argument(..., help=_SESSION_HELP)) -> None:
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
def export(session: str = typer.Argument(..., help=_SESSION_HELP),
           fmt: str = typer.Option("md", "--format", "-f", help="md (Markdown) or json (every branch; importable)."),
           output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this new file."),
           force: bool = typer.Option(False, "--force", help="Replace the -o file if it exists.")) -> None:
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
    write_export(output, text if text.endswith("\n") else text + "\n", force=force)


def write_export(path: Path, text: str, *, force: bool = False) -> None:
    """Write `text` to the file `path`: whole or not at all, and never over an existing file unless `force`.

    The text goes to a temporary file beside the target, synced, then renamed into place, so a full disk or an
    interrupted export never leaves half a file (nor harms the file being replaced). Without `force` the rename
    is a hard link, which refuses an existing name even if a file appeared after the check. A FIFO or a device
    (`-o /dev/stdout`) is a stream, not a file to keep: it is written directly.
    """
    try:
        kind = os.stat(path).st_mode if path.exists() else None  # of what a symlink names
        if kind is not None and stat.S_ISDIR(kind):
            raise ExportError(f"{path} is a directory: give a file name with -o, e.g. -o {path}/conversation.md")
        if kind is not None and not stat.S_ISREG(kind):
            with open(path, "w", encoding="utf-8") as stream:
                stream.write(text)
            return
        if kind is not None and not force:
            raise ExportError(f"{path} already exists: add --force to replace it, or choose another file with -o")
        target = Path(os.path.realpath(path))  # through a symlink: replace the file it names, not the link
        temporary = _written_beside(target, text)
        try:
            _move_into_place(temporary, target, path, force)
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}; choose another file with -o") from exc


def _written_beside(target: Path, text: str) -> Path:
    """A new hidden file in `target`'s folder holding `text`, flushed to disk (removed again if that fails)."""
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    # 0o666 with O_EXCL: the umask applies as for any new file (mkstemp's 0600 would stick to the export).
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(text.encode("utf-8"))
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _move_into_place(temporary: Path, target: Path, shown: Path, force: bool) -> None:
    """Give the finished `temporary` file the name `target` (replacing a file only if `force`)."""
    if force:
        os.replace(temporary, target)
        return
    try:
        os.link(temporary, target)  # atomic, and fails on an existing name: nothing is ever replaced
    except FileExistsError:
        raise ExportError(f"{shown} already exists: add --force to replace it, or choose another file with -o"
                          ) from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        os.replace(temporary, target)  # no hard links here: the existence check above has to do


@app.command("import")
def import_conversation(file: Path = typer.Argument(..., help="A JSON export (`sessions export --format json`).")
                        ) -> None:
    """Add a conversation from a JSON export, as a new conversation (a new id) with every message and branch."""
    data = read_export(file)
    with _open() as store:
        conversation = store.import_json(data, fresh_id=True)  # one transaction: all of it or nothing
        messages = len(store.all_messages(conversation.id))
    echo(f"imported {conversation.id} “{inert_line(conversation.title)}” ({counted(messages, 'message')}) "
         f"from {inert_line(str(file))}")


def read_export(path: Path) -> object:
    """The JSON value in `path`, refusing a FIFO or device (which would hang or never end) before reading it."""
    try:
        with open_regular_file(path) as file:
            raw = file.read(MAX_IMPORT_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise ImportFileError(f"cannot import {path}: there is no such file; {_EXPORT_HINT}") from None
    except NotAFileError as exc:
        raise ImportFileError(f"cannot import {path}: {exc.strerror}; {_EXPORT_HINT}") from None
    except OSError as exc:
        raise ImportFileError(f"cannot import {path}: {exc.strerror or exc}; check its permissions") from None
    if len(raw) > MAX_IMPORT_BYTES:
        raise ImportFileError(f"cannot import {path}: it is larger than {MAX_IMPORT_BYTES} bytes, far larger than "
                              f"any conversation; {_EXPORT_HINT}")
    try:
        return json.loads(raw.decode("utf-8"))
    # ValueError covers bad UTF-8 and bad JSON; RecursionError a deeply nested "[[[[...".
    except (ValueError, RecursionError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise ImportFileError(f"cannot import {path}: it is not JSON text ({reason}); {_EXPORT_HINT}") from None


@app.command("rename")
def rename(session: str = typer.Argument(..., help=_SESSION_HELP),
           title: str = typer.Argument(..., help="The new title.")) -> None:
    """Rename a conversation."""
    with _open() as store:
        renamed = store.rename(store.resolve(session).id, title)
    echo(f"renamed {renamed.id} to “{inert_line(renamed.title)}”")  # the title as saved: cleaned


@app.command("rm")
def remove(session: str = typer.Argument(..., help=_SESSION_HELP),
           yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")) -> None:
    """Delete a conversation and its messages."""
    with _open() as store:
        conversation = store.resolve(session)
        question = f"Delete {conversation.id} “{inert_line(conversation.title)}”?"
        if not yes and not _confirmed(question):
            raise typer.Exit(1)
        store.delete(conversation.id)


def _confirmed(question: str) -> bool:
    """A y/N answer read from stdin. Its end (a script, `< /dev/null`, a closed stdin) is no answer at all, not a
    Ctrl+C: NotConfirmedError says nothing was deleted and how to confirm without being asked."""
    while True:
        typer.echo(f"{question} [y/N]: ", nl=False)
        try:
            line = sys.stdin.readline()
        except UnicodeDecodeError:
            line = "?\n"  # not text: asked again, as any other unclear answer
        except (AttributeError, ValueError, OSError):  # no stdin at all, or a closed one
            line = ""
        if not line:
            typer.echo()
            raise NotConfirmedError("nothing was deleted: there was no answer on stdin (it is closed or empty); "
                                    "add --yes to delete without being asked")
        answer = line.strip().lower()
        if answer in ("y", "yes"):
            return True
        if answer in ("", "n", "no"):
            return False
        typer.echo("Answer y or n.")
