"""Regressions from review: engine events racing with the user moving around, store changes made elsewhere,
failed regenerations, stale meters, and drafts kept across an edit. Each checks the screen and the store."""

from __future__ import annotations

import threading

from textual.widgets import OptionList

from chatglm_tui.config.settings import Settings
from chatglm_tui.engine.fake import FakeEngine
from chatglm_tui.engine.protocol import (
    GenerationFailed,
    GenerationStarted,
    LoadProgress,
)
from chatglm_tui.tui.screens.modals import ConfirmScreen

SIZE = (120, 40)
SLOW = "streaming " * 50  # 100 chunks of 5 characters at 0.4 s: it is still going when the test acts


def _two_chats(store, ui):
    """Alpha and Beta, one round each."""
    alpha, beta = store.create_conversation("Alpha"), store.create_conversation("Beta")
    ui.add_rounds(store, alpha.id, [("q", "a")])
    ui.add_rounds(store, beta.id, [("bq", "ba")])
    return alpha, beta


async def _leave_mid_reply(pilot, ui, screen, beta) -> None:
    """Ask in the chat on screen, wait until the reply streams, then open `beta` (which stops the reply)."""
    await ui.ready(pilot)
    await ui.send(pilot, "alpha question", finish=False)
    await ui.wait_for(pilot, lambda: bool(screen.streamed), what="the reply to start streaming")
    await screen.open_conversation(beta.id)


