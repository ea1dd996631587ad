"""Backends, and `select_backend`: the one place that decides which device, weight format and kernels run.

    exact  the original's arithmetic, quantized weights dequantized per call (any device; the reference)
    cpu    int4/int8 weights on the C kernels, float16 KV cache, converted weights cached on disk
    cuda   fp16-resident or int4-resident (tinygemm) weights, decode step captured as a CUDA graph
"""

from __future__ import annotations

import torch

from chatglm_tui.errors import DeviceError
from chatglm_tui.model.backends.base import Backend, StoredWeight
from chatglm_tui.model.backends.cpu import CpuBackend, supports_sizes
from chatglm_tui.model.backends.cuda import CudaBackend, memory_needed, sizes_fit_int4
from chatglm_tui.model.backends.exact import ExactBackend
from chatglm_tui.model.backends.tinygemm import tinygemm_available
from chatglm_tui.model.config import ChatGLMConfig
from chatglm_tui.model.load_options import DEVICE_RULE, DTYPES, is_device_name
from chatglm_tui.model.quantize import choose_scheme

__all__ = ["Backend", "StoredWeight", "ExactBackend", "CpuBackend", "CudaBackend", "BACKENDS", "select_backend",
           "resolve_device", "resolve_dtype"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# What `--backend` accepts (bench and the Python API); None / "auto" lets select_backend choose.
BACKENDS = ("auto", "exact", "cpu", "cpu-portable", "cuda-fp16", "cuda-int4")


def resolve_device(device: str | torch.device) -> torch.device:
    """A usable torch.device, or a DeviceError saying why not. "auto": the GPU when CUDA has one, else the CPU
    (Apple's Metal stays explicit: its float16 path is not faster than the CPU kernels for this model)."""
    if str(device) == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if isinstance(device, str) and not is_device_name(device):
        raise DeviceError(f"unknown device {device!r}: use {DEVICE_RULE}")
    resolved = torch.device(device)
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
        raise DeviceError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return _DTYPES[dtype]


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def select_backend(device: torch.device, dtype: str, config: ChatGLMConfig, bits: int,
                   free_memory: int | None = None, backend: str | None = None) -> Backend:
    """The backend for a checkpoint of `config`, asked for as `bits` (0, 4, 8: its quantization option).

    On the CPU, quantized weights with dtype "auto" run the C kernels; an explicit dtype runs the exact path.
    On a GPU, float32 is the exact reference; float16/bfloat16 keep the weights resident in that dtype; "auto"
    keeps them resident in float16 when they fit in `free_memory` (default: what the GPU has free now) and int4
    (tinygemm) when they do not. `backend` forces one (see BACKENDS). DeviceError when it cannot run here, with
    the option that does.
    """
    resolve_dtype(dtype, device)  # an unknown dtype is refused here, whichever backend would have run
    target_bits = config.bits_for(bits)  # a quantized checkpoint keeps its width (CheckpointError otherwise)
    backend = None if backend in (None, "auto") else backend
    if backend not in (None, *BACKENDS):
        raise DeviceError(f"unknown backend {backend!r}: use {', '.join(BACKENDS)}")
    if backend == "exact" or device.type not in ("cpu", "cuda"):
        return ExactBackend(device, resolve_dtype(dtype, device), target_bits)
    if device.type == "cpu":
        return _cpu_backend(device, dtype, config, bits, target_bits, backend)
    return _cuda_backend(device, dtype, config, bits, target_bits, free_memory, backend)


def _cpu_backend(device: torch.device, dtype: str, config: ChatGLMConfig, bits: int, target_bits: int,
                 backend: str | None) -> Backend:
    if backend is not None and not backend.startswith("cpu"):
        raise DeviceError(f"the {backend} backend runs on a GPU, not on {device}: use --device cuda")
    if (dtype == "auto" or backend) and target_bits:
        scheme = choose_scheme(config.quantization_bit, bits)
        if supports_sizes(config, scheme):
            return CpuBackend(scheme, level="pytorch" if backend == "cpu-portable" else None)
    if backend:
        raise DeviceError("the cpu backend needs int4 or int8 weights whose sizes are multiples of 64: "
                          "use --quantization int4, or --backend exact")
    return ExactBackend(device, resolve_dtype(dtype, device), target_bits)


def _cuda_backend(device: torch.device, dtype: str, config: ChatGLMConfig, bits: int, target_bits: int,
                  free_memory: int | None, backend: str | None) -> Backend:
    if backend is not None and not backend.startswith("cuda"):
        raise DeviceError(f"the {backend} backend runs on the CPU, not on {device}: use --device cpu")
    if dtype == "float32" and backend is None:
        return ExactBackend(device, torch.float32, target_bits)
    free = free_memory if free_memory is not None else torch.cuda.mem_get_info(device)[0]
    fp16_needs, int4_needs = memory_needed(config, "fp16"), memory_needed(config, "int4")
    scheme = choose_scheme(config.quantization_bit, 4)
    has_tinygemm = tinygemm_available(device)
    int4_ok = target_bits != 8 and has_tinygemm and sizes_fit_int4(config, scheme)
    wants_fp16 = backend == "cuda-fp16" or dtype in ("float16", "bfloat16")
    if backend == "cuda-int4" and dtype in ("float16", "bfloat16"):
        raise DeviceError("the cuda-int4 backend computes in bfloat16 with int4 weights: leave --dtype at auto")
    if wants_fp16 or (backend is None and fp16_needs <= free):
        if fp16_needs > free:
            raise DeviceError(f"float16-resident weights need {_gb(fp16_needs)} of GPU memory and {device} has "
                              f"{_gb(free)} free: "
                              + (f"use --dtype auto (int4-resident, about {_gb(int4_needs)})" if int4_ok
                                 else "use --device cpu"))
        dtype_wanted = torch.bfloat16 if dtype == "bfloat16" else torch.float16
        return CudaBackend(device, "fp16", target_bits, dtype=dtype_wanted)
    if not int4_ok:
        why = ("int8 weights have no int4-resident mode" if target_bits == 8 else
               "this GPU or torch build has no tinygemm int4 kernel (it needs an sm80+ card and CUDA 12+)"
               if not has_tinygemm else "these model sizes do not fit tinygemm's layout")
        if backend == "cuda-int4":
            raise DeviceError(f"int4-resident cannot run here: {why}; use --backend cuda-fp16 or --device cpu")
        # The original's own low-memory GPU path: quantized weights dequantized per call.
        return ExactBackend(device, resolve_dtype(dtype, device), target_bits)
    if int4_needs > free:
        raise DeviceError(f"int4-resident weights need {_gb(int4_needs)} of GPU memory and {device} has "
                          f"{_gb(free)} free: close what else uses the GPU, or use --device cpu")
    return CudaBackend(device, "int4", target_bits, scheme=scheme)
