"""The chat flow through the keyboard: send, stream, stop, regenerate, edit, copy, $EDITOR, keymap, help, palette,
themes. Each test checks what is on screen and what the store holds afterwards."""

from __future__ import annotations

import contextlib
import stat
from pathlib import Path

import pytest
from textual import events
from textual.command import CommandPalette
from textual.widgets import Markdown, OptionList

from chatglm_tui.config.settings import Settings, config_path
from chatglm_tui.engine.fake import FakeEngine
from chatglm_tui.engine.protocol import (
    ChatRequest,
    GenerationFailed,
    GenerationParams,
    GenerationStarted,
    TextDelta,
)
from chatglm_tui.tui.clipboard import last_copy_path
from chatglm_tui.tui.screens.chat import ChatScreen
from chatglm_tui.tui.screens.help import HelpScreen
from chatglm_tui.tui.screens.modals import PickScreen, TextPromptScreen
from chatglm_tui.tui.widgets.message_view import MessageView

SIZE = (120, 40)
# Long enough (84 chunks of 3 at 0.05 s: over 4 s) that a test stops it well before it ends, even on a slow machine.
LONG_REPLY = "The quick brown fox jumps over the lazy dog, again and again. " * 4


def _request(engine: FakeEngine, index: int = -1) -> ChatRequest:
    request = engine.requests[index]
    assert isinstance(request, ChatRequest)
    return request


# ------------------------------------------------------------------------------------------------ send


async def test_send_shows_the_question_and_the_streamed_reply_and_saves_both(build, store, ui):
    older = store.create_conversation("Older chat")
    ui.add_rounds(store, older.id, [("old question", "old answer")])
    engine = FakeEngine(["First answer.", "Second answer."], chunk_size=3)
    app = build(engine, Settings(temperature=0.4, top_p=0.5, max_new_tokens=300, instruction="Be terse."))
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        assert ui.sidebar_labels(app) == ["Older chat"] and ui.views(app) == []
        await ui.send(pilot, "  What is ChatGLM?\nTell me more.")

        assert ui.view_texts(app) == [("user", "  What is ChatGLM?\nTell me more."), ("assistant", "First answer.")]
        assert all(isinstance(view, MessageView) and not view.streaming for view in ui.views(app))
        conversation = store.latest()
        assert conversation.title == "What is ChatGLM?"
        assert conversation.instruction == "Be terse."
        assert conversation.params["temperature"] == 0.4 and conversation.params["max_new_tokens"] == 300
        user, reply = store.messages(conversation.id)
        assert (user.role, user.parent_id) == ("user", None)
        assert (reply.role, reply.text, reply.parent_id) == ("assistant", "First answer.", user.id)
        assert not reply.stopped
        assert app.chat_screen.session.leaf_id == reply.id
        assert str(app.chat_screen.query_one("#chat-title").render()) == "What is ChatGLM?"
        assert app.chat_screen.prompt.text == ""
        assert ui.sidebar_labels(app) == ["What is ChatGLM?", "Older chat"]  # the new chat is listed first
        assert store.history(older.id) == [("old question", "old answer")]  # untouched

        first = _request(engine)
        assert first.query == "  What is ChatGLM?\nTell me more."
        assert first.history == ()
        assert first.instruction == "Be terse."
        assert first.params == GenerationParams(do_sample=True, temperature=0.4, top_p=0.5, top_k=50,
                                              repetition_penalty=1.0, max_new_tokens=300, seed=None)

        await ui.send(pilot, "And then?")
        second = _request(engine)
        assert second.query == "And then?"
        assert second.history == (("  What is ChatGLM?\nTell me more.", "First answer."),)
        assert second.instruction == "Be terse."
        assert [m.text for m in store.messages(conversation.id)][2:] == ["And then?", "Second answer."]
        assert store.messages(conversation.id)[2].parent_id == reply.id
        assert [c.id for c in store.list_conversations()] == [conversation.id, older.id]


async def test_a_blank_prompt_sends_nothing_and_ctrl_j_adds_a_line(build, store, ui):
    engine = FakeEngine()
    app = build(engine)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await pilot.press("space", "ctrl+j", "enter")
        await pilot.pause(0.05)
        assert engine.requests == [] and store.list_conversations() == [] and ui.views(app) == []
        app.chat_screen.prompt.clear()
        await pilot.press(*"ab", "ctrl+j", *"cd")
        assert app.chat_screen.prompt.text == "ab\ncd"
        assert engine.requests == []


