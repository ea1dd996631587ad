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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from chatglm_tui.errors import ChatGLMError
from chatglm_tui.model.backends import Backend, resolve_device, select_backend
from chatglm_tui.model.chat import load_model
from chatglm_tui.model.config import PRESETS, ChatGLMConfig
from chatglm_tui.model.memory import return_large_frees_to_the_os
from chatglm_tui.model.modeling import ChatGLMForCausalLM
from chatglm_tui.model.sampling import GenerationParams, TokenSampler


@dataclass(frozen=True)
class BenchResult:
    """One benchmark run; every time in seconds, every size in bytes."""

    config: str
    source: str  # "random weights" or the checkpoint directory that was loaded
    quantization: str  # the weight format ("int4-g128", "int4-row exact float16", "float16 resident", ...)
    backend: str  # which backend ran, and how ("cpu: int4-g128 (C kernels, AVX2)", "cuda: fp16-resident, CUDA graph")
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
    # decode as a chat samples it: the same steps plus the sampler at the original `chat()`'s defaults
    # (temperature 0.95, top-p 0.7, top-k 50) on each step's logits
    sampled_decode_tokens_per_s: float
    sampling_median_ms: float
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


def iter_random_state(model: ChatGLMForCausalLM, device: torch.device, seed: int = 0) -> Iterator[tuple[str, Tensor]]:
    """Random weights in the layout `model` was built in (any backend's), made on `device`: no checkpoint and no
    float copy of the model. Scales are small and equal, so activations stay finite."""
    on_cpu = device.type == "cpu"
    generator = torch.Generator(device=device).manual_seed(seed)
    # Random bytes are slow to draw on the CPU (~0.2 GB/s); windows into one random pool make 3.5 GB in seconds.
    pool = torch.randint(0, 256, (1 << 24,), dtype=torch.uint8, generator=generator, device=device)
    for name, tensor in model.state_dict().items():
        dtype, shape = tensor.dtype, tuple(tensor.shape)
        if not dtype.is_floating_point:
            data = torch.empty(torch.Size(shape).numel() * tensor.element_size(), dtype=torch.uint8, device=device)
            for begin in range(0, data.numel(), pool.numel() // 2):
                offset = int(torch.randint(0, pool.numel() // 2, (), generator=generator, device=device))
                chunk = data[begin: begin + pool.numel() // 2]
                chunk.copy_(pool[offset: offset + chunk.numel()])
            yield name, data.view(dtype).reshape(shape)
        elif name.endswith("layernorm.weight"):
            yield name, torch.ones(shape, dtype=dtype, device=device)
        elif name.endswith("scales_zeros"):  # tinygemm's (scale, zero) pairs
            yield name, torch.stack((torch.full(shape[:-1], 0.02 / 7, device=device),
                                     torch.zeros(shape[:-1], device=device)), dim=-1).to(dtype)
        elif "scale" in name:
            yield name, torch.full(shape, 0.02 / 7, dtype=dtype, device=device)
        elif on_cpu:
            yield name, (torch.randn(shape, generator=generator) * 0.02).to(dtype)
        else:
            yield name, torch.randn(shape, generator=generator, device=device, dtype=dtype).mul_(0.02)


def build_random_model(config: ChatGLMConfig, backend: Backend, seed: int = 0) -> ChatGLMForCausalLM:
    """A model with random weights in `backend`'s own layout, made tensor by tensor in place."""
    model = backend.build(config)
    model.load_state_dict(dict(iter_random_state(model, backend.device, seed)), strict=True, assign=True)
    return backend.finish(model)


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
    samples: list[float]
    kv_bytes_per_token: int


def time_generation(model: ChatGLMForCausalLM, backend: Backend, prompt_tokens: int, new_tokens: int) -> _Timings:
    """Prefill a random prompt, then decode greedily (never stopping early); time each part."""
    config, device = model.config, model.device
    prompt = _random_prompt(prompt_tokens, config, torch.Generator().manual_seed(0))
    session = backend.session(model, prompt_tokens + new_tokens)
    sampler = TokenSampler(GenerationParams(seed=0), config.vocab_size)
    ids = torch.zeros(1, prompt_tokens + new_tokens, dtype=torch.long)
    ids[0, :prompt_tokens] = torch.tensor(prompt)
    steps: list[float] = []
    samples: list[float] = []
    with torch.inference_mode():
        if device.type == "cuda":  # a process's first CUDA pass loads its kernels (~0.25 s): not the model's speed
            session.prefill(prompt)
            _sync(device)
        start = time.perf_counter()
        logits = session.prefill(prompt)
        _sync(device)
        prefill_s = time.perf_counter() - start
        token = int(logits[0, : config.eos_token_id].argmax())  # never <eop>: decode runs its full length
        ttft_s = time.perf_counter() - start
        for index in range(len(prompt), len(prompt) + new_tokens - 1):
            t0 = time.perf_counter()
            logits = session.step(token, index)
            token = int(logits[0, : config.eos_token_id].argmax())  # reading it waits for the GPU
            steps.append(time.perf_counter() - t0)
            ids[0, index] = token
            t1 = time.perf_counter()
            sampler(ids[:, : index + 1], logits.float().cpu())  # what a chat adds per token (the draw is unused)
            samples.append(time.perf_counter() - t1)
    kv_bytes = 2 * config.num_layers * config.hidden_size * session.cache.keys.element_size()
    return _Timings(prefill_s, ttft_s, steps, samples, kv_bytes)


def _bits(quantization: str) -> int:
    if quantization not in ("int4", "int8"):
        raise ChatGLMError(f"bench supports --quantization int4 or int8, not {quantization!r}")
    return 4 if quantization == "int4" else 8


def _build(config: ChatGLMConfig, quantization: str, group_size: int | None, device: torch.device,
           dtype: str, model_path: str | None, backend: str | None,
           cache_dir: Path | None) -> tuple[ChatGLMForCausalLM, Backend]:
    if model_path:
        glm = load_model(model_path, quantization=quantization, device=device, dtype=dtype, backend=backend,
                         cache_dir=cache_dir)
        return glm.model, glm.backend
    bits = _bits(quantization)
    chosen = select_backend(device, dtype, config, bits, backend=backend)
    if group_size is not None and hasattr(chosen, "scheme"):
        chosen.scheme = dataclasses.replace(chosen.scheme, group_size=group_size)
    return build_random_model(config, chosen), chosen


def run_bench(config_name: str = "6b", quantization: str = "int4", prompt_tokens: int = 512,
              new_tokens: int = 128, threads: int | None = None, group_size: int | None = None,
              model_path: str | None = None, device: str = "auto", dtype: str = "auto",
              backend: str | None = None, cache_dir: Path | None = None) -> BenchResult:
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
    if resolved.type == "cuda":
        torch.cuda.reset_peak_memory_stats(resolved)
    start = time.perf_counter()
    model, chosen = _build(config, quantization, group_size, resolved, dtype, model_path, backend, cache_dir)
    _sync(resolved)
    load_s = time.perf_counter() - start
    timings = time_generation(model, chosen, prompt_tokens, new_tokens)
    steps, weights = timings.steps, _weight_bytes(model)
    # Per decoded token every weight is read once (the embedding is the tied LM head) plus the KV cache at the
    # mean context length of the decode phase.
    per_token = weights + timings.kv_bytes_per_token * (prompt_tokens + new_tokens // 2)
    return BenchResult(
        config=config_name if not model_path else "checkpoint", source=model_path or "random weights",
        quantization=chosen.weights_label, backend=chosen.describe(), device=str(resolved), threads=threads,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens, load_s=load_s, prefill_s=timings.prefill_s,
        prefill_tokens_per_s=prompt_tokens / timings.prefill_s, time_to_first_token_s=timings.ttft_s,
        decode_s=sum(steps), decode_tokens_per_s=len(steps) / sum(steps) if steps else 0.0,
        decode_median_ms=statistics.median(steps) * 1000 if steps else 0.0,
        sampled_decode_tokens_per_s=len(steps) / (sum(steps) + sum(timings.samples)) if steps else 0.0,
        sampling_median_ms=statistics.median(timings.samples) * 1000 if steps else 0.0,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        gpu_peak_bytes=torch.cuda.max_memory_allocated(resolved) if resolved.type == "cuda" else 0,
        weight_bytes=weights, bytes_per_token=per_token, bandwidth_bytes_per_s=bandwidth,
        decode_bound_tokens_per_s=bandwidth / per_token,
    )
