"""Whole-conversation actions: rename, delete, export, find in the sidebar, switch, new chat, per-chat settings,
and long chats. Each test checks the screen and what the store holds afterwards."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Button, Input, OptionList, TextArea

from chatglm_tui.config.settings import Settings
from chatglm_tui.engine.fake import FakeEngine
from chatglm_tui.engine.protocol import ChatRequest
from chatglm_tui.tui.screens.chat import ChatScreen
from chatglm_tui.tui.screens.conversation_settings import ConversationSettingsScreen
from chatglm_tui.tui.screens.modals import ConfirmScreen, TextPromptScreen

SIZE = (120, 40)


def _title(app) -> str:
    return str(app.chat_screen.query_one("#chat-title").render())


def _two_chats(store, ui):
    """'Alpha apples' (a message about banana bread) and 'Beta' (about quantum physics), Beta the newer."""
    alpha = store.create_conversation("Alpha apples")
    ui.add_rounds(store, alpha.id, [("How do I bake banana bread?", "Mash three bananas.")])
    beta = store.create_conversation("Beta")
    ui.add_rounds(store, beta.id, [("Explain quantum physics", "Small things are odd."), ("More", "Much more.")])
    return alpha, beta


# ------------------------------------------------------------------------------------------------ rename


async def test_rename_changes_the_store_the_sidebar_and_the_title(build, store, recorder, ui):
    alpha, beta = _two_chats(store, ui)
    app = build(conversation_id=alpha.id)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await pilot.press("f2")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, TextPromptScreen), what="the rename dialog")
        field = app.screen.query_one(Input)
        assert field.value == "Alpha apples"
        field.value = "Never saved"
        await pilot.press("escape")  # cancelled
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the dialog to close")
        assert store.get(alpha.id).title == "Alpha apples" and _title(app) == "Alpha apples"

        await pilot.press("f2")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, TextPromptScreen), what="the rename dialog")
        field = app.screen.query_one(Input)
        field.value = "   "  # a blank title is refused and the dialog stays
        await pilot.press("enter")
        await ui.wait_for(pilot, lambda: recorder.has("cannot be empty", "warning"), what="the refusal")
        assert isinstance(app.screen, TextPromptScreen)
        assert store.get(alpha.id).title == "Alpha apples"

        field.value = ""
        await pilot.press(*"Fruit  pie")
        await pilot.press("enter")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the dialog to close")
        assert store.get(alpha.id).title == "Fruit pie"  # whitespace folded
        assert store.get(beta.id).title == "Beta"
        assert _title(app) == "Fruit pie"
        assert ui.sidebar_labels(app) == ["Beta", "Fruit pie"]  # renaming does not reorder


# ------------------------------------------------------------------------------------------------ delete


async def test_delete_asks_first_cancel_keeps_and_confirm_deletes(build, store, recorder, ui):
    alpha, beta = _two_chats(store, ui)
    app = build(conversation_id=alpha.id)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await pilot.press("f8")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the confirmation")
        assert app.focused is app.screen.query_one("#cancel", Button)  # the safe choice has the focus
        assert "2 messages" in str(app.screen.message)
        await pilot.press("enter")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the dialog to close")
        assert {c.id for c in store.list_conversations()} == {alpha.id, beta.id}
        assert app.chat_screen.session.id == alpha.id
        assert len(store.all_messages(alpha.id)) == 2

        await pilot.press("f8")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the confirmation")
        await pilot.press("tab", "enter")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the dialog to close")
        await ui.wait_for(pilot, lambda: app.chat_screen.session.id == beta.id, what="the latest chat to open")
        assert [c.id for c in store.list_conversations()] == [beta.id]
        assert store.search("banana") == []  # the messages went with it
        assert ui.sidebar_labels(app) == ["Beta"]
        assert _title(app) == "Beta"
        assert ui.view_texts(app)[0] == ("user", "Explain quantum physics")
        assert recorder.has("Deleted “Alpha apples”")


async def test_deleting_the_chat_while_a_reply_streams(build, store, ui):
    engine = FakeEngine(["A long answer that streams slowly, chunk after chunk. " * 6], chunk_size=3, delay=0.05)
    app = build(engine)
    screen = app.chat_screen
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await ui.send(pilot, "doomed question", finish=False)
        await ui.wait_for(pilot, lambda: screen.reply_view is not None and len(screen.reply_view.text) >= 6,
                          what="some text")
        await pilot.press("f8")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the confirmation")
        await pilot.press("tab", "enter")
        await ui.wait_for(pilot, lambda: screen.pending is None or not app.is_running, what="the reply to end")
        await pilot.pause(0.05)
        assert app.is_running
        assert store.list_conversations() == [] and screen.session.conversation is None
        assert ui.views(app) == []


# ------------------------------------------------------------------------------------------------ export


async def test_export_writes_markdown_in_the_current_folder_and_never_overwrites(build, store, recorder,
                                                                                monkeypatch, tmp_path, ui):
    folder = tmp_path / "exports"
    folder.mkdir()
    monkeypatch.chdir(folder)
    alpha, _ = _two_chats(store, ui)
    app = build(conversation_id=alpha.id)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await pilot.press("f4")
        await ui.wait_for(pilot, lambda: len(list(folder.iterdir())) == 1, what="the export file")
        [first] = list(folder.iterdir())
        assert first.name == f"Alpha-apples-{alpha.id[:6]}.md"
        expected = store.export_markdown(alpha.id)
        assert first.read_text(encoding="utf-8") == expected
        assert "How do I bake banana bread?" in expected and "Mash three bananas." in expected
        assert recorder.has(f"Exported to {first}")

        first.write_text("edited by hand", encoding="utf-8")
        await pilot.press("f4")
        await ui.wait_for(pilot, lambda: len(list(folder.iterdir())) == 2, what="the second export file")
        second = folder / f"Alpha-apples-{alpha.id[:6]}-2.md"
        assert second.read_text(encoding="utf-8") == expected
        assert first.read_text(encoding="utf-8") == "edited by hand"

        def disk_full(self: Path, *args: object, **kwargs: object) -> int:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(Path, "write_text", disk_full)
        await pilot.press("f4")
        await ui.wait_for(pilot, lambda: recorder.messages("error"), what="an error")
        assert recorder.has("No space left on device", "error") and recorder.has("Could not write", "error")
        assert app.is_running and len(list(folder.iterdir())) == 2


async def test_export_from_a_deleted_current_folder_reports_an_error(build, store, recorder, monkeypatch,
                                                                     tmp_path, ui):
    alpha, _ = _two_chats(store, ui)
    app = build(conversation_id=alpha.id)
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()  # e.g. removed from another terminal while the app runs
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await pilot.press("f4")
        await ui.wait_for(pilot, lambda: recorder.messages("error") or not app.is_running, what="an error")
        assert app.is_running
        assert recorder.has("Could not write", "error")
        assert list(tmp_path.iterdir()) == [tmp_path / "home"]


async def test_actions_on_an_unsaved_chat_warn_and_change_nothing(build, store, recorder, monkeypatch,
                                                                  tmp_path, ui):
    monkeypatch.chdir(tmp_path)
    engine = FakeEngine()
    app = build(engine)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        for key in ("f2", "f4", "f8", "f5", "ctrl+r", "ctrl+y", "ctrl+b"):
            await pilot.press(key)
        await pilot.pause(0.05)
        assert isinstance(app.screen, ChatScreen)
        for fragment in ("Nothing to rename yet", "Nothing to export yet", "Nothing to delete yet",
                         "no question to edit", "no question to answer", "no reply to copy", "No code block"):
            assert recorder.has(fragment, "warning"), fragment
        assert store.list_conversations() == [] and engine.requests == []
        assert list(tmp_path.glob("*.md")) == []


# ------------------------------------------------------------------------------------------------ sidebar


async def test_the_sidebar_hides_shows_and_filters_by_title_and_message_text(build, store, ui):
    alpha, beta = _two_chats(store, ui)
    app = build()
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        assert ui.sidebar_labels(app) == ["Beta", "Alpha apples"]  # newest first
        sidebar = app.chat_screen.query_one("#sidebar")
        await pilot.press("ctrl+s")
        assert not sidebar.display
        await pilot.press("ctrl+s")
        assert sidebar.display
        await pilot.press("ctrl+s", "ctrl+o")  # finding a chat shows the sidebar again
        field = app.chat_screen.query_one("#conversation-filter", Input)
        assert sidebar.display and app.focused is field

        await pilot.press(*"apple")
        await ui.wait_for(pilot, lambda: ui.sidebar_labels(app) == ["Alpha apples"], what="a title match")
        field.value = "QUANTUM"  # message text, any case
        await ui.wait_for(pilot, lambda: ui.sidebar_labels(app) == ["Beta"], what="a message-text match")
        field.value = "zebra"
        await ui.wait_for(pilot, lambda: ui.sidebar_labels(app) == ["No match"], what="no match")
        option_list = app.chat_screen.query_one("#conversation-list", OptionList)
        assert option_list.get_option_at_index(0).disabled
        field.value = ""
        await ui.wait_for(pilot, lambda: ui.sidebar_labels(app) == ["Beta", "Alpha apples"], what="the full list")
        assert app.chat_screen.session.id is None  # filtering opens nothing

        field.value = "banana"  # Enter in the filter opens the match at once
        await ui.wait_for(pilot, lambda: ui.sidebar_labels(app) == ["Alpha apples"], what="the match")
        assert option_list.highlighted == 0
        await pilot.press("enter")
        await ui.wait_for(pilot, lambda: app.chat_screen.session.id == alpha.id, what="Alpha to open")
        assert ui.view_texts(app) == [("user", "How do I bake banana bread?"), ("assistant", "Mash three bananas.")]
        assert _title(app) == "Alpha apples"
        assert app.focused is app.chat_screen.prompt


# ------------------------------------------------------------------------------------------------ switching


async def test_switching_conversation_shows_its_messages(build, store, ui):
    alpha, beta = _two_chats(store, ui)
    engine = FakeEngine(["Beta's third answer."])
    app = build(engine, conversation_id=alpha.id)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        assert ui.view_texts(app) == [("user", "How do I bake banana bread?"), ("assistant", "Mash three bananas.")]
        await app.chat_screen.open_conversation(beta.id)
        await pilot.pause(0.02)
        assert [text for _, text in ui.view_texts(app)] == ["Explain quantum physics", "Small things are odd.",
                                                           "More", "Much more."]
        assert _title(app) == "Beta"
        option_list = app.chat_screen.query_one("#conversation-list", OptionList)
        assert option_list.get_option_at_index(option_list.highlighted).id == beta.id

        await ui.send(pilot, "And now?")  # the next question goes to Beta, with Beta's history
        request = engine.requests[-1]
        assert isinstance(request, ChatRequest)
        assert request.history == (("Explain quantum physics", "Small things are odd."), ("More", "Much more."))
        assert [m.text for m in store.messages(beta.id)][-2:] == ["And now?", "Beta's third answer."]
        assert len(store.all_messages(alpha.id)) == 2


async def test_switching_mid_reply_stops_it_and_saves_it_in_its_own_chat(build, store, recorder, ui):
    alpha, beta = _two_chats(store, ui)
    reply = "A long answer that streams slowly, chunk after chunk, " * 6  # over 5 s: stopped long before
    engine = FakeEngine([reply], chunk_size=3, delay=0.05)
    app = build(engine, conversation_id=alpha.id)
    screen = app.chat_screen
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await ui.send(pilot, "Tell me more about bread", finish=False)
        await ui.wait_for(pilot, lambda: screen.reply_view is not None and len(screen.reply_view.text) >= 6,
                          what="some text")
        await screen.open_conversation(beta.id)
        await ui.wait_for(pilot, lambda: screen.pending is None, what="the stopped reply to be saved")
        await pilot.pause(0.02)

        assert screen.session.id == beta.id
        assert [text for _, text in ui.view_texts(app)] == ["Explain quantum physics", "Small things are odd.",
                                                           "More", "Much more."]
        saved = store.messages(alpha.id)
        assert [m.text for m in saved[:3]] == ["How do I bake banana bread?", "Mash three bananas.",
                                               "Tell me more about bread"]
        partial = saved[3]
        assert partial.role == "assistant" and partial.stopped and partial.parent_id == saved[2].id
        assert partial.text and partial.text != reply and reply.startswith(partial.text)
        assert len(store.all_messages(beta.id)) == 4  # nothing leaked into the chat on screen
        assert recorder.has("The reply was stopped")

        await screen.open_conversation(alpha.id)  # back in Alpha the stopped reply shows as stopped
        await pilot.pause(0.02)
        last = ui.views(app)[-1]
        assert last.text == partial.text and "stopped" in ui.header(last)


async def test_opening_another_chat_while_editing_ends_the_edit(build, store, ui):
    alpha, beta = _two_chats(store, ui)
    app = build(conversation_id=alpha.id)
    screen = app.chat_screen
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await pilot.press("f5")
        assert screen.editing is not None and screen.query_one("#edit-banner").display
        await screen.open_conversation(beta.id)
        await pilot.pause(0.02)
        assert screen.editing is None
        assert not screen.query_one("#edit-banner").display
        assert screen.prompt.text == ""


async def test_new_chat_clears_the_transcript_and_shows_the_empty_state(build, store, ui):
    alpha, _ = _two_chats(store, ui)
    app = build(conversation_id=alpha.id)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        assert len(ui.views(app)) == 2
        await pilot.press("ctrl+n")
        await ui.wait_for(pilot, lambda: not ui.views(app), what="an empty transcript")
        empty = app.chat_screen.query_one("#empty-state")
        assert "Ask ChatGLM-6B anything" in str(empty.render())
        assert _title(app) == "New chat"
        assert app.chat_screen.session.conversation is None
        assert app.focused is app.chat_screen.prompt
        assert len(store.list_conversations()) == 2  # nothing is created until the first message

        await ui.send(pilot, "A fresh start")
        assert not app.chat_screen.query("#empty-state")
        assert len(store.list_conversations()) == 3


# ------------------------------------------------------------------------------------------------ settings (F3)


async def _open_settings(pilot, ui) -> ConversationSettingsScreen:
    app = pilot.app
    await pilot.press("f3")
    await ui.wait_for(pilot, lambda: isinstance(app.screen, ConversationSettingsScreen), what="the settings dialog")
    return app.screen


def _fill(screen: ConversationSettingsScreen, instruction: str | None = None, **fields: str) -> None:
    if instruction is not None:
        screen.query_one("#instruction", TextArea).load_text(instruction)
    for name, value in fields.items():
        screen.query_one(f"#field-{name}", Input).value = value


async def test_settings_saved_on_a_conversation_change_the_store_and_the_next_request(build, store, ui):
    alpha, _ = _two_chats(store, ui)
    engine = FakeEngine(["ok"])
    app = build(engine, Settings(temperature=0.95, top_p=0.7), conversation_id=alpha.id)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        screen = await _open_settings(pilot, ui)
        assert screen.query_one("#field-temperature", Input).value == "0.95"
        assert screen.query_one("#field-seed", Input).value == ""
        _fill(screen, "Answer like a pirate.", temperature="0.3", top_p="0.9", top_k="7", max_new_tokens="256",
              repetition_penalty="1.1", seed="42")
        await pilot.press("ctrl+s")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the dialog to close")

        saved = store.get(alpha.id)
        assert saved.instruction == "Answer like a pirate."
        assert {key: saved.params[key] for key in ("temperature", "top_p", "top_k", "max_new_tokens",
                                                   "repetition_penalty", "seed", "do_sample")} == {
            "temperature": 0.3, "top_p": 0.9, "top_k": 7, "max_new_tokens": 256, "repetition_penalty": 1.1,
            "seed": 42, "do_sample": True}
        assert app.chat_screen.query_one("#meter").budget.reserved == 256

        await ui.send(pilot, "Where is the treasure?")
        request = engine.requests[-1]
        assert request.instruction == "Answer like a pirate."
        assert (request.params.temperature, request.params.top_p, request.params.top_k,
                request.params.max_new_tokens, request.params.repetition_penalty, request.params.seed) == (
            0.3, 0.9, 7, 256, 1.1, 42)

        screen = await _open_settings(pilot, ui)  # reopening shows what was saved; Esc changes nothing
        assert screen.query_one("#field-top_k", Input).value == "7"
        assert screen.query_one("#instruction", TextArea).text == "Answer like a pirate."
        _fill(screen, "", temperature="0")
        await pilot.press("escape")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the dialog to close")
        assert store.get(alpha.id).params["temperature"] == 0.3

        screen = await _open_settings(pilot, ui)  # a blank instruction clears it
        _fill(screen, "  \n ")
        await pilot.press("ctrl+s")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the dialog to close")
        assert store.get(alpha.id).instruction is None
        assert store.get(alpha.id).params["top_k"] == 7


async def test_settings_chosen_before_the_first_message_are_used_when_it_is_created(build, store, recorder, ui):
    engine = FakeEngine(["ok"])
    app = build(engine)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        screen = await _open_settings(pilot, ui)
        _fill(screen, "Be brief.", temperature="0", max_new_tokens="128")
        await pilot.press("ctrl+s")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the dialog to close")
        assert recorder.has("once you send its first message")
        assert store.list_conversations() == []

        await ui.send(pilot, "Hello")
        [conversation] = store.list_conversations()
        assert conversation.instruction == "Be brief."
        assert conversation.params["temperature"] == 0 and conversation.params["do_sample"] is False
        assert conversation.params["max_new_tokens"] == 128
        request = engine.requests[-1]
        assert request.instruction == "Be brief."
        assert request.params.temperature == 0 and request.params.do_sample is False
        assert request.params.max_new_tokens == 128


async def test_invalid_settings_are_refused_and_the_dialog_stays(build, store, recorder, ui):
    alpha, _ = _two_chats(store, ui)
    app = build(conversation_id=alpha.id)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        screen = await _open_settings(pilot, ui)
        before = store.get(alpha.id)
        for field, bad, fragment in (("temperature", "-1", "temperature"), ("top_p", "2", "top_p"),
                                     ("temperature", "abc", "'abc' is not a number"),
                                     ("top_k", "1.5", "not a whole number"),
                                     ("max_new_tokens", "0", "max_new_tokens")):
            recorder.notes.clear()
            _fill(screen, **{"temperature": "0.5", "top_p": "0.5", "top_k": "5", "max_new_tokens": "100"})
            _fill(screen, **{field: bad})
            await pilot.press("ctrl+s")
            await ui.wait_for(pilot, lambda: recorder.messages("error"), what=f"an error for {field}={bad}")
            assert any(fragment in message for message in recorder.messages("error")), (field, bad, recorder.notes)
            assert app.screen is screen
        assert store.get(alpha.id) == before


# ------------------------------------------------------------------------------------------------ long chats


async def _settled_views(pilot, ui, polls: int = 4) -> list[int]:
    """The mounted messages' ids once the transcript stops mounting more (it may top up a short screen)."""
    app = pilot.app
    seen: list[list[int]] = []

    def stable() -> bool:
        seen.append([view.message.id for view in ui.views(app)])
        return len(seen) >= polls and all(ids == seen[-1] for ids in seen[-polls:])

    await ui.wait_for(pilot, stable, what="the transcript to stop mounting")
    return seen[-1]


