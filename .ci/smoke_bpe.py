"""Smoke test for a lone `pip install cs336-bpe`: no torch, train, encode, decode, CLI."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np

from cs336_bpe import Tokenizer, train_bpe

text_path, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
assert importlib.util.find_spec("torch") is None, "cs336-bpe must not need torch"

vocab, merges = train_bpe(text_path, 300, ["<|endoftext|>"])
tokenizer = Tokenizer(vocab, merges, ["<|endoftext|>"])
text = text_path.read_text(encoding="utf-8")
assert tokenizer.decode(tokenizer.encode(text)) == text

bin_dir = Path(sys.executable).parent
subprocess.run([bin_dir / "cs336-bpe", "train", text_path, "--vocab-size", "300", "--out", out_dir / "tok"],
               check=True)
subprocess.run([bin_dir / "cs336-bpe", "encode", out_dir / "tok", text_path, out_dir / "ids.bin"], check=True)
assert np.fromfile(out_dir / "ids.bin", dtype=np.uint16).tolist() == tokenizer.encode(text)
decoded = subprocess.run([bin_dir / "cs336-bpe", "decode", out_dir / "tok", out_dir / "ids.bin"],
                         check=True, capture_output=True, text=True).stdout
assert decoded == text
print("cs336-bpe works on its own")
