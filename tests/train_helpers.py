"""Small, self-made inputs for the cs336-train tests: a tokenizer and token files in seconds, no shared data."""

import json
import random
import subprocess
import sys
from pathlib import Path

from cs336_bpe import Tokenizer, encode_file, train_bpe
from cs336_train import TrainConfig

WORDS = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat", "big", "small", "red", "happy", "sad", "Lily", "Tom",
         "ball", "tree", "park", "saw", "played", "with", "and", "then", "she", "he", "was", "very"]


def write_stories(path: Path, num_stories: int, seed: int) -> Path:
    rng = random.Random(seed)
    stories = []
    for _ in range(num_stories):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))).capitalize() + "."
                     for _ in range(rng.randint(2, 5))]
        stories.append(" ".join(sentences) + "\n<|endoftext|>\n")
    path.write_text("".join(stories), encoding="utf-8")
    return path


def make_token_files(directory: Path, vocab_size: int = 300) -> dict:
    """train.bin / valid.bin (+ metadata) and a saved tokenizer, under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    train_text = write_stories(directory / "train.txt", 400, seed=1)
    valid_text = write_stories(directory / "valid.txt", 40, seed=2)
    vocab, merges = train_bpe(train_text, vocab_size, ["<|endoftext|>"], num_workers=1)
    tokenizer = Tokenizer(vocab, merges, ["<|endoftext|>"])
    tokenizer.save(directory / "tokenizer")
    encode_file(tokenizer, train_text, directory / "train.bin", num_workers=1)
    encode_file(tokenizer, valid_text, directory / "valid.bin", num_workers=1)
    return {"train": directory / "train.bin", "valid": directory / "valid.bin", "tokenizer": directory / "tokenizer",
            "train_text": train_text, "valid_text": valid_text, "vocab_size": tokenizer.vocab_size}


def tiny_config_values(files: dict, **run) -> dict:
    """A model small enough to train a step in milliseconds, as nested dicts (TOML tables)."""
    return {
        "model": {"vocab_size": 320, "context_length": 16, "d_model": 32, "num_layers": 2, "num_heads": 4,
                  "d_ff": 64},
        "optimizer": {"lr": 1e-2, "warmup_fraction": 0.1},
        "data": {"train": str(files["train"]), "valid": str(files["valid"]), "tokenizer": str(files["tokenizer"])},
        "run": {"steps": 20, "batch_size": 8, "precision": "fp32", "device": "cpu", "log_interval": 1,
                "eval_interval": 0, "checkpoint_interval": 0, "num_threads": 1, "peak_tflops": 1.0, **run},
    }


def tiny_config(files: dict, **run) -> TrainConfig:
    return TrainConfig.from_dict(tiny_config_values(files, **run))


def write_config(path: Path, config: TrainConfig) -> Path:
    path.write_text(config.to_toml(), encoding="utf-8")
    return path


def cs336_train(*arguments, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """Run the `cs336-train` CLI in a fresh process (what a user runs; signals and exit codes are real)."""
    return subprocess.run([sys.executable, "-m", "cs336_train", *map(str, arguments)], capture_output=True,
                          text=True, check=check, **kwargs)


def last_loss_per_step(run_dir: Path, kind: str) -> dict[int, float]:
    """{step: loss} of one kind of metrics record; after a resume some steps appear twice, and the later counts."""
    records = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == kind:
            records[record["step"]] = record["loss"]
    return records
