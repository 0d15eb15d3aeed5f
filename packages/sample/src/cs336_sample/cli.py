"""`cs336-sample`: generate text from a trained checkpoint, streamed to the terminal.

    cs336-sample runs/tinystories "Once upon a time" --temperature 0.8 --top-p 0.9
    echo "Lily wanted a dog" | cs336-sample runs/tinystories/checkpoints/best.pt --num-samples 3 --seed 1

The text goes to stdout (prompt, then completion); what happened (checkpoint, speed, why it stopped) goes to
stderr, so `> story.txt` captures only the text. Every input problem is one message and a non-zero exit.
"""

import random
import sys
import time
from pathlib import Path

import click

from cs336_sample.decoding import CONTEXT_LENGTH, MAX_NEW_TOKENS, STOP_TOKEN, Completion
from cs336_sample.errors import SampleError
from cs336_sample.loading import find_checkpoint, load_model_and_tokenizer
from cs336_sample.sampling import SamplingSettings
from cs336_sample.text import END_OF_TEXT, start_decoding, stream_text
from cs336_train import ConfigError, resolve_device


def read_prompt(prompt: str | None) -> str:
    """The PROMPT argument, or stdin when it is "-" or absent and piped (one trailing newline dropped)."""
    if prompt is not None and prompt != "-":
        return prompt
    if prompt is None and sys.stdin.isatty():
        raise click.UsageError("no prompt: give one as an argument, pipe it on stdin, or pass '' to let the model "
                               "start a new document")
    return sys.stdin.read().removesuffix("\n")


def describe_stop(completion: Completion, context_length: int) -> str:
    return {
        STOP_TOKEN: f"stopped at {END_OF_TEXT}",
        MAX_NEW_TOKENS: "reached --max-tokens",
        CONTEXT_LENGTH: f"the model's context of {context_length} tokens is full (it cannot read further back); "
                        "shorten the prompt to get more",
    }.get(completion.stop_reason, "interrupted")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("prompt", required=False)
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(path_type=Path), default=None,
              help="Tokenizer directory. Default: the run's own, <run>/tokenizer.")
@click.option("-n", "--max-tokens", type=click.IntRange(min=0), default=256, show_default=True,
              help="The most tokens to generate per sample (fewer if <|endoftext|> comes first).")
@click.option("-t", "--temperature", type=float, default=1.0, show_default=True,
              help="0 = greedy (always the most likely token); < 1 = safer, more repetitive; > 1 = wilder.")
@click.option("-p", "--top-p", type=float, default=1.0, show_default=True,
              help="Nucleus sampling: keep the most likely tokens up to this total probability, in (0, 1].")
@click.option("-k", "--top-k", type=int, default=None, help="Keep only the k most likely tokens (>= 1).")
@click.option("--seed", type=int, default=None, help="Random seed; sample i uses seed + i. Default: random (shown).")
@click.option("--num-samples", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many completions of the prompt.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda, then mps, then cpu), cpu, cuda, mps.")
@click.option("--no-kv-cache", is_flag=True, help="Re-run the whole text for every token (slow; for comparison).")
def main(checkpoint: Path, prompt: str | None, tokenizer_dir: Path | None, max_tokens: int, temperature: float,
         top_p: float, top_k: int | None, seed: int | None, num_samples: int, device: str, no_kv_cache: bool):
    """Generate text from CHECKPOINT (a run directory, whose newest checkpoint is used, or a .pt file),
    continuing PROMPT (an argument, or read from stdin when absent or "-"; '' starts a new document).

    The prompt and the generated text go to stdout as they are produced; the checkpoint, the speed and why
    each sample stopped go to stderr.

    \b
    Examples:
      cs336-sample runs/tinystories "Once upon a time" -t 0.8 -p 0.9
      cs336-sample runs/tinystories/checkpoints/best.pt "Tom had a ball" --num-samples 3 --seed 1
      echo "The dog" | cs336-sample runs/tinystories -t 0        # greedy: the same text every time
    """
    try:
        SamplingSettings(temperature, top_p, top_k)  # check the settings before the slow part
    except SampleError as error:
        raise click.UsageError(str(error)) from None
    try:
        torch_device = resolve_device(device, setting="--device")
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    prompt = read_prompt(prompt)
    try:
        checkpoint_path = find_checkpoint(checkpoint)
        model, tokenizer, _ = load_model_and_tokenizer(checkpoint_path, torch_device, tokenizer_dir)
    except SampleError as error:
        raise click.ClickException(str(error)) from None
    parameters = sum(parameter.numel() for parameter in model.parameters())
    click.echo(f"{checkpoint_path}: {parameters:,} parameters, context {model.config.context_length} tokens, "
               f"on {torch_device}", err=True)

    base_seed = random.randrange(2**31) if seed is None else seed
    total_tokens, total_seconds = 0, 0.0
    for sample in range(num_samples):
        try:
            decoding = start_decoding(model, tokenizer, [prompt], max_new_tokens=max_tokens,
                                      temperature=temperature, top_p=top_p, top_k=top_k, seed=base_seed + sample,
                                      use_kv_cache=not no_kv_cache)
        except SampleError as error:
            raise click.ClickException(str(error)) from None
        if num_samples > 1:
            click.echo(f"--- sample {sample + 1} of {num_samples} (seed {base_seed + sample}) ---")
        click.echo(prompt, nl=False)
        started = time.perf_counter()
        try:
            for piece in stream_text(decoding, tokenizer):
                click.echo(piece, nl=False)  # click.echo flushes: the text appears as it is generated
        except KeyboardInterrupt:
            click.echo()
            click.echo("interrupted", err=True)
            sys.exit(130)
        seconds = time.perf_counter() - started
        click.echo()
        completion = decoding.completions[0]
        tokens = len(completion.token_ids)
        total_tokens, total_seconds = total_tokens + tokens, total_seconds + seconds
        click.echo(f"[{tokens} tokens in {seconds:.2f} s, {tokens / seconds:.1f} tokens/s; "
                   f"{describe_stop(completion, model.config.context_length)}; seed {completion.seed}]", err=True)
    if num_samples > 1:
        click.echo(f"[{num_samples} samples, {total_tokens} tokens in {total_seconds:.2f} s, "
                   f"{total_tokens / total_seconds:.1f} tokens/s]", err=True)


if __name__ == "__main__":
    main()
