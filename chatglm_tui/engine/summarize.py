"""Long documents: split into token-measured chunks that fit the window, summarize each, combine.

Planning and prompt text; the model calls go through a `generate(prompt, max_new_tokens, final)` callable
(`summarize_request` makes it from an engine's own call, in-process or remote), so every call here is checked
to fit the window before it is made. Planning tokenizes each part of the document a bounded number of times (so
a long single-line document plans in linear time) and calls a cancellation check between steps.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from chatglm_tui.engine.protocol import (
    ChunkProgress,
    EventCallback,
    FinishReason,
    GenerationFinished,
    GenerationParams,
    GenerationStats,
    SummarizeRequest,
)
from chatglm_tui.errors import ContextOverflowError

if TYPE_CHECKING:  # only used, never built here: the chat app reads this module without the tokenizer
    from chatglm_tui.model.tokenizer import ChatGLMTokenizer

PARTIAL_SUMMARY_TOKENS = 256  # reply room for the summary of one chunk
_CJK = re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf]")
_LETTER = re.compile(r"[A-Za-z\u4e00-\u9fff\u3400-\u4dbf]")
_PARAGRAPHS = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？；;])\s*")

# ChatGLM answers in the language it is asked in, so each document gets prompts in its own language.
PROMPTS = {
    "zh": {
        "chunk": "请概括下面这段文字的要点：\n\n{text}",
        "chunk_question": "下面是一篇长文的一部分。请列出其中与问题“{question}”有关的信息；没有就回答“无”。\n\n{text}",
        "combine": "下面是一篇长文各部分的摘要。请把它们合并成一份完整、简洁的摘要：\n\n{text}",
        "combine_question": "下面是从一篇长文中找出的与问题有关的信息。请据此回答问题：{question}\n\n{text}",
        "whole": "请概括下面这篇文字的要点：\n\n{text}",
        "whole_question": "{text}\n\n根据上文回答：{question}",
    },
    "en": {
        "chunk": "Summarize the key points of this part of a longer document:\n\n{text}",
        "chunk_question": ("This is part of a longer document. List what it says that is relevant to the "
                           "question \"{question}\"; answer \"nothing\" if it says nothing relevant.\n\n{text}"),
        "combine": "These are summaries of the parts of one long document. Combine them into one concise "
                   "summary of the whole document:\n\n{text}",
        "combine_question": "These notes were taken from a long document. Use them to answer the question: "
                            "{question}\n\n{text}",
        "whole": "Summarize the key points of this document:\n\n{text}",
        "whole_question": "{text}\n\nAnswer from the text above: {question}",
    },
}

Generate = Callable[[str, int, bool], str]  # (prompt, max_new_tokens, is_final) -> reply
CheckCancelled = Callable[[], None]  # called often while planning; raises (the worker's stop) to abandon it
Piece = tuple[str, int]  # a piece of the document and its token count

_SEPARATOR = "\n\n"  # what joins the pieces of one chunk
_SEAM_SLACK = 32  # tokens by which a piece's own count may exceed what it adds after a separator (seen: 1)


def _keep_going() -> None:
    """The default cancellation check: planning is never cancelled."""


def language_of(text: str) -> str:
    """'zh' when at least a fifth of the letters are CJK, else 'en'."""
    sample = text[:20000]
    letters = len(_LETTER.findall(sample))
    return "zh" if letters and len(_CJK.findall(sample)) * 5 >= letters else "en"


def _next_probe(start: int, lo: int, lo_tokens: int, hi: int, hi_tokens: int | None, target: int,
                bisect: bool) -> int:
    """Where to cut next when searching for `target` tokens between `lo` (fits) and `hi` (does not)."""
    if hi_tokens is None:  # no cut too long yet: extrapolate from lo, at most doubling its length
        return start + min(2 * (lo - start), (lo - start) * target // max(lo_tokens, 1) + 1)
    if bisect:  # every other step, so that a badly skewed interpolation cannot stall the search
        return (lo + hi) // 2
    return lo + (hi - lo) * (target - lo_tokens) // max(hi_tokens - lo_tokens, 1)


def _fitting_end(text: str, start: int, tokenizer: ChatGLMTokenizer, limit: int, density: float,
                 check_cancelled: CheckCancelled) -> tuple[int, int]:
    """The end of a full slice `text[start:end]` of at most `limit` tokens (within a few of it), and its count.

    The first cut is placed by `density` (characters per token); the search then interpolates, bisecting every
    other step. Only text within about twice the slice's length of `start` is ever tokenized, so cutting a text
    into slices costs time linear in its length (counting the whole remainder for every slice was quadratic).
    """
    full = limit - max(2, limit // 64)  # a slice this full is full enough: stop searching
    target = (full + limit + 1) // 2
    lo, lo_tokens, hi, hi_tokens = start, 0, len(text) + 1, None  # text[start:lo] fits; text[start:hi] does not
    probe, step = start + int(density * target), 0
    while hi - lo > 1:
        check_cancelled()
        probe = max(lo + 1, min(probe, hi - 1, len(text)))
        tokens = tokenizer.count(text[start:probe], parse_special=False)
        if tokens > limit:
            hi, hi_tokens = probe, tokens
        elif probe == len(text) or tokens >= full:
            return probe, tokens
        else:
            lo, lo_tokens = probe, tokens
        probe, step = _next_probe(start, lo, lo_tokens, hi, hi_tokens, target, bisect=step % 2 == 1), step + 1
    if lo == start:  # not even one character fits (a tiny limit): take one anyway, as ever, to make progress
        lo, lo_tokens = start + 1, tokenizer.count(text[start:start + 1], parse_special=False)
    return lo, lo_tokens


def _slices(sentence: str, tokens: int, tokenizer: ChatGLMTokenizer, limit: int,
            check_cancelled: CheckCancelled) -> list[Piece]:
    """Consecutive character slices of a sentence of `tokens` (> `limit`) tokens, each nearly `limit` tokens."""
    slices: list[Piece] = []
    start, density = 0, len(sentence) / tokens
    while start < len(sentence):
        end, count = _fitting_end(sentence, start, tokenizer, limit, density, check_cancelled)
        slices.append((sentence[start:end], count))
        density = (end - start) / max(count, 1)  # the next slice is most likely about as dense as this one
        start = end
    return slices


def _pieces(text: str, tokenizer: ChatGLMTokenizer, limit: int, check_cancelled: CheckCancelled) -> list[Piece]:
    """Paragraphs; a paragraph over `limit` tokens becomes sentences; a sentence over it, character slices."""
    pieces: list[Piece] = []
    for paragraph in (p.strip() for p in _PARAGRAPHS.split(text)):
        check_cancelled()
        if not paragraph:
            continue
        whole = tokenizer.count(paragraph, parse_special=False)
        if whole <= limit:
            pieces.append((paragraph, whole))
            continue
        for sentence in (s for s in _SENTENCE_END.split(paragraph) if s.strip()):
            check_cancelled()
            # A paragraph without sentence ends is one sentence, already counted.
            tokens = whole if sentence == paragraph else tokenizer.count(sentence, parse_special=False)
            pieces.extend(_slices(sentence, tokens, tokenizer, limit, check_cancelled) if tokens > limit
                          else [(sentence, tokens)])
    return pieces


def _exact_end(pieces: list[Piece], start: int, tokenizer: ChatGLMTokenizer, limit: int,
               check_cancelled: CheckCancelled) -> int:
    """The end of the chunk from pieces[start], counting every candidate: the slow path, kept as a fallback."""
    current, end = pieces[start][0], start + 1
    while end < len(pieces):
        check_cancelled()
        candidate = f"{current}{_SEPARATOR}{pieces[end][0]}"
        if tokenizer.count(candidate, parse_special=False) > limit:
            break
        current, end = candidate, end + 1
    return end


def _estimated_end(pieces: list[Piece], start: int, tokenizer: ChatGLMTokenizer, limit: int,
                   check_cancelled: CheckCancelled) -> int:
    """The end of the chunk from pieces[start], adding up what each further piece adds after a separator.

    The separator's newlines are single tokens that never merge with their neighbours, so the count of a chunk is
    (all but always: _chunks checks) the sum of its parts, and each piece is tokenized once instead of the growing
    chunk once per piece (which made a single-line document of short sentences slow).
    """
    dot = tokenizer.count(".", parse_special=False)
    tokens, end = pieces[start][1], start + 1
    while end < len(pieces):
        check_cancelled()
        piece, own = pieces[end]
        if tokens + own > limit + _SEAM_SLACK:  # far over whatever the seam saves: no need to count it
            break
        tokens += tokenizer.count(f".{_SEPARATOR}{piece}", parse_special=False) - dot
        if tokens > limit:
            break
        end += 1
    return end


def _chunks(pieces: list[Piece], tokenizer: ChatGLMTokenizer, limit: int,
            check_cancelled: CheckCancelled) -> list[str]:
    """Consecutive pieces joined into chunks of at most `limit` tokens; each chunk is counted once, to be sure."""
    chunks: list[str] = []
    start = 0
    while start < len(pieces):
        end = _estimated_end(pieces, start, tokenizer, limit, check_cancelled)
        chunk = _SEPARATOR.join(piece for piece, _ in pieces[start:end])
        if end - start > 1 and tokenizer.count(chunk, parse_special=False) > limit:
            # A seam merged differently than the sum assumed (a slice ending in a space does): count exactly.
            end = _exact_end(pieces, start, tokenizer, limit, check_cancelled)
            chunk = _SEPARATOR.join(piece for piece, _ in pieces[start:end])
        chunks.append(chunk)
        start = end
    return chunks


def split_text(text: str, tokenizer: ChatGLMTokenizer, limit: int,
               check_cancelled: CheckCancelled = _keep_going) -> list[str]:
    """Consecutive chunks of `text`, each at most `limit` tokens, cut at paragraph, else sentence, boundaries.

    A sentence longer than `limit` is cut between characters. Whitespace around paragraphs and after sentence
    ends is dropped; the pieces of a chunk are joined by a blank line. Time is linear in the length of `text`;
    `check_cancelled` is called between small steps and may raise to abandon the work.
    """
    return _chunks(_pieces(text, tokenizer, limit, check_cancelled), tokenizer, limit, check_cancelled)


class Summarizer:
    """Map-reduce summarization in which every model call fits the context window."""

    def __init__(self, tokenizer: ChatGLMTokenizer, window: int, generate: Generate,
                 on_progress: Callable[[int, int], None] = lambda done, total: None,
                 check_cancelled: CheckCancelled = _keep_going) -> None:
        self.tokenizer, self.window, self.generate, self.on_progress = tokenizer, window, generate, on_progress
        self.check_cancelled = check_cancelled  # planning a long document takes a while: let a cancel stop it
        self.calls_done = 0
        self.calls_planned = 1

    def _prompt(self, kind: str, text: str, question: str | None, language: str) -> str:
        key = f"{kind}_question" if question else kind
        return PROMPTS[language][key].format(text=text, question=question or "")

    def _room(self, kind: str, question: str | None, language: str, reply_tokens: int) -> int:
        """Tokens left for the text in a `kind` prompt with room for a `reply_tokens` reply."""
        overhead = self.tokenizer.count(self._prompt(kind, "", question, language), parse_special=False)
        return self.window - reply_tokens - overhead - 8  # a margin for tokens merging at the seams

    def _call(self, prompt: str, reply_tokens: int, final: bool) -> str:
        if self.tokenizer.count(prompt, parse_special=False) + reply_tokens > self.window:
            raise ContextOverflowError("internal: a summarization prompt does not fit the window")
        if self.calls_done == 0:  # "part 1 of N" from the start, not once the first part is done
            self.on_progress(0, self.calls_planned)
        reply = self.generate(prompt, reply_tokens, final)
        self.calls_done += 1
        self.on_progress(self.calls_done, self.calls_planned)
        return reply

    def run(self, document: str, question: str | None, reply_tokens: int) -> str:
        """The summary (or answer) of `document`; the last call is the one marked final."""
        language = language_of(document)
        whole = self._prompt("whole", document, question, language)
        if self.tokenizer.count(whole, parse_special=False) + reply_tokens <= self.window:
            return self._call(whole, reply_tokens, final=True)
        partial_tokens = min(PARTIAL_SUMMARY_TOKENS, reply_tokens)
        room = self._room("chunk", question, language, partial_tokens)
        if room < 64:
            raise ContextOverflowError("the question is too long to leave room for the document: shorten it")
        chunks = split_text(document, self.tokenizer, room, self.check_cancelled)
        self.calls_planned = len(chunks) + 1
        notes = [self._call(self._prompt("chunk", chunk, question, language), partial_tokens, final=False)
                 for chunk in chunks]
        return self._combine(notes, question, language, reply_tokens, partial_tokens)

    def _combine(self, notes: list[str], question: str | None, language: str, reply_tokens: int,
                 partial_tokens: int) -> str:
        while True:
            joined = "\n\n".join(note.strip() for note in notes if note.strip())
            final = self._prompt("combine", joined, question, language)
            if self.tokenizer.count(final, parse_special=False) + reply_tokens <= self.window:
                return self._call(final, reply_tokens, final=True)
            # Still too long: combine the notes in groups that fit, then try again with fewer, shorter notes.
            groups = split_text(joined, self.tokenizer, self._room("combine", question, language, partial_tokens),
                                self.check_cancelled)
            if len(groups) >= len(notes):  # cannot happen while a note is far shorter than the room
                raise ContextOverflowError("the partial summaries do not shrink: lower max_new_tokens")
            self.calls_planned += len(groups)
            notes = [self._call(self._prompt("combine", group, question, language), partial_tokens, final=False)
                     for group in groups]


# One model call of a summary: (prompt, params, is_final) -> (text, reason, stats). The final call streams its
# text and sends GenerationStarted; the others only return theirs.
GenerateCall = Callable[[str, GenerationParams, bool], tuple[str, FinishReason, GenerationStats]]


class _SummaryStopped(Exception):
    """A stop was asked for during the summary: planning or a model call ends it."""


def summarize_request(request: SummarizeRequest, tokenizer: ChatGLMTokenizer, window: int, generate: GenerateCall,
                      on_event: EventCallback, is_stopped: Callable[[], bool]) -> None:
    """Serve a SummarizeRequest through `generate`, for any engine: ChunkProgress per call, then one
    GenerationFinished with the final call's text and the whole summary's time (reason "stopped" on a stop)."""
    started = time.perf_counter()
    final: dict[str, object] = {}

    def call(prompt: str, max_new_tokens: int, is_final: bool) -> str:
        text, reason, stats = generate(prompt, request.params.replace(max_new_tokens=max_new_tokens), is_final)
        final.update(text=text, reason=reason, stats=stats)
        if reason == "stopped":
            raise _SummaryStopped
        return text

    def check_cancelled() -> None:
        if is_stopped():
            raise _SummaryStopped

    calls_began: list[float] = []  # when the first model call began: planning before it is not the pace

    def progress(done: int, total: int) -> None:
        calls_began[:] = calls_began or [time.perf_counter()]
        eta = (time.perf_counter() - calls_began[0]) / done * (total - done) if done else None
        on_event(ChunkProgress(request.id, done, total, eta))

    summarizer = Summarizer(tokenizer, window, call, progress, check_cancelled=check_cancelled)  # cancellable plan
    try:
        summarizer.run(request.document, request.question, request.params.reply_reserve)
    except _SummaryStopped:
        pass
    stats = final.get("stats")
    total = time.perf_counter() - started
    if isinstance(stats, GenerationStats):
        stats = GenerationStats(stats.prompt_tokens, stats.new_tokens, stats.time_to_first_token_s,
                                stats.tokens_per_s, total)
    else:
        stats = GenerationStats(0, 0, 0.0, 0.0, total)
    reason = final.get("reason", "stopped")
    on_event(GenerationFinished(request.id, reason, str(final.get("text", "")), stats))  # type: ignore[arg-type]


def history_stand_in(document: str, question: str | None) -> str:
    """What the model's history keeps of a summarized document, so that follow-ups see the summary (the reply)
    with what was asked: the question or the request to summarize, and the document's size and opening words."""
    opening = " ".join(document.split())[:160]
    if language_of(document) == "zh":
        return f"{question or '请概括这篇文档的要点。'}\n\n（文档共 {len(document):,} 字，开头是：{opening}……）"
    return (f"{question or 'Summarize the key points of this document.'}\n\n"
            f"(The document has {len(document):,} characters and begins: {opening}...)")
