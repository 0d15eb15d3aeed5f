"""cs336-bpe: a byte-level BPE tokenizer, written from scratch to be read, exact and fast.

    >>> from cs336_bpe import train_bpe, Tokenizer
    >>> vocab, merges = train_bpe("corpus.txt", vocab_size=1000, special_tokens=["<|endoftext|>"])  # doctest: +SKIP
    >>> tokenizer = Tokenizer(vocab, merges, special_tokens=["<|endoftext|>"])                     # doctest: +SKIP
    >>> tokenizer.decode(tokenizer.encode("Once upon a time"))                                       # doctest: +SKIP
    'Once upon a time'

The names below are imported on first use (PEP 562 `__getattr__`), not when the package is imported: a command
line that only needs `friendly_errors` (cs336-train's) should not wait for numpy to load.
"""

import importlib

# The function `pretokenize` shares its name with its module: imported lazily, the module (which other modules
# import first) would take the name. Imported here, the function has it, as it always had (regex: ~40 ms).
from cs336_bpe.pretokenize import pretokenize as pretokenize

# public name -> the module that defines it
_EXPORTS = {
    "BPEInputError": "errors",
    "atomic_write": "atomic", "ensure_writable_directory": "atomic",
    "friendly_errors": "cli_errors",
    "encode_file": "corpus", "open_token_file": "corpus", "read_token_metadata": "corpus",
    "GPT2_PRETOKEN_PATTERN": "pretokenize", "count_pretokens": "pretokenize",
    "Tokenizer": "tokenizer",
    "train_bpe": "training",
}

__all__ = sorted([*_EXPORTS, "pretokenize"])
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cs336_bpe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"cs336_bpe.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
