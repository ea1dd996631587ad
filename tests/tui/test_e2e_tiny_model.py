"""End to end: the app on the shared tiny checkpoint, with the real engine on its real thread.

Type, send, watch the reply stream in, check the meter against the engine's exact budget and the store's
contents, for two rounds whose greedy replies must equal the original implementation's (reference.json).
"""

from __future__ import annotations

import time

from chatglm_tui.config.settings import Settings
from chatglm_tui.engine.budget import plan_budget
from chatglm_tui.engine.worker import InferenceWorker, resolving_loader
from chatglm_tui.store import SessionStore
from chatglm_tui.tui.app import make_app
from chatglm_tui.tui.widgets.budget_meter import BudgetMeter
from chatglm_tui.tui.widgets.message_view import MessageView
from chatglm_tui.tui.widgets.prompt_input import PromptInput

REPLY_TOKENS = 24  # what reference.json's greedy replies were generated with


async def wait_for(pilot, predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


async def test_type_send_stream_meter_and_store_on_the_tiny_model(fixture_dir, reference, tmp_path):
    checkpoint = fixture_dir / "fp16"
    settings = Settings(model=str(checkpoint), quantization="none", dtype="float32", temperature=0.0,
                        max_new_tokens=REPLY_TOKENS)
    engine = InferenceWorker(resolving_loader(str(checkpoint), None, "cpu", "float32"))
    store = SessionStore(tmp_path / "sessions.sqlite3")
    turns = reference["chats"][1]
    try:
        app = make_app(settings, engine, store, persist_theme=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.chat_screen
            await wait_for(pilot, lambda: screen.load_state == "ready", "the model to load")
            assert "ready" in str(screen.query_one("#status-state").render())
            for number, turn in enumerate(turns, start=1):
                await pilot.press(*turn["query"])
                assert screen.query_one(PromptInput).text == turn["query"]
                await pilot.press("enter")
                await wait_for(pilot, lambda: screen.pending is None and screen.reply_view is None,
                               f"reply {number}")
                views = screen.conversation.views
                assert len(views) == 2 * number
                assert views[-1].text == turn["response"]  # streamed in, then rendered in full
                assert views[-2].text == turn["query"]

            # The meter counts exactly what the engine will send next, with the real tokenizer.
            meter = screen.query_one(BudgetMeter)
            await pilot.press(*"ok")
            await wait_for(pilot, lambda: meter.budget is not None and meter.budget.query_tokens > 0, "the meter")
            history = store.history(store.latest().id)
            expected = plan_budget(engine.glm.tokenizer, engine.context_window, history, "ok", None, REPLY_TOKENS)
            assert meter.budget == expected
            assert expected.history_tokens > 2 * len(turns)
            assert f"{expected.used:,} + {REPLY_TOKENS}" in str(meter.render())
            assert all(isinstance(view, MessageView) and not view.has_class("-left-out")
                       for view in screen.conversation.views)
    finally:
        engine.close()

    conversation = store.latest()
    assert conversation is not None and conversation.title == turns[0]["query"]
    messages = store.messages(conversation.id)
    assert [(m.role, m.text) for m in messages] == [
        (role, text) for turn in turns for role, text in (("user", turn["query"]), ("assistant", turn["response"]))]
    assert all(m.parent_id == (messages[i - 1].id if i else None) for i, m in enumerate(messages))
    assert messages[1].new_tokens == len(turns[0]["response_ids"]) and not messages[1].stopped
    store.close()
