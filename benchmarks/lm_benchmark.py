"""Training speed of our TransformerLM + AdamW + cross-entropy + clipping against the torch built-ins anchor.

    uv run python benchmarks/lm_benchmark.py [--config cpu|course|both] [--settings fp32,bf16,fp32+compile,bf16+compile]
    uv run python benchmarks/lm_benchmark.py --device cuda --config course --batch 128 --settings bf16+compile

The anchor is ../shared/bench/torch_reference_lm.py (nn.Linear, SDPA, nn.RMSNorm, F.cross_entropy,
torch.optim.AdamW), imported from there and trained on the same random batches in the same process. Ours and
the anchor alternate in rounds, so slow phases of a shared machine hit both. Prints tokens/s, the ratio, and
model FLOPs utilisation (training FLOPs = 3 x forward matmul FLOPs) against this machine's measured matmul peak,
and on CUDA each model's peak memory (torch.cuda.max_memory_allocated over its timed steps). `--config tiny`
exists to check the script itself in seconds on a CPU (benchmarks/gpu_check.sh uses it that way in the tests).
"""

import argparse
import importlib.util
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import cs336_nn as nn_
import cs336_optim as optim_
from cs336_train.runtime import measure_matmul_peak

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {  # name: (vocab, context, d_model, layers, heads, d_ff, batch)
    "cpu": (10_000, 256, 256, 4, 8, 704, 32),
    "course": (10_000, 256, 512, 4, 16, 1344, 8),
    "tiny": (512, 32, 64, 2, 4, 176, 4),
}


def load_anchor(bench_dir: Path):
    spec = importlib.util.spec_from_file_location("torch_reference_lm", bench_dir / "torch_reference_lm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model, optimizer, loss_fn, clip_fn, parameters, bf16: bool, compiled: bool):
    forward = torch.compile(model) if compiled else model
    device_type = next(model.parameters()).device.type

    def step(x):
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(x[:, :-1])
            loss = loss_fn(logits, x[:, 1:])
        loss.backward()
        clip_fn(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def ours(config_values, bf16, compiled, device):
    vocab, context, d_model, layers, heads, d_ff, _ = config_values
    config = nn_.ModelConfig(vocab_size=vocab, context_length=context, d_model=d_model, num_layers=layers,
                             num_heads=heads, d_ff=d_ff)
    model = nn_.TransformerLM(config, device=device)
    parameters = list(model.parameters())
    optimizer = optim_.AdamW(parameters, lr=1e-3)
    return make_step(model, optimizer, nn_.cross_entropy, optim_.clip_gradients, parameters, bf16, compiled), config


def anchor(anchor_module, config_values, bf16, compiled, device):
    vocab, context, d_model, layers, heads, d_ff, _ = config_values
    model = anchor_module.LM(vocab, context, d_model, layers, heads, d_ff).to(device)
    parameters = list(model.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)

    def loss_fn(logits, targets):
        return F.cross_entropy(logits.float().view(-1, vocab), targets.reshape(-1))

    return make_step(model, optimizer, loss_fn, torch.nn.utils.clip_grad_norm_, parameters, bf16, compiled)


def run(args):
    anchor_module = load_anchor(args.bench)
    device = torch.device(args.device)
    peaks = {"fp32": measure_matmul_peak(device, "fp32"), "bf16": measure_matmul_peak(device, "bf16")}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPUs"
    print(f"torch {torch.__version__}, {where}, {torch.get_num_threads()} threads; measured matmul "
          f"peak: fp32 {peaks['fp32'] / 1e12:.2f} TFLOP/s, bf16 {peaks['bf16'] / 1e12:.2f} TFLOP/s")
    memory = device.type == "cuda"
    print(f"{'config':<8}{'batch':>6} {'setting':<14}{'ours tok/s':>11}{'anchor tok/s':>14}{'ratio':>7}"
          f"{'MFU ours':>10}" + (f"{'GiB ours':>10}{'GiB anchor':>12}" if memory else ""))
    for config_name in args.config:
        config_values = CONFIGS[config_name]
        batch, context = args.batch or config_values[6], config_values[1]
        for setting in args.settings:
            bf16, compiled = setting.startswith("bf16"), setting.endswith("compile")
            torch.manual_seed(0)
            our_step, config = ours(config_values, bf16, compiled, device)
            torch.manual_seed(0)
            anchor_step = anchor(anchor_module, config_values, bf16, compiled, device)
            batches = torch.randint(0, config_values[0], (args.steps, batch, context + 1), device=device)
            for step in (our_step, anchor_step):  # warm-up (and compilation)
                for x in batches[:2]:
                    step(x).item()
            times, peak_bytes = {"ours": [], "anchor": []}, {}
            for _ in range(args.rounds):  # alternate, so machine noise hits both
                for name, step in (("ours", our_step), ("anchor", anchor_step)):
                    if memory:
                        torch.cuda.reset_peak_memory_stats(device)
                    synchronize(device)
                    start = time.perf_counter()
                    for x in batches:
                        loss = step(x)
                    loss.item()  # waits for the device: the timed work is done
                    times[name].append(time.perf_counter() - start)
                    if memory:
                        peak_bytes[name] = torch.cuda.max_memory_allocated(device)
            tokens = args.steps * batch * context
            ours_tps, anchor_tps = tokens / min(times["ours"]), tokens / min(times["anchor"])
            mfu = ours_tps * nn_.training_flops_per_token(config) / peaks["bf16" if bf16 else "fp32"]
            line = (f"{config_name:<8}{batch:>6} {setting:<14}{ours_tps:>11,.0f}{anchor_tps:>14,.0f}"
                    f"{ours_tps / anchor_tps:>7.2f}{mfu:>10.1%}")
            if memory:
                line += f"{peak_bytes['ours'] / 2**30:>10.2f}{peak_bytes['anchor'] / 2**30:>12.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="both", type=lambda s: ["cpu", "course"] if s == "both" else s.split(","))
    parser.add_argument("--settings", default="fp32,bf16,fp32+compile,bf16+compile", type=lambda s: s.split(","))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default: the config's)")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best is reported")
    parser.add_argument("--bench", type=Path, default=Path(os.environ.get("CS336_BENCH", ROOT.parent / "shared/bench")))
    run(parser.parse_args())
