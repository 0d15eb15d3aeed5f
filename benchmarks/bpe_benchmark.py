"""cs336-bpe against the Rust anchors, side by side in one run, on the same input (see BENCHMARKS.md).

    uv run python benchmarks/bpe_benchmark.py [--data ../shared/data] [--fixtures ../shared/fixtures] [--scaling]

Prints, for each measurement, ours, the anchor and the ratio (the anchors are ../shared/bench/bpe_anchors.py:
HF tokenizers' BPE trainer and tiktoken's GPT-2 encoder built offline from the fixture vocabulary). Times are
the best of --repeats runs, ours and the anchor's alternating, to reduce the noise of a shared machine. With
--scaling it also trains and encodes 4 MB, 40 MB and 400 MB files (the shared TinyStories text concatenated),
each in a fresh process, and reports time and peak memory.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def best_time(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def hf_train(path, vocab_size):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train([str(path)], trainer)


def tiktoken_gpt2(fixtures):
    import tiktoken

    from cs336_bpe.gpt2_format import unicode_to_bytes

    table = unicode_to_bytes()
    vocab = json.loads((fixtures / "gpt2_vocab.json").read_text(encoding="utf-8"))
    ranks = {bytes(table[c] for c in s): i for s, i in vocab.items() if s != "<|endoftext|>"}
    return tiktoken.Encoding("gpt2-offline", pat_str=PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def report(name, ours, anchor_name, anchor, unit="s", higher_is_better=False):
    ratio = (ours / anchor) if higher_is_better else (anchor / ours)
    print(f"{name:<46} ours {ours:8.3f} {unit:<5} {anchor_name} {anchor:8.3f} {unit:<5} "
          f"ours/anchor speed ratio {ratio:5.2f}x", flush=True)


def main_benchmarks(args):
    from cs336_bpe import Tokenizer, train_bpe
    from cs336_bpe.corpus import encode_file

    train_path = args.data / "tinystories" / "train.txt"
    corpus_en = args.fixtures / "corpus.en"
    text = train_path.read_text(encoding="utf-8")
    num_bytes = len(text.encode("utf-8"))
    print(f"input: {train_path} ({num_bytes / 1e6:.1f} MB), {os.cpu_count()} CPUs, best of {args.repeats}")

    ours_times, anchor_times = [], []
    for _ in range(args.repeats):  # alternating, so that a slow spell of the machine hits both alike
        ours_times.append(best_time(lambda: train_bpe(train_path, 10_000, ["<|endoftext|>"]), 1)[0])
        anchor_times.append(best_time(lambda: hf_train(train_path, 10_000), 1)[0])
    report("train_bpe TinyStories 4 MB, vocab 10000", min(ours_times), "hf_tokenizers", min(anchor_times))
    ours, _ = best_time(lambda: train_bpe(corpus_en, 500, ["<|endoftext|>"]), args.repeats)
    print(f"{'train_bpe corpus.en, vocab 500':<46} ours {ours:8.3f} s     (target <= 0.38 s)")

    encoding = tiktoken_gpt2(args.fixtures)
    gpt2_files = (args.fixtures / "gpt2_vocab.json", args.fixtures / "gpt2_merges.txt")

    def tiktoken_encode():
        encoding.encode_ordinary(text[:10_000])
        start = time.perf_counter()
        ids = encoding.encode(text, allowed_special="all")
        return time.perf_counter() - start, ids

    def ours_encode():
        # A fresh tokenizer each time: its caches start empty, as in a real one-off encode.
        tokenizer = Tokenizer.from_files(*gpt2_files, special_tokens=["<|endoftext|>"])
        tokenizer.encode(text[:10_000])  # the same warm-up the anchor gets
        start = time.perf_counter()
        ids = tokenizer.encode(text)
        seconds = time.perf_counter() - start
        assert ids == anchor_ids, "ids differ from tiktoken"
        return seconds

    import numpy as np

    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "train.bin"

        def ours_encode_file():
            # A fresh tokenizer each time, as in a real one-off run: empty caches, fingerprint not yet computed.
            tokenizer = Tokenizer.from_files(*gpt2_files, special_tokens=["<|endoftext|>"])
            start = time.perf_counter()
            encode_file(tokenizer, train_path, output, num_workers=2)
            seconds = time.perf_counter() - start
            assert np.fromfile(output, dtype=np.uint16).tolist() == anchor_ids, "token file differs from tiktoken"
            return seconds

        # The three alternate, round after round, so that a slow spell of the machine hits all of them alike
        # (measuring all of the anchor's runs first made the ratio swing with the machine's mood). Each of our
        # results is checked against the anchor's ids and then dropped: one list of ids alive at a time.
        anchor_ids = None
        anchor_times, encode_times, encode_file_times = [], [], []
        for _ in range(args.repeats):
            seconds, anchor_ids = tiktoken_encode()
            anchor_times.append(seconds)
            encode_times.append(ours_encode())
            encode_file_times.append(ours_encode_file())

    anchor_speed = num_bytes / min(anchor_times) / 1e6
    report("Tokenizer.encode GPT-2 vocab, 1 process", num_bytes / min(encode_times) / 1e6, "tiktoken_1thread",
           anchor_speed, unit="MB/s", higher_is_better=True)
    print(f"{'':<46} ids identical to tiktoken: {len(anchor_ids):,} tokens")
    report("encode_file GPT-2 vocab, 2 processes", num_bytes / min(encode_file_times) / 1e6, "tiktoken_1thread",
           anchor_speed, unit="MB/s", higher_is_better=True)


SCALING_CHILD = """
import resource, sys, time
from cs336_bpe import Tokenizer, train_bpe
from cs336_bpe.corpus import encode_file
job, path, tok_dir = sys.argv[1:4]
start = time.perf_counter()
if job == "train":
    vocab, merges = train_bpe(path, 10_000, ["<|endoftext|>"], num_workers=2)
    Tokenizer(vocab, merges, ["<|endoftext|>"]).save(tok_dir)
