"""Sample conversations, scripted replies and scenes: `chatglm --demo`, the screenshots and the snapshot tests.

Everything here is deterministic (a fixed clock, fixed texts) so screenshots and snapshots do not drift.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from chatglm_tui.store import SessionStore

if TYPE_CHECKING:
    from textual.pilot import Pilot

    from chatglm_tui.tui.app import ChatApp

DEMO_NOW = 1_795_700_000.0  # 2026-11-26 10:13 UTC: "now" for the demo store and the sidebar's ages

CODE_REPLY = """\
Walk the list once, turning each `next` pointer around:

```python
def reverse(head: Node | None) -> Node | None:
    previous = None
    while head is not None:
        head.next, previous, head = previous, head, head.next
    return previous
```

It runs in **O(n)** time and **O(1)** extra memory. The recursive version is shorter but uses O(n) stack."""

WINDOW_REPLY = (
    "ChatGLM-6B reads at most 2,048 tokens at once, and that limit covers the prompt *and* the reply. Every "
    "earlier round of the chat is sent again with each question, with its `[Round N]`, `问：` and `答：` markers, "
    "so a long chat eventually stops fitting. When that happens the oldest whole rounds are left out of what the "
    "model reads: the meter says how many before you send, and those messages are marked in the transcript. "
    "They stay saved, searchable and exportable. ")

DEMO_REPLIES = (
    "This is **demo mode**: no model is loaded, and these replies are scripted so you can try the app. Your "
    "real conversations are not shown, and nothing typed here is kept.\n\n"
    "Run `chatglm` without `--demo` to chat with ChatGLM-6B (it is downloaded on first use).",
    CODE_REPLY + "\n\nPress **ctrl+b** to copy that block, **ctrl+y** the whole reply.",
    "Try **ctrl+r** to regenerate this reply (the old one stays as a version: ←/→ on it), **F5** to edit your "
    "question, **Esc** to stop a reply, and **F1** for every key.",
)

# (title, [(question, reply), ...], minutes ago)
CONVERSATIONS: tuple[tuple[str, tuple[tuple[str, str], ...], int], ...] = (
    ("周末去北京玩，有什么推荐？", (
        ("周末去北京玩，有什么推荐？", "推荐三个地方：\n\n1. **故宫**：提前在官网预约门票，周一闭馆。\n2. **颐和园**：适合"
         "散步，傍晚的昆明湖最美。\n3. **南锣鼓巷**：胡同小吃很多，避开周末下午的人流高峰。"),
    ), 60 * 26),
    ("Summary: team meeting notes 2026-11-20", (
        ("Summarize these meeting notes.", "- The beta ships on **December 3**.\n- Ana owns the release notes; "
         "Li owns the installer.\n- Open question: keep the INT8 build? Decide on Monday."),
    ), 60 * 50),
    ("Explain the context window", tuple(
        (f"Why does a long chat forget things? (part {n})", WINDOW_REPLY * 2) for n in range(1, 6)), 95),
    ("Regex for ISO dates", (
        ("A regex that matches ISO dates like 2026-11-26?", "Use `\\d{4}-\\d{2}-\\d{2}` for the shape, or, to "
         "check the ranges too:\n\n```regex\n^\\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\\d|3[01])$\n```"),
    ), 60 * 24 * 9),
    ("Reverse a linked list in Python", (
        ("How do I reverse a singly linked list in Python?", CODE_REPLY),
    ), 12),
)


def _clock(start: float) -> Iterator[float]:
    moment = start
    while True:
        yield moment
        moment += 20.0


def seed_demo_store(store_path: Path) -> None:
    """Write the sample conversations into the store file at `store_path`, with fixed timestamps."""
    for title, rounds, minutes_ago in CONVERSATIONS:
        ticks = _clock(DEMO_NOW - minutes_ago * 60 - 20 * 2 * len(rounds))
        with SessionStore(store_path, clock=lambda: next(ticks)) as store:
            conversation = store.create_conversation(title, model="THUDM/chatglm-6b-int4")
            for question, reply in rounds:
                store.add_message(conversation.id, "user", question)
                store.add_message(conversation.id, "assistant", reply, new_tokens=len(reply) // 2,
                                  stats={"tokens_per_s": 9.1, "reason": "eos"})


# ---------------------------------------------------------------- scenes for screenshots and snapshot tests

SCREEN_SIZE = (120, 36)


def build_demo_app(store_path: Path, replies: tuple[str, ...] = (CODE_REPLY,), theme: str | None = None) -> ChatApp:
    """The real app on a freshly seeded demo store and the scripted engine (instant, deterministic replies)."""
    from chatglm_tui.config.settings import Settings
    from chatglm_tui.engine.fake import FakeEngine
    from chatglm_tui.tui.app import make_app

    seed_demo_store(store_path)
    settings = Settings(theme=theme) if theme else Settings()
    engine = FakeEngine(replies, chunk_size=8)
    return make_app(settings, engine, SessionStore(store_path, clock=lambda: DEMO_NOW), persist_theme=False,
                    clock=lambda: DEMO_NOW)


async def settle(pilot: Pilot[None]) -> None:
    """Wait until no reply is pending and the screen has caught up (replies run on a thread)."""
    from chatglm_tui.tui.app import ChatApp

    app = pilot.app
    assert isinstance(app, ChatApp)
    for _ in range(200):
        await pilot.pause(0.02)
        if app.chat_screen.pending is None:
            break
    await pilot.pause(0.1)
    app.chat_screen.prompt.cursor_blink = False


async def scene_empty(pilot: Pilot[None]) -> None:
    """A new chat: the welcome text, the saved conversations, the empty meter."""
    await settle(pilot)


async def scene_reply_with_code(pilot: Pilot[None]) -> None:
    """A question sent and its Markdown reply streamed in, code highlighted."""
    await pilot.press(*"How do I reverse a singly linked list in Python?", "enter")
    await settle(pilot)


async def scene_meter_near_full(pilot: Pilot[None]) -> None:
    """A long chat: the meter is red, says how many rounds are left out, and those messages are dimmed."""
    from chatglm_tui.tui.app import ChatApp

    app = pilot.app
    assert isinstance(app, ChatApp)
    conversation = next(c for c in app.store.list_conversations() if c.title == "Explain the context window")
    await app.chat_screen.open_conversation(conversation.id)
    await pilot.press(*"And what happens to the rounds that are left out?")
    await settle(pilot)
    await pilot.pause(0.2)  # the meter recounts after a short typing pause
    conversation_view = app.chat_screen.conversation
    while conversation_view.hidden_count and not conversation_view.query(".-left-out"):
        await conversation_view.show_earlier()  # what scrolling up does: mount the older messages
        await pilot.pause(0.1)
    first_kept = next(view for view in conversation_view.views if not view.has_class("-left-out"))
    conversation_view.scroll_to(y=first_kept.virtual_region.y - 15, animate=False)  # where left out meets kept
    await pilot.pause(0.1)


async def scene_sessions(pilot: Pilot[None]) -> None:
    """The saved conversations, newest first (ctrl+o, then ↓ to move from the filter into the list)."""
    await settle(pilot)
    await pilot.press("ctrl+o", "down", "down")
    await pilot.pause(0.2)


async def scene_help(pilot: Pilot[None]) -> None:
    """The help screen: every key and what the meter means."""
    await settle(pilot)
    await pilot.press("f1")
    await pilot.pause(0.3)


SCENES = {
    "empty": scene_empty,
    "reply-with-code": scene_reply_with_code,
    "meter-near-full": scene_meter_near_full,
    "sessions": scene_sessions,
    "help": scene_help,
}
