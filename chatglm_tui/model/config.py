"""ChatGLM-6B configuration: field names are the keys of the released `config.json`."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatglm_tui.errors import CheckpointError

# The released configs carry keys we do not use (auto_map, architectures, transformers_version, ...): they are
# ignored, never executed. `auto_map` in particular names remote code, which we never import.
_REQUIRED = ("hidden_size", "num_layers", "num_attention_heads", "vocab_size")
_OLD_VOCAB = 150528  # pre-2023-04-06 layout: 20000 image tokens in front of the text vocabulary


@dataclass(frozen=True)
class ChatGLMConfig:
    """Sizes and special ids of a ChatGLM-6B (v1) model."""

    hidden_size: int = 4096
    num_layers: int = 28
    num_attention_heads: int = 32
    vocab_size: int = 130528
    inner_hidden_size: int = 16384
    layernorm_epsilon: float = 1e-5
    max_sequence_length: int = 2048
    position_encoding_2d: bool = True
    bos_token_id: int = 130004  # <sop>
    eos_token_id: int = 130005  # <eop>
    mask_token_id: int = 130000  # [MASK]
    gmask_token_id: int = 130001  # [gMASK]
    pad_token_id: int = 3  # <pad>
    quantization_bit: int = 0  # 4 or 8 in the -int4/-int8 repos: their linear weights are stored quantized
    quantization_embeddings: bool = False  # -int4-qe: the word embedding is stored quantized as well
    torch_dtype: str = "float16"
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def residual_alpha(self) -> float:
        # The original GLMBlock is built without num_layers, so its default of 28 fixes alpha = sqrt(2 * 28) for
        # every config (the tiny fixtures included). Following config.num_layers would be wrong.
        return math.sqrt(2 * 28)

    def bits_for(self, requested: int) -> int:
        """The bit width the block linears will have: as stored, or `requested` (0, 4, 8) for a float checkpoint.

        Raises CheckpointError when a quantized checkpoint is asked for another width (it cannot be undone).
        """
        stored = self.quantization_bit
        if stored and requested and requested != stored:
            raise CheckpointError(f"this checkpoint is stored as int{stored} and cannot be re-quantized to "
                                  f"int{requested}: ask for int{stored} (or none), or use the fp16 checkpoint")
        return stored or requested

    def validate(self) -> None:
        """Raise CheckpointError when the sizes are inconsistent or the layout is not ChatGLM-6B v1."""
        if self.vocab_size == _OLD_VOCAB or self.bos_token_id == 150004:
            raise CheckpointError(
                "this checkpoint uses the pre-2023-04 150528-token vocabulary, which is not supported: "
                "download the current THUDM/chatglm-6b (v1.1) or THUDM/chatglm-6b-int4"
            )
        for name in ("hidden_size", "num_layers", "num_attention_heads", "vocab_size", "inner_hidden_size"):
            if getattr(self, name) <= 0:
                raise CheckpointError(f"config.json: {name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads or self.head_dim % 4:
            raise CheckpointError(
                f"config.json: hidden_size {self.hidden_size} does not split into {self.num_attention_heads} "
                "heads with a head size divisible by 4 (needed by the 2-D rotary embedding)"
            )
        if not self.position_encoding_2d:
            raise CheckpointError("config.json: position_encoding_2d=false is not a ChatGLM-6B checkpoint")
        if self.quantization_bit not in (0, 4, 8):
            raise CheckpointError(f"config.json: quantization_bit must be 0, 4 or 8, got {self.quantization_bit}")
        if self.extra.get("pre_seq_len"):
            raise CheckpointError(
                "config.json: P-tuning v2 checkpoints (pre_seq_len) are not supported; "
                "load the base model directory instead"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config.json") -> ChatGLMConfig:
        """Build a config from a released config.json dict; unknown keys are kept in `extra`, not used."""
        model_type = data.get("model_type", "chatglm")
        if model_type != "chatglm":
            raise CheckpointError(
                f"{source}: model_type is {model_type!r}, not 'chatglm': this is not a ChatGLM-6B (v1) checkpoint "
                "(ChatGLM2/3 and GLM-4 are different architectures)"
            )
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise CheckpointError(f"{source}: missing required keys {', '.join(missing)}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names and v is not None}
        if "inner_hidden_size" not in known:
            known["inner_hidden_size"] = 4 * int(known["hidden_size"])
        extra = {k: v for k, v in data.items() if k not in names}
        try:
            config = cls(**known, extra=extra)
        except TypeError as exc:  # a value of the wrong kind
            raise CheckpointError(f"{source}: {exc}") from exc
        config.validate()
        return config

    @classmethod
    def from_file(cls, path: Path) -> ChatGLMConfig:
        """Read and validate a config.json file."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{path} is missing: a ChatGLM-6B checkpoint directory needs its config.json")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path} is not readable JSON ({exc}); re-download the checkpoint") from exc
        if not isinstance(data, dict):
            raise CheckpointError(f"{path} does not hold a JSON object; re-download the checkpoint")
        return cls.from_dict(data, source=str(path))


PRESETS: dict[str, ChatGLMConfig] = {
    "6b": ChatGLMConfig(),
    # Same shape family as the shared test fixture: real vocabulary, tiny transformer.
    "tiny": ChatGLMConfig(hidden_size=64, num_layers=2, num_attention_heads=4, inner_hidden_size=256),
}
