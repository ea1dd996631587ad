"""Continuing a reply cut off at its limit: the model reads the reply so far as the start of its answer (after
`<sop>`, where its own tokens go) and the reply sent back begins with it."""

from __future__ import annotations

import threading

from chatglm_tui.config.settings import Settings
from chatglm_tui.engine.protocol import (
    ChatRequest,
    GenerationFinished,
    GenerationParams,
    TextDelta,
)
from chatglm_tui.engine.worker import InferenceWorker
from chatglm_tui.session.chat_session import ChatSession
from chatglm_tui.store import SessionStore


def _run(worker: InferenceWorker, request: ChatRequest) -> tuple[GenerationFinished, str]:
    events: list = []
    done = threading.Event()
    worker.submit(request, lambda e: (events.append(e), isinstance(e, GenerationFinished) and done.set()))
    assert done.wait(60)
    return events[-1], "".join(e.text for e in events if isinstance(e, TextDelta))


def test_a_continued_reply_begins_with_the_cut_one_and_reads_it_as_its_own(tiny_fp16):
    worker = InferenceWorker(lambda report: tiny_fp16)
    worker.load()
    try:
        greedy = GenerationParams(do_sample=False, max_new_tokens=8)
        cut, _ = _run(worker, ChatRequest("你好", params=greedy))
        assert cut.reason == "length"
        continued, streamed = _run(worker, ChatRequest("你好", params=greedy, reply_prefix=cut.text))
        assert continued.text.startswith(cut.text) and len(continued.text) > len(cut.text)
        assert streamed == continued.text and continued.stats.new_tokens == 8  # new tokens only
        prefix_ids = tiny_fp16.tokenizer.encode_text(cut.text, parse_special=False)
        expected = tiny_fp16.prompt_ids("你好") + prefix_ids
        generated = list(tiny_fp16.generate_ids(expected, greedy))
        decoder = tiny_fp16.response_decoder()
        decoder.add(prefix_ids + generated)
        decoder.flush()
        assert continued.text == decoder.text  # exactly the model's continuation of the prompt with the reply
    finally:
        worker.close()


def test_the_session_continues_the_last_reply_as_a_new_version(tmp_path):
    with SessionStore(tmp_path / "s.sqlite3") as store:
        session = ChatSession(store, Settings(max_new_tokens=8))
        assert session.continue_reply() is None
        question, pending = session.send("q1")
        reply = session.save_reply(pending, GenerationFinished(pending.request.id, "length", "cut",
                                                               _stats()))
        continued = session.continue_reply()
        assert continued is not None and continued.request.reply_prefix == "cut"
        assert continued.parent_id == question.id and continued.previous_leaf == reply.id
        saved = session.save_reply(continued, GenerationFinished(continued.request.id, "eos", "cut and more",
                                                                 _stats()))
        assert session.versions(saved) == (2, 2) and [m.text for m in session.branch] == ["q1", "cut and more"]


def _stats():
    from chatglm_tui.engine.protocol import GenerationStats

    return GenerationStats(3, 8, 0.1, 9.0, 0.9)
