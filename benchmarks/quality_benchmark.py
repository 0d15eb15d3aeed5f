"""Quality at a fixed token budget: `cs336-train pipeline` against off-the-shelf parts, in one run.

The anchor is ../shared/bench/reference_train.py: HF tokenizers' BPE (10K) + the torch built-ins LM + torch's AdamW,
256 steps of 32 x 256 tokens (2,097,152 tokens), bf16 autocast, then the mean loss over valid.txt. We run it and
then our whole pipeline (our tokenizer, our model, our optimizer; default configuration, the bundled tinystories_cpu)
on the same text with the same token budget, and print both validation losses. Wall-clock times are printed too,
but these machines vary by a third from run to run: the token budget, not the clock, is what is held equal.

    uv run python benchmarks/quality_benchmark.py                      # both, about 16 minutes on 2 idle cores
    uv run python benchmarks/quality_benchmark.py --skip-reference     # ours only
    uv run python benchmarks/quality_benchmark.py --keep runs/quality  # keep our run to sample from it

Both sides report a per-token loss with a 10K byte-level BPE vocabulary trained on the same text; ours is exact over
every token of valid.txt, the anchor's drops the last partial window (a few hundred of ~200K tokens).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cs336_train.config_files import resolve_config

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CS336_SHARED", ROOT.parent / "shared"))
DATA = Path(os.environ.get("CS336_DATA", SHARED / "data"))
TOKEN_BUDGET = 2_097_152


def run_reference(train_text: Path, valid_text: Path) -> dict:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(SHARED / "bench" / "reference_train.py"), str(train_text),
                             str(valid_text), str(TOKEN_BUDGET // (32 * 256))], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"reference run failed:\n{result.stderr[-3000:]}")
    final = re.search(r"tokens_seen=(\d+) seconds=(\d+) val_loss=([\d.]+)", result.stdout)
    return {"tokens": int(final[1]), "train_seconds": int(final[2]), "valid_loss": float(final[3]),
            "total_seconds": time.perf_counter() - started}


def run_ours(train_text: Path, valid_text: Path, config: Path, overrides: list[str], keep: Path | None) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = keep or Path(scratch) / "run"
        command = [sys.executable, "-m", "cs336_train", "pipeline", "--train-text", str(train_text),
                   "--valid-text", str(valid_text), "--config", str(config), "--out", str(run_dir)]
        for override in overrides:
            command += ["--set", override]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        total = time.perf_counter() - started
        if result.returncode:
            sys.exit(f"our pipeline failed:\n{result.stderr[-3000:]}")
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        final = [record for record in records if record["kind"] == "valid"][-1]
        samples = (run_dir / "samples.txt").read_text()
    return {"tokens": final["tokens"], "train_seconds": final["wall_s"], "valid_loss": final["loss"],
            "total_seconds": total, "samples": samples}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=resolve_config("tinystories_cpu"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override for our run")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--keep", type=Path, default=None,
                        help="write our run here (tokenizer, tokens, checkpoints, samples) instead of a temporary "
                             "directory, e.g. to sample from it afterwards")
    args = parser.parse_args()
    train_text, valid_text = DATA / "tinystories" / "train.txt", DATA / "tinystories" / "valid.txt"

    rows = {}
    if not args.skip_reference:
        rows["reference (HF BPE + torch built-ins + torch AdamW)"] = run_reference(train_text, valid_text)
        print("reference done:", rows, flush=True)
    ours = run_ours(train_text, valid_text, args.config, args.overrides, args.keep)
    rows["ours (cs336-train pipeline, " + args.config.name + ")"] = ours
    print(f"\n{'run':<55} {'tokens':>10} {'train s':>8} {'total s':>8} {'valid loss':>10}")
    for name, row in rows.items():
        print(f"{name:<55} {row['tokens']:>10,} {row['train_seconds']:>8.0f} {row['total_seconds']:>8.0f} "
              f"{row['valid_loss']:>10.3f}")
    if len(rows) == 2:
        reference = next(iter(rows.values()))
        print(f"\nours - reference validation loss: {ours['valid_loss'] - reference['valid_loss']:+.3f} "
              "(negative is better)")
    print("\nsamples from our model:\n" + ours["samples"])
    for row in rows.values():
        if row["tokens"] != TOKEN_BUDGET:
            sys.exit(f"token budget differs: {row['tokens']} != {TOKEN_BUDGET}")


if __name__ == "__main__":
    main()
