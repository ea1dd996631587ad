"""A branch of messages as (question, reply) pairs: what the model is given as history. The store pairs them; the
model's `Round` type (model/prompt.py) names the same pair on the other side of the engine."""

from __future__ import annotations

from chatglm_tui.store.models import Message


def rounds_of(branch: list[Message]) -> tuple[list[tuple[str, str]], list[tuple[int, ...]]]:
    """The branch as the model's history, and for each round the ids of the messages it was built from.

    A user message without a reply (one after another, or a question whose reply failed or is being written)
    is a round with an empty reply, so nothing is dropped and a turn's history never changes later. To build
    the request for a question, pass the branch before that question.
    """
    rounds: list[tuple[str, str]] = []
    sources: list[tuple[int, ...]] = []
    pending: Message | None = None
    for message in branch:
        if message.role == "user":
            if pending is not None:
                rounds.append((history_text(pending), ""))
                sources.append((pending.id,))
            pending = message
        else:
            rounds.append((history_text(pending) if pending else "", message.text))
            sources.append((pending.id, message.id) if pending else (message.id,))
            pending = None
    if pending is not None:
        rounds.append((history_text(pending), ""))
        sources.append((pending.id,))
    return rounds, sources


def history_text(message: Message) -> str:
    """The text a message stands for in the model's history: its own, or the shorter stand-in saved with it (a
    summarized document keeps its whole text in the store, and is given to the model as what was asked)."""
    stand_in = message.stats.get(HISTORY_TEXT)
    return stand_in if isinstance(stand_in, str) else message.text


HISTORY_TEXT = "history_text"  # the key of a message's stats that holds its stand-in
