"""`chatglm bench` runs end to end on the tiny config and reports consistent numbers."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from chatglm_tui.cli import app


def test_bench_tiny_json():
    result = CliRunner().invoke(app, ["bench", "--config", "tiny", "--prompt-tokens", "24", "--new-tokens", "5",
                                      "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["config"] == "tiny" and report["quantization"] == "int4-g128" and report["threads"] >= 1
    assert report["prompt_tokens"] == 24 and report["new_tokens"] == 5
    assert report["source"] == "random weights"
    for key in ("load_s", "prefill_s", "prefill_tokens_per_s", "decode_s", "decode_tokens_per_s",
                "bandwidth_bytes_per_s", "decode_bound_tokens_per_s"):
        assert report[key] > 0, key
    assert report["time_to_first_token_s"] >= report["prefill_s"]
    assert report["peak_rss_bytes"] > report["weight_bytes"] > 0
    assert abs(report["decode_bound_tokens_per_s"] - report["bandwidth_bytes_per_s"] / report["bytes_per_token"]) < 1e-6


def test_bench_table_and_bad_options():
    runner = CliRunner()
    table = runner.invoke(app, ["bench", "--config", "tiny", "--quantization", "int8", "--prompt-tokens", "8",
                                "--new-tokens", "2"])
    assert table.exit_code == 0, table.output
    assert "int8-row" in table.output and "tokens/s" in table.output and "peak RSS" in table.output
    too_long = runner.invoke(app, ["bench", "--config", "tiny", "--prompt-tokens", "2040", "--new-tokens", "20"])
    assert too_long.exit_code != 0


def test_bench_loads_a_checkpoint(fixture_dir):
    result = CliRunner().invoke(app, ["bench", "--model", str(fixture_dir / "int4"), "--prompt-tokens", "16",
                                      "--new-tokens", "3", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["source"].endswith("int4") and report["quantization"].startswith("int4-row")


def test_bench_exact_path_on_the_cpu():
    # The code path the GPU bench uses (official per-row layout, dequantized per call), here on the CPU.
    result = CliRunner().invoke(app, ["bench", "--config", "tiny", "--dtype", "float32", "--prompt-tokens", "12",
                                      "--new-tokens", "3", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["quantization"] == "int4-row exact float32" and report["device"] == "cpu"
    assert report["gpu_peak_bytes"] == 0 and report["decode_tokens_per_s"] > 0
