"""ChatGLM-6B (v1) in plain PyTorch: the forward pass of the original `modeling_chatglm.py`, batch-first.

Module and attribute names mirror the checkpoint keys (`transformer.layers.N.attention.query_key_value`, ...), so
a released state dict loads with `load_state_dict(strict=True)` after dropping the `rotary_emb.inv_freq` buffers
and the tied `lm_head.weight`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chatglm_tui.model.config import ChatGLMConfig
from chatglm_tui.model.kv_cache import KVCache

# Called after every layer of a forward pass with (layers done, layers in all); it may raise to abandon the pass.
LayerCallback = Callable[[int, int], None]


class RotaryEmbedding2D(nn.Module):
    """cos/sin tables of the 2-D rotary embedding; each half of a head is rotated with its own position ids."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.dim = head_dim // 2  # each of the two halves of a head gets its own rotation
        inv_freq = 1.0 / (base ** (torch.arange(0, self.dim, 2).float() / self.dim))
        # The original stores inv_freq in fp16 and upcasts it: its rounding shifts the angles, so keep it.
        self.register_buffer("inv_freq", inv_freq.half().float(), persistent=False)

    def forward(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """position_ids (B, T) -> cos, sin (B, T, dim), float32."""
        freqs = position_ids.float()[..., None] * self.inv_freq  # (B, T, dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


@dataclass(frozen=True)
class Rotary:
    """The 2-D rotary embedding of one forward pass, ready to apply: (B, T, 1, D) tables in the compute dtype.

    Each half of a head is rotated NeoX style (`x * cos + rotate_half(x) * sin`), the first by the position
    ids and the second by the block position ids. Here both halves are one full-width multiply: `rotate_half`
    is a fixed permutation of the head's dims whose sign is folded into the sine table (negating is exact), so
    the result equals the per-half formula bit for bit, in a few kernels per layer instead of thirty (which
    matters on a GPU, where every kernel launch of a decode step costs microseconds).
    """

    cos: Tensor
    signed_sin: Tensor
    permutation: Tensor

    @classmethod
    def build(cls, cos: Tensor, sin: Tensor, block_cos: Tensor, block_sin: Tensor, dtype: torch.dtype) -> Rotary:
        """From the (B, T, D/2) float32 tables of the two position rows."""
        half = cos.shape[-1]  # D/2: one rotated half of a head
        quarter = half // 2
        index = torch.arange(2 * half, device=cos.device)
        within = index % half
        permutation = torch.where(within < quarter, index + quarter, index - quarter)
        sign = torch.where(within < quarter, -1.0, 1.0).to(cos.device)
        full_cos = torch.cat((cos, block_cos), dim=-1)
        full_sin = torch.cat((sin, block_sin), dim=-1) * sign
        return cls(full_cos[:, :, None, :].to(dtype), full_sin[:, :, None, :].to(dtype), permutation)

    def apply(self, x: Tensor) -> Tensor:
        """Rotate (B, T, H, D)."""
        return x * self.cos + x[..., self.permutation] * self.signed_sin


class SelfAttention(nn.Module):
    """Multi-head attention with per-head interleaved QKV rows and the 2-D rotary embedding."""

    def __init__(self, config: ChatGLMConfig, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: Tensor, rope: Rotary, mask: Tensor | None, cache: KVCache | None,
                start: int | Tensor) -> Tensor:
        B, T, _ = x.shape
        # Rows are grouped per head: [q_h | k_h | v_h] for each head h.
        qkv = self.query_key_value(x).view(B, T, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.split(self.head_dim, dim=-1)  # (B, T, H, D) each
        # v is copied out so that the 3x-wide projection can be freed before attention (less peak memory).
        q, k, v = rope.apply(q), rope.apply(k), v.contiguous()
        del qkv
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        # The original scales by 1/(sqrt(D) * (layer+1)), masks with -10000 and multiplies (layer+1) back in fp32
        # before the softmax: the same as plain softmax(q k^T / sqrt(D)) with masked keys excluded.
        if cache is not None:
            out = cache.attention(self.layer_id, start, q, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)
        return self.dense(out)


class GLU(nn.Module):
    """The MLP (named GLU upstream, but not gated): dense -> GELU (tanh approximation) -> dense."""

    # Long prompts go through in slices of this many tokens: the 4x-wide intermediate of a 2048-token prompt
    # would otherwise take 2 x 134 MB at once. Every token is independent here, so the result is the same.
    rows_per_slice = 256

    def __init__(self, config: ChatGLMConfig) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.inner_hidden_size)
        self.dense_4h_to_h = nn.Linear(config.inner_hidden_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] <= self.rows_per_slice:
            return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate="tanh"))
        return torch.cat([self(part) for part in x.split(self.rows_per_slice, dim=1)], dim=1)


