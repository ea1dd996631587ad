"""What `load_model` accepts for quantization, dtype and device, named without torch: the settings check the
config file against the same lists the loader uses."""

from __future__ import annotations

QUANTIZATIONS = ("int4", "int8", "none")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_RULE = "auto, cpu, cuda, cuda:N or mps"


def is_device_name(device: str) -> bool:
    """Whether `device` is one of the device names the app runs on (whether it is present is checked at load)."""
    kind, _, index = device.partition(":")
    if kind == "cuda" and index:
        return index.isdigit()
    return kind in ("auto", "cpu", "cuda", "mps") and not index and ":" not in device


def quantization_bits(quantization: str | None) -> int:
    """4 or 8 for int4 / int8; 0 keeps the checkpoint's weights as stored (None or "none")."""
    return {"int4": 4, "int8": 8}.get(quantization or "none", 0)
