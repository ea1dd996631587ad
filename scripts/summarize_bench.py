"""How long summarizing a long piped document takes end to end, on full-size random ChatGLM-6B INT4 weights.

    .venv/bin/python scripts/summarize_bench.py                  # a 6,000-token document, 64-token replies
    CHATGLM_CPU_LEVEL=avx2 .venv/bin/python scripts/summarize_bench.py   # the same at a lower CPU level

It runs what `cat document.txt | chatglm ask` runs: the engine's worker thread, the summarizer's planning (parts
that fit the window, then combining the notes) and every model call, with the real tokenizer, on a document of
real sentences. Random weights write noise, so replies are greedy and limited to --reply-tokens (they rarely
stop on their own); the parts, the prompt lengths and the prefill work are what a real document costs. No
download: the tokenizer comes from ../shared/chatglm-6b (or --tokenizer).
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import torch

from chatglm_tui.engine.protocol import (
    ChunkProgress,
    GenerationFailed,
    GenerationFinished,
    GenerationParams,
    SummarizeRequest,
)
from chatglm_tui.engine.worker import InferenceWorker
from chatglm_tui.model.backends import resolve_device, select_backend
from chatglm_tui.model.bench import build_random_model
from chatglm_tui.model.chat import ChatGLM
from chatglm_tui.model.config import PRESETS
from chatglm_tui.model.tokenizer import ChatGLMTokenizer

SENTENCES = [
    "The committee reviewed the annual budget, the hiring plan and the schedule for the new product line.",
    "委员会审查了年度预算、招聘计划以及新产品线的时间表，并要求各部门在下个季度前提交详细的执行报告。",
    "Revenue in the third quarter rose by {n} percent, driven by exports to {n} new markets in Asia.",
    "第{n}季度的研发投入增加了{n}%，主要用于电池材料和自动驾驶软件的测试。",
    "Several members asked how the risks of delay would be measured and who would report them each month.",
]


def document(tokenizer: ChatGLMTokenizer, tokens: int) -> str:
    """Paragraphs of varied sentences until the text is `tokens` tokens long."""
    paragraphs, paragraph, count = [], [], 0
    while count < tokens:
        sentence = SENTENCES[count % len(SENTENCES)].format(n=count % 97 + 3)
        paragraph.append(sentence)
        count = len(tokenizer.encode("\n\n".join(paragraphs + [" ".join(paragraph)]), parse_special=False))
        if len(paragraph) == 6:
            paragraphs.append(" ".join(paragraph))
            paragraph = []
    return "\n\n".join(paragraphs + [" ".join(paragraph)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=6000, help="document length in tokens")
    parser.add_argument("--reply-tokens", type=int, default=64, help="reply limit of every model call")
    parser.add_argument("--tokenizer", default=str(Path(__file__).resolve().parents[2] / "shared" / "chatglm-6b"))
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = ChatGLMTokenizer.from_dir(Path(args.tokenizer))
    text = document(tokenizer, args.tokens)
    device = resolve_device("auto")
    backend = select_backend(device, "auto", PRESETS["6b"], 4)
    print(f"backend: {backend.describe()}; document: {len(tokenizer.encode(text))} tokens", flush=True)
    glm = ChatGLM(build_random_model(PRESETS["6b"], backend), tokenizer, backend)
    worker = InferenceWorker(lambda report: glm)
    worker.load()
    done, parts = threading.Event(), []
    result: dict[str, object] = {}

    def on_event(event: object) -> None:
        if isinstance(event, ChunkProgress):
            parts.append((event.done, event.total, time.perf_counter() - start))
            print(f"  call {event.done}/{event.total} at {parts[-1][2]:.1f} s", flush=True)
        elif isinstance(event, (GenerationFinished, GenerationFailed)):
            result["event"] = event
            done.set()

    start = time.perf_counter()
    worker.submit(SummarizeRequest(text, params=GenerationParams(do_sample=False, max_new_tokens=args.reply_tokens)),
                  on_event)
    done.wait()
    total = time.perf_counter() - start
    worker.close()
    event = result["event"]
    if isinstance(event, GenerationFailed):
        raise SystemExit(f"summarize failed: {event.message}")
    print(f"summarized {len(tokenizer.encode(text))} tokens in {total:.1f} s ({parts[-1][1] if parts else 1} "
          f"model calls; backend {backend.describe()})")


if __name__ == "__main__":
    main()
