"""Choosing the next token: the original's processors and warpers (as transformers computes them), and two guards."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from chatglm_tui.model.params import GenerationParams


class TokenSampler:
    """Turns the last position's logits into the next token id for one sequence.

    The distribution is the original `chat()`'s: transformers' repetition penalty, the NaN/Inf guard, then its
    temperature, top-k and top-p warpers, and a draw from what is left. The warpers are computed on the few
    tokens that can survive instead of on all 130,528 logits (transformers sorts the whole vocabulary for
    top-p): top-k keeps the tokens at or above the k-th largest score, top-p the most likely tokens while the
    probability mass strictly above each is below top_p (the same set as transformers' ascending cumulative sum
    `> 1 - top_p`), and the draw is made among them. Measured on 2 cores: 0.2 ms per token alone and 0.6 ms
    right after a forward pass (1.3 ms with top-k off), against transformers' 4.6 ms (12 ms); tests check the
    kept sets and probabilities against transformers' warpers.
    """

    def __init__(self, params: GenerationParams, num_pieces: int) -> None:
        self.params = params
        self.num_pieces = num_pieces  # ids from here up have no tokenizer piece: never emit them
        self.generator = torch.Generator()
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()

    def scores(self, input_ids: Tensor, logits: Tensor) -> Tensor:
        """The processed scores of the ids that have a piece (num_pieces,) float32, before the warpers: the
        repetition penalty, then the original's NaN/Inf guard. A view of `logits` when the penalty is off (every
        pass over 130,528 scores costs ~0.1 ms right after a forward pass has cooled the caches)."""
        scores = logits.reshape(-1).float()
        penalty = self.params.repetition_penalty
        if penalty != 1.0:  # transformers' RepetitionPenaltyLogitsProcessor, over prompt and reply
            scores = scores.clone()
            ids = input_ids.reshape(-1)
            seen = scores[ids]
            scores[ids] = torch.where(seen < 0, seen * penalty, seen / penalty)
        # The original's InvalidScoreLogitsProcessor, after the penalty as there. One sum finds out (a NaN or an
        # infinity makes it non-finite; only then is every score looked at).
        if not math.isfinite(float(scores.sum())) and not bool(torch.isfinite(scores).all()):
            forced = torch.zeros(self.num_pieces, device=logits.device)
            forced[5] = 5e4
            return forced
        return scores[: self.num_pieces]

    def candidates(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        """(ids, probabilities) of the tokens temperature, top-k and top-p leave, most likely first."""
        params, temperature = self.params, self.params.temperature
        if params.top_k:
            values, ids = _top_k(scores, min(params.top_k, scores.numel()), temperature)
        elif params.top_p >= 1.0:
            return torch.arange(scores.numel(), device=scores.device), torch.softmax(scores / temperature, dim=0)
        else:  # top-p over the whole vocabulary: the likeliest `size` tokens, widened until the kept set ends
            scaled = scores / temperature if temperature != 1.0 else scores
            log_total, size = torch.logsumexp(scaled, dim=0), 256
            while True:
                values, ids, _ = _likeliest(scaled, min(size, scaled.numel()))
                if float((values - log_total).exp().sum()) >= params.top_p or values.numel() == scaled.numel():
                    break
                size *= 8
            count = _nucleus(values, log_total, params.top_p)
            return ids[:count], torch.softmax(values[:count], dim=0)
        if params.top_p < 1.0:
            count = _nucleus(values, torch.logsumexp(values, dim=0), params.top_p)
            values, ids = values[:count], ids[:count]
        return ids, torch.softmax(values, dim=0)

    def __call__(self, input_ids: Tensor, logits: Tensor) -> int:
        """input_ids (1, T) long (prompt + generated so far), logits (1, V) float32 -> next token id."""
        scores = self.scores(input_ids, logits)
        if self.params.is_greedy:
            return int(scores.argmax())
        ids, probs = self.candidates(scores)
        # The generator is a CPU one, and a few hundred probabilities at most: draw on the CPU wherever the
        # logits are (torch refuses a CPU generator for a GPU tensor).
        return int(ids[int(torch.multinomial(probs.cpu(), 1, generator=self.generator))])


def _likeliest(scores: Tensor, count: int) -> tuple[Tensor, Tensor, Tensor]:
    """At least the `count` largest scores, sorted descending, with their ids and a threshold t: every score at
    or above t is among them, and at least `count` are. t is the count-th largest maximum of 128-score chunks,
    found in two passes over the vocabulary (torch.topk over all 130,528 costs up to 0.9 ms)."""
    width = 128
    chunks = -(-scores.numel() // width)
    if count * 2 > chunks:  # too many for the chunk maxima to narrow things down
        values, ids = torch.topk(scores, min(count, scores.numel()))
        return values, ids, values[-1]
    padded = F.pad(scores, (0, chunks * width - scores.numel()), value=-float("inf"))
    threshold = torch.topk(padded.view(chunks, width).amax(dim=1), count).values[-1]
    ids = torch.nonzero(scores >= threshold).reshape(-1)
    values, order = scores[ids].sort(descending=True)
    return values, ids[order], threshold


def _top_k(scores: Tensor, k: int, temperature: float) -> tuple[Tensor, Tensor]:
    """transformers' top-k after its temperature: the scaled scores at or above the k-th largest, ties included,
    sorted descending (values, ids). Scaling is monotone, so the k-th scaled score is the k-th raw one scaled;
    ties that its rounding creates lie at raw scores just below, so the candidates reach 16 places further and,
    if the threshold itself rounds onto the k-th scaled score, the whole vocabulary is looked at."""
    values, ids, threshold = _likeliest(scores, min(k + 16, scores.numel()))
    if temperature != 1.0:
        values, threshold = values / temperature, threshold / temperature
    kth = values[k - 1]
    if temperature != 1.0 and bool(threshold >= kth) and ids.numel() < scores.numel():
        scaled = scores / temperature
        ids = torch.nonzero(scaled >= kth).reshape(-1)
        values, order = scaled[ids].sort(descending=True)
        return values, ids[order]
    keep = values >= kth
    return values[keep], ids[keep]


def _nucleus(values: Tensor, log_total: Tensor, top_p: float) -> int:
    """How many of `values` (scores sorted descending; `log_total` normalizes over every remaining token) top-p
    keeps: those whose strictly likelier mass is below top_p, and at least one."""
    probs = (values - log_total).exp()
    above = torch.cumsum(probs, dim=0) - probs
    return max(int((above < top_p).sum()), 1)
