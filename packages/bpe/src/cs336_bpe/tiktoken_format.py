"""OpenAI tiktoken's format: a ``.tiktoken`` rank file, so tiktoken encodes with our trained BPE.

tiktoken describes a BPE by *ranks* alone, one line per token, its bytes in base64 and its rank:

    IQ== 1        (b"!")
    aGU= 257      (b"he", the first merge)

To encode a pre-token it starts from single bytes and repeatedly joins the adjacent pair whose *concatenation*
has the lowest rank. Our encoder applies the *merge list*, earliest first. The two agree when the ranks of
merged tokens follow the order of the merges, and that is what our vocabulary layout already is: special
tokens, then the 256 bytes, then one token per merge in the order learned. So a rank is simply our id, and
tiktoken returns our ids unchanged, with nothing to map:

    rank of a single byte       its id (1 + byte with one special token; single bytes are never the
                                result of a join, so their ranks do not affect merging)
    rank of a merged token      its id = 256 + number of special tokens + its merge's position
    special tokens              passed to tiktoken as `special_tokens` with their ids; they are not in the file

`tiktoken_ranks` checks that promise and refuses, naming the token, a vocabulary that breaks it: merged tokens
whose ids do not grow with the merge order (a hand-made or reordered vocabulary), or a token of several bytes
that no merge produces (tiktoken would join pieces into it; our encoder never does). One case it does not catch:
tiktoken joins any two adjacent pieces whose concatenation has a rank, even if that pair is not a merge (merges
(a,b), (b,c), (a,bc) give "abc" = [ab, c] for us and [abc] for tiktoken). Tokenizers trained here cannot have
it (not seen in any; not proven); a vocabulary read from someone else's tokenizer.json can.

A ``.tiktoken`` file holds neither the pre-tokenization regex nor the special tokens, so they go beside it in
``tiktoken_config.json`` (`pat_str`: GPT-2's pattern, which is ours; `special_tokens`). `tiktoken_encoding`
builds the `tiktoken.Encoding` from a tokenizer, `load_tiktoken_encoding` from those two files.
tiktoken is not a dependency of cs336-bpe: only those two functions import it.

One caution when loading the file with tiktoken's own ``tiktoken.load.load_tiktoken_bpe``: it caches what it
read under a key made from the *path*, so after writing a new file to the same path it returns the old ranks
(set ``TIKTOKEN_CACHE_DIR=""`` to turn the cache off). `read_tiktoken_file` here has no cache.
"""

import base64
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cs336_bpe.atomic import atomic_write
from cs336_bpe.errors import BPEInputError
from cs336_bpe.pretokenize import GPT2_PRETOKEN_PATTERN

RANKS_FILE = "tokenizer.tiktoken"
CONFIG_FILE = "tiktoken_config.json"

if TYPE_CHECKING:
    from cs336_bpe.tokenizer import Tokenizer


def tiktoken_ranks(tokenizer: "Tokenizer") -> dict[bytes, int]:
    """{token bytes: rank} for every token but the special ones; rank = our id (see the module docstring)."""
    special_ids = set(tokenizer.special_token_ids.values())
    ranks = {token: token_id for token_id, token in tokenizer.vocab.items() if token_id not in special_ids}
    previous_id, previous_merge, merged_tokens = -1, None, set()
    for left, right in tokenizer.merges:
        merged = left + right
        if merged in merged_tokens:  # a repeated merge never applies, in our encoder or in tiktoken
            continue
        merged_tokens.add(merged)
        if ranks[merged] <= previous_id:
            raise BPEInputError(
                f"merge {left!r} + {right!r} makes id {ranks[merged]}, but the earlier merge {previous_merge!r} made "
                f"id {previous_id}: tiktoken applies merges in the order of their ids, so ids of merged tokens must "
                "grow with the merge order (as cs336-bpe's own layout does); renumber the vocabulary"
            )
        previous_id, previous_merge = ranks[merged], merged
    unreachable = [token for token in ranks if len(token) > 1 and token not in merged_tokens]
    if unreachable:
        raise BPEInputError(
            f"token {unreachable[0]!r} (id {ranks[unreachable[0]]}) has several bytes but no merge makes it; tiktoken "
            f"would still join pieces into it, so it cannot reproduce this tokenizer ({len(unreachable)} such tokens)"
        )
    return ranks


def write_tiktoken_files(tokenizer: "Tokenizer", directory: str | os.PathLike) -> list[Path]:
    """Write ``tokenizer.tiktoken`` (ranks) and ``tiktoken_config.json`` (regex, special tokens) into `directory`."""
    directory = Path(directory)
    ranks = tiktoken_ranks(tokenizer)
    with atomic_write(directory / RANKS_FILE, "w", encoding="ascii") as handle:
        for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
            handle.write(f"{base64.b64encode(token).decode('ascii')} {rank}\n")
    config = {"pat_str": GPT2_PRETOKEN_PATTERN, "special_tokens": tokenizer.special_token_ids}
    with atomic_write(directory / CONFIG_FILE, "w", encoding="utf-8") as handle:
        json.dump(config, handle, ensure_ascii=False, indent=2)
        handle.write("\n")
    return [directory / RANKS_FILE, directory / CONFIG_FILE]


def read_tiktoken_file(path: str | os.PathLike) -> dict[bytes, int]:
    """{token bytes: rank} from a ``.tiktoken`` file (no cache, unlike tiktoken's loader)."""
    ranks = {}
    try:
        lines = Path(path).read_text(encoding="ascii").splitlines()
    except (FileNotFoundError, UnicodeDecodeError) as error:
        raise BPEInputError(f"cannot read tiktoken file {str(path)!r}: {error}") from None
    for line_number, line in enumerate(lines, start=1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise BPEInputError(f"tiktoken file {str(path)!r} line {line_number}: expected 'BASE64 RANK', "
                                f"got {line!r}") from None
    return ranks


def tiktoken_encoding(tokenizer: "Tokenizer", name: str = "cs336-bpe"):
    """A `tiktoken.Encoding` that gives `tokenizer`'s ids (needs tiktoken installed).

    >>> encoding = tiktoken_encoding(Tokenizer.load("my-tokenizer"))                        # doctest: +SKIP
    >>> encoding.encode("Once upon a time<|endoftext|>", allowed_special="all")              # doctest: +SKIP
    """
    return _encoding(name, tiktoken_ranks(tokenizer), tokenizer.special_token_ids, GPT2_PRETOKEN_PATTERN)


def load_tiktoken_encoding(directory: str | os.PathLike, name: str = "cs336-bpe"):
    """The `tiktoken.Encoding` saved in `directory` by `write_tiktoken_files` (needs tiktoken installed)."""
    directory = Path(directory)
    try:
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BPEInputError(f"{str(directory)!r} has no {CONFIG_FILE}; export the tokenizer with "
                            "`cs336-bpe export TOKENIZER_DIR OUT --format tiktoken`") from None
    return _encoding(name, read_tiktoken_file(directory / RANKS_FILE), config["special_tokens"], config["pat_str"])


def _encoding(name: str, ranks: dict[bytes, int], special_token_ids: dict[str, int], pattern: str):
    try:
        import tiktoken
    except ImportError:
        raise BPEInputError("tiktoken is not installed; `pip install tiktoken` to encode with it") from None
    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special_token_ids)