async def test_pasted_lines_stay_in_the_prompt_and_up_recalls_earlier_prompts(build, store, ui):
    engine = FakeEngine(["ok"])
    app = build(engine)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        prompt = app.chat_screen.prompt
        app.post_message(events.Paste("first line\nsecond line\n"))  # as the driver delivers a bracketed paste
        await pilot.pause(0.05)
        assert prompt.text == "first line\nsecond line\n"
        assert engine.requests == [] and store.list_conversations() == []  # a paste never sends
        await pilot.press("enter")
        await ui.finished(pilot)
        assert engine.requests[0].query == "first line\nsecond line"  # trailing blank lines are not sent
        await pilot.press(*"draft", "up")
        assert prompt.text == "first line\nsecond line"  # the earlier prompt, recalled
        await pilot.press("down", "down", "down")
        assert prompt.text == "draft"  # past the newest one: the draft is back


# ------------------------------------------------------------------------------------------------ streaming and stop


async def test_the_reply_grows_while_streaming_and_a_second_send_is_refused(build, store, recorder, ui):
    engine = FakeEngine([LONG_REPLY], chunk_size=3, delay=0.05)
    app = build(engine)
    screen = app.chat_screen
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await ui.send(pilot, "Tell me a story", finish=False)
        assert screen.pending is not None
        await ui.wait_for(pilot, lambda: screen.reply_view is not None and len(screen.reply_view.text) >= 3,
                          what="the first delta")
        first = screen.reply_view.text
        await ui.wait_for(pilot, lambda: screen.reply_view is not None and len(screen.reply_view.text) > len(first),
                          what="more text")
        assert screen.reply_view.text.startswith(first) and LONG_REPLY.startswith(screen.reply_view.text)
        assert screen.reply_view.streaming and "writing" in ui.header(screen.reply_view)
        assert screen.pending is not None

        screen.prompt.load_text("impatient follow-up")
        await pilot.press("enter")
        await ui.wait_for(pilot, lambda: recorder.messages("warning"), what="the refusal")
        assert recorder.has("A reply is being written", "warning")
        assert len(engine.requests) == 1
        assert screen.prompt.text == "impatient follow-up"  # the draft is kept
        assert screen.pending is not None and screen.reply_view is not None  # still writing
        conversation = store.latest()
        assert [(m.role, m.text) for m in store.messages(conversation.id)] == [("user", "Tell me a story")]
        await pilot.press("escape")
        await ui.finished(pilot)
        assert len(store.messages(conversation.id)) == 2 and len(engine.requests) == 1


async def test_escape_stops_the_reply_and_saves_the_partial_text_as_stopped(build, store, recorder, ui):
    engine = FakeEngine([LONG_REPLY], chunk_size=3, delay=0.05)
    app = build(engine)
    screen = app.chat_screen
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await ui.send(pilot, "Tell me a story", finish=False)
        await ui.wait_for(pilot, lambda: screen.reply_view is not None and len(screen.reply_view.text) >= 6,
                          what="some text")
        await pilot.press("escape")
        await ui.finished(pilot)

        reply_view = ui.views(app)[-1]
        partial = reply_view.text
        assert partial and partial != LONG_REPLY and LONG_REPLY.startswith(partial)
        assert "stopped" in ui.header(reply_view) and reply_view.has_class("-stopped")
        assert recorder.has("Stopped.")
        saved = store.messages(store.latest().id)[-1]
        assert (saved.role, saved.text, saved.stopped) == ("assistant", partial, True)
        assert saved.stats["reason"] == "stopped"
        assert screen.check_action("stop", ()) is False  # nothing left to stop


class FailingOnceEngine(FakeEngine):
    """Fails its first request the way the worker reports a generation error; answers normally afterwards."""

    def _reply(self, request, reply, on_event):
        if len(self.requests) == 1:
            on_event(GenerationStarted(request.id, 3))
            on_event(TextDelta(request.id, "Half a rep"))
            on_event(GenerationFailed(request.id, "CUDA out of memory"))
            return
        super()._reply(request, reply, on_event)


