"""cs336-bpe: a byte-level BPE tokenizer, written from scratch to be read, exact and fast.

    >>> from cs336_bpe import train_bpe, Tokenizer
    >>> vocab, merges = train_bpe("corpus.txt", vocab_size=1000, special_tokens=["<|endoftext|>"])  # doctest: +SKIP
    >>> tokenizer = Tokenizer(vocab, merges, special_tokens=["<|endoftext|>"])                     # doctest: +SKIP
    >>> tokenizer.decode(tokenizer.encode("Once upon a time"))                                       # doctest: +SKIP
    'Once upon a time'
"""

from cs336_bpe.atomic import atomic_write, ensure_writable_directory
from cs336_bpe.corpus import encode_file, open_token_file, read_token_metadata
from cs336_bpe.errors import BPEInputError
from cs336_bpe.pretokenize import GPT2_PRETOKEN_PATTERN, count_pretokens, pretokenize
from cs336_bpe.tokenizer import Tokenizer
from cs336_bpe.training import train_bpe

__all__ = [
    "BPEInputError",
    "atomic_write",
    "ensure_writable_directory",
    "encode_file",
    "open_token_file",
    "read_token_metadata",
    "GPT2_PRETOKEN_PATTERN",
    "Tokenizer",
    "count_pretokens",
    "pretokenize",
    "train_bpe",
]
__version__ = "0.1.0"
