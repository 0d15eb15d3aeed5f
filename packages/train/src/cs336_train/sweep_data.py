"""The token files of a sweep: one tokenizer per vocabulary size, trained and encoded once, then reused.

    DIR/data/vocab-10000/tokenizer/       BPE tokenizer trained on the experiment's train_text
    DIR/data/vocab-10000/train.bin        train_text encoded with it (+ train.bin.json metadata)
    DIR/data/vocab-10000/valid.bin        valid_text encoded with it (+ valid.bin.json)
    DIR/data/vocab-10000/sources.json     written last: which texts made them

`sources.json` is the cache's proof of completeness: a directory without it (a sweep killed while encoding) is
built again, and one made from other text is refused instead of silently mixing corpora in one sweep.
"""

import json
from collections.abc import Callable
from pathlib import Path

from cs336_bpe import atomic_write
from cs336_train.errors import DataError
from cs336_train.pipeline import tokenize_texts

SOURCES_FILE = "sources.json"


def require_texts(train_text: Path, valid_text: Path) -> None:
    for name, path in (("train_text", train_text), ("valid_text", valid_text)):
        if not path.is_file():
            raise DataError(f"{name} {str(path)!r} does not exist; fix the path in the experiment file (or set "
                            "$CS336_DATA), or download the data with `cs336-train download`")


def text_sources(train_text: Path, valid_text: Path, vocab_size: int) -> dict:
    """What a data directory is made from: the texts (path and size) and the vocabulary size."""
    require_texts(train_text, valid_text)
    return {"vocab_size": vocab_size, "train_text": str(train_text), "train_bytes": train_text.stat().st_size,
            "valid_text": str(valid_text), "valid_bytes": valid_text.stat().st_size}


def prepare_token_files(directory: Path, train_text: Path, valid_text: Path, vocab_size: int,
                        say: Callable[[str], None]) -> Path:
    """Make (or reuse) `directory`'s tokenizer and token files for `vocab_size` (as the pipeline does:
    `pipeline.tokenize_texts`); returns the directory."""
    sources = text_sources(train_text, valid_text, vocab_size)
    marker = directory / SOURCES_FILE
    if marker.is_file():
        recorded = json.loads(marker.read_text(encoding="utf-8"))
        if recorded == sources:
            return directory
        raise DataError(f"{str(directory)!r} was made from {recorded.get('train_text')!r} "
                        f"({recorded.get('train_bytes')} bytes), not {str(train_text)!r} ({sources['train_bytes']} "
                        "bytes): give this experiment another --out directory, or delete that one to rebuild it")
    say(f"data: training a {vocab_size:,}-token tokenizer on {train_text} and encoding both texts")
    tokenize_texts(train_text, valid_text, vocab_size, directory / "tokenizer", directory,
                   say=lambda line: say(f"data: {line}"))
    with atomic_write(marker, "w", encoding="utf-8") as handle:
        json.dump(sources, handle, indent=1)
    return directory
