"""Pure pieces of the TUI, without an app: the message tree, code blocks, titles and parameters, the meter's bar,
copying, export names, ages, the editor lookup, keys, load words, and the layering (no torch behind the TUI)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatglm_tui.config.keymap import KNOWN_IDS, unknown_binding_ids
from chatglm_tui.engine.protocol import Budget, GenerationParams, LoadProgress, load_text
from chatglm_tui.session.tree import MessageTree
from chatglm_tui.store import Message, rounds_of
from chatglm_tui.store.titles import TITLE_LENGTH, title_from
from chatglm_tui.tui import clipboard
from chatglm_tui.tui.clipboard import describe_copy, last_copy_path, save_copy
from chatglm_tui.tui.code_blocks import CodeBlock, code_blocks
from chatglm_tui.tui.conversation_actions import export_path, find_editor
from chatglm_tui.tui.keys import binding_rows
from chatglm_tui.tui.widgets.budget_meter import PROMPT_END_TOKENS, bar_cells, describe_dropped, shown_parts
from chatglm_tui.tui.widgets.sidebar import age


def msg(id: int, role: str, parent: int | None, text: str | None = None) -> Message:
    text = text if text is not None else f"{role}{id}"
    return Message(id, "c0ffee000000", role, text, float(id), parent)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ tree

# 1 user ─ 2 reply ─ 3 user ─ 4 reply
#                  │       └ 6 reply (regenerated)
#                  └ 5 user (edited 3) ─ 7 reply
#        └ 8 reply (regenerated 2)
TREE = [msg(1, "user", None), msg(2, "assistant", 1), msg(3, "user", 2), msg(4, "assistant", 3),
        msg(5, "user", 2), msg(6, "assistant", 3), msg(7, "assistant", 5), msg(8, "assistant", 1)]


def test_versions_are_siblings_oldest_first():
    tree = MessageTree(TREE)
    assert len(tree) == 8
    assert tree.versions(3) == tree.versions(5) == [3, 5]
    assert tree.versions(4) == [4, 6]
    assert tree.versions(2) == [2, 8]
    assert tree.versions(1) == [1]  # the only root


def test_newest_leaf_follows_the_most_recently_extended_branch():
    tree = MessageTree(TREE)
    assert tree.newest_leaf(1) == 8
    assert tree.newest_leaf(2) == 7
    assert tree.newest_leaf(3) == 6
    assert tree.newest_leaf(4) == 4  # a leaf is its own newest leaf
    assert tree.default_leaf() == 8
    assert MessageTree().default_leaf() is None


def test_path_runs_from_the_root_to_the_leaf():
    tree = MessageTree(TREE)
    assert [m.id for m in tree.path(6)] == [1, 2, 3, 6]
    assert [m.id for m in tree.path(7)] == [1, 2, 5, 7]
    assert [m.id for m in tree.path(1)] == [1]
    assert tree.path(None) == []


def test_rounds_of_a_branch_with_their_sources():
    branch = MessageTree(TREE).path(6)
    assert rounds_of(branch) == ([("user1", "assistant2"), ("user3", "assistant6")], [(1, 2), (3, 6)])


def test_rounds_of_pairs_a_trailing_question_with_an_empty_reply():
    # A question whose reply failed (or is being written) is a round: the next question's history has it.
    branch = [msg(1, "user", None), msg(2, "assistant", 1), msg(3, "user", 2)]
    assert rounds_of(branch) == ([("user1", "assistant2"), ("user3", "")], [(1, 2), (3,)])
    assert rounds_of([msg(1, "user", None)]) == ([("user1", "")], [(1,)])
    assert rounds_of([]) == ([], [])


def test_rounds_of_pairs_two_questions_in_a_row_with_an_empty_reply():
    branch = [msg(1, "user", None), msg(2, "user", 1), msg(3, "assistant", 2), msg(4, "user", 3)]
    assert rounds_of(branch) == ([("user1", ""), ("user2", "assistant3"), ("user4", "")], [(1,), (2, 3), (4,)])
    assert rounds_of(branch[:3]) == ([("user1", ""), ("user2", "assistant3")], [(1,), (2, 3)])


def test_rounds_of_a_reply_without_a_question():
    branch = [msg(1, "assistant", None), msg(2, "user", 1), msg(3, "assistant", 2)]
    assert rounds_of(branch) == ([("", "assistant1"), ("user2", "assistant3")], [(1,), (2, 3)])


def test_the_tree_agrees_with_the_store(store):
    """The TUI's tree and the store's own branch walk and history give the same answers."""
    conversation = store.create_conversation("t")
    q1 = store.add_message(conversation.id, "user", "q1", parent_id=None)
    a1 = store.add_message(conversation.id, "assistant", "a1", parent_id=q1.id)
    store.add_message(conversation.id, "assistant", "a1 again", parent_id=q1.id)
    q2 = store.add_message(conversation.id, "user", "q2", parent_id=a1.id)
    store.add_message(conversation.id, "user", "q2 edited", parent_id=a1.id)
    tree = MessageTree(store.all_messages(conversation.id))
    leaf = tree.default_leaf()
    assert tree.path(leaf) == store.messages(conversation.id)
    assert rounds_of(tree.path(leaf))[0] == store.history(conversation.id)
    assert tree.versions(q2.id) == [m.id for m in store.branches(q2.id)]


# ------------------------------------------------------------------------------------------------ code blocks


def test_fenced_blocks_with_languages_in_order():
    text = "Intro\n```python\nprint(1)\n\nprint(2)\n```\nmiddle\n```\nplain\n```\n"
    assert code_blocks(text) == [CodeBlock("python", "print(1)\n\nprint(2)"), CodeBlock("", "plain")]


def test_tilde_fences_and_longer_fences_keep_shorter_fences_inside():
    text = "~~~bash\necho ```\n```\n~~~\n````md\n```py\nx = 1\n```\n````"
    assert code_blocks(text) == [CodeBlock("bash", "echo ```\n```"), CodeBlock("md", "```py\nx = 1\n```")]


def test_an_unclosed_fence_runs_to_the_end():
    assert code_blocks("Here:\n```js\nlet a = 1;\nlet b = 2;") == [CodeBlock("js", "let a = 1;\nlet b = 2;")]


def test_an_info_string_keeps_only_the_language_and_indented_fences_count():
    text = "   ```rust {.numberLines}\nfn main() {}\n   ```"
    assert code_blocks(text) == [CodeBlock("rust", "fn main() {}")]


@pytest.mark.parametrize("text", ["", "no code at all", "inline `code` and ``` not a fence ``` here",
                                  "    ```\n    indented four: a code line, not a fence"])
def test_no_blocks(text):
    assert code_blocks(text) == []


def test_block_summary():
    assert CodeBlock("python", "\n  def main():\n    pass").summary == "python · 3 lines · def main():"
    assert CodeBlock("", "x").summary == "text · 1 line · x"


# ------------------------------------------------------------------------------------------------ titles, params


@pytest.mark.parametrize(("text", "title"), [
    ("Hello", "Hello"),
    ("\n\n   What   is\tthis?  \nsecond line", "What is this?"),
    ("", "New chat"),
    ("   \n\t\n", "New chat"),
    ("你好，请介绍一下你自己", "你好，请介绍一下你自己"),
])
def test_title_from(text, title):
    assert title_from(text) == title


def test_title_from_shortens_long_lines_to_the_limit():
    exact = "x" * TITLE_LENGTH
    assert title_from(exact) == exact
    long = title_from("y" * (TITLE_LENGTH + 1))
    assert len(long) == TITLE_LENGTH and long.endswith("…") and long.startswith("y" * (TITLE_LENGTH - 1))


def test_params_from_overrides_defaults_and_ignores_unknown_keys():
    defaults = GenerationParams(temperature=0.95, top_p=0.7, max_new_tokens=512)
    params = defaults.updated_from({"temperature": 0.2, "max_new_tokens": 64, "from_a_later_version": True})
    assert params == GenerationParams(do_sample=True, temperature=0.2, top_p=0.7, top_k=50, max_new_tokens=64)
    assert defaults.updated_from({}) == defaults


def test_params_from_derives_do_sample_from_the_temperature():
    assert GenerationParams().updated_from({"temperature": 0, "do_sample": True}).do_sample is False
    assert GenerationParams(temperature=0.5).updated_from({"do_sample": False}).do_sample is True


# ------------------------------------------------------------------------------------------------ the meter's bar


def _budget(history: int, instruction: int, query: int, reserved: int, window: int = 2048) -> Budget:
    return Budget(window, history, instruction, query, reserved, (), True)


BUDGETS = [
    _budget(0, 0, 0, 512),
    _budget(28, 0, 0, 512),
    _budget(1, 1, 1, 1),
    _budget(1500, 3, 2, 512),  # over the window: the reserve is cut to what is left
    _budget(3000, 100, 100, 512),  # far over
    _budget(10, 10, 10, 10, window=30),
    _budget(2048, 0, 0, 0),
]


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("cells", [4, 5, 16, 20, 37])
def test_bar_cells_fill_the_width_and_show_every_part(budget, cells):
    sized = dict(bar_cells(budget, cells))
    assert list(sized) == ["history", "instruction", "draft", "reserved", "free"]
    assert sum(sized.values()) == cells
    assert all(size >= 0 for size in sized.values())
    shown = dict(shown_parts(budget)) | {"reserved": min(budget.reserved, max(budget.window - budget.used, 0))}
    for name, tokens in shown.items():
        assert (sized[name] >= 1) == (tokens > 0), (name, sized)


def test_bar_cells_over_a_grid_of_budgets():
    for history, instruction, query, reserved in itertools.product((0, 1, 7, 300, 2000), (0, 1, 40),
                                                                    (0, 1, 900), (0, 1, 512)):
        budget = _budget(history, instruction, query, reserved)
        sized = dict(bar_cells(budget, 16))
        assert sum(sized.values()) == 16
        shown = dict(shown_parts(budget))
        for name in ("history", "instruction", "draft"):
            assert (sized[name] >= 1) == (shown[name] > 0)


def test_bar_cells_are_proportional():
    sized = dict(bar_cells(_budget(1026, 0, 0, 512), 16))  # 1,024 tokens of rounds and [gMASK] <sop>
    assert sized == {"history": 8, "instruction": 0, "draft": 1, "reserved": 4, "free": 3}


def test_the_prompts_closing_tokens_count_with_the_draft_not_the_history():
    # A Budget counts [gMASK] <sop> in history_tokens; an empty chat must not show "history 2".
    assert PROMPT_END_TOKENS == 2
    assert shown_parts(_budget(2, 0, 0, 512)) == [("history", 0), ("instruction", 0), ("draft", 2), ("reserved", 512)]
    assert shown_parts(_budget(40, 5, 7, 100)) == [("history", 38), ("instruction", 5), ("draft", 9),
                                                   ("reserved", 100)]
    assert sum(tokens for _, tokens in shown_parts(_budget(40, 5, 7, 100))[:3]) == _budget(40, 5, 7, 100).used


def test_describe_dropped():
    assert describe_dropped((0,)) == "1 oldest round left out"
    assert describe_dropped((0, 1, 2)) == "3 oldest rounds left out"


# ------------------------------------------------------------------------------------------------ copying


def test_describe_copy():
    path = Path("/tmp/last-copy.txt")
    assert describe_copy("the last reply", "x", None, None) == (
        "Copied the last reply (1 character) to the clipboard (OSC 52).")
    assert describe_copy("code", "x" * 1234, "xclip", path) == (
        f"Copied code (1,234 characters) to the clipboard (OSC 52 and xclip). Also saved to {path}")


def test_save_copy_writes_the_last_copy_file(home):
    assert save_copy("some text ✓") == last_copy_path()
    assert last_copy_path().read_text(encoding="utf-8") == "some text ✓"
    assert last_copy_path().is_relative_to(home)


def test_save_copy_to_an_unwritable_place_returns_none(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    monkeypatch.setenv("CHATGLM_HOME", str(blocker))  # data/ would have to be created inside a file
    assert save_copy("text") is None
    assert blocker.read_text(encoding="utf-8") == "not a folder"


def test_copy_with_tool_without_any_tool(monkeypatch):
    monkeypatch.setattr(clipboard.shutil, "which", lambda name: None)
    assert clipboard.copy_with_tool("text") is None


def test_x11_and_wayland_tools_need_their_display(monkeypatch):
    monkeypatch.setattr(clipboard.shutil, "which", lambda name: f"/usr/bin/{name}" if name in ("xclip", "wl-copy")
                        else None)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert clipboard._tool() is None
    monkeypatch.setenv("DISPLAY", ":0")
    assert clipboard._tool() == ("xclip", "-selection", "clipboard")
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    assert clipboard._tool() == ("wl-copy",)


def test_copy_with_tool_reports_the_tool_or_none_when_it_fails(monkeypatch, tmp_path):
    target = tmp_path / "pasted"
    script = tmp_path / "fake-copy"
    script.write_text(f'#!/bin/sh\ncat > "{target}"\n', encoding="utf-8")
    script.chmod(0o755)
    monkeypatch.setattr(clipboard, "_TOOLS", ((str(script),),))
    assert clipboard.copy_with_tool("copied ✓") == str(script)
    assert target.read_text(encoding="utf-8") == "copied ✓"
    monkeypatch.setattr(clipboard, "_TOOLS", (("false",),))
    assert clipboard.copy_with_tool("x") is None


# ------------------------------------------------------------------------------------------------ export names


def test_export_path_is_file_safe(tmp_path):
    assert export_path("Hello, world!", "abcdef123456", tmp_path) == tmp_path / "Hello-world-abcdef.md"
    assert export_path("../../etc/passwd", "abcdef123456", tmp_path) == tmp_path / "etc-passwd-abcdef.md"
    assert export_path('a/b\\c:d*e?f"g<h>i|j', "abcdef123456", tmp_path).name == "a-b-c-d-e-f-g-h-i-j-abcdef.md"
    assert export_path("你好 世界", "abcdef123456", tmp_path).name == "你好-世界-abcdef.md"
    assert export_path("???", "abcdef123456", tmp_path).name == "chat-abcdef.md"
    assert export_path("", "abcdef123456", tmp_path).name == "chat-abcdef.md"
    long = export_path("w" * 80, "abcdef123456", tmp_path)
    assert long.name == "w" * 50 + "-abcdef.md"
    for title in ("Hello, world!", "../../etc/passwd", "a\nb\tc", ". ..", "-x-"):
        path = export_path(title, "abcdef123456", tmp_path)
        assert path.parent == tmp_path and not path.name.startswith((".", "-"))


def test_export_path_never_reuses_a_name(tmp_path):
    first = export_path("Notes", "abcdef123456", tmp_path)
    first.write_text("1", encoding="utf-8")
    second = export_path("Notes", "abcdef123456", tmp_path)
    assert second.name == "Notes-abcdef-2.md"
    second.write_text("2", encoding="utf-8")
    assert export_path("Notes", "abcdef123456", tmp_path).name == "Notes-abcdef-3.md"
    assert export_path("Notes", "123456abcdef", tmp_path).name == "Notes-123456.md"  # another chat


# ------------------------------------------------------------------------------------------------ sidebar ages


@pytest.mark.parametrize(("delta", "shown"), [
    (0, "now"), (59, "now"), (-30, "now"), (60, "1m"), (3599, "59m"), (3600, "1h"), (86399, "23h"),
    (86400, "1d"), (6 * 86400 + 86399, "6d"),
])
def test_age(delta, shown):
    now = 1_700_000_000.0
    assert age(now - delta, now) == shown


def test_age_of_a_week_or_more_is_a_date():
    now = 1_700_000_000.0
    shown = age(now - 7 * 86400, now)
    assert len(shown) == 10 and shown[4] == shown[7] == "-" and shown.startswith("2023-11-")


# ------------------------------------------------------------------------------------------------ $EDITOR


def test_find_editor_prefers_visual_then_editor(monkeypatch):
    monkeypatch.setenv("VISUAL", "code --wait")
    monkeypatch.setenv("EDITOR", "nano")
    assert find_editor() == ["code", "--wait"]
    monkeypatch.setenv("VISUAL", "   ")
    assert find_editor() == ["nano"]
    monkeypatch.setenv("EDITOR", "'/opt/my editor/bin/ed' -n")
    assert find_editor() == ["/opt/my editor/bin/ed", "-n"]


def test_find_editor_falls_back_to_an_installed_editor(monkeypatch):
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.delenv("EDITOR", raising=False)
    monkeypatch.setattr("chatglm_tui.tui.conversation_actions.shutil.which",
                        lambda name: "/usr/bin/vim" if name in ("vim", "vi") else None)
    assert find_editor() == ["vim"]
    monkeypatch.setattr("chatglm_tui.tui.conversation_actions.shutil.which", lambda name: None)
    assert find_editor() is None


# ------------------------------------------------------------------------------------------------ keys, load words


def test_unknown_binding_ids():
    assert unknown_binding_ids({"chat.send": "ctrl+j", "chat.sned": "x", "nope": "y"}) == ["chat.sned", "nope"]
    assert unknown_binding_ids({}) == []
    assert {"app.help", "app.quit", "chat.send", "chat.stop", "chat.regenerate", "message.copy",
            "message.older_version"} <= KNOWN_IDS


def test_binding_rows_apply_the_keymap():
    rows = binding_rows({"chat.regenerate": "f6", "chat.newline": "ctrl+o,alt+o"}, lambda b: b.key.upper())
    by_id = {binding_id: keys for keys, _, binding_id in rows}
    assert by_id["chat.regenerate"] == "F6"
    assert by_id["chat.newline"] == "CTRL+O / ALT+O"
    assert by_id["chat.stop"] == "ESCAPE"
    assert set(by_id) - {"—"} == KNOWN_IDS


@pytest.mark.parametrize(("event", "words"), [
    (LoadProgress("read", 3, 8), "reading weights 3/8"),
    (LoadProgress("quantize", 1, 28), "quantizing 1/28"),
    (LoadProgress("download", 1_200_000_000, 3_900_000_000), "downloading 1.20/3.90 GB"),
    (LoadProgress("download", 1, 4), "downloading 1/4"),
    (LoadProgress("read", 0, 1), "reading weights"),
    (LoadProgress("ready", 1, 1), "ready"),
])
def test_load_text(event, words):
    assert load_text(event) == words


# ------------------------------------------------------------------------------------------------ layering


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    return set(out.split())


def test_the_tui_imports_no_torch():
    loaded = _loaded_after("import chatglm_tui.tui.app; from chatglm_tui.engine.fake import FakeEngine")
    assert "chatglm_tui.tui.app" in loaded and "textual" in loaded
    assert "torch" not in loaded and "transformers" not in loaded
    # Only the model's torch-free types (the one Round, GenerationParams and load options) reach the app.
    shared_types = {"chatglm_tui.model", "chatglm_tui.model.prompt", "chatglm_tui.model.params",
                    "chatglm_tui.model.load_options"}
    assert not {name for name in loaded if name.startswith("chatglm_tui.model")} - shared_types
