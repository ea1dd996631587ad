"""`chatglm bench`: load, prefill and decode speed and memory (or, with --ui, the chat app's latency)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer

from chatglm_tui.cli.output import echo

if TYPE_CHECKING:
    from chatglm_tui.model.bench import BenchResult


def bench(
    config: str = typer.Option("6b", help="Model size: 6b (ChatGLM-6B) or tiny."),
    quantization: str = typer.Option("int4", help="int4 or int8."),
    prompt_tokens: int = typer.Option(512, help="Length of the random prompt to prefill."),
    new_tokens: int = typer.Option(128, help="Tokens to decode after it."),
    threads: int = typer.Option(0, help="Threads (0: torch's default, the physical cores)."),
    group_size: int = typer.Option(0, help="int4 inputs per scale (0: the default, 128)."),
    model: str = typer.Option("", help="Load this checkpoint directory instead of random weights "
                                       "(measures the real load, through the quantized cache)."),
    device: str = typer.Option("auto", help="auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", help="auto (the fast int4/int8 kernels on the CPU; on GPUs float16-resident "
                                           "weights when they fit, else int4-resident), float32 (the exact path), "
                                           "bfloat16 or float16."),
    backend: str = typer.Option("auto", help="auto, exact, cpu, cpu-portable, cuda-fp16 or cuda-int4: force one "
                                             "(auto: chosen from device, dtype and free GPU memory)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
    ui: bool = typer.Option(False, "--ui", help="Measure the chat app instead: keystroke-to-screen latency "
                                                "while a reply streams, opening a 500-message chat (in a "
                                                "pseudo-terminal; with --model, the real engine generates)."),
) -> None:
    """Measure load, prefill and decode speed and memory on random weights (no download)."""
    if ui:
        from chatglm_tui.cli.ui_bench import format_ui_table, run_ui_bench

        ui_result = run_ui_bench(model or None)
        echo(json.dumps(ui_result.summary()) if as_json else format_ui_table(ui_result))
        return
    from chatglm_tui import paths
    from chatglm_tui.model.bench import run_bench

    result = run_bench(config, quantization, prompt_tokens, new_tokens, threads or None, group_size or None,
                       model or None, device, dtype, backend, paths.quantized_cache_dir())
    echo(result.to_json() if as_json else format_table(result))


def format_table(result: BenchResult) -> str:
    """The human-readable report (stable layout)."""
    gb = 1e9
    lines = [
        f"chatglm bench: config {result.config}, {result.quantization}, {result.device}, {result.threads} threads",
        f"  backend                  {result.backend}",
        f"  load ({result.source})".ljust(27) + f"{result.load_s:8.2f} s     weights {result.weight_bytes / gb:.2f} GB",
        f"  prefill {result.prompt_tokens:5d} tokens     {result.prefill_s:8.2f} s     "
        f"{result.prefill_tokens_per_s:7.2f} tokens/s",
        f"  time to first token      {result.time_to_first_token_s:8.2f} s",
        f"  decode  {result.new_tokens:5d} tokens     {result.decode_s:8.2f} s     "
        f"{result.decode_tokens_per_s:7.2f} tokens/s   (median {result.decode_median_ms:.0f} ms/token)",
        f"  decode, sampled          {result.sampled_decode_tokens_per_s:7.2f} tokens/s at chat()'s defaults "
        f"(sampling median {result.sampling_median_ms:.2f} ms/token)",
        f"  peak RSS                 {result.peak_rss_bytes / gb:8.2f} GB    ({result.peak_rss_bytes / 2**30:.2f} GiB)"
        + (f"   GPU peak {result.gpu_peak_bytes / gb:.2f} GB" if result.gpu_peak_bytes else ""),
        f"  memory read bandwidth    {result.bandwidth_bytes_per_s / gb:8.2f} GB/s  -> decode bound "
        f"{result.decode_bound_tokens_per_s:.2f} tokens/s ({result.bytes_per_token / gb:.2f} GB/token); "
        f"decode reaches {100 * result.decode_tokens_per_s / result.decode_bound_tokens_per_s:.0f}% of it",
    ]
    return "\n".join(lines)
