"""Our trained BPE in other libraries: HF tokenizers / transformers (tokenizer.json) and tiktoken (.tiktoken).

The references are the libraries themselves, reading the files we write: they must give our ids exactly, on the
course fixtures and on generated Unicode, with and without special tokens (overlapping ones included).
"""

import json

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cs336_bpe import BPEInputError, Tokenizer, train_bpe
from cs336_bpe.cli import main as bpe_main
from cs336_bpe.hf_format import tokenizer_json
from cs336_bpe.tiktoken_format import load_tiktoken_encoding, read_tiktoken_file, tiktoken_encoding, tiktoken_ranks

tokenizers = pytest.importorskip("tokenizers")
tiktoken = pytest.importorskip("tiktoken")

FIXTURE_TEXTS = ["corpus.en", "tinystories_sample.txt", "address.txt", "german.txt",
                 "special_token_trailing_newlines.txt", "special_token_double_newlines_non_whitespace.txt"]
# Overlapping special tokens (the longest must win), and one with a space and non-ASCII letters: HF must find it
# under its own text in the BPE vocabulary, where no byte-level string could collide with it.
SPECIAL_TOKENS = ["<|endoftext|>", "<|endoftext|><|endoftext|>", "<|fin de l'histoire|>", "<|ü|>"]


@pytest.fixture(scope="module")
def trained(fixtures_dir) -> dict[str, Tokenizer]:
    """Two tokenizers trained on corpus.en: with special tokens, and without any."""
    vocab, merges = train_bpe(fixtures_dir / "corpus.en", 1000, SPECIAL_TOKENS, num_workers=1)
    plain_vocab, plain_merges = train_bpe(fixtures_dir / "corpus.en", 800, [], num_workers=1)
    return {"special": Tokenizer(vocab, merges, SPECIAL_TOKENS), "plain": Tokenizer(plain_vocab, plain_merges)}


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> dict[str, tuple]:
    """name -> (our tokenizer, HF tokenizers' Tokenizer, tiktoken's Encoding), each from the files we wrote."""
    result = {}
    for name, tokenizer in trained.items():
        directory = tmp_path_factory.mktemp(name)
        tokenizer.save(directory, format="hf")
        tokenizer.save(directory, format="tiktoken")
        result[name] = (tokenizer, tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json")),
                        load_tiktoken_encoding(directory))
    return result


def _tiktoken_ids(encoding, text: str) -> list[int]:
    # Special tokens are encoded as such; text that merely looks like one (without special tokens) as text.
    return encoding.encode(text, allowed_special="all", disallowed_special=())


@pytest.mark.parametrize("name", ["special", "plain"])
def test_fixture_texts_give_our_ids(exported, fixtures_dir, name):
    ours, hf, encoding = exported[name]
    for text_name in FIXTURE_TEXTS:
        text = (fixtures_dir / text_name).read_text(encoding="utf-8")
        ids = ours.encode(text)
        assert hf.encode(text).ids == ids, text_name
        assert _tiktoken_ids(encoding, text) == ids, text_name
        assert hf.decode(ids, skip_special_tokens=False) == ours.decode(ids) == encoding.decode(ids), text_name


_pieces = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
    st.text(st.characters(codec="ascii"), max_size=12),
    st.sampled_from([" ", "  ", "\n", "\n\n", " \n", "\t", "\u00a0", "\u3000", "\u2028", "\x1c", "\x85", "'s", "'ll",
                     "’", " the", "Ġ", "ü", "12", "²", "<|", "|>", "<|endoftext", *SPECIAL_TOKENS]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(_pieces, max_size=10).map("".join))
def test_generated_unicode_gives_our_ids(exported, text):
    for ours, hf, encoding in exported.values():
        ids = ours.encode(text)
        assert hf.encode(text).ids == ids
        assert _tiktoken_ids(encoding, text) == ids


