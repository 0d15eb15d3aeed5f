"""The one exception type for bad input to cs336-bpe.

Every message names what was wrong (with the offending value) and what to do about it, so the CLI can print
it as-is and exit non-zero.
"""


class BPEInputError(ValueError):
    """Bad input to cs336-bpe: a missing or non-text file, an impossible vocabulary size, bad special tokens..."""
