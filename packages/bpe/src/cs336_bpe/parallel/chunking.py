"""Cut a large text file into chunks that can be pre-tokenized or encoded independently, in parallel.

Used by `counting` (chunks bound the memory of each counting process) and `corpus` (chunks are what the
encoding processes claim, see `chunk_workers`).

A chunk boundary must not change the result: the pieces of the file, processed one by one, must give exactly
what the whole file gives. Two kinds of places are safe (see `pretokenize`):

1. the start of a special token such as ``<|endoftext|>`` (a hard boundary for pre-tokenization), and
2. failing that, a fragment boundary: a space followed by a printable ASCII character.

Both are plain ASCII bytes, which never occur inside a multi-byte UTF-8 character, so a byte offset found this
way is also a character boundary: each chunk decodes on its own. We only ever read small windows around the
target offsets, so finding the boundaries of a 10 GB file costs a few reads, not a pass over the file.
"""

import os
import re

from cs336_bpe.pretokenize import special_tokens_pattern
from cs336_bpe.text_files import decode_chunk

WINDOW_BYTES = 1 << 16  # how far we read at a time when looking for a boundary
_FRAGMENT_BOUNDARY_BYTES_RE = re.compile(rb" (?=[!-~])")


def _next_boundary(
    handle, target: int, file_size: int, special_re: re.Pattern[bytes] | None, max_special: int
) -> int:
    """The first safe boundary at or after byte `target` (or `file_size` if there is none)."""
    # Start reading `max_special` bytes early so that a special token straddling `target` is seen whole
    # and we never cut inside it.
    window_start = max(0, target - max_special)
    while window_start < file_size:
        handle.seek(window_start)
        window = handle.read(WINDOW_BYTES + max_special)
        special_spans = [m.span() for m in special_re.finditer(window)] if special_re is not None else []
        for start, _ in special_spans:
            if window_start + start >= target:
                return window_start + start
        for match in _FRAGMENT_BOUNDARY_BYTES_RE.finditer(window):
            position = window_start + match.start()
            inside_special = any(start < match.start() < end for start, end in special_spans)
            if position >= target and not inside_special:
                return position
        window_start += WINDOW_BYTES
    return file_size


def chunk_spans(
    path: str | os.PathLike, desired_chunk_bytes: int, special_tokens: list[str] | None = None
) -> list[tuple[int, int]]:
    """Split the file into (start, end) byte spans of about `desired_chunk_bytes` each, cut at safe places.

    The spans are contiguous, cover the whole file and are each non-empty.
    """
    special_tokens = special_tokens or []
    file_size = os.path.getsize(path)
    special_re = special_tokens_pattern(special_tokens, as_bytes=True)
    max_special = max((len(token.encode("utf-8")) for token in special_tokens), default=0)
    desired_chunk_bytes = max(1, desired_chunk_bytes)
    boundaries = [0]
    with open(path, "rb") as handle:
        while boundaries[-1] < file_size:
            # Targets are multiples of the chunk size, not offsets from the last boundary: the small overshoots
            # of the boundaries do not add up, and the file gets as many chunks as asked for.
            target = max(len(boundaries) * desired_chunk_bytes, boundaries[-1] + 1)
            if target >= file_size:
                boundaries.append(file_size)
                break
            boundary = _next_boundary(handle, target, file_size, special_re, max_special)
            boundaries.append(boundary)
    return [(start, end) for start, end in zip(boundaries, boundaries[1:], strict=False) if end > start]


def read_span(path: str | os.PathLike, start: int, end: int) -> str:
    """Read and decode bytes [start, end) of a file."""
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(end - start)
    return decode_chunk(data, path, start)
