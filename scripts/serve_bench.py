"""`chatglm serve` measured on the shared tiny checkpoint: requests/s and time to first token for N concurrent
clients, and what the HTTP path adds per token against the in-process engine.

    .venv/bin/python scripts/serve_bench.py [--clients 1 4 8] [--requests 8] [--tokens 64] [--long 1000]

The server is a real `chatglm serve` process on 127.0.0.1 (client and server share this machine's cores, as
they would on a laptop); the in-process baseline is InferenceWorker on the same checkpoint in this process.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = Path(os.environ.get("CHATGLM_SHARED", ROOT.parent / "shared")) / "fixtures" / "tiny-chatglm" / "fp16"
sys.path.insert(0, str(ROOT))

from chatglm_tui.engine.protocol import ChatRequest, GenerationFinished, GenerationParams, TextDelta  # noqa: E402
from chatglm_tui.engine.worker import InferenceWorker, resolving_loader  # noqa: E402


def start_server(home: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "CHATGLM_HOME": home, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "chatglm_tui", "serve", "--model", str(CHECKPOINT),
                                "--quantization", "none", "--dtype", "float32", "--port", "0", "--max-pending",
                                "64", "--name", "tiny"], stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()  # type: ignore
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if " at http://" in line:
            return process, line.split(" at ")[1].split()[0]
    process.kill()
    raise SystemExit("chatglm serve did not start")


def stream_once(client: httpx.Client, base: str, query: str, tokens: int) -> tuple[float, float, int]:
    """(time to first text, seconds from first text to the end, completion tokens) of one streamed request."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": query}], "temperature": 0,
            "max_tokens": tokens, "stream": True, "stream_options": {"include_usage": True}}
    start, first, count = time.perf_counter(), None, 0
    with client.stream("POST", f"{base}/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                first = first or time.perf_counter()
            if '"completion_tokens"' in line:
                count = int(line.split('"completion_tokens": ')[1].split(",")[0])
    end = time.perf_counter()
    return (first or end) - start, end - (first or end), count


def in_process(tokens: int, runs: int) -> list[float]:
    """Seconds per token after the first, in-process, for the same greedy request."""
    engine = InferenceWorker(resolving_loader(str(CHECKPOINT), None, "cpu", "float32"))
    engine.load()
    per_token = []
    for _ in range(runs):
        done, marks = threading.Event(), []

        def on_event(event: object) -> None:
            if isinstance(event, TextDelta) and not marks:
                marks.append(time.perf_counter())
            if isinstance(event, GenerationFinished):
                marks.append((time.perf_counter(), event.stats.new_tokens))
                done.set()

        engine.submit(ChatRequest("写一篇很长的文章", params=GenerationParams(do_sample=False, max_new_tokens=tokens)),
                      on_event)
        done.wait(300)
        (end, count) = marks[1]
        per_token.append((end - marks[0]) / (count - 1))
    engine.close()
    return per_token


def concurrent(base: str, clients: int, requests: int, tokens: int) -> tuple[float, list[float]]:
    """Requests/s over all clients, and every request's time to first token."""
    ttfts: list[float] = []

    def work(index: int) -> None:
        with httpx.Client(timeout=300) as client:
            for number in range(requests):
                ttft, _, _ = stream_once(client, base, f"第{index}个客户的第{number}个问题", tokens)
                ttfts.append(ttft)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return clients * requests / (time.perf_counter() - start), ttfts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=8, help="requests per client")
    parser.add_argument("--tokens", type=int, default=64, help="reply tokens per request (concurrency runs)")
    parser.add_argument("--long", type=int, default=1000, help="reply tokens for the per-token overhead runs")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        process, base = start_server(home)
        try:
            with httpx.Client(timeout=300) as client:
                stream_once(client, base, "warm up", 8)
                http = []
                for _ in range(args.runs):  # alternated with nothing else running: server and client only
                    _, seconds, count = stream_once(client, base, "写一篇很长的文章", args.long)
                    http.append(seconds / (count - 1))
            for clients in args.clients:
                rate, ttfts = concurrent(base, clients, args.requests, args.tokens)
                print(f"{clients:2d} clients x {args.requests} requests x {args.tokens} tokens: "
                      f"{rate:6.2f} requests/s, time to first token median {statistics.median(ttfts) * 1000:7.1f} ms, "
                      f"max {max(ttfts) * 1000:7.1f} ms")
        finally:
            process.terminate()
            process.wait(20)
    local = in_process(args.long, args.runs)
    print(f"per token, {args.long}-token greedy reply (median of {args.runs}): in-process "
          f"{statistics.median(local) * 1000:.3f} ms, over HTTP {statistics.median(http) * 1000:.3f} ms, "
          f"overhead {(statistics.median(http) - statistics.median(local)) * 1000:+.3f} ms/token")


if __name__ == "__main__":
    main()
