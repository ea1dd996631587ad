"""CUDA: both resident modes, graph vs eager, the memory-fit errors (run where CUDA exists; skipped elsewhere).

`make gpu-check` runs this file and the GPU benches in one call on a bare GPU machine.
"""

from __future__ import annotations

import json

import pytest
import torch

from chatglm_tui.errors import DeviceError
from chatglm_tui.model import load_model
from chatglm_tui.model.backends import CudaBackend, ExactBackend, select_backend
from chatglm_tui.model.backends.tinygemm import (
    DEQUANTIZE_MIN_ROWS,
    Dequantizer,
    TinyGemmInt4Linear,
    tinygemm_available,
)
from chatglm_tui.model.kernels import cpu as cpu_kernels
from chatglm_tui.model.checkpoint import Checkpoint
from chatglm_tui.model.config import PRESETS
from chatglm_tui.model.loading import load
from chatglm_tui.model.quantize import QuantizedLinear

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
needs_tinygemm = pytest.mark.skipif(not torch.cuda.is_available() or not tinygemm_available(torch.device("cuda")),
                                    reason="needs torch's int4 tinygemm kernel (sm80+, CUDA 12+)")
PROMPT = [5, 74874, 130001, 130004]
CUDA = torch.device("cuda")


def _teacher_forced(backend, model, prompt: list[int], tokens: list[int]) -> list[torch.Tensor]:
    """The logits after the prompt and after each of `tokens`, fed one at a time (the decode path)."""
    session = backend.session(model, len(prompt) + len(tokens) + 1)
    with torch.inference_mode():
        out = [session.prefill(prompt)[0].float().cpu()]
        for offset, token in enumerate(tokens):
            out.append(session.step(token, len(prompt) + offset)[0].float().cpu())
    return out


def _greedy(glm, prompt: list[int], n: int) -> list[int]:
    session = glm.backend.session(glm.model, len(prompt) + n + 1)
    ids: list[int] = []
    with torch.inference_mode():
        logits = session.prefill(prompt)
        for index in range(len(prompt), len(prompt) + n):
            ids.append(int(logits[0].argmax()))
            logits = session.step(ids[-1], index)
    return ids


@pytest.mark.parametrize("layout", ["fp16", "int4"])
def test_cuda_float32_reproduces_the_reference(fixture_dir, reference, layout):
    glm = load_model(fixture_dir / layout, device="cuda", dtype="float32")
    assert isinstance(glm.backend, ExactBackend)
    ref = reference if layout == "fp16" else reference["int4"]
    for item in ref["logits"]:
        logits = glm.logits(item["input_ids"])[-1].cpu()
        values, ids = logits.topk(10)
        assert ids.tolist() == item["top10_ids"]
        torch.testing.assert_close(values, torch.tensor(item["top10_values"]), atol=1e-3, rtol=0)


@pytest.mark.parametrize("layout,quantization", [("int4", None), ("fp16", "int4"), ("fp16", None)])
def test_fp16_resident_is_the_exact_float16_arithmetic(fixture_dir, layout, quantization):
    """Same float16 weights as the original's GPU path, so the same greedy choices: fed the exact path's tokens,
    fp16-resident picks the same next token at every step but at a near-tie (where float16 rounding in a
    different attention kernel may decide)."""
    exact = load_model(fixture_dir / layout, quantization=quantization, device="cuda", backend="exact",
                       dtype="float16")
    resident = load_model(fixture_dir / layout, quantization=quantization, device="cuda")  # auto: it fits
    assert resident.backend.describe().startswith("cuda: fp16-resident")
    exact_weights = {n: m.dequantized_weight(torch.float16) if isinstance(m, QuantizedLinear) else m.weight
                     for n, m in exact.model.named_modules() if hasattr(m, "weight") and "layernorm" not in n}
    for name, module in resident.model.named_modules():
        if name in exact_weights:
            assert torch.equal(module.weight, exact_weights[name]), name
    torch.testing.assert_close(resident.logits(PROMPT), exact.logits(PROMPT), atol=2e-3, rtol=2e-3)
    tokens = _greedy(exact, PROMPT, 40)
    expected = _teacher_forced(exact.backend, exact.model, PROMPT, tokens)
    actual = _teacher_forced(resident.backend, resident.model, PROMPT, tokens)
    for step, (e, a) in enumerate(zip(expected, actual)):
        if int(a.argmax()) != int(e.argmax()):
            gap = float(e.max() - e[int(a.argmax())])
            assert gap < 2e-3 * float(e.abs().max()), f"step {step}: a different token where there is no tie"


