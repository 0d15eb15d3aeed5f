"""Data loading: random training windows, the exact ordered validation pass, and checked token files."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cs336_train import DataError, get_batch, open_tokens, validation_batches
from tests.adapters import run_get_batch


def test_get_batch_windows_are_uniform_and_shifted_by_one():
    dataset = np.arange(0, 100)
    context_length, batch_size, iterations = 7, 32, 1000
    starts = Counter()
    for _ in range(iterations):
        x, y = run_get_batch(dataset, batch_size, context_length, "cpu")
        assert x.shape == y.shape == (batch_size, context_length)
        assert x.dtype == y.dtype == torch.long
        assert torch.equal(x + 1, y)
        assert torch.equal(x, x[:, :1] + torch.arange(context_length))  # contiguous windows of the data
        starts.update(x[:, 0].tolist())
    possible = len(dataset) - context_length  # the last window must still have a target after it
    assert min(starts) == 0 and max(starts) == possible - 1
    expected = iterations * batch_size / possible
    deviation = (expected * (1 - 1 / possible)) ** 0.5
    assert all(abs(starts[i] - expected) < 5 * deviation for i in range(possible))


def test_get_batch_on_a_missing_device_is_an_error():
    with pytest.raises((RuntimeError, AssertionError)):
        run_get_batch(np.arange(100), 4, 7, "cuda:99")


def test_get_batch_is_reproducible_with_a_seeded_generator():
    tokens = np.arange(1000, dtype=np.uint16)
    first = get_batch(tokens, 4, 8, "cpu", rng=np.random.default_rng(3))
    second = get_batch(tokens, 4, 8, "cpu", rng=np.random.default_rng(3))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_get_batch_rejects_data_shorter_than_a_window():
    with pytest.raises(DataError, match="fewer than context_length"):
        get_batch(np.arange(8), 2, 8, "cpu")


@settings(max_examples=60, deadline=None)
@given(num_tokens=st.integers(2, 200), context_length=st.integers(1, 17), batch_size=st.integers(1, 5))
def test_validation_predicts_every_token_exactly_once_in_order(num_tokens, context_length, batch_size):
    tokens = np.arange(num_tokens, dtype=np.int64)
    inputs, targets = [], []
    for x, y in validation_batches(tokens, context_length, batch_size, "cpu"):
        assert x.shape == y.shape and x.shape[0] <= batch_size and x.shape[1] <= context_length
        assert torch.equal(x + 1, y)
        inputs += x.flatten().tolist()
        targets += y.flatten().tolist()
    assert targets == list(range(1, num_tokens))
    assert inputs == list(range(0, num_tokens - 1))


def test_open_tokens_accepts_a_matching_file(token_files):
    tokens = open_tokens(token_files["train"], model_vocab_size=token_files["vocab_size"])
    assert isinstance(tokens, np.memmap)  # memory-mapped, not read whole
    assert tokens.max() < token_files["vocab_size"]


def _copy_token_file(source, directory, metadata_changes=None, tokens=None):
    directory.mkdir(exist_ok=True)
    metadata = json.loads(source.with_name(source.name + ".json").read_text())
    data = np.fromfile(source, dtype=metadata["dtype"]) if tokens is None else tokens.astype(metadata["dtype"])
    metadata["num_tokens"] = len(data)
    metadata.update(metadata_changes or {})
    target = directory / "copy.bin"
    data.tofile(target)
    (directory / "copy.bin.json").write_text(json.dumps(metadata))
    return target


def test_open_tokens_errors_name_the_problem(token_files, tmp_path):
    vocab_size = token_files["vocab_size"]
    with pytest.raises(DataError, match="does not exist.*cs336-bpe encode"):
        open_tokens(tmp_path / "absent.bin", vocab_size)

    no_metadata = tmp_path / "bare.bin"
    np.arange(10, dtype=np.uint16).tofile(no_metadata)
    with pytest.raises(DataError, match="no metadata"):
        open_tokens(no_metadata, vocab_size)

    truncated = _copy_token_file(token_files["train"], tmp_path / "t")
    with open(truncated, "r+b") as handle:
        handle.truncate(truncated.stat().st_size - 2)
    with pytest.raises(DataError, match="bytes but its metadata promises"):
        open_tokens(truncated, vocab_size)

    with pytest.raises(DataError, match="was encoded with tokenizer"):
        open_tokens(token_files["train"], vocab_size, tokenizer_fingerprint="0000000000000000")

    with pytest.raises(DataError, match="model.vocab_size = 100"):
        open_tokens(token_files["train"], model_vocab_size=100)

    bad_id = _copy_token_file(token_files["train"], tmp_path / "b", tokens=np.array([1, 2, vocab_size + 5, 3]))
    with pytest.raises(DataError, match=f"contains id {vocab_size + 5}"):
        open_tokens(bad_id, model_vocab_size=vocab_size + 1)
