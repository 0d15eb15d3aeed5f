"""Generation speed with and without the KV cache, side by side in one process.

    uv run python benchmarks/sample_benchmark.py [--new-tokens 256] [--batch-sizes 1,8] [--rounds 3]

The model is the CPU-sized one of the handout's experiments (vocab 10,000, context 256, d_model 256, 4 layers,
8 heads, d_ff 704), randomly initialised: speed does not depend on the weights. The prompt is one token (as
when sampling a story from <|endoftext|>), so 256 new tokens exactly fill the context of 256. The stop token
is off, so every run generates the same number of tokens. Both paths sample (temperature 1 by default) with
the same seed and must produce the same tokens (checked). Rounds alternate between the two paths, so slow
phases of a shared machine hit both; each path's best round is reported.
"""

import argparse
import os
import time

import torch

from cs336_nn import ModelConfig, TransformerLM
from cs336_sample import Decoding, SamplingSettings

CONFIG = ModelConfig(vocab_size=10_000, context_length=256, d_model=256, num_layers=4, num_heads=8, d_ff=704)


def generate_once(model, batch_size: int, new_tokens: int, use_kv_cache: bool,
                  sampling: SamplingSettings) -> tuple[float, list[list[int]]]:
    """Seconds to generate `new_tokens` per row from a one-token prompt, and the tokens."""
    decoding = Decoding(model, [[0]] * batch_size, max_new_tokens=new_tokens, seed=0, sampling=sampling,
                        use_kv_cache=use_kv_cache)
    start = time.perf_counter()
    completions = decoding.run()
    seconds = time.perf_counter() - start
    assert all(len(completion.token_ids) == new_tokens for completion in completions)
    return seconds, [completion.token_ids for completion in completions]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batch-sizes", default="1", help="comma-separated, e.g. 1,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0, help="< 1 adds a sort of the vocabulary to every step")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sampling = SamplingSettings(temperature=args.temperature, top_p=args.top_p)

    torch.manual_seed(0)
    model = TransformerLM(CONFIG).eval()
    print(f"model: {CONFIG}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"{args.new_tokens} new tokens from a 1-token prompt, {sampling}, best of {args.rounds} rounds\n")
    generate_once(model, 1, 8, True, sampling)  # warm-up: first calls allocate and load kernels
    generate_once(model, 1, 8, False, sampling)

    print("| batch | with KV cache (tokens/s) | without (tokens/s) | speed-up | same tokens |")
    print("|---|---|---|---|---|")
    for batch_size in map(int, args.batch_sizes.split(",")):
        best = {True: float("inf"), False: float("inf")}
        tokens = {}
        for _ in range(args.rounds):
            for use_kv_cache in (True, False):
                seconds, tokens[use_kv_cache] = generate_once(model, batch_size, args.new_tokens, use_kv_cache,
                                                              sampling)
                best[use_kv_cache] = min(best[use_kv_cache], seconds)
        generated = batch_size * args.new_tokens
        cached, uncached = generated / best[True], generated / best[False]
        print(f"| {batch_size} | {cached:,.0f} | {uncached:,.0f} | **{cached / uncached:.1f}x** | "
              f"{'yes' if tokens[True] == tokens[False] else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
