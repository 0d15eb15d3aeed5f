"""From next-token logits to a token: temperature, top-k, top-p (nucleus) and the draw itself (handout §6).

    probabilities = softmax(logits / temperature)        temperature 0 means greedy: argmax(logits)
    top-k:  keep the k most probable tokens, renormalise
    top-p:  keep the smallest set of most probable tokens whose probability reaches p, renormalise
    draw:   pick a uniform u in [0, 1) and take the token where the cumulative distribution passes u

Worked example (probabilities 0.5, 0.3, 0.15, 0.05 and top_p 0.8): sorted, the cumulative sums are 0.5, 0.8,
0.95, 1.0; the first two already reach 0.8, so V(p) = {0, 1} and the new distribution is 0.625, 0.375, 0, 0.

Ties are broken toward the lower token id (a stable sort), so "the k most probable" and "the smallest set"
are always well defined. Everything is tensor operations on (batch, vocab) rows; `softmax` is ours.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from cs336_nn import softmax
from cs336_sample.errors import SampleError

# Cumulative sums in float32 are off by about 1e-7. A token whose higher-ranked tokens already reach p, up to
# that rounding, is not needed to reach p (e.g. 0.5 + 0.3 must count as reaching 0.8).
CUMULATIVE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class SamplingSettings:
    """How to turn logits into the next token.

    temperature: 0 picks the most likely token (greedy); below 1 sharpens the distribution, above 1 flattens it.
    top_p: keep the most likely tokens up to this total probability, in (0, 1]; 1 keeps everything.
    top_k: keep only the k most likely tokens; None keeps everything.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None

    def __post_init__(self):
        if not self.temperature >= 0:  # also rejects NaN
            raise SampleError(f"temperature must be >= 0, got {self.temperature}; use 0 for greedy decoding, "
                              "1 to sample from the model's own distribution")
        if not 0 < self.top_p <= 1:
            raise SampleError(f"top-p must be in (0, 1], got {self.top_p}; it is the probability mass to keep, "
                              "e.g. 0.9 (1 keeps every token)")
        if self.top_k is not None and self.top_k < 1:
            raise SampleError(f"top-k must be at least 1, got {self.top_k}; it is how many of the most likely "
                              "tokens to keep (leave it unset to keep all)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def temperature_probabilities(logits: Tensor, temperature: float) -> Tensor:
    """softmax(logits / temperature), in float32. logits (..., vocab) -> probabilities (..., vocab)."""
    return softmax(logits.float() / temperature, dim=-1)


def _keep_in_sorted_order(probabilities: Tensor, keep_sorted) -> Tensor:
    """Sort each row (most probable first, ties by lower id), zero what `keep_sorted` rejects, renormalise.

    keep_sorted(sorted_probabilities) -> bool mask of the same shape, True = keep.
    """
    sorted_probabilities, order = probabilities.sort(dim=-1, descending=True, stable=True)
    kept_sorted = sorted_probabilities * keep_sorted(sorted_probabilities)
    kept = torch.zeros_like(probabilities).scatter_(-1, order, kept_sorted)  # back to token-id order
    return kept / kept.sum(dim=-1, keepdim=True)


def keep_top_k(probabilities: Tensor, k: int) -> Tensor:
    """Keep the k most probable tokens of each row and renormalise. (..., vocab) -> (..., vocab)."""
    if k >= probabilities.shape[-1]:
        return probabilities

    def ranked_below_k(ranked: Tensor) -> Tensor:
        return torch.arange(ranked.shape[-1], device=ranked.device) < k  # ranks 0..k-1

    return _keep_in_sorted_order(probabilities, ranked_below_k)


def keep_top_p(probabilities: Tensor, p: float) -> Tensor:
    """Nucleus: keep the smallest set of most probable tokens whose total reaches p; renormalise.

    A token is needed exactly when the tokens ranked above it have not reached p yet, so the most probable
    token is always kept. (..., vocab) -> (..., vocab).
    """
    if p >= 1:
        return probabilities

    def needed(ranked: Tensor) -> Tensor:
        mass_above = ranked.cumsum(dim=-1) - ranked  # probability of the tokens ranked above each one
        total = ranked.sum(dim=-1, keepdim=True)  # 1 up to rounding (or less after top-k: p is relative)
        return mass_above < p * total - CUMULATIVE_TOLERANCE

    return _keep_in_sorted_order(probabilities, needed)


def next_token_probabilities(logits: Tensor, settings: SamplingSettings) -> Tensor:
    """The distribution the next token is drawn from: temperature, then top-k, then top-p (of what is left).

    logits (batch, vocab) -> probabilities (batch, vocab), each row summing to 1. Not for temperature 0.
    """
    probabilities = temperature_probabilities(logits, settings.temperature)
    if settings.top_k is not None:
        probabilities = keep_top_k(probabilities, settings.top_k)
    return keep_top_p(probabilities, settings.top_p)


def draw(probabilities: Tensor, uniforms: Tensor) -> Tensor:
    """Inverse-CDF sampling: for each row, the first token whose cumulative probability exceeds u * total.

    probabilities (batch, vocab), uniforms (batch,) in [0, 1) -> token ids (batch,). A token of probability
    zero adds nothing to the cumulative sum, so it can never be the first to exceed the threshold.
    """
    cumulative = probabilities.cumsum(dim=-1)  # (batch, vocab)
    total = cumulative[:, -1:]
    # u * total can round up to total itself; the float just below keeps the threshold inside the distribution.
    threshold = torch.minimum(uniforms.to(cumulative).unsqueeze(-1) * total, total.nextafter(torch.zeros_like(total)))
    return torch.searchsorted(cumulative, threshold, right=True).squeeze(-1)


def row_generators(seed: int, batch_size: int) -> list[torch.Generator]:
    """One random stream per row, seeded seed, seed + 1, ...: row i of a batch draws exactly what a
    single-prompt call with seed + i draws, so batching never changes a sample. CPU generators, so the same
    seed gives the same draws on every device."""
    return [torch.Generator().manual_seed(seed + row) for row in range(batch_size)]


def sample_next_tokens(logits: Tensor, settings: SamplingSettings, generators: list[torch.Generator]) -> Tensor:
    """logits (batch, vocab) -> next token ids (batch,): argmax when greedy, otherwise one draw per row."""
    if settings.greedy:
        return logits.argmax(dim=-1)  # the limit of temperature -> 0 (ties: the lowest id)
    probabilities = next_token_probabilities(logits, settings)
    uniforms = torch.cat([torch.rand(1, generator=generator) for generator in generators])  # (batch,)
    return draw(probabilities, uniforms.to(logits.device))
