"""The training loop (handout §5.3): one orchestrating function, `train`, and the few pieces it plugs together.

Each optimizer step:
    1. set the learning rate from the schedule (a function of the step number only)
    2. for each of grad_accum_steps micro-batches: forward, loss / grad_accum_steps, backward
    3. average gradients across processes (data-parallel runs only)
    4. clip the global gradient norm, then stop if the loss is NaN or infinite
    5. optimizer step; every log_interval steps a metrics line, every eval_interval a validation,
       every checkpoint_interval a checkpoint; stop early on SIGINT/SIGTERM or when the time budget is spent

Everything a resumed run needs to continue exactly (weights, optimizer moments, step, random states, the data
sampler, the running loss sum of the current log interval, the clock) is in every checkpoint.
"""

import contextlib
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import torch

from cs336_bpe import BPEInputError, Tokenizer
from cs336_nn import TransformerLM, cross_entropy, perplexity, training_flops_per_token
from cs336_nn.builtin import torch_cross_entropy
from cs336_optim import clip_gradients, cosine_schedule, make_adamw, parameter_groups, wsd_schedule
from cs336_train import distributed, runtime
from cs336_train.checkpoint import config_differences, read_checkpoint
from cs336_train.config import TrainConfig
from cs336_train.data import (
    bytes_per_token,
    open_tokens,
    require_one_window,
    sample_window_starts,
    tokenizer_fingerprint_of,
    validation_batches,
    windows_at,
)
from cs336_train.errors import CheckpointError, ConfigError, DataError, Interrupted, TrainError, TrainingDiverged
from cs336_train.instruments import ActivationProbe, ParameterGroups, largest
from cs336_train.metrics import MetricsLog, bits_per_byte, start_wandb
from cs336_train.run_directory import CONFIG_FILE, RunDirectory

LOSS_FUNCTIONS = {"scratch": cross_entropy, "torch": torch_cross_entropy}
SINGLE_PROCESS = distributed.Distributed()
# What a checkpoint must hold for `resume` to continue exactly (the course hook's files hold only the first two).
RESUME_KEYS = {"model": "the weights", "optimizer": "the optimizer state", "config": "the configuration",
               "rng": "the random states", "data_state": "the data sampler's state",
               "progress": "the step, token and clock counters"}
# Settings a resume may change: they decide how the run is watched or executed, not what it computes.
RESUMABLE_OVERRIDES = {"time_budget_s", "device", "wandb", "wandb_project", "log_interval", "eval_interval",
                       "checkpoint_interval", "keep_last", "num_threads", "compile", "peak_tflops", "stats_interval"}


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    tokens: int
    wall_s: float
    valid_loss: float
    stopped_by: str  # "steps", "time budget"


def learning_rate(config: TrainConfig, step: int) -> float:
    """The schedule of `optimizer.schedule` at `step` (warm-up and decay lengths are fractions of run.steps)."""
    opt, total = config.optimizer, config.run.steps
    warmup = round(opt.warmup_fraction * total)
    min_lr = opt.lr * opt.min_lr_ratio
    if opt.schedule == "cosine":
        return cosine_schedule(step, opt.lr, min_lr, warmup, total)
    if opt.schedule == "wsd":
        return wsd_schedule(step, opt.lr, min_lr, warmup, total, max(1, round(opt.decay_fraction * total)))
    return opt.lr * min(1.0, step / warmup) if warmup else opt.lr