def test_the_longest_special_token_wins_in_every_library(exported):
    ours, hf, encoding = exported["special"]
    text = "a<|endoftext|><|endoftext|><|endoftext|>b"
    ids = ours.encode(text)
    assert ids[1:3] == [ours.special_token_ids["<|endoftext|><|endoftext|>"], ours.special_token_ids["<|endoftext|>"]]
    assert hf.encode(text).ids == ids
    assert _tiktoken_ids(encoding, text) == ids


def test_transformers_autotokenizer_loads_the_directory(trained, tmp_path, fixtures_dir):
    transformers = pytest.importorskip("transformers")
    ours = trained["special"]
    ours.save(tmp_path, format="hf", model_max_length=256)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf.eos_token == hf.bos_token == "<|endoftext|>" and hf.model_max_length == 256
    text = (fixtures_dir / "tinystories_sample.txt").read_text(encoding="utf-8")
    assert hf(text)["input_ids"] == ours.encode(text)
    assert hf.decode(ours.encode(text)) == text


def test_hf_round_trip_is_the_same_tokenizer(trained, tmp_path):
    for tokenizer in trained.values():
        tokenizer.save(tmp_path / "hf", format="hf")
        for path in (tmp_path / "hf", tmp_path / "hf" / "tokenizer.json"):  # a directory or the file itself
            loaded = Tokenizer.load(path)
            assert loaded.vocab == tokenizer.vocab and loaded.merges == tokenizer.merges
            assert loaded.special_tokens == tokenizer.special_tokens
            assert loaded.fingerprint() == tokenizer.fingerprint()


def test_gpt2_tokenizer_json_matches_hf_reading_gpt2s_own_files(gpt2_tokenizer, fixtures_dir, tmp_path):
    """Our tokenizer.json of GPT-2 encodes as HF's own ByteLevelBPETokenizer reading vocab.json/merges.txt."""
    reference = tokenizers.ByteLevelBPETokenizer(str(fixtures_dir / "gpt2_vocab.json"),
                                                 str(fixtures_dir / "gpt2_merges.txt"))
    gpt2_tokenizer.save(tmp_path, format="hf")
    exported_gpt2 = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text_name in ("tinystories_sample.txt", "german.txt", "address.txt"):
        text = (fixtures_dir / text_name).read_text(encoding="utf-8").replace("<|endoftext|>", "")
        assert exported_gpt2.encode(text).ids == reference.encode(text).ids == gpt2_tokenizer.encode(text), text_name
    assert Tokenizer.load(tmp_path).fingerprint() == gpt2_tokenizer.fingerprint()


def test_gpt2_tiktoken_ranks_are_tiktokens_own(gpt2_tokenizer, tiktoken_gpt2, tmp_path):
    """Ranks = our ids, and for GPT-2 they are exactly the table tiktoken's GPT-2 encoding uses."""
    assert tiktoken_ranks(gpt2_tokenizer) == tiktoken_gpt2._mergeable_ranks
    gpt2_tokenizer.save(tmp_path, format="tiktoken")
    assert read_tiktoken_file(tmp_path / "tokenizer.tiktoken") == tiktoken_gpt2._mergeable_ranks
    assert json.loads((tmp_path / "tiktoken_config.json").read_text())["special_tokens"] == {"<|endoftext|>": 50256}


def test_our_tiktoken_file_reads_the_same_in_tiktoken(trained, tmp_path, monkeypatch):
    from tiktoken.load import load_tiktoken_bpe

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken caches by path; see tiktoken_format's docstring
    tokenizer = trained["special"]
    tokenizer.save(tmp_path, format="tiktoken")
    ranks = load_tiktoken_bpe(str(tmp_path / "tokenizer.tiktoken"))
    assert ranks == read_tiktoken_file(tmp_path / "tokenizer.tiktoken")
    special_ids = set(tokenizer.special_token_ids.values())
    assert ranks == {token: token_id for token_id, token in tokenizer.vocab.items() if token_id not in special_ids}
    encoding = tiktoken_encoding(tokenizer)
    assert encoding.encode("the cat<|endoftext|>", allowed_special="all") == tokenizer.encode("the cat<|endoftext|>")


