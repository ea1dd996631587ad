"""Keys, focus and the meter: keymap conflicts, the settings dialog's focus, leaving a focused message, Tab, the
conversation filter's ↓ and Enter, alt+enter as ESC CR, Enter in the first instants, and a meter that fits from 80
columns and follows a streaming reply."""

from __future__ import annotations

import re
import threading

import pytest
from textual import events
from textual._xterm_parser import XTermParser
from textual.binding import Binding
from textual.widgets import Input, OptionList, TextArea

from chatglm_tui.config.keymap import BINDINGS, SCOPES, binding_conflicts, default_keys
from chatglm_tui.config.settings import Settings
from chatglm_tui.engine.fake import FakeEngine
from chatglm_tui.tui.keys import APP_BINDINGS, GROUPS
from chatglm_tui.tui.screens.chat import ChatScreen
from chatglm_tui.tui.screens.conversation_settings import ConversationSettingsScreen
from chatglm_tui.tui.screens.help import HelpScreen
from chatglm_tui.tui.screens.load_error import LoadErrorScreen
from chatglm_tui.tui.screens.modals import ConfirmScreen, PickScreen, TextPromptScreen
from chatglm_tui.tui.widgets.budget_meter import BudgetMeter
from chatglm_tui.tui.widgets.message_view import MessageView
from chatglm_tui.tui.widgets.prompt_input import ALT_ENTER_SEQUENCE
from chatglm_tui.tui.widgets.sidebar import Sidebar

SIZE = (120, 36)


# ------------------------------------------------------------------------------------------------ keymap conflicts


def test_every_binding_takes_its_default_keys_from_the_one_table():
    declared: dict[str, list[Binding]] = {}
    holders = [ChatScreen, ConversationSettingsScreen, HelpScreen, ConfirmScreen, PickScreen, TextPromptScreen,
               LoadErrorScreen, Sidebar, MessageView]
    for binding in [b for _, group in GROUPS for b in group] + [b for h in holders for b in h.BINDINGS]:
        if isinstance(binding, Binding) and binding.id:
            declared.setdefault(binding.id, []).append(binding)
    assert set(declared) == set(BINDINGS)  # no id missing from the table, none in it that nothing binds
    for binding_id, bindings in declared.items():
        assert {binding.key for binding in bindings} == {default_keys(binding_id)}, binding_id
    assert [b.id for b in APP_BINDINGS if isinstance(b, Binding)] == ["app.help", "app.quit"]
    assert all(spec.scope in SCOPES for spec in BINDINGS.values())


def test_the_defaults_have_no_conflict():
    assert binding_conflicts({}) == []
    assert binding_conflicts({"app.help": "f1,f12"}) == []  # F1 in the help closes it: designed, not a clash
    assert binding_conflicts({"chat.newline": "ctrl+j"}) == []  # its own default key


@pytest.mark.parametrize(("keymap", "key", "ids", "where"), [
    ({"chat.newline": "ctrl+o"}, "ctrl+o", ("chat.find", "chat.newline"), "on the prompt"),  # the README's own
    ({"chat.stop": "f1"}, "f1", ("app.help", "chat.stop"), "on the chat screen"),
    ({"message.copy": "["}, "[", ("message.copy", "message.older_version"), "on a focused message"),
    ({"chat.rename": "x", "chat.export": "x"}, "x", ("chat.export", "chat.rename"), "on the chat screen"),
    ({"modal.save": "escape"}, "escape", ("modal.cancel", "modal.save"), "in the conversation settings"),
    ({"sidebar.list": "ctrl+n"}, "ctrl+n", ("chat.new", "sidebar.list"), "in the conversation filter"),
])
def test_a_key_given_to_two_bindings_live_together_is_a_conflict(keymap, key, ids, where):
    [conflict] = binding_conflicts(keymap)
    assert (conflict.key, conflict.ids, conflict.where) == (key, ids, where)
    assert conflict.remapped == tuple(sorted(keymap))
    assert f"give {' or '.join(sorted(keymap))} another key in [keymap]" in conflict.describe()


def test_bindings_never_live_together_may_share_a_key():
    assert binding_conflicts({"message.copy": "ctrl+j"}) == []  # a message and the prompt: never both focused
    assert binding_conflicts({"modal.close": "ctrl+s"}) == []  # the help and the settings dialog


