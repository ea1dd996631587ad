"""SessionStore behaviour within one process: conversations, branching messages, search, export/import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatglm_tui.errors import ChatGLMError
from chatglm_tui.store import Conversation, Message, SessionStore, StoreError, default_store_path


def _chat(store: SessionStore, title: str = "Trip", turns: int = 2) -> Conversation:
    conversation = store.create_conversation(title, model="chatglm-6b", params={"temperature": 0.95})
    for turn in range(turns):
        store.add_message(conversation.id, "user", f"question {turn}")
        store.add_message(conversation.id, "assistant", f"answer {turn}", prompt_tokens=10 + turn,
                          new_tokens=5, stats={"seconds": 0.5, "reason": "eos"})
    return store.get(conversation.id)


def test_default_path_follows_chatglm_home_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATGLM_HOME", str(tmp_path / "home"))
    assert default_store_path() == tmp_path / "home" / "data" / "sessions.sqlite3"
    assert not (tmp_path / "home").exists()


def test_opening_creates_folders_and_a_wal_database(store, store_path):
    assert store_path.is_file() and store.path == store_path
    assert issubclass(StoreError, ChatGLMError)


def test_create_and_add(store, clock):
    conversation = store.create_conversation("Hello", model="chatglm-6b", params={"top_p": 0.7},
                                             instruction="Be brief.")
    assert len(conversation.id) == 12 and int(conversation.id, 16) >= 0
    assert conversation.created_at == conversation.updated_at
    assert (conversation.title, conversation.model, conversation.params, conversation.instruction) == (
        "Hello", "chatglm-6b", {"top_p": 0.7}, "Be brief.")
    question = store.add_message(conversation.id, "user", "你好")
    answer = store.add_message(conversation.id, "assistant", "你好👋", prompt_tokens=3, new_tokens=4,
                               stats={"tokens_per_s": 12.5})
    assert question.parent_id is None and answer.parent_id == question.id
    assert store.messages(conversation.id) == [question, answer]
    assert answer.stats == {"tokens_per_s": 12.5} and answer.prompt_tokens == 3 and not answer.stopped
    assert store.get(conversation.id).updated_at == answer.created_at > conversation.updated_at


def test_add_message_rejects_bad_input(store):
    conversation = store.create_conversation("a")
    other = store.create_conversation("b")
    foreign = store.add_message(other.id, "user", "elsewhere")
    with pytest.raises(StoreError, match="no conversation"):
        store.add_message("000000000000", "user", "x")
    with pytest.raises(StoreError, match="role"):
        store.add_message(conversation.id, "system", "x")  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="no message"):
        store.add_message(conversation.id, "user", "x", parent_id=foreign.id)
    assert store.messages(conversation.id) == []


def test_list_is_newest_first_and_filters(store):
    first, second, third = (store.create_conversation(title) for title in ("Alpha", "Beta", "alphabet"))
    assert [c.id for c in store.list_conversations()] == [third.id, second.id, first.id]
    store.add_message(first.id, "user", "bump")
    assert store.latest().id == first.id
    assert [c.id for c in store.list_conversations(limit=2)] == [first.id, third.id]
    assert [c.title for c in store.list_conversations(title_filter="ALPHA")] == ["Alpha", "alphabet"]
    assert store.list_conversations(title_filter="100%_") == []


def test_latest_of_an_empty_store_is_none(store):
    assert store.latest() is None and store.list_conversations() == []


def test_resolve(store, monkeypatch):
    ids = iter(["0123456789ab", "fedcba987654"])
    monkeypatch.setattr("chatglm_tui.store.store.secrets.token_hex", lambda n: next(ids))
    older = store.create_conversation("Same title")
    newer = store.create_conversation("Same title")
    assert store.resolve(older.id) == older
    assert store.resolve("0123") == older and store.resolve("f") == newer
    assert store.resolve("Same title") == newer
    with pytest.raises(StoreError, match="no conversation matches 'nothing'"):
        store.resolve("nothing")
    with pytest.raises(StoreError, match="no conversation matches"):
        store.resolve("")


def test_resolve_ambiguous_prefix(store, monkeypatch):
    ids = iter(["abc111111111", "abc222222222"])
    monkeypatch.setattr("chatglm_tui.store.store.secrets.token_hex", lambda n: next(ids))
    first, second = store.create_conversation("one"), store.create_conversation("two")
    assert store.resolve("abc1") == first and store.resolve("abc2") == second
    with pytest.raises(StoreError, match="'abc' matches 2 conversations") as raised:
        store.resolve("abc")
    assert first.id in str(raised.value) and "\n" not in str(raised.value)


def test_get_missing(store):
    with pytest.raises(StoreError, match="no conversation with id 'nope'"):
        store.get("nope")


def test_history_pairs_an_unanswered_question_with_an_empty_reply(store):
    conversation = _chat(store, turns=2)
    store.add_message(conversation.id, "user", "unanswered")  # e.g. its reply failed
    expected = [("question 0", "answer 0"), ("question 1", "answer 1"), ("unanswered", "")]
    assert store.history(conversation.id) == expected
    store.add_message(conversation.id, "user", "next")
    store.add_message(conversation.id, "assistant", "reply")
    assert store.history(conversation.id) == expected + [("next", "reply")]  # a turn's history never changes


def test_regenerate_branches_and_keeps_the_old_reply(store):
    conversation = store.create_conversation("Branches")
    question = store.add_message(conversation.id, "user", "tell a joke")
    old = store.add_message(conversation.id, "assistant", "old joke", stopped=True)
    new = store.add_message(conversation.id, "assistant", "new joke", parent_id=question.id)
    assert store.messages(conversation.id) == [question, new]
    assert store.branches(new.id) == [old, new] == store.branches(old.id)
    assert store.messages(conversation.id, leaf_id=old.id) == [question, old]
    assert store.history(conversation.id) == [("tell a joke", "new joke")]
    follow = store.add_message(conversation.id, "user", "another")
    assert follow.parent_id == new.id  # the default parent is the current branch's last message


def test_edit_branches_from_the_root(store):
    conversation = store.create_conversation("Edit")
    first = store.add_message(conversation.id, "user", "typo")
    store.add_message(conversation.id, "assistant", "reply to typo")
    edited = store.add_message(conversation.id, "user", "fixed", parent_id=None)
    answer = store.add_message(conversation.id, "assistant", "reply to fixed")
    assert store.messages(conversation.id) == [edited, answer]
    assert [m.text for m in store.branches(first.id)] == ["typo", "fixed"]
    with pytest.raises(StoreError, match="no message"):
        store.messages(conversation.id, leaf_id=10_000)


def test_rename_update_and_delete_cascade(store, store_path):
    keep, doomed = _chat(store, "Keep"), _chat(store, "Doomed")
    renamed = store.rename(keep.id, "Kept")
    assert renamed.title == "Kept" and renamed.updated_at == keep.updated_at
    updated = store.update(keep.id, params={"temperature": 0.1})
    assert updated.params == {"temperature": 0.1} and updated.instruction is None
    assert store.update(keep.id, instruction="Answer in English.").params == {"temperature": 0.1}
    assert store.update(keep.id, instruction=None).instruction is None
    doomed_ids = [m.id for m in store.all_messages(doomed.id)]
    store.delete(doomed.id)
    with pytest.raises(StoreError):
        store.get(doomed.id)
    with pytest.raises(StoreError):
        store.delete(doomed.id)
    with pytest.raises(StoreError):
        store.rename(doomed.id, "ghost")
    assert all(store.branches(m.id) for m in store.all_messages(keep.id))
    for message_id in doomed_ids:
        with pytest.raises(StoreError, match="no message"):
            store.branches(message_id)
    assert store.search("question") and all(c.id == keep.id for c, _ in store.search("question"))


@pytest.mark.parametrize("hostile", ['"foo AND (', "foo AND (", 'NEAR(a b)', "*", "a:b", "'; DROP TABLE x; --",
                                     "%", "_", "\\", '""', "(", "AND OR NOT"])
def test_search_accepts_any_input(store, hostile):
    conversation = store.create_conversation("Hostile")
    store.add_message(conversation.id, "user", f"literal {hostile} text")
    store.add_message(conversation.id, "user", "nothing special")
    found = store.search(hostile)
    assert [m.text for _, m in found] == [f"literal {hostile} text"]


def test_search_round_trip_with_chinese(store):
    weather = store.create_conversation("天气")
    question = store.add_message(weather.id, "user", "今天北京天气怎么样？")
    store.add_message(weather.id, "assistant", "北京今天晴，气温二十度。")
    other = store.create_conversation("Python")
    store.add_message(other.id, "user", "How do I reverse a list in Python?")
    assert [m.id for _, m in store.search("北京天气")] == [question.id]
    assert {m.text for _, m in store.search("北京")} == {"今天北京天气怎么样？", "北京今天晴，气温二十度。"}
    hits = store.search("python LIST")
    assert [(c.id, m.text) for c, m in hits] == [(other.id, "How do I reverse a list in Python?")]
    assert store.search("北京 list") == [] and store.search("   ") == []
    assert len(store.search("北京", limit=1)) == 1


def test_search_ranks_best_first(store):
    conversation = store.create_conversation("Rank")
    store.add_message(conversation.id, "user", "kernel " + "filler words " * 40)
    best = store.add_message(conversation.id, "user", "kernel kernel kernel")
    assert store.search("kernel")[0][1].id == best.id


def test_export_markdown_marks_stopped_replies(store):
    conversation = store.create_conversation("Notes", model="chatglm-6b", instruction="Be kind.")
    store.add_message(conversation.id, "user", "Write a poem")
    store.add_message(conversation.id, "assistant", "Roses are", stopped=True)
    text = store.export_markdown(conversation.id)
    assert text.startswith("# Notes\n")
    assert "chatglm-6b" in text and "Be kind." in text and conversation.id in text
    assert "## User\n\n```\nWrite a poem\n```" in text
    assert "## Assistant (stopped)\n\n```\nRoses are\n```" in text and "stopped before it finished" in text


def _headings(markdown: str) -> list[str]:
    """The Markdown headings outside fenced blocks, as CommonMark reads them (backtick fences only)."""
    headings, fence = [], ""
    for line in markdown.splitlines():
        run = len(line) - len(line.lstrip("`"))
        if fence and run >= len(fence) and not line.strip("`"):
            fence = ""
        elif not fence and run >= 3:
            fence = "`" * run
        elif not fence and line.startswith("#"):
            headings.append(line)
    return headings


def test_export_markdown_fences_message_text_so_it_cannot_add_sections(store):
    document = "# Report\n\n## Findings\n\n```python\nprint('x')\n```\n\n````\n## still inside\n````\n`a` ``b``"
    conversation = store.create_conversation("Paste", instruction="Line one\n## Not a section")
    store.add_message(conversation.id, "user", document)
    store.add_message(conversation.id, "assistant", "## Summary\n\x1b[31mred\x1b[0m")
    store.add_message(conversation.id, "user", "")
    text = store.export_markdown(conversation.id)
    assert _headings(text) == ["# Paste", "## User", "## Assistant", "## User"]
    assert "`````\n" + document + "\n`````" in text  # one backtick more than the longest run (4) inside
    assert "```\n## Summary\n␛[31mred␛[0m\n```" in text and "\x1b" not in text  # inert inside the fence
    assert "- instruction:\n\n```\nLine one\n## Not a section\n```" in text
    assert text.endswith("## User\n\n```\n```\n")


def _normalised(export: dict) -> dict:
    """An export with message ids replaced by positions (ids are store-wide and remapped on import)."""
    position = {m["id"]: index for index, m in enumerate(export["messages"])}
    messages = [{**m, "id": position[m["id"]], "parent_id": position.get(m["parent_id"])}
                for m in export["messages"]]
    return {**export, "messages": messages, "conversation": {**export["conversation"], "id": None}}


def test_export_json_import_round_trip(store, tmp_path):
    original = _chat(store, turns=2)
    first_answer = store.all_messages(original.id)[1]
    store.add_message(original.id, "assistant", "answer 1 again", parent_id=first_answer.parent_id,
                      stopped=True)
    exported = json.loads(json.dumps(store.export_json(original.id), ensure_ascii=False))
    with SessionStore(tmp_path / "other.sqlite3") as other:
        imported = other.import_json(exported)
        assert imported == store.get(original.id)  # id kept: it is free in the other store
        assert other.export_json(imported.id) == exported  # a fresh store even hands out the same message ids
        assert [m.text for m in other.messages(imported.id)] == [m.text for m in store.messages(original.id)]
    copy = store.import_json(exported)
    assert copy.id != original.id and copy.title == original.title
    assert _normalised(store.export_json(copy.id)) == _normalised(exported)


@pytest.mark.parametrize("mangle", [
    lambda e: [],
    lambda e: {**e, "format": "something-else"},
    lambda e: {**e, "version": 99},
    lambda e: {**e, "conversation": {**e["conversation"], "title": 3}},
    lambda e: {**e, "messages": [{**e["messages"][0], "role": "system"}]},
    lambda e: {**e, "messages": [{**e["messages"][0], "stopped": 1}]},
    lambda e: {**e, "messages": e["messages"][1:]},  # a parent that is not there
])
def test_import_rejects_malformed_data(store, mangle):
    exported = store.export_json(_chat(store).id)
    before = len(store.list_conversations())
    with pytest.raises(StoreError, match="cannot import"):
        store.import_json(mangle(exported))
    assert len(store.list_conversations()) == before


def test_message_dataclasses_are_frozen(store):
    message = store.add_message(store.create_conversation("x").id, "user", "hi")
    assert isinstance(message, Message)
    with pytest.raises(AttributeError):
        message.text = "changed"  # type: ignore[misc]


def test_two_stores_on_one_file_see_each_other(store, store_path: Path):
    conversation = store.create_conversation("shared")
    with SessionStore(store_path) as second:
        second.add_message(conversation.id, "user", "from the second connection")
    assert [m.text for m in store.messages(conversation.id)] == ["from the second connection"]
