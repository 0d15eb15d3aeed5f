"""The `cs336-bpe` command line: train, encode, decode, stats, export.

    cs336-bpe train ../shared/data/tinystories/train.txt --vocab-size 10000 --out tokenizers/tinystories
    cs336-bpe encode tokenizers/tinystories ../shared/data/tinystories/train.txt data/train.bin
    cs336-bpe decode tokenizers/tinystories data/train.bin --count 200
    cs336-bpe stats tokenizers/tinystories --text ../shared/data/tinystories/valid.txt
    cs336-bpe export tokenizers/tinystories exported/tinystories --format hf
"""

import resource
import sys
import time
from pathlib import Path

import click
import numpy as np

from cs336_bpe.atomic import ensure_writable_directory
from cs336_bpe.cli_errors import friendly_errors
from cs336_bpe.corpus import encode_file, open_token_file
from cs336_bpe.errors import BPEInputError
from cs336_bpe.stats import longest_tokens, measure_encoding, vocabulary_overlap
from cs336_bpe.tokenizer import Tokenizer
from cs336_bpe.training import train_bpe


def _peak_memory_mb() -> tuple[float, float]:
    """Peak resident memory of this process and of its largest finished child (worker), in MB (Linux: KB)."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 1024 / 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return own, children


def _summary(message: str, started: float) -> None:
    own, children = _peak_memory_mb()
    workers = f", workers {children:.0f} MB" if children else ""
    click.echo(f"{message} in {time.perf_counter() - started:.2f} s (peak memory {own:.0f} MB{workers})", err=True)


# Our input errors become `Error: ...` and exit status 1; Ctrl-C a clean message and 130.
_friendly_errors = friendly_errors(BPEInputError, interrupted="interrupted: no output file was written or changed")


class _Progress:
    """A click progress bar fed with absolute (done, total) numbers, one bar per stage."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar, self.stage, self.position = enabled, None, None, 0

    def __call__(self, *update) -> None:
        if not self.enabled:
            return
        stage, done, total = update if len(update) == 3 else ("encode", *update)
        if stage != self.stage:
            self.close()
            labels = {"pretokenize": "pre-tokenizing", "merge": "merging", "encode": "encoding"}
            self.bar = click.progressbar(length=total, label=labels.get(stage, stage), file=sys.stderr)
            self.bar.__enter__()
            self.stage, self.position = stage, 0
        self.bar.update(done - self.position)
        self.position = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cs336-bpe")
def main():
    """Train, use and inspect byte-level BPE tokenizers."""


@main.command()
@click.argument("input_path", type=click.Path(path_type=Path))
@click.option("--vocab-size", type=int, required=True, help="Final vocabulary size (bytes + special tokens + merges).")
@click.option("--special-token", "special_tokens", multiple=True, default=["<|endoftext|>"], show_default=True,
              help="A special token; repeat for several. Pass --no-special-tokens for none.")
@click.option("--no-special-tokens", is_flag=True, help="Train without any special token.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Directory to write vocab.json, merges.txt and special_tokens.json into.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes for pre-tokenization [all cores].")
@click.option("--max-pretokens", type=click.IntRange(min=1), default=None,
              help="Keep at most this many distinct pre-tokens, dropping the rarest: bounds memory on web-sized "
                   "text (about 0.8 KB each at vocab 32,000) [no cap: exact].")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@_friendly_errors
def train(input_path, vocab_size, special_tokens, no_special_tokens, out_dir, workers, max_pretokens, progress):
    """Train a tokenizer on INPUT_PATH, a UTF-8 text file."""
    started = time.perf_counter()
    special_tokens = [] if no_special_tokens else list(special_tokens)
    ensure_writable_directory(out_dir)  # fail before training, not after
    progress_bar = _Progress(progress)
    try:
        vocab, merges = train_bpe(input_path, vocab_size, special_tokens, workers, on_progress=progress_bar,
                                  max_pretokens=max_pretokens)
    finally:
        progress_bar.close()
    tokenizer = Tokenizer(vocab, merges, special_tokens)
    tokenizer.save(out_dir)
    if len(vocab) < vocab_size:
        click.echo(f"note: the text only supports {len(vocab)} tokens; stopped early", err=True)
    longest = longest_tokens(tokenizer, 1)[0][1]
    _summary(f"trained vocab {len(vocab)} ({len(merges)} merges, longest token {longest!r}) -> {out_dir}", started)


@main.command()
@click.argument("tokenizer_dir", type=click.Path(path_type=Path))
@click.argument("input_path", type=click.Path(path_type=Path))
@click.argument("output_path", type=click.Path(path_type=Path))
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Encoding processes [all cores].")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@_friendly_errors
def encode(tokenizer_dir, input_path, output_path, workers, progress):
    """Encode INPUT_PATH to OUTPUT_PATH (flat uint16/uint32 token ids) plus OUTPUT_PATH.json metadata."""
    started = time.perf_counter()
    tokenizer = Tokenizer.load(tokenizer_dir)
    progress_bar = _Progress(progress)
    try:
        metadata = encode_file(tokenizer, input_path, output_path, workers, on_progress=progress_bar,
                               on_note=lambda note: click.echo(f"note: {note}", err=True))
    finally:
        progress_bar.close()
    seconds = time.perf_counter() - started
    ratio = metadata["source_bytes"] / max(1, metadata["num_tokens"])
    _summary(
        f"encoded {metadata['num_tokens']:,} tokens ({metadata['dtype']}, {ratio:.2f} bytes/token, "
        f"{metadata['source_bytes'] / seconds / 1e6:.1f} MB/s) -> {output_path}",
        started,
    )


