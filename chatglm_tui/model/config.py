"""ChatGLM-6B configuration: field names are the keys of the released `config.json`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatglm_tui.errors import CheckpointError
from chatglm_tui.paths import read_checkpoint_json

# The released configs carry keys we do not use (auto_map, architectures, transformers_version, ...): they are
# ignored, never executed. `auto_map` in particular names remote code, which we never import.
_REQUIRED = ("hidden_size", "num_layers", "num_attention_heads", "vocab_size")
_OLD_VOCAB = 150528  # pre-2023-04-06 layout: 20000 image tokens in front of the text vocabulary
# Upper bounds on the sizes, far above ChatGLM-6B's (4096, 28, 32, 16384, 130528, 2048; GLM-130B, the largest
# GLM, has 12288 / 70 / 96) so that no real v1 checkpoint is refused, yet low enough that nothing a bad value
# makes us build first can blow up: 256 layers are built (on the meta device) in well under a second, where
# num_layers=10000 took 24 s and 850 MB before failing; 32768 tokens bound the KV cache a reply sizes from
# max_sequence_length; the product of all of them stays meta-device shapes, never memory, until a weight
# of that size is actually read.
_MAX_SIZES = {"hidden_size": 32768, "num_layers": 256, "num_attention_heads": 1024, "inner_hidden_size": 131072,
              "vocab_size": 1 << 20, "max_sequence_length": 32768}
SUPPORTED_FAMILY = "ChatGLM-6B"
GLM4_FAMILY = "GLM-4"
# Keys found only in the configs of the later GLMs: ChatGLM2-6B, ChatGLM3-6B and GLM-4 share one modeling code
# (multi-query attention, RMSNorm, SwiGLU, another tokenizer), a different architecture from ChatGLM-6B's. All of
# them still say model_type "chatglm" (and "ChatGLMModel", and auto_map to modeling_chatglm), so keys tell them apart.
_LATER_GLM_KEYS = ("padded_vocab_size", "multi_query_attention", "multi_query_group_num", "kv_channels",
                   "seq_length", "ffn_hidden_size", "rope_ratio", "rmsnorm", "add_qkv_bias")
_GLM4_VOCAB = 151552  # ChatGLM2/3 have 65024
_GLM4_MODEL_TYPES = ("glm", "glm4")  # transformers' own GLM-4 ports (THUDM/glm-4-9b-chat-hf, GLM-4-0414)
# The special ids are fixed by the tokenizer (ice_text.model, whose ids ChatGLMTokenizer checks); a config that
# moves them would fail every reply (no <sop> or [gMASK] found in the prompt), so they must be the released ones.
_FIXED_IDS = ("bos_token_id", "eos_token_id", "mask_token_id", "gmask_token_id")


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float (JSON allows any number of digits)
        return False


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

    def validate(self, source: str = "config.json") -> None:
        """Raise CheckpointError when a value has the wrong type, is out of range, the sizes are inconsistent
        or the layout is not ChatGLM-6B v1: at load, before anything is built from them."""
        self._check_types(source)
        if self.vocab_size == _OLD_VOCAB or self.bos_token_id == 150004:
            raise CheckpointError(
                "this checkpoint uses the pre-2023-04 150528-token vocabulary, which is not supported: "
                "download the current THUDM/chatglm-6b (v1.1) or THUDM/chatglm-6b-int4"
            )
        self._check_ranges(source)
        if self.hidden_size % self.num_attention_heads or self.head_dim % 4:
            raise CheckpointError(
                f"{source}: hidden_size {self.hidden_size} does not split into {self.num_attention_heads} "
                "heads with a head size divisible by 4 (needed by the 2-D rotary embedding)"
            )
        if not self.position_encoding_2d:
            raise CheckpointError(f"{source}: position_encoding_2d=false is not a ChatGLM-6B checkpoint")
        if self.quantization_bit not in (0, 4, 8):
            raise CheckpointError(f"{source}: quantization_bit must be 0, 4 or 8, got {self.quantization_bit}")
        if self.extra.get("pre_seq_len"):
            raise CheckpointError(
                f"{source}: P-tuning v2 checkpoints (pre_seq_len) are not supported; "
                "load the base model directory instead"
            )

    def _check_types(self, source: str) -> None:
        # The annotations name the JSON type each key must have (bool is an int in Python: refused for ints).
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif f.type == "float":  # a JSON number; NaN and Infinity (which json.loads accepts) are refused
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
            elif f.type in ("bool", "str"):
                ok = isinstance(value, bool if f.type == "bool" else str)
            else:
                continue
            if not ok:
                shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
                kind = {"int": "an integer", "float": "a finite number"}.get(f.type, f"a JSON {f.type}")
                raise CheckpointError(f"{source}: {f.name} must be {kind}, got {shown}: fix or re-download it")

    def _check_ranges(self, source: str) -> None:
        for name, limit in _MAX_SIZES.items():
            value = getattr(self, name)
            if not 0 < value <= limit:
                raise CheckpointError(f"{source}: {name} must be between 1 and {limit} (ChatGLM-6B has "
                                      f"{getattr(PRESETS['6b'], name)}), got {value}: fix or re-download it")
        if not self.layernorm_epsilon > 0:
            raise CheckpointError(f"{source}: layernorm_epsilon must be positive (ChatGLM-6B has 1e-05), "
                                  f"got {self.layernorm_epsilon}: fix or re-download it")
        for name in _FIXED_IDS:
            released = getattr(PRESETS["6b"], name)
            if getattr(self, name) != released:
                raise CheckpointError(f"{source}: {name} is {getattr(self, name)}, but the ChatGLM-6B tokenizer "
                                      f"has it at {released}: fix or re-download it")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise CheckpointError(f"{source}: pad_token_id {self.pad_token_id} is not a token id (0 to "
                                  f"{self.vocab_size - 1}): fix or re-download it")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config.json") -> ChatGLMConfig:
        """Build a config from a released config.json dict; unknown keys are kept in `extra`, not used."""
        require_supported(data, source)
        missing = [k for k in _REQUIRED if data.get(k) is None]
        if missing:
            raise CheckpointError(f"{source}: missing required keys {', '.join(missing)}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names and v is not None}
        hidden = known["hidden_size"]
        if "inner_hidden_size" not in known and isinstance(hidden, int) and not isinstance(hidden, bool):
            known["inner_hidden_size"] = 4 * hidden  # a hidden_size of the wrong type is refused by validate
        extra = {k: v for k, v in data.items() if k not in names}
        config = cls(**known, extra=extra)  # the dataclass checks nothing: validate does, before any use
        config.validate(source)
        return config

    @classmethod
    def from_file(cls, path: Path) -> ChatGLMConfig:
        """Read and validate a config.json file."""
        try:
            data = read_checkpoint_json(path)  # refuses a named pipe or device, which would hang or never end
        except FileNotFoundError:
            raise CheckpointError(f"{path} is missing: a ChatGLM-6B checkpoint directory needs its config.json")
        if not isinstance(data, dict):
            raise CheckpointError(f"{path} does not hold a JSON object; re-download the checkpoint")
        require_supported(data, str(path), path.parent)  # with the tokenizer's config beside it, to name GLM-4
        return cls.from_dict(data, source=str(path))


def checkpoint_family(config: Mapping[str, Any], tokenizer_config: object = None) -> str | None:
    """The GLM family a config.json describes: "ChatGLM-6B" (the one this project runs), "ChatGLM2-6B",
    "ChatGLM3-6B" or "ChatGLM2-6B or ChatGLM3-6B" (their configs differ only in the name they were saved under),
    "GLM-4"; None when it is no GLM at all. `tokenizer_config` (tokenizer_config.json) can name GLM-4's tokenizer."""
    model_type = config.get("model_type", "chatglm")
    if model_type in _GLM4_MODEL_TYPES:
        return GLM4_FAMILY
    if model_type != "chatglm":
        return None
    if not any(key in config for key in _LATER_GLM_KEYS):
        return SUPPORTED_FAMILY
    name = str(config.get("_name_or_path", "")).lower()
    tokenizer = tokenizer_config.get("tokenizer_class") if isinstance(tokenizer_config, Mapping) else None
    vocab = config.get("padded_vocab_size", config.get("vocab_size"))
    if tokenizer == "ChatGLM4Tokenizer" or vocab == _GLM4_VOCAB or "glm-4" in name or "glm4" in name:
        return GLM4_FAMILY
    if "chatglm3" in name or "chatglm2" in name:
        return "ChatGLM3-6B" if "chatglm3" in name else "ChatGLM2-6B"
    return "ChatGLM2-6B or ChatGLM3-6B"