class _StopSignal:
    """Remembers SIGINT/SIGTERM so the loop can finish its step and checkpoint before exiting."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        for number in (signal.SIGINT, signal.SIGTERM):
            # Outside the main thread (e.g. a notebook worker) signals cannot be caught: keep the default behaviour.
            with contextlib.suppress(ValueError):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, frame):
        self.received = number

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def prepare_run_directory(config: TrainConfig, run: RunDirectory) -> None:
    """A new run: refuse a directory that already holds a run, save the resolved config and the tokenizer."""
    if run.has_checkpoints():
        raise ConfigError(
            f"{str(run.path)!r} already holds a run with checkpoints; continue it with `cs336-train resume "
            f"{run.path}` or choose another --out directory"
        )
    run.write_config(config.to_toml())
    if config.data.tokenizer and Path(config.data.tokenizer).resolve() != run.tokenizer_dir.resolve():
        try:
            Tokenizer.load(config.data.tokenizer).save(run.tokenizer_dir)
        except BPEInputError as error:
            raise DataError(str(error)) from None


def load_run_config(run_dir: Path, overrides: list[str] = ()) -> TrainConfig:
    """The configuration saved in a run directory, with only watch-and-execute settings allowed to change."""
    path = RunDirectory(run_dir).config_path
    if not path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a run directory: it has no {CONFIG_FILE}")
    for override in overrides:
        name = override.partition("=")[0].strip()
        section, _, key = name.partition(".")
        if section != "run" or key not in RESUMABLE_OVERRIDES:
            raise ConfigError(
                f"a resumed run cannot change {name}: that would make it a different run. Start a new run with "
                f"`cs336-train fit`, or change only run.{{{', '.join(sorted(RESUMABLE_OVERRIDES))}}}"
            )
    return TrainConfig.from_toml(path, overrides)


def evaluate(model: torch.nn.Module, tokens: np.ndarray, config: TrainConfig, device: torch.device,
             dist: distributed.Distributed = SINGLE_PROCESS) -> float:
    """Mean loss over every token of `tokens`, in order (exact, comparable across runs); ranks share the work."""
    loss_fn = LOSS_FUNCTIONS[config.run.loss_impl]
    was_training = model.training
    model.eval()
    loss_sum, count = 0.0, 0
    with torch.no_grad(), runtime.autocast(device, config.run.precision):
        batches = validation_batches(tokens, config.model.context_length, config.run.valid_batch_size, device)
        for index, (inputs, targets) in enumerate(batches):
            if index % dist.world_size != dist.rank:
                continue
            logits = model(inputs)
            loss_sum += float(loss_fn(logits.float(), targets)) * targets.numel()
            count += targets.numel()
    model.train(was_training)
    loss_sum, count = distributed.sum_across_ranks([loss_sum, float(count)], device)
    return loss_sum / count


def train(config: TrainConfig, run_dir: str | Path, resume: bool = False,
          resume_from: str | Path | None = None) -> TrainResult:
    """Train `config` in `run_dir` (a new run, or the continuation of the one saved there when `resume`).

    `resume_from` picks the checkpoint to continue from: None = the newest, "best", a step number or a file.
    The main process holds the run directory's lock throughout, so no second process can write the same run.
    """
    run = RunDirectory(run_dir)
    device = runtime.resolve_device(config.run.device, distributed.local_rank_from_environment())
    dist = distributed.init_distributed(device.type)
    with run.lock() if dist.is_main else contextlib.nullcontext() as lock_note:
        if dist.is_main:
            _say(lock_note)
            removed = run.remove_stale_partials()
            _say(f"removed {len(removed)} half-written file(s) left by an interrupted save: "
                 f"{', '.join(path.name for path in removed)}" if removed else None)
        return _train(config, run, dist, device, resume, resume_from)


def _say(note: str | None) -> None:
    if note:
        click.echo(f"cs336-train: {note}", err=True)


def _train(config: TrainConfig, run_directory: RunDirectory, dist: distributed.Distributed, device: torch.device,
           resume: bool, resume_from: str | Path | None) -> TrainResult:
    run_dir = run_directory.path
    runtime.configure_backends(device, config.run.num_threads, config.run.deterministic)
    run = config.run
    micro_batch, remainder = divmod(run.batch_size, run.grad_accum_steps * dist.world_size)
    if remainder or micro_batch == 0:
        raise ConfigError(
            f"run.batch_size {run.batch_size} must be a multiple of run.grad_accum_steps × processes = "
            f"{run.grad_accum_steps} × {dist.world_size}"
        )
    if resume and resume_from is None and not run_directory.has_checkpoints():
        # Killed before its first checkpoint was complete: nothing was saved, so continuing means starting over.
        if dist.is_main:
            _say(f"{str(run_dir)!r} has no checkpoint yet (its first save never completed); starting it from step 0 "
                 f"with its saved {CONFIG_FILE}")
        resume = False
    if not resume and dist.is_main:
        prepare_run_directory(config, run_directory)
    distributed.barrier()

    # The same seed on every rank: identical initial weights, and the same global batch of window starts, of which
    # each rank takes its own share.
    runtime.seed_everything(run.seed)
    model = TransformerLM(config.model, device=device)
    optimizer = make_adamw(parameter_groups(model.named_parameters(), config.optimizer.weight_decay),
                           impl=config.optimizer.impl, lr=config.optimizer.lr, betas=config.optimizer.betas,
                           eps=config.optimizer.eps, weight_decay=config.optimizer.weight_decay)
    sampler = np.random.default_rng(run.seed)
    progress = {"step": 0, "tokens": 0, "wall_s": 0.0, "best_val_loss": math.inf, "loss_sum": 0.0, "loss_steps": 0}

    # Train and valid files must come from the run's tokenizer (when it has one) and from the same tokenizer.
    run_tokenizer = run_directory.tokenizer()
    fingerprint = run_tokenizer.fingerprint() if run_tokenizer else tokenizer_fingerprint_of(config.data.train)
    train_tokens = open_tokens(config.data.train, config.model.vocab_size, fingerprint)
    valid_tokens = open_tokens(config.data.valid, config.model.vocab_size, fingerprint)
    require_one_window(len(train_tokens), config.model.context_length)
    if resume:
        progress, sampler, restored = _restore(run_directory, resume_from, config, model, optimizer, fingerprint,
                                               device, dist)
        if progress["step"] >= run.steps:
            last = restored.get("valid_loss")
            _say(f"the run already finished: {progress['step']} of {run.steps} steps"
                 + (f", validation loss {last:.4f}" if isinstance(last, float) else "")
                 + "; nothing to do (to train longer, start a new run with more run.steps)" if dist.is_main else None)
            return TrainResult(run_dir, progress["step"], progress["tokens"], progress["wall_s"],
                               last if isinstance(last, float) else math.nan, "steps")

    wandb_run = start_wandb(run_dir, config.to_dict(), run.wandb_project) if run.wandb and dist.is_main else None
    log = MetricsLog(run_dir, wandb_run) if dist.is_main else None
    context = StepContext(config, torch.compile(model) if run.compile else model, optimizer,
                          ParameterGroups(model.named_parameters()), LOSS_FUNCTIONS[run.loss_impl], train_tokens,
                          micro_batch, dist, device)
    tokens_per_step = run.batch_size * config.model.context_length
    peak = run.peak_tflops * 1e12 or runtime.measure_matmul_peak(device, run.precision)
    flops_per_token = training_flops_per_token(config.model)
    valid_bytes_per_token = bytes_per_token(config.data.valid)

    def save(valid_loss: float | None = None) -> Path | None:
        is_best = valid_loss is not None and valid_loss < progress["best_val_loss"]
        if is_best:
            progress["best_val_loss"] = valid_loss
        if not dist.is_main:
            return None
        return run_directory.save_checkpoint({
            "iteration": progress["step"], "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "config": config.to_dict(), "rng": runtime.rng_states(), "data_state": sampler.bit_generator.state,
            "progress": dict(progress), "best_val_loss": progress["best_val_loss"], "valid_loss": valid_loss,
            "tokenizer_fingerprint": fingerprint,
        }, is_best=is_best, keep_last=run.keep_last)

    def validate() -> float:
        valid_loss = evaluate(context.forward, valid_tokens, config, device, dist)
        if log:
            log.write({"kind": "valid", "step": progress["step"], "tokens": progress["tokens"],
                       "wall_s": round(progress["wall_s"], 3), "loss": valid_loss,
                       "perplexity": perplexity(valid_loss),
                       "bits_per_byte": bits_per_byte(valid_loss, valid_bytes_per_token)})
        return valid_loss

    def progress_fields() -> dict:
        return {"step": progress["step"], "tokens": progress["tokens"], "wall_s": round(progress["wall_s"], 3)}

    model.train()
    stopped_by, valid_loss, last_saved_step = "steps", math.nan, progress["step"] if resume else -1
    interval_seconds, interval_steps = 0.0, 0  # throughput counts training steps only, not validation
    last_finite_loss = None
    try:
        with _StopSignal() as stop:
            while progress["step"] < run.steps:
                step_start = time.perf_counter()
                next_step = progress["step"] + 1
                measure = bool(run.stats_interval) and (next_step % run.stats_interval == 0 or next_step == 1)
                result = _optimizer_step(context, sampler, progress["step"], measure)
                if not math.isfinite(result.loss):
                    error = _diverged(context, run_directory, result, next_step, last_finite_loss)
                    if log:
                        log.write({"kind": "diverged", **progress_fields(), "loss": str(result.loss),
                                   "last_finite_loss": last_finite_loss, "largest_grad_norms":
                                   {name: value if math.isfinite(value) else str(value)
                                    for name, value in error.largest_grad_norms.items()}})
                    raise error
                last_finite_loss = result.loss
                step_seconds = time.perf_counter() - step_start  # the measurements below are not training time
                progress["step"] += 1
                progress["tokens"] += tokens_per_step
                progress["wall_s"] += step_seconds
                interval_seconds += step_seconds
                progress["loss_sum"] += result.loss
                progress["loss_steps"] += 1
                interval_steps += 1
                step = progress["step"]
                if measure and log:
                    log.write({"kind": "stats", **progress_fields(), "lr": learning_rate(config, step - 1),
                               **_measure_dynamics(context, model, result)})
                # Step 1 is always logged: the curve then starts near ln(vocab_size), where every model starts.
                if step % run.log_interval == 0 or step == run.steps or step == 1:
                    tokens_per_s = interval_steps * tokens_per_step / interval_seconds
                    if log:
                        log.write({"kind": "train", **progress_fields(),
                                   "loss": progress["loss_sum"] / progress["loss_steps"],
                                   "lr": learning_rate(config, step - 1), "grad_norm": result.grad_norm,
                                   "tokens_per_s": round(tokens_per_s, 1),
                                   "mfu": round(tokens_per_s * flops_per_token / peak, 4)})
                    progress["loss_sum"], progress["loss_steps"] = 0.0, 0
                    interval_seconds, interval_steps = 0.0, 0
                budget_spent = bool(run.time_budget_s) and progress["wall_s"] >= run.time_budget_s
                if budget_spent:
                    stopped_by = "time budget"
                    break
                if stop.received is not None:
                    save()
                    raise Interrupted(
                        f"stopped by {signal.Signals(stop.received).name} after step {step}; a checkpoint was saved. "
                        f"Continue with: cs336-train resume {run_dir}", stop.received)
                if run.eval_interval and step % run.eval_interval == 0 and step < run.steps:
                    save(validate())
                    last_saved_step = step
                elif run.checkpoint_interval and step % run.checkpoint_interval == 0:
                    save()
                    last_saved_step = step
            valid_loss = validate()
            if last_saved_step != progress["step"] or valid_loss < progress["best_val_loss"] and dist.is_main:
                save(valid_loss)
    except torch.OutOfMemoryError as error:
        raise TrainError(_out_of_memory_message(config, error)) from None
    except RuntimeError as error:
        if "out of memory" in str(error) or "can't allocate memory" in str(error):
            raise TrainError(_out_of_memory_message(config, error)) from None
        raise
    finally:
        if wandb_run is not None:
            wandb_run.finish()
        distributed.barrier()
    return TrainResult(run_dir, progress["step"], progress["tokens"], progress["wall_s"], valid_loss, stopped_by)


@dataclass
class StepContext:
    """What every optimizer step uses and no step changes."""

    config: TrainConfig
    forward: torch.nn.Module  # the model, or its torch.compile'd wrapper
    optimizer: torch.optim.Optimizer
    groups: ParameterGroups  # the trainable parameters, grouped for the instruments
    loss_fn: object
    train_tokens: np.ndarray
    micro_batch: int
    dist: distributed.Distributed
    device: torch.device
    parameters: list[torch.nn.Parameter] = field(init=False)  # every trainable one, for clipping and all-reduce

    def __post_init__(self):
        self.parameters = [parameter for group in self.groups.parameters for parameter in group]


@dataclass
class StepResult:
    loss: float  # mean training loss of the step's global batch
    grad_norm: float  # global gradient norm before clipping
    group_grad_norms: dict[str, float] | None = None  # per parameter group: on measured and on failed steps
    update_ratios: dict[str, float] | None = None  # per parameter group: on measured steps
    last_inputs: torch.Tensor | None = None  # the last micro-batch's inputs: on measured steps (for the probe)


def _optimizer_step(context: StepContext, sampler: np.random.Generator, step: int, measure: bool) -> StepResult:
    """One optimizer step over the whole global batch. With `measure`, also the instruments' per-group gradient
    norms (before clipping) and update ratios; a step whose loss is not finite leaves the weights untouched."""
    config, run = context.config, context.config.run
    for group in context.optimizer.param_groups:
        group["lr"] = learning_rate(config, step)
    # One draw of the global batch per step, identical on every rank: (accumulation, rank, sequence).
    starts = sample_window_starts(len(context.train_tokens), run.batch_size, config.model.context_length, sampler)
    starts = starts.reshape(run.grad_accum_steps, context.dist.world_size, context.micro_batch)[:, context.dist.rank]
    loss_total = torch.zeros((), device=context.device)
    for micro_starts in starts:
        inputs, targets = windows_at(context.train_tokens, micro_starts, config.model.context_length, context.device)
        with runtime.autocast(context.device, run.precision):
            logits = context.forward(inputs)
        loss = context.loss_fn(logits.float(), targets) / run.grad_accum_steps
        loss.backward()
        loss_total += loss.detach()
    step_loss = float(loss_total)
    parameters = context.parameters
    if context.dist.enabled:
        distributed.average_gradients(parameters, context.dist.world_size)
        step_loss = distributed.sum_across_ranks([step_loss], context.device)[0] / context.dist.world_size
    result = StepResult(step_loss, math.nan)
    if measure or not math.isfinite(step_loss):
        result.group_grad_norms = context.groups.gradient_norms()
    max_norm = config.optimizer.grad_clip or math.inf
    result.grad_norm = float(clip_gradients(parameters, max_norm))
    if math.isfinite(step_loss):
        before = context.groups.snapshot() if measure else None
        context.optimizer.step()
        if measure:
            result.update_ratios = context.groups.update_ratios(before)
            result.last_inputs = inputs
    context.optimizer.zero_grad(set_to_none=True)
    return result


def _measure_dynamics(context: StepContext, model: TransformerLM, result: StepResult, probe_sequences: int = 4) -> dict:
    """The instruments' record of one measured step (see instruments.py): norms, ratios and one probe pass."""
    config = context.config
    record = {"grad_norm": result.group_grad_norms, "weight_norm": context.groups.weight_norms(),
              "update_ratio": result.update_ratios}
    was_training = model.training
    model.eval()
    with ActivationProbe(model) as probe, torch.no_grad(), runtime.autocast(context.device, config.run.precision):
        model(result.last_inputs[:probe_sequences])
    model.train(was_training)
    record["activation_rms"], record["attention_entropy"] = probe.activation_rms, probe.attention_entropy
    return record


