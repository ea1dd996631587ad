"""The stable Python API: `load_model()` and the `ChatGLM` object it returns."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor

from chatglm_tui.errors import CheckpointError, DeviceError
from chatglm_tui.model.config import ChatGLMConfig
from chatglm_tui.model.fast_loading import choose_scheme, load_fast, supports_fast_path
from chatglm_tui.model.generate import TokenGenerator, full_logits
from chatglm_tui.model.loading import Progress, checkpoint_directory, load_checkpoint
from chatglm_tui.model.modeling import ChatGLMForCausalLM, LayerCallback
from chatglm_tui.model.prompt import HALF_WIDTH_PUNCTUATION, PENDING_PATTERNS, Round, build_prompt, process_response
from chatglm_tui.model.sampling import GenerationParams
from chatglm_tui.model.tokenizer import CLEAN_UP_PATTERNS, ChatGLMTokenizer, IncrementalDecoder

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZATIONS = ("int4", "int8")


def resolve_device(device: str | torch.device) -> torch.device:
    """A usable torch.device, or a DeviceError saying why not."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device 'cuda' was asked for but no CUDA GPU is available: use --device cpu")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("device 'mps' was asked for but Metal is not available: use --device cpu")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' is float32 on the CPU (exact, and the fastest there) and float16 on GPUs (the official numerics)."""
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if dtype not in _DTYPES:
        raise DeviceError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


class ChatGLM:
    """A loaded ChatGLM-6B: tokenizer, model and the original `chat()` behaviour."""

    def __init__(self, model: ChatGLMForCausalLM, tokenizer: ChatGLMTokenizer, path: Path | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
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

    def prompt_ids(self, query: str, history: Sequence[Round] = ()) -> list[int]:
        """The ids the model reads for `query` after `history`: the original template, then [gMASK] <sop>.

        Special-token strings inside user text (`<sop>`, `<eop>`, ...) stay plain text here, so a pasted
        document cannot end the prompt early or fake a round.
        """
        return self.tokenizer.encode(build_prompt(history, query), parse_special=False)

    def generate_ids(self, prompt_ids: Sequence[int], params: GenerationParams,
                     on_prefill_layer: LayerCallback | None = None) -> TokenGenerator:
        """An iterator over the reply's token ids (see TokenGenerator)."""
        return TokenGenerator(self.model, prompt_ids, params, self.tokenizer.num_pieces, on_prefill_layer)

    def response_decoder(self) -> IncrementalDecoder:
        """An incremental decoder producing the post-processed reply as append-only deltas."""
        return IncrementalDecoder(self.tokenizer, finalize=process_response,
                                  pending=CLEAN_UP_PATTERNS + PENDING_PATTERNS, hold_chars=HALF_WIDTH_PUNCTUATION)

    def stream_chat(self, query: str, history: Sequence[Round] = (), **sampling: object) -> Iterator[str]:
        """Yield the reply as text deltas; joined, they equal `chat()`'s reply for the same arguments."""
        params = GenerationParams.from_kwargs(**sampling)
        decoder = self.response_decoder()
        for token in self.generate_ids(self.prompt_ids(query, history), params):
            delta = decoder.add([token])
            if delta:
                yield delta
        rest = decoder.flush()
        if rest:
            yield rest

    def chat(self, query: str, history: Sequence[Round] = (), **sampling: object) -> str:
        """The reply to `query` after `history` (a list of (query, reply) pairs), post-processed like the original."""
        return "".join(self.stream_chat(query, history, **sampling))


def _wants_fast_path(directory: Path, bits: int, dtype: str, device: torch.device) -> bool:
    """The CPU kernels serve quantized weights when no exact dtype was asked for and the sizes fit them."""
    if dtype != "auto" or device.type != "cpu":
        return False
    config = ChatGLMConfig.from_file(directory / "config.json")
    if not (bits or config.quantization_bit):
        return False
    return supports_fast_path(config, choose_scheme(config, bits))


def load_model(path: str | Path, quantization: str | None = None, device: str | torch.device = "cpu",
               dtype: str = "auto", progress: Progress | None = None,
               tokenizer: ChatGLMTokenizer | None = None) -> ChatGLM:
    """Load a ChatGLM-6B checkpoint directory (fp16, -int4 or -int8 layouts; .bin or .safetensors).

    Args:
        path: the checkpoint directory (config.json, ice_text.model and the weights).
        quantization: None keeps the weights as stored; "int4" or "int8" quantizes an fp16 checkpoint's
            linear layers while loading.
        device: "cpu", "cuda", "cuda:N" or "mps".
        dtype: "auto", "float32", "bfloat16" or "float16": the compute dtype. "float32" is exact (quantized
            weights are dequantized exactly, as the original does). "auto" on the CPU with quantized weights
            runs the fast int4/int8 kernels (through a quantized cache file); otherwise it is float32 on the
            CPU and float16 on GPUs.
        progress: called as progress(stage, done, total) while loading; stage is "read" (weight files, or
            the quantized cache) or "quantize" (tensors converted into the cache, on a first fast load).
        tokenizer: the directory's tokenizer, when the caller has read it already (the engine reads it first,
            to count tokens while the weights load); read from `path` when None.
    Raises:
        CheckpointError, DeviceError: with a message that says what to do.
    """
    if quantization not in (None, "none", *QUANTIZATIONS):
        raise CheckpointError(f"unknown quantization {quantization!r}: use int4, int8 or none")
    resolved_device = resolve_device(device)
    compute_dtype = resolve_dtype(dtype, resolved_device)
    directory = checkpoint_directory(path)
    bits = {"int4": 4, "int8": 8}.get(quantization or "none", 0)
    if tokenizer is None:
        tokenizer = ChatGLMTokenizer.from_dir(directory)
    if _wants_fast_path(directory, bits, dtype, resolved_device):
        model = load_fast(directory, bits, progress=progress)
    else:
        model = load_checkpoint(directory, compute_dtype, resolved_device, quantize_bits=bits, progress=progress)
    return ChatGLM(model, tokenizer, directory)
