"""Tokenizer: tiktoken parity, round trips, streaming, special tokens, decoding errors, on-disk format."""

import hashlib
import json
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cs336_bpe import BPEInputError, Tokenizer, pretokenize, reference, train_bpe
from cs336_bpe import tokenizer as tokenizer_module

FIXTURE_TEXTS = ["corpus.en", "tinystories_sample.txt", "address.txt", "german.txt",
                 "special_token_trailing_newlines.txt", "special_token_double_newlines_non_whitespace.txt"]
DATA_TEXTS = ["tinystories/valid.txt", "tinystories/train.txt", "owt/owt_valid_sample.txt"]


@pytest.fixture(scope="module")
def small_tokenizer(fixtures_dir):
    vocab, merges = train_bpe(fixtures_dir / "corpus.en", 500, ["<|endoftext|>"])
    return Tokenizer(vocab, merges, ["<|endoftext|>", "<|endoftext|><|endoftext|>"])


# Overlapping and chained merges: "aaaa" must become aa|aa (left to right), "aaa" aa|a, then "aaa" + "a" etc.
OVERLAP_MERGES = [(b"a", b"a"), (b"aa", b"a"), (b"b", b"a"), (b"aa", b"aa"), (b"a", b"b"), (b"ba", b"aa"),
                  (b"aaa", b"a"), (b" ", b"a"), (b"ab", b"a"), (b" a", b"aa")]


@pytest.mark.parametrize("merges_source", ["overlapping", "corpus.en"])
@settings(max_examples=300, deadline=None)
@given(words=st.lists(st.text(alphabet="aab", min_size=1, max_size=12), min_size=1, max_size=8),
       english=st.text(alphabet="etaoinshrdlu ", max_size=60))
def test_merge_loop_matches_gpt2_reference_bpe(small_tokenizer, merges_source, words, english):
    if merges_source == "overlapping":
        vocab = {i: bytes([i]) for i in range(256)}
        for left, right in OVERLAP_MERGES:
            if left + right not in vocab.values():
                vocab[len(vocab)] = left + right
        tokenizer, text = Tokenizer(vocab, OVERLAP_MERGES), " ".join(words)
    else:
        tokenizer, text = small_tokenizer, english
    expected = [tokenizer.token_to_id[part] for pretoken in pretokenize(text)
                for part in reference.bpe_word(pretoken.encode("utf-8"), tokenizer.merges)]
    assert tokenizer.encode(text) == expected


def test_handout_encoding_example():
    """Handout §2.6.1, Example (bpe_encoding): 'the cat ate' -> [9, 7, 1, 5, 10, 3], plain and fast."""
    vocab = {0: b" ", 1: b"a", 2: b"c", 3: b"e", 4: b"h", 5: b"t", 6: b"th", 7: b" c", 8: b" a", 9: b"the",
             10: b" at"}
    merges = [(b"t", b"h"), (b" ", b"c"), (b" ", b"a"), (b"th", b"e"), (b" a", b"t")]
    assert reference.encode("the cat ate", vocab, merges, []) == [9, 7, 1, 5, 10, 3]
    full_vocab = {**vocab, **{11 + byte: bytes([byte]) for byte in range(256) if bytes([byte]) not in vocab.values()}}
    assert Tokenizer(full_vocab, merges).encode("the cat ate") == [9, 7, 1, 5, 10, 3]


@pytest.mark.parametrize("name", ["tinystories_sample.txt", "special_token_double_newlines_non_whitespace.txt"])
def test_encode_equals_the_plain_reference_with_special_tokens(small_tokenizer, fixtures_dir, name):
    text = (fixtures_dir / name).read_text(encoding="utf-8")[:20_000]
    tokenizer = small_tokenizer
    assert tokenizer.encode(text) == reference.encode(text, tokenizer.vocab, tokenizer.merges,
                                                      tokenizer.special_tokens)


