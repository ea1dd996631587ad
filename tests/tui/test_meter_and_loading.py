"""The context meter (counted independently from the store's history) and the model's loading, gated and failed."""

from __future__ import annotations

import threading

from textual.widgets import Button, ProgressBar, Static

from chatglm_tui.config.settings import Settings
from chatglm_tui.engine.fake import FakeEngine
from chatglm_tui.engine.protocol import LoadProgress
from chatglm_tui.tui.screens.chat import ChatScreen
from chatglm_tui.tui.screens.load_error import LoadErrorScreen
from chatglm_tui.tui.screens.modals import ConfirmScreen
from chatglm_tui.tui.widgets.budget_meter import BudgetMeter

SIZE = (120, 40)
LEFT_OUT = "left out of the model's context"


def _meter(app) -> BudgetMeter:
    return app.chat_screen.query_one("#meter", BudgetMeter)


def _status(app) -> str:
    return str(app.chat_screen.query_one("#status-state", Static).render())


# ------------------------------------------------------------------------------------------------ the meter


async def test_the_meter_counts_history_instruction_draft_and_reserve(build, store, ui):
    conversation = store.create_conversation("Counted", params={"max_new_tokens": 300}, instruction="Be kind.")
    ui.add_rounds(store, conversation.id, [("What is a token?", "A piece of a word."),
                                           ("And a window?", "How many tokens the model reads at once.")])
    engine = FakeEngine()
    app = build(engine, conversation_id=conversation.id)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        meter = _meter(app)
        history = store.history(conversation.id)
        assert meter.budget == engine.budget(history, "", "Be kind.", reserve=300)

        draft = "Why?"
        await pilot.press(*draft)
        expected = engine.budget(history, draft, "Be kind.", reserve=300)
        await ui.wait_for(pilot, lambda: meter.budget == expected, what="the meter to count the draft")
        assert expected.query_tokens > 0 and expected.instruction_tokens > 0 and expected.history_tokens > 0
        text = str(meter.render())
        assert f"{expected.used:,} + {expected.reserved:,} / {expected.window:,}" in text
        # 84 columns for the meter: the legend's short words ([gMASK] <sop> count with the draft, not the history).
        for label, tokens in (("hist", expected.history_tokens - 2), ("instr", expected.instruction_tokens),
                              ("draft", expected.query_tokens + 2), ("reply", expected.reserved)):
            assert f"■ {label} {tokens:,}" in text
        assert len(text) <= meter.size.width
        assert "left out" not in text and not meter.has_class("-danger")

        app.chat_screen.prompt.insert(" And how long can my question be?")  # as a paste would
        longer = engine.budget(history, draft + " And how long can my question be?", "Be kind.", reserve=300)
        await ui.wait_for(pilot, lambda: meter.budget == longer, what="the meter to follow the typing")


def _five_rounds(store, ui):
    conversation = store.create_conversation("Five rounds")
    answer = "an answer that is forty characters long."
    written = ui.add_rounds(store, conversation.id, [(f"question number {n}", answer) for n in range(5)])
    return conversation, written


async def test_dropped_rounds_are_announced_and_marked_but_stay_saved(build, store, ui):
    conversation, written = _five_rounds(store, ui)
    engine = FakeEngine(["fine"], window=200)
    app = build(engine, Settings(max_new_tokens=50), conversation_id=conversation.id)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        meter = _meter(app)
        history = store.history(conversation.id)
        assert meter.budget == engine.budget(history, "", None, reserve=50)
        assert meter.budget.dropped_rounds == (0,)
        assert "1 oldest round left out" in str(meter.render())
        assert meter.has_class("-danger")

        def marked() -> list[bool]:
            return [view.has_class("-left-out") for view in ui.views(app)]

        assert marked() == [True] * 2 + [False] * 8
        assert LEFT_OUT in ui.header(ui.views(app)[0]) and LEFT_OUT in ui.header(ui.views(app)[1])
        assert LEFT_OUT not in ui.header(ui.views(app)[2])

        draft = "x" * 30  # a longer draft pushes one more round out
        await pilot.press("x")
        app.chat_screen.prompt.insert(draft[1:])
        expected = engine.budget(history, draft, None, reserve=50)
        assert expected.dropped_rounds == (0, 1)
        await ui.wait_for(pilot, lambda: meter.budget == expected, what="the meter to count the draft")
        assert "2 oldest rounds left out" in str(meter.render())
        assert marked() == [True] * 4 + [False] * 6
        assert all(LEFT_OUT in ui.header(view) for view in ui.views(app)[:4])
        assert "2 oldest rounds left out" in meter.tooltip

        await ui.send(pilot, draft)  # sent anyway: the engine gets the whole history and drops what it must
        assert engine.requests[-1].history == tuple(history)
        assert len(store.all_messages(conversation.id)) == 12
        assert [m.id for m in store.all_messages(conversation.id)[:10]] == [m.id for m in written]


