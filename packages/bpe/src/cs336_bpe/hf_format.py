"""Hugging Face's tokenizer format: ``tokenizer.json`` (the `tokenizers` library) and ``tokenizer_config.json``.

With these two files, HF `tokenizers` (``Tokenizer.from_file``) and transformers (``AutoTokenizer``) encode
with our trained BPE at Rust speed and give our ids exactly. ``tokenizer.json`` describes the whole pipeline;
ours is GPT-2's:

    added_tokens    our special tokens, `special: true`: cut out of the text first, longest match first
    normalizer      none: the text is not changed
    pre_tokenizer   ByteLevel with GPT-2's regex (`use_regex`), no prefix space: the same pre-tokens as ours
    model           BPE: vocab {token string: id} and merges ["left right", ...] in the order they were learned
    decoder         ByteLevel: token strings back to bytes, then UTF-8

Token strings use GPT-2's byte-to-character table, as ``vocab.json`` does (see `gpt2_format`). Two details make
the ids match, each tested against HF tokenizers:

- A special token must also be in the BPE model's vocabulary, under its own text: HF gives an added token the
  id the model has for it, and otherwise a new id after the vocabulary, whatever id the file asked for.
- A merge listed twice is written once: HF keeps the *last* rank of a repeated merge, our encoder (and
  GPT-2's) the first.

``tokenizer_config.json`` is what transformers adds around it: the class to build (`PreTrainedTokenizerFast`,
no custom code), `<|endoftext|>` as the beginning- and end-of-text token when the tokenizer has it, the model's
context length, and `clean_up_tokenization_spaces: false` (otherwise decoding would glue " ." into ".").

`read_tokenizer_json` loads such a file back, ours or another byte-level BPE's (GPT-2's own loads), and refuses,
in one line, any tokenizer whose encoding ours cannot reproduce: another model (WordPiece, Unigram), a
normalizer, another pre-tokenizer, BPE options that change the result.
"""

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cs336_bpe.atomic import atomic_write
from cs336_bpe.errors import BPEInputError
from cs336_bpe.gpt2_format import string_to_token, token_to_string

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
END_OF_TEXT = "<|endoftext|>"  # used as transformers' bos_token and eos_token when the tokenizer has it

if TYPE_CHECKING:
    from cs336_bpe.tokenizer import Tokenizer

BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def tokenizer_json(tokenizer: "Tokenizer") -> dict:
    """The ``tokenizer.json`` document (a dict) of a byte-level BPE tokenizer."""
    special_token_ids = tokenizer.special_token_ids
    special_ids = set(special_token_ids.values())
    model_vocab = {token_to_string(token): token_id for token_id, token in sorted(tokenizer.vocab.items())
                   if token_id not in special_ids}
    for token, token_id in special_token_ids.items():
        if token in model_vocab:
            raise BPEInputError(
                f"special token {token!r} is spelled like the byte-level string of token {model_vocab[token]} in "
                "tokenizer.json, so HF tokenizers could not tell them apart; rename the special token"
            )
        model_vocab[token] = token_id
    unique_merges = list(dict.fromkeys(tokenizer.merges))  # a repeated merge never applies; HF would keep its last rank
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": token_id, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for token, token_id in sorted(special_token_ids.items(), key=lambda item: item[1])
        ],
        "normalizer": None,
        "pre_tokenizer": dict(BYTE_LEVEL),
        "post_processor": None,
        "decoder": dict(BYTE_LEVEL),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,  # True would take a whole pre-token from the vocabulary, skipping the merges
            "vocab": model_vocab,
            "merges": [f"{token_to_string(left)} {token_to_string(right)}" for left, right in unique_merges],
        },
    }


def tokenizer_config(special_token_ids: dict[str, int], model_max_length: int | None = None) -> dict:
    """transformers' ``tokenizer_config.json``: load with `PreTrainedTokenizerFast`, no custom code."""
    end_of_text = END_OF_TEXT if END_OF_TEXT in special_token_ids else None
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": end_of_text,
        "eos_token": end_of_text,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(token_id): {"content": token, "single_word": False, "lstrip": False, "rstrip": False,
                            "normalized": False, "special": True}
            for token, token_id in sorted(special_token_ids.items(), key=lambda item: item[1])
        },
    }
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    return config


