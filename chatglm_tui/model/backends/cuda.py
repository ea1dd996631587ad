"""The CUDA backend: weights resident in the format the GPU runs fastest, and a decode step run as a CUDA graph.

Two modes, chosen by `select_backend` from the free GPU memory:
- **fp16-resident** (`mode="fp16"`): every weight dequantized once at load into float16 `nn.Linear`s. This is
  exactly the original implementation's GPU arithmetic (it extracts int4/int8 to float16, then multiplies in
  float16), so greedy replies equal the exact backend's in float16. ChatGLM-6B takes 12.4 GB.
- **int4-resident** (`mode="int4"`): the block linears stay int4 in torch's tinygemm layout and run
  `aten._weight_int4pack_mm` (bfloat16 activations, sm80+), one fused kernel per linear; the official per-row
  int4 maps exactly (the row's scale repeated per group), an fp16 checkpoint is quantized in groups of 128. The
  embedding / LM head stays float16 (its exact values). Prompts of 64+ tokens unpack each weight for cuBLAS
  (tinygemm.py). ChatGLM-6B: 4.1 GB of weights, 5.6 GB at the peak of a full 2048-token conversation.

Decoding: one KV cache per model, sized for the whole context window and allocated once, so the decode step
has static shapes and addresses. It attends over a fixed window of the cache (a multiple of 256 positions,
masking the positions not written yet), takes its token, position and index from one small device buffer,
and is captured as a CUDA graph per window size when the model is loaded: one replay per token instead of ~800
kernel launches from Python. The same step runs eagerly when graphs are turned off (`graphs=False`) or capture fails,
with identical results. Prefill runs eagerly, with attention pinned to kernels that need no per-shape planning
(cuDNN plans anew for every sequence length, ~6 ms of CPU per call).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from chatglm_tui.model.backends.base import Backend, StoredWeight
from chatglm_tui.model.backends.tinygemm import TinyGemmInt4Linear, attach_dequantizers, pack_tinygemm
from chatglm_tui.model.config import ChatGLMConfig
from chatglm_tui.model.generate import DecodeSession
from chatglm_tui.model.kv_cache import KVCache
from chatglm_tui.model.modeling import ChatGLMForCausalLM, TiedEmbedding
from chatglm_tui.model.quantize import (
    DEFAULT_INT4_GROUP,
    QuantScheme,
    int4pack_group,
    replace_linears,
    required_int4pack_group,
)

log = logging.getLogger(__name__)
WINDOW_STEP = 256  # the decode graph's attention window grows in steps of this many positions
# Attention kernels that take any mask and plan nothing per shape (flash refuses ChatGLM's prefix mask).
_ATTENTION_KERNELS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class HalfTiedEmbedding(TiedEmbedding):
    """The float16 embedding / LM head (the checkpoint's exact values) for bfloat16 activations."""

    def forward(self, ids: Tensor) -> Tensor:
        return super().forward(ids).to(torch.bfloat16)

    def project(self, x: Tensor) -> Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight)