async def test_a_failed_reply_is_shown_and_not_saved_and_ctrl_r_retries(build, store, recorder, ui):
    engine = FailingOnceEngine(["Second try worked."])
    app = build(engine)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await ui.send(pilot, "Will this work?")
        await ui.wait_for(pilot, lambda: recorder.messages("error"), what="the failure notice")
        assert recorder.has("CUDA out of memory", "error")
        failed = ui.views(app)[-1]
        assert failed.has_class("-failed") and failed.message is None
        assert "The reply failed: CUDA out of memory" in failed.text
        conversation = store.latest()
        assert [(m.role, m.text) for m in store.all_messages(conversation.id)] == [("user", "Will this work?")]

        await pilot.press("ctrl+r")
        await ui.wait_for(pilot, lambda: len(engine.requests) == 2, what="the retry")
        await ui.finished(pilot)
        assert _request(engine).query == "Will this work?"
        question, answer = store.all_messages(conversation.id)
        assert (answer.text, answer.parent_id) == ("Second try worked.", question.id)
        assert ui.view_texts(app) == [("user", "Will this work?"), ("assistant", "Second try worked.")]


async def test_quitting_mid_reply_saves_what_was_written_as_stopped(build, store, ui):
    engine = FakeEngine([LONG_REPLY], chunk_size=3, delay=0.05)
    app = build(engine)
    screen = app.chat_screen
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await ui.send(pilot, "Tell me a story", finish=False)
        await ui.wait_for(pilot, lambda: screen.reply_view is not None and len(screen.reply_view.text) >= 6,
                          what="some text")
        await pilot.press("ctrl+q")
        await ui.wait_for(pilot, lambda: not app.is_running, what="the app to exit")
    question, partial = store.messages(store.latest().id)
    assert question.text == "Tell me a story"
    assert partial.role == "assistant" and partial.stopped and partial.parent_id == question.id
    assert partial.text and LONG_REPLY.startswith(partial.text) and partial.text != LONG_REPLY


# ---------------------------------------------------------------------------------------- regenerate and versions


async def test_regenerate_adds_a_version_and_arrows_flip_between_them(build, store, recorder, ui):
    engine = FakeEngine(["Answer one.", "Answer two."])
    app = build(engine)
    screen = app.chat_screen
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await ui.send(pilot, "Question")
        await pilot.press("ctrl+r")
        await ui.wait_for(pilot, lambda: len(engine.requests) == 2, what="the second request")
        await ui.finished(pilot)

        assert _request(engine).query == "Question" and _request(engine).history == ()
        conversation = store.latest()
        question, first, second = store.all_messages(conversation.id)
        assert first.parent_id == second.parent_id == question.id
        assert [m.text for m in store.branches(second.id)] == ["Answer one.", "Answer two."]
        assert ui.view_texts(app) == [("user", "Question"), ("assistant", "Answer two.")]
        assert "2/2" in ui.header(ui.views(app)[-1])

        await pilot.press("shift+tab")
        assert app.focused is ui.views(app)[-1]
        await pilot.press("left")
        await ui.wait_for(pilot, lambda: screen.session.leaf_id == first.id, what="version 1")
        assert [m.id for m in screen.session.branch] == [question.id, first.id]
        assert ui.view_texts(app)[-1] == ("assistant", "Answer one.")
        assert "1/2" in ui.header(ui.views(app)[-1])
        assert app.focused is ui.views(app)[-1]  # the shown version keeps the focus

        await pilot.press("left")  # already the oldest: says so, changes nothing
        await ui.wait_for(pilot, lambda: recorder.has("This is version 1 of 2."), what="the notice")
        assert screen.session.leaf_id == first.id

        await pilot.press("right")
        await ui.wait_for(pilot, lambda: screen.session.leaf_id == second.id, what="version 2")
        assert ui.view_texts(app)[-1] == ("assistant", "Answer two.")
        assert "2/2" in ui.header(ui.views(app)[-1])


# ------------------------------------------------------------------------------------------------ edit


async def test_f5_edits_the_last_question_into_a_new_branch(build, store, ui):
    engine = FakeEngine(["Reply A.", "Reply B.", "Reply C."])
    app = build(engine)
    screen = app.chat_screen
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await ui.send(pilot, "first question")
        await ui.send(pilot, "second question")
        conversation = store.latest()
        q1, a1, q2, a2 = store.messages(conversation.id)

        await pilot.press("f5")
        assert screen.editing == q2.id
        assert screen.prompt.text == "second question"
        assert screen.query_one("#edit-banner").display
        assert ui.views(app)[2].has_class("-editing")

        screen.prompt.clear()
        await ui.send(pilot, "second question, rephrased")

        assert screen.editing is None and not screen.query_one("#edit-banner").display
        messages = store.all_messages(conversation.id)
        new_question, new_reply = messages[-2:]
        assert (new_question.text, new_question.parent_id) == ("second question, rephrased", q2.parent_id)
        assert new_reply.parent_id == new_question.id and new_reply.text == "Reply C."
        assert _request(engine).history == (("first question", "Reply A."),)
        assert ui.view_texts(app) == [("user", "first question"), ("assistant", "Reply A."),
                                      ("user", "second question, rephrased"), ("assistant", "Reply C.")]
        assert "2/2" in ui.header(ui.views(app)[2])

        # The old branch is still there: ← on the edited question brings it back.
        ui.views(app)[2].focus()
        await pilot.press("left")
        await ui.wait_for(pilot, lambda: screen.session.leaf_id == a2.id, what="the old branch")
        assert [m.id for m in screen.session.branch] == [q1.id, a1.id, q2.id, a2.id]
        assert ui.view_texts(app)[2:] == [("user", "second question"), ("assistant", "Reply B.")]
        assert "1/2" in ui.header(ui.views(app)[2])
        assert len(store.all_messages(conversation.id)) == 6


