"""INT4 / INT8 weight-only linear layers for CPU.

Fast path: the C extension `_cpu` (activations quantised to int8 per 32 values, integer
dot products, OpenMP over output rows, GIL released). The level is chosen at run time
(`LEVELS`, `chosen_level`): at "avx512-bf16" prompts unpack int4 to bfloat16 for oneDNN's
GEMM; at "avx2" the integer kernel does everything; "torch" uses torch's int4pack kernel
where the extension cannot run, and "pytorch" exact dequantised float32 math.

INT4 packed layout (`PackedInt4.data`, uint8 [S, ceil(N/4), L/64, 4, 32]): the inputs
are cut into S segments of L = 4096 values (L = K when K is not a multiple of 4096),
rows are interleaved in tiles of 4, and byte j of (segment s, tile t, chunk c, row r)
holds q[4t+r, sL+64c+j] + 8 in its low nibble and q[4t+r, sL+64c+32+j] + 8 in its high
nibble. Padding rows are 0. Why: one activation load serves 4 rows, every thread reads
one contiguous stream, and a segment's int8 activations (4 KB) stay in L1.
"""
from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:  # torch must be imported first so the extension shares torch's libgomp
    from . import _cpu as _ext
except ImportError:  # not built (no compiler, non-x86): pure PyTorch fallback
    _ext = None

ROWS = 4  # row interleave of the int4 layout
CHUNK = 64  # inputs per packed 32-byte chunk
SEGMENT = 4096  # inputs per segment when K is a multiple of it (else one segment of K)
LAYOUT_TAG = "int4-s4096-r4-c64-v1"  # changes whenever the packed int4 layout changes (cache keys)
# Rows of x from which int4_linear dequantises into a float32 scratch and calls MKL
# (exact float32 math) instead of the int8-activation kernel. Measured on the dev box
# (2 Zen4 cores, 2 threads): the int kernel ran at ~220 GFLOP/s for every M from 16 to
# 4096, dequant + sgemm at 130-190, so the crossover lies beyond ChatGLM's 2048-token
# context. Set it to 1 to get exact float32 prefill, or lower it on CPUs where MKL wins.
PREFILL_MIN_ROWS = 8192

# Rows of x from which the avx512-bf16 level unpacks to bfloat16 for oneDNN instead of using the integer kernel:
# measured on 2 Zen 4 cores (QKV, 4096 -> 12288): the integer kernel wins below ~12 rows, bf16 is 1.3x at 16,
# 2.1x at 64 and 2.8x at 512.
BF16_MIN_ROWS = 16
_BF16_SCRATCH_VALUES = 1 << 23  # weights unpacked per slice: 16 MB of bfloat16

_num_threads: int | None = None
_scratch: torch.Tensor | None = None
_bf16_buffers: dict[str, torch.Tensor] = {}
_scratch_lock = threading.Lock()


@dataclass(frozen=True)
class PackedInt4:
    """Weight [out_features, in_features], symmetric int4, one float32 scale per group."""

    data: torch.Tensor  # uint8 [S, ceil(N/4), L/64, 4, 32], see module docstring
    scales: torch.Tensor  # float32 [N, K // group_size]
    out_features: int
    in_features: int
    group_size: int


@dataclass(frozen=True)
class PackedInt8:
    """Weight [out_features, in_features], symmetric int8, one float32 scale per row."""

    data: torch.Tensor  # int8 [N, K]
    scales: torch.Tensor  # float32 [N]
    out_features: int
    in_features: int


@functools.lru_cache(maxsize=1)
def is_available() -> bool:
    """True when the C extension is built and the CPU has AVX2, FMA and F16C."""
    if _ext is None:
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
        return {"avx2", "fma", "f16c"} <= set(flags)
    except OSError:  # no /proc: trust torch's dispatch level
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


# Levels, fastest first. "avx512-bf16": prefill unpacks int4 to bfloat16 for oneDNN's bf16 GEMM (AVX512_BF16
# CPUs), decode as avx2; "avx2": the integer kernels of this file; "torch": PyTorch's own packed int4/int8 CPU
# matmuls with bfloat16 activations (any CPU, ARM included: the path where the C extension cannot run);
# "pytorch": exact float32 math, dequantizing each weight at every call (the reference, and the old fallback).
LEVELS = ("avx512-bf16", "avx2", "torch", "pytorch")
LEVEL_NAMES = {"avx512-bf16": "AVX-512 BF16", "avx2": "AVX2", "torch": "PyTorch int4pack", "pytorch": "PyTorch"}
LEVEL_VARIABLE = "CHATGLM_CPU_LEVEL"


