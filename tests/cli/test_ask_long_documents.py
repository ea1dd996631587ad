"""Long documents as a workflow in `chatglm ask`: follow-ups see the summary, the rounds left out are reported,
and a reply cut off at its limit says how to continue. Real processes on the shared tiny checkpoint."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

from chatglm_tui.cli.ask import AskOptions, _notice_end
from chatglm_tui.cli.output import StatusLine
from chatglm_tui.config.settings import Settings
from chatglm_tui.engine.protocol import GenerationFinished, GenerationStats
from chatglm_tui.engine.summarize import history_stand_in
from chatglm_tui.model.prompt import encode_prompt
from chatglm_tui.store import SessionStore

PARAGRAPH = ("The committee reviewed the annual budget, the hiring plan and the risks of the new product line. "
             "Several members asked for more detail on the supply chain and on the timeline. ")


def _ask(fixture_dir, home, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHATGLM_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "chatglm_tui", "ask", *args, "--model", str(fixture_dir / "fp16"),
               "--quantization", "none", "--dtype", "float32", "--greedy"]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, env=env, timeout=240)


def test_a_follow_up_to_a_summarized_document_sees_its_summary(fixture_dir, tokenizer, tmp_path):
    document = "\n\n".join(f"{i}. {PARAGRAPH * 3}" for i in range(40))  # far beyond the 2048-token window
    assert tokenizer.count(document) > 4000
    summary = _ask(fixture_dir, tmp_path, "--max-new-tokens", "16", stdin=document)
    assert summary.returncode == 0, summary.stderr
    follow = _ask(fixture_dir, tmp_path, "which risks?", "-c", "--max-new-tokens", "8", "--json")
    report = json.loads(follow.stdout)
    assert report["dropped_rounds"] == []  # before: the document's round was dropped and nothing was left
    with SessionStore(tmp_path / "data" / "sessions.sqlite3") as store:
        messages = store.messages(store.latest().id)
    assert messages[0].text == document  # the store keeps the whole document
    history = [(history_stand_in(document, None), messages[1].text)]
    assert report["prompt_tokens"] == len(encode_prompt(tokenizer, history, "which risks?"))
    assert messages[1].text.strip() == summary.stdout.strip()


def test_json_reports_the_rounds_left_out(fixture_dir, tmp_path):
    long_question = "word " * 900
    assert _ask(fixture_dir, tmp_path, long_question, "--max-new-tokens", "4").returncode == 0
    assert _ask(fixture_dir, tmp_path, long_question, "-c", "--max-new-tokens", "4").returncode == 0
    report = json.loads(_ask(fixture_dir, tmp_path, long_question, "-c", "--max-new-tokens", "4", "--json").stdout)
    assert report["dropped_rounds"] == [0]  # the oldest round made room; the newer one is kept


def test_a_reply_cut_off_at_its_limit_says_how_to_continue(tmp_path):
    master, slave = os.openpty()  # the notice is for people: only on a terminal
    with os.fdopen(slave, "w") as terminal:
        status = StatusLine(terminal)
        finished = GenerationFinished("r", "length", "text", GenerationStats(3, 1, 0.1, 0.0, 0.2))
        _notice_end(finished, 0, AskOptions("q", Settings()), status)
        _notice_end(GenerationFinished("r", "eos", "text", GenerationStats(3, 5, 0.1, 9.0, 0.2)), 0,
                    AskOptions("q", Settings()), status)
    shown = os.read(master, 4096).decode()
    os.close(master)
    assert "cut off at the limit of 1 token" in shown and 'chatglm ask -c "continue"' in shown
    assert shown.count("cut off") == 1  # a reply that ended by itself says nothing
    quiet = StatusLine(io.StringIO())  # not a terminal: nothing at all
    _notice_end(finished, 0, AskOptions("q", Settings()), quiet)
    assert not quiet.shown
