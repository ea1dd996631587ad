"""Chat-screen actions on the conversation as a whole: new, find, rename, delete, export, settings, copy, editor."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from textual import on
from textual.app import SuspendNotSupported
from textual.screen import Screen
from textual.widgets import Input, Static

from chatglm_tui.engine.protocol import Engine
from chatglm_tui.store import StoreError
from chatglm_tui.tui.chat_session import ChatSession, PendingReply
from chatglm_tui.tui.clipboard import copy_with_tool, describe_copy, save_copy
from chatglm_tui.tui.code_blocks import code_blocks
from chatglm_tui.tui.inert_display import inert_label
from chatglm_tui.tui.screens.conversation_settings import Choice, ConversationSettingsScreen
from chatglm_tui.tui.screens.modals import ConfirmScreen, PickScreen, TextPromptScreen
from chatglm_tui.tui.widgets.conversation import Conversation
from chatglm_tui.tui.widgets.message_view import MessageView
from chatglm_tui.tui.widgets.prompt_input import PromptInput
from chatglm_tui.tui.widgets.sidebar import Sidebar

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


class ConversationActions(Screen[None]):
    """ChatScreen's actions on the whole conversation; each works on `self.session` and refreshes what changed."""

    session: ChatSession
    engine: Engine
    pending: PendingReply | None
    reply_view: MessageView | None
    editing: int | None

    # Implemented by ChatScreen.
    async def show_branch(self, focus: int | None = None) -> None:
        raise NotImplementedError

    def refresh_budget(self) -> None:
        raise NotImplementedError

    def set_editing(self, message_id: int | None) -> None:
        raise NotImplementedError

    def stop_for_switch(self, discard: bool = False) -> None:
        raise NotImplementedError

    def end_edit(self) -> None:
        raise NotImplementedError

    @property
    def conversation(self) -> Conversation:
        return self.query_one(Conversation)

    def show_title(self) -> None:
        """The conversation's title above the transcript."""
        conversation = self.session.conversation
        self.query_one("#chat-title", Static).update(inert_label(conversation.title) if conversation else "New chat")

    @property
    def prompt(self) -> PromptInput:
        return self.query_one(PromptInput)

    def refresh_sidebar(self, only_if_changed: bool = False) -> None:
        """List the saved conversations (filtered); with `only_if_changed`, redraw only if the store changed."""
        sidebar = self.query_one(Sidebar)
        text = sidebar.filter_text.strip()
        store = self.session.store
        if not text:
            conversations = store.list_conversations()
        else:
            conversations = store.list_conversations(title_filter=text)
            seen = {conversation.id for conversation in conversations}
            for conversation, _ in store.search(text, limit=50):
                if conversation.id not in seen:
                    seen.add(conversation.id)
                    conversations.append(conversation)
        if only_if_changed and conversations == sidebar.conversations:
            return  # redrawing would reset the list's scroll and highlight for nothing
        sidebar.show(conversations, self.session.id)

    def watch_store(self) -> None:
        """Every few seconds: show conversations that `chatglm ask` or another window added, renamed or deleted."""
        try:
            self.refresh_sidebar(only_if_changed=True)
        except StoreError:
            pass  # a busy or briefly unreadable database: the next tick tries again

    @on(Sidebar.FilterChanged)
    def filter_sidebar(self) -> None:
        self.refresh_sidebar()

    @on(Sidebar.Selected)
    async def open_selected(self, event: Sidebar.Selected) -> None:
        await self.open_conversation(event.conversation_id)

    async def open_conversation(self, conversation_id: str) -> None:
        """Show a saved conversation (a reply being written is stopped first and saved as stopped)."""
        if conversation_id == self.session.id:
            self.prompt.focus()
            return
        self.stop_for_switch()
        try:
            self.session.open(conversation_id)
        except StoreError as exc:  # e.g. deleted meanwhile by `chatglm sessions rm` in another terminal
            self.store_problem(exc)
            return
        await self.show_branch()
        self.refresh_sidebar()
        self.prompt.focus()

    def store_problem(self, exc: StoreError) -> None:
        """A store operation failed (the conversation was deleted elsewhere, the disk is full…): say so and
        refresh the list; the app goes on."""
        self.notify(f"{exc}. The list of conversations is refreshed.", title="Not done", severity="error",
                    timeout=10)
        self.refresh_sidebar()

    async def action_new_chat(self) -> None:
        self.stop_for_switch()
        self.session.new()
        await self.show_branch()
        self.refresh_sidebar()
        self.prompt.focus()

    def action_find_chat(self) -> None:
        self.query_one("#sidebar").display = True
        self.query_one("#conversation-filter", Input).focus()

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one("#sidebar")
        sidebar.display = not sidebar.display

    def require_conversation(self, what: str) -> bool:
        if self.session.conversation is None:
            self.notify(f"Nothing to {what} yet: this chat is saved with its first message.", severity="warning")
            return False
        return True

    def action_rename(self) -> None:
        if not self.require_conversation("rename"):
            return
        assert self.session.conversation is not None

        def rename(title: str | None) -> None:
            if not title:
                return
            try:
                self.session.rename(title)
            except StoreError as exc:
                self.store_problem(exc)
                return
            self.show_title()
            self.refresh_sidebar()

        self.app.push_screen(TextPromptScreen("Rename conversation", self.session.conversation.title), rename)

    def action_delete(self) -> None:
        if not self.require_conversation("delete"):
            return
        assert self.session.conversation is not None
        conversation = self.session.conversation
        count = len(self.session.tree)

        async def delete(confirmed: bool | None) -> None:
            if not confirmed:
                return
            pending = self.pending
            self.stop_for_switch(discard=pending is not None and pending.conversation_id == conversation.id)
            try:
                self.session.delete()
            except StoreError as exc:
                self.store_problem(exc)
            else:
                self.notify(f"Deleted “{conversation.title}”.")
            self.session.new()
            latest = self.session.store.latest()
            if latest is not None:
                self.session.open(latest.id)
            await self.show_branch()
            self.refresh_sidebar()

        self.app.push_screen(ConfirmScreen(
            "Delete conversation?", f"“{conversation.title}” and its {count} message{'s' if count != 1 else ''} "
            "(every version) will be deleted for good. Export it first (F4) to keep a copy."), delete)

    def action_export(self) -> None:
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
            self.notify(f"Could not write to {where}: {reason}. Start chatglm from a writable folder.",
                        title="Export failed", severity="error")
            return
        self.notify(f"Exported to {path}", title="Exported as Markdown")

    def action_conversation_settings(self) -> None:
        def apply(choice: Choice | None) -> None:
            if choice is None:
                return
            try:
                self.session.configure(*choice)
            except StoreError as exc:
                self.store_problem(exc)
                return
            self.refresh_budget()
            self.notify("Saved for this chat." if self.session.conversation else
                        "Used for this chat once you send its first message.")

        title = self.session.conversation.title if self.session.conversation else "new chat"
        self.app.push_screen(ConversationSettingsScreen(self.session.params, self.session.instruction,
                                                        self.session.settings, title), apply)

    # ---------------------------------------------------------------- copy

    def copy_text(self, what: str, text: str) -> None:
        """Copy by OSC 52, a clipboard program if any, and a file; always says where the text went."""
        self.app.copy_to_clipboard(text)
        self.notify(describe_copy(what, text, copy_with_tool(text), save_copy(text)), title="Copied")

    def last_reply_text(self) -> str | None:
        if self.reply_view is not None and self.reply_view.text:
            return str(self.reply_view.text)
        reply = next((message for message in reversed(self.session.branch) if message.role == "assistant"), None)
        return reply.text if reply else None

    def action_copy_reply(self) -> None:
        text = self.last_reply_text()
        if not text:
            self.notify("There is no reply to copy yet.", severity="warning")
        else:
            self.copy_text("the last reply", text)

    def action_copy_code(self) -> None:
        self.copy_code_from(self.last_reply_text() or "")

    def copy_code_from(self, markdown: str) -> None:
        """Copy a code block: the only one directly, or the one picked from a list."""
        blocks = code_blocks(markdown)
        if not blocks:
            self.notify("No code block in that reply.", severity="warning")
        elif len(blocks) == 1:
            self.copy_text(f"the {blocks[0].language or 'code'} block", blocks[0].code)
        else:
            def copy_picked(index: int | None) -> None:
                if index is not None:
                    block = blocks[index]
                    self.copy_text(f"code block {index + 1} ({block.language or 'code'})", block.code)

            self.app.push_screen(PickScreen("Copy which code block?", [block.summary for block in blocks]),
                                 copy_picked)

    # ---------------------------------------------------------------- $EDITOR

    def action_open_editor(self) -> None:
        """Write the prompt in $VISUAL / $EDITOR; the text comes back into the prompt (not sent)."""
        editor = find_editor()
        if editor is None:
            self.notify("No editor found: set $EDITOR (e.g. export EDITOR=nano).", severity="error")
            return
        with tempfile.TemporaryDirectory(prefix="chatglm-") as folder:
            path = Path(folder) / "prompt.md"
            path.write_text(self.prompt.text, encoding="utf-8")
            try:
                with self.app.suspend():
                    subprocess.run([*editor, str(path)], check=False)
            except SuspendNotSupported:
                self.notify("This terminal cannot hand over to an editor.", severity="error")
                return
            except OSError as exc:
                self.notify(f"Could not start {editor[0]}: {exc.strerror or exc}", severity="error")
                return
            text = path.read_text(encoding="utf-8", errors="replace")
        self.prompt.load_text(text.rstrip("\n"))
        self.prompt.move_cursor(self.prompt.document.end)
        self.prompt.focus()
