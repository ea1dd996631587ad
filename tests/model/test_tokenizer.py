"""The tokenizer gives the original ids and text; the incremental decoder never loses or mangles text."""

from __future__ import annotations

import random

import pytest

from chatglm_tui.errors import CheckpointError
from chatglm_tui.model.prompt import process_response
from chatglm_tui.model.tokenizer import (
    ChatGLMTokenizer,
    IncrementalDecoder,
    _decode_whitespace,
    clean_up_tokenization,
)

# Vectors of the spec (section 4.4), taken from chatglm.cpp's tests of the original tokenizer.
SPEC_VECTORS = [
    ("你好", [5, 74874, 130001, 130004]),
    ("[Round 0]\n问：你好\n答：你好👋！我是人工智能助手 ChatGLM-6B，很高兴见到你，欢迎问我任何问题。\n[Round 1]\n问：晚上睡不着应该怎么办\n答：",
     [53, 6945, 5, 8, 42, 4, 64286, 12, 74874, 4, 67342, 12, 74874, 130328, 130247, 130233, 130227, 35, 65806, 68241,
      75890, 14132, 5388, 340, 11, 21, 222, 6, 76693, 66877, 63852, 6, 66430, 68747, 102501, 63823, 4, 52, 6945, 5, 9,
      42, 4, 64286, 12, 65450, 83400, 64213, 66846, 4, 67342, 12, 130001, 130004]),
    ("def main():\n    print('hello world')\t# greeting",
     [1616, 594, 125936, 4, 130011, 2274, 89, 7283, 398, 125686, 130008, 61, 25672, 130001, 130004]),
]


@pytest.mark.parametrize("text,ids", SPEC_VECTORS)
def test_spec_vectors(tokenizer, text, ids):
    assert tokenizer.encode(text) == ids


def test_fixture_vectors_encode_and_decode(tokenizer, reference):
    for item in reference["tokenizer"]:
        assert tokenizer.encode(item["text"]) == item["ids"], item["text"]
        assert tokenizer.decode(item["ids"]) == item["decoded"], item["text"]


def test_whitespace_special_pieces(tokenizer):
    assert tokenizer.encode("") == [130001, 130004]
    ids = tokenizer.encode_text("a" + " " * 100 + "b")
    assert 130087 in ids and 130027 in ids  # <|blank_80|> then <|blank_20|>, longest first
    assert tokenizer.decode(tokenizer.encode("a" + " " * 100 + "b\tc\n\nd")) == "a" + " " * 100 + "b\tc\n\nd"


def test_special_token_strings_follow_the_original_unless_told_otherwise(tokenizer):
    # The original maps <sop>, <eop>, <unk>, <pad>, [MASK] in text to their ids and strips the spaces around them.
    assert tokenizer.encode_text("a <eop> b") == tokenizer.encode_text("a") + [130005] + tokenizer.encode_text("b")
    assert 130005 not in tokenizer.encode_text("a <eop> b", parse_special=False)
    # [gMASK] is not one of them: in text it is plain characters.
    assert 130001 not in tokenizer.encode_text("[gMASK]")


def test_decode_skips_ids_without_a_piece_and_pad(tokenizer):
    ids = tokenizer.encode_text("你好")
    assert tokenizer.decode(ids + [130400, 130527, 3]) == tokenizer.decode(ids)
    assert tokenizer.decode([130005]) == ""


def test_decode_applies_the_originals_clean_up(tokenizer):
    assert tokenizer.decode(tokenizer.encode_text("Hello , world .")) == "Hello, world."


def test_missing_or_bad_tokenizer_file(tmp_path):
    with pytest.raises(CheckpointError, match="ice_text.model"):
        ChatGLMTokenizer.from_dir(tmp_path)
    (tmp_path / "ice_text.model").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a SentencePiece model"):
        ChatGLMTokenizer.from_dir(tmp_path)


