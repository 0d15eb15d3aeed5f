"""The TinyStories sample cs336-train ships (cs336_train/tinystories_sample/, ~1 MB of xz): the main job's
offline default.

    >>> from cs336_train.datasets.bundled import tinystories_sample
    >>> sorted(tinystories_sample())                      # doctest: +SKIP
    ['train', 'valid']

The package holds the text compressed; the first call writes the plain text into a cache directory (the
tokenizer trainer and the encoder read files, with byte offsets), verified against the SHA-256 below, and later
calls reuse it. Where the text came from and its licence (CDLA-Sharing-1.0): cs336_train/tinystories_sample/NOTICE.md.
"""

import hashlib
import lzma
import os
from importlib import resources
from pathlib import Path

from cs336_bpe import atomic_write
from cs336_train.errors import DataError

SAMPLE_PACKAGE = "cs336_train.tinystories_sample"
# SHA-256 of the decompressed text (cs336_train/tinystories_sample/NOTICE.md lists the same values).
SAMPLE_SHA256 = {
    "train": "434e8c3ee6449e008bc138663570d024a7218a165c3a47f5043905c3c6f27892",
    "valid": "c86f734a3a07fffb8a52f4a7970ac7dbeaf4eaf6a031dc8742a8de92fbbb9446",
}


def cache_directory() -> Path:
    """$CS336_CACHE, else $XDG_CACHE_HOME/cs336, else ~/.cache/cs336."""
    if os.environ.get("CS336_CACHE"):
        return Path(os.environ["CS336_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cs336"


def tinystories_sample(cache_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """{"train": path, "valid": path} of the bundled sample as plain text, decompressed into the cache once."""
    directory = Path(cache_dir) if cache_dir is not None else cache_directory() / "tinystories-sample"
    return {split: _plain_text(split, directory) for split in SAMPLE_SHA256}


def _plain_text(split: str, directory: Path) -> Path:
    path = directory / f"{split}.txt"
    if path.is_file() and _sha256(path) == SAMPLE_SHA256[split]:
        return path
    # Missing, or changed since it was written (an edit, a half-copied cache): write it again from the package.
    compressed = resources.files(SAMPLE_PACKAGE).joinpath(f"{split}.txt.xz")
    digest = hashlib.sha256()
    try:
        with compressed.open("rb") as source, lzma.open(source) as text, atomic_write(path, "wb") as out:
            while chunk := text.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
            if digest.hexdigest() != SAMPLE_SHA256[split]:
                raise DataError(f"the bundled TinyStories {split} text is damaged (SHA-256 {digest.hexdigest()[:16]}… "
                                f"is not the expected {SAMPLE_SHA256[split][:16]}…); reinstall cs336-train")
    except (OSError, lzma.LZMAError) as error:
        raise DataError(f"cannot prepare the bundled TinyStories {split} text in {directory}: {error}; set "
                        "CS336_CACHE to a writable directory") from None
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
