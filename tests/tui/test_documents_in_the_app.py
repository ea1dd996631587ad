"""Long documents and cut-off replies in the chat app: a draft too long for the window is summarized in parts
(if the user wants), a file can be attached, and a reply cut off at its limit is marked and can be continued."""

from __future__ import annotations

from chatglm_tui.config.settings import Settings
from chatglm_tui.engine.fake import FakeEngine
from chatglm_tui.engine.protocol import ChatRequest, ChunkProgress, SummarizeRequest
from chatglm_tui.engine.summarize import history_stand_in
from chatglm_tui.store.rounds import HISTORY_TEXT
from chatglm_tui.tui.messages import post_engine_event
from chatglm_tui.tui.screens.modals import ConfirmScreen, TextPromptScreen

SIZE = (120, 36)


async def test_a_draft_too_long_for_the_window_can_be_summarized_in_parts(build, store, ui):
    engine = FakeEngine(["the summary"], window=400, delay=1.0, chunk_size=20)  # its first text after 1 s
    app = build(engine, Settings(max_new_tokens=50))
    document = "A long report about budgets and risks. " * 60
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        app.chat_screen.prompt.load_text(document)
        await pilot.press("enter")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the offer to summarize")
        await pilot.click("#confirm")
        await ui.wait_for(pilot, lambda: engine.requests, what="the summary request")
        request = engine.requests[0]
        assert isinstance(request, SummarizeRequest) and request.document == document.strip("\n")
        # Progress per part, in the reply's header, while the parts are read.
        post_engine_event(app.chat_screen, ChunkProgress(request.id, 1, 4, 30.0))
        await ui.wait_for(pilot, lambda: "part 2 of 4 · about 30 s left" in ui.header(ui.views(app)[-1]),
                          what="the part being summarized")
        await ui.finished(pilot)
        assert ui.view_texts(app)[-1] == ("assistant", "the summary")
        await ui.send(pilot, "and the risks?")  # a follow-up sees what was asked and the summary
    question = store.messages(store.latest().id)[0]
    assert question.text == document.strip("\n")  # the whole document is kept
    assert question.stats[HISTORY_TEXT] == history_stand_in(question.text, None)
    follow_up = engine.requests[-1]
    assert isinstance(follow_up, ChatRequest)
    assert follow_up.history == ((history_stand_in(question.text, None), "the summary"),)


async def test_an_attached_file_lands_in_the_prompt(build, ui, tmp_path):
    report = tmp_path / "report.txt"
    report.write_text("Quarterly report\nRevenue grew \x1b[31m 5%.\n", encoding="utf-8")
    app = build(FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        await pilot.press("ctrl+f")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, TextPromptScreen), what="the path dialog")
        await pilot.press(*str(report), "enter")
        await ui.wait_for(pilot, lambda: "Quarterly report" in app.chat_screen.prompt.text, what="the file's text")
        assert "\x1b" not in app.chat_screen.prompt.text and "␛" in app.chat_screen.prompt.text  # shown, inert
        await pilot.press("ctrl+f")
        await ui.wait_for(pilot, lambda: isinstance(app.screen, TextPromptScreen), what="the path dialog")
        await pilot.press(*str(tmp_path / "missing.txt"), "enter")
        await ui.wait_for(pilot, lambda: app.screen is app.chat_screen, what="the dialog to close")
        assert app.chat_screen.prompt.text.count("Quarterly report") == 1


async def test_a_reply_cut_off_at_its_limit_is_marked_and_f9_continues_it(build, store, ui):
    conversation = store.create_conversation("cut", params={"max_new_tokens": 8})
    question = store.add_message(conversation.id, "user", "tell me everything")
    store.add_message(conversation.id, "assistant", "Once upon a", parent_id=question.id, new_tokens=8,
                      stats={"reason": "length"})
    engine = FakeEngine([" time, the end."])
    app = build(engine, Settings(), conversation_id=conversation.id)
    async with app.run_test(size=SIZE) as pilot:
        await ui.ready(pilot)
        assert "cut off at the reply limit" in ui.header(ui.views(app)[-1])
        await pilot.press("f9")
        await ui.wait_for(pilot, lambda: engine.requests, what="the continuation")
        request = engine.requests[0]
        assert isinstance(request, ChatRequest) and request.reply_prefix == "Once upon a"
        assert request.query == "tell me everything" and request.history == ()
        await ui.finished(pilot)
        assert "‹ 2/2 ›" in ui.header(ui.views(app)[-1])  # a new version; the cut one stays
