"""Planning a long summary with the real tokenizer: linear work, chunks that fit, nothing lost, cancellable."""

from __future__ import annotations

import random
import threading

import pytest

from chatglm_tui.engine import summarize
from chatglm_tui.engine.protocol import (
    ChunkProgress,
    GenerationFinished,
    GenerationParams,
    GenerationStarted,
    SummarizeRequest,
)
from chatglm_tui.engine.summarize import Summarizer, split_text
from chatglm_tui.engine.worker import InferenceWorker

WORDS = ("the committee reviewed annual budget hiring plan risks of new product line while several members asked "
         "for more detail on supply chain").split()
HANZI = "委员会审查了年度预算招聘计划以及新产品线的风险几位成员要求提供更多关于供应链的细节"


def english(size: int, seed: int, punctuated: bool = True) -> str:
    """One line of English sentences (or, without punctuation, one endless sentence) of `size` characters."""
    rng, parts, length = random.Random(seed), [], 0
    while length < size:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 24))).capitalize()
        parts.append(sentence + (". " if punctuated else " "))
        length += len(parts[-1])
    return "".join(parts)[:size].strip()


def chinese(size: int, seed: int) -> str:
    """Chinese without any punctuation or whitespace."""
    rng = random.Random(seed)
    return "".join(rng.choice(HANZI) for _ in range(size))


def paragraphs(size: int, seed: int) -> str:
    """An ordinary document: paragraphs of a few sentences, some English, some Chinese."""
    rng, parts, length = random.Random(seed), [], 0
    while length < size:
        if rng.random() < 0.7:
            parts.append(english(rng.randint(200, 900), rng.random()))
        else:
            parts.append("".join(chinese(rng.randint(10, 40), rng.random()) + "。" for _ in range(rng.randint(1, 8))))
        length += len(parts[-1]) + 2
    return "\n\n".join(parts)


DOCUMENTS = {
    "english, one line": lambda size: english(size, 1),
    "english, no sentence ends": lambda size: english(size, 2, punctuated=False),
    "chinese, no punctuation": lambda size: chinese(size, 3),
    "paragraphs": lambda size: paragraphs(size, 4),
}


class TokenizerSpy:
    """Counts the calls and characters that reach the tokenizer (every count and encode goes through encode_text)."""

    def __init__(self, tokenizer, monkeypatch) -> None:
        self.calls = self.chars = 0
        self.after_call: list = []  # hooks run after each call, with the spy
        original = tokenizer.encode_text

        def encode_text(text: str, **kwargs):
            ids = original(text, **kwargs)
            self.calls += 1
            self.chars += len(text)
            for hook in self.after_call:
                hook(self)
            return ids

        monkeypatch.setattr(tokenizer, "encode_text", encode_text)


def _squeezed(text: str) -> str:
    return "".join(text.split())


def reference_split(text: str, tokenizer, limit: int) -> list[str]:
    """The original planner, counting the growing chunk for every piece: the chunks ordinary documents must keep."""
    pieces = []
    for paragraph in (p.strip() for p in summarize._PARAGRAPHS.split(text)):
        if paragraph and tokenizer.count(paragraph, parse_special=False) <= limit:
            pieces.append(paragraph)
        elif paragraph:
            pieces.extend(s for s in summarize._SENTENCE_END.split(paragraph) if s.strip())
    assert all(tokenizer.count(p, parse_special=False) <= limit for p in pieces), "ordinary documents only"
    chunks, current = [], ""
    for piece in pieces:
        candidate = f"{current}\n\n{piece}" if current else piece
        if current and tokenizer.count(candidate, parse_special=False) > limit:
            chunks.append(current)
            candidate = piece
        current = candidate
    return chunks + [current] if current else chunks


@pytest.mark.parametrize("kind", list(DOCUMENTS))
def test_planning_work_grows_linearly_with_the_document(tokenizer, monkeypatch, kind):
    spy = TokenizerSpy(tokenizer, monkeypatch)
    work = []
    for size in (40_000, 80_000):
        spy.chars = 0
        split_text(DOCUMENTS[kind](size), tokenizer, 300)
        work.append(spy.chars)
    # Re-counting the remainder (or the growing chunk) per slice made this ~4x (quadratic) for the one-line texts.
    assert work[1] <= 2.3 * work[0], work
    assert work[0] <= 6 * 40_000, work  # each character is tokenized a few times, not once per chunk


