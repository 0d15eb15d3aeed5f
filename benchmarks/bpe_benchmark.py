"""cs336-bpe against the Rust anchors, side by side in one run, on the same input (see BENCHMARKS.md).

    uv run python benchmarks/bpe_benchmark.py [--data ../shared/data] [--fixtures ../shared/fixtures] [--scaling]

Prints, for each measurement, ours, the anchor and the ratio (the anchors are ../shared/bench/bpe_anchors.py:
HF tokenizers' BPE trainer and tiktoken's GPT-2 encoder built offline from the fixture vocabulary). Times are
the best of --repeats runs, ours and the anchor's alternating, to reduce the noise of a shared machine.

Training is measured on two texts: the shared TinyStories file (vocab 10,000), the easy case, and 40 MB of
diverse text (vocab 32,000, as for OpenWebText) built by `diverse_corpus.py` from the installed packages'
source files, the hard case: many distinct pre-tokens, so the merge phase has real work. The diverse runs are
fresh processes, so that peak memory can be compared too.

With --scaling it also trains and encodes 4 MB, 40 MB and 400 MB files (the shared TinyStories text
concatenated: more text, the same distinct pre-tokens), and trains on 10, 40 and 160 MB of diverse text (more
distinct pre-tokens with every size), each in a fresh process, and reports time and peak memory.
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
sys.path.insert(0, str(ROOT / "benchmarks"))
from diverse_corpus import build_corpus  # noqa: E402

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


# One training job in a fresh process: ours (`train_bpe`, 2 workers; optionally with a cap on distinct pre-tokens
# and saving the tokenizer) or HF's trainer. Prints seconds, the peak resident memory of the process itself, that
# of its largest child (our counting workers), and the number of distinct pre-tokens our counting kept (0 for HF).
TRAIN_CHILD = """
import resource, sys, time
job, path, vocab_size, max_pretokens, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
max_pretokens = None if max_pretokens == "none" else int(max_pretokens)
distinct = [0]
if job == "ours":
    import cs336_bpe.training as training
    from cs336_bpe import train_bpe
    count_file_pretokens = training.count_file_pretokens
    def counting_and_noting(*args, **kwargs):  # only to report the number of distinct pre-tokens
        counts = count_file_pretokens(*args, **kwargs)
        distinct[0] = len(counts)
        return counts
    training.count_file_pretokens = counting_and_noting
    start = time.perf_counter()
    vocab, merges = train_bpe(path, vocab_size, ["<|endoftext|>"], num_workers=2, max_pretokens=max_pretokens)
    seconds = time.perf_counter() - start
    if out != "none":
        from cs336_bpe import Tokenizer
        Tokenizer(vocab, merges, ["<|endoftext|>"]).save(out)
else:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    start = time.perf_counter()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train([path], trainer)
    seconds = time.perf_counter() - start
own = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"{seconds:.2f} {own:.0f} {workers:.0f} {distinct[0]}")
"""


def train_in_fresh_process(job, path, vocab_size, max_pretokens=None, out=None):
    """(seconds, peak MB of the main process, peak MB of the largest worker, distinct pre-tokens)."""
    command = [sys.executable, "-c", TRAIN_CHILD, job, str(path), str(vocab_size), str(max_pretokens).lower(),
               str(out).lower() if out is None else str(out)]
    seconds, own, workers, distinct = subprocess.run(command, check=True, capture_output=True,
                                                     text=True).stdout.split()
    return float(seconds), float(own), float(workers), int(distinct)


def diverse_benchmark(args, scratch):
    path = Path(scratch) / "diverse_40mb.txt"
    size, sha256 = build_corpus(path, 40_000_000)
    print(f"\ndiverse text: {size / 1e6:.1f} MB from site-packages (diverse_corpus.py, sha256 {sha256[:16]}), vocab "
          f"32000, fresh processes, ours and HF alternating, best of {args.repeats}")
    ours, anchor = [], []
    for _ in range(args.repeats):
        ours.append(train_in_fresh_process("ours", path, 32_000))
        anchor.append(train_in_fresh_process("hf", path, 32_000))
        print(f"  run: ours {ours[-1][0]:6.2f} s, HF {anchor[-1][0]:6.2f} s, ratio "
              f"{ours[-1][0] / anchor[-1][0]:.2f}x", flush=True)
    best, anchor_best = min(r[0] for r in ours), min(r[0] for r in anchor)
    memory, anchor_memory = max(r[1] for r in ours), max(r[1] for r in anchor)
    report("train_bpe diverse 40 MB, vocab 32000", best, "hf_tokenizers", anchor_best)
    print(f"{'':<46} time ours/HF {best / anchor_best:.2f}x (target <= 1.5x); peak memory: ours {memory:.0f} MB "
          f"main process (workers {max(r[2] for r in ours):.0f} MB each), HF {anchor_memory:.0f} MB: ours/HF "
          f"{memory / anchor_memory:.2f}x (target <= 2x); {ours[0][3]:,} distinct pre-tokens")


def cap_effect(args):
    """What `max_pretokens` changes: 160 MB of diverse text, vocab 32000, uncapped and with caps; the merges
    compared with the uncapped ones, and bytes per token on held-out text (the next 10 MB of the diverse corpus,
    which the training never saw, and the shared OpenWebText sample)."""
    from cs336_bpe import Tokenizer

    print("\neffect of max_pretokens: diverse 160 MB, vocab 32000, fresh processes")
    with tempfile.TemporaryDirectory() as scratch:
        longer, path = Path(scratch) / "diverse_170mb.txt", Path(scratch) / "diverse_160mb.txt"
        build_corpus(longer, 170_000_000)
        build_corpus(path, 160_000_000)
        held_out = {"diverse, next 10 MB": longer.read_bytes()[path.stat().st_size:].decode("utf-8"),
                    "OWT sample": (args.data / "owt" / "owt_valid_sample.txt").read_text(encoding="utf-8")}
        longer.unlink()
        uncapped = None
        for cap in (None, 200_000, 100_000, 50_000, 25_000):
            out = Path(scratch) / f"tokenizer_{cap}"
            seconds, own, workers, kept = train_in_fresh_process("ours", path, 32_000, cap, out)
            tokenizer = Tokenizer.load(out)
            merges = tokenizer.merges
            uncapped = uncapped or merges
            common = {k: len(set(merges[:k]) & set(uncapped[:k])) / k for k in (1_000, 10_000, len(uncapped))}
            compression = "  ".join(f"{name}: {len(text.encode()) / len(tokenizer.encode(text)):.3f} bytes/token"
                                    for name, text in held_out.items())
            print(f"  max_pretokens {str(cap):>7}: kept {kept:8,}  {seconds:6.2f} s  main {own:4.0f} MB  "
                  f"{len(merges):,} merges; in common with uncapped, first 1,000: {common[1_000]:.1%}, first "
                  f"10,000: {common[10_000]:.1%}, all: {common[len(uncapped)]:.1%}  |  {compression}", flush=True)


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

        print("\nscaling with distinct pre-tokens: diverse text (diverse_corpus.py), vocab 32000, training only, "
              "ours (2 workers) and HF in fresh processes")
        for megabytes in (10, 40, 160):
            path = Path(scratch) / f"diverse_{megabytes}mb.txt"
            build_corpus(path, megabytes * 1_000_000)
            seconds, own, workers, distinct = train_in_fresh_process("ours", path, 32_000)
            hf_seconds, hf_own, _, _ = train_in_fresh_process("hf", path, 32_000)
            print(f"  train  {megabytes:4d} MB  {distinct:9,} distinct pre-tokens  ours {seconds:7.2f} s, memory "
                  f"main {own:5.0f} MB, worker {workers:5.0f} MB  |  HF {hf_seconds:7.2f} s, {hf_own:5.0f} MB  |  "
                  f"time ratio {seconds / hf_seconds:.2f}x, memory ratio {own / hf_own:.2f}x", flush=True)
            path.unlink()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CS336_DATA", ROOT.parent / "shared/data")))
    parser.add_argument("--fixtures", type=Path,
                        default=Path(os.environ.get("CS336_FIXTURES", ROOT.parent / "shared/fixtures")))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scaling", action="store_true",
                        help="also run the scaling runs: TinyStories 4/40/400 MB, diverse text 10/40/160 MB")
    parser.add_argument("--scaling-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cap-effect", action="store_true",
                        help="also measure what max_pretokens changes (160 MB of diverse text, 5 trainings)")
    arguments = parser.parse_args()
    if not arguments.scaling_only:
        main_benchmarks(arguments)
        with tempfile.TemporaryDirectory() as scratch:
            diverse_benchmark(arguments, scratch)
    if arguments.scaling or arguments.scaling_only:
        scaling(arguments)
    if arguments.cap_effect:
        cap_effect(arguments)
    print(f"peak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
