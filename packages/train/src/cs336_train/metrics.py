"""Where a run's numbers go: a JSONL file always, the console, and Weights & Biases when asked.

`RUN/metrics.jsonl` has one JSON object per line:

    {"kind": "train", "step": 100, "tokens": 819200, "wall_s": 61.2, "loss": 3.91, "lr": 0.0029,
     "grad_norm": 0.84, "tokens_per_s": 13402.0, "mfu": 0.21}
    {"kind": "valid", "step": 256, "tokens": 2097152, "wall_s": 160.4, "loss": 3.31, "perplexity": 27.4,
     "bits_per_byte": 1.15}
    {"kind": "stats", "step": 64, ...}     every run.stats_interval steps: the instruments (instruments.py)
    {"kind": "diverged", "step": 90, ...}  the next step's loss or gradient norm became nan or inf: its loss and
                                           grad_norm, the last finite loss, the largest grad norms

`step` counts optimizer steps, `tokens` training tokens seen, `wall_s` training seconds since the run began
(continued across resumes; validation and checkpoint time excluded). After a resume from an earlier checkpoint
some steps appear twice; the later record is the one that counts.
"""

import hashlib
import json
import math
import os
from pathlib import Path

import click


class MetricsLog:
    """Writes each record to metrics.jsonl, to wandb when on, and to the console (console.py: a `TrainingConsole`,
    or plain lines on stderr when none is given)."""

    def __init__(self, run_dir: Path, wandb_run=None, console=None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.wandb_run = wandb_run
        self.console = console

    def write(self, record: dict) -> None:
        # One short append per line, flushed at once: a killed run loses at most the line being written.
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            kind = record["kind"]
            self.wandb_run.log({f"{kind}/{key}": value for key, value in record.items()
                                if key not in ("kind", "step")}, step=record["step"])
        if self.console is not None:
            self.console.record(record)
        else:
            click.echo(format_record(record), err=True)


def bits_per_byte(loss_nats_per_token: float, bytes_per_token: float | None) -> float | None:
    """Loss in bits per byte of text: nats/token ÷ ln 2 = bits/token, ÷ bytes/token = bits/byte.

    Per token, a tokenizer with longer tokens looks worse (each token carries more text); per byte, a byte-level
    model and a 10K BPE model are measured on the same scale.

    >>> round(bits_per_byte(2.0, 4.0), 4)   # 2 nats/token = 2.885 bits/token, over 4 bytes per token
    0.7213
    """
    if bytes_per_token is None or not math.isfinite(loss_nats_per_token):
        return None
    return loss_nats_per_token / math.log(2) / bytes_per_token


def format_record(record: dict) -> str:
    """The console line of a record, with fixed-width columns that line up in a terminal."""
    head = f"step {record['step']:>6}  tokens {record['tokens']:>11,}  {record['wall_s']:>7.1f}s"
    if record["kind"] == "train":
        return (f"{head}  loss {record['loss']:7.4f}  lr {record['lr']:.2e}  grad-norm {record['grad_norm']:6.3f}  "
                f"{record['tokens_per_s']:>8,.0f} tok/s  MFU {100 * record['mfu']:4.1f}%")
    if record["kind"] == "valid":
        line = f"{head}  valid loss {record['loss']:7.4f}  perplexity {record['perplexity']:9.2f}"
        return line + (f"  bits/byte {record['bits_per_byte']:.4f}" if record.get("bits_per_byte") else "")
    if record["kind"] == "stats":
        rms, entropy = record["activation_rms"], record["attention_entropy"]
        return (f"{head}  stats: residual RMS {' '.join(f'{value:.2f}' for value in rms.values())}  "
                f"attention entropy {' '.join(f'{value:.2f}' for value in entropy.values())}  "
                f"update/weight {max(record['update_ratio'].values(), default=0):.1e} (largest)")
    if record["kind"] == "diverged":
        return f"{head}  diverged: loss {record['loss']}, last finite {record['last_finite_loss']}"
    return f"{head}  {record}"


def start_wandb(run_dir: Path, config: dict, project: str):
    """A wandb run in offline mode unless an account is configured (no network or account is ever required)."""
    try:
        import wandb
    except ImportError:
        raise click.ClickException(
            'run.wandb = true needs Weights & Biases: pip install "cs336-train[wandb]" (or `uv sync` here)'
        ) from None
    mode = os.environ.get("WANDB_MODE") or ("online" if _has_wandb_credentials() else "offline")
    return wandb.init(project=project, name=Path(run_dir).name, dir=str(run_dir), config=config, mode=mode,
                      id=_stable_id(run_dir), resume="allow")


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="replace")


def _stable_id(run_dir: Path) -> str:
    # The same id for the same run directory, so `resume` continues the same wandb run.
    return "cs336-" + hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
