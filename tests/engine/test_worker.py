"""The worker thread on the real tiny model: streaming, cancel, errors, close, summarization."""

from __future__ import annotations

import threading
import time

import pytest

from chatglm_tui.engine.budget import plan_budget
from chatglm_tui.engine.protocol import (
    ChatRequest,
    ChunkProgress,
    GenerationFailed,
    GenerationFinished,
    GenerationParams,
    GenerationStarted,
    LoadFailed,
    LoadProgress,
    SummarizeRequest,
    TextDelta,
)
from chatglm_tui.engine.worker import InferenceWorker, LoadReporter, resolving_loader
from chatglm_tui.errors import ChatGLMError, EngineNotReadyError

GREEDY = GenerationParams(do_sample=False, max_new_tokens=24)


@pytest.fixture
def worker(tiny_fp16):
    engine = InferenceWorker(lambda progress: tiny_fp16)
    loads: list = []
    engine.load(loads.append)
    yield engine
    engine.close()


class Collector:
    """Events of one request, delivered from the worker thread."""

    def __init__(self) -> None:
        self.events: list = []
        self.done = threading.Event()

    def __call__(self, event) -> None:
        self.events.append(event)
        if isinstance(event, (GenerationFinished, GenerationFailed)):
            self.done.set()

    def wait(self, timeout: float = 60.0):
        assert self.done.wait(timeout), "the request did not finish"
        return self.events[-1]

    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextDelta))


def test_streamed_deltas_join_to_the_greedy_reply(worker, reference):
    turn = reference["chats"][0][0]
    events = Collector()
    worker.submit(ChatRequest(turn["query"], params=GREEDY), events)
    finished = events.wait()
    assert isinstance(finished, GenerationFinished)
    assert events.text() == finished.text == turn["response"]
    started = next(e for e in events.events if isinstance(e, GenerationStarted))
    assert started.prompt_tokens == len(turn["prompt_ids"]) and started.dropped_rounds == ()
    assert finished.stats.new_tokens == len(turn["response_ids"]) and finished.reason in ("eos", "length")


def test_history_replies_match_the_original(worker, reference):
    conversation = reference["chats"][1]
    history: tuple = ()
    for turn in conversation:
        events = Collector()
        worker.submit(ChatRequest(turn["query"], history=history, params=GREEDY), events)
        assert events.wait().text == turn["response"]
        history += ((turn["query"], turn["response"]),)


def test_cancel_mid_reply_keeps_the_partial_text(worker):
    events = Collector()
    request = ChatRequest("写一篇很长的文章", params=GenerationParams(do_sample=False, max_new_tokens=1500))

    def cancel_on_first_delta(event) -> None:
        events(event)
        if isinstance(event, TextDelta):
            worker.cancel(request.id)

    worker.submit(request, cancel_on_first_delta)
    finished = events.wait()
    assert finished.reason == "stopped"
    assert finished.text and finished.text == events.text()
    assert finished.stats.new_tokens < 1500


def test_an_error_is_reported_and_the_next_request_succeeds(worker, monkeypatch):
    original = worker.glm.generate_ids
    calls = {"n": 0}

    def fail_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return original(*args, **kwargs)

    monkeypatch.setattr(worker.glm, "generate_ids", fail_once)
    first, second = Collector(), Collector()
    worker.submit(ChatRequest("你好", params=GREEDY), first)
    worker.submit(ChatRequest("你好", params=GREEDY), second)
    failed = first.wait()
    assert isinstance(failed, GenerationFailed) and "boom" in failed.message and "\n" not in failed.message
    assert isinstance(second.wait(), GenerationFinished)


def test_a_message_too_long_for_the_window_is_refused(worker):
    events = Collector()
    worker.submit(ChatRequest("字" * 6000, params=GREEDY), events)
    failed = events.wait()
    assert isinstance(failed, GenerationFailed) and "2048-token window" in failed.message


def test_close_returns_within_a_second_during_generation(tiny_fp16):
    engine = InferenceWorker(lambda progress: tiny_fp16)
    engine.load()
    first_delta = threading.Event()
    engine.submit(ChatRequest("写", params=GenerationParams(do_sample=False, max_new_tokens=2000)),
                  lambda event: isinstance(event, TextDelta) and first_delta.set())
    assert first_delta.wait(30)
    start = time.perf_counter()
    engine.close(timeout=1.0)
    assert time.perf_counter() - start < 1.0 and not engine.is_alive()


