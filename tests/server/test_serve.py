"""`chatglm serve` over real sockets on 127.0.0.1, driven by the official `openai` client (and raw HTTP for what
a client library would never send). Replies must equal the original implementation's greedy replies
(reference.json) and the in-process engine's; every loop here is bounded."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from chatglm_tui.model.params import GenerationParams

REPLY_TOKENS = 24  # reference.json's greedy replies were made with this many tokens


def _client(server, key: str | None = None, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base, api_key=key or server.key, max_retries=retries, timeout=60)


def _messages(turns: list[dict], upto: int, instruction: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": instruction}] if instruction else []
    for turn in turns[:upto]:
        messages += [{"role": "user", "content": turn["query"]}, {"role": "assistant", "content": turn["response"]}]
    return messages + [{"role": "user", "content": turns[upto]["query"]}]


def _stream_text(stream) -> tuple[str, list[str], object]:
    text, reasons, usage = "", [], None
    for part in stream:
        for choice in part.choices:
            text += choice.delta.content or ""
            reasons += [choice.finish_reason] if choice.finish_reason else []
        usage = part.usage or usage
    return text, reasons, usage


def _pending(server) -> int:
    health = httpx.get(f"{server.root}/health", headers={"Authorization": f"Bearer {server.key}"}, timeout=10)
    return health.json()["pending"]


def _wait_until(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_models_health_and_the_key_on_every_request(server):
    models = _client(server).models.list().data
    assert [model.id for model in models] == ["tiny-chatglm"] and models[0].max_model_len == 2048
    for path in ("/health", "/v1/models", "/v1/chatglm/tokenizer"):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = httpx.get(server.root + path, headers=headers, timeout=10)
            assert response.status_code == 401 and "API key" in response.json()["error"]["message"], path
    with pytest.raises(openai.AuthenticationError, match="chatglm serve --api-key"):
        _client(server, key="wrong").chat.completions.create(model="tiny-chatglm",
                                                             messages=[{"role": "user", "content": "hi"}])
    assert _pending(server) == 0


def test_plain_and_streamed_replies_equal_the_original_greedy_replies(server, reference):
    client = _client(server)
    turns = reference["chats"][0]
    for upto, turn in enumerate(turns):
        kwargs = dict(model="tiny-chatglm", messages=_messages(turns, upto), temperature=0, max_tokens=REPLY_TOKENS)
        plain = client.chat.completions.create(**kwargs)
        assert plain.choices[0].message.content == turn["response"]
        assert plain.choices[0].finish_reason == "length"
        assert plain.usage.prompt_tokens == len(turn["prompt_ids"]) and plain.usage.completion_tokens == REPLY_TOKENS
        text, reasons, usage = _stream_text(client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}))
        assert text == turn["response"] and reasons == ["length"]
        assert usage.prompt_tokens == len(turn["prompt_ids"]) and usage.total_tokens == usage.prompt_tokens + 24


def test_a_system_message_is_the_chat_apps_instruction(server, tiny_fp16):
    question, instruction = "介绍一下清华大学", "Answer in one sentence."
    expected = tiny_fp16.chat(question, [], instruction=instruction, do_sample=False, max_new_tokens=12)
    reply = _client(server).chat.completions.create(
        model="tiny-chatglm", messages=[{"role": "system", "content": instruction},
                                        {"role": "user", "content": question}], temperature=0, max_tokens=12)
    assert reply.choices[0].message.content == expected
    assert reply.usage.prompt_tokens == len(tiny_fp16.prompt_ids(question, [], instruction))


def test_stop_sequences_cut_the_reply(server, reference):
    turn = reference["chats"][0][0]
    stop = turn["response"][10:12]  # two characters from the middle of the reply
    expected = turn["response"][:turn["response"].index(stop)]
    kwargs = dict(model="tiny-chatglm", messages=[{"role": "user", "content": turn["query"]}], temperature=0,
                  max_tokens=REPLY_TOKENS, stop=[stop, "never there"])
    client = _client(server)
    plain = client.chat.completions.create(**kwargs)
    assert plain.choices[0].message.content == expected and plain.choices[0].finish_reason == "stop"
    text, reasons, _ = _stream_text(client.chat.completions.create(**kwargs, stream=True))
    assert text == expected and reasons == ["stop"]


def test_concurrent_clients_all_complete_and_nothing_is_lost(server, reference):
    chats = [chat[0] for chat in reference["chats"]] * 2  # 6 clients for 3 places: the client retries a 429
    results: dict[int, str] = {}

    def ask(index: int) -> None:
        client = _client(server, retries=8)
        turn = chats[index]
        text, _, _ = _stream_text(client.chat.completions.create(
            model="tiny-chatglm", messages=[{"role": "user", "content": turn["query"]}], temperature=0,
            max_tokens=REPLY_TOKENS, stream=True))
        results[index] = text

    threads = [threading.Thread(target=ask, args=(index,)) for index in range(len(chats))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == {index: turn["response"] for index, turn in enumerate(chats)}
    _wait_until(lambda: _pending(server) == 0, "the queue to empty")


def test_a_full_queue_answers_429_and_disconnects_free_the_worker(server, reference):
    long = dict(model="tiny-chatglm", messages=[{"role": "user", "content": "写一篇很长的文章"}], temperature=0,
                max_tokens=2000, stream=True)
    client = _client(server)
    streams = [client.chat.completions.create(**long) for _ in range(3)]  # the server takes 3 at a time
    next(iter(streams[0]))  # the first one is being written
    with pytest.raises(openai.RateLimitError, match="the server is busy"):
        client.chat.completions.create(**long)
    for stream in streams:
        stream.close()  # the clients leave: their generations are cancelled
    _wait_until(lambda: _pending(server) == 0, "the disconnected requests to be released", timeout=5)
    started = time.monotonic()
    turn = reference["chats"][1][0]
    reply = client.chat.completions.create(model="tiny-chatglm", messages=[{"role": "user", "content": turn["query"]}],
                                           temperature=0, max_tokens=REPLY_TOKENS)
    assert reply.choices[0].message.content == turn["response"]
    assert time.monotonic() - started < 10  # not queued behind three 2000-token replies


def test_a_plain_request_whose_client_leaves_is_cancelled(server):
    body = {"model": "tiny-chatglm", "messages": [{"role": "user", "content": "写"}], "temperature": 0,
            "max_tokens": 2000}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up long before 2000 tokens are written
        httpx.post(f"{server.base}/chat/completions", json=body, timeout=0.5,
                   headers={"Authorization": f"Bearer {server.key}"})
    # A 2000-token reply takes several seconds even on the tiny model: released this soon, it was cancelled.
    _wait_until(lambda: _pending(server) == 0, "the abandoned request to be cancelled", timeout=2.5)


def test_a_long_history_is_trimmed_by_the_chats_policy_and_reported(server, tiny_fp16):
    history = [(f"第{i}轮的问题：" + "很长的内容 " * 60, f"第{i}轮的回答 " + "long answer " * 60) for i in range(10)]
    messages = [m for q, a in history for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    reply = httpx.post(f"{server.base}/chat/completions", timeout=60, headers={"Authorization": f"Bearer {server.key}"},
                       json={"model": "tiny-chatglm", "messages": messages + [{"role": "user", "content": "最后"}],
                             "temperature": 0, "max_tokens": 16}).json()
    dropped = reply["x_chatglm"]["dropped_rounds"]
    assert dropped == list(range(len(dropped))) and 0 < len(dropped) < len(history)
    kept = history[len(dropped):]
    assert reply["choices"][0]["message"]["content"] == tiny_fp16.chat("最后", kept, do_sample=False,
                                                                       max_new_tokens=16)
    assert reply["usage"]["prompt_tokens"] == len(tiny_fp16.prompt_ids("最后", kept))


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    ({"model": None}, 404, "is not served here: use 'tiny-chatglm'"),
    ({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404, "'gpt-4' is not served here"),
    ({"tools": []}, 400, "unsupported field 'tools'"),
    ({"temperature": -1}, 400, "invalid temperature = -1: expected a number from 0 to 100"),
    ({"temperature": "hot"}, 400, "invalid temperature = 'hot'"),
    ({"max_tokens": 5000}, 400, "invalid max_tokens = 5000: expected an integer from 1 to 2000"),
    ({"top_p": 0}, 400, "invalid top_p = 0"),
    ({"n": 2}, 400, "n must be 1"),
    ({"stop": [""]}, 400, "stop must be a non-empty string"),
    ({"stream": "yes"}, 400, "stream must be a boolean"),
    ({"messages": []}, 400, "'messages' must be a non-empty list"),
    ({"messages": [{"role": "assistant", "content": "a"}]}, 400, "must alternate"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}]}, 400,
     "system messages must come first"),
    ({"messages": [{"role": "tool", "content": "a"}]}, 400, "messages[0].role is 'tool'"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400, "text only"),
    ({"messages": [{"role": "user", "content": "长 " * 2100}]}, 400, "tokens over the 2048-token window"),
])
def test_bad_requests_get_the_right_status_and_a_clear_message(server, body, status, message):
    if isinstance(body, dict):
        body = json.dumps({"model": "tiny-chatglm", "messages": [{"role": "user", "content": "hi"}], **body})
    response = httpx.post(f"{server.base}/chat/completions", content=body, timeout=30,
                          headers={"Authorization": f"Bearer {server.key}", "Content-Type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error["message"] and "\n" not in error["message"]
    assert _pending(server) == 0


def test_unknown_paths_and_methods_answer_in_the_api_format(server):
    headers = {"Authorization": f"Bearer {server.key}"}
    missing = httpx.get(f"{server.base}/completions", headers=headers, timeout=10)
    assert missing.status_code == 404 and "no such endpoint" in missing.json()["error"]["message"]
    wrong = httpx.get(f"{server.base}/chat/completions", headers=headers, timeout=10)
    assert wrong.status_code == 405


def test_nothing_is_saved_unless_asked_and_save_keeps_the_whole_exchange(server, start_server, fixture_dir,
                                                                          tmp_path):
    assert not (server.home / "data" / "sessions.sqlite3").exists()  # after every test above: nothing saved
    saving = start_server(fixture_dir / "fp16", tmp_path, "--save")
    client = openai.OpenAI(base_url=saving.base, api_key="none", max_retries=0, timeout=60)
    reply = client.chat.completions.create(
        model=saving.model, temperature=0, max_tokens=8,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q1"},
                  {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}])
    saving.stop()
    from chatglm_tui.store import SessionStore

    with SessionStore(tmp_path / "data" / "sessions.sqlite3") as store:
        conversation = store.latest()
        assert conversation is not None and conversation.instruction == "Be brief." and conversation.title == "q2"
        messages = store.messages(conversation.id)
    assert [(m.role, m.text) for m in messages] == [("user", "q1"), ("assistant", "a1"), ("user", "q2"),
                                                    ("assistant", reply.choices[0].message.content)]
    assert messages[-1].new_tokens == 8


def test_an_address_that_cannot_be_used_is_one_line_before_any_loading(tmp_path):
    env = {**os.environ, "CHATGLM_HOME": str(tmp_path)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run([sys.executable, "-m", "chatglm_tui", "serve", "--port", str(port), "-m", "/nowhere"],
                              capture_output=True, text=True, env=env, timeout=60)
    assert busy.returncode == 1 and busy.stderr.count("\n") == 1
    assert "Address already in use: pick another --port" in busy.stderr  # checked before the (missing) model
    bad = subprocess.run([sys.executable, "-m", "chatglm_tui", "serve", "--port", "70000"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "--port" in bad.stderr and "Traceback" not in bad.stderr


def test_a_final_assistant_message_is_continued(server, tiny_fp16):
    cut = tiny_fp16.chat("你好", do_sample=False, max_new_tokens=6)
    prefix_ids = tiny_fp16.tokenizer.encode_text(cut, parse_special=False)
    generated = list(tiny_fp16.generate_ids(tiny_fp16.prompt_ids("你好") + prefix_ids,
                                            GenerationParams(do_sample=False, max_new_tokens=8)))
    decoder = tiny_fp16.response_decoder()
    decoder.add(prefix_ids + generated)
    decoder.flush()
    reply = _client(server).chat.completions.create(
        model="tiny-chatglm", temperature=0, max_tokens=8,
        messages=[{"role": "user", "content": "你好"}, {"role": "assistant", "content": cut}])
    assert cut + reply.choices[0].message.content == decoder.text  # only the new text comes back


def test_the_served_name_is_printed_inert(start_server, fixture_dir, tmp_path):
    running = start_server(fixture_dir / "fp16", tmp_path, "--name", "evil\x1b]0;owned\x07")
    assert "\x1b" not in running.model and "\x07" not in running.model and "␛" in running.model