@pytest.mark.parametrize("name", FIXTURE_TEXTS)
def test_matches_tiktoken_on_fixtures(fixtures_dir, gpt2_tokenizer, tiktoken_gpt2, name):
    text = (fixtures_dir / name).read_text(encoding="utf-8")
    ids = gpt2_tokenizer.encode(text)
    assert ids == tiktoken_gpt2.encode(text, allowed_special={"<|endoftext|>"})
    assert gpt2_tokenizer.decode(ids) == text


@pytest.mark.slow
@pytest.mark.parametrize("relative", DATA_TEXTS)
def test_matches_tiktoken_on_shared_corpora(data_dir, gpt2_tokenizer, tiktoken_gpt2, relative):
    text = (data_dir / relative).read_text(encoding="utf-8")
    assert gpt2_tokenizer.encode(text) == tiktoken_gpt2.encode(text, allowed_special={"<|endoftext|>"})


def test_special_token_edge_cases_next_to_newlines(gpt2_tokenizer, tiktoken_gpt2):
    for text in ["<|endoftext|>\n\ntesting!<|endoftext|>\n\n", "Hello\n<|endoftext|>\n", "\n\n<|endoftext|>",
                 "a <|endoftext|> b", "<|endoftext|><|endoftext|>", "x\n \n<|endoftext|> y"]:
        assert gpt2_tokenizer.encode(text) == tiktoken_gpt2.encode(text, allowed_special={"<|endoftext|>"})


def test_without_special_tokens_the_marker_is_plain_text(fixtures_dir, tiktoken_gpt2):
    tokenizer = Tokenizer.from_files(fixtures_dir / "gpt2_vocab.json", fixtures_dir / "gpt2_merges.txt")
    text = "Hello<|endoftext|>"
    assert tokenizer.encode(text) == tiktoken_gpt2.encode_ordinary(text)


def test_overlapping_special_tokens_longest_wins(small_tokenizer):
    double = small_tokenizer.special_token_ids["<|endoftext|><|endoftext|>"]
    single = small_tokenizer.special_token_ids["<|endoftext|>"]
    ids = small_tokenizer.encode("a<|endoftext|><|endoftext|>b<|endoftext|>")
    assert ids.count(double) == 1 and ids.count(single) == 1
    assert small_tokenizer.decode(ids) == "a<|endoftext|><|endoftext|>b<|endoftext|>"


def test_missing_special_tokens_are_appended(small_tokenizer):
    assert small_tokenizer.special_token_ids["<|endoftext|>"] == 0
    assert small_tokenizer.special_token_ids["<|endoftext|><|endoftext|>"] == 500
    assert small_tokenizer.vocab_size == 501


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_round_trip_any_unicode(small_tokenizer, text):
    assert small_tokenizer.decode(small_tokenizer.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=20), st.sampled_from(["<|endoftext|>", "<|endoftext|><|endoftext|>"])),
                max_size=10))
def test_round_trip_with_special_tokens(small_tokenizer, parts):
    text = "".join(parts)
    ids = small_tokenizer.encode(text)
    assert small_tokenizer.decode(ids) == text
    assert ids.count(0) == text.replace("<|endoftext|><|endoftext|>", "").count("<|endoftext|>")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.text(alphabet="ab é\n!<|>", max_size=12),
                          st.sampled_from(["<|endoftext|>", " the", "<|endoftext|><|endoftext|>"])), max_size=12),
       st.randoms(use_true_random=False))
def test_encode_iterable_equals_encode_under_random_chunking(small_tokenizer, parts, rng):
    text = "".join(parts)
    cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 8))))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    assert list(small_tokenizer.encode_iterable(pieces)) == small_tokenizer.encode(text)


def test_encode_iterable_on_file_lines_is_lazy_and_exact(fixtures_dir, gpt2_tokenizer):
    text = (fixtures_dir / "tinystories_sample.txt").read_text(encoding="utf-8")
    with open(fixtures_dir / "tinystories_sample.txt", encoding="utf-8") as handle:
        assert list(gpt2_tokenizer.encode_iterable(handle)) == gpt2_tokenizer.encode(text)

    consumed = []

    def lines():
        for line in text.splitlines(keepends=True):
            consumed.append(line)
            yield line

    stream = gpt2_tokenizer.encode_iterable(lines())
    next(stream)
    assert len(consumed) < 5  # the first ids come before the whole input is read