@functools.lru_cache(maxsize=1)
def available_levels() -> tuple[str, ...]:
    """The levels this build and this CPU can run, fastest first (always ends with "pytorch")."""
    found = []
    if is_available() and _ext is not None and getattr(_ext, "has_bf16", lambda: False)():
        found.append("avx512-bf16")
    if is_available():
        found.append("avx2")
    if hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(torch, "_weight_int8pack_mm"):
        found.append("torch")
    return (*found, "pytorch")


def chosen_level() -> str:
    """The fastest available level, or the one $CHATGLM_CPU_LEVEL names (a lower one: for comparing levels on
    one host). ValueError for a name that is not a level or that this CPU cannot run."""
    wanted = os.environ.get(LEVEL_VARIABLE, "").strip().lower()
    if not wanted:
        return available_levels()[0]
    if wanted not in LEVELS:
        raise ValueError(f"{LEVEL_VARIABLE}={wanted!r} is not a CPU level: use one of {', '.join(LEVELS)}")
    if wanted not in available_levels():
        raise ValueError(f"{LEVEL_VARIABLE}={wanted} cannot run on this CPU or build: it runs "
                         f"{', '.join(available_levels())}")
    return wanted


def _fast(level: str | None) -> bool:
    """Whether the C kernels run at `level` (None: the fastest here)."""
    return level not in ("pytorch", "torch") and is_available()


def set_num_threads(n: int) -> None:
    """OpenMP threads used by the kernels (default: torch.get_num_threads() at call time)."""
    global _num_threads
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    _num_threads = int(n)


def _threads() -> int:
    return _num_threads or torch.get_num_threads()


