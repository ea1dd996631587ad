"""Prefill plus step-by-step decoding with the KV cache equals one full forward pass."""

from __future__ import annotations

import pytest
import torch

from chatglm_tui.model.generate import position_ids, prompt_layout
from chatglm_tui.model.kv_cache import KVCache


def test_cached_decoding_equals_full_forward(tiny_fp16):
    glm = tiny_fp16
    model, config = glm.model, glm.config
    prompt = glm.tokenizer.encode("[Round 0]\n问：你好\n答：你好👋！\n[Round 1]\n问：再见\n答：")
    continuation = [82771, 85182, 104115, 23619, 5, 6, 4, 98724]  # arbitrary generated tokens
    ids = prompt + continuation
    context_length, mask_position = prompt_layout(prompt, model)
    full = glm.logits(ids)  # one pass over everything, no cache

    cache = KVCache(config.num_layers, 1, config.num_attention_heads, len(ids), config.head_dim,
                    torch.float32, "cpu")
    with torch.inference_mode():
        pos = position_ids(0, len(prompt), context_length, mask_position, torch.device("cpu"))
        step_logits = [model(torch.tensor([prompt]), pos, context_length, cache, 0)[0]]
        for index in range(len(prompt), len(ids)):
            pos = position_ids(index, index + 1, context_length, mask_position, torch.device("cpu"))
            step_logits.append(model(torch.tensor([[ids[index]]]), pos, context_length, cache, index)[0])
    stepped = torch.cat(step_logits)
    torch.testing.assert_close(stepped, full, atol=1e-4, rtol=1e-4)
    # and the logits differ from position to position, so the comparison above is not vacuous
    assert not torch.allclose(full[-1], full[-2])


def test_position_ids_follow_the_original_layout(tiny_fp16):
    ids = tiny_fp16.tokenizer.encode("你好")  # [5, 74874, 130001, 130004]
    context_length, mask_position = prompt_layout(ids, tiny_fp16.model)
    assert (context_length, mask_position) == (3, 2)
    pos = position_ids(0, 6, context_length, mask_position, torch.device("cpu"))[0]
    assert pos[0].tolist() == [0, 1, 2, 2, 2, 2]
    assert pos[1].tolist() == [0, 0, 0, 1, 2, 3]


def test_float16_cache_with_the_decode_kernel_matches_float32_attention():
    import torch.nn.functional as F

    from chatglm_tui.model.kernels import attention

    torch.manual_seed(0)
    for heads, length, dim in ((4, 7, 16), (32, 300, 128)):
        keys = torch.randn(1, heads, length + 9, dim).half()[:, :, :length]  # a view into a larger cache
        values = torch.randn(1, heads, length + 9, dim).half()[:, :, :length]
        q = torch.randn(1, heads, 1, dim)
        expected = F.scaled_dot_product_attention(q, keys.float(), values.float())
        torch.testing.assert_close(attention.decode_attention(q, keys, values), expected, atol=1e-5, rtol=1e-4)


def test_fast_model_cached_decoding_equals_full_forward(fixture_dir):
    from chatglm_tui.model import load_model

    glm = load_model(fixture_dir / "int4", device="cpu")  # int4 kernels, float16 KV cache
    if glm.backend.name != "cpu":
        pytest.skip("the fixture's sizes do not fit the fast kernels")
    prompt = glm.tokenizer.encode("你好，请介绍一下你自己")
    continuation = [82771, 85182, 104115, 5, 6]
    full = glm.logits(prompt + continuation)
    model, config = glm.model, glm.config
    context_length, mask_position = prompt_layout(prompt, model)
    cache = glm.backend.kv_cache(config, len(prompt) + len(continuation))
    assert cache.keys.dtype == torch.float16
    cpu = torch.device("cpu")
    with torch.inference_mode():
        steps = [model(torch.tensor([prompt]), position_ids(0, len(prompt), context_length, mask_position, cpu),
                       context_length, cache, 0)[0]]
        for offset, token in enumerate(continuation[:-1]):
            index = len(prompt) + offset
            pos = position_ids(index, index + 1, context_length, mask_position, cpu)
            steps.append(model(torch.tensor([[token]]), pos, context_length, cache, index)[0])
    stepped = torch.cat(steps)
    # The prompt's rows are computed exactly as in the full pass; decode steps read float16 copies of the keys
    # and values (as the original does on a GPU). This random tiny model amplifies that rounding (5e-4) about
    # 40 times, to ~2% of the largest logit (the bound leaves room for other random fixtures); with a float32
    # cache the steps agree to 1e-6.
    scale = full.abs().max()
    torch.testing.assert_close(stepped[: len(prompt)], full[: len(prompt)], atol=1e-4, rtol=1e-4)
    assert float((stepped - full[: stepped.shape[0]]).abs().max() / scale) < 0.10