async def test_e_on_a_focused_question_edits_it_and_escape_cancels(build, store, recorder, ui):
    engine = FakeEngine(["Reply A.", "Reply B."])
    app = build(engine)
    screen = app.chat_screen
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await ui.send(pilot, "first question")
        q1 = store.messages(store.latest().id)[0]

        ui.views(app)[1].focus()  # a reply cannot be edited
        await pilot.press("e")
        await ui.wait_for(pilot, lambda: recorder.messages("warning"), what="the refusal")
        assert recorder.has("Only your questions can be edited", "warning") and screen.editing is None

        await pilot.press("up", "e")
        assert screen.editing == q1.id and screen.prompt.text == "first question"
        assert app.focused is screen.prompt and ui.views(app)[0].has_class("-editing")

        await pilot.press("escape")
        assert screen.editing is None and screen.prompt.text == ""
        assert not screen.query_one("#edit-banner").display
        assert not any(view.has_class("-editing") for view in ui.views(app))

        ui.views(app)[0].focus()
        await pilot.press("e")
        await pilot.press("ctrl+j", *"again")
        await ui.send(pilot, screen.prompt.text)
        messages = store.all_messages(store.latest().id)
        assert (messages[-2].text, messages[-2].parent_id) == ("first question\nagain", None)  # a new root
        assert _request(engine).history == ()
        assert ui.view_texts(app) == [("user", "first question\nagain"), ("assistant", "Reply B.")]
        assert len(messages) == 4


async def test_switching_versions_while_editing_does_not_crash(build, store, ui):
    conversation = store.create_conversation("Two versions")
    ui.add_rounds(store, conversation.id, [("first version", "reply one")])
    ui.add_rounds(store, conversation.id, [("second version", "reply two")])  # an edit of the first question
    app = build(conversation_id=conversation.id)
    screen = app.chat_screen
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        assert "2/2" in ui.header(ui.views(app)[0])
        await pilot.press("f5")
        assert screen.prompt.text == "second version"
        ui.views(app)[0].focus()
        await pilot.press("left")  # look at the other version before sending the edit
        await ui.wait_for(pilot, lambda: ui.view_texts(app)[0] == ("user", "first version"), timeout=2,
                          what="version 1")
        assert app.is_running


# ------------------------------------------------------------------------------------------------ copy


CODE_ONE = "Here:\n\n```python\nprint('hi')\n```\n"
CODE_TWO = "Two ways:\n\n```python\nprint('hi')\n```\n\nor\n\n~~~bash\necho hi\nexit 0\n~~~\n"


async def test_ctrl_y_copies_the_last_reply_and_ctrl_b_its_only_code_block(build, recorder, ui):
    app = build(FakeEngine([CODE_ONE]))
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await ui.send(pilot, "code please")
        await pilot.press("ctrl+y")
        await ui.wait_for(pilot, lambda: recorder.tool_copies, what="the copy")
        assert app.clipboard == CODE_ONE  # OSC 52, as Textual keeps it
        assert recorder.tool_copies == [CODE_ONE]
        assert last_copy_path().read_text(encoding="utf-8") == CODE_ONE
        assert recorder.has(f"Copied the last reply ({len(CODE_ONE)} characters)")
        assert recorder.has(f"Also saved to {last_copy_path()}")

        await pilot.press("ctrl+b")
        await ui.wait_for(pilot, lambda: len(recorder.tool_copies) == 2, what="the code copy")
        assert not isinstance(app.screen, PickScreen)  # one block: copied directly
        assert app.clipboard == "print('hi')" and recorder.tool_copies[-1] == "print('hi')"
        assert last_copy_path().read_text(encoding="utf-8") == "print('hi')"
        assert recorder.has("the python block")


