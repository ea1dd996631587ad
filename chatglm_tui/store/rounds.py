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
                rounds.append((pending.text, ""))
                sources.append((pending.id,))
            pending = message
        else:
            rounds.append((pending.text if pending else "", message.text))
            sources.append((pending.id, message.id) if pending else (message.id,))
            pending = None
    if pending is not None:
        rounds.append((pending.text, ""))
        sources.append((pending.id,))
    return rounds, sources
