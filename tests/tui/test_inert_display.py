"""Untrusted text in the chat app (Pilot): shown inert everywhere, never parsed as markup, stored exactly.

The real-terminal side (nothing reaches tmux's clipboard or title) is tests/tui/test_real_terminal.py.
"""

from __future__ import annotations

import sqlite3

from textual import events
from textual.command import CommandPalette
from textual.widgets import Input, Markdown, OptionList, Static

from chatglm_tui.engine.fake import FakeEngine
from chatglm_tui.terminal.inert import inert
from chatglm_tui.tui.screens.chat import ChatScreen
from chatglm_tui.tui.screens.modals import ConfirmScreen, TextPromptScreen

SIZE = (120, 40)
ESCAPES = "\x1b]52;c;cm0gLXJmIH4K\x07\x1b]0;DOC\x07\x1b[2J\u202e"
MARKUP = "[/b] [/INST] [bold red]x[/] [@click=app.quit]q[/]"


def _raw_title(store, conversation_id: str, title: str) -> None:
    """A title as a store written before titles were cleaned holds it."""
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id))


async def test_hostile_messages_and_replies_are_shown_inert_and_kept_exact(build, store, ui):
    chat = store.create_conversation("x")
    ui.add_rounds(store, chat.id, [(f"Q {ESCAPES} {MARKUP}", f"A {ESCAPES}\n\n```\n{ESCAPES}\n```")])
    _raw_title(store, chat.id, f"T {ESCAPES} {MARKUP}")
    engine = FakeEngine([f"streamed {ESCAPES[:9]}", f"{ESCAPES[9:]} end\r", "\nafter"], chunk_size=5)
    app = build(engine, conversation_id=chat.id)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        user, reply = ui.views(app)
        assert str(user.query_one(".message-body", Static).render()) == inert(user.text)
        assert reply.query_one(Markdown).source == inert(reply.text)
        assert str(app.chat_screen.query_one("#chat-title", Static).render()) == f"T {inert(ESCAPES)} {MARKUP}"
        assert ui.sidebar_labels(app)[0].startswith("T ␛]52;c;")
        await ui.send(pilot, f"ask {ESCAPES}")
        streamed = ui.views(app)[-1]
        assert streamed.text == engine.replies[0]  # exact, for copying; shown inert
        assert "\x1b" not in streamed.query_one(Markdown).source
        assert store.messages(chat.id)[-1].text == engine.replies[0]


async def test_markup_in_titles_and_messages_is_plain_text(build, store, recorder, ui):
    chat = store.create_conversation(MARKUP)
    ui.add_rounds(store, chat.id, [(MARKUP, MARKUP)])
    bomb = store.create_conversation("[" + "1" * 3000)
    app = build(conversation_id=chat.id)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        assert str(app.chat_screen.query_one("#chat-title", Static).render()) == MARKUP
        await pilot.press("ctrl+p")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), what="the palette")
        await pilot.press(*"INST")
        hits = app.screen.query_one("CommandList", OptionList)
        await ui.wait_for(pilot, lambda: hits.option_count > 0, what="a hit")
        assert MARKUP in str(hits.get_option_at_index(0).prompt)
        await pilot.press("escape")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the palette to close")
        await app.chat_screen.open_conversation(bomb.id)
        assert str(app.chat_screen.query_one("#chat-title", Static).render()).startswith("[111")
        await app.chat_screen.open_conversation(chat.id)
        await pilot.press("f8")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the delete dialog")
        assert MARKUP in str(app.screen.query_one(".dialog-body", Static).render())
        app.screen.query_one("#confirm").press()
        await ui.wait_for(pilot, lambda: recorder.has(f"Deleted “{MARKUP}”."), what="the deleted notice")


async def test_pasted_text_is_inert_in_the_prompt_filter_and_dialogs(build, store, ui):
    chat = store.create_conversation("Plain")
    ui.add_rounds(store, chat.id, [("q", "a")])
    _raw_title(store, chat.id, f"Old {ESCAPES} title")
    app = build(conversation_id=chat.id)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        prompt = app.chat_screen.prompt
        app.post_message(events.Paste(f"pasted {ESCAPES}\nline two"))  # as the terminal driver does
        await ui.wait_for(pilot, lambda: "pasted" in prompt.text, what="the paste")
        assert prompt.text == inert(f"pasted {ESCAPES}\nline two")
        await pilot.press("f2")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, TextPromptScreen), what="the rename dialog")
        field = app.screen.query_one(Input)
        assert field.value == "Old title"  # the escape sequences are dropped, not shown, in a title
        field.value = ""
        app.post_message(events.Paste(f"New {ESCAPES}"))
        await ui.wait_for(pilot, lambda: "New" in field.value, what="the paste")
        assert field.value == f"New {inert(ESCAPES)}"
        await pilot.press("enter")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the dialog to close")
        assert "\x1b" not in store.get(chat.id).title