@pytest.mark.parametrize("limit", [80, 300, 1700])
@pytest.mark.parametrize("kind", list(DOCUMENTS))
def test_every_chunk_fits_and_together_they_are_the_document(tokenizer, kind, limit):
    document = DOCUMENTS[kind](30_000)
    chunks = split_text(document, tokenizer, limit)
    counts = [tokenizer.count(chunk, parse_special=False) for chunk in chunks]
    assert max(counts) <= limit and all(chunk.strip() for chunk in chunks)
    assert _squeezed("".join(chunks)) == _squeezed(document)  # in order, nothing lost, nothing twice
    if kind in ("english, no sentence ends", "chinese, no punctuation"):  # character slices, each nearly full
        assert min(counts[:-1]) >= limit - max(2, limit // 64), counts
    if kind == "english, one line":  # cut at sentence ends
        assert all(chunk.endswith(".") for chunk in chunks[:-1])


def test_text_with_odd_whitespace_is_kept_and_fits(tokenizer):
    rng = random.Random(5)
    document = "".join(rng.choice(["word ", "字", " " * rng.randint(2, 120), "\t", "\n", ". ", "x  "])
                       for _ in range(6000))
    chunks = split_text(document, tokenizer, 120)
    assert max(tokenizer.count(chunk, parse_special=False) for chunk in chunks) <= 120
    assert _squeezed("".join(chunks)) == _squeezed(document)


@pytest.mark.parametrize("limit", [100, 500])
@pytest.mark.parametrize("kind", ["english, one line", "paragraphs"])
def test_ordinary_documents_keep_the_chunks_they_always_had(tokenizer, kind, limit):
    document = DOCUMENTS[kind](20_000)
    assert split_text(document, tokenizer, limit) == reference_split(document, tokenizer, limit)


def test_a_seam_the_sum_gets_wrong_is_counted_exactly(tokenizer):
    # A piece ending in one space: alone, the space is dropped; before the separator it is a token of its own.
    pieces = [(text, tokenizer.count(text, parse_special=False)) for text in ("x ", " y")]
    joined = tokenizer.count("x \n\n y", parse_special=False)
    seam = tokenizer.count(".\n\n y", parse_special=False) - tokenizer.count(".", parse_special=False)
    assert pieces[0][1] + seam < joined  # the estimate would let the two share a chunk of `joined - 1` tokens
    assert summarize._chunks(pieces, tokenizer, joined - 1, lambda: None) == ["x ", " y"]
    assert summarize._chunks(pieces, tokenizer, joined, lambda: None) == ["x \n\n y"]


class Cancelled(Exception):
    pass


@pytest.mark.parametrize("kind", ["english, no sentence ends", "english, one line"])
def test_a_cancel_stops_planning_within_a_step(tokenizer, monkeypatch, kind):
    document = DOCUMENTS[kind](400_000)
    spy = TokenizerSpy(tokenizer, monkeypatch)
    cancelled_at: list[tuple[int, int]] = []
    spy.after_call.append(lambda s: cancelled_at.append((s.calls, s.chars)) if s.calls == 8 else None)

    def check() -> None:
        if cancelled_at:
            raise Cancelled

    replies: list[str] = []
    summarizer = Summarizer(tokenizer, 2048, lambda prompt, tokens, final: replies.append(prompt) or "",
                            check_cancelled=check)
    with pytest.raises(Cancelled):
        summarizer.run(document, None, 256)
    calls, chars = cancelled_at[0]
    after = (spy.calls - calls, spy.chars - chars)  # tokenizer work done once the cancel was due
    assert replies == [] and after[0] <= 2 and after[1] <= 20_000, after


@pytest.fixture
def worker(tiny_fp16):
    engine = InferenceWorker(lambda progress: tiny_fp16)
    engine.load()
    yield engine
    engine.close()


def test_the_worker_stops_planning_a_huge_one_line_document_on_cancel(worker, monkeypatch):
    document = english(1_000_000, 6, punctuated=False)
    request = SummarizeRequest(document, params=GenerationParams(do_sample=False, max_new_tokens=16))
    spy = TokenizerSpy(worker.glm.tokenizer, monkeypatch)
    cancelled = threading.Event()
    marks: list[int] = []

    def cancel_while_planning(s: TokenizerSpy) -> None:
        if s.calls == 6:  # the whole document, the prompt overhead and the paragraph are counted: slicing now
            marks.append(s.chars)
            worker.cancel(request.id)
            cancelled.set()

    spy.after_call.append(cancel_while_planning)
    events: list = []
    finished = threading.Event()
    worker.submit(request, lambda e: (events.append(e), isinstance(e, GenerationFinished) and finished.set()))
    assert cancelled.wait(60), "planning never reached the slicing"
    assert finished.wait(2.0), "the cancel did not stop the planning"
    last = events[-1]
    assert isinstance(last, GenerationFinished) and last.reason == "stopped" and last.text == ""
    assert not any(isinstance(e, (ChunkProgress, GenerationStarted)) for e in events)
    assert spy.chars - marks[0] <= 20_000  # a step or two of the planning, not the rest of a 1 MB document
