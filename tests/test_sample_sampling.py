"""cs336_sample.sampling: temperature, top-k, top-p and the draw, on hand-built distributions."""

import ast
import math
from pathlib import Path

import pytest
import torch

from cs336_sample import SampleError, SamplingSettings, keep_top_k, keep_top_p, next_token_probabilities
from cs336_sample.sampling import draw, row_generators, sample_next_tokens, temperature_probabilities

ROOT = Path(__file__).resolve().parents[1]


def nucleus_reference(probabilities: list[float], p: float) -> set[int]:
    """The handout's definition, literally: sort by probability (ties: lower id first) and take tokens until
    their total reaches p."""
    ranked = sorted(range(len(probabilities)), key=lambda token: (-probabilities[token], token))
    kept, total = set(), 0.0
    for token in ranked:
        if total >= p:
            break
        kept.add(token)
        total += probabilities[token]
    return kept


def kept_tokens(row: torch.Tensor) -> set[int]:
    return set(torch.nonzero(row).flatten().tolist())


@pytest.mark.parametrize(("p", "expected"), [
    (0.5, {0}),            # the top token alone reaches 0.5
    (0.8, {0, 1}),         # 0.5 + 0.3 reaches 0.8 exactly: no third token
    (0.81, {0, 1, 2}),
    (0.95, {0, 1, 2}),     # 0.5 + 0.3 + 0.15 = 0.95 exactly
    (0.96, {0, 1, 2, 3}),
    (0.01, {0}),           # the most likely token is always kept
])
def test_top_p_keeps_the_smallest_set_reaching_p(p, expected):
    probabilities = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = keep_top_p(probabilities, p)
    assert kept_tokens(kept[0]) == expected
    # Renormalised: the kept tokens keep their ratios and sum to 1.
    mass = sum(probabilities[0, token].item() for token in expected)
    for token in expected:
        assert kept[0, token].item() == pytest.approx(probabilities[0, token].item() / mass, rel=1e-6)
    assert kept.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_top_p_works_in_token_order_not_sorted_order():
    probabilities = torch.tensor([[0.05, 0.3, 0.15, 0.5]])  # the same distribution, shuffled ids
    assert kept_tokens(keep_top_p(probabilities, 0.8)[0]) == {1, 3}


@pytest.mark.parametrize(("p", "expected"), [(0.5, {0, 1}), (0.51, {0, 1, 2}), (0.25, {0}), (1.0, {0, 1, 2, 3})])
def test_top_p_ties_keep_exactly_the_smallest_set_breaking_ties_toward_lower_ids(p, expected):
    probabilities = torch.full((1, 4), 0.25)
    assert kept_tokens(keep_top_p(probabilities, p)[0]) == expected


def test_top_p_ties_in_the_middle_of_the_ranking():
    probabilities = torch.tensor([[0.2, 0.4, 0.2, 0.2]])  # three-way tie behind token 1
    assert kept_tokens(keep_top_p(probabilities, 0.6)[0]) == {1, 0}
    assert kept_tokens(keep_top_p(probabilities, 0.61)[0]) == {1, 0, 2}


def test_top_p_matches_the_definition_on_random_distributions():
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        # 64 units spread over 12 tokens: multiples of 1/64 are exact in float32, so every sum is exact and a
        # p of 0.25, 0.5 or 0.75 is often reached exactly (the boundary case); many ties.
        counts = torch.bincount(torch.randint(0, 12, (64,), generator=generator), minlength=12)
        probabilities = counts.float() / 64
        p = [0.1, 0.25, 0.3, 0.5, 0.75, 0.9, 0.99][int(torch.randint(0, 7, (), generator=generator))]
        expected = nucleus_reference(probabilities.tolist(), p)
        assert kept_tokens(keep_top_p(probabilities.unsqueeze(0), p)[0]) == expected, (probabilities, p)


def test_top_p_rows_are_independent():
    probabilities = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]])
    kept = keep_top_p(probabilities, 0.8)
    assert kept_tokens(kept[0]) == {0, 1} and kept_tokens(kept[1]) == {2, 3}