def family_in(directory: Path, config: Mapping[str, Any]) -> str | None:
    """`checkpoint_family` of a checkpoint directory whose config.json holds `config`; its tokenizer_config.json is
    read only for a later GLM (to tell GLM-4 apart), and left out when it is missing or unreadable."""
    family = checkpoint_family(config)
    if family in (None, SUPPORTED_FAMILY, GLM4_FAMILY):
        return family
    try:
        return checkpoint_family(config, read_checkpoint_json(directory / "tokenizer_config.json"))
    except (FileNotFoundError, CheckpointError):
        return family


def require_supported(config: Mapping[str, Any], source: str, directory: Path | None = None) -> None:
    """A one-line CheckpointError unless `config` is a ChatGLM-6B (v1) config: the other GLMs have other layers and
    another tokenizer, and would fail later on a missing key or file that says nothing of why."""
    family = checkpoint_family(config) if directory is None else family_in(directory, config)
    if family is None:
        raise CheckpointError(
            f"{source}: model_type is {config.get('model_type')!r}, not 'chatglm': this is not a ChatGLM-6B (v1) "
            "checkpoint; use THUDM/chatglm-6b or THUDM/chatglm-6b-int4"
        )
    if family != SUPPORTED_FAMILY:
        raise CheckpointError(unsupported_family_message(family, source))


def unsupported_family_message(family: str, source: str) -> str:
    """The one line for a checkpoint of a GLM family other than ChatGLM-6B."""
    return (f"{source}: this is a {family} checkpoint, which is not supported: chatglm-tui runs only ChatGLM-6B "
            "(v1); use THUDM/chatglm-6b or THUDM/chatglm-6b-int4")


PRESETS: dict[str, ChatGLMConfig] = {
    "6b": ChatGLMConfig(),
    # Same shape family as the shared test fixture: real vocabulary, tiny transformer.
    "tiny": ChatGLMConfig(hidden_size=64, num_layers=2, num_attention_heads=4, inner_hidden_size=256),
}
