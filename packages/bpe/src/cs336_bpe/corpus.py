"""Encode a whole text file into a flat array of token ids on disk, plus a small metadata file.

Output, for ``encode_file(tokenizer, "train.txt", "train.bin")``:

- ``train.bin``: the token ids, one after another, as raw little-endian ``uint16`` (vocabularies up to
  65,536 tokens: 2 bytes a token) or ``uint32``. Open it with ``numpy.memmap`` (or `open_token_file`), which
  maps it into memory without reading it.
- ``train.bin.json``: ``{"format": ..., "dtype": "uint16", "num_tokens": ..., "vocab_size": ...,
  "tokenizer_fingerprint": ..., "source": ..., "source_bytes": ...}``. The trainer checks it before use.

The file is processed in chunks cut at special tokens (see `parallel.chunking`), encoded in parallel by several
processes (see `parallel.file_encoding`) and written in order, so memory stays bounded by a few chunks whatever the file
size. Output goes to a temporary name and is renamed only when complete: an interrupted run leaves no partial
``.bin`` (and no scratch files) behind. A run killed outright (SIGKILL runs no cleanup code) does leave its
scratch files; the next run to the same output removes them (see `writer_lock`).
"""

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cs336_bpe.atomic import atomic_write, ensure_writable_directory
from cs336_bpe.errors import BPEInputError
from cs336_bpe.parallel.chunking import chunk_spans
from cs336_bpe.parallel.file_encoding import encode_spans
from cs336_bpe.parallel.processes import workers_for
from cs336_bpe.text_files import check_text_file
from cs336_bpe.tokenizer import MAX_ID, Tokenizer, id_typecode
from cs336_bpe.writer_lock import exclusive_writer

# v2: same layout as v1, but the tokenizer fingerprint is computed differently (faster); v1 files must be re-encoded.
TOKEN_FILE_FORMAT = "cs336-tokens-v2"
ENCODE_CHUNK_BYTES = 4 << 20
REQUIRED_FIELDS = ("format", "dtype", "num_tokens", "vocab_size", "tokenizer_fingerprint")
TOKEN_DTYPES = ("uint16", "uint32")  # what `token_dtype` writes; any other type would read the ids wrongly
_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
_RECREATE = "re-create it with `cs336-bpe encode`"


def token_dtype(vocab_size: int) -> np.dtype:
    """The type of a token file's ids: the tokenizer's own (`id_typecode`: uint16 up to 65,536 tokens, else
    uint32), so an encoded block of ids is written to the file as it is."""
    if vocab_size > MAX_ID + 1:
        raise BPEInputError(
            f"the tokenizer's largest id is {vocab_size - 1:,}, which a uint32 token file cannot hold; "
            "renumber the vocabulary with ids below 4,294,967,296"
        )
    return np.dtype(id_typecode(vocab_size))


def metadata_path(token_path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(token_path)}.json")