def test_load_failure_is_raised_and_reported(tmp_path):
    from chatglm_tui.errors import CheckpointError

    events: list = []
    engine = InferenceWorker(resolving_loader(str(tmp_path / "missing")))
    with pytest.raises(CheckpointError, match="does not exist"):
        engine.load(events.append)
    assert isinstance(events[-1], LoadFailed) and "does not exist" in events[-1].message  # resolving fails first


def test_a_long_document_is_summarized_chunk_by_chunk_within_the_window(worker, tokenizer):
    paragraph_en = ("The committee reviewed the annual budget, the hiring plan and the risks of the new "
                    "product line. Several members asked for more detail on the supply chain. ")
    paragraph_zh = "委员会审查了年度预算、招聘计划以及新产品线的风险。几位成员要求提供更多关于供应链的细节。"
    document = "\n\n".join(f"{i}. " + (paragraph_en * 3 if i % 2 else paragraph_zh * 4) for i in range(400))
    assert tokenizer.count(document) > 30000
    calls: list[tuple[int, int]] = []
    original = worker.glm.generate_ids

    def recording(prompt_ids, params, **kwargs):
        calls.append((len(prompt_ids), params.max_new_tokens))
        return original(prompt_ids, params, **kwargs)

    worker.glm.generate_ids = recording
    events = Collector()
    worker.submit(SummarizeRequest(document, params=GenerationParams(do_sample=False, max_new_tokens=48, seed=1)),
                  events)
    finished = events.wait(timeout=240)
    assert isinstance(finished, GenerationFinished) and finished.reason != "stopped"
    assert len(calls) > 15 and all(prompt + reply <= 2048 for prompt, reply in calls)
    progress = [e for e in events.events if isinstance(e, ChunkProgress)]
    assert [p.done for p in progress] == list(range(0, len(calls) + 1))  # "part 1 of N" from the start
    assert progress[0].eta_s is None and all(p.eta_s is not None and p.eta_s >= 0 for p in progress[1:])
    assert progress[-1].eta_s == 0 and progress[0].total > 1
    assert finished.text == events.text()


def test_load_reports_read_quantize_and_ready(fixture_dir):

    events: list = []
    engine = InferenceWorker(resolving_loader(str(fixture_dir / "fp16"), quantization="int4"))
    engine.load(events.append)
    engine.close()
    stages = [e.stage for e in events]
    assert stages[0] == "read" and stages[-1] == "ready" and "quantize" in stages  # first load: builds the cache
    quantize = [e for e in events if e.stage == "quantize"]
    assert quantize[-1].done == quantize[-1].total and [e.done for e in quantize] == sorted(e.done for e in quantize)


def test_summaries_are_deterministic_with_a_seed_and_cancellable(worker):
    document = "\n\n".join(f"Paragraph {i}: " + "the quick brown fox jumps over the lazy dog. " * 30
                           for i in range(60))
    params = GenerationParams(max_new_tokens=16, seed=7)  # sampling on, seeded
    texts = []
    for _ in range(2):
        events = Collector()
        worker.submit(SummarizeRequest(document, question="What does the fox do?", params=params), events)
        texts.append(events.wait(timeout=120).text)
    assert texts[0] == texts[1]

    events = Collector()
    request = SummarizeRequest(document, params=params)

    def cancel_after_first_chunk(event) -> None:
        events(event)
        if isinstance(event, ChunkProgress):
            worker.cancel(request.id)

    worker.submit(request, cancel_after_first_chunk)
    finished = events.wait(timeout=120)
    assert finished.reason == "stopped"
    assert len([e for e in events.events if isinstance(e, ChunkProgress)]) == 1


def _timeline(loader) -> tuple[list, object]:
    """Run a loader directly; return what it reported, tokenizer hand-over included, in order, and its model."""
    timeline: list = []
    glm = loader(LoadReporter(timeline.append, lambda tokenizer: timeline.append(("tokenizer", tokenizer))))
    return timeline, glm