def test_top_k_keeps_the_k_most_likely_with_ties_toward_lower_ids():
    probabilities = torch.tensor([[0.1, 0.4, 0.1, 0.3, 0.1]])
    assert kept_tokens(keep_top_k(probabilities, 2)[0]) == {1, 3}
    assert kept_tokens(keep_top_k(probabilities, 3)[0]) == {1, 3, 0}  # three tied at 0.1: the lowest id wins
    torch.testing.assert_close(keep_top_k(probabilities, 2), torch.tensor([[0, 4 / 7, 0, 3 / 7, 0]]))
    assert torch.equal(keep_top_k(probabilities, 5), probabilities)


def test_top_p_after_top_k_is_relative_to_what_top_k_kept():
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    settings = SamplingSettings(temperature=1.0, top_k=2, top_p=0.6)
    # After top-k the distribution is 4/7, 3/7: 4/7 < 0.6, so both tokens are needed.
    assert kept_tokens(next_token_probabilities(logits, settings)[0]) == {0, 1}


def test_temperature_scales_logits_before_softmax():
    logits = torch.randn(3, 11)
    for temperature in (0.5, 1.0, 2.0):
        torch.testing.assert_close(temperature_probabilities(logits, temperature),
                                   torch.softmax(logits / temperature, dim=-1))
    flat = temperature_probabilities(logits, 1e6)
    torch.testing.assert_close(flat, torch.full_like(flat, 1 / 11), atol=1e-4, rtol=0)


def test_temperature_toward_zero_equals_argmax():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 100, generator=generator) * 3
    argmax = logits.argmax(dim=-1)
    assert torch.equal(sample_next_tokens(logits, SamplingSettings(temperature=0.0), []), argmax)
    tiny = SamplingSettings(temperature=1e-4)
    for seed in range(3):
        assert torch.equal(sample_next_tokens(logits, tiny, row_generators(seed, 64)), argmax)


def test_draw_follows_the_distribution():
    probabilities = torch.tensor([[0.6, 0.0, 0.3, 0.1]])
    generator = torch.Generator().manual_seed(0)
    draws = 20_000
    tokens = draw(probabilities.expand(draws, 4), torch.rand(draws, generator=generator))
    frequencies = torch.bincount(tokens, minlength=4).float() / draws
    assert frequencies[1] == 0  # probability zero: never
    for token, expected in ((0, 0.6), (2, 0.3), (3, 0.1)):
        standard_error = math.sqrt(expected * (1 - expected) / draws)
        assert abs(frequencies[token].item() - expected) < 5 * standard_error


def test_draw_never_picks_a_zero_probability_token_at_the_extremes():
    probabilities = torch.tensor([[0.0, 0.7, 0.3, 0.0]]).expand(3, 4)
    largest_uniform = 1 - 2**-24  # the largest float32 below 1, torch.rand's maximum
    tokens = draw(probabilities, torch.tensor([0.0, 0.7, largest_uniform]))
    assert tokens.tolist() == [1, 2, 2]


def test_seeds_reproduce_and_differ():
    logits = torch.randn(4, 1000)
    settings = SamplingSettings(temperature=1.0)

    def five_steps(seed: int) -> list[list[int]]:
        generators = row_generators(seed, 4)
        return [sample_next_tokens(logits, settings, generators).tolist() for _ in range(5)]

    assert five_steps(7) == five_steps(7)
    assert five_steps(7) != five_steps(8)


@pytest.mark.parametrize(("settings", "message"), [
    ({"temperature": -0.1}, "temperature must be >= 0"),
    ({"temperature": float("nan")}, "temperature must be >= 0"),
    ({"top_p": 0.0}, r"top-p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top-p must be in \(0, 1\]"),
    ({"top_k": 0}, "top-k must be at least 1"),
])
def test_invalid_settings_are_refused_with_the_reason(settings, message):
    with pytest.raises(SampleError, match=message):
        SamplingSettings(**settings)


def test_sampling_code_uses_no_torch_functional():
    """The decoding math is ours: no torch.nn.functional (softmax comes from cs336_nn)."""
    for path in (ROOT / "packages" / "sample" / "src").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [getattr(node, "module", None) or ""] + [alias.name for alias in node.names]
                assert not any("functional" in name for name in names), path
            if isinstance(node, ast.Attribute):
                chain = ast.unparse(node)
                assert not chain.startswith(("torch.nn.functional", "F.", "torch.softmax", "torch.multinomial")), \
                    (path, chain)