async def test_ctrl_b_with_several_blocks_asks_which(build, recorder, ui):
    app = build(FakeEngine([CODE_TWO]))
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await ui.send(pilot, "code please")
        await pilot.press("ctrl+b")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, PickScreen), what="the code block picker")
        await pilot.press("escape")  # cancelled: nothing copied
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the picker to close")
        assert recorder.tool_copies == [] and app.clipboard == ""

        await pilot.press("ctrl+b")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, PickScreen), what="the code block picker")
        options = app.screen.query_one(OptionList)
        assert options.option_count == 2
        assert "python · 1 line · print('hi')" in str(options.get_option_at_index(0).prompt)
        assert "bash · 2 lines · echo hi" in str(options.get_option_at_index(1).prompt)
        await pilot.press("down", "enter")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the picker to close")
        assert app.clipboard == "echo hi\nexit 0"
        assert recorder.tool_copies == ["echo hi\nexit 0"]
        assert last_copy_path().read_text(encoding="utf-8") == "echo hi\nexit 0"
        assert recorder.has("code block 2 (bash)")


async def test_focused_message_keys_copy_that_message(build, recorder, ui):
    app = build(FakeEngine([CODE_ONE]))
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await ui.send(pilot, "my question")
        await pilot.press("shift+tab")  # from the prompt to the last message
        assert app.focused is ui.views(app)[1]
        await pilot.press("up", "y")
        await ui.wait_for(pilot, lambda: recorder.tool_copies, what="the copy")
        assert recorder.tool_copies == ["my question"] and app.clipboard == "my question"
        await pilot.press("c")  # the question has no code block: says so, copies nothing
        await ui.wait_for(pilot, lambda: recorder.messages("warning"), what="the warning")
        assert recorder.has("No code block in that reply.", "warning") and len(recorder.tool_copies) == 1
        await pilot.press("down", "c")
        await ui.wait_for(pilot, lambda: len(recorder.tool_copies) == 2, what="the code copy")
        assert recorder.tool_copies == ["my question", "print('hi')"]
        assert app.is_running


# ------------------------------------------------------------------------------------------------ $EDITOR


