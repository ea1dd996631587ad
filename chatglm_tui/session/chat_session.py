"""The open conversation and the one place that saves it, for the chat app and `chatglm ask` alike; no widgets.

`ChatSession` owns the store record, the message tree and which branch is shown. Callers ask it what to send
(a `ChatRequest`) and tell it what came back; it writes each message to the store the moment it is complete
(the question when sent, the reply when finished or stopped, under its question), so a crash loses at most the
reply in progress.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from chatglm_tui.config.settings import Settings
from chatglm_tui.engine.protocol import (
    ChatRequest,
    GenerationFinished,
    GenerationParams,
    Request,
    Round,
    SummarizeRequest,
)
from chatglm_tui.engine.summarize import history_stand_in
from chatglm_tui.session.tree import MessageTree
from chatglm_tui.store import Conversation, Message, SessionStore, rounds_of
from chatglm_tui.store.rounds import HISTORY_TEXT
from chatglm_tui.store.titles import title_from


def reply_stats(finished: GenerationFinished) -> dict[str, object]:
    """How a reply ended and how fast it came, as saved with it and as `ask --json` prints it."""
    stats = finished.stats
    return {"reason": finished.reason, "tokens_per_s": round(stats.tokens_per_s, 2), "total_s": round(stats.total_s, 3),
            "time_to_first_token_s": round(stats.time_to_first_token_s, 3)}


@dataclass(frozen=True)
class PendingReply:
    """A request on its way to the engine, and where its reply will hang in the tree."""

    request: Request  # a ChatRequest, or a SummarizeRequest for a document too long to read whole
    conversation_id: str
    parent_id: int  # the user message being answered
    previous_leaf: int | None = None  # for a regenerate: the reply shown before, shown again if this one fails


class ChatSession:
    """The conversation on screen: its record, its tree of messages and the branch being shown."""

    def __init__(self, store: SessionStore, settings: Settings) -> None:
        self.store, self.settings = store, settings
        self.conversation: Conversation | None = None
        self.tree = MessageTree()
        self.leaf_id: int | None = None
        # Settings chosen before the first message, saved when the conversation is created.
        self.draft_params = settings.generation
        self.draft_instruction = settings.instruction

    # ---------------------------------------------------------------- which conversation and branch

    def open(self, conversation_id: str) -> None:
        """Show a saved conversation, on the branch of its newest message."""
        self.conversation = self.store.get(conversation_id)
        self.tree = MessageTree(self.store.all_messages(conversation_id))
        self.leaf_id = self.tree.default_leaf()

    def new(self) -> None:
        """Start an empty chat; it is saved with its first message."""
        self.conversation, self.tree, self.leaf_id = None, MessageTree(), None
        self.draft_params = self.settings.generation
        self.draft_instruction = self.settings.instruction

    @property
    def id(self) -> str | None:
        return self.conversation.id if self.conversation else None

    @property
    def branch(self) -> list[Message]:
        return self.tree.path(self.leaf_id)

    def history(self, before: int | None = None) -> tuple[list[Round], list[tuple[int, ...]]]:
        """The model's history for the branch up to (not including) message `before` if it is on the branch, with
        each round's message ids."""
        branch = self.branch
        ids = [message.id for message in branch]
        if before in ids:
            branch = branch[:ids.index(before)]
        return rounds_of(branch)

    def switch_version(self, message_id: int, step: int) -> int | None:
        """Show the previous (-1) or next (+1) version of a message; returns the version shown, or None."""
        versions = self.tree.versions(message_id)
        index = versions.index(message_id) + step
        if not 0 <= index < len(versions):
            return None
        self.leaf_id = self.tree.newest_leaf(versions[index])
        return versions[index]

    # ---------------------------------------------------------------- settings

    @property
    def params(self) -> GenerationParams:
        if self.conversation is None:
            return self.draft_params
        return self.settings.generation.updated_from(self.conversation.params)

    @property
    def instruction(self) -> str | None:
        return self.conversation.instruction if self.conversation else self.draft_instruction

    def configure(self, params: GenerationParams, instruction: str | None) -> None:
        """Change this conversation's generation settings and instruction (saved at once if it exists)."""
        if self.conversation is None:
            self.draft_params, self.draft_instruction = params, instruction
            return
        self.conversation = self.store.update(self.conversation.id, params=params.as_dict(),
                                              instruction=instruction or None)

    # ---------------------------------------------------------------- sending and saving

    def send(self, text: str, edit_of: int | None = None, *, title: str | None = None,
             history_text: str | None = None) -> tuple[Message, PendingReply]:
        """Save a user message (after the current branch, or as a new version of `edit_of`) and build its request.

        A new conversation is created first, titled `title` or after `text`. `history_text` is what later requests
        give the model instead of `text` (a summarized document: what was asked of it; the reply is its summary).
        """
        parent = self.tree.by_id[edit_of].parent_id if edit_of is not None else self.leaf_id
        if self.conversation is None:
            self.conversation = self.store.create_conversation(
                title or title_from(text), model=self.settings.model, params=self.draft_params.as_dict(),
                instruction=self.draft_instruction)
        stats = {HISTORY_TEXT: history_text} if history_text is not None else None
        message = self._save(self.store.add_message(self.conversation.id, "user", text, parent_id=parent,
                                                    stats=stats))
        return message, self._request_for(message)

    def regenerate(self) -> PendingReply | None:
        """A new reply to the branch's last question (a new version beside the current reply); None if no question."""
        branch = self.branch
        question = next((message for message in reversed(branch) if message.role == "user"), None)
        if question is None:
            return None
        previous, self.leaf_id = self.leaf_id, question.id
        return dataclasses.replace(self._request_for(question), previous_leaf=previous)

    def continue_reply(self) -> PendingReply | None:
        """The branch's last reply, continued (it was cut off, or stopped): a new version that begins with it.
        None when the branch does not end with a reply to a question."""
        branch = self.branch
        if len(branch) < 2 or branch[-1].role != "assistant" or branch[-2].role != "user":
            return None
        reply, question = branch[-1], branch[-2]
        pending = self._request_for(question)
        previous, self.leaf_id = self.leaf_id, question.id
        request = dataclasses.replace(pending.request, reply_prefix=reply.text)
        return dataclasses.replace(pending, request=request, previous_leaf=previous)

    def send_document(self, text: str) -> tuple[Message, PendingReply]:
        """Save a message too long for the window as a question and ask for its summary, in parts; later requests
        give the model what was asked instead of the whole text (the reply is the summary)."""
        message, pending = self.send(text, history_text=history_stand_in(text, None))
        summary = SummarizeRequest(text, None, self.params)
        return message, dataclasses.replace(pending, request=summary)

    def reply_failed(self, pending: PendingReply) -> bool:
        """After a failed reply: show again what a failed regenerate replaced; True if the branch changed."""
        if pending.previous_leaf is None or pending.conversation_id != self.id:
            return False
        self.leaf_id = pending.previous_leaf
        return True

    def _request_for(self, question: Message) -> PendingReply:
        rounds, _ = self.history(before=question.id)
        request = ChatRequest(question.text, tuple(rounds), self.instruction, self.params)
        return PendingReply(request, question.conversation_id, question.id)

    def save_reply(self, pending: PendingReply, finished: GenerationFinished) -> Message:
        """Save a finished or stopped reply under its question (in its own conversation, even if another one is
        on screen by now); its branch is shown if its conversation is."""
        stats = finished.stats
        message = self.store.add_message(
            pending.conversation_id, "assistant", finished.text, parent_id=pending.parent_id,
            stopped=finished.reason == "stopped", prompt_tokens=stats.prompt_tokens, new_tokens=stats.new_tokens,
            stats=reply_stats(finished))
        return self._save(message) if pending.conversation_id == self.id else message

    def record(self, request: ChatRequest, finished: GenerationFinished) -> Message:
        """Save an exchange made elsewhere (a request `chatglm serve` answered) as a new conversation: its
        instruction, its earlier rounds, the question and the reply."""
        self.new()
        self.draft_params, self.draft_instruction = request.params, request.instruction
        title = title_from(request.query)
        for question, reply in request.history:
            asked, _ = self.send(question, title=title)
            self._save(self.store.add_message(asked.conversation_id, "assistant", reply, parent_id=asked.id))
        _, pending = self.send(request.query, title=title)
        return self.save_reply(pending, finished)

    def _save(self, message: Message) -> Message:
        self.tree.add(message)
        self.leaf_id = message.id
        return message

    def versions(self, message: Message) -> tuple[int, int]:
        """(1-based position, count) of a message among its versions."""
        versions = self.tree.versions(message.id)
        return versions.index(message.id) + 1, len(versions)

    def rename(self, title: str) -> None:
        assert self.conversation is not None
        self.conversation = self.store.rename(self.conversation.id, title)

    def delete(self) -> None:
        assert self.conversation is not None
        self.store.delete(self.conversation.id)
        self.new()

    def export_markdown(self) -> str:
        """The branch on screen as Markdown (other versions are in the JSON export)."""
        assert self.conversation is not None
        return self.store.export_markdown(self.conversation.id, leaf_id=self.leaf_id)