def test_random_character_chunking_of_real_text(fixtures_dir, gpt2_tokenizer):
    text = (fixtures_dir / "tinystories_sample.txt").read_text(encoding="utf-8")
    rng = random.Random(0)
    cuts = sorted(rng.sample(range(len(text)), 300))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    assert list(gpt2_tokenizer.encode_iterable(pieces)) == gpt2_tokenizer.encode(text)


def test_encode_array_holds_the_same_ids_in_the_narrowest_type(small_tokenizer):
    text = "Hello<|endoftext|> world"
    assert small_tokenizer.id_typecode == "H"  # 2 bytes an id: the vocabulary has 502 ids
    assert small_tokenizer.encode_array(text).tolist() == small_tokenizer.encode(text)
    large = Tokenizer({b: bytes([b]) for b in range(256)} | {70000: b"<unused>"}, [], ["<|endoftext|>"])
    ids = large.encode_array("hi<|endoftext|>")
    assert ids.itemsize == 4 and ids.tolist() == [104, 105, 70001]


def test_blocks_do_not_change_ids(fixtures_dir, gpt2_tokenizer, tiktoken_gpt2, monkeypatch):
    # Long texts are encoded BLOCK_CHARS at a time; tiny blocks put many block edges in one text.
    monkeypatch.setattr(tokenizer_module, "BLOCK_CHARS", 5)
    text = (fixtures_dir / "tinystories_sample.txt").read_text(encoding="utf-8")
    fresh = Tokenizer(gpt2_tokenizer.vocab, gpt2_tokenizer.merges, ["<|endoftext|>"])
    assert fresh.encode(text) == tiktoken_gpt2.encode(text, allowed_special={"<|endoftext|>"})


def test_lone_surrogate_is_a_clear_error(small_tokenizer):
    with pytest.raises(BPEInputError, match="lone surrogate"):
        small_tokenizer.encode("a \ud800 b")


def test_decode_replaces_malformed_utf8(small_tokenizer):
    byte_id = {token: i for i, token in small_tokenizer.vocab.items()}
    ids = [byte_id[b"a"], byte_id[bytes([0xE2])], byte_id[bytes([0x82])], byte_id[b"b"]]  # truncated "€"
    assert small_tokenizer.decode(ids) == "a\ufffdb"


def test_decode_unknown_id_is_a_clear_error(small_tokenizer):
    with pytest.raises(BPEInputError, match="token id 99999 is not in the vocabulary"):
        small_tokenizer.decode([1, 99999])


def test_save_load_round_trips_arbitrary_bytes(tmp_path):
    vocab = {0: "<|é|>".encode(), **{1 + b: bytes([b]) for b in range(256)}}
    merges = [(b"\xe2", b"\x82"), (b" ", b"\n"), (b"\xe2\x82", b"\xac"), (b"\x00", b"\xff")]
    for index, (left, right) in enumerate(merges):
        vocab[257 + index] = left + right
    tokenizer = Tokenizer(vocab, merges, ["<|é|>"])
    tokenizer.save(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.vocab == tokenizer.vocab and loaded.merges == merges and loaded.special_tokens == ["<|é|>"]
    assert loaded.fingerprint() == tokenizer.fingerprint()
    assert loaded.encode("€ \n<|é|>") == tokenizer.encode("€ \n<|é|>") == [259, 258, 0]
    # The files are GPT-2 style: the space byte shows as Ġ and newline as Ċ.
    assert "Ġ Ċ" in (tmp_path / "tok" / "merges.txt").read_text(encoding="utf-8")


def reference_fingerprint(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], special_tokens: list[str]):
    """The documented fingerprint, written out number by number with `struct`."""
    token_to_id = {token: token_id for token_id, token in vocab.items()}
    pairs = list(dict.fromkeys((token_to_id[left], token_to_id[right]) for left, right in merges))  # first wins
    bits = max(vocab).bit_length()
    ids = sorted(vocab)
    numbers = [len(ids), len(pairs), *ids, *(len(vocab[i]) for i in ids)]
    numbers += [left << bits | right for left, right in pairs]
    stream = b"".join(struct.pack("<Q", number) for number in numbers)
    stream += b"".join(vocab[i] for i in ids) + json.dumps(special_tokens).encode()
    return hashlib.sha256(stream).hexdigest()[:16]