@pytest.fixture
def editor_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$EDITOR: a script that appends a line to the file it is given and leaves a marker that it ran."""
    marker = tmp_path / "editor-ran"
    script = tmp_path / "fake-editor.sh"
    script.write_text(f'#!/bin/sh\nprintf "\\nfrom the editor\\n" >> "$1"\ntouch "{marker}"\n', encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", str(script))
    return marker


async def test_ctrl_g_hands_the_prompt_to_the_editor_and_back(build, store, recorder, editor_script,
                                                              monkeypatch, tmp_path, ui):
    engine = FakeEngine()
    app = build(engine)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await pilot.press(*"draft")
        await pilot.press("ctrl+g")
        await ui.wait_for(pilot, lambda: recorder.messages("error"), what="the error")
        # run_test's headless driver cannot suspend: a clear error, the draft untouched, the editor never run.
        assert recorder.has("cannot hand over to an editor", "error")
        assert app.chat_screen.prompt.text == "draft"
        assert not editor_script.exists()

        monkeypatch.setattr(app, "suspend", contextlib.nullcontext)  # a terminal that can, minus the terminal
        monkeypatch.setenv("EDITOR", str(tmp_path / "no-such-editor"))
        recorder.notes.clear()
        await pilot.press("ctrl+g")
        await ui.wait_for(pilot, lambda: recorder.messages("error"), what="the error")
        assert recorder.has("Could not start", "error")
        assert app.chat_screen.prompt.text == "draft"

        monkeypatch.setenv("EDITOR", str(tmp_path / "fake-editor.sh"))
        await pilot.press("ctrl+g")
        await ui.wait_for(pilot, lambda: app.chat_screen.prompt.text == "draft\nfrom the editor",
                          what="the edited text")
        assert editor_script.exists()
        assert app.focused is app.chat_screen.prompt
        assert engine.requests == [] and store.list_conversations() == []  # not sent


# ------------------------------------------------------------------------------------------------ keymap, help, palette


async def test_a_remapped_key_works_and_the_old_one_does_not(build, recorder, ui):
    engine = FakeEngine(["one", "two", "three"])
    app = build(engine, Settings(keymap={"chat.regenerate": "f6"}))
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await ui.send(pilot, "question")
        await pilot.press("ctrl+r")
        await pilot.pause(0.1)
        assert len(engine.requests) == 1 and len(ui.views(app)) == 2
        await pilot.press("f6")
        await ui.wait_for(pilot, lambda: len(engine.requests) == 2, what="f6 to regenerate")
        await ui.finished(pilot)
        assert [m.text for m in app.store.all_messages(app.store.latest().id)] == ["question", "one", "two"]
        assert not recorder.has("Unknown binding")


async def test_f1_opens_help_with_the_binding_ids_and_remapped_keys(build, recorder, ui):
    app = build(FakeEngine(), Settings(keymap={"chat.regenerate": "f6", "chat.sned": "ctrl+e"}))
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        [warning] = [text for text in recorder.messages("warning") if "binding" in text]  # the typo, not the id
        assert "Unknown binding id" in warning and "chat.sned" in warning and "chat.regenerate" not in warning
        await pilot.press("f1")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="the help screen")
        text = app.screen.text
        for binding_id in ("app.help", "chat.send", "chat.stop", "chat.copy_code", "message.edit"):
            assert f"`{binding_id}`" in text
        row = next(line for line in text.splitlines() if "`chat.regenerate`" in line)
        assert "f6" in row.lower() and "ctrl+r" not in row.lower()
        assert "2,048 tokens" in text
        assert app.screen.query_one(Markdown)
        await pilot.press("escape")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="help to close")


async def _palette(pilot, ui, query: str, expected: str) -> None:
    """Open the palette, type `query`, and wait until the highlighted hit is `expected`."""
    app = pilot.app
    await pilot.press("ctrl+p")
    await ui.wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), what="the command palette")
    await pilot.press(*query)

    def highlighted() -> str:
        hits = app.screen.query_one("CommandList", OptionList)
        if hits.highlighted is None:
            return ""
        return str(hits.get_option_at_index(hits.highlighted).prompt)

    await ui.wait_for(pilot, lambda: expected in highlighted(), what=f"{expected!r} highlighted for {query!r}")


async def test_the_palette_opens_a_saved_conversation_and_runs_rename(build, store, ui):
    alpha = store.create_conversation("Alpha")
    ui.add_rounds(store, alpha.id, [("alpha question", "alpha answer")])
    beta = store.create_conversation("Beta")
    ui.add_rounds(store, beta.id, [("beta question", "beta answer")])
    app = build()
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        assert app.chat_screen.session.id is None  # the app opens on a new chat
        await _palette(pilot, ui, "alpha", "Open conversation: Alpha")
        await pilot.press("enter")
        await ui.wait_for(pilot, lambda: app.chat_screen.session.id == alpha.id, what="Alpha to open")
        assert isinstance(app.screen, ChatScreen)
        assert ui.view_texts(app) == [("user", "alpha question"), ("assistant", "alpha answer")]

        await _palette(pilot, ui, "renam", "Rename conversation")
        await pilot.press("enter")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, TextPromptScreen), what="the rename dialog")
        assert app.screen.value == "Alpha"


# ------------------------------------------------------------------------------------------------ themes


async def test_a_theme_change_is_saved_when_asked(build, home, ui):
    app = build(persist_theme=True)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        assert app.theme == "chatglm-dark"
        assert not config_path().exists()  # the starting theme is not written
        app.theme = "chatglm-light"
        await ui.wait_for(pilot, config_path().exists, what="the config file")
        assert config_path().is_relative_to(home)
        assert 'theme = "chatglm-light"' in config_path().read_text(encoding="utf-8")

        app.theme = "chatglm-dark"  # and back again: the starting theme is saved too once it was changed
        await ui.wait_for(pilot, lambda: 'theme = "chatglm-dark"' in config_path().read_text(encoding="utf-8"),
                          what="the config file to say chatglm-dark")
        assert "chatglm-light" not in config_path().read_text(encoding="utf-8")


async def test_an_unknown_theme_falls_back_with_a_warning_and_changes_are_not_saved(build, recorder, ui):
    app = build(FakeEngine(), Settings(theme="no-such-theme"))
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        assert app.theme == "chatglm-dark"
        assert recorder.has("Unknown theme 'no-such-theme'", "warning")
        # The app's own notification is also what Textual keeps for the toast rack.
        assert any("no-such-theme" in note.message for note in app._notifications)
        app.theme = "chatglm-light"  # without persist_theme a change is not written
        await pilot.pause(0.05)
        assert app.theme == "chatglm-light"
        assert not config_path().exists()
