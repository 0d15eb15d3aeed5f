"""Read and write tokenizers in GPT-2's on-disk format: ``vocab.json`` and ``merges.txt``.

Token bytes are not always valid UTF-8 (a merge can stop mid-character), so they cannot be written as text
directly. GPT-2 maps each of the 256 bytes to a printable Unicode character (``bytes_to_unicode``): printable
ASCII and Latin-1 characters stand for themselves, the rest (space, control bytes...) are shifted up past
U+0100, so the space byte is ``Ġ`` and newline is ``Ċ``. Every byte string then becomes a printable string with
no spaces, which is why ``merges.txt`` can hold one merge per line as ``left right``.

- ``vocab.json``: ``{"Ġthe": 262, ...}``, token string -> id.
- ``merges.txt``: an optional ``#version`` line, then one merge per line, in order: ``Ġ t``.

Our own `Tokenizer.save` writes exactly this format (plus ``special_tokens.json``), so GPT-2's files load
with the same code and ours are readable by other tools.
"""

import json
import os
from functools import cache

from cs336_bpe.atomic import atomic_write
from cs336_bpe.errors import BPEInputError


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table.

    >>> table = bytes_to_unicode()
    >>> table[ord("a")], table[ord(" ")], table[ord("\\n")]
    ('a', 'Ġ', 'Ċ')
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


@cache
def unicode_to_bytes() -> dict[str, int]:
    return {character: byte for byte, character in bytes_to_unicode().items()}


def token_to_string(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[byte] for byte in token)


def string_to_token(text: str, source: str) -> bytes:
    table = unicode_to_bytes()
    try:
        return bytes(table[character] for character in text)
    except KeyError as error:
        raise BPEInputError(
            f"{source}: {text!r} contains {error.args[0]!r}, which is not a GPT-2 byte character; "
            "is this a GPT-2-style vocab.json/merges.txt?"
        ) from None


def read_vocab(path: str | os.PathLike) -> dict[int, bytes]:
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except FileNotFoundError:
        raise BPEInputError(f"vocabulary file {str(path)!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BPEInputError(f"vocabulary file {str(path)!r} is not valid JSON: {error}") from None
    if not isinstance(raw, dict):
        raise BPEInputError(f"vocabulary file {str(path)!r} must hold a JSON object {{token: id}}")
    vocab = {}
    for text, token_id in raw.items():
        if not isinstance(token_id, int) or token_id < 0:
            raise BPEInputError(f"vocabulary file {str(path)!r}: id {token_id!r} of {text!r} is not an id >= 0")
        if token_id in vocab:
            raise BPEInputError(f"vocabulary file {str(path)!r}: id {token_id} is used twice")
        vocab[token_id] = string_to_token(text, str(path))
    return vocab


def read_merges(path: str | os.PathLike) -> list[tuple[bytes, bytes]]:
    merges = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                line = line.rstrip("\r\n")
                if not line or (line_number == 1 and line.startswith("#version")):
                    continue
                parts = line.split(" ")
                if len(parts) != 2:
                    raise BPEInputError(
                        f"merges file {str(path)!r} line {line_number}: expected 'left right', got {line!r}"
                    )
                merges.append((string_to_token(parts[0], str(path)), string_to_token(parts[1], str(path))))
    except FileNotFoundError:
        raise BPEInputError(f"merges file {str(path)!r} does not exist") from None
    return merges


def write_vocab(vocab: dict[int, bytes], path: str | os.PathLike) -> None:
    strings = {token_to_string(token): token_id for token_id, token in sorted(vocab.items())}
    with atomic_write(path, "w", encoding="utf-8") as handle:
        json.dump(strings, handle, ensure_ascii=False, indent=0)
        handle.write("\n")


def write_merges(merges: list[tuple[bytes, bytes]], path: str | os.PathLike) -> None:
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write("#version: 0.2\n")
        for left, right in merges:
            handle.write(f"{token_to_string(left)} {token_to_string(right)}\n")
