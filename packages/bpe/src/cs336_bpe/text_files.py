"""Input text files: check that a path is a non-empty text file, and decode its bytes with a clear error.

Every reader of a training or encoding input goes through these, so a missing, empty, binary or non-UTF-8 file
is always the same one-line `BPEInputError`, naming the file (and the offset of the first bad byte).
"""

import os
from pathlib import Path

from cs336_bpe.errors import BPEInputError

HEAD_BYTES = 1 << 16  # how much of the file we look at for NUL bytes


def check_text_file(path: str | os.PathLike) -> int:
    """Check that `path` is a non-empty, non-binary file and return its size in bytes."""
    path = Path(path)
    if not path.exists():
        raise BPEInputError(f"input file {str(path)!r} does not exist; pass the path of a UTF-8 text file")
    if not path.is_file():
        raise BPEInputError(f"input {str(path)!r} is not a regular file; pass the path of a UTF-8 text file")
    size = path.stat().st_size
    if size == 0:
        raise BPEInputError(f"input file {str(path)!r} is empty; pass a file with some text in it")
    with path.open("rb") as handle:
        head = handle.read(HEAD_BYTES)
    if b"\x00" in head:
        raise BPEInputError(
            f"input file {str(path)!r} contains NUL bytes at offset {head.index(0)}: it looks binary, "
            "not like UTF-8 text; pass a text file"
        )
    return size


def decode_chunk(data: bytes, path: str | os.PathLike, offset: int) -> str:
    """Decode bytes read from `path` at `offset` as strict UTF-8; name the file and absolute byte offset of the
    first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        position = offset + error.start
        raise BPEInputError(
            f"input file {str(path)!r} is not valid UTF-8: byte {data[error.start]:#04x} at offset {position} "
            f"({error.reason}); convert it to UTF-8 first (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None
