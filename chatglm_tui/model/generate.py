"""Prefill and token-by-token decoding: small functions, no threads, no UI."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from chatglm_tui.errors import ContextOverflowError, GenerationError
from chatglm_tui.model.kv_cache import KVCache
from chatglm_tui.model.modeling import ChatGLMForCausalLM, LayerCallback
from chatglm_tui.model.params import FinishReason, GenerationParams
from chatglm_tui.model.sampling import TokenSampler


def prompt_layout(ids: Sequence[int], model: ChatGLMForCausalLM) -> tuple[int, int]:
    """(context_length, mask_position) of a token sequence, found as the original finds them.

    context_length is the index of the first `<sop>`; mask_position that of the first `[gMASK]`, or of `[MASK]`
    when there is no `[gMASK]`.
    """
    config = model.config
    ids = list(ids)
    if config.bos_token_id not in ids or (config.gmask_token_id not in ids and config.mask_token_id not in ids):
        raise GenerationError("token ids must contain [gMASK] (or [MASK]) and <sop>: build them with "
                              "tokenizer.encode(text), which appends [gMASK] <sop>")
    mask_id = config.gmask_token_id if config.gmask_token_id in ids else config.mask_token_id
    return ids.index(config.bos_token_id), ids.index(mask_id)


def position_ids(start: int, end: int, context_length: int, mask_position: int, device: torch.device) -> Tensor:
    """2-D position ids (1, 2, end-start) of absolute indices [start, end).

    Row 0 counts up through the context, then stays at the mask position; row 1 is 0 in the context, then
    1, 2, ... from `<sop>` on.
    """
    index = torch.arange(start, end, device=device)
    in_context = index < context_length
    pos = torch.where(in_context, index, torch.full_like(index, mask_position))
    block = torch.where(in_context, torch.zeros_like(index), index - context_length + 1)
    return torch.stack((pos, block))[None]


def full_logits(model: ChatGLMForCausalLM, ids: Sequence[int]) -> Tensor:
    """Logits (len(ids), V) float32 of one forward pass over `ids` (no cache)."""
    context_length, mask_position = prompt_layout(ids, model)
    device = model.device
    input_ids = torch.tensor([list(ids)], dtype=torch.long, device=device)
    pos = position_ids(0, len(ids), context_length, mask_position, device)
    with torch.inference_mode():
        return model(input_ids, pos, context_length)[0]


class DecodeSession:
    """Runs the forward passes of one reply, eagerly: the prompt at once, then one token at a time.

    Backends that run the decode step differently (a captured CUDA graph) subclass it; the results are the same.
    """

    def __init__(self, model: ChatGLMForCausalLM, cache: KVCache) -> None:
        self.model, self.cache = model, cache
        self.context_length = self.mask_position = 0

    def prefill(self, prompt_ids: Sequence[int], on_layer: LayerCallback | None = None) -> Tensor:
        """Logits (1, V) float32 after the prompt; its keys and values go into the cache."""
        self.context_length, self.mask_position = prompt_layout(prompt_ids, self.model)
        device = self.model.device
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
        pos = position_ids(0, len(prompt_ids), self.context_length, self.mask_position, device)
        return self.model(ids, pos, self.context_length, self.cache, 0, last_only=True, on_layer=on_layer)[:, -1]

    def step(self, token: int, index: int) -> Tensor:
        """Logits (1, V) float32 after `token`, which sits at absolute position `index` (after the prompt)."""
        device = self.model.device
        pos = position_ids(index, index + 1, self.context_length, self.mask_position, device)
        ids = torch.tensor([[token]], dtype=torch.long, device=device)
        return self.model(ids, pos, self.context_length, self.cache, index, last_only=True)[:, -1]


# capacity (prompt + reply tokens) -> the session of one reply
SessionFactory = Callable[[int], DecodeSession]


class TokenGenerator:
    """Iterates over the ids of a reply; `finish_reason` tells why it ended ("eos" or "length").

    The context window covers prompt and reply together. `<eop>` ends the reply and is not yielded. Closing the
    iterator early (a cancel) simply stops; the cache is freed with the object.
    """

    def __init__(self, model: ChatGLMForCausalLM, open_session: SessionFactory, prompt_ids: Sequence[int],
                 params: GenerationParams, num_pieces: int, on_prefill_layer: LayerCallback | None = None) -> None:
        self.model, self.open_session, self.params = model, open_session, params
        self.prompt_ids = list(prompt_ids)
        window = model.config.max_sequence_length
        room = window - len(self.prompt_ids)
        if room < 1:
            raise ContextOverflowError(
                f"the prompt is {len(self.prompt_ids)} tokens but the context window is {window} "
                "(prompt and reply together): shorten the input or drop earlier rounds"
            )
        self.max_new_tokens = room if params.max_new_tokens is None else min(params.max_new_tokens, room)
        self.sampler = TokenSampler(params, num_pieces)
        self.on_prefill_layer = on_prefill_layer
        self.finish_reason: FinishReason | None = None
        self.generated: list[int] = []

    def __iter__(self) -> Iterator[int]:
        config, device = self.model.config, self.model.device
        length = len(self.prompt_ids)
        session = self.open_session(length + self.max_new_tokens)
        all_ids = torch.tensor([self.prompt_ids], dtype=torch.long, device=device)
        with torch.inference_mode():
            logits = session.prefill(self.prompt_ids, self.on_prefill_layer)
            while True:
                token = self.sampler(all_ids, logits)
                if token == config.eos_token_id:
                    self.finish_reason = "eos"
                    return
                self.generated.append(token)
                yield token
                if len(self.generated) >= self.max_new_tokens:
                    self.finish_reason = "length"
                    return
                index = all_ids.shape[1]
                all_ids = torch.cat((all_ids, torch.tensor([[token]], device=device)), dim=1)
                logits = session.step(token, index)