@main.command()
@click.argument("tokenizer_dir", type=click.Path(path_type=Path))
@click.argument("token_file", type=click.Path(path_type=Path), required=False)
@click.option("--start", type=click.IntRange(min=0), default=0, help="First token of TOKEN_FILE to decode.")
@click.option("--count", type=click.IntRange(min=0), default=None, help="How many tokens to decode [all].")
@_friendly_errors
def decode(tokenizer_dir, token_file, start, count):
    """Decode TOKEN_FILE (from `encode`), or whitespace-separated ids from standard input, to text."""
    started = time.perf_counter()
    tokenizer = Tokenizer.load(tokenizer_dir)
    if token_file is not None:
        tokens = open_token_file(token_file, expected_fingerprint=tokenizer.fingerprint())
        stop = len(tokens) if count is None else start + count
        ids = np.asarray(tokens[start:stop]).tolist()
    else:
        words = sys.stdin.read().split()
        try:
            ids = [int(word) for word in words]
        except ValueError:
            bad = next(word for word in words if not word.lstrip("-").isdigit())
            raise BPEInputError(f"{bad!r} on standard input is not a token id; give integers") from None
        ids = ids[start:] if count is None else ids[start : start + count]
    click.echo(tokenizer.decode(ids), nl=False)
    click.echo("", err=True)
    _summary(f"decoded {len(ids):,} tokens", started)


@main.command()
@click.argument("tokenizer_dir", type=click.Path(path_type=Path))
@click.option("--text", "text_path", type=click.Path(path_type=Path),
              help="Measure compression and speed on this file.")
@click.option("--compare", "other_dir", type=click.Path(path_type=Path), help="Compare vocabulary with this tokenizer.")
@click.option("--top", type=click.IntRange(min=0), default=10, show_default=True, help="Longest tokens to show.")
@_friendly_errors
def stats(tokenizer_dir, text_path, other_dir, top):
    """Vocabulary size, longest tokens, compression ratio and throughput of a tokenizer."""
    started = time.perf_counter()
    tokenizer = Tokenizer.load(tokenizer_dir)
    click.echo(f"{tokenizer_dir}: vocab {tokenizer.vocab_size}, {len(tokenizer.merges)} merges, "
               f"special tokens {tokenizer.special_tokens}, fingerprint {tokenizer.fingerprint()}")
    if top:
        click.echo(f"longest {top} tokens:")
        for token_id, token in longest_tokens(tokenizer, top):
            click.echo(f"  {token_id:>7}  {len(token):>3} bytes  {token.decode('utf-8', errors='replace')!r}")
    if text_path is not None:
        from cs336_bpe.text_files import check_text_file, decode_chunk

        check_text_file(text_path)
        text = decode_chunk(Path(text_path).read_bytes(), text_path, 0)
        measured = measure_encoding(tokenizer, text)
        click.echo(f"on {text_path}: {measured.num_tokens:,} tokens for {measured.num_bytes:,} bytes = "
                   f"{measured.bytes_per_token:.2f} bytes/token; {measured.bytes_per_second / 1e6:.1f} MB/s "
                   f"(one process; the Pile's 825 GB would take {825e9 / measured.bytes_per_second / 3600:.0f} h)")
    if other_dir is not None:
        overlap = vocabulary_overlap(tokenizer, Tokenizer.load(other_dir))
        click.echo(f"vs {other_dir}: {overlap.shared} tokens shared, {overlap.only_first} only here, "
                   f"{overlap.only_second} only there")
    _summary("stats", started)


@main.command()
@click.argument("tokenizer_dir", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--format", "export_format", type=click.Choice(["hf", "tiktoken"]), required=True,
              help="hf: tokenizer.json + tokenizer_config.json (HF tokenizers, transformers' AutoTokenizer); "
                   "tiktoken: tokenizer.tiktoken + tiktoken_config.json (OpenAI's tiktoken).")
@click.option("--context-length", type=click.IntRange(min=1), default=None,
              help="hf: the context length of the model the tokenizer goes with (model_max_length).")
@_friendly_errors
def export(tokenizer_dir, out_dir, export_format, context_length):
    """Write the tokenizer in TOKENIZER_DIR into OUT_DIR for HF tokenizers or tiktoken, which then give our ids."""
    started = time.perf_counter()
    tokenizer = Tokenizer.load(tokenizer_dir)
    tokenizer.save(out_dir, format=export_format, model_max_length=context_length)
    _summary(f"exported vocab {tokenizer.vocab_size} as {export_format} -> {out_dir}", started)


if __name__ == "__main__":
    main()
