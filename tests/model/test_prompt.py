"""The chat template and the response post-processing are the original's."""

from __future__ import annotations

from chatglm_tui.model.prompt import build_prompt, process_response


def test_prompt_without_history_is_the_bare_query():
    assert build_prompt([], "你好") == "你好"


def test_prompt_with_one_and_many_rounds():
    assert build_prompt([("你好", "你好👋！")], "再见") == "[Round 0]\n问：你好\n答：你好👋！\n[Round 1]\n问：再见\n答："
    history = [(f"q{i}", f"r{i}") for i in range(3)]
    prompt = build_prompt(history, "q3")
    assert prompt.startswith("[Round 0]\n问：q0\n答：r0\n[Round 1]\n")
    assert prompt.endswith("[Round 3]\n问：q3\n答：")


def test_process_response():
    assert process_response("  你好,世界!  ") == "你好，世界！"
    assert process_response("Hello, world!") == "Hello, world!"
    assert process_response("成立于[[训练时间]]") == "成立于2023年"
    assert process_response("为什么?因为:好;") == "为什么？因为：好；"
