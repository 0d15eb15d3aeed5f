"""Build a diverse text corpus, deterministically, from the installed packages' own files.

    uv run python benchmarks/diverse_corpus.py OUTPUT.txt [--megabytes 40]

TinyStories is the easy case for a BPE trainer: it repeats the same few thousand words, so the merge loop has
little to do however large the file. Web text (OpenWebText, the handout's other tokenizer) has many distinct
words, numbers, names, code and other scripts. No web text can be downloaded here, but every machine with this
project installed has hundreds of megabytes of diverse text in its virtual environment: the source code of
torch, numpy, sympy, matplotlib, hypothesis ... (English docstrings and comments, identifiers, numbers, URLs,
some non-Latin scripts), C/C++/CUDA headers and package descriptions (`METADATA`).

The corpus is those files, in an order fixed by their paths: grouped by top-level directory of site-packages,
the groups taken round-robin one file at a time (so that 10 MB already mixes many packages, and a larger corpus
adds new packages' vocabulary rather than more of the same), identical files once, at most the first 256 KB
of a file (a few generated files are huge tables). The packages this project depends on at run time, on every
platform (`CORE`: torch, numpy, sympy, matplotlib ..., about 150 MB), come first, so that the 10 and 40 MB
corpora change only when their versions do, not when a tool is added to the environment; the other packages
follow. Every 40 lines end a document, written as in the TinyStories files: the lines, then a line
``<|endoftext|>``. The corpus stops at the last document that fits in the requested size. The same lockfile
(uv.lock) gives the same packages and so the same corpus; the SHA-256 printed at the end identifies it.
"""

import argparse
import hashlib
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

SPECIAL_TOKEN = "<|endoftext|>"
EXTENSIONS = {".py", ".pyi", ".h", ".hpp", ".c", ".cpp", ".cuh", ".md", ".rst", ".txt"}
NAMES = {"METADATA"}
MAX_FILE_BYTES = 256 << 10
# Run-time dependencies of the cs336 packages (and theirs) on every platform, in a fixed order.
CORE = ("torch", "numpy", "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "filelock", "fsspec", "matplotlib",
        "mpl_toolkits", "fontTools", "PIL", "contourpy", "cycler", "kiwisolver", "pyparsing", "dateutil",
        "packaging", "click", "regex", "einops")
LINES_PER_DOCUMENT = 40


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def source_files(root: Path) -> list[Path]:
    """Text files under `root`, grouped by top-level entry, groups interleaved one file at a time: the `CORE`
    packages first, then the others."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if (path.suffix in EXTENSIONS or path.name in NAMES) and path.is_file() and not path.is_symlink():
            groups.setdefault(path.relative_to(root).parts[0], []).append(path)
    core = [groups.pop(name) for name in CORE if name in groups]
    return _interleave(core) + _interleave([groups[name] for name in sorted(groups)])


def _interleave(columns: list[list[Path]]) -> list[Path]:
    """The first file of each column, then the second of each ... (columns that ran out are skipped)."""
    return [files[row] for row in range(max(map(len, columns), default=0)) for files in columns if row < len(files)]


def documents(root: Path) -> Iterator[str]:
    """The corpus's documents in order: blocks of up to 40 lines of each distinct, valid UTF-8 file."""
    seen: set[bytes] = set()
    for path in source_files(root):
        data = path.read_bytes()[:MAX_FILE_BYTES]
        digest = hashlib.sha256(data).digest()
        if digest in seen or b"\x00" in data:
            continue
        seen.add(digest)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:  # cut inside a character by the size cap: drop the partial one
            if error.start < len(data) - 4:
                continue  # not UTF-8 at all
            text = data[: error.start].decode("utf-8")
        text = text.replace(SPECIAL_TOKEN, "").replace("\r\n", "\n")
        lines = text.splitlines(keepends=True)
        for start in range(0, len(lines), LINES_PER_DOCUMENT):
            document = "".join(lines[start : start + LINES_PER_DOCUMENT]).strip("\n")
            if document.strip():
                yield document


def build_corpus(output: Path, num_bytes: int, root: Path | None = None) -> tuple[int, str]:
    """Write the corpus (at most `num_bytes`) to `output`; return its size and SHA-256."""
    root = root or site_packages()
    written, digest = 0, hashlib.sha256()
    with open(output, "wb") as handle:
        for document in documents(root):
            block = f"{document}\n{SPECIAL_TOKEN}\n".encode()
            if written + len(block) > num_bytes:
                break
            handle.write(block)
            digest.update(block)
            written += len(block)
    if written < num_bytes * 0.9:
        raise SystemExit(f"only {written:,} bytes of text under {root}; ask for fewer --megabytes")
    return written, digest.hexdigest()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--megabytes", type=float, default=40)
    parser.add_argument("--root", type=Path, default=None, help="directory to read (default: site-packages)")
    arguments = parser.parse_args()
    size, sha256 = build_corpus(arguments.output, int(arguments.megabytes * 1e6), arguments.root)
    print(f"{arguments.output}: {size:,} bytes, sha256 {sha256[:16]}", file=sys.stderr)
