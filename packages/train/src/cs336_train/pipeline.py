"""From raw text to a trained model in one call: the whole assignment, end to end.

    0. check every input: the texts, the run directory, cs336-sample (nothing below starts before all pass)
    1. train a BPE tokenizer on the training text        -> RUN/tokenizer/
    2. encode the training and validation text            -> RUN/data/{train,valid}.bin (+ .json metadata)
    3. train the model (periodic validation, checkpoints) -> RUN/checkpoints/, RUN/metrics.jsonl
    4. write a few samples from the trained model         -> RUN/samples.txt

The tokenizer's vocabulary size is the model's `model.vocab_size`, and `<|endoftext|>` is its special token. A
text too small for that many merges gives a smaller tokenizer; the model is then sized to it, and a warning says so.

Where the texts come from (`texts_for`): the TinyStories sample bundled with cs336-train (offline, the default),
the full TinyStories V2 or OpenWebText sample (downloaded, verified and reused), or the user's own files.
"""

import codecs
import importlib.util
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from cs336_bpe import BPEInputError, Tokenizer, atomic_write, encode_file, train_bpe
from cs336_train.config import TrainConfig
from cs336_train.config_files import DEFAULT_CONFIG, bundled_configs
from cs336_train.errors import ConfigError, DataError
from cs336_train.run_directory import RunDirectory
from cs336_train.stage_progress import StageProgress
from cs336_train.trainer import TrainResult, train

END_OF_TEXT = "<|endoftext|>"
SAMPLE_PROMPTS = ("Once upon a time", "The little dog", "Lily wanted to")
# Enough of a text's start to catch the usual wrong file (binary, another encoding) without reading gigabytes.
TEXT_CHECK_BYTES = 1 << 16

SAMPLE = "sample"  # the bundled TinyStories sample
DOWNLOADABLE = ("tinystories", "owt")  # cs336_train.datasets.download.DATASETS
# The configuration each dataset trains with unless --config names another: (bundled name, overrides). The
# OpenWebText one is the course's (32K vocabulary); where it is not bundled, the CPU model with that vocabulary.
DATASET_CONFIGS = {SAMPLE: (DEFAULT_CONFIG, []), "tinystories": (DEFAULT_CONFIG, []), "owt": ("owt_course", [])}
OWT_FALLBACK = (DEFAULT_CONFIG, ["model.vocab_size=32000"])
# Default run directory of each dataset (under the working directory, like every --out).
DATASET_RUN_DIRS = {SAMPLE: Path("runs/tinystories-sample"), "tinystories": Path("runs/tinystories"),
                    "owt": Path("runs/owt")}

HOW_TO_GET_TEXT = ("`cs336-train pipeline` without --train-text trains on the TinyStories sample it ships, "
                   "`cs336-train pipeline --dataset tinystories` downloads the full set and trains on it, and "
                   "`cs336-train download tinystories` only downloads")


def dataset_config(dataset: str) -> tuple[str, list[str]]:
    """(bundled configuration name, overrides) a dataset trains with by default."""
    name, overrides = DATASET_CONFIGS[dataset]
    if name not in bundled_configs():  # only owt_course may be missing (an older cs336-train)
        name, overrides = OWT_FALLBACK
    return name, list(overrides)


def texts_for(dataset: str, data_dir: Path = Path("data"), base_url: str | None = None,
              say: Callable[[str], None] = print) -> tuple[Path, Path]:
    """(training text, validation text) of a dataset: the bundled sample (decompressed into the cache once), or
    the full data downloaded into `data_dir` (files already there are verified, not downloaded again)."""
    if dataset == SAMPLE:
        from cs336_train.datasets.bundled import tinystories_sample

        texts = tinystories_sample()
        say(f"data: the TinyStories sample bundled with cs336-train ({texts['train'].stat().st_size / 1e6:.1f} MB "
            f"of training text; licence: cs336_train/tinystories_sample/NOTICE.md)")
        return texts["train"], texts["valid"]
    from cs336_train.datasets.download import DATASETS, describe_download, download_dataset

    say(f"data: {describe_download(dataset, data_dir)}")
    paths = download_dataset(dataset, data_dir, base_url=base_url, log=lambda line: say(f"data: {line}"))
    by_split = {file.split: path for file, path in zip(DATASETS[dataset].files, paths, strict=True)}
    return by_split["train"], by_split["valid"]


