"""From raw text to a trained model in one call: the whole assignment, end to end.

    1. train a BPE tokenizer on the training text        -> RUN/tokenizer/
    2. encode the training and validation text            -> RUN/data/{train,valid}.bin (+ .json metadata)
    3. train the model (periodic validation, checkpoints) -> RUN/checkpoints/, RUN/metrics.jsonl
    4. write a few samples from the trained model         -> RUN/samples.txt

The tokenizer's vocabulary size is the model's `model.vocab_size`, and `<|endoftext|>` is its special token.
"""

import importlib.util
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from cs336_bpe import BPEInputError, Tokenizer, atomic_write, encode_file, train_bpe
from cs336_train.config import TrainConfig
from cs336_train.errors import ConfigError, DataError
from cs336_train.run_directory import RunDirectory
from cs336_train.trainer import TrainResult, train

END_OF_TEXT = "<|endoftext|>"
SAMPLE_PROMPTS = ("Once upon a time", "The little dog", "Lily wanted to")


def run_pipeline(config: TrainConfig, train_text: Path, valid_text: Path, run_dir: Path,
                 say: Callable[[str], None] = print, num_samples: int = len(SAMPLE_PROMPTS)) -> TrainResult:
    run = RunDirectory(Path(run_dir).resolve())  # the saved config's data paths must not depend on the cwd
    if importlib.util.find_spec("cs336_sample") is None:
        raise ConfigError('the pipeline ends by writing samples with cs336-sample, which is not installed: '
                          'pip install "cs336-train[sample]"')
    for name, path in (("training", train_text), ("validation", valid_text)):
        if not Path(path).is_file():
            raise DataError(f"{name} text {str(path)!r} does not exist; give the path of a UTF-8 text file")
    with run.lock() as lock_note:
        if lock_note:
            say(f"cs336-train: {lock_note}")
        if run.has_checkpoints():
            raise ConfigError(
                f"{str(run.path)!r} already holds a trained run; continue it with `cs336-train resume {run.path}` "
                "or choose another --out directory"
            )
        return _run_pipeline(config, train_text, valid_text, run.path, say, num_samples)


def _run_pipeline(config: TrainConfig, train_text: Path, valid_text: Path, run_dir: Path,
                  say: Callable[[str], None], num_samples: int) -> TrainResult:
    say(f"[1/4] training a {config.model.vocab_size}-token BPE tokenizer on {train_text}")
    say(f"[2/4] encoding {train_text} and {valid_text}")
    files = tokenize_texts(train_text, valid_text, config.model.vocab_size, run_dir / "tokenizer", run_dir / "data",
                           say=lambda line: say(f"      {line}"))
    config = replace(config, data=replace(config.data, train=str(files["train"]), valid=str(files["valid"]),
                                          tokenizer=str(files["tokenizer"])))
    say(f"[3/4] training ({config.run.steps} steps of {config.run.batch_size} x {config.model.context_length} tokens)")
    result = train(config, run_dir)
    say(f"[4/4] writing samples to {run_dir / 'samples.txt'}")
    write_samples(run_dir, SAMPLE_PROMPTS[:num_samples])
    return result


def tokenize_texts(train_text: Path, valid_text: Path, vocab_size: int, tokenizer_dir: Path, data_dir: Path,
                   say: Callable[[str], None] = print) -> dict[str, Path]:
    """Train a `vocab_size` BPE tokenizer on `train_text` (<|endoftext|> its one special token; 257 = byte-level:
    the 256 bytes and <|endoftext|>, no merges) and encode both texts with it.

    Returns {"tokenizer": tokenizer_dir, "train": data_dir/train.bin, "valid": data_dir/valid.bin}.
    """
    try:
        vocab, merges = train_bpe(train_text, vocab_size, [END_OF_TEXT])
        tokenizer = Tokenizer(vocab, merges, [END_OF_TEXT])
        files = {"tokenizer": tokenizer.save(tokenizer_dir)}
        for split, text in (("train", train_text), ("valid", valid_text)):
            files[split] = data_dir / f"{split}.bin"
            metadata = encode_file(tokenizer, text, files[split])
            say(f"{split}: {metadata['num_tokens']:,} tokens ({files[split]})")
    except BPEInputError as error:
        raise DataError(str(error)) from None
    return files


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
