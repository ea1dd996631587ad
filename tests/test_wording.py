"""Counts and sizes in user-facing messages: "1 token", never "1 tokens"; "3.9 GB", never 3900000000."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from chatglm_tui.engine.fake import FakeEngine
from chatglm_tui.model.params import GenerationParams
from chatglm_tui.server.app import ServerOptions, make_server_app
from chatglm_tui.terminal.wording import counted, human_size
from chatglm_tui.tui.clipboard import describe_copy


@pytest.mark.parametrize(("count", "expected"), [(0, "0 tokens"), (1, "1 token"), (2, "2 tokens"),
                                                 (2048, "2,048 tokens"), (-1, "-1 tokens")])
def test_counted(count, expected):
    assert counted(count, "token") == expected


@pytest.mark.parametrize(("size", "expected"), [(0, "0 bytes"), (1, "1 byte"), (999, "999 bytes"), (1000, "1.0 kB"),
                                                (1451, "1.5 kB"), (16_709_436, "16.7 MB"),
                                                (3_900_000_000, "3.9 GB"), (13_700_000_000, "13.7 GB")])
def test_human_size(size, expected):
    assert human_size(size) == expected


def test_a_copy_of_one_character_is_one_character():
    assert describe_copy("the last reply", "x", None, None).startswith("Copied the last reply (1 character) ")


def test_a_message_one_token_too_long_says_1_token():
    # The fake engine counts half a token per character plus 2: "a" is 1 token, 3 with [gMASK] <sop>; with a
    # 10-token reply reserved, a 12-token window is one short.
    engine = FakeEngine(window=12)
    app = make_server_app(engine, ServerOptions("fake", GenerationParams()))
    try:
        with TestClient(app) as client:
            response = client.post("/v1/chat/completions", json={
                "model": "fake", "max_tokens": 10, "messages": [{"role": "user", "content": "a"}]})
    finally:
        engine.close()
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message.startswith("the last message is 1 token (with the instruction); with room for a 10-token reply "
                              "it is 1 token over the 12-token window: shorten it by 1 token, or lower max_tokens")