async def test_a_conflicting_keymap_is_reported_when_the_app_starts(build, recorder, ui):
    app = build(FakeEngine(), Settings(keymap={"chat.newline": "ctrl+o"}))
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        [note] = [message for severity, title, message in recorder.notes if title == "Key conflict in [keymap]"]
        assert "ctrl+o is bound to chat.find (default) and chat.newline ([keymap]) on the prompt" in note
        assert "give chat.newline another key" in note and "config.toml" in note
        assert recorder.has("ctrl+o", "warning")


async def test_a_keymap_without_conflicts_says_nothing(build, recorder, ui):
    app = build(FakeEngine(), Settings(keymap={"chat.newline": "ctrl+t", "chat.copy_code": "f6"}))
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        assert not [title for _, title, _ in recorder.notes if "conflict" in title.lower()]
        prompt = app.chat_screen.prompt
        prompt.load_text("a")
        prompt.move_cursor(prompt.document.end)
        await pilot.press("ctrl+t", "b")
        assert prompt.text == "a\nb"


# ------------------------------------------------------------------------------------------------ F3


async def test_f3_focuses_the_instruction_so_typing_goes_in(build, ui):
    app = build()
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await pilot.press("f3")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ConversationSettingsScreen), what="the dialog")
        instruction = app.screen.query_one("#instruction", TextArea)
        assert app.focused is instruction
        await pilot.press(*"Be brief.")
        assert instruction.text == "Be brief."
        await pilot.press("ctrl+s")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the dialog to close")
        assert app.chat_screen.session.instruction == "Be brief."


# ------------------------------------------------------------------------------------------------ focus


async def test_esc_or_typing_on_a_focused_message_goes_back_to_the_prompt(build, recorder, ui):
    app = build(FakeEngine(["An answer."]))
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await ui.send(pilot, "A question")
        prompt = app.chat_screen.prompt
        await pilot.press("shift+tab")
        assert app.focused is ui.views(app)[-1]
        await pilot.press("escape")
        assert app.focused is prompt

        await pilot.press("shift+tab", "up")
        assert app.focused is ui.views(app)[0]
        await pilot.press("y")  # the message's own keys still act on it
        await ui.wait_for(pilot, lambda: recorder.tool_copies == ["A question"], what="the copy")
        await pilot.press(*"hi there")  # other characters go to the prompt, the first one included
        assert app.focused is prompt and prompt.text == "hi there"
        assert len(app.engine.requests) == 1


async def test_esc_on_a_message_during_a_reply_only_leaves_the_message(build, ui):
    engine = FakeEngine(["word " * 200], chunk_size=3, delay=0.05)
    app = build(engine)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await ui.send(pilot, "Talk", finish=False)
        await pilot.press("shift+tab")
        assert isinstance(app.focused, MessageView)
        await pilot.press("escape")
        assert app.focused is app.chat_screen.prompt and app.chat_screen.pending is not None  # not stopped
        await pilot.press("escape")  # from the prompt Esc stops it, as ever
        await ui.finished(pilot)
        assert "stopped" in ui.header(ui.views(app)[-1])


async def test_tab_goes_round_the_sidebar_and_the_prompt_not_every_message(build, store, ui):
    conversation = store.create_conversation("Many")
    ui.add_rounds(store, conversation.id, [(f"q{n}", f"a{n}") for n in range(4)])
    app = build(conversation_id=conversation.id)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        screen = app.chat_screen
        prompt = screen.prompt
        field = screen.query_one("#conversation-filter", Input)
        option_list = screen.query_one("#conversation-list", OptionList)
        seen = []
        for _ in range(4):
            await pilot.press("tab")
            seen.append(app.focused)
        assert seen == [field, option_list, prompt, field]

        await pilot.press("tab", "tab")  # back on the prompt; shift+tab: the last message, then the list
        assert app.focused is prompt
        await pilot.press("shift+tab")
        assert app.focused is ui.views(app)[-1]
        await pilot.press("up")
        assert app.focused is ui.views(app)[-2]
        await pilot.press("tab")  # from a message Tab goes back to the prompt
        assert app.focused is prompt
        await pilot.press("shift+tab", "shift+tab")
        assert app.focused is option_list

        await pilot.press("ctrl+s")  # the sidebar hidden: Tab stays on the prompt
        prompt.focus()
        await pilot.press("tab")
        assert app.focused is prompt


# ------------------------------------------------------------------------------------------------ the filter


