"""The message tree of one conversation: branches from regenerate and edit, and the path shown on screen."""

from __future__ import annotations

from collections.abc import Iterable

from chatglm_tui.store import Message


class MessageTree:
    """Every message of a conversation, indexed by parent, so versions and branches are cheap to walk."""

    def __init__(self, messages: Iterable[Message] = ()) -> None:
        self.by_id: dict[int, Message] = {}
        self.children: dict[int | None, list[int]] = {}
        for message in messages:
            self.add(message)

    def add(self, message: Message) -> None:
        """Index a message; messages arrive oldest first, so children lists stay in creation order."""
        self.by_id[message.id] = message
        self.children.setdefault(message.parent_id, []).append(message.id)

    def __len__(self) -> int:
        return len(self.by_id)

    def versions(self, message_id: int) -> list[int]:
        """The message and its siblings (same parent), oldest first: the versions a user can flip between."""
        return self.children.get(self.by_id[message_id].parent_id, [])

    def newest_leaf(self, message_id: int) -> int:
        """The end of the most recently extended branch under `message_id` (the message itself if it is a leaf)."""
        # Ids grow with time and a child is always newer than its parent, so the newest message below
        # `message_id` has no children: it is the leaf of the most recently extended branch.
        newest, stack = message_id, [message_id]
        while stack:
            current = stack.pop()
            newest = max(newest, current)
            stack.extend(self.children.get(current, ()))
        return newest

    def path(self, leaf_id: int | None) -> list[Message]:
        """The branch from the root to `leaf_id`, root first; [] for None."""
        path: list[Message] = []
        current = leaf_id
        while current is not None:
            message = self.by_id[current]
            path.append(message)
            current = message.parent_id
        path.reverse()
        return path

    def default_leaf(self) -> int | None:
        """The leaf of the newest message's branch: what a reopened conversation shows."""
        return self.newest_leaf(max(self.by_id)) if self.by_id else None