async def test_a_draft_too_long_for_the_window_is_refused(build, store, recorder, ui):
    engine = FakeEngine(window=200)
    app = build(engine, Settings(max_new_tokens=50, instruction="Short answers."))
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        meter = _meter(app)
        await pilot.press(*"hello")  # a new chat counts the configured instruction and reply limit
        expected = engine.budget([], "hello", "Short answers.", reserve=50)
        await ui.wait_for(pilot, lambda: meter.budget == expected, what="the meter to count the draft")
        assert "reply 50" in str(meter.render()) and "/ 200" in str(meter.render())

        draft = "y" * 400
        app.chat_screen.prompt.load_text(draft)
        await ui.wait_for(pilot, lambda: meter.budget is not None and not meter.budget.fits,
                          what="the meter to see the draft does not fit")
        assert meter.budget == engine.budget([], draft, "Short answers.", reserve=50)
        assert "too long for the window" in str(meter.render())
        await pilot.press("enter")  # too long on its own: a summary in parts is offered, Cancel has the focus
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the offer to summarize")
        assert "Summarize it in parts" in app.screen.message
        await pilot.press("enter")  # Cancel
        await ui.wait_for(pilot, lambda: app.screen is app.chat_screen, what="the offer to close")
        assert engine.requests == [] and store.list_conversations() == [] and ui.views(app) == []
        assert app.chat_screen.prompt.text == draft  # kept, to be shortened


# ------------------------------------------------------------------------------------------------ loading


async def test_while_the_model_loads_progress_shows_and_saved_chats_can_be_browsed(build, store, ui):
    saved = store.create_conversation("Saved earlier")
    ui.add_rounds(store, saved.id, [("old question", "old answer")])
    gate = threading.Event()
    engine = FakeEngine(load_stages=[LoadProgress("download", 1, 4), LoadProgress("read", 2, 8)], load_gate=gate)
    app = build(engine)
    screen = app.chat_screen
    try:
        async with app.run_test(size=SIZE) as pilot:
            await ui.started(pilot)
            await ui.wait_for(pilot, lambda: "reading weights 2/8" in _status(app), what="the load progress")
            bar = screen.query_one("#load-progress", ProgressBar)
            assert bar.display and bar.progress == 2 and bar.total == 8
            assert screen.load_state == "loading"
            assert screen.query_one("#status").has_class("-loading")

            await pilot.press("ctrl+o", "enter")  # to the list
            await pilot.press("enter")  # open the highlighted (only) chat
            await ui.wait_for(pilot, lambda: screen.session.id == saved.id, what="the saved chat to open")
            assert ui.view_texts(app) == [("user", "old question"), ("assistant", "old answer")]
            assert _meter(app).budget == engine.budget(store.history(saved.id), "", None, reserve=512)
            assert screen.load_state == "loading"

            gate.set()
            await ui.wait_for(pilot, lambda: screen.load_state == "ready", what="the model to be ready")
            await ui.wait_for(pilot, lambda: _status(app) == "● ready", what="the status to say ready")
            assert not bar.display
            assert screen.query_one("#status").has_class("-ready")
    finally:
        gate.set()


async def test_once_loaded_the_status_bar_names_the_backend_that_runs(build, ui):
    app = build(FakeEngine(backend="cuda: fp16-resident, CUDA graph"))
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        model = str(app.chat_screen.query_one("#status-model", Static).render())
        assert "cuda: fp16-resident, CUDA graph" in model and "auto" not in model  # the settings replaced
        assert _status(app) == "● ready"