def _two_chats(store, ui):
    alpha = store.create_conversation("Alpha apples")
    ui.add_rounds(store, alpha.id, [("How do I bake banana bread?", "Mash three bananas.")])
    beta = store.create_conversation("Beta")
    ui.add_rounds(store, beta.id, [("Explain quantum physics", "Small things are odd.")])
    gamma = store.create_conversation("Gamma apples")
    ui.add_rounds(store, gamma.id, [("Apple pie?", "Yes.")])
    return alpha, beta, gamma


async def test_down_in_the_filter_moves_into_the_list_with_the_first_match(build, store, ui):
    alpha, _, gamma = _two_chats(store, ui)
    app = build()
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await pilot.press("ctrl+o", *"apple")
        await ui.wait_for(pilot, lambda: ui.sidebar_labels(app) == ["Gamma apples", "Alpha apples"], what="matches")
        await pilot.press("down")
        option_list = app.chat_screen.query_one("#conversation-list", OptionList)
        assert app.focused is option_list and option_list.highlighted == 0
        await pilot.press("down", "enter")  # in the list ↓ is the list's own: the next match
        await ui.wait_for(pilot, lambda: app.chat_screen.session.id == alpha.id, what="Alpha to open")
        assert app.focused is app.chat_screen.prompt


async def test_enter_in_the_filter_opens_the_first_match_at_once(build, store, ui):
    alpha, beta, gamma = _two_chats(store, ui)
    app = build()
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await pilot.press("ctrl+o", *"quantum", "enter")
        await ui.wait_for(pilot, lambda: app.chat_screen.session.id == beta.id, what="Beta to open")
        assert ui.view_texts(app)[0] == ("user", "Explain quantum physics")
        assert app.focused is app.chat_screen.prompt

        await pilot.press("ctrl+o")  # the open chat (Beta) matches too, but the first match is the one opened
        await pilot.press(*"p")
        await ui.wait_for(pilot, lambda: ui.sidebar_labels(app) == ["Gamma apples", "Alpha apples", "Beta"],
                          what="the matches")
        await pilot.press("enter")
        await ui.wait_for(pilot, lambda: app.chat_screen.session.id == gamma.id, what="Gamma to open")

        await pilot.press("ctrl+o")
        field = app.chat_screen.query_one("#conversation-filter", Input)
        field.value = "banana"  # and Enter in the same instant, before the list has caught up with the text
        app.post_message(events.Key("enter", "\r"))
        await ui.wait_for(pilot, lambda: app.chat_screen.session.id == alpha.id, what="Alpha to open")


# ------------------------------------------------------------------------------------------------ alt+enter


async def test_alt_enter_as_esc_cr_inserts_a_new_line(build, ui):
    app = build()
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        # What Textual's reader makes of the bytes tmux sends for alt+enter (ESC CR), while the app runs.
        delivered = [event.key for event in XTermParser().feed(ALT_ENTER_SEQUENCE) if isinstance(event, events.Key)]
        assert delivered == ["alt+enter"]
        prompt = app.chat_screen.prompt
        await pilot.press(*"one", *delivered, *"two")
        assert prompt.text == "one\ntwo"
        await pilot.press("ctrl+j", *"three")  # the key every terminal sends alike
        assert prompt.text == "one\ntwo\nthree" and app.engine.requests == []


# ------------------------------------------------------------------------------------------------ Enter at once


async def test_enter_pressed_at_once_is_queued_until_the_model_loads(build, ui):
    gate = threading.Event()
    engine = FakeEngine(["Ready now."], load_gate=gate)
    app = build(engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"hi", "enter")  # straight away: nothing awaited first
        await ui.wait_for(pilot, lambda: len(engine.requests) == 1, what="the question to be sent")
        assert app.chat_screen.load_state == "loading" and ui.view_texts(app)[0] == ("user", "hi")
        assert "waiting for the model to load" in ui.header(ui.views(app)[-1])
        assert app.chat_screen.prompt.text == ""
        gate.set()
        await ui.finished(pilot)
        assert ui.view_texts(app)[-1] == ("assistant", "Ready now.")


