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
from chatglm_tui.model.fast_loading import DEFAULT_INT4_GROUP, QuantScheme, build_fast_model, iter_random_state
from chatglm_tui.model.generate import position_ids
from chatglm_tui.model.chat import load_model, resolve_device, resolve_dtype
from chatglm_tui.model.kv_cache import KVCache
from chatglm_tui.model.loading import build_empty_model
from chatglm_tui.model.memory import return_large_frees_to_the_os
from chatglm_tui.model.modeling import ChatGLMForCausalLM, RotaryEmbedding2D


@dataclass(frozen=True)
class BenchResult:
    """One benchmark run; every time in seconds, every size in bytes."""

    config: str
    source: str  # "random weights" or the checkpoint directory that was loaded
    quantization: str
    device: str
    threads: int
    prompt_tokens: int
    new_tokens: int
    load_s: float  # building the random model, or loading the checkpoint (through the quantized cache)
    prefill_s: float
    prefill_tokens_per_s: float
    time_to_first_token_s: float
    decode_s: float
    decode_tokens_per_s: float
    decode_median_ms: float
    peak_rss_bytes: int
    gpu_peak_bytes: int  # CUDA memory at its peak (0 on the CPU)
    weight_bytes: int
    bytes_per_token: int
    bandwidth_bytes_per_s: float
    decode_bound_tokens_per_s: float

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


_BANDWIDTH_PROBE = """
import time, torch
from chatglm_tui.model.kernels import cpu
torch.set_num_threads({threads})
buf = torch.ones(1 << 30, dtype=torch.uint8)  # 1 GiB: far bigger than any cache, every pass streams from memory
if cpu.is_available():
    read = lambda: cpu._ext.stream_read(buf.data_ptr(), buf.numel(), {threads})
else:  # no C kernels: an fp32 GEMV, which torch runs at memory speed
    m, v = buf.view(torch.float32).view(-1, 16384), torch.ones(16384)
    read = lambda: torch.mv(m, v)
times = []
for _ in range(7):
    start = time.perf_counter()
    read()
    times.append(time.perf_counter() - start)
print(buf.numel() / min(times))
"""


def measure_bandwidth(threads: int, device: torch.device = torch.device("cpu")) -> float:
    """Memory-read bandwidth (bytes/s) of `device`: 1 GiB read, best of 7.

    On the CPU: AVX2 loads in a child process (which keeps the buffer out of this process's peak RSS).
    """
    if device.type == "cuda":
        return _cuda_bandwidth(device)
    code = _BANDWIDTH_PROBE.format(threads=threads)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def _cuda_bandwidth(device: torch.device) -> float:
    buf = torch.ones(1 << 29, dtype=torch.float16, device=device)  # 1 GiB
    times = []
    for _ in range(7):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        buf.sum()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    del buf
    torch.cuda.empty_cache()
    return (1 << 30) / min(times)


def _scheme(quantization: str, group_size: int | None) -> QuantScheme:
    if quantization == "int4":
        return QuantScheme(4, group_size or DEFAULT_INT4_GROUP)
    if quantization == "int8":
        return QuantScheme(8, None)
    raise ChatGLMError(f"bench supports --quantization int4 or int8, not {quantization!r}")


def build_random_model(config: ChatGLMConfig, scheme: QuantScheme, seed: int = 0) -> ChatGLMForCausalLM:
    """A model in the fast layout with random weights, made tensor by tensor in place."""
    model = build_fast_model(config, scheme)
    model.load_state_dict(dict(iter_random_state(model, seed)), strict=True, assign=True)
    model.transformer.rotary = RotaryEmbedding2D(config.head_dim)
    return model.eval().requires_grad_(False)


