"""The ChatGLM-6B tokenizer: SentencePiece over `ice_text.model`, reproducing the original ids and text exactly.

The original is a transformers `PreTrainedTokenizer` (transformers 4.27) around SentencePiece. What it does, and
what we reproduce without subclassing transformers (which broke it in 4.34 and again in 4.45):

* encode: split the text on the special-token strings (`<sop>`, `<eop>`, `<unk>`, `<pad>`, `[MASK]`), stripping
  whitespace next to them; in every other piece replace `\\n` by `<n>`, `\\t` by `<|tab|>` and runs of 2..80
  spaces by `<|blank_N|>` (longest first), then SentencePiece with its dummy prefix; finally append
  `[gMASK] <sop>`.
* decode: drop `<pad>`, SentencePiece decode, turn `<n>`, `<|tab|>` and `<|blank_N|>` back into whitespace, then
  transformers' `clean_up_tokenization` (" ." -> ".", " n't" -> "n't", ...), which the original applies too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from chatglm_tui.errors import CheckpointError
from chatglm_tui.paths import read_checkpoint_json

TOKENIZER_FILE = "ice_text.model"
MAX_BLANK = 80
GMASK_ID = 130001
SOP_ID = 130004
EOP_ID = 130005
PAD_ID = 3
# Strings the original treats as special tokens inside text (its bos, eos, unk, pad and mask tokens).
# `[gMASK]` is not among them: in text it is just the characters "[gMASK]".
_SPECIAL_STRINGS = ("<sop>", "<eop>", "<unk>", "<pad>", "[MASK]")
_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(s) for s in _SPECIAL_STRINGS) + ")")
# Only the exact pieces `<|blank_2|>` .. `<|blank_80|>` are whitespace, as in the original's replace loop:
# `[0-9]`, not `\d` (which matches any Unicode digit, and int() accepts those too), and no leading zero.
_BLANKS = {f"<|blank_{n}|>": " " * n for n in range(2, MAX_BLANK + 1)}
_BLANK_CANDIDATE = re.compile(r"<\|blank_[1-9][0-9]?\|>")
# transformers' clean_up_tokenization, in its order.
_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))
CLEAN_UP_PATTERNS = tuple(source for source, _ in _CLEAN_UP)


def _encode_whitespace(text: str) -> str:
    text = text.replace("\n", "<n>").replace("\t", "<|tab|>")
    for n in range(MAX_BLANK, 1, -1):
        text = text.replace(" " * n, f"<|blank_{n}|>")
    return text


def _decode_whitespace(text: str) -> str:
    text = text.replace("<n>", "\n").replace("<|tab|>", "\t")
    # Same result as the original's `for n in range(2, 81): text = text.replace(f"<|blank_{n}|>", " " * n)` in
    # one pass: pieces never overlap and a replacement (spaces) can never form a new piece. `<|blank_1|>` and
    # `<|blank_81|>`..`<|blank_99|>` match the pattern but are not in the table, so they stay literal.
    return _BLANK_CANDIDATE.sub(lambda m: _BLANKS.get(m.group(0), m.group(0)), text)


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization`, which the original tokenizer's decode applies."""
    for source, target in _CLEAN_UP:
        text = text.replace(source, target)
    return text


