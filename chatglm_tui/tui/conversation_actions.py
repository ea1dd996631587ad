"""`ConversationActions`: the chat screen's actions on a conversation as a whole: open, new, rename, delete,
export, settings, copy, and writing the prompt in $EDITOR."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from textual.app import SuspendNotSupported

from chatglm_tui.session.chat_session import ChatSession
from chatglm_tui.session.documents import DocumentError, read_document_file
from chatglm_tui.store import Conversation, StoreError
from chatglm_tui.terminal.inert import inert
from chatglm_tui.terminal.wording import human_size
from chatglm_tui.tui.chat_host import ChatHost
from chatglm_tui.tui.clipboard import copy_with_tool, describe_copy, save_copy
from chatglm_tui.tui.code_blocks import code_blocks
from chatglm_tui.tui.reply_flow import ReplyFlow
from chatglm_tui.tui.screens.conversation_settings import (
    Choice,
    ConversationSettingsScreen,
)
from chatglm_tui.tui.screens.modals import ConfirmScreen, PickScreen, TextPromptScreen

_EDITORS = ("nano", "vim", "vi")


def export_path(title: str, conversation_id: str, folder: Path) -> Path:
    """A new file name for an export: the title made file-safe, the id, and a counter if it exists already."""
    stem = re.sub(r"[^\w-]+", "-", title).strip("-")[:50] or "chat"
    path = folder / f"{stem}-{conversation_id[:6]}.md"
    counter = 2
    while path.exists():
        path = folder / f"{stem}-{conversation_id[:6]}-{counter}.md"
        counter += 1
    return path


def find_editor() -> list[str] | None:
    """$VISUAL, then $EDITOR, then a common editor that is installed."""
    for variable in ("VISUAL", "EDITOR"):
        if os.environ.get(variable, "").strip():
            return shlex.split(os.environ[variable])
    found = next((name for name in _EDITORS if shutil.which(name)), None)
    return [found] if found else None


class ConversationActions:
    """Each action works on the session on screen and has the screen redraw what it changed."""

    def __init__(self, host: ChatHost, reply_flow: ReplyFlow) -> None:
        self.host, self.reply_flow = host, reply_flow

    @property
    def session(self) -> ChatSession:
        return self.host.session

    def matching(self, text: str) -> list[Conversation]:
        """The saved conversations whose title, then whose text, matches `text` (all of them when it is empty)."""
        store = self.session.store
        if not text:
            return store.list_conversations()
        conversations = store.list_conversations(title_filter=text)
        seen = {conversation.id for conversation in conversations}
        for conversation, _ in store.search(text, limit=50):
            if conversation.id not in seen:
                seen.add(conversation.id)
                conversations.append(conversation)
        return conversations

    async def open(self, conversation_id: str) -> None:
        """Show a saved conversation (a reply being written is stopped first and saved as stopped)."""
        if conversation_id == self.session.id:
            self.host.prompt.focus()
            return
        self.host.stop_for_switch()
        try:
            self.session.open(conversation_id)
        except StoreError as exc:  # e.g. deleted meanwhile by `chatglm sessions rm` in another terminal
            self.host.store_problem(exc)
            return
        await self.host.show_branch()
        self.host.refresh_sidebar()
        self.host.prompt.focus()

    async def new_chat(self) -> None:
        self.host.stop_for_switch()
        self.session.new()
        await self.host.show_branch()
        self.host.refresh_sidebar()
        self.host.prompt.focus()

    def require_conversation(self, what: str) -> bool:
        """Whether there is a saved conversation to act on; says why not."""
        if self.session.conversation is None:
            self.host.notify(f"Nothing to {what} yet: this chat is saved with its first message.",
                             severity="warning")
            return False
        return True

    def rename(self) -> None:
        if not self.require_conversation("rename"):
            return
        assert self.session.conversation is not None

        def rename(title: str | None) -> None:
            if not title:
                return
            try:
                self.session.rename(title)
            except StoreError as exc:
                self.host.store_problem(exc)
                return
            self.host.show_title()
            self.host.refresh_sidebar()

        self.host.app.push_screen(TextPromptScreen("Rename conversation", self.session.conversation.title), rename)

    def delete(self) -> None:
        """Delete the conversation on screen (after asking), then show the latest one left."""
        if not self.require_conversation("delete"):
            return
        assert self.session.conversation is not None
        conversation = self.session.conversation
        count = len(self.session.tree)

        async def delete(confirmed: bool | None) -> None:
            if not confirmed:
                return
            pending = self.reply_flow.pending
            self.host.stop_for_switch(discard=pending is not None and pending.conversation_id == conversation.id)
            try:
                self.session.delete()
            except StoreError as exc:
                self.host.store_problem(exc)
            else:
                self.host.notify(f"Deleted “{conversation.title}”.")
            self.session.new()
            latest = self.session.store.latest()
            if latest is not None:
                self.session.open(latest.id)
            await self.host.show_branch()
            self.host.refresh_sidebar()

        self.host.app.push_screen(ConfirmScreen(
            "Delete conversation?", f"“{conversation.title}” and its {count} message{'s' if count != 1 else ''} "
            "(every version) will be deleted for good. Export it first (F4) to keep a copy."), delete)

    def export(self) -> None:
        """Write the conversation to a new Markdown file in the current folder."""
        if not self.require_conversation("export"):
            return
        assert self.session.conversation is not None
        conversation = self.session.conversation
        try:
            path = export_path(conversation.title, conversation.id, Path.cwd())  # cwd fails if it was deleted
            path.write_text(self.session.export_markdown(), encoding="utf-8")
        except (OSError, StoreError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            where = getattr(exc, "filename", None) or "the current folder"
            self.host.notify(f"Could not write to {where}: {reason}. Start chatglm from a writable folder.",
                             title="Export failed", severity="error")
            return
        self.host.notify(f"Exported to {path}", title="Exported as Markdown")

    def settings(self) -> None:
        """Edit this chat's instruction and sampling settings."""
        def apply(choice: Choice | None) -> None:
            if choice is None:
                return
            try:
                self.session.configure(*choice)
            except StoreError as exc:
                self.host.store_problem(exc)
                return
            self.host.refresh_budget()
            self.host.notify("Saved for this chat." if self.session.conversation else
                             "Used for this chat once you send its first message.")

        title = self.session.conversation.title if self.session.conversation else "new chat"
        self.host.app.push_screen(ConversationSettingsScreen(self.session.params, self.session.instruction,
                                                             self.session.settings, title), apply)

    # ---------------------------------------------------------------- copy

    def copy_text(self, what: str, text: str) -> None:
        """Copy by OSC 52, a clipboard program if any, and a file; always says where the text went."""
        self.host.app.copy_to_clipboard(text)
        self.host.notify(describe_copy(what, text, copy_with_tool(text), save_copy(text)), title="Copied")

    def last_reply_text(self) -> str | None:
        """The reply being written if it has begun, else the last saved reply of the branch."""
        reply_view = self.reply_flow.reply_view
        if reply_view is not None and reply_view.text:
            return str(reply_view.text)
        reply = next((message for message in reversed(self.session.branch) if message.role == "assistant"), None)
        return reply.text if reply else None

    def copy_reply(self) -> None:
        text = self.last_reply_text()
        if not text:
            self.host.notify("There is no reply to copy yet.", severity="warning")
        else:
            self.copy_text("the last reply", text)

    def copy_code(self) -> None:
        self.copy_code_from(self.last_reply_text() or "")

    def copy_code_from(self, markdown: str) -> None:
        """Copy a code block: the only one directly, or the one picked from a list."""
        blocks = code_blocks(markdown)
        if not blocks:
            self.host.notify("No code block in that reply.", severity="warning")
        elif len(blocks) == 1:
            self.copy_text(f"the {blocks[0].language or 'code'} block", blocks[0].code)
        else:
            def copy_picked(index: int | None) -> None:
                if index is not None:
                    block = blocks[index]
                    self.copy_text(f"code block {index + 1} ({block.language or 'code'})", block.code)

            self.host.app.push_screen(PickScreen("Copy which code block?", [block.summary for block in blocks]),
                                      copy_picked)

    # ---------------------------------------------------------------- a file into the prompt

    def attach_file(self) -> None:
        """Ask for a text file's path and put its text in the prompt at the cursor (a document too long for the
        window is offered a summary in parts when it is sent)."""
        self.host.app.push_screen(TextPromptScreen("Attach a text file", placeholder="path/to/report.txt",
                                                   empty_message="Type the path of a text file."), self._attach)

    def _attach(self, path: str | None) -> None:
        if not path:
            return
        try:
            text = read_document_file(Path(path))
        except DocumentError as exc:
            self.host.notify(str(exc), severity="error")
            return
        prompt = self.host.prompt
        prompt.insert(inert(text))  # shown as it will be sent: control characters made visible, never obeyed
        prompt.focus()
        self.host.notify(f"{Path(path).name} is in the prompt ({human_size(len(text.encode()))}): add a question "
                         "if you like, and send it. Text too long for the window is summarized in parts.")

    # ---------------------------------------------------------------- $EDITOR

    def open_editor(self) -> None:
        """Write the prompt in $VISUAL / $EDITOR; the text comes back into the prompt (not sent)."""
        editor = find_editor()
        if editor is None:
            self.host.notify("No editor found: set $EDITOR (e.g. export EDITOR=nano).", severity="error")
            return
        prompt = self.host.prompt
        with tempfile.TemporaryDirectory(prefix="chatglm-") as folder:
            path = Path(folder) / "prompt.md"
            path.write_text(prompt.text, encoding="utf-8")
            try:
                with self.host.app.suspend():
                    subprocess.run([*editor, str(path)], check=False)
            except SuspendNotSupported:
                self.host.notify("This terminal cannot hand over to an editor.", severity="error")
                return
            except OSError as exc:
                self.host.notify(f"Could not start {editor[0]}: {exc.strerror or exc}", severity="error")
                return
            text = path.read_text(encoding="utf-8", errors="replace")
        prompt.load_text(text.rstrip("\n"))
        prompt.move_cursor(prompt.document.end)
        prompt.focus()
