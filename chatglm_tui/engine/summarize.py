"""Long documents: split into token-measured chunks that fit the window, summarize each, combine.

Pure planning and prompt text; the model calls go through a `generate(prompt, max_new_tokens, final)` callable
supplied by the worker, so every call here is checked to fit the window before it is made.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from chatglm_tui.errors import ContextOverflowError
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


def language_of(text: str) -> str:
    """'zh' when at least a fifth of the letters are CJK, else 'en'."""
    sample = text[:20000]
    letters = len(_LETTER.findall(sample))
    return "zh" if letters and len(_CJK.findall(sample)) * 5 >= letters else "en"


def _pieces(text: str, tokenizer: ChatGLMTokenizer, limit: int) -> list[str]:
    """Paragraphs; a paragraph over `limit` tokens becomes sentences; a sentence over it, character slices."""
    pieces: list[str] = []
    for paragraph in (p.strip() for p in _PARAGRAPHS.split(text)):
        if not paragraph:
            continue
        if tokenizer.count(paragraph, parse_special=False) <= limit:
            pieces.append(paragraph)
            continue
        for sentence in (s for s in _SENTENCE_END.split(paragraph) if s.strip()):
            while tokenizer.count(sentence, parse_special=False) > limit:
                cut = max(1, len(sentence) * limit // tokenizer.count(sentence, parse_special=False) - 1)
                while cut > 1 and tokenizer.count(sentence[:cut], parse_special=False) > limit:
                    cut = cut * 3 // 4
                pieces.append(sentence[:cut])
                sentence = sentence[cut:]
            pieces.append(sentence)
    return pieces


def split_text(text: str, tokenizer: ChatGLMTokenizer, limit: int) -> list[str]:
    """Consecutive chunks of `text`, each at most `limit` tokens, cut at paragraph, else sentence, boundaries."""
    chunks: list[str] = []
    current = ""
    for piece in _pieces(text, tokenizer, limit):
        candidate = f"{current}\n\n{piece}" if current else piece
        if current and tokenizer.count(candidate, parse_special=False) > limit:
            chunks.append(current)
            candidate = piece
        current = candidate
    if current:
        chunks.append(current)
    return chunks


class Summarizer:
    """Map-reduce summarization in which every model call fits the context window."""

    def __init__(self, tokenizer: ChatGLMTokenizer, window: int, generate: Generate,
                 on_progress: Callable[[int, int], None] = lambda done, total: None) -> None:
        self.tokenizer, self.window, self.generate, self.on_progress = tokenizer, window, generate, on_progress
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
        chunks = split_text(document, self.tokenizer, room)
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
            groups = split_text(joined, self.tokenizer, self._room("combine", question, language, partial_tokens))
            if len(groups) >= len(notes):  # cannot happen while a note is far shorter than the room
                raise ContextOverflowError("the partial summaries do not shrink: lower max_new_tokens")
            self.calls_planned += len(groups)
            notes = [self._call(self._prompt("combine", group, question, language), partial_tokens, final=False)
                     for group in groups]