class GLMBlock(nn.Module):
    """DeepNorm-style block: the residual is the *normalised* input scaled by alpha."""

    def __init__(self, config: ChatGLMConfig, layer_id: int) -> None:
        super().__init__()
        self.alpha = config.residual_alpha
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.attention = SelfAttention(config, layer_id)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.mlp = GLU(config)

    def forward(self, x: Tensor, rope: Rotary, mask: Tensor | None, cache: KVCache | None,
                start: int | Tensor) -> Tensor:
        x = self.input_layernorm(x)
        x = torch.add(self.attention(x, rope, mask, cache, start), x, alpha=self.alpha)  # one pass, no temporary
        x = self.post_attention_layernorm(x)
        return torch.add(self.mlp(x), x, alpha=self.alpha)


class TiedEmbedding(nn.Embedding):
    """The word embedding, which is also the language-model head (ChatGLM-6B ties them)."""

    def project(self, x: Tensor) -> Tensor:
        """Hidden states (..., H) -> logits (..., V)."""
        return F.linear(x, self.weight)


class ChatGLMModel(nn.Module):
    """Embedding, the GLM blocks and the final LayerNorm (the checkpoint's `transformer.*`)."""

    def __init__(self, config: ChatGLMConfig) -> None:
        super().__init__()
        self.word_embeddings = TiedEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(GLMBlock(config, i) for i in range(config.num_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.rotary = RotaryEmbedding2D(config.head_dim)


def attention_mask(start: int, length: int, context_length: int, device: torch.device) -> Tensor | None:
    """Which keys each new query sees (True = attend), or None when it sees all of them.

    Tokens before `context_length` (the prompt text and [gMASK]) see each other in both directions; `<sop>` and
    every generated token see everything before them and themselves.
    """
    query = torch.arange(start, start + length, device=device)[:, None]
    key = torch.arange(start + length, device=device)[None, :]
    mask = (key <= query) | (key < context_length)
    return None if bool(mask.all()) else mask


class ChatGLMForCausalLM(nn.Module):
    """ChatGLM-6B with its language-model head tied to the word embedding."""

    def __init__(self, config: ChatGLMConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = ChatGLMModel(config)

    @property
    def device(self) -> torch.device:
        return self.transformer.final_layernorm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype of activations (quantized weights keep their own storage)."""
        return self.transformer.final_layernorm.weight.dtype

    def forward(self, input_ids: Tensor, position_ids: Tensor, context_length: int, cache: KVCache | None = None,
                start: int | Tensor = 0, last_only: bool = False, on_layer: LayerCallback | None = None) -> Tensor:
        """Logits (B, T, V) float32 for `input_ids` (B, T) at 2-D `position_ids` (B, 2, T).

        `start` is the absolute index of the first new token (the cache holds the ones before it);
        `context_length` is the index of `<sop>` (the bidirectional prefix). `last_only` computes the logits of
        the last position alone (generation needs no more). A tensor `start` (on the device) is a captured decode
        step: one token after the context, which sees every key before it, so there is no mask to build here (the
        cache masks the positions not written yet).
        """
        t = self.transformer
        x = t.word_embeddings(input_ids)
        cos, sin = t.rotary(position_ids[:, 0])
        block_cos, block_sin = t.rotary(position_ids[:, 1])
        rope = Rotary.build(cos, sin, block_cos, block_sin, x.dtype)
        mask = None if isinstance(start, Tensor) else attention_mask(start, input_ids.shape[1], context_length,
                                                                     input_ids.device)
        for i, layer in enumerate(t.layers):
            x = layer(x, rope, mask, cache, start)
            if on_layer is not None:
                on_layer(i + 1, len(t.layers))
        if last_only:
            x = x[:, -1:]
        x = t.final_layernorm(x)
        return t.word_embeddings.project(x).float()
