"""Text-level generation: the stop token, seeds, batches of strings, and streaming that never splits a character."""

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from cs336_bpe import Tokenizer
from cs336_nn import ModelConfig, TransformerLM
from cs336_sample import Completion, IncrementalTextDecoder, generate, stream_generate

EOT = "<|endoftext|>"


def byte_tokenizer() -> Tokenizer:
    """One token per byte (ids 0..255) and <|endoftext|> (id 256): every multi-byte character spans tokens."""
    return Tokenizer({byte: bytes([byte]) for byte in range(256)}, [], special_tokens=[EOT])


def tiny_byte_model(seed: int = 0, context_length: int = 48) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(ModelConfig(vocab_size=257, context_length=context_length, d_model=32, num_layers=2,
                                     num_heads=4))


class ScriptedModel(nn.Module):
    """A model that always predicts `script[previous token]`: the same text at any temperature.
    (A bigram table, so a scripted text must not repeat a token.)"""

    def __init__(self, script: dict[int, int], vocab_size: int = 257, context_length: int = 64):
        super().__init__()
        self.config = ModelConfig(vocab_size=vocab_size, context_length=context_length, d_model=8, num_layers=1,
                                  num_heads=1)
        table = torch.full((vocab_size, vocab_size), -1e4)
        for token in range(vocab_size):
            table[token, script.get(token, token)] = 0.0  # unscripted tokens repeat themselves
        self.table = nn.Parameter(table, requires_grad=False)

    def forward(self, token_ids, token_positions=None, kv_cache=None):
        return self.table[token_ids]  # (batch, seq, vocab)


def chain(*tokens: int) -> dict[int, int]:
    return dict(zip(tokens, tokens[1:]))


def test_the_stop_token_ends_generation_and_is_not_in_the_text():
    tokenizer = byte_tokenizer()
    model = ScriptedModel(chain(*b"Hi dog.", 256))  # after "." comes <|endoftext|>
    completion = generate(model, tokenizer, "H", max_new_tokens=50, temperature=1.0, seed=0)
    assert completion.text == "i dog."
    assert completion.stop_reason == "stop_token"
    assert 256 not in completion.token_ids
    # Without a stop token the script carries on (<|endoftext|> repeats) up to max_new_tokens.
    endless = generate(model, tokenizer, "H", max_new_tokens=20, stop_token=None)
    assert endless.stop_reason == "max_new_tokens" and len(endless.token_ids) == 20
    assert endless.text == "i dog." + EOT * 14


def test_max_new_tokens():
    tokenizer, model = byte_tokenizer(), tiny_byte_model()
    completion = generate(model, tokenizer, "Once", max_new_tokens=7, stop_token=None, seed=0)
    assert len(completion.token_ids) == 7 and completion.stop_reason == "max_new_tokens"
    assert generate(model, tokenizer, "Once", max_new_tokens=0).token_ids == []


def test_seeds_reproduce_and_different_seeds_differ():
    tokenizer, model = byte_tokenizer(), tiny_byte_model()
    options = {"max_new_tokens": 24, "temperature": 1.0, "top_p": 0.95, "stop_token": None}
    first = generate(model, tokenizer, "Once", seed=5, **options)
    assert generate(model, tokenizer, "Once", seed=5, **options).token_ids == first.token_ids
    assert generate(model, tokenizer, "Once", seed=6, **options).token_ids != first.token_ids
    assert first.seed == 5


def test_a_list_of_prompts_is_one_batch_and_prompt_i_uses_seed_plus_i():
    tokenizer, model = byte_tokenizer(), tiny_byte_model()
    prompts = ["Once upon", "A", "The dog ran"]
    batch = generate(model, tokenizer, prompts, max_new_tokens=12, seed=40, top_k=20)
    assert isinstance(batch, list) and all(isinstance(completion, Completion) for completion in batch)
    for index, prompt in enumerate(prompts):
        alone = generate(model, tokenizer, prompt, max_new_tokens=12, seed=40 + index, top_k=20)
        assert (batch[index].token_ids, batch[index].text) == (alone.token_ids, alone.text)


def test_ids_the_tokenizer_lacks_are_never_sampled():
    # A model may have more embedding rows than the tokenizer has tokens (a vocabulary rounded up for speed).
    model = ScriptedModel({ord("A"): 299}, vocab_size=300)
    completion = generate(model, byte_tokenizer(), "A", max_new_tokens=30, temperature=1.0, seed=0, stop_token=None)
    assert len(completion.token_ids) == 30 and max(completion.token_ids) < 257


def test_an_empty_prompt_starts_a_new_document():
    tokenizer = byte_tokenizer()
    model = ScriptedModel({256: ord("A"), ord("A"): 256})
    completion = generate(model, tokenizer, "", max_new_tokens=5)
    assert completion.prompt_ids == [256] and completion.text == "A" and completion.stop_reason == "stop_token"


def test_streaming_never_splits_a_multibyte_character():
    text = "é€x😀"  # 2, 3, 1 and 4 bytes, no byte twice
    tokenizer = byte_tokenizer()
    model = ScriptedModel(chain(ord("A"), *text.encode("utf-8"), 256))
    pieces = list(stream_generate(model, tokenizer, "A", max_new_tokens=50))
    assert pieces == ["é", "€", "x", "😀"]  # each character once complete, nothing for its partial bytes


def test_streaming_reassembles_to_the_non_streaming_text():
    tokenizer = byte_tokenizer()
    for seed in range(3):
        # A random byte-level model writes invalid UTF-8 too: both paths must turn it into the same U+FFFD.
        model = tiny_byte_model(seed)
        options = {"max_new_tokens": 40, "temperature": 1.5, "seed": seed, "stop_token": None}
        streamed = "".join(stream_generate(model, tokenizer, "Once upon a time", **options))
        completion = generate(model, tokenizer, "Once upon a time", **options)
        assert streamed == completion.text == tokenizer.decode(completion.token_ids)


def test_streaming_stops_with_a_truncated_character_as_decode_does():
    tokenizer = byte_tokenizer()
    model = ScriptedModel(chain(ord("A"), ord("b"), 0xE2, 0x82, 256))  # "€" cut after two of its three bytes
    pieces = list(stream_generate(model, tokenizer, "A", max_new_tokens=50))
    assert "".join(pieces) == tokenizer.decode([ord("b"), 0xE2, 0x82]) == "b\ufffd"


@given(st.binary(max_size=64))
def test_incremental_decoding_equals_decoding_the_whole(data):
    tokenizer = byte_tokenizer()
    decoder = IncrementalTextDecoder(tokenizer)
    streamed = "".join(decoder.add(byte) for byte in data) + decoder.finish()
    assert streamed == tokenizer.decode(list(data))


@given(st.text(max_size=30))
def test_incremental_decoding_of_valid_text_emits_no_replacement_characters(text):
    tokenizer = byte_tokenizer()
    decoder = IncrementalTextDecoder(tokenizer)
    pieces = [decoder.add(byte) for byte in text.encode("utf-8")] + [decoder.finish()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces) or "\ufffd" in text


def test_the_callers_code_between_steps_keeps_autograd():
    # Generation runs the model without autograd, but must not switch it off for the code consuming the stream
    # (e.g. a training loop that streams a sample between steps).
    tokenizer, model = byte_tokenizer(), tiny_byte_model()
    for _ in stream_generate(model, tokenizer, "Once", max_new_tokens=3, stop_token=None):
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