def write_tokenizer_files(tokenizer: "Tokenizer", directory: str | os.PathLike,
                          model_max_length: int | None = None) -> list[Path]:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into `directory` (each atomically).

    `model_max_length`: the context length of the model the tokenizer goes with, if any.
    """
    directory = Path(directory)
    documents = {TOKENIZER_FILE: tokenizer_json(tokenizer),
                 TOKENIZER_CONFIG_FILE: tokenizer_config(tokenizer.special_token_ids, model_max_length)}
    for name, document in documents.items():
        with atomic_write(directory / name, "w", encoding="utf-8") as handle:
            json.dump(document, handle, ensure_ascii=False, indent=2)
            handle.write("\n")
    return [directory / name for name in documents]


def read_tokenizer_json(path: str | os.PathLike) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]], list[str]]:
    """(vocab, merges, special tokens) of a byte-level BPE ``tokenizer.json``; BPEInputError if it is not one.

    Every added token (special or not) becomes one of our special tokens: HF cuts both kinds out of the text
    before pre-tokenization, as we do with special tokens.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BPEInputError(f"tokenizer file {str(path)!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BPEInputError(f"tokenizer file {str(path)!r} is not valid JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("model"), dict):
        raise BPEInputError(f"{str(path)!r} is not a Hugging Face tokenizer.json: it has no \"model\" object")
    _check_byte_level_bpe(document, str(path))
    model = document["model"]

    special_tokens, special_ids = [], {}
    for added in document.get("added_tokens") or []:
        for option in ("lstrip", "rstrip", "single_word"):
            if added.get(option):
                raise BPEInputError(f"{str(path)!r}: added token {added.get('content')!r} has {option} = true, which "
                                    "cs336-bpe special tokens cannot express; remove that option")
        special_tokens.append(added["content"])
        special_ids[added["id"]] = added["content"].encode("utf-8")

    vocab = {}
    for text, token_id in model.get("vocab", {}).items():
        if not isinstance(token_id, int) or token_id < 0:
            raise BPEInputError(f"{str(path)!r}: id {token_id!r} of {text!r} is not an id >= 0")
        vocab[token_id] = special_ids.get(token_id) or string_to_token(text, str(path))
    vocab.update(special_ids)  # an added token missing from the model's vocabulary keeps the id given to it
    return vocab, [_read_merge(merge, str(path)) for merge in model.get("merges", [])], special_tokens


def _read_merge(merge, source: str) -> tuple[bytes, bytes]:
    # tokenizers writes merges as "left right" strings (before 0.20) or as [left, right] pairs (since).
    parts = merge.split(" ") if isinstance(merge, str) else merge
    if not isinstance(parts, list) or len(parts) != 2:
        raise BPEInputError(f"{source}: merge {merge!r} is neither 'left right' nor [left, right]")
    return string_to_token(parts[0], source), string_to_token(parts[1], source)


def _check_byte_level_bpe(document: dict, source: str) -> None:
    """Refuse, in one line, a tokenizer.json whose encoding our byte-level BPE would not reproduce."""
    model = document["model"]
    if model.get("type", "BPE") != "BPE":
        raise BPEInputError(f"{source} is a {model.get('type')} tokenizer, not byte-level BPE; cs336-bpe loads only "
                            "byte-level BPE tokenizers (GPT-2 style)")
    pre_tokenizer = document.get("pre_tokenizer") or {}
    if pre_tokenizer.get("type") != "ByteLevel":
        kind = pre_tokenizer.get("type") or "none"
        raise BPEInputError(f"{source} is not byte-level BPE: its pre_tokenizer is {kind}, not ByteLevel with GPT-2's "
                            "regex, so cs336-bpe would split its text differently")
    if pre_tokenizer.get("add_prefix_space") or not pre_tokenizer.get("use_regex", True):
        raise BPEInputError(f"{source}: its ByteLevel pre_tokenizer has add_prefix_space = "
                            f"{pre_tokenizer.get('add_prefix_space')}, use_regex = {pre_tokenizer.get('use_regex')}; "
                            "cs336-bpe needs add_prefix_space false and use_regex true (GPT-2's)")
    if document.get("normalizer"):
        raise BPEInputError(f"{source} has a {document['normalizer'].get('type')} normalizer, which changes the text "
                            "before encoding; cs336-bpe loads only tokenizers without one")
    for option, harmless in (("dropout", None), ("continuing_subword_prefix", None), ("end_of_word_suffix", None),
                             ("ignore_merges", False)):
        if model.get(option) not in (harmless, "") and not (option == "dropout" and model.get(option) == 0):
            raise BPEInputError(f"{source}: its BPE model sets {option} = {model.get(option)!r}, which changes the "
                                "encoding; cs336-bpe cannot reproduce it")
    post_processor = document.get("post_processor") or {}
    if post_processor.get("type") not in (None, "ByteLevel"):
        raise BPEInputError(f"{source} has a {post_processor['type']} post_processor, which adds tokens to every "
                            "encoding; cs336-bpe loads only tokenizers without one (or ByteLevel's)")
