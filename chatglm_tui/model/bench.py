"""`chatglm bench`: the project's performance yardstick on random weights (no download, no float copy).

Builds the chosen config directly in the chosen quantization, then times a prefill of a random prompt and
greedy decoding, and reports peak RSS, the machine's memory-read bandwidth and the decode speed that bandwidth
allows (bytes read per token / bandwidth). Keep the output keys stable: results are compared across versions.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from chatglm_tui.errors import ChatGLMError
from chatglm_tui.model.config import PRESETS, ChatGLMConfig
from chatglm_tui.model.fast_loading import QuantScheme, build_fast_model, iter_random_state
from chatglm_tui.model.generate import position_ids
from chatglm_tui.model.kv_cache import KVCache
from chatglm_tui.model.modeling import ChatGLMForCausalLM, RotaryEmbedding2D


@dataclass(frozen=True)
class BenchResult:
    """One benchmark run; every time in seconds, every size in bytes."""

    config: str
    quantization: str
    threads: int
    prompt_tokens: int
    new_tokens: int
    build_s: float
    prefill_s: float
    prefill_tokens_per_s: float
    time_to_first_token_s: float
    decode_s: float
    decode_tokens_per_s: float
    decode_median_ms: float
    peak_rss_bytes: int
    weight_bytes: int
    bytes_per_token: int
    bandwidth_bytes_per_s: float
    decode_bound_tokens_per_s: float

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


_BANDWIDTH_PROBE = """
import time, torch
torch.set_num_threads({threads})
m = torch.ones(8192, 16384)  # 512 MiB: far bigger than any cache, so every pass streams from memory
v = torch.ones(16384)
best = min((lambda t0: (torch.mv(m, v), time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(7))
print(m.numel() * 4 / best)
"""


def measure_bandwidth(threads: int) -> float:
    """Memory-read bandwidth (bytes/s) of an fp32 GEMV over 512 MiB, best of 7, in a child process.

    A child keeps the probe's buffer out of this process's peak RSS.
    """
    code = _BANDWIDTH_PROBE.format(threads=threads)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def _scheme(quantization: str, group_size: int | None) -> QuantScheme:
    if quantization == "int4":
        return QuantScheme(4, group_size or 128)
    if quantization == "int8":
        return QuantScheme(8, None)
    raise ChatGLMError(f"bench supports --quantization int4 or int8, not {quantization!r}")


def build_random_model(config: ChatGLMConfig, scheme: QuantScheme, seed: int = 0) -> ChatGLMForCausalLM:
    """A model in the fast layout with random weights, made tensor by tensor in place."""
    model = build_fast_model(config, scheme)
    model.load_state_dict(dict(iter_random_state(model, seed)), strict=True, assign=True)
    model.transformer.rotary = RotaryEmbedding2D(config.head_dim)
    return model.eval().requires_grad_(False)


def _weight_bytes(model: ChatGLMForCausalLM) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _random_prompt(length: int, config: ChatGLMConfig, generator: torch.Generator) -> list[int]:
    body = torch.randint(20, 120000, (length - 2,), generator=generator).tolist()
    return body + [config.gmask_token_id, config.bos_token_id]


def run_bench(config_name: str = "6b", quantization: str = "int4", prompt_tokens: int = 512,
              new_tokens: int = 128, threads: int | None = None, group_size: int | None = None) -> BenchResult:
    """Build, prefill, decode; return the measurements."""
    if config_name not in PRESETS:
        raise ChatGLMError(f"unknown config {config_name!r}: use one of {', '.join(PRESETS)}")
    config = PRESETS[config_name]
    if prompt_tokens < 3 or prompt_tokens + new_tokens > config.max_sequence_length:
        raise ChatGLMError(f"prompt ({prompt_tokens}) + new tokens ({new_tokens}) must fit the "
                           f"{config.max_sequence_length}-token window, with a prompt of at least 3 tokens")
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    scheme = _scheme(quantization, group_size)
    bandwidth = measure_bandwidth(threads)

    start = time.perf_counter()
    model = build_random_model(config, scheme)
    build_s = time.perf_counter() - start

    generator = torch.Generator().manual_seed(0)
    prompt = _random_prompt(prompt_tokens, config, generator)
    ctx, mask_pos = len(prompt) - 1, len(prompt) - 2
    cache = KVCache(config.num_layers, 1, config.num_attention_heads, prompt_tokens + new_tokens,
                    config.head_dim, model.kv_cache_dtype or model.dtype, "cpu")
    steps: list[float] = []
    with torch.inference_mode():
        start = time.perf_counter()
        pos = position_ids(0, len(prompt), ctx, mask_pos, torch.device("cpu"))
        logits = model(torch.tensor([prompt]), pos, ctx, cache, 0, last_only=True)
        prefill_s = time.perf_counter() - start
        token = int(logits[0, -1, : config.eos_token_id].argmax())  # never <eop>: decode runs its full length
        ttft = time.perf_counter() - start
        for index in range(len(prompt), len(prompt) + new_tokens - 1):
            t0 = time.perf_counter()
            pos = position_ids(index, index + 1, ctx, mask_pos, torch.device("cpu"))
            logits = model(torch.tensor([[token]]), pos, ctx, cache, index, last_only=True)
            token = int(logits[0, -1, : config.eos_token_id].argmax())
            steps.append(time.perf_counter() - t0)
    decode_s = sum(steps)
    weights = _weight_bytes(model)
    kv_per_token = 2 * config.num_layers * config.hidden_size * cache.keys.element_size()
    # Per decoded token every weight is read once (the embedding is the tied LM head) plus the KV cache at the
    # mean context length of the decode phase.
    per_token = weights + kv_per_token * (prompt_tokens + new_tokens // 2)
    return BenchResult(
        config=config_name, quantization=scheme.tag, threads=threads, prompt_tokens=prompt_tokens,
        new_tokens=new_tokens, build_s=build_s, prefill_s=prefill_s,
        prefill_tokens_per_s=prompt_tokens / prefill_s, time_to_first_token_s=ttft, decode_s=decode_s,
        decode_tokens_per_s=len(steps) / decode_s if steps else 0.0,
        decode_median_ms=statistics.median(steps) * 1000 if steps else 0.0,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        weight_bytes=weights, bytes_per_token=per_token, bandwidth_bytes_per_s=bandwidth,
        decode_bound_tokens_per_s=bandwidth / per_token,
    )


def format_table(result: BenchResult) -> str:
    """The human-readable report (stable layout)."""
    gb = 1e9
    lines = [
        f"chatglm bench: config {result.config}, {result.quantization}, {result.threads} threads",
        f"  build (random weights)   {result.build_s:8.2f} s     weights {result.weight_bytes / gb:.2f} GB",
        f"  prefill {result.prompt_tokens:5d} tokens     {result.prefill_s:8.2f} s     "
        f"{result.prefill_tokens_per_s:7.2f} tokens/s",
        f"  time to first token      {result.time_to_first_token_s:8.2f} s",
        f"  decode  {result.new_tokens:5d} tokens     {result.decode_s:8.2f} s     "
        f"{result.decode_tokens_per_s:7.2f} tokens/s   (median {result.decode_median_ms:.0f} ms/token)",
        f"  peak RSS                 {result.peak_rss_bytes / gb:8.2f} GB    ({result.peak_rss_bytes / 2**30:.2f} GiB)",
        f"  memory read bandwidth    {result.bandwidth_bytes_per_s / gb:8.2f} GB/s  -> decode bound "
        f"{result.decode_bound_tokens_per_s:.2f} tokens/s ({result.bytes_per_token / gb:.2f} GB/token); "
        f"decode reaches {100 * result.decode_tokens_per_s / result.decode_bound_tokens_per_s:.0f}% of it",
    ]
    return "\n".join(lines)