def test_fingerprint_matches_its_definition(small_tokenizer, gpt2_tokenizer):
    for tokenizer in (small_tokenizer, gpt2_tokenizer):
        expected = reference_fingerprint(tokenizer.vocab, tokenizer.merges, tokenizer.special_tokens)
        assert tokenizer.fingerprint() == expected


def test_fingerprint_changes_with_anything_that_changes_encoding_or_decoding(small_tokenizer):
    vocab, merges, special = small_tokenizer.vocab, small_tokenizer.merges, small_tokenizer.special_tokens
    fingerprint = small_tokenizer.fingerprint()
    assert Tokenizer(vocab, merges, special).fingerprint() == fingerprint
    # A merge repeated later never applies, so it does not change the fingerprint.
    assert Tokenizer(vocab, [*merges, merges[0]], special).fingerprint() == fingerprint
    last_id = max(vocab)
    variants = [
        Tokenizer(vocab, merges[:-1], special),  # one merge fewer
        Tokenizer(vocab, [merges[1], merges[0], *merges[2:]], special),  # two merges swapped
        Tokenizer(vocab, merges, special[:1]),  # one special token fewer
        Tokenizer({**vocab, last_id + 1: b"\xff\xfe"}, merges, special),  # one more token
        Tokenizer({**{i: t for i, t in vocab.items() if i != last_id}, last_id + 5: vocab[last_id]}, merges, special),
    ]
    fingerprints = [variant.fingerprint() for variant in variants]
    assert fingerprint not in fingerprints and len(set(fingerprints)) == len(fingerprints)


def test_fingerprints_stored_before_token_format_v2_are_still_recognized(small_tokenizer, gpt2_tokenizer):
    # What cs336-bpe printed for GPT-2's fixture files before token-file format v2 (e.g. in `cs336-bpe stats`).
    assert gpt2_tokenizer.has_fingerprint("3424244a20353d87")
    assert gpt2_tokenizer.has_fingerprint(gpt2_tokenizer.fingerprint())
    assert not small_tokenizer.has_fingerprint("3424244a20353d87")
    assert not gpt2_tokenizer.has_fingerprint(small_tokenizer.fingerprint())


def test_vocabulary_ids_must_fit_a_uint32():
    vocab = {b: bytes([b]) for b in range(256)}
    with pytest.raises(BPEInputError, match="ids must be integers from 0 to 4,294,967,295"):
        Tokenizer({**vocab, 1 << 32: b"ab"}, [])
    with pytest.raises(BPEInputError, match=r"special tokens added\) run from -1 to 255"):
        Tokenizer({**vocab, -1: b"ab"}, [])
    with pytest.raises(BPEInputError, match="run from 0 to 4294967296"):  # no room left for the special token
        Tokenizer({**vocab, (1 << 32) - 1: b"ab"}, [], ["<|endoftext|>"])
    assert Tokenizer({**vocab, (1 << 32) - 1: b"ab"}, [(b"a", b"b")]).encode("ab") == [(1 << 32) - 1]


def test_bad_vocabularies_are_clear_errors(tmp_path):
    with pytest.raises(BPEInputError, match="lacks 1 single bytes"):
        Tokenizer({b: bytes([b]) for b in range(255)}, [])
    with pytest.raises(BPEInputError, match="not in the vocabulary"):
        Tokenizer({b: bytes([b]) for b in range(256)}, [(b"a", b"b")])
    with pytest.raises(BPEInputError, match="is not a tokenizer directory"):
        Tokenizer.load(tmp_path)
    (tmp_path / "vocab.json").write_text("not json", encoding="utf-8")
    with pytest.raises(BPEInputError, match="not valid JSON"):
        Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