def _stream(tokenizer, ids, **kwargs):
    decoder = IncrementalDecoder(tokenizer, **kwargs)
    deltas = [decoder.add([token]) for token in ids]
    deltas.append(decoder.flush())
    return deltas


def test_incremental_decoder_holds_back_half_characters(tokenizer):
    ids = tokenizer.encode_text("hi 👋 there")
    deltas = _stream(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids)
    assert not any("\ufffd" in d for d in deltas)


def test_incremental_decoder_round_trips_random_token_streams(tokenizer):
    rng = random.Random(7)
    pool = (tokenizer.encode_text("你好, world! It's a test. 中文：标点？ [[训练时间]] don't\n\t  x")
            + list(range(130088, 130344, 7)) + [5, 6, 4, 130008, 130009, 130030, 130400])
    for _ in range(200):
        ids = [rng.choice(pool) for _ in range(rng.randint(1, 30))]
        deltas = _stream(tokenizer, ids, finalize=process_response,
                         pending=IncrementalDecoder(tokenizer).pending + ("[[训练时间]]",), hold_chars=",!:;?")
        assert "".join(deltas) == process_response(tokenizer.decode(ids)), ids


def _original_postprocess(text: str) -> str:
    """The original ChatGLM tokenizer's whitespace post-processing, verbatim (SPTokenizer.postprocess)."""
    text = text.replace("<n>", "\n").replace("<|tab|>", "\t")
    for n in range(2, 81):
        text = text.replace(f"<|blank_{n}|>", " " * n)
    return text


# Look-alikes the original leaves as they are: leading zeros, non-ASCII digits (which `\d` and int() accept),
# numbers outside 2..80, signs, spaces; and the real pieces at both ends of the range, which become spaces.
BLANK_LOOKALIKES = ["<|blank_02|>", "<|blank_080|>", "<|blank_٢|>", "<|blank_２|>", "<|blank_1|>", "<|blank_81|>",
                    "<|blank_0|>", "<|blank_100|>", "<|blank_+2|>", "<|blank_ 2|>", "<|blank_2 |>", "<|blank_|>"]


@pytest.mark.parametrize("piece", BLANK_LOOKALIKES)
def test_only_exact_blank_pieces_decode_to_spaces(tokenizer, piece):
    assert _decode_whitespace(f"a{piece}b") == f"a{piece}b"
    ids = tokenizer.encode_text(f"a{piece}b")
    assert tokenizer.decode(ids) == clean_up_tokenization(_original_postprocess(tokenizer.sp.DecodeIds(ids)))


def test_blank_lookalikes_round_trip_as_text(tokenizer):
    # (SentencePiece's NFKC turns a fullwidth "２" into "2" while encoding, as in the original, so it is not here.)
    for piece in ("<|blank_02|>", "<|blank_080|>", "<|blank_٢|>", "<|blank_1|>", "<|blank_81|>"):
        assert tokenizer.decode(tokenizer.encode(f"x {piece} y")) == f"x {piece} y"


def test_blank_pieces_two_to_eighty_are_spaces(tokenizer):
    for n in (2, 9, 10, 79, 80):
        assert tokenizer.decode(tokenizer.encode_text(f"a<|blank_{n}|>b")) == "a" + " " * n + "b"
        assert tokenizer.decode(tokenizer.encode_text("a" + " " * n + "b")) == "a" + " " * n + "b"


def test_blank_decoding_matches_the_original_loop_on_random_text(tokenizer):
    rng = random.Random(11)
    parts = ["<|blank_", "|>", "<|", "0", "1", "2", "8", "9", "٢", "２", "<n>", "<|tab|>", " ", "x", "|"]
    for _ in range(300):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(1, 12)))
        assert _decode_whitespace(text) == _original_postprocess(text), text
        ids = tokenizer.encode_text(text, parse_special=False)
        assert tokenizer.decode(ids) == clean_up_tokenization(_original_postprocess(tokenizer.sp.DecodeIds(ids)))