def build_random_exact_model(config: ChatGLMConfig, bits: int, dtype: torch.dtype,
                             device: torch.device) -> ChatGLMForCausalLM:
    """A model in the official per-row layout with random weights (the exact path, and the GPU path)."""
    model = build_empty_model(dataclasses.replace(config, quantization_bit=bits))
    state = {}
    for name, tensor in iter_random_state(model):
        keep = tensor.dtype == torch.int8 or name.endswith("weight_scale")
        state[name] = tensor.to(device) if keep else tensor.to(device=device, dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.transformer.rotary = RotaryEmbedding2D(config.head_dim).to(device)
    return model.eval().requires_grad_(False)


def _weight_bytes(model: ChatGLMForCausalLM) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _random_prompt(length: int, config: ChatGLMConfig, generator: torch.Generator) -> list[int]:
    body = torch.randint(20, 120000, (length - 2,), generator=generator).tolist()
    return body + [config.gmask_token_id, config.bos_token_id]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class _Timings:
    prefill_s: float
    ttft_s: float
    steps: list[float]
    kv_bytes_per_token: int


def time_generation(model: ChatGLMForCausalLM, prompt_tokens: int, new_tokens: int) -> _Timings:
    """Prefill a random prompt, then decode greedily (never stopping early); time each part."""
    config, device = model.config, model.device
    prompt = _random_prompt(prompt_tokens, config, torch.Generator().manual_seed(0))
    ctx, mask_pos = len(prompt) - 1, len(prompt) - 2
    cache = KVCache(config.num_layers, 1, config.num_attention_heads, prompt_tokens + new_tokens,
                    config.head_dim, model.kv_cache_dtype or model.dtype, device)
    steps: list[float] = []
    with torch.inference_mode():
        start = time.perf_counter()
        pos = position_ids(0, len(prompt), ctx, mask_pos, device)
        logits = model(torch.tensor([prompt], device=device), pos, ctx, cache, 0, last_only=True)
        _sync(device)
        prefill_s = time.perf_counter() - start
        token = int(logits[0, -1, : config.eos_token_id].argmax())  # never <eop>: decode runs its full length
        ttft_s = time.perf_counter() - start
        for index in range(len(prompt), len(prompt) + new_tokens - 1):
            t0 = time.perf_counter()
            pos = position_ids(index, index + 1, ctx, mask_pos, device)
            logits = model(torch.tensor([[token]], device=device), pos, ctx, cache, index, last_only=True)
            token = int(logits[0, -1, : config.eos_token_id].argmax())  # reading it waits for the GPU
            steps.append(time.perf_counter() - t0)
    kv_bytes = 2 * config.num_layers * config.hidden_size * cache.keys.element_size()
    return _Timings(prefill_s, ttft_s, steps, kv_bytes)


def _build(config: ChatGLMConfig, quantization: str, group_size: int | None, device: torch.device,
           dtype: str, model_path: str | None) -> ChatGLMForCausalLM:
    if model_path:
        return load_model(model_path, quantization=quantization, device=device, dtype=dtype).model
    scheme = _scheme(quantization, group_size)
    if device.type == "cpu" and dtype == "auto":
        return build_random_model(config, scheme)
    return build_random_exact_model(config, scheme.bits, resolve_dtype(dtype, device), device)


def run_bench(config_name: str = "6b", quantization: str = "int4", prompt_tokens: int = 512,
              new_tokens: int = 128, threads: int | None = None, group_size: int | None = None,
              model_path: str | None = None, device: str = "cpu", dtype: str = "auto") -> BenchResult:
    """Build (or load `model_path`), prefill, decode; return the measurements."""
    if config_name not in PRESETS:
        raise ChatGLMError(f"unknown config {config_name!r}: use one of {', '.join(PRESETS)}")
    config = PRESETS[config_name]
    if prompt_tokens < 3 or prompt_tokens + new_tokens > config.max_sequence_length:
        raise ChatGLMError(f"prompt ({prompt_tokens}) + new tokens ({new_tokens}) must fit the "
                           f"{config.max_sequence_length}-token window, with a prompt of at least 3 tokens")
    return_large_frees_to_the_os()
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    resolved = resolve_device(device)
    bandwidth = measure_bandwidth(threads, resolved)
    start = time.perf_counter()
    model = _build(config, quantization, group_size, resolved, dtype, model_path)
    _sync(resolved)
    load_s = time.perf_counter() - start
    timings = time_generation(model, prompt_tokens, new_tokens)
    steps, weights = timings.steps, _weight_bytes(model)
    # Per decoded token every weight is read once (the embedding is the tied LM head) plus the KV cache at the
    # mean context length of the decode phase.
    per_token = weights + timings.kv_bytes_per_token * (prompt_tokens + new_tokens // 2)
    return BenchResult(
        config=config_name if not model_path else "checkpoint", source=model_path or "random weights",
        quantization=_describe(model), device=str(resolved), threads=threads, prompt_tokens=prompt_tokens,
        new_tokens=new_tokens, load_s=load_s, prefill_s=timings.prefill_s,
        prefill_tokens_per_s=prompt_tokens / timings.prefill_s, time_to_first_token_s=timings.ttft_s,
        decode_s=sum(steps), decode_tokens_per_s=len(steps) / sum(steps) if steps else 0.0,
        decode_median_ms=statistics.median(steps) * 1000 if steps else 0.0,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        gpu_peak_bytes=torch.cuda.max_memory_allocated(resolved) if resolved.type == "cuda" else 0,
        weight_bytes=weights, bytes_per_token=per_token, bandwidth_bytes_per_s=bandwidth,
        decode_bound_tokens_per_s=bandwidth / per_token,
    )


def _describe(model: ChatGLMForCausalLM) -> str:
    from chatglm_tui.model.quantize import QuantizedLinear
    from chatglm_tui.model.quantized_layers import Int4Linear, Int8Linear

    layer = model.transformer.layers[0].mlp.dense_4h_to_h  # the widest input: groups never capped
    if isinstance(layer, Int4Linear):
        return "int4-" + ("row" if layer.group_size == layer.in_features else f"g{layer.group_size}")
    if isinstance(layer, Int8Linear):
        return "int8-row"
    dtype = str(model.dtype).removeprefix("torch.")
    return f"int{layer.bits}-row exact {dtype}" if isinstance(layer, QuantizedLinear) else dtype


def format_table(result: BenchResult) -> str:
    """The human-readable report (stable layout)."""
    gb = 1e9
    lines = [
        f"chatglm bench: config {result.config}, {result.quantization}, {result.device}, {result.threads} threads",
        f"  load ({result.source})".ljust(27) + f"{result.load_s:8.2f} s     weights {result.weight_bytes / gb:.2f} GB",
        f"  prefill {result.prompt_tokens:5d} tokens     {result.prefill_s:8.2f} s     "
        f"{result.prefill_tokens_per_s:7.2f} tokens/s",
        f"  time to first token      {result.time_to_first_token_s:8.2f} s",
        f"  decode  {result.new_tokens:5d} tokens     {result.decode_s:8.2f} s     "
        f"{result.decode_tokens_per_s:7.2f} tokens/s   (median {result.decode_median_ms:.0f} ms/token)",
        f"  peak RSS                 {result.peak_rss_bytes / gb:8.2f} GB    ({result.peak_rss_bytes / 2**30:.2f} GiB)"
        + (f"   GPU peak {result.gpu_peak_bytes / gb:.2f} GB" if result.gpu_peak_bytes else ""),
        f"  memory read bandwidth    {result.bandwidth_bytes_per_s / gb:8.2f} GB/s  -> decode bound "
        f"{result.decode_bound_tokens_per_s:.2f} tokens/s ({result.bytes_per_token / gb:.2f} GB/token); "
        f"decode reaches {100 * result.decode_tokens_per_s / result.decode_bound_tokens_per_s:.0f}% of it",
    ]
    return "\n".join(lines)
