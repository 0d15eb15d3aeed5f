"""What the training-dynamics instruments cost: a plain optimizer step against a measured one.

    uv run python benchmarks/instruments_benchmark.py [--steps 12] [--interval 64]

The default CPU model (the bundled tinystories_cpu config: d_model 256, 4 layers, batch 8 x 256 tokens, bf16) on the
shared TinyStories text (a 10K tokenizer is trained and the text encoded first, a few seconds). Plain and
measured steps alternate, so a slow spell of the machine hits both alike. A measured step pays the per-group
norms, a copy of the weights (for the update ratio) and one probe forward pass over 4 sequences; with
`run.stats_interval = N`, one step in N is measured, so the overhead of training is (measured - plain) / (N x plain).
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cs336_bpe import Tokenizer, encode_file, train_bpe
from cs336_nn import TransformerLM, loss_function
from cs336_optim import make_adamw, parameter_groups
from cs336_train import TrainConfig, distributed, runtime
from cs336_train.config_files import resolve_config
from cs336_train.data import TrainingBatches, open_tokens
from cs336_train.divergence import DivergenceWatch
from cs336_train.instruments import ParameterGroups
from cs336_train.optimizer_step import StepContext, measure_dynamics, optimizer_step
from cs336_train.step_plan import ReadPoints, StepPlan

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CS336_DATA", ROOT.parent / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="plain and measured steps each (after 2 warm-up)")
    parser.add_argument("--interval", type=int, default=64, help="run.stats_interval to report the overhead for")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        text = DATA / "tinystories" / "train.txt"
        vocab, merges = train_bpe(text, 10_000, ["<|endoftext|>"])
        tokenizer = Tokenizer(vocab, merges, ["<|endoftext|>"])
        encode_file(tokenizer, text, scratch / "train.bin")
        config = TrainConfig.from_toml(resolve_config("tinystories_cpu"),
                                       [f'data.train="{scratch / "train.bin"}"', 'data.valid="-"'])
        device = torch.device("cpu")
        runtime.configure_backends(device, config.run.num_threads)
        runtime.seed_everything(0)
        model = TransformerLM(config.model)
        optimizer = make_adamw(parameter_groups(model.named_parameters(), 0.1), lr=1e-3)
        groups = ParameterGroups(model.named_parameters())
        context = StepContext(config, model, optimizer, groups, loss_function("scratch"), distributed.Distributed(),
                              device, DivergenceWatch(device, sum(len(group) for group in groups.parameters)))
        batches = TrainingBatches(open_tokens(scratch / "train.bin", 10_000), config.run.batch_size,
                                  config.model.context_length, np.random.default_rng(0), device)
        plain, measured = [], []
        for step in range(2 + arguments.steps):
            for measure, times in ((False, plain), (True, measured)):
                start = time.perf_counter()
                plan = StepPlan(100 + step, lr=1e-3, reads=ReadPoints(measures=measure))
                result = optimizer_step(context, plan, batches.next_step())
                float(result.loss)  # a plain step is timed to the end of its work, as the trainer's read points do
                if measure:
                    measure_dynamics(context, model, result)
                if step >= 2:  # the first steps warm caches and allocators
                    times.append(time.perf_counter() - start)
    plain_s, measured_s = statistics.median(plain), statistics.median(measured)
    overhead = (measured_s - plain_s) / (arguments.interval * plain_s)
    print(f"plain step    median {plain_s * 1e3:7.1f} ms  (range {min(plain) * 1e3:.1f}-{max(plain) * 1e3:.1f})")
    print(f"measured step median {measured_s * 1e3:7.1f} ms  (range {min(measured) * 1e3:.1f}-"
          f"{max(measured) * 1e3:.1f})")
    print(f"overhead at run.stats_interval={arguments.interval}: {100 * overhead:.2f}% of training time")


if __name__ == "__main__":
    main()