async def test_keys_typed_while_the_chat_screen_mounts_reach_the_prompt(build, store, ui, monkeypatch):
    conversation = store.create_conversation("Long")
    ui.add_rounds(store, conversation.id, [(f"q{n}", f"a{n}") for n in range(30)])
    original = ChatScreen.show_branch
    focused_while_mounting = []

    async def typed_meanwhile(screen, focus=None):
        # A terminal delivers keys while the screen is still opening the chat: post them to the app right then.
        if not focused_while_mounting:
            focused_while_mounting.append(screen.app.focused)
            for key, character in (("o", "o"), ("k", "k"), ("enter", "\r")):
                screen.app.post_message(events.Key(key, character))
        await original(screen, focus)

    monkeypatch.setattr(ChatScreen, "show_branch", typed_meanwhile)
    engine = FakeEngine(["Fine."])
    app = build(engine, conversation_id=conversation.id)
    async with app.run_test(size=SIZE) as pilot:
        await ui.wait_for(pilot, lambda: len(engine.requests) == 1, what="the Enter typed during the mount")
        assert focused_while_mounting == [app.chat_screen.prompt]
        assert engine.requests[0].query == "ok"
        await ui.finished(pilot)


async def test_a_burst_of_keys_keeps_its_order(build, ui):
    app = build(FakeEngine(["Yes."]))
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        # One read from the terminal: the app gets every key before the prompt has inserted the first.
        for key, character in (("a", "a"), ("ctrl+j", "\n"), ("b", "b"), ("enter", "\r")):
            app.post_message(events.Key(key, character))
        await ui.wait_for(pilot, lambda: app.engine.requests, what="the question")
        assert app.engine.requests[0].query == "a\nb"
        await ui.finished(pilot)


# ------------------------------------------------------------------------------------------------ the meter


def _numbers(budget) -> re.Pattern[str]:
    return re.compile(rf"{budget.used:,} ?\+ ?{budget.reserved:,} ?/ ?{budget.window:,}")


@pytest.mark.parametrize("columns", [80, 90, 100, 120, 160])
async def test_the_meter_fits_its_line_from_80_columns(build, store, ui, columns):
    conversation = store.create_conversation("Long", instruction="Short answers.")
    ui.add_rounds(store, conversation.id, [(f"question number {n}", "an answer of forty characters, or so..")
                                           for n in range(6)])
    engine = FakeEngine(window=240)
    app = build(engine, Settings(max_new_tokens=60), conversation_id=conversation.id)
    async with app.run_test(size=(columns, 30)) as pilot:
        await ui.ready(pilot)
        meter = app.chat_screen.query_one("#meter", BudgetMeter)
        budget = meter.budget
        assert budget is not None and budget.dropped_rounds  # the alert must show too
        line = meter.render()
        assert line.cell_len <= meter.size.width, (columns, str(line))
        assert _numbers(budget).search(str(line)) and "⚠" in str(line)
        if columns >= 160:
            assert "oldest rounds left out" in str(line) and "■ instruction" in str(line)


async def test_an_empty_chat_shows_history_0_and_the_prompt_end_with_the_draft(build, ui):
    app = build()
    async with app.run_test(size=(160, 30)) as pilot:
        await ui.ready(pilot)
        meter = app.chat_screen.query_one("#meter", BudgetMeter)
        assert meter.budget is not None and meter.budget.history_tokens == 2  # [gMASK] <sop>, as the engine counts
        text = str(meter.render())
        assert "■ history 0" in text and "■ draft 2" in text and _numbers(meter.budget).search(text)
        assert "history 0" in meter.tooltip and "draft 2 (with the 2 tokens that end every prompt)" in meter.tooltip


async def test_the_meter_follows_a_streaming_reply(build, store, ui):
    engine = FakeEngine(["token " * 100], chunk_size=3, delay=0.05)
    app = build(engine)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        meter = app.chat_screen.query_one("#meter", BudgetMeter)
        await ui.send(pilot, "Count", finish=False)
        seen: list[int] = []

        def grew_three_times_while_streaming() -> bool:
            if app.chat_screen.pending is not None and meter.budget is not None:
                if not seen or meter.budget.history_tokens != seen[-1]:
                    seen.append(meter.budget.history_tokens)
            return len(seen) >= 3

        await ui.wait_for(pilot, grew_three_times_while_streaming, what="the meter to grow with the reply")
        assert seen == sorted(seen) and app.chat_screen.pending is not None
        streamed = app.chat_screen.streamed
        assert engine.budget([("Count", "")], "", None).history_tokens < seen[-1]
        assert seen[-1] <= engine.budget([("Count", streamed)], "", None).history_tokens
        await pilot.press("escape")
        await ui.finished(pilot)
        final = engine.budget(store.history(store.latest().id), "", None, reserve=app.settings.max_new_tokens)
        await ui.wait_for(pilot, lambda: meter.budget == final, what="the count of the saved reply")
