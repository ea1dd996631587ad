"""How a reply is generated: the one generation-parameters type, from the config file to the sampler, validated
here and nowhere else. Torch-free, so the settings, the engine's requests and the chat app use it as they are."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from chatglm_tui.errors import GenerationError

# Why a reply ended: <eop>, the reply limit or the window, or a stop asked for by the caller.
FinishReason = Literal["eos", "length", "stopped"]

# Bounds past which the sampler still constructs but then fails or degenerates on every reply.
MAX_TEMPERATURE = 100.0  # already near-uniform noise; 1e308 samples random tokens, inf breaks the softmax
MAX_REPETITION_PENALTY = 100.0  # past ~1e37 float32 logits overflow and the NaN guard forces one token forever
# Logits are divided by the temperature and by the penalty: around 1e-36 they overflow float32 to inf and every
# reply fails. 1e-6 keeps both together far from that, and a temperature that low is greedy (0) already.
MIN_DIVISOR = 1e-6
MAX_TOP_K = 130_528  # ChatGLM-6B's vocabulary: a larger k keeps every token, which is what 0 already says
MAX_NEW_TOKENS = 2000  # the 2048-token window holds prompt and reply: a longer reply can never fit
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes [-2**63, 2**64); the non-negative part is allowed
# The reply limit the chat, `ask` and the config use unless told otherwise; also the room the context budget keeps
# for the reply. (The Python API's default, None, lets a reply run to <eop> or the end of the window.)
DEFAULT_MAX_NEW_TOKENS = 512

# What each field allows, as the user reads it (config errors, the settings form, the API's GenerationError).
RULES = {
    "temperature": f"a number from 0 to {MAX_TEMPERATURE:g} (0 means greedy; otherwise at least {MIN_DIVISOR:g})",
    "top_p": "a number > 0 and <= 1",
    "top_k": f"an integer from 0 to {MAX_TOP_K} (0 turns top-k off)",
    "repetition_penalty": f"a number from {MIN_DIVISOR:g} to {MAX_REPETITION_PENALTY:g} (1.0 turns it off)",
    "max_new_tokens": f"an integer from 1 to {MAX_NEW_TOKENS} (the 2048-token window also holds the prompt)",
    "seed": f"an integer from 0 to {MAX_SEED} (2**64 - 1), or unset",
    "do_sample": "true or false",
}
_IN_RANGE: dict[str, Callable[[Any], bool]] = {
    "temperature": lambda x: x == 0 or MIN_DIVISOR <= x <= MAX_TEMPERATURE,
    "top_p": lambda x: 0 < x <= 1,
    "top_k": lambda x: 0 <= x <= MAX_TOP_K,
    "repetition_penalty": lambda x: MIN_DIVISOR <= x <= MAX_REPETITION_PENALTY,
    "max_new_tokens": lambda x: 1 <= x <= MAX_NEW_TOKENS,
    "seed": lambda x: 0 <= x <= MAX_SEED,
}
_INTEGERS = {"top_k", "max_new_tokens", "seed"}
_OPTIONAL = {"max_new_tokens", "seed"}


def is_valid(name: str, value: object) -> bool:
    """Whether `value` is allowed for the generation field `name` (of the right type, in range)."""
    if value is None:
        return name in _OPTIONAL
    if name == "do_sample":
        return isinstance(value, bool)
    kinds = (int,) if name in _INTEGERS else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        return False
    return _IN_RANGE[name](value)


@dataclass(frozen=True)
class GenerationParams:
    """How to generate a reply. Defaults are the original `chat()`'s (sampling, top-p 0.7, temperature 0.95,
    transformers' default top-k 50), with the reply limited only by the context window."""

    do_sample: bool = True
    temperature: float = 0.95
    top_p: float = 0.7
    top_k: int = 50
    repetition_penalty: float = 1.0
    max_new_tokens: int | None = None  # None: until <eop> or the context window is full
    seed: int | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not is_valid(field.name, value):
                raise GenerationError(f"invalid {field.name} = {value!r}: expected {RULES[field.name]}")

    @property
    def is_greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    @property
    def reply_reserve(self) -> int:
        """The room the context budget keeps for the reply: the limit, or the default one when there is none."""
        return self.max_new_tokens if self.max_new_tokens is not None else DEFAULT_MAX_NEW_TOKENS

    def replace(self, **changes: object) -> GenerationParams:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, object]:
        """The fields as saved with a conversation."""
        return dataclasses.asdict(self)

    @classmethod
    def from_kwargs(cls, **kwargs: object) -> GenerationParams:
        """Params from keyword arguments, rejecting unknown names with a clear message."""
        unknown = sorted(set(kwargs) - set(FIELDS))
        if unknown:
            raise GenerationError(f"unknown generation option(s): {', '.join(unknown)}; "
                                  f"known: {', '.join(sorted(FIELDS))}")
        return cls(**kwargs)  # type: ignore[arg-type]

    def updated_from(self, saved: Mapping[str, Any]) -> GenerationParams:
        """These params with a conversation's saved ones over them. Keys from other versions and values that are
        no longer allowed are ignored (the default stays), and sampling follows the temperature."""
        known = {name: value for name, value in saved.items() if name in FIELDS and is_valid(name, value)}
        params = dataclasses.replace(self, **known)
        return dataclasses.replace(params, do_sample=params.temperature > 0)


FIELDS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(GenerationParams))