def test_tiktoken_refuses_ids_out_of_merge_order():
    vocab = {byte: bytes([byte]) for byte in range(256)} | {256: b"ab", 257: b"he"}
    tokenizer = Tokenizer(vocab, [(b"h", b"e"), (b"a", b"b")])  # "he" was merged first but has the larger id
    with pytest.raises(BPEInputError, match="grow with the merge order"):
        tiktoken_ranks(tokenizer)


def test_tiktoken_refuses_a_token_no_merge_makes():
    vocab = {byte: bytes([byte]) for byte in range(256)} | {256: b"he", 257: b"xyz"}
    with pytest.raises(BPEInputError, match="no merge makes it"):
        tiktoken_ranks(Tokenizer(vocab, [(b"h", b"e")]))


def test_repeated_merge_keeps_its_first_rank_in_hf():
    vocab = {byte: bytes([byte]) for byte in range(256)} | {256: b"ab", 257: b"bc"}
    merges = [(b"a", b"b"), (b"b", b"c"), (b"a", b"b")]  # HF keeps a repeated merge's last rank; ours the first
    document = tokenizer_json(Tokenizer(vocab, merges))
    assert document["model"]["merges"] == ["a b", "b c"]
    hf = tokenizers.Tokenizer.from_str(json.dumps(document))
    assert hf.encode("abc").ids == Tokenizer(vocab, merges).encode("abc") == [256, 99]


# ---- tokenizer.json files that are not byte-level BPE -------------------------------------------------------------

def _save_hf(hf_tokenizer, tmp_path):
    path = tmp_path / "tokenizer.json"
    hf_tokenizer.save(str(path))
    return path


def test_loading_a_wordpiece_tokenizer_json_is_a_clear_error(tmp_path):
    wordpiece = tokenizers.Tokenizer(tokenizers.models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    with pytest.raises(BPEInputError, match="WordPiece tokenizer, not byte-level BPE"):
        Tokenizer.load(_save_hf(wordpiece, tmp_path))


def test_loading_a_bpe_without_byte_level_pre_tokenizer_is_a_clear_error(tmp_path):
    sentencepiece_like = tokenizers.Tokenizer(tokenizers.models.BPE())
    sentencepiece_like.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    with pytest.raises(BPEInputError, match="pre_tokenizer is Metaspace, not ByteLevel"):
        Tokenizer.load(_save_hf(sentencepiece_like, tmp_path))


def test_loading_a_byte_level_bpe_with_a_normalizer_is_a_clear_error(trained, tmp_path):
    document = tokenizer_json(trained["plain"])
    document["normalizer"] = {"type": "NFKC"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(BPEInputError, match="NFKC normalizer"):
        Tokenizer.load(tmp_path)


# ---- the command line ---------------------------------------------------------------------------------------------

def test_cli_export_writes_both_formats(trained, tmp_path):
    trained["special"].save(tmp_path / "ours")
    runner = CliRunner()
    for export_format, files in (("hf", ["tokenizer.json", "tokenizer_config.json"]),
                                 ("tiktoken", ["tokenizer.tiktoken", "tiktoken_config.json"])):
        result = runner.invoke(bpe_main, ["export", str(tmp_path / "ours"), str(tmp_path / "out"),
                                          "--format", export_format])
        assert result.exit_code == 0, result.output
        assert all((tmp_path / "out" / name).is_file() for name in files)
    assert Tokenizer.load(tmp_path / "out").fingerprint() == trained["special"].fingerprint()


def test_cli_export_of_a_missing_tokenizer_is_one_line(tmp_path):
    result = CliRunner().invoke(bpe_main, ["export", str(tmp_path / "none"), str(tmp_path / "out"),
                                           "--format", "hf"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "is not a tokenizer directory" in lines[0]
