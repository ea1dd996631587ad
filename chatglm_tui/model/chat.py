"""The stable Python API: `load_model()` and the `ChatGLM` object it returns."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor

from chatglm_tui.errors import CheckpointError
from chatglm_tui.model.backends import Backend, resolve_device, select_backend
from chatglm_tui.model.checkpoint import Checkpoint
from chatglm_tui.model.generate import TokenGenerator, full_logits
from chatglm_tui.model.load_options import QUANTIZATIONS, quantization_bits
from chatglm_tui.model.loading import Progress, load
from chatglm_tui.model.modeling import ChatGLMForCausalLM, LayerCallback
from chatglm_tui.model.params import GenerationParams
from chatglm_tui.model.prompt import HALF_WIDTH_PUNCTUATION, PENDING_PATTERNS, Round, encode_prompt, process_response
from chatglm_tui.model.reply import PrefillCallback, ReplyStream
from chatglm_tui.model.tokenizer import CLEAN_UP_PATTERNS, ChatGLMTokenizer, IncrementalDecoder


class ChatGLM:
    """A loaded ChatGLM-6B: tokenizer, model and the original `chat()` behaviour."""

    def __init__(self, model: ChatGLMForCausalLM, tokenizer: ChatGLMTokenizer, backend: Backend,
                 path: Path | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.backend = backend
        self.config = model.config
        self.path = path

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype."""
        return self.model.dtype

    @property
    def context_window(self) -> int:
        """Tokens the model reads at most, prompt and reply together (2048 for ChatGLM-6B)."""
        return self.config.max_sequence_length

    def logits(self, ids: Sequence[int]) -> Tensor:
        """Logits [len(ids), vocab_size] float32 of one full forward pass (ids must end with [gMASK] <sop>)."""
        return full_logits(self.model, ids)

    def prompt_ids(self, query: str, history: Sequence[Round] = (), instruction: str | None = None) -> list[int]:
        """The ids the model reads for `query` after `history` (see `encode_prompt`; user text stays plain text)."""
        return encode_prompt(self.tokenizer, history, query, instruction)

    def generate_ids(self, prompt_ids: Sequence[int], params: GenerationParams,
                     on_prefill_layer: LayerCallback | None = None) -> TokenGenerator:
        """An iterator over the reply's token ids (see TokenGenerator)."""
        return TokenGenerator(self.model, lambda capacity: self.backend.session(self.model, capacity), prompt_ids,
                              params, self.tokenizer.num_pieces, on_prefill_layer)

    def response_decoder(self) -> IncrementalDecoder:
        """An incremental decoder producing the post-processed reply as append-only deltas."""
        return IncrementalDecoder(self.tokenizer, finalize=process_response,
                                  pending=CLEAN_UP_PATTERNS + PENDING_PATTERNS, hold_chars=HALF_WIDTH_PUNCTUATION)

    def stream_reply(self, prompt_ids: Sequence[int], params: GenerationParams, *,
                     should_stop: Callable[[], bool] | None = None, on_prefill: PrefillCallback | None = None,
                     every_tokens: int = 1, every_seconds: float = 0.0,
                     prefix_ids: Sequence[int] = ()) -> ReplyStream:
        """The reply to `prompt_ids` as text chunks, stoppable and batched (see ReplyStream): what the engine reads.

        `prefix_ids` continues a reply: they end `prompt_ids` (after `<sop>`, where the model's own tokens go), and
        the reply's text begins with theirs.
        """
        return ReplyStream(lambda on_layer: self.generate_ids(prompt_ids, params, on_prefill_layer=on_layer),
                           self.response_decoder(),
                           should_stop=should_stop, on_prefill=on_prefill, every_tokens=every_tokens,
                           every_seconds=every_seconds, prefix_ids=prefix_ids)

    def stream_chat(self, query: str, history: Sequence[Round] = (), *, instruction: str | None = None,
                    should_stop: Callable[[], bool] | None = None, **sampling: object) -> Iterator[str]:
        """Yield the reply as text deltas; joined, they equal `chat()`'s reply for the same arguments.

        `should_stop` is asked between tokens: when it returns True the reply ends with what was written.
        """
        params = GenerationParams.from_kwargs(**sampling)
        yield from self.stream_reply(self.prompt_ids(query, history, instruction), params, should_stop=should_stop)

    def chat(self, query: str, history: Sequence[Round] = (), *, instruction: str | None = None,
             **sampling: object) -> str:
        """The reply to `query` after `history` (a list of (query, reply) pairs), post-processed like the original."""
        params = GenerationParams.from_kwargs(**sampling)
        return "".join(self.stream_reply(self.prompt_ids(query, history, instruction), params))


def plan_load(path: str | Path, quantization: str | None = None, device: str | torch.device = "auto",
              dtype: str = "auto", backend: str | None = None) -> tuple[Checkpoint, Backend]:
    """The checkpoint and the backend `load_model` would run it on, without reading any weights."""
    if quantization not in (None, *QUANTIZATIONS):
        raise CheckpointError(f"unknown quantization {quantization!r}: use {', '.join(QUANTIZATIONS)}")
    resolved_device = resolve_device(device)
    checkpoint = Checkpoint.open(path)
    return checkpoint, select_backend(resolved_device, dtype, checkpoint.config, quantization_bits(quantization),
                                      backend=backend)


def load_model(path: str | Path, quantization: str | None = None, device: str | torch.device = "auto",
               dtype: str = "auto", progress: Progress | None = None,
               tokenizer: ChatGLMTokenizer | None = None, backend: str | None = None,
               cache_dir: Path | None = None) -> ChatGLM:
    """Load a ChatGLM-6B checkpoint directory (fp16, -int4 or -int8 layouts; .bin or .safetensors).

    Args:
        path: the checkpoint directory (config.json, ice_text.model and the weights).
        quantization: None keeps the weights as stored; "int4" or "int8" quantizes an fp16 checkpoint's
            linear layers while loading.
        device: "auto" (a CUDA GPU when there is one, else the CPU), "cpu", "cuda", "cuda:N" or "mps".
        dtype: "auto", "float32", "bfloat16" or "float16". "float32" is exact (quantized weights are
            dequantized exactly, as the original does). "auto" on the CPU with quantized weights runs the fast
            int4/int8 kernels, on a GPU float16-resident weights when they fit and int4-resident when not; see
            `select_backend`, which makes the choice.
        progress: called as progress(stage, done, total) while loading; stage is "read" (weight files, or
            the converted-weights cache) or "quantize" (tensors converted into the CPU kernels' format).
        tokenizer: the directory's tokenizer, when the caller has read it already (the engine reads it first,
            to count tokens while the weights load); read from `path` when None.
        backend: force a backend ("exact", "cpu", "cpu-portable", "cuda-fp16", "cuda-int4"); None chooses.
        cache_dir: where the CPU kernels' converted weights are cached (None: converted in memory each load).
    Raises:
        CheckpointError, DeviceError: with a message that says what to do.
    """
    checkpoint, chosen = plan_load(path, quantization, device, dtype, backend)
    if tokenizer is None:
        tokenizer = ChatGLMTokenizer.from_dir(checkpoint.directory)
    model = load(checkpoint, chosen, cache_dir=cache_dir, progress=progress)
    return ChatGLM(model, tokenizer, chosen, checkpoint.directory)