def encode_file(
    tokenizer: Tokenizer,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    num_workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> dict:
    """Encode `input_path` to `output_path` (+ ``.json`` metadata); returns the metadata.

    `num_workers` processes encode, the main process being one of them (default: one per core).
    `on_progress(bytes_done, bytes_total)` is called as chunks are written. `on_note(line)` hears what the
    caller should know but is no error: that the scratch files of a killed earlier run were removed (by
    default it goes to the ``cs336_bpe.corpus`` logger: on stderr, unless logging is configured otherwise).
    """
    input_path, output_path = os.fspath(input_path), Path(output_path)
    file_size = check_text_file(input_path)
    dtype = token_dtype(tokenizer.vocab_size)
    num_workers = workers_for(file_size, num_workers)
    # About eight chunks per process: once the last chunk is claimed, the other processes finish soon after.
    spans = chunk_spans(input_path, min(ENCODE_CHUNK_BYTES, -(-file_size // (8 * num_workers))),
                        tokenizer.special_tokens)

    ensure_writable_directory(output_path.parent)
    # A writer killed by SIGKILL leaves its scratch files behind; the lock tells us its writer is dead (see
    # `writer_lock`), and refuses a second live writer of the same output.
    with exclusive_writer(output_path, metadata_path(output_path)) as removed:
        if removed:
            note = on_note or logging.getLogger(__name__).warning
            megabytes = sum(size for _, size in removed) / 1e6
            note(f"removed {len(removed)} leftover file(s) ({megabytes:.1f} MB) of an earlier encode to "
                 f"{str(output_path)!r} that was killed before it could clean up")
        num_tokens = encode_spans(tokenizer, input_path, spans, dtype, output_path, num_workers, on_progress)
        metadata = {
            "format": TOKEN_FILE_FORMAT,
            "dtype": dtype.name,
            "num_tokens": num_tokens,
            "vocab_size": tokenizer.vocab_size,
            "tokenizer_fingerprint": tokenizer.fingerprint(),
            "special_tokens": tokenizer.special_tokens,
            "source": os.path.abspath(input_path),
            "source_bytes": file_size,
        }
        with atomic_write(metadata_path(output_path), "w", encoding="utf-8") as handle:
            json.dump(metadata, handle, indent=2)
            handle.write("\n")
    return metadata


def read_token_metadata(token_path: str | os.PathLike) -> dict:
    """The metadata written beside a token file, checked field by field; a clear error if anything is off.

    A hand-edited or damaged metadata file must not become a traceback, nor, worse, a token file read with the
    wrong type (a "float16" file is still 2 bytes a token: the trainer would train on garbage and exit 0).
    """
    path = metadata_path(token_path)
    if not path.exists():
        raise BPEInputError(
            f"token file {os.fspath(token_path)!r} has no metadata file {str(path)!r}; "
            "(re-)create it with `cs336-bpe encode`"
        )
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BPEInputError(f"metadata file {str(path)!r} is not valid UTF-8 JSON ({error}); {_RECREATE}") from None
    except OSError as error:  # e.g. a directory by that name
        raise BPEInputError(f"cannot read metadata file {str(path)!r} ({error.strerror}); {_RECREATE}") from None
    if isinstance(metadata, dict) and metadata.get("format") == "cs336-tokens-v1":
        raise BPEInputError(
            f"token file {os.fspath(token_path)!r} was written by an older cs336-bpe (format cs336-tokens-v1), whose "
            "tokenizer fingerprints are computed differently; encode it again with `cs336-bpe encode`"
        )
    problem = _metadata_problem(metadata)
    if problem is not None:
        raise BPEInputError(f"metadata file {str(path)!r} {problem}; {_RECREATE}")
    return metadata


def _metadata_problem(metadata) -> str | None:
    """What is wrong with a token file's metadata, as the end of a sentence; None if nothing is."""
    if not isinstance(metadata, dict):
        return f"holds a JSON {_JSON_KINDS.get(type(metadata), 'value')} ({_shorten(metadata)}), not an object"
    missing = [field for field in REQUIRED_FIELDS if field not in metadata]
    if missing:
        return f"is missing the field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}"
    if metadata["format"] != TOKEN_FILE_FORMAT:
        return f"has format {_shorten(metadata['format'])}, expected {TOKEN_FILE_FORMAT!r}"
    dtype = metadata["dtype"]
    if dtype not in TOKEN_DTYPES:  # also refuses a non-string, which `in` compares without error
        return f"has dtype {_shorten(dtype)}, but token files hold {' or '.join(TOKEN_DTYPES)} ids"
    for field in ("num_tokens", "vocab_size"):
        value = metadata[field]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:  # bool is an int in Python
            return f"has {field} {_shorten(value)}, but it must be a non-negative integer"
    if not isinstance(metadata["tokenizer_fingerprint"], str):
        return f"has tokenizer_fingerprint {_shorten(metadata['tokenizer_fingerprint'])}, but it must be a string"
    largest_id = metadata["vocab_size"] - 1
    if largest_id > np.iinfo(dtype).max:
        return (f"has dtype {dtype!r}, which cannot hold the ids of its vocab_size {metadata['vocab_size']} "
                f"(up to {largest_id})")
    return None


def _shorten(value, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters: an error message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def open_token_file(token_path: str | os.PathLike, expected_fingerprint: str | None = None) -> np.ndarray:
    """Memory-map a token file after checking it against its metadata (and a tokenizer, if given)."""
    metadata = read_token_metadata(token_path)
    dtype = np.dtype(metadata["dtype"]).newbyteorder("<")  # token files are little-endian on every machine
    expected_bytes = metadata["num_tokens"] * dtype.itemsize
    actual_bytes = os.path.getsize(token_path)
    if actual_bytes != expected_bytes:
        raise BPEInputError(
            f"token file {os.fspath(token_path)!r} has {actual_bytes} bytes but its metadata promises "
            f"{metadata['num_tokens']} {dtype.name} tokens ({expected_bytes} bytes); re-run the encoding"
        )
    if expected_fingerprint is not None and metadata["tokenizer_fingerprint"] != expected_fingerprint:
        raise BPEInputError(
            f"token file {os.fspath(token_path)!r} was encoded with tokenizer {metadata['tokenizer_fingerprint']}, "
            f"not {expected_fingerprint}; encode it again with this tokenizer"
        )
    if metadata["num_tokens"] == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(token_path, dtype=dtype, mode="r")