class ChatGLMTokenizer:
    """Text <-> token ids for ChatGLM-6B, identical to the original tokenizer."""

    def __init__(self, model_file: Path | str) -> None:
        path = Path(model_file)
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: the model directory needs the {TOKENIZER_FILE} tokenizer")
        sp = spm.SentencePieceProcessor()
        try:
            sp.Load(str(path))
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"{path} is not a SentencePiece model ({exc}); re-download it") from exc
        if sp.PieceToId("<sop>") != SOP_ID or sp.PieceToId("[gMASK]") != GMASK_ID:
            raise CheckpointError(f"{path} is not the ChatGLM-6B tokenizer (<sop> and [gMASK] are not at 130004/130001)")
        self.sp = sp
        self.path = path
        # Ids at or above this have no piece (the embedding has 130528 rows, the tokenizer 130344 pieces).
        self.num_pieces = sp.vocab_size()
        self.gmask_id, self.sop_id, self.eop_id, self.pad_id = GMASK_ID, SOP_ID, EOP_ID, PAD_ID

    @classmethod
    def from_dir(cls, directory: Path | str) -> ChatGLMTokenizer:
        """Load `ice_text.model` from a checkpoint directory, checking its tokenizer_config.json if present."""
        directory = Path(directory)
        config_path = directory / "tokenizer_config.json"
        try:
            config = read_checkpoint_json(config_path)  # a named pipe or device is refused, not skipped or hung on
        except FileNotFoundError:
            config = None  # optional: the tokenizer alone is enough
        if isinstance(config, dict) and config.get("num_image_tokens", 0) != 0:
            raise CheckpointError(
                f"{config_path}: num_image_tokens={config['num_image_tokens']!r} is the pre-2023-04 150528-token "
                "layout, which is not supported: download the current THUDM/chatglm-6b"
            )
        return cls(directory / TOKENIZER_FILE)

    def encode_text(self, text: str, *, parse_special: bool = True) -> list[int]:
        """Token ids of `text` alone, without the `[gMASK] <sop>` suffix.

        With `parse_special` (the original's behaviour) the strings `<sop>`, `<eop>`, `<unk>`, `<pad>` and
        `[MASK]` become their special ids; without it they are ordinary text, which is what a chat prompt built
        from untrusted text should use.
        """
        if not parse_special:
            return self._encode_plain(text)
        parts = _SPECIAL_SPLIT.split(text)
        # The original strips whitespace on both sides of a special token (transformers' default).
        for i in range(1, len(parts), 2):
            parts[i - 1] = parts[i - 1].rstrip()
            parts[i + 1] = parts[i + 1].lstrip()
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i % 2:
                ids.append(self.sp.PieceToId(part))
            elif part:
                ids.extend(self._encode_plain(part))
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        return list(self.sp.EncodeAsIds(_encode_whitespace(text))) if text else []

    def encode(self, text: str, *, parse_special: bool = True) -> list[int]:
        """Ids of `text` ending `[gMASK] <sop>`, exactly like the original `tokenizer(text)`."""
        return self.encode_text(text, parse_special=parse_special) + [self.gmask_id, self.sop_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` as the original decodes it; ids without a piece (130344 and up) are skipped."""
        kept = [int(i) for i in ids if int(i) != self.pad_id and 0 <= int(i) < self.num_pieces]
        if not kept:
            return ""
        return clean_up_tokenization(_decode_whitespace(self.sp.DecodeIds(kept)))

    def count(self, text: str, *, parse_special: bool = True) -> int:
        """Number of tokens of `text` with the `[gMASK] <sop>` suffix (what the model reads)."""
        return len(self.encode_text(text, parse_special=parse_special)) + 2

    def piece(self, token_id: int) -> str:
        """The SentencePiece piece of an id, or '' for ids that have none."""
        return self.sp.IdToPiece(token_id) if 0 <= token_id < self.num_pieces else ""


class IncrementalDecoder:
    """Turns a growing list of ids into append-only text deltas.

    Decoding token by token is wrong for SentencePiece (a byte-fallback character spans several ids, spaces
    belong to the next piece) and the full text can still change at its tail: an incomplete UTF-8 sequence
    decodes to U+FFFD, and the clean-up rules (" ." -> ".") and any `finalize` post-processing (strip, punctuation)
    rewrite the last few characters. So each step decodes everything, applies `finalize`, and releases only the
    part that can no longer change. `flush()` releases the rest once generation ends. Joined deltas always equal
    `finalize(tokenizer.decode(all_ids))`.
    """

    def __init__(self, tokenizer: ChatGLMTokenizer, finalize: Callable[[str], str] | None = None,
                 pending: Sequence[str] = CLEAN_UP_PATTERNS, hold_chars: str = "") -> None:
        self.tokenizer = tokenizer
        self.finalize = finalize or (lambda text: text)
        self.pending = tuple(pending)
        self._longest_pending = max((len(p) for p in self.pending), default=0)
        self.hold_chars = hold_chars
        self.ids: list[int] = []
        self.emitted = ""

    def _stable_length(self, text: str) -> int:
        end = len(text)
        while end and (text[end - 1] == "\ufffd" or text[end - 1].isspace()):
            end -= 1
        # A tail that may still grow into a rewrite pattern (" n" -> " n't") waits for the next character.
        for size in range(min(self._longest_pending - 1, end), 0, -1):
            tail = text[end - size:end]
            if any(p.startswith(tail) and p != tail for p in self.pending):
                end -= size
                break
        if end and text[end - 1] in self.hold_chars:
            end -= 1
        return end

    def _delta(self, text: str) -> str:
        if not text.startswith(self.emitted):
            # Cannot happen for the original's rewrite rules (each only looks at the few characters held back);
            # keep going rather than lose text, and never repeat what was already sent.
            common = 0
            while common < min(len(text), len(self.emitted)) and text[common] == self.emitted[common]:
                common += 1
            text = self.emitted + text[common:]
        delta = text[len(self.emitted):]
        self.emitted = text
        return delta

    def add(self, token_ids: Sequence[int]) -> str:
        """Add generated ids; return the newly stable text (possibly '')."""
        self.ids.extend(token_ids)
        text = self.finalize(self.tokenizer.decode(self.ids))
        stable = text[:self._stable_length(text)]
        if len(stable) <= len(self.emitted):
            return ""
        return self._delta(stable)

    def flush(self) -> str:
        """Return everything not yet released; call once when generation has ended."""
        return self._delta(self.finalize(self.tokenizer.decode(self.ids)))

    @property
    def text(self) -> str:
        """Everything released so far."""
        return self.emitted
