"""The KV cache: cached logits equal the full forward pass, and generation with it equals generation without;
batched generation equals one-by-one; the context-length rule."""

import pytest
import torch

from cs336_nn import KVCache, ModelConfig, TransformerLM
from cs336_sample import Decoding, SampleError, SamplingSettings


def tiny_model(seed: int = 0, **overrides) -> TransformerLM:
    torch.manual_seed(seed)
    settings = {"vocab_size": 64, "context_length": 24, "d_model": 32, "num_layers": 2, "num_heads": 4} | overrides
    return TransformerLM(ModelConfig(**settings))


@pytest.mark.parametrize("variant", [
    {}, {"positions": "nope"}, {"positions": "sinusoidal"}, {"positions": "learned"},
    {"norm_position": "post"}, {"norm": "layernorm", "ffn": "relu"}, {"attention_impl": "torch"},
])
def test_prefill_then_one_token_steps_equal_the_full_forward_pass(variant):
    model = tiny_model(**variant)
    token_ids = torch.randint(0, 64, (3, 20))
    with torch.no_grad():
        full = model(token_ids)
        cache = KVCache.for_model(model, batch_size=3)
        pieces = [model(token_ids[:, :7], kv_cache=cache)]  # prefill positions 0..6
        for position in range(7, 20):
            pieces.append(model(token_ids[:, position:position + 1], torch.full((3, 1), position), kv_cache=cache))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_rows_at_different_positions_match_their_own_full_pass():
    model = tiny_model()
    token_ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        cache = KVCache.for_model(model, batch_size=2)
        model(token_ids, kv_cache=cache)
        # Row 0 continues at position 5 (overwriting what was there), row 1 at position 12.
        new_tokens = torch.tensor([[7], [9]])
        logits = model(new_tokens, torch.tensor([[5], [12]]), kv_cache=cache)[:, 0]
        row0 = model(torch.cat((token_ids[:1, :5], new_tokens[:1]), dim=1))[0, -1]
        row1 = model(torch.cat((token_ids[1:, :12], new_tokens[1:]), dim=1))[0, -1]
    torch.testing.assert_close(logits, torch.stack((row0, row1)), atol=1e-5, rtol=1e-5)


def test_the_cache_refuses_positions_beyond_the_context():
    model = tiny_model(context_length=8)
    cache = KVCache.for_model(model, batch_size=1)
    with pytest.raises(ValueError, match="context length"):
        model(torch.tensor([[1]]), torch.tensor([[8]]), kv_cache=cache)


def test_the_cache_changes_no_state_dict_keys():
    keys = set(tiny_model(num_layers=1).state_dict())
    assert keys == {"token_embeddings.weight", "layers.0.attn.q_proj.weight", "layers.0.attn.k_proj.weight",
                    "layers.0.attn.v_proj.weight", "layers.0.attn.output_proj.weight", "layers.0.ln1.weight",
                    "layers.0.ffn.w1.weight", "layers.0.ffn.w2.weight", "layers.0.ffn.w3.weight",
                    "layers.0.ln2.weight", "ln_final.weight", "lm_head.weight"}


def run(model, prompts, **options) -> list[tuple[list[int], str]]:
    decoding = Decoding(model, prompts, **({"max_new_tokens": 20} | options))
    return [(completion.token_ids, completion.stop_reason) for completion in decoding.run()]


PROMPTS = [[5, 9, 2], [1], [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 3], [60, 61]]
SETTINGS = [SamplingSettings(temperature=0), SamplingSettings(temperature=1.0),
            SamplingSettings(temperature=0.8, top_p=0.9), SamplingSettings(temperature=1.2, top_k=5)]


@pytest.mark.parametrize("sampling", SETTINGS, ids=["greedy", "t1", "top_p", "top_k"])
def test_generation_with_the_cache_equals_generation_without(sampling):
    model = tiny_model()
    with_cache = run(model, PROMPTS, sampling=sampling, seed=3, stop_token_id=0)
    without = run(model, PROMPTS, sampling=sampling, seed=3, stop_token_id=0, use_kv_cache=False)
    assert with_cache == without
    assert {reason for _, reason in with_cache} >= {"context_length"}  # the long prompt ran into the limit


@pytest.mark.parametrize("sampling", SETTINGS, ids=["greedy", "t1", "top_p", "top_k"])
@pytest.mark.parametrize("use_kv_cache", [True, False], ids=["cache", "no_cache"])
def test_batched_generation_equals_one_by_one(sampling, use_kv_cache):
    model = tiny_model(seed=1)
    batched = run(model, PROMPTS, sampling=sampling, seed=11, stop_token_id=0, use_kv_cache=use_kv_cache)
    # Row i of a batch draws from seed + i: a single prompt with that seed must give the same completion.
    alone = [run(model, [prompt], sampling=sampling, seed=11 + row, stop_token_id=0, use_kv_cache=use_kv_cache)[0]
             for row, prompt in enumerate(PROMPTS)]
    assert batched == alone
    assert len({len(tokens) for tokens, _ in batched}) > 1  # rows really ended at different lengths


def test_each_cached_step_feeds_one_position():
    model = tiny_model()
    shapes = []
    model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    run(model, [[1, 2, 3], [4, 5]], max_new_tokens=6)
    assert shapes == [(2, 3)] + [(2, 1)] * 5  # prefill, then one token per row per step (none after the last)
    shapes.clear()
    run(model, [[1, 2, 3], [4, 5]], max_new_tokens=6, use_kv_cache=False)
    assert shapes == [(2, 3 + step) for step in range(6)]  # without the cache: everything again


def test_context_length_rule():
    model = tiny_model(context_length=8)
    # The model reads at most 8 tokens, so a sequence grows to 9: the last token is predicted from 8.
    assert run(model, [[1, 2, 3]], max_new_tokens=100, sampling=SamplingSettings(temperature=0))[0][1] == \
        "context_length"
    assert len(run(model, [[1, 2, 3]], max_new_tokens=100)[0][0]) == 6
    assert len(run(model, [[1] * 8], max_new_tokens=100)[0][0]) == 1
    assert run(model, [[1, 2, 3]], max_new_tokens=6)[0][1] == "max_new_tokens"  # both limits: max wins
    with pytest.raises(SampleError, match="9 tokens but the model reads at most 8"):
        Decoding(model, [[1] * 9], max_new_tokens=1)


def test_bad_prompts_are_refused():
    model = tiny_model()
    with pytest.raises(SampleError, match="empty"):
        Decoding(model, [[1], []], max_new_tokens=1)
    with pytest.raises(SampleError, match="outside the model's vocabulary"):
        Decoding(model, [[1, 64]], max_new_tokens=1)
