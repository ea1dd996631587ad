"""CUDA: the same API on a GPU (run where CUDA exists; skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch

from chatglm_tui.model import load_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("layout", ["fp16", "int4"])
def test_cuda_float32_reproduces_the_reference(fixture_dir, reference, layout):
    glm = load_model(fixture_dir / layout, device="cuda", dtype="float32")
    ref = reference if layout == "fp16" else reference["int4"]
    for item in ref["logits"]:
        logits = glm.logits(item["input_ids"])[-1].cpu()
        values, ids = logits.topk(10)
        assert ids.tolist() == item["top10_ids"]
        torch.testing.assert_close(values, torch.tensor(item["top10_values"]), atol=1e-3, rtol=0)


def test_cuda_int4_float16_runs_and_stays_close(fixture_dir, reference):
    glm = load_model(fixture_dir / "int4", device="cuda")  # auto: float16, the original GPU numerics
    assert glm.dtype == torch.float16
    for item in reference["int4"]["logits"]:
        values = glm.logits(item["input_ids"])[-1].cpu().topk(10).values
        expected = torch.tensor(item["top10_values"])
        assert float((values - expected).abs().max() / expected.abs().max()) < 0.05
    assert glm.chat("你好", do_sample=False, max_new_tokens=8)


def test_cuda_quantize_on_load(fixture_dir):
    glm = load_model(fixture_dir / "fp16", quantization="int4", device="cuda")
    assert glm.chat("你好", do_sample=False, max_new_tokens=4)


def test_bench_on_the_gpu():
    import json

    from typer.testing import CliRunner

    from chatglm_tui.cli import app

    result = CliRunner().invoke(app, ["bench", "--config", "tiny", "--device", "cuda", "--prompt-tokens", "64",
                                      "--new-tokens", "8", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["device"].startswith("cuda") and report["gpu_peak_bytes"] > 0
    assert report["quantization"] == "int4-row exact float16"