async def test_export_writes_the_branch_on_screen(build, store, ui, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    app = build(FakeEngine(["FIRST answer", "SECOND answer"]))
    screen = app.chat_screen
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await ui.send(pilot, "question")
        await pilot.press("ctrl+r")
        await ui.wait_for(pilot, lambda: len(app.engine.requests) == 2)
        await ui.finished(pilot)
        screen.conversation.views[-1].action_version(-1)  # back to the first answer
        await ui.wait_for(pilot, lambda: ui.view_texts(app)[-1] == ("assistant", "FIRST answer"))
        await pilot.press("f4")
        await ui.wait_for(pilot, lambda: list(tmp_path.glob("*.md")))
    text = next(tmp_path.glob("*.md")).read_text(encoding="utf-8")
    assert "FIRST answer" in text and "SECOND answer" not in text


async def test_deleting_another_chat_keeps_the_reply_that_was_stopped_by_leaving(build, store, ui):
    alpha, beta = _two_chats(store, ui)
    app = build(FakeEngine([SLOW], chunk_size=5, delay=0.4), conversation_id=alpha.id)
    screen = app.chat_screen
    async with app.run_test(size=SIZE) as pilot:
        await _leave_mid_reply(pilot, ui, screen, beta)
        screen.action_delete()
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("tab", "enter")
        await ui.wait_for(pilot, lambda: screen.pending is None, timeout=5)
    last = store.messages(alpha.id)[-1]
    assert (last.role, last.stopped) == ("assistant", True) and last.text and SLOW.startswith(last.text)
    assert [c.title for c in store.list_conversations()] == ["Alpha"]


async def test_quitting_after_leaving_a_chat_mid_reply_saves_its_partial_reply(build, store, ui):
    alpha, beta = _two_chats(store, ui)
    app = build(FakeEngine([SLOW], chunk_size=5, delay=0.4), conversation_id=alpha.id)
    screen = app.chat_screen
    async with app.run_test(size=SIZE) as pilot:
        await _leave_mid_reply(pilot, ui, screen, beta)
        await pilot.press("ctrl+q")
    last = store.messages(alpha.id)[-1]
    assert (last.role, last.stopped) == ("assistant", True) and SLOW.startswith(last.text) and last.text


async def test_coming_back_before_the_stopped_reply_lands_shows_it(build, store, ui):
    alpha, beta = _two_chats(store, ui)
    app = build(FakeEngine([SLOW], chunk_size=5, delay=0.4), conversation_id=alpha.id)
    screen = app.chat_screen
    async with app.run_test(size=SIZE) as pilot:
        await _leave_mid_reply(pilot, ui, screen, beta)
        await screen.open_conversation(alpha.id)
        await ui.wait_for(pilot, lambda: screen.pending is None)
        await pilot.pause(0.1)
        shown = [text for _, text in ui.view_texts(app)]
        assert shown == [message.text for message in screen.session.branch]
        assert shown[-2:] == ["alpha question", store.messages(alpha.id)[-1].text]


async def test_escape_takes_back_a_question_waiting_for_the_model(build, store, ui, recorder):
    gate = threading.Event()
    engine = FakeEngine(["Answer."], load_stages=[LoadProgress("read", 1, 8)], load_gate=gate)
    app = build(engine)
    screen = app.chat_screen
    try:
        async with app.run_test(size=SIZE) as pilot:
            await ui.started(pilot)
            await ui.send(pilot, "early question", finish=False)
            await pilot.press("escape")
            await ui.wait_for(pilot, lambda: screen.pending is None, what="Esc to take the question back")
            assert ui.view_texts(app) == [("user", "early question")]  # no reply bubble left waiting
            assert recorder.has("Not sent to the model")
            gate.set()
            await ui.wait_for(pilot, lambda: screen.load_state == "ready")
            await pilot.press("ctrl+r")  # asks it now
            await ui.finished(pilot)
            assert ui.view_texts(app)[-1] == ("assistant", "Answer.")
    finally:
        gate.set()
    conversation = store.latest()
    assert [(m.role, m.text) for m in store.messages(conversation.id)] == [
        ("user", "early question"), ("assistant", "Answer.")]


class FailSecond(FakeEngine):
    def _reply(self, request, reply, on_event):
        if len(self.requests) == 2:
            on_event(GenerationStarted(request.id, 3))
            on_event(GenerationFailed(request.id, "boom"))
            return
        super()._reply(request, reply, on_event)


async def test_a_failed_regenerate_shows_the_old_reply_again_and_history_stays_right(build, store, ui):
    app = build(FailSecond(["A1 answer", "never", "A2 answer"]))
    screen = app.chat_screen
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await ui.send(pilot, "Q1")
        await pilot.press("ctrl+r")
        await ui.wait_for(pilot, lambda: len(app.engine.requests) == 2)
        await ui.finished(pilot)
        assert ui.view_texts(app) == [("user", "Q1"), ("assistant", "A1 answer")]
        await ui.send(pilot, "Q2")
        assert app.engine.requests[2].history == (("Q1", "A1 answer"),)
        q2 = screen.session.branch[-2]
        assert (q2.text, screen.session.versions(q2)) == ("Q2", (1, 1))
    messages = store.messages(store.latest().id)
    assert [(m.role, m.text) for m in messages] == [("user", "Q1"), ("assistant", "A1 answer"),
                                                      ("user", "Q2"), ("assistant", "A2 answer")]


async def test_a_pasted_message_too_long_for_the_window_is_refused_at_once(build, store, ui, recorder):
    app = build(FakeEngine(["ok"], window=600), Settings(max_new_tokens=100))
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        app.chat_screen.prompt.insert("x" * 2000)  # like a paste, and Enter before the meter's pause
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert app.engine.requests == [] and store.list_conversations() == []
        assert isinstance(app.screen, ConfirmScreen)  # counted at once: the summary in parts is offered


async def test_prompt_history_respects_wrapped_lines_and_edits(build, ui):
    app = build(FakeEngine(["ok"]))
    async with app.run_test(size=(100, 40)) as pilot:
        await ui.ready(pilot)
        prompt = app.chat_screen.prompt
        await ui.send(pilot, "one")
        await ui.send(pilot, "two")
        prompt.focus()
        await pilot.press("up")
        assert prompt.text == "two"
        await pilot.press("up")
        assert prompt.text == "one"
        await pilot.press("down", "down")
        assert prompt.text == ""
        prompt.load_text("word " * 60)  # one line, wrapped on screen
        prompt.move_cursor(prompt.document.end)
        await pilot.pause()
        await pilot.press("up")
        assert prompt.text == "word " * 60 and prompt.cursor_location[1] < len("word " * 60)  # moved up
        prompt.load_text("")
        await pilot.press("up", *" extra")
        assert prompt.text == "two extra"
        await pilot.press("up")  # an edited recall is a new draft: ↑ starts from the newest prompt again
        assert prompt.text == "two"
        await pilot.press("down")
        assert prompt.text == "two extra"


async def test_a_conversation_deleted_elsewhere_is_reported_not_fatal(build, store, ui, recorder):
    alpha, beta = _two_chats(store, ui)
    app = build(FakeEngine(["ok"]), conversation_id=beta.id)
    screen = app.chat_screen
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        store.delete(alpha.id)  # `chatglm sessions rm` in another terminal
        options = screen.query_one("#conversation-list", OptionList)
        options.focus()
        options.highlighted = 1  # Alpha, still listed
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert app.is_running and recorder.has("no conversation", "error")
        assert screen.session.id == beta.id
        store.delete(beta.id)  # and now the one on screen
        screen.prompt.load_text("hello")
        screen.prompt.focus()
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert app.is_running and screen.prompt.text == "hello"  # nothing lost: the text is still there
        assert app.engine.requests == []


async def test_an_edit_gives_the_unsent_draft_back(build, ui):
    app = build(FakeEngine(["ok", "ok again"]))
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        prompt = app.chat_screen.prompt
        await ui.send(pilot, "first question")
        prompt.focus()
        await pilot.press(*"my unsent draft", "f5")
        assert prompt.text == "first question"
        await pilot.press("escape")
        assert prompt.text == "my unsent draft"
        await pilot.press("f5")
        prompt.load_text("first question, edited")
        await pilot.press("enter")
        await ui.finished(pilot)
        assert prompt.text == "my unsent draft"  # back after the edit was sent


async def test_conversations_added_elsewhere_appear_in_the_sidebar(build, store, ui, monkeypatch):
    from chatglm_tui.tui.screens.chat import ChatScreen

    monkeypatch.setattr(ChatScreen, "STORE_POLL_SECONDS", 0.1)
    app = build(FakeEngine(["ok"]))
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        assert ui.sidebar_labels(app) == ["No conversations yet"]
        other = store.create_conversation("From chatglm ask")  # another process, same database
        ui.add_rounds(store, other.id, [("q", "a")])
        await ui.wait_for(pilot, lambda: ui.sidebar_labels(app) == ["From chatglm ask"], timeout=3)
        store.rename(other.id, "Renamed elsewhere")
        await ui.wait_for(pilot, lambda: ui.sidebar_labels(app) == ["Renamed elsewhere"], timeout=3)