async def test_a_question_sent_while_loading_waits_for_the_model(build, store, ui):
    gate = threading.Event()
    engine = FakeEngine(["Answered once loaded."], load_stages=[LoadProgress("read", 1, 8)], load_gate=gate)
    app = build(engine)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await ui.started(pilot)
            await ui.wait_for(pilot, lambda: "reading weights 1/8" in _status(app), what="the load progress")
            await ui.send(pilot, "early question", finish=False)
            assert [m.text for m in store.messages(store.latest().id)] == ["early question"]  # saved at once
            waiting = ui.views(app)[-1]
            assert waiting.streaming and "waiting for the model to load" in ui.header(waiting)
            gate.set()
            await ui.finished(pilot)
            assert [m.text for m in store.messages(store.latest().id)] == ["early question", "Answered once loaded."]
            assert ui.view_texts(app)[-1] == ("assistant", "Answered once loaded.")
    finally:
        gate.set()


async def test_leaving_a_chat_whose_question_waits_for_the_model(build, store, ui):
    gate = threading.Event()
    engine = FakeEngine(["Late answer."], load_stages=[LoadProgress("read", 1, 8)], load_gate=gate)
    app = build(engine)
    screen = app.chat_screen
    try:
        async with app.run_test(size=SIZE) as pilot:
            await ui.started(pilot)
            await ui.wait_for(pilot, lambda: "reading weights 1/8" in _status(app), what="the load progress")
            await ui.send(pilot, "early question", finish=False)
            conversation = store.latest()
            await pilot.press("ctrl+n")
            await ui.wait_for(pilot, lambda: screen.session.conversation is None, what="the new chat")
            gate.set()
            await ui.wait_for(pilot, lambda: screen.pending is None or not app.is_running, what="the reply to end")
            await pilot.pause(0.05)
            assert app.is_running and ui.views(app) == []
            question, reply = store.messages(conversation.id)
            assert reply.stopped and reply.parent_id == question.id
    finally:
        gate.set()


async def test_a_load_failure_offers_browsing_and_sending_then_fails_politely(build, store, recorder, ui):
    saved = store.create_conversation("Saved earlier")
    ui.add_rounds(store, saved.id, [("old question", "old answer")])
    engine = FakeEngine(load_error="no checkpoint at /nowhere")
    app = build(engine)
    async with app.run_test(size=SIZE) as pilot:
        await ui.wait_for(pilot, lambda: isinstance(app.screen, LoadErrorScreen), what="the load error screen")
        error = app.screen
        assert "no checkpoint at /nowhere" in str(error.query_one(".error-text", Static).render())
        assert app.focused is error.query_one("#browse", Button)
        await pilot.press("enter")  # "Browse saved chats"
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the chat screen")
        assert app.chat_screen.load_state == "failed"
        assert "model not loaded" in _status(app)

        app.chat_screen.prompt.focus()
        app.chat_screen.prompt.load_text("Can you hear me?")
        await pilot.press("enter")
        await ui.wait_for(pilot, lambda: recorder.messages("error"), what="the refusal")
        assert recorder.has("The model is not loaded: no checkpoint at /nowhere", "error")
        assert engine.requests == []
        assert [c.id for c in store.list_conversations()] == [saved.id]
        assert len(store.all_messages(saved.id)) == 2

        await app.chat_screen.open_conversation(saved.id)  # browsing still works
        await pilot.pause(0.02)
        assert ui.view_texts(app) == [("user", "old question"), ("assistant", "old answer")]
        await pilot.press("ctrl+r")  # regenerating is refused the same way
        await pilot.pause(0.02)
        assert engine.requests == [] and len(store.all_messages(saved.id)) == 2


async def test_quit_on_a_load_failure_exits_with_status_1(build, ui):
    app = build(FakeEngine(load_error="out of memory"))
    async with app.run_test(size=SIZE) as pilot:
        await ui.wait_for(pilot, lambda: isinstance(app.screen, LoadErrorScreen), what="the load error screen")
        await pilot.click("#quit")
        await ui.wait_for(pilot, lambda: not app.is_running, what="the app to exit")
    assert app.return_code == 1