def check_run_directory(run_dir: Path) -> None:
    """Refuse, before any work: cs336-sample missing (the last step needs it), a run directory that cannot be
    written, or one that already holds a trained run."""
    if importlib.util.find_spec("cs336_sample") is None:
        raise ConfigError('the pipeline ends by writing samples with cs336-sample, which is not installed: '
                          'pip install "cs336-train[sample]"')
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {str(run_dir)!r} is a file, not a directory; choose another --out")
    existing = run_dir
    while not existing.exists():  # the run directory is made later: its nearest existing parent must be writable
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write the run directory {str(run_dir)!r}: {str(existing)!r} is not a writable "
                          "directory; choose another --out")
    if RunDirectory(run_dir).has_checkpoints():
        raise ConfigError(
            f"{str(run_dir)!r} already holds a trained run; continue it with `cs336-train resume {run_dir}` "
            "or choose another --out directory"
        )


def check_text(path: Path, what: str) -> None:
    """Refuse a text that is missing, unreadable, empty or not UTF-8 (judged by its first 64 KB)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} text {str(path)!r} does not exist; {HOW_TO_GET_TEXT}")
    if not path.is_file():
        raise DataError(f"{what} text {str(path)!r} is not a file; give the path of a UTF-8 text file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(TEXT_CHECK_BYTES)
    except OSError as error:
        raise DataError(f"cannot read the {what} text {str(path)!r}: {error.strerror}; check its permissions") from None
    if not head:
        raise DataError(f"{what} text {str(path)!r} is empty; give a file with text in it")
    if b"\x00" in head:
        raise DataError(f"{what} text {str(path)!r} has a NUL byte at offset {head.index(0)}: it looks binary, not "
                        "like UTF-8 text; give a text file")
    try:
        # final=False: the 64 KB may end inside a character, which is no error.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as error:
        raise DataError(f"{what} text {str(path)!r} is not UTF-8: byte {head[error.start]:#04x} at offset "
                        f"{error.start} ({error.reason}); convert it first, e.g. `iconv -f latin1 -t utf-8`") from None


def run_pipeline(config: TrainConfig, train_text: Path, valid_text: Path, run_dir: Path,
                 say: Callable[[str], None] = print, num_samples: int = len(SAMPLE_PROMPTS),
                 progress: StageProgress | None = None) -> TrainResult:
    """Check every input, then tokenizer -> token files -> training -> samples in `run_dir` (see the module
    docstring). `progress` reports the tokenizer and encoding stages (default: bars on a terminal, lines
    through `say` otherwise)."""
    run = RunDirectory(Path(run_dir).resolve())  # the saved config's data paths must not depend on the cwd
    check_run_directory(run.path)
    check_text(train_text, "training")
    check_text(valid_text, "validation")
    with run.lock() as lock_note:
        if lock_note:
            say(f"cs336-train: {lock_note}")
        check_run_directory(run.path)  # again, now that no other writer can start one there
        return _run_pipeline(config, Path(train_text), Path(valid_text), run.path, say, num_samples, progress)


def _run_pipeline(config: TrainConfig, train_text: Path, valid_text: Path, run_dir: Path,
                  say: Callable[[str], None], num_samples: int, progress: StageProgress | None) -> TrainResult:
    def indented(line: str) -> None:  # a stage's details, under its heading
        say(f"      {line}")

    progress = progress or StageProgress(indented)
    asked = config.model.vocab_size
    say(f"[1/4] training a {asked:,}-token BPE tokenizer on {train_text}")
    tokenizer = train_tokenizer(train_text, asked, run_dir / "tokenizer", progress)
    model = config.model
    if tokenizer.vocab_size < asked:
        say(f"WARNING: the training text supports only {tokenizer.vocab_size:,} tokens, not the {asked:,} asked; "
            f"the model uses {tokenizer.vocab_size:,} (give more text, or --set model.vocab_size="
            f"{tokenizer.vocab_size})")
        model = replace(model, vocab_size=tokenizer.vocab_size)  # the saved config then matches the tokenizer
    say(f"[2/4] encoding {train_text} and {valid_text}")
    files = encode_texts(tokenizer, train_text, valid_text, run_dir / "data", indented, progress)
    config = replace(config, model=model, data=replace(config.data, train=str(files["train"]),
                                                       valid=str(files["valid"]), tokenizer=str(run_dir / "tokenizer")))
    say(f"[3/4] training ({config.run.steps} steps of {config.run.batch_size} x {config.model.context_length} tokens)")
    result = train(config, run_dir)
    say(f"[4/4] writing samples to {run_dir / 'samples.txt'}")
    write_samples(run_dir, SAMPLE_PROMPTS[:num_samples])
    return result


def tokenize_texts(train_text: Path, valid_text: Path, vocab_size: int, tokenizer_dir: Path, data_dir: Path,
                   say: Callable[[str], None] = print, progress: StageProgress | None = None) -> dict[str, Path]:
    """Train a `vocab_size` BPE tokenizer on `train_text` and encode both texts with it (what a sweep does for
    each vocabulary size). Returns {"tokenizer": tokenizer_dir, "train": data_dir/train.bin, "valid": ...}."""
    progress = progress or StageProgress(say)
    tokenizer = train_tokenizer(train_text, vocab_size, tokenizer_dir, progress)
    return {"tokenizer": Path(tokenizer_dir), **encode_texts(tokenizer, train_text, valid_text, data_dir, say,
                                                             progress)}


def train_tokenizer(text: Path, vocab_size: int, tokenizer_dir: Path, progress: StageProgress) -> Tokenizer:
    """Train a `vocab_size` BPE tokenizer on `text` and save it in `tokenizer_dir`. <|endoftext|> is its one
    special token; 257 = byte-level (the 256 bytes and <|endoftext|>, no merges). A text with fewer distinct
    pairs than merges asked gives a smaller vocabulary: check `vocab_size` of the result."""
    try:
        vocab, merges = train_bpe(text, vocab_size, [END_OF_TEXT], on_progress=progress)
    except BPEInputError as error:
        raise DataError(str(error)) from None
    finally:
        progress.close()
    tokenizer = Tokenizer(vocab, merges, [END_OF_TEXT])
    tokenizer.save(tokenizer_dir)
    return tokenizer


def encode_texts(tokenizer: Tokenizer, train_text: Path, valid_text: Path, data_dir: Path,
                 say: Callable[[str], None], progress: StageProgress) -> dict[str, Path]:
    """Encode both texts into data_dir/{train,valid}.bin (+ .json metadata); returns {"train": ..., "valid": ...}."""
    encoded = {}
    for split, text in (("train", train_text), ("valid", valid_text)):
        encoded[split] = Path(data_dir) / f"{split}.bin"
        try:
            metadata = encode_file(tokenizer, text, encoded[split], on_progress=progress.encoding(split), on_note=say)
        except BPEInputError as error:
            raise DataError(str(error)) from None
        finally:
            progress.close()
        say(f"{split}: {metadata['num_tokens']:,} tokens ({encoded[split]})")
    return encoded


def write_samples(run_dir: Path, prompts: tuple[str, ...], max_new_tokens: int = 200, seed: int = 0) -> Path:
    """Sample one continuation per prompt from the run's newest checkpoint (temperature 0.8, top-p 0.95)."""
    from cs336_sample import generate, load_model_and_tokenizer

    model, tokenizer, _ = load_model_and_tokenizer(run_dir, device="cpu")
    completions = generate(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, temperature=0.8,
                           top_p=0.95, seed=seed)
    path = run_dir / "samples.txt"
    with atomic_write(path, "w", encoding="utf-8") as handle:
        for prompt, completion in zip(prompts, completions, strict=True):
            handle.write(f"--- prompt: {prompt!r} (temperature 0.8, top-p 0.95, seed {seed})\n")
            handle.write(f"{prompt}{completion.text}\n\n")
    return path