def _diverged(context: StepContext, run_directory: RunDirectory, result: StepResult, step: int,
              last_finite_loss: float | None) -> TrainingDiverged:
    """The report a learner needs when the loss turns nan or inf: where, from what, and which layers."""
    config = context.config
    steps_saved = run_directory.step_checkpoints()
    latest = str(steps_saved[-1]) if steps_saved else "none (none saved yet)"
    clipping = "" if config.optimizer.grad_clip else " or set optimizer.grad_clip (e.g. 1.0)"
    culprits = largest(result.group_grad_norms or {})
    error = TrainingDiverged(
        f"the training loss became {result.loss} at step {step} (the last finite loss was "
        f"{'none' if last_finite_loss is None else f'{last_finite_loss:.4f}'}; largest gradient norms: "
        f"{', '.join(f'{name} {value:.3g}' for name, value in culprits.items()) or 'none'}); the weights were not "
        f"updated and the last good checkpoint is {latest}. Lower optimizer.lr ({config.optimizer.lr:g}), raise "
        f"optimizer.warmup_fraction{clipping}"
    )
    error.step, error.last_finite_loss, error.largest_grad_norms = step, last_finite_loss, culprits
    return error


def _restore(run_directory: RunDirectory, which: str | Path | None, config: TrainConfig, model, optimizer,
             fingerprint: str | None, device: torch.device, dist: distributed.Distributed):
    """Load the chosen checkpoint into model and optimizer; returns (progress, sampler, the checkpoint dict)."""
    path = run_directory.choose(which)
    try:
        state = read_checkpoint(path, map_location=device)
    except CheckpointError as error:
        alternative = run_directory.newest_good_alternative(path)
        hint = (f"; the newest intact one is {alternative.name}: `cs336-train resume {run_directory.path} --from "
                f"{'best' if alternative.name == 'best.pt' else int(alternative.stem.split('_')[1])}`"
                if alternative else "")
        raise CheckpointError(f"{error}{hint}") from None
    for key, meaning in RESUME_KEYS.items():
        if key not in state:
            raise CheckpointError(
                f"checkpoint {str(path)!r} has no {key!r} entry ({meaning}), so the run cannot continue exactly; "
                "it was written by the course hook save_checkpoint or edited. Resume from another checkpoint "
                "(--from STEP) or start a new run"
            )
    differences = [line for line in config_differences(state["config"], config.to_dict())
                   if not any(line.startswith(f"run.{key}:") for key in RESUMABLE_OVERRIDES)]
    if differences:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was trained with a different configuration: {'; '.join(differences)}. "
            "Resume with the run's own config.toml, or start a new run"
        )
    stored = state.get("tokenizer_fingerprint")
    if fingerprint is not None and stored not in (None, fingerprint) and \
            run_directory.current_fingerprint(stored) != fingerprint:
        raise CheckpointError(f"checkpoint {str(path)!r} was trained with another tokenizer than the run's")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        runtime.restore_rng_states(state["rng"])
        sampler = np.random.default_rng()
        sampler.bit_generator.state = state["data_state"]
        progress = dict(state["progress"])
        missing = {"step", "tokens", "wall_s", "best_val_loss", "loss_sum", "loss_steps"} - set(progress)
        if missing:
            raise KeyError(f"progress has no {sorted(missing)}")
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} holds a malformed training state ({first_line}); resume "
                              "from another checkpoint (--from STEP)") from None
    if dist.is_main:
        if which is not None:
            moved = run_directory.set_aside_checkpoints_after(progress["step"])
            _say(f"moved {len(moved)} later checkpoint(s) to {moved[0].parent}: this run continues from step "
                 f"{progress['step']} instead" if moved else None)
        _say(f"resuming from {path.name}: step {progress['step']:,}, {progress['tokens']:,} tokens, "
             f"{progress['wall_s']:.1f} s of training so far")
    return progress, sampler, state


def _out_of_memory_message(config: TrainConfig, error: Exception) -> str:
    run = config.run
    return (
        f"out of memory ({str(error).splitlines()[0][:200]}). Lower the memory one step needs: halve "
        f"run.batch_size ({run.batch_size}) and double run.grad_accum_steps ({run.grad_accum_steps}) to keep the same "
        f"batch, or use run.precision=bf16, a shorter model.context_length ({config.model.context_length}) or a "
        f"smaller model.d_model ({config.model.d_model}). `cs336-train account` shows the memory a config needs"
    )