@needs_tinygemm
@pytest.mark.parametrize("layout,quantization", [("int4", None), ("fp16", "int4")])
def test_int4_resident_layers_compute_the_stored_weights(fixture_dir, layout, quantization):
    glm = load_model(fixture_dir / layout, quantization=quantization, device="cuda", backend="cuda-int4")
    exact = load_model(fixture_dir / layout, quantization=quantization, device="cpu", backend="cpu-portable")
    assert glm.backend.describe().startswith("cuda: int4-resident")
    layers = {n: m for n, m in glm.model.named_modules() if isinstance(m, TinyGemmInt4Linear)}
    assert len(layers) == 4 * glm.config.num_layers
    cpu_layers = dict(exact.model.named_modules())
    for name, layer in layers.items():
        x = torch.randn(5, layer.in_features, generator=torch.Generator().manual_seed(1))
        reference = cpu_layers[name](x)  # exact float32 math on the same int4 values and (float32) scales
        got = layer(x.to(CUDA, torch.bfloat16)).float().cpu()
        error = float((got - reference).norm() / reference.norm())
        assert error < 2e-2, f"{name}: relative error {error:.3g} (the packing is wrong if this is ~1)"


@needs_tinygemm
@pytest.mark.parametrize("layout,quantization", [("int4", None), ("fp16", "int4")])
def test_long_prompts_use_the_unpacked_int4_weights(fixture_dir, layout, quantization):
    """tinygemm's layout is understood here: every layer unpacks to exactly q * scale, and many rows go through
    the unpacked weight (cuBLAS) with tinygemm's own result."""
    glm = load_model(fixture_dir / layout, quantization=quantization, device="cuda", backend="cuda-int4")
    cpu = load_model(fixture_dir / layout, quantization=quantization, device="cpu", backend="cpu-portable")
    cpu_layers = dict(cpu.model.named_modules())
    layers = {n: m for n, m in glm.model.named_modules() if isinstance(m, TinyGemmInt4Linear)}
    assert all(layer.dequantizer is not None for layer in layers.values()), "tinygemm's layout was not understood"
    for name, layer in layers.items():
        reference = cpu_layers[name]
        q = cpu_kernels.unpack_int4(reference.packed()).float()
        scales = reference.weight_scales.to(torch.bfloat16).float().repeat_interleave(reference.group_size, dim=1)
        expected = (q * scales).to(torch.bfloat16)
        exact = Dequantizer(layer.dequantizer.layouts, CUDA, use_triton=False).weight(layer).cpu()
        assert torch.equal(exact, expected), name
        # the one the model uses (Triton where it runs): at most one bfloat16 rounding away
        torch.testing.assert_close(layer.dequantizer.weight(layer).cpu(), expected, rtol=2 ** -8, atol=0)
        x = torch.randn(DEQUANTIZE_MIN_ROWS, layer.in_features, device=CUDA).to(torch.bfloat16)
        fused = torch.ops.aten._weight_int4pack_mm(x, layer.weight_packed, layer.group_size,
                                                   layer.weight_scales_zeros).float()
        unpacked = (layer(x) - layer.bias).float()
        assert float((fused - unpacked).norm() / fused.norm()) < 1e-2, name