else:
    encode_file(Tokenizer.load(tok_dir), path, path + ".bin", num_workers=2)
seconds = time.perf_counter() - start
# VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec and would include the benchmark's own memory.
own = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"{seconds:.2f} {own:.0f} {workers:.0f}")
"""


def scaling(args):
    source = (args.data / "tinystories" / "train.txt").read_bytes()
    print("\nscaling (fresh process per run, num_workers=2: training uses 2 worker processes, encoding the main "
          "process and 1 worker; memory = peak RSS of the main process / largest worker)")
    with tempfile.TemporaryDirectory() as scratch:
        for copies in (1, 10, 100):
            path = Path(scratch) / f"ts_x{copies}.txt"
            with open(path, "wb") as handle:
                for _ in range(copies):
                    handle.write(source)
            megabytes = path.stat().st_size / 1e6
            for job in ("train", "encode"):
                command = [sys.executable, "-c", SCALING_CHILD, job, str(path), str(Path(scratch) / "tok")]
                output = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()
                seconds, own, workers = map(float, output)
                print(f"  {job:<6} {megabytes:7.0f} MB  {seconds:7.2f} s  {megabytes / seconds:6.1f} MB/s  "
                      f"memory main {own:5.0f} MB, worker {workers:5.0f} MB", flush=True)
            path.unlink()
            Path(f"{path}.bin").unlink(missing_ok=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CS336_DATA", ROOT.parent / "shared/data")))
    parser.add_argument("--fixtures", type=Path,
                        default=Path(os.environ.get("CS336_FIXTURES", ROOT.parent / "shared/fixtures")))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scaling", action="store_true", help="also run the 4/40/400 MB scaling runs")
    parser.add_argument("--scaling-only", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if not arguments.scaling_only:
        main_benchmarks(arguments)
    if arguments.scaling or arguments.scaling_only:
        scaling(arguments)
    print(f"peak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
