"""The small files a sweep leaves in its directory, so that it can stop anywhere and be reported on later.

    DIR/experiments/learning_rate.json   what the sweep resolved: the question, and every run's overrides and
                                         configuration (`cs336-train report DIR` needs nothing else)
    DIR/runs/lr-1e-3/result.json         how the run ended, written atomically once it has:
        {"status": "finished", "steps": 512, "tokens": 1048576, "train_seconds": 183.2, "final_valid_loss": 3.41}
        {"status": "diverged", "diverged_at_step": 56, "last_finite_loss": 7.49, "message": "the training ..."}

A run with a result.json is done and is never trained again; a run directory without one was interrupted and is
continued from its newest checkpoint.
"""

import json
import math
import re
from pathlib import Path

from cs336_bpe import atomic_write
from cs336_train.errors import ConfigError

RESULT_FILE = "result.json"
RECORDS_DIR = "experiments"
STATUSES = ("finished", "diverged")


def finished_result(steps: int, tokens: int, train_seconds: float, final_valid_loss: float | None,
                    stopped_by: str) -> dict:
    return {"status": "finished", "steps": steps, "tokens": tokens, "train_seconds": round(train_seconds, 3),
            "final_valid_loss": _finite(final_valid_loss), "stopped_by": stopped_by}


def diverged_result(error: Exception) -> dict:
    """The record of a TrainingDiverged: its step (the attribute, or else the 'at step N' of its message)."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    step = getattr(error, "step", None)
    if step is None:
        found = re.search(r"at step (\d+)", message)
        step = int(found.group(1)) if found else None
    return {"status": "diverged", "diverged_at_step": step,
            "last_finite_loss": _finite(getattr(error, "last_finite_loss", None)), "message": message}


def write_result(run_dir: Path, result: dict) -> None:
    with atomic_write(Path(run_dir) / RESULT_FILE, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)


def read_result(run_dir: Path) -> dict | None:
    """The run's result, or None when it has not ended (an unreadable file counts as not ended: it is redone)."""
    path = Path(run_dir) / RESULT_FILE
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return result if isinstance(result, dict) and result.get("status") in STATUSES else None


def write_record(out_dir: Path, record: dict) -> Path:
    path = Path(out_dir) / RECORDS_DIR / f"{record['name']}.json"
    with atomic_write(path, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
    return path


def read_records(out_dir: Path) -> list[dict]:
    """Every experiment swept into `out_dir`, by name."""
    folder = Path(out_dir) / RECORDS_DIR
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not paths:
        raise ConfigError(f"{str(out_dir)!r} holds no sweep (no {RECORDS_DIR}/*.json); run `cs336-train sweep "
                          "EXPERIMENT.toml --out DIR` first")
    return [json.loads(path.read_text(encoding="utf-8")) for path in paths]


def _finite(value) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None
