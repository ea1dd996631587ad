"""Tests for the CPU int4/int8 kernels (fast C path and pure-PyTorch fallback).

Tolerance: the fast path quantises activations to int8 per 32 values (q8_0 style), so
its output differs from exact float32 math by ~0.5 % of the output norm (random data,
K >= 256); we allow 2e-2 per output row (relative to the row's norm) and 1e-2 on
average. The fallback path is exact dequantised float32 math.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from chatglm_tui.model.kernels import cpu

fast_only = pytest.mark.skipif(
    not cpu.is_available(), reason="C extension not built or CPU lacks AVX2/FMA/F16C: only the fallback is tested"
)


@pytest.fixture(params=list(cpu.LEVELS))
def path(request):
    """Every level this host runs (the AVX-512 one only where the CPU has AVX512_BF16)."""
    if request.param not in cpu.available_levels():
        pytest.skip(f"this CPU or build does not run the {request.param} level")
    return request.param


def _int4(n: int, k: int, g: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(-8, 8, (n, k), dtype=torch.int8, generator=gen)
    scales = torch.rand(n, k // g, generator=gen) * 0.02 + 0.001
    return q, scales


def _dequant_ref(q: torch.Tensor, scales: torch.Tensor, g: int) -> torch.Tensor:
    return q.float() * scales.repeat_interleave(g, dim=1)


def _check_close(y: torch.Tensor, ref: torch.Tensor, path: str) -> None:
    if path == "pytorch":
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
        return
    rel = (y - ref).norm(dim=-1) / ref.norm(dim=-1)
    assert rel.max() < 2e-2 and rel.mean() < 1e-2, rel


@pytest.mark.parametrize("n,k,g", [(8, 128, 32), (37, 256, 128), (5, 8192, 4096), (9, 12288, 12288)])
def test_pack_unpack_roundtrip_all_values(n: int, k: int, g: int) -> None:
    q, scales = _int4(n, k, g)
    q[0, :16] = torch.arange(-8, 8, dtype=torch.int8)  # every value appears
    w = cpu.pack_int4(q, scales, g)
    assert w.data.dtype == torch.uint8 and w.data.is_contiguous()
    assert w.data.numel() == -(-n // cpu.ROWS) * cpu.ROWS * k // 2
    assert torch.equal(cpu.unpack_int4(w), q)


@pytest.mark.parametrize("n,k,g", [(37, 256, 32), (16, 512, 128), (12, 320, 320), (4, 8192, 8192)])
def test_dequantize_exact(path: str, n: int, k: int, g: int) -> None:
    q, scales = _int4(n, k, g)
    w = cpu.pack_int4(q, scales, g)
    ref = _dequant_ref(q, scales, g)
    assert torch.equal(cpu.dequantize_int4(w, level=path), ref)
    out = torch.full((n, k), float("nan"))
    assert cpu.dequantize_int4(w, out, path) is out and torch.equal(out, ref)


@pytest.mark.parametrize("m", [1, 3, 17, 100])
@pytest.mark.parametrize("g", [32, 128, 512])  # 512 == K: one scale per row
def test_int4_linear_matches_dequant(path: str, m: int, g: int) -> None:
    n, k = 37, 512
    q, scales = _int4(n, k, g, seed=m)
    w = cpu.pack_int4(q, scales, g)
    gen = torch.Generator().manual_seed(100 + m)
    x, bias = torch.randn(m, k, generator=gen), torch.randn(n, generator=gen)
    ref = F.linear(x, _dequant_ref(q, scales, g), bias)
    _check_close(cpu.int4_linear(x, w, bias, path), ref, path)
    _check_close(cpu.int4_linear(x, w, level=path), ref - bias, path)


def test_int4_linear_segmented_and_batched_shape(path: str) -> None:
    n, k, g = 6, 8192, 8192  # two 4096-input segments; N not a multiple of 4
    q, scales = _int4(n, k, g)
    w = cpu.pack_int4(q, scales, g)
    x = torch.randn(2, 3, k, generator=torch.Generator().manual_seed(1))
    y = cpu.int4_linear(x, w, level=path)
    assert y.shape == (2, 3, n) and y.dtype == torch.float32
    _check_close(y.reshape(-1, n), F.linear(x.reshape(-1, k), _dequant_ref(q, scales, g)), path)


@fast_only
@pytest.mark.parametrize("m", [1, 40])
def test_fast_and_fallback_agree(m: int) -> None:
    q, scales = _int4(20, 256, 128)
    w = cpu.pack_int4(q, scales, 128)
    x = torch.randn(m, 256, generator=torch.Generator().manual_seed(2))
    fast = cpu.int4_linear(x, w)
    slow = cpu.int4_linear(x, w, level="pytorch")
    _check_close(fast, slow, "fast")


@fast_only
def test_prefill_path_is_exact(monkeypatch) -> None:
    monkeypatch.setattr(cpu, "PREFILL_MIN_ROWS", 4)  # force dequantise + sgemm
    q, scales = _int4(12, 256, 32)
    x = torch.randn(8, 256, generator=torch.Generator().manual_seed(3))
    y = cpu.int4_linear(x, cpu.pack_int4(q, scales, 32))
    torch.testing.assert_close(y, F.linear(x, _dequant_ref(q, scales, 32)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m", [1, 3, 17])
def test_int8_linear_matches_dequant(path: str, m: int) -> None:
    n, k = 37, 256
    gen = torch.Generator().manual_seed(m)
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
    q[0, :2] = torch.tensor([-128, 127], dtype=torch.int8)  # extremes must not overflow
    scales = torch.rand(n, generator=gen) * 0.01
    x, bias = torch.randn(m, k, generator=gen), torch.randn(n, generator=gen)
    w = cpu.pack_int8(q, scales)
    _check_close(cpu.int8_linear(x, w, bias, path), F.linear(x, q.float() * scales[:, None], bias), path)


def test_zero_activations(path: str) -> None:
    q, scales = _int4(8, 128, 64)
    w = cpu.pack_int4(q, scales, 64)
    assert torch.count_nonzero(cpu.int4_linear(torch.zeros(2, 128), w, level=path)) == 0


@pytest.mark.parametrize(
    "shape,g,msg",
    [((4, 96), 32, "multiple of 64"), ((4, 256), 48, "group_size"), ((4, 256), 96, "group_size")],
)
def test_pack_int4_rejects_bad_shapes(shape: tuple[int, int], g: int, msg: str) -> None:
    q = torch.zeros(shape, dtype=torch.int8)
    with pytest.raises(ValueError, match=msg):
        cpu.pack_int4(q, torch.ones(shape[0], max(1, shape[1] // g)), g)


def test_pack_rejects_bad_values_and_dtypes() -> None:
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        cpu.pack_int4(torch.full((4, 64), 8, dtype=torch.int8), torch.ones(4, 1), 64)
    with pytest.raises(ValueError, match="int8"):
        cpu.pack_int4(torch.zeros(4, 64, dtype=torch.int32), torch.ones(4, 1), 64)
    with pytest.raises(ValueError, match="multiple of 32"):
        cpu.pack_int8(torch.zeros(4, 48, dtype=torch.int8), torch.ones(4))
    with pytest.raises(ValueError, match="last dimension"):
        cpu.int4_linear(torch.zeros(1, 32), cpu.pack_int4(torch.zeros(4, 64, dtype=torch.int8), torch.ones(4, 1), 64))


def test_set_num_threads(path: str) -> None:
    q, scales = _int4(16, 256, 128)
    w, x = cpu.pack_int4(q, scales, 128), torch.randn(1, 256)
    try:
        cpu.set_num_threads(1)
        one = cpu.int4_linear(x, w)
        cpu.set_num_threads(2)
        torch.testing.assert_close(cpu.int4_linear(x, w), one)  # row split: identical sums
    finally:
        cpu._num_threads = None
    with pytest.raises(ValueError):
        cpu.set_num_threads(0)


@fast_only
def test_malformed_packed_weights_are_rejected() -> None:
    w = cpu.pack_int4(torch.zeros(8, 128, dtype=torch.int8), torch.ones(8, 1), 128)
    bad = cpu.PackedInt4(w.data.view(-1)[:64], w.scales, 8, 128, 128)  # e.g. a truncated file
    with pytest.raises(ValueError, match="malformed"):
        cpu.int4_linear(torch.zeros(1, 128), bad)
    bad8 = cpu.PackedInt8(torch.zeros(8, 64, dtype=torch.int8), torch.ones(8, dtype=torch.float64), 8, 64)
    with pytest.raises(ValueError, match="malformed"):
        cpu.int8_linear(torch.zeros(1, 64), bad8)


def test_prefill_buffers_serve_calls_in_and_out_of_inference_mode(path: str) -> None:
    """The bfloat16 level reuses its buffers: made under inference mode (generation), they must still take
    in-place writes outside it (a test, a script), and the other way round."""
    q, scales = _int4(12, 256, 64)
    w = cpu.pack_int4(q, scales, 64)
    x = torch.randn(40, 256, generator=torch.Generator().manual_seed(4))
    ref = F.linear(x, _dequant_ref(q, scales, 64))
    with torch.inference_mode():
        inside = cpu.int4_linear(x, w, level=path)
    _check_close(inside, ref, path)
    _check_close(cpu.int4_linear(x * 1, w, level=path), ref, path)