def test_resolving_loader_loads_a_directory_with_the_tokenizer_first(fixture_dir):
    timeline, glm = _timeline(resolving_loader(str(fixture_dir / "int4"), quantization=None, dtype="float32"))
    assert timeline[0] == LoadProgress("read", 0, 1, f"loading {fixture_dir / 'int4'}")
    assert timeline[1] == ("tokenizer", glm.tokenizer)  # handed over before any weights, and not read twice
    assert all(isinstance(e, LoadProgress) and e.stage == "read" for e in timeline[2:-1])
    ready = LoadProgress("ready", 1, 1, "exact: float32, int4-row weights dequantized per call")  # what runs
    assert timeline[-1] == ready and len(timeline) > 3


def test_resolving_loader_reports_the_download(fixture_dir, monkeypatch):
    from chatglm_tui.model import hub

    calls: list = []

    def fake_resolve(ref, download=False, progress=None):
        calls.append((ref, download))
        progress(0, 300, f"downloading {ref}")
        progress(300, 300, f"downloading {ref} (1 of 1 files)")
        return fixture_dir / "int4"

    monkeypatch.setattr(hub, "resolve_model", fake_resolve)
    events: list = []
    engine = InferenceWorker(resolving_loader("owner/tiny-chatglm", quantization=None, dtype="float32"))
    engine.load(events.append)
    engine.close()
    assert calls == [("owner/tiny-chatglm", True)]
    assert events[:3] == [LoadProgress("download", 0, 300, "downloading owner/tiny-chatglm"),
                          LoadProgress("download", 300, 300, "downloading owner/tiny-chatglm (1 of 1 files)"),
                          LoadProgress("read", 0, 1, f"loading {fixture_dir / 'int4'}")]
    assert events[-1].stage == "ready" and engine.budget([], "你好").fits


@pytest.mark.parametrize(("ref", "expected"), [("missing-dir/model/int4", "does not exist"),
                                               ("owner/absent", "cannot be reached")])
def test_a_reference_that_cannot_be_resolved_fails_the_load(ref, expected, tmp_path, monkeypatch):
    from chatglm_tui.model.hub import ModelNotFoundError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read at call time: the repo id is never looked up online
    events: list = []
    engine = InferenceWorker(resolving_loader(ref))
    with pytest.raises(ModelNotFoundError, match=expected) as error:
        engine.load(events.append)
    assert events == [LoadFailed(str(error.value))]
    with pytest.raises(EngineNotReadyError):
        engine.budget([], "hello")


def test_budget_works_once_the_tokenizer_is_handed_over(tiny_fp16):
    hand_over, handed_over, finish = threading.Event(), threading.Event(), threading.Event()

    def loader(report: LoadReporter):
        assert hand_over.wait(10)
        report.tokenizer_ready(tiny_fp16.tokenizer)
        handed_over.set()
        assert finish.wait(10)  # the weights are still "loading"
        return tiny_fp16

    engine = InferenceWorker(loader)
    loading = threading.Thread(target=engine.load)
    loading.start()
    history = [("你好", "你好👋！我是人工智能助手 ChatGLM-6B。")]
    try:
        with pytest.raises(EngineNotReadyError, match="the tokenizer is not loaded yet"):
            engine.budget(history, "hello")
        hand_over.set()
        assert handed_over.wait(10)
        expected = plan_budget(tiny_fp16.tokenizer, 2048, history, "hello", "be brief", 256)
        assert engine.glm is None and engine.budget(history, "hello", "be brief", 256) == expected
    finally:
        hand_over.set()
        finish.set()
        loading.join(10)
    assert engine.glm is tiny_fp16 and engine.budget(history, "hello", "be brief", 256) == expected
    engine.close()


def test_an_unexpected_loader_exception_fails_the_load():
    def loader(report: LoadReporter):
        raise RuntimeError("boom\nsecond line")

    events: list = []
    engine = InferenceWorker(loader)
    with pytest.raises(ChatGLMError, match="^loading the model failed: RuntimeError: boom$") as error:
        engine.load(events.append)
    assert events == [LoadFailed("loading the model failed: RuntimeError: boom")]
    assert isinstance(error.value.__cause__, RuntimeError)