async def test_a_long_chat_mounts_only_the_newest_messages_and_more_on_demand(build, store, ui):
    long = store.create_conversation("Five hundred messages")
    written = [m.id for m in ui.add_rounds(store, long.id, [(f"question {n}", f"answer {n}") for n in range(250)])]
    short = store.create_conversation("Short")
    ui.add_rounds(store, short.id, [("hi", "hello")])
    app = build(conversation_id=short.id)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await app.chat_screen.open_conversation(long.id)
        shown = await _settled_views(pilot, ui)
        assert 0 < len(shown) <= 100  # a few screens' worth, not 500
        assert shown == written[-len(shown):]  # the newest ones, in order
        assert ui.views(app)[-1].text == "answer 249"
        conversation = app.chat_screen.conversation
        assert conversation.hidden_count == 500 - len(shown)
        button = app.chat_screen.query_one("#show-earlier", Button)
        assert f"{500 - len(shown)} hidden" in str(button.label)

        button.press()
        await ui.wait_for(pilot, lambda: len(ui.views(app)) > len(shown), what="earlier messages")
        more = await _settled_views(pilot, ui)
        assert more == written[-len(more):] and len(more) <= 200
        assert conversation.hidden_count == 500 - len(more)
        assert f"{500 - len(more)} hidden" in str(app.chat_screen.query_one("#show-earlier", Button).label)

        conversation.scroll_home(animate=False, immediate=True)  # reaching the top brings more too
        await ui.wait_for(pilot, lambda: len(ui.views(app)) > len(more), what="more on scrolling up")
        most = await _settled_views(pilot, ui)
        assert most == written[-len(most):]
        assert len(store.all_messages(long.id)) == 500