@needs_tinygemm
def test_int4_resident_stays_close_to_the_original(fixture_dir, reference):
    glm = load_model(fixture_dir / "int4", device="cuda", backend="cuda-int4")
    for item in reference["int4"]["logits"]:
        values = glm.logits(item["input_ids"])[-1].cpu().topk(10).values
        expected = torch.tensor(item["top10_values"])
        assert float((values - expected).abs().max() / expected.abs().max()) < 0.05
    assert len(_greedy(glm, PROMPT, 8)) == 8


@pytest.mark.parametrize("mode", ["fp16", pytest.param("int4", marks=needs_tinygemm)])
def test_graph_and_eager_decode_agree(fixture_dir, mode):
    """300 decode steps cross the first attention window (256): each window's graph (all captured at load)
    equals the eager step."""
    checkpoint = Checkpoint.open(fixture_dir / "int4")
    graphed = CudaBackend(CUDA, mode, 4)
    eager = CudaBackend(CUDA, mode, 4, graphs=False)
    graph_model, eager_model = load(checkpoint, graphed), load(checkpoint, eager)
    tokens = [int(t) for t in torch.randint(5, 20000, (300,), generator=torch.Generator().manual_seed(0))]
    with_graph = _teacher_forced(graphed, graph_model, PROMPT, tokens)
    runner = graphed._runners[id(graph_model)]
    assert runner.graphs and sorted(runner.captured) == list(range(256, 2049, 256)), "not captured at load"
    without = _teacher_forced(eager, eager_model, PROMPT, tokens)
    for step, (g, e) in enumerate(zip(with_graph, without)):
        assert torch.equal(g, e), f"step {step}"
    # a second reply on the same model reuses the captured graphs (and the cache) and starts clean
    again = _teacher_forced(graphed, graph_model, PROMPT, tokens[:20])
    for step, (g, e) in enumerate(zip(again, without)):
        assert torch.equal(g, e), f"second reply, step {step}"


def test_memory_fit_errors_name_the_option_that_fits():
    config = PRESETS["6b"]
    with pytest.raises(DeviceError, match=r"float16-resident weights need 1\d\.\d GB .* has 6\.0 GB free: use "):
        select_backend(CUDA, "float16", config, 4, free_memory=6_000_000_000)
    small = select_backend(CUDA, "auto", config, 4, free_memory=6_000_000_000)
    big = select_backend(CUDA, "auto", config, 4, free_memory=80_000_000_000)
    assert big.describe().startswith("cuda: fp16-resident")
    if tinygemm_available(CUDA):
        assert small.describe().startswith("cuda: int4-resident")
        with pytest.raises(DeviceError, match=r"int4-resident weights need \d\.\d GB .* use --device cpu"):
            select_backend(CUDA, "auto", config, 4, free_memory=2_000_000_000)
    else:
        assert isinstance(small, ExactBackend)


def test_auto_device_is_the_gpu(fixture_dir):
    glm = load_model(fixture_dir / "int4")
    assert glm.device.type == "cuda" and glm.backend.name == "cuda"


@pytest.mark.parametrize("backend", ["cuda-fp16", pytest.param("cuda-int4", marks=needs_tinygemm)])
def test_bench_on_the_gpu(backend):
    from typer.testing import CliRunner

    from chatglm_tui.cli import app

    result = CliRunner().invoke(app, ["bench", "--config", "tiny", "--prompt-tokens", "64", "--new-tokens", "8",
                                      "--backend", backend, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["device"].startswith("cuda") and report["gpu_peak_bytes"] > 0
    assert report["backend"].startswith("cuda: " + backend.removeprefix("cuda-"))
    assert report["decode_tokens_per_s"] > 0


def test_sampled_replies_run_on_the_gpu(fixture_dir):
    """chat()'s defaults sample: the draw uses the sampler's CPU generator whatever device the logits are on,
    and a seed repeats the reply."""
    glm = load_model(fixture_dir / "int4", device="cuda")
    first = glm.chat("你好", max_new_tokens=12, seed=7)
    assert first and glm.chat("你好", max_new_tokens=12, seed=7) == first