class StaticKVCache(KVCache):
    """The whole context window's keys and values, allocated once per model (zeros: never-written positions are
    finite, so masking them is exact). A tensor `start` is the graph-captured decode step."""

    def __init__(self, config: ChatGLMConfig, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(config.num_layers, 1, config.num_attention_heads, config.max_sequence_length,
                         config.head_dim, dtype, device)
        self.keys.zero_()
        self.values.zero_()
        self.window = WINDOW_STEP  # positions the decode step attends over (read when a graph is captured)
        self.positions = torch.arange(config.max_sequence_length, device=device)
        self.step_mask: Tensor | None = None

    def attention(self, layer: int, start: int | Tensor, q: Tensor, k: Tensor, v: Tensor,
                  mask: Tensor | None) -> Tensor:
        if isinstance(start, int):
            with sdpa_kernel(_ATTENTION_KERNELS):
                return super().attention(layer, start, q, k, v, mask)
        # The decode step: one token at absolute position `start` (after the prompt), which sees every key up
        # to itself; `step_mask` (made once per step by the runner) hides the window's later positions.
        self.keys[layer].index_copy_(2, start, k)
        self.values[layer].index_copy_(2, start, v)
        # Three kernels (SDPA's memory-efficient kernel takes ~34 us for one query, 3x this): scores in the
        # compute dtype with float32 accumulation, softmax with float32 accumulation, probabilities times values,
        # as the original's attention does it on a GPU.
        heads, dim = q.shape[1], q.shape[3]
        keys = self.keys[layer, 0, :, : self.window]  # (H, W, D)
        values = self.values[layer, 0, :, : self.window]
        scores = torch.baddbmm(self.step_mask, q.reshape(heads, 1, dim), keys.transpose(1, 2), alpha=dim ** -0.5)
        return torch.bmm(scores.softmax(dim=-1), values).view(1, heads, 1, dim)

    def begin_step(self, start: Tensor) -> None:
        """Mask the window's positions after `start` (a device tensor) for the coming decode step."""
        hidden = self.positions[: self.window] > start
        mask = torch.zeros(hidden.shape, dtype=self.keys.dtype, device=hidden.device).masked_fill_(hidden, -torch.inf)
        self.step_mask = mask.view(1, 1, self.window)


class CudaSession(DecodeSession):
    """Prefill eagerly; decode through the model's captured graphs (or the same step run eagerly)."""

    def __init__(self, model: ChatGLMForCausalLM, runner: GraphRunner) -> None:
        super().__init__(model, runner.cache)
        self.runner = runner

    def step(self, token: int, index: int) -> Tensor:
        position = self.mask_position, index - self.context_length + 1
        return self.runner.step(token, position, index)


class GraphRunner:
    """The static decode step of one model: its inputs, its cache, and one CUDA graph per attention window."""

    def __init__(self, model: ChatGLMForCausalLM, cache: StaticKVCache, graphs: bool) -> None:
        self.model, self.cache, self.graphs = model, cache, graphs
        device = cache.keys.device
        # token, position, block position, index: one host-to-device copy per step
        self.inputs = torch.zeros(4, dtype=torch.long, device=device)
        host = torch.zeros(4, dtype=torch.long)
        self.host = host.pin_memory() if device.type == "cuda" else host
        self.captured: dict[int, tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        self.pool: object = None
        # One side stream for every capture's warm-up: cuBLAS keeps a workspace (32 MiB on Hopper) per stream it
        # runs on, so a new stream per window holds 8 of them (the likely cause of the 0.3-0.4 GB more GPU peak
        # measured when each window warmed up on its own stream).
        self.stream: torch.cuda.Stream | None = None

    def _forward(self) -> Tensor:
        ids, pos, index = self.inputs[0:1].view(1, 1), self.inputs[1:3].view(1, 2, 1), self.inputs[3:4]
        self.cache.begin_step(index)
        return self.model(ids, pos, 0, self.cache, index, last_only=True)[:, -1]

    def step(self, token: int, position: tuple[int, int], index: int) -> Tensor:
        """Logits (1, V) of `token` at absolute `index`. They live in the graph's output buffer: read them (which
        waits for the GPU, as sampling does) before the next step reuses it and its input buffer."""
        self.host[0], self.host[1], self.host[2], self.host[3] = token, position[0], position[1], index
        self.inputs.copy_(self.host, non_blocking=True)
        window = min(self.cache.capacity, (index // WINDOW_STEP + 1) * WINDOW_STEP)
        self.cache.window = window
        if not self.graphs:
            return self._forward()
        graph = self.captured.get(window) or self._capture(window)
        if graph is None:
            return self._forward()
        graph[0].replay()
        return graph[1]

    def capture_all(self) -> None:
        """Capture the step for every window (token 0 at position 0: the cache slot it writes is rewritten by
        the next prefill)."""
        if not self.graphs:
            return
        with torch.inference_mode():
            self.inputs.zero_()
            for window in sorted({*range(WINDOW_STEP, self.cache.capacity, WINDOW_STEP), self.cache.capacity}):
                self.cache.window = window
                if window not in self.captured and self._capture(window) is None:
                    return

    def _capture(self, window: int) -> tuple[torch.cuda.CUDAGraph, Tensor] | None:
        """Capture the step for `window` (after warm-up runs, which compute this step's result anyway)."""
        try:
            if self.stream is None:
                self.stream = torch.cuda.Stream()
                self.pool = torch.cuda.graph_pool_handle()
            stream = self.stream
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._forward()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                logits = self._forward()
        except RuntimeError as exc:  # an op that cannot be captured on this torch/driver: stay eager, correct
            log.warning("CUDA graph capture failed (%s); decoding eagerly", exc)
            self.graphs = False
            return None
        self.captured[window] = (graph, logits)
        return graph, logits


def memory_needed(config: ChatGLMConfig, mode: str) -> int:
    """Bytes of GPU memory a mode needs for ChatGLM at a full context window: weights, KV cache, work space."""
    h, inner, layers = config.hidden_size, config.inner_hidden_size, config.num_layers
    block_weights = layers * (4 * h * h + 2 * h * inner)
    others = layers * (9 * h + inner) + 2 * h
    embedding = config.vocab_size * h * 2
    if mode == "fp16":
        weights = 2 * (block_weights + others) + embedding
    else:  # int4 values, one (scale, zero) pair of bfloat16 per 128 inputs
        weights = block_weights // 2 + block_weights // DEFAULT_INT4_GROUP * 4 + 2 * others + embedding
    kv = 2 * layers * config.max_sequence_length * h * 2
    # prefill temporaries (a 2048-token prompt's QKV and MLP slices), the logits, and the CUDA context's slack;
    # int4 also unpacks one weight at a time into a bfloat16 scratch for long prompts
    work = config.max_sequence_length * h * 2 * 12 + config.vocab_size * 8 + (256 << 20)
    scratch = 2 * h * max(inner, 3 * h) if mode == "int4" else 0
    return weights + kv + work + scratch


class CudaBackend(Backend):
    """fp16-resident (`mode="fp16"`, or bfloat16 with `dtype`) or int4-resident (`mode="int4"`) on one GPU."""

    name = "cuda"

    def __init__(self, device: torch.device, mode: str, bits: int, scheme: QuantScheme | None = None,
                 dtype: torch.dtype = torch.float16, graphs: bool = True) -> None:
        assert mode in ("fp16", "int4")
        super().__init__(device, torch.bfloat16 if mode == "int4" else dtype)
        self.resident, self.bits, self.graphs = mode, bits, graphs
        self.scheme = scheme or QuantScheme(4, DEFAULT_INT4_GROUP)
        self._runners: dict[int, GraphRunner] = {}

    @property
    def mode(self) -> str:
        step = "CUDA graph" if self.graphs else "eager"
        if self.resident == "int4":
            return f"int4-resident (tinygemm, {self.scheme.tag}), {step}"
        dtype = "fp16" if self.compute_dtype == torch.float16 else "bf16"
        return f"{dtype}-resident, {step}"

    @property
    def weights_label(self) -> str:
        if self.resident == "int4":
            return f"{self.scheme.tag} resident"
        source = f"int{self.bits}-row dequantized to " if self.bits else ""
        return source + ("float16" if self.compute_dtype == torch.float16 else "bfloat16") + " resident"

    @property
    def numerics(self) -> str:
        if self.resident == "fp16" and self.compute_dtype == torch.float16:
            return "exactly the original implementation's GPU arithmetic (float16 weights and activations)"
        if self.resident == "fp16":
            return "the original's weights in bfloat16: activations lose 3 bits of mantissa against its float16"
        return ("int4 weights as stored (scales rounded to bfloat16), bfloat16 activations, float16 LM head: "
                "top logits within a few percent of the original's float16")

    def build(self, config: ChatGLMConfig) -> ChatGLMForCausalLM:
        with torch.device("meta"):
            model = ChatGLMForCausalLM(dataclasses.replace(config, quantization_bit=0)).to(self.compute_dtype)
            if self.resident == "int4":
                scheme = self.scheme
                replace_linears(model, lambda old: TinyGemmInt4Linear(
                    old.in_features, old.out_features, required_int4pack_group(old.in_features, scheme)))
                model.transformer.word_embeddings = HalfTiedEmbedding(config.vocab_size, config.hidden_size).half()
        return model

    def convert_weight(self, weight: StoredWeight) -> dict[str, Tensor]:
        if weight.kind == "embedding":
            dtype = torch.float16 if self.resident == "int4" else self.compute_dtype
            return {"weight": weight.floats().to(device=self.device, dtype=dtype)}
        if self.resident == "fp16":
            return {"weight": self._dequantized(weight)}
        group = required_int4pack_group(weight.shape[1], self.scheme)
        q, scales = weight.group_quantized(group)
        packed, scales_zeros = pack_tinygemm(q, scales, group, self.device)
        return {"weight_packed": packed, "weight_scales_zeros": scales_zeros}

    def _dequantized(self, weight: StoredWeight) -> Tensor:
        """The weight in the compute dtype: stored floats, stored int values times scale, or quantized per row
        on load (as `--quantization` asks) and dequantized, one slice of rows at a time."""
        out = torch.empty(weight.shape, dtype=self.compute_dtype, device=self.device)
        if not self.bits:
            return out.copy_(weight.data)
        source = weight
        if weight.bits != self.bits:
            q, scale = weight.row_quantized(self.bits)
            source = dataclasses.replace(weight, bits=8, data=q, scale=scale)  # unpacked values
        for begin in range(0, weight.shape[0], 4096):
            rows = slice(begin, begin + 4096)
            out[rows] = source.dequantized(rows).to(device=self.device, dtype=self.compute_dtype)
        return out

    def kv_cache(self, config: ChatGLMConfig, capacity: int) -> StaticKVCache:
        """The whole window's cache, whatever `capacity` (one per model: the captured graphs use its buffers)."""
        return StaticKVCache(config, self.compute_dtype, self.device)

    def finish(self, model: ChatGLMForCausalLM) -> ChatGLMForCausalLM:
        """Ready to run: long prompts of int4 weights go through cuBLAS; with float16 weights the MLP takes a whole
        prompt at once (the CPU's slicing saves memory this GPU has); the decode step is captured for every
        attention window now, so no reply waits for a capture (~0.1-0.3 s each)."""
        model = super().finish(model)
        if self.resident == "int4":
            # int4 keeps the CPU's slices: their activations count against the 5.5 GB a small GPU has, and
            # unpacking a weight once more per slice costs ~0.1 ms
            attach_dequantizers(model, self.device)
        else:
            for layer in model.transformer.layers:
                layer.mlp.rows_per_slice = model.config.max_sequence_length
        self._runner(model).capture_all()
        return model

    def _runner(self, model: ChatGLMForCausalLM) -> GraphRunner:
        runner = self._runners.get(id(model))
        if runner is None or runner.model is not model:
            runner = GraphRunner(model, self.kv_cache(model.config, model.config.max_sequence_length), self.graphs)
            self._runners = {id(model): runner}
        return runner

    def session(self, model: ChatGLMForCausalLM, capacity: int) -> DecodeSession:
        return CudaSession(model, self._runner(model))


def sizes_fit_int4(config: ChatGLMConfig, scheme: QuantScheme) -> bool:
    """Whether tinygemm's layout holds every block linear of this config."""
    sizes: Sequence[int] = (config.hidden_size, config.inner_hidden_size)
    outs = (3 * config.hidden_size, config.hidden_size, config.inner_hidden_size)
    return all(int4pack_group(k, scheme) for k in sizes) and all(n % 8 == 0 for n in outs)