def pack_int4(q: torch.Tensor, scales: torch.Tensor, group_size: int) -> PackedInt4:
    """Pack int8 values in [-8, 7] of shape [N, K] with float32 scales [N, K // group_size]."""
    if q.dtype != torch.int8 or q.dim() != 2:
        raise ValueError(f"q must be a 2-D int8 tensor, got {q.dtype} {tuple(q.shape)}")
    n, k = q.shape
    if k % CHUNK:
        raise ValueError(f"in_features must be a multiple of {CHUNK}, got {k}")
    if group_size != k and (group_size % 32 or k % group_size or group_size <= 0):
        raise ValueError(f"group_size must be K or a multiple of 32 dividing K={k}, got {group_size}")
    if tuple(scales.shape) != (n, k // group_size):
        raise ValueError(f"scales must have shape {(n, k // group_size)}, got {tuple(scales.shape)}")
    if q.numel() and (int(q.min()) < -8 or int(q.max()) > 7):
        raise ValueError("int4 values must lie in [-8, 7]")
    tiles, seg = -(-n // ROWS), _segment(k)
    u = torch.zeros(tiles * ROWS, k, dtype=torch.uint8)
    u[:n] = (q.to(torch.int16) + 8).to(torch.uint8)
    u = u.view(tiles, ROWS, k // seg, seg // CHUNK, 2, 32)  # [T, R, S, C, lo/hi, 32]
    data = (u[..., 0, :] | (u[..., 1, :] << 4)).permute(2, 0, 3, 1, 4).contiguous()
    return PackedInt4(data, scales.to(torch.float32).contiguous(), n, k, group_size)


def _segment(k: int) -> int:
    return SEGMENT if k % SEGMENT == 0 else k


def unpack_int4(w: PackedInt4) -> torch.Tensor:
    """Exact inverse of pack_int4: int8 [N, K]."""
    k, seg = w.in_features, _segment(w.in_features)
    d = w.data.view(k // seg, -1, seg // CHUNK, ROWS, 32)  # [S, T, C, R, 32]
    u = torch.stack((d & 0x0F, d >> 4), dim=4)  # [S, T, C, R, lo/hi, 32]
    u = u.permute(1, 3, 0, 2, 4, 5).reshape(-1, k)[: w.out_features]
    return (u.to(torch.int8) - 8).contiguous()


def dequantize_int4(w: PackedInt4, out: torch.Tensor | None = None, level: str | None = None) -> torch.Tensor:
    """float32 [N, K] = q * scale (exact); writes into `out` (a reusable scratch) if given."""
    n, k = w.out_features, w.in_features
    if out is None:
        out = torch.empty(n, k, dtype=torch.float32)
    elif out.dtype != torch.float32 or tuple(out.shape) != (n, k) or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 tensor of shape {(n, k)}")
    if _fast(level):
        _check_int4(w)
        _ext.int4_dequant(w.data.data_ptr(), w.scales.data_ptr(), n, k, w.group_size, out.data_ptr(), _threads())
    else:
        scales = w.scales.repeat_interleave(w.group_size, dim=1)
        torch.mul(unpack_int4(w).to(torch.float32), scales, out=out)
    return out


def _prep(x: torch.Tensor, k: int, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if x.shape[-1] != k:
        raise ValueError(f"expected last dimension {k}, got {tuple(x.shape)}")
    x2 = x.reshape(-1, k).to(torch.float32).contiguous()
    if bias is not None:
        bias = bias.to(torch.float32).contiguous()
    return x2, bias


def _check_int4(w: PackedInt4) -> None:
    """O(1) checks before raw pointers go to C (PackedInt4 may be built from a file)."""
    n, k, g = w.out_features, w.in_features, w.group_size
    ok = (k % CHUNK == 0 and g > 0 and k % g == 0 and (g == k or g % 32 == 0)
          and w.data.dtype == torch.uint8 and w.data.is_contiguous() and w.data.device.type == "cpu"
          and w.data.numel() == -(-n // ROWS) * ROWS * k // 2
          and w.scales.dtype == torch.float32 and w.scales.is_contiguous() and w.scales.numel() == n * (k // g))
    if not ok:
        raise ValueError(f"malformed PackedInt4 (N={n}, K={k}, group={g}, data {w.data.dtype} "
                         f"{tuple(w.data.shape)}, scales {w.scales.dtype} {tuple(w.scales.shape)})")


def _check_bias(bias: torch.Tensor | None, n: int) -> None:
    if bias is not None and bias.numel() != n:
        raise ValueError(f"bias must have {n} elements, got {bias.numel()}")


def _scratch_view(n: int, k: int) -> torch.Tensor:
    """A reusable float32 [n, k] buffer (grows to the largest weight seen; caller holds the lock)."""
    global _scratch
    if _scratch is None or _scratch.numel() < n * k:
        _scratch = None  # free the old buffer before allocating the bigger one
        _scratch = torch.empty(n * k, dtype=torch.float32)
    return _scratch[: n * k].view(n, k)


def int4_linear(x: torch.Tensor, w: PackedInt4, bias: torch.Tensor | None = None,
                level: str | None = None) -> torch.Tensor:
    """float32 [..., K] -> float32 [..., N] = x @ dequant(w).T (+ bias)."""
    x2, bias = _prep(x, w.in_features, bias)
    m, n = x2.shape[0], w.out_features
    _check_bias(bias, n)
    if not _fast(level):
        return F.linear(x2, dequantize_int4(w, level="pytorch"), bias).view(*x.shape[:-1], n)
    _check_int4(w)
    if m >= BF16_MIN_ROWS and (level or available_levels()[0]) == "avx512-bf16" \
            and "avx512-bf16" in available_levels():  # never the AVX-512 code on a CPU without it
        y = _int4_linear_bf16(x2, w)
        if bias is not None:
            y += bias
    elif m >= PREFILL_MIN_ROWS:
        with _scratch_lock:
            y = F.linear(x2, dequantize_int4(w, _scratch_view(n, w.in_features)), bias)
    else:
        y = torch.empty(m, n, dtype=torch.float32)
        _ext.int4_mm(x2.data_ptr(), m, w.in_features, w.data.data_ptr(), w.scales.data_ptr(), n,
                     w.group_size, y.data_ptr(), bias.data_ptr() if bias is not None else 0, _threads())
    return y.view(*x.shape[:-1], n)


def _int4_linear_bf16(x2: torch.Tensor, w: PackedInt4) -> torch.Tensor:
    """x2 [M, K] float32 -> [M, N] float32 through bfloat16: slices of the weight's rows unpacked by the AVX-512
    kernel into a small scratch (~16 MB, not the whole 134 MB weight: peak memory stays put), each multiplied by
    oneDNN's bf16 GEMM (float32 accumulation; inputs and outputs rounded to bfloat16). The bfloat16 input and
    product live in reused buffers too: fresh ones are fresh memory maps under the app's allocator setting
    (model.memory), and their page faults cost ~10% of a prefill."""
    m, k, n = x2.shape[0], w.in_features, w.out_features
    y = torch.empty(m, n, dtype=torch.float32)
    rows = max(ROWS, (_BF16_SCRATCH_VALUES // k) // ROWS * ROWS)
    with _scratch_lock:
        weights = _bf16_buffer("weights", rows * k)
        xb = _bf16_buffer("input", m * k)[: m * k].view(m, k)
        xb.copy_(x2)
        product = _bf16_buffer("product", m * rows)
        for first in range(0, n, rows):
            count = min(rows, n - first)
            part = weights[: count * k].view(count, k)
            _ext.int4_dequant_bf16(w.data.data_ptr(), w.scales.data_ptr(), n, k, w.group_size, part.data_ptr(),
                                   first, count, _threads())
            out = product[: m * count].view(m, count)
            torch.mm(xb, part.t(), out=out)
            y[:, first:first + count] = out
    return y


def _bf16_buffer(name: str, size: int) -> torch.Tensor:
    """A reused bfloat16 buffer of at least `size` values (grows to the largest asked for; caller holds the lock)."""
    buffer = _bf16_buffers.get(name)
    if buffer is None or buffer.numel() < size:
        _bf16_buffers.pop(name, None)  # free the old one before allocating the bigger one
        with torch.inference_mode(False):  # a normal tensor: written in place both in and out of inference mode
            buffer = _bf16_buffers[name] = torch.empty(size, dtype=torch.bfloat16)
    return buffer


def pack_torch_int4(q: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 values [N, K] in [-8, 7] and float32 scales [N, K / group] -> PyTorch's packed CPU int4 weight and its
    bfloat16 (scale, zero) pairs [K / group, N, 2]: it dequantizes `(u - 8) * scale + zero`, u = q + 8."""
    from chatglm_tui.model.quantize import int4pack_scales  # pure arithmetic; keeps this module's imports torch-only

    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu((q.to(torch.int32) + 8).contiguous(), 1)
    return packed, int4pack_scales(scales)


def torch_int4_linear(x: torch.Tensor, packed: torch.Tensor, group: int, scales_zeros: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """float32 [..., K] -> float32 [..., N] through PyTorch's packed int4 CPU matmul (bfloat16 activations)."""
    k, n = scales_zeros.shape[0] * group, scales_zeros.shape[1]
    x2 = x.reshape(-1, k).to(torch.bfloat16).contiguous()
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, packed, group, scales_zeros).float()
    if bias is not None:
        y += bias
    return y.view(*x.shape[:-1], n)


def pack_int8(q: torch.Tensor, scales: torch.Tensor) -> PackedInt8:
    """Wrap int8 [N, K] values (K a multiple of 32) with per-row float32 scales [N]."""
    if q.dtype != torch.int8 or q.dim() != 2:
        raise ValueError(f"q must be a 2-D int8 tensor, got {q.dtype} {tuple(q.shape)}")
    n, k = q.shape
    if k % 32:
        raise ValueError(f"in_features must be a multiple of 32, got {k}")
    if tuple(scales.shape) != (n,):
        raise ValueError(f"scales must have shape {(n,)}, got {tuple(scales.shape)}")
    return PackedInt8(q.contiguous(), scales.to(torch.float32).contiguous(), n, k)


def int8_linear(x: torch.Tensor, w: PackedInt8, bias: torch.Tensor | None = None,
                level: str | None = None) -> torch.Tensor:
    """float32 [..., K] -> float32 [..., N] = x @ (q * scale).T (+ bias); int kernel for every M."""
    x2, bias = _prep(x, w.in_features, bias)
    m, n = x2.shape[0], w.out_features
    _check_bias(bias, n)
    if level == "torch":  # PyTorch's int8 weight-only matmul: fast only with bfloat16 activations
        y = torch._weight_int8pack_mm(x2.to(torch.bfloat16), w.data, w.scales.to(torch.bfloat16)).float()
        if bias is not None:
            y += bias
    elif _fast(level):
        data, scales = w.data, w.scales
        if (n * w.in_features != data.numel() or w.in_features % 32 or data.dtype != torch.int8
                or not data.is_contiguous() or scales.dtype != torch.float32 or scales.numel() != n
                or not scales.is_contiguous()):
            raise ValueError(f"malformed PackedInt8 (N={n}, K={w.in_features}, data {data.dtype} {tuple(data.shape)})")
        y = torch.empty(m, n, dtype=torch.float32)
        _ext.int8_mm(x2.data_ptr(), m, w.in_features, w.data.data_ptr(), w.scales.data_ptr(), n,
                     y.data_ptr(), bias.data_ptr() if bias is not None else 0, _threads())
    else:  # dequantise in row chunks: the full lm_head in float32 would be 2 GB
        y = torch.empty(m, n, dtype=torch.float32)
        step = max(1, (1 << 25) // w.in_features)
        for a in range(0, n, step):
            wf = w.data[a : a + step].to(torch.float32) * w.scales[a : a + step, None]
            y[:, a : a + step] = F.linear(x2, wf, None if bias is None else bias[a : a + step])
    return y.view(*x.shape[:-1], n)
