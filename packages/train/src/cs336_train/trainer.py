"""The training loop (handout §5.3): one orchestrating function, `train`, and the few pieces it plugs together.

Each optimizer step:
    1. the learning rate from the schedule (a function of the step number, or of the clock with a time budget)
    2. for each of grad_accum_steps micro-batches: forward, loss / grad_accum_steps, backward
    3. average gradients across processes (data-parallel runs only)
    4. clip the global gradient norm; note on the device whether the loss and the norm are finite
    5. optimizer step (a no-op from the first non-finite step on); every log_interval steps a metrics line, every
       eval_interval a validation, every checkpoint_interval a checkpoint; stop early on SIGINT/SIGTERM or when
       the time budget is spent

A step reads nothing back from the device: on a GPU every read makes the host wait until the device has finished
all the work queued so far, so the host could no longer queue the next step while the device computes this one.
The step's loss and gradient norm stay device tensors; numbers are read only at "read points": log lines,
instrument records, validations, checkpoints, a stop signal, the time budget and the end. That is also where a
divergence is noticed (DivergenceWatch), and the report names the step where it began.

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
from cs336_optim import cosine_schedule, gradient_norms, make_adamw, parameter_groups, scale_to_norm_, wsd_schedule
from cs336_train import distributed, runtime
from cs336_train.checkpoint import config_differences, read_checkpoint
from cs336_train.config import TrainConfig
from cs336_train.console import TrainingConsole
from cs336_train.data import (
    TrainingBatches,
    bytes_per_token,
    open_tokens,
    require_one_window,
    tokenizer_fingerprint_of,
    validation_batches,
)
from cs336_train.errors import CheckpointError, ConfigError, DataError, Interrupted, TrainError, TrainingDiverged
from cs336_train.instruments import ActivationProbe, Divergence, DivergenceWatch, ParameterGroups, largest
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
                       "checkpoint_interval", "keep_last", "num_threads", "compile", "peak_tflops", "stats_interval",
                       "activation_checkpointing"}


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    tokens: int
    wall_s: float
    valid_loss: float
    stopped_by: str  # "steps", "time budget"


def learning_rate(config: TrainConfig, step: int, elapsed_s: float = 0.0) -> float:
    """The rate of `optimizer.schedule` for a step taken after `step` steps and `elapsed_s` training seconds.

    The schedule's horizon is run.steps, or, when run.time_budget_s is set, the budget: the schedule then runs on
    training seconds (progress = elapsed_s / time_budget_s), so a run stopped by its budget has just reached the
    minimum rate, however many steps fitted. Warm-up and decay lengths are fractions of the horizon.
    """
    opt, run = config.optimizer, config.run
    if run.time_budget_s:
        position, horizon = elapsed_s, run.time_budget_s
        warmup, decay = opt.warmup_fraction * horizon, opt.decay_fraction * horizon
    else:
        position, horizon = step, run.steps
        warmup, decay = round(opt.warmup_fraction * horizon), max(1, round(opt.decay_fraction * horizon))
    min_lr = opt.lr * opt.min_lr_ratio
    if opt.schedule == "cosine":
        return cosine_schedule(position, opt.lr, min_lr, warmup, horizon)
    if opt.schedule == "wsd":
        return wsd_schedule(position, opt.lr, min_lr, warmup, horizon, decay)
    return opt.lr * min(1.0, position / warmup) if warmup else opt.lr


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
    # Summed on the device and read once at the end: a read per batch would make the host wait for each one.
    # In float64 (as a Python sum would be), except on MPS, which has no float64.
    loss_sum = torch.zeros((), dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
    count = 0
    with torch.no_grad(), runtime.autocast(device, config.run.precision):
        batches = validation_batches(tokens, config.model.context_length, config.run.valid_batch_size, device)
        for index, (inputs, targets) in enumerate(batches):
            if index % dist.world_size != dist.rank:
                continue
            logits = model(inputs)
            loss_sum += loss_fn(logits.float(), targets).to(loss_sum.dtype) * targets.numel()
            count += targets.numel()
    model.train(was_training)
    loss_sum, count = distributed.sum_across_ranks([float(loss_sum), float(count)], device)
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
    model.activation_checkpointing = run.activation_checkpointing  # recompute in backward: same numbers, less memory
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
    compile_backend, compile_note = runtime.compile_plan(run.compile, device)
    _say(compile_note if dist.is_main else None)
    # The console: a progress bar on a terminal, plain lines otherwise (console.py); records reach it through the log.
    console = TrainingConsole(run.steps, progress["step"], progress["wall_s"], run.time_budget_s) \
        if dist.is_main else None
    log = MetricsLog(run_dir, wandb_run, console) if dist.is_main else None
    groups = ParameterGroups(model.named_parameters())
    forward = runtime.compile_model(model, compile_backend) if compile_backend else model
    context = StepContext(config, forward, optimizer, groups, LOSS_FUNCTIONS[run.loss_impl], dist, device,
                          DivergenceWatch(device, sum(len(group) for group in groups.parameters)))
    # On CUDA the next step's windows are prepared while the GPU computes this one; the draw order is the same.
    batches = TrainingBatches(train_tokens, run.batch_size, config.model.context_length, sampler, device,
                              run.grad_accum_steps, dist.world_size, dist.rank)
    tokens_per_step = run.batch_size * config.model.context_length
    peak = run.peak_tflops * 1e12 or runtime.measure_matmul_peak(device, run.precision)
    flops_per_token = training_flops_per_token(config.model)
    valid_bytes_per_token = bytes_per_token(config.data.valid)
    # The running loss sum of the current log interval, on the device: adding a step's loss to it waits for nothing.
    interval_loss = torch.tensor(float(progress["loss_sum"]), device=device)

    def raise_if_diverged() -> None:
        """At a read point: stop with the report if a step since the last one was not finite."""
        divergence = context.watch.first_divergence()
        if divergence is None:
            return
        error = _diverged(context, run_directory, divergence)
        if log:
            before = divergence.step - 1  # the record describes the run as it stands: after the last good step
            log.write({"kind": "diverged", "step": before, "tokens": before * tokens_per_step,
                       "wall_s": round(divergence.wall_s, 3), "loss": _json_number(divergence.loss),
                       "grad_norm": _json_number(divergence.grad_norm),
                       "last_finite_loss": divergence.last_finite_loss,
                       "largest_grad_norms": {name: _json_number(value)
                                              for name, value in error.largest_grad_norms.items()}})
        raise error

    def save(valid_loss: float | None = None) -> Path | None:
        raise_if_diverged()  # never a checkpoint of weights that saw a non-finite step
        is_best = valid_loss is not None and valid_loss < progress["best_val_loss"]
        if is_best:
            progress["best_val_loss"] = valid_loss
        if not dist.is_main:
            return None
        progress["loss_sum"] = float(interval_loss)
        optimizer_state = optimizer.state_dict()
        for group in optimizer_state["param_groups"]:  # the rate as a number, as checkpoints have always held it
            group["lr"] = float(group["lr"])
        return run_directory.save_checkpoint({
            "iteration": progress["step"], "model": model.state_dict(), "optimizer": optimizer_state,
            "config": config.to_dict(), "rng": runtime.rng_states(), "data_state": batches.sampler_state(),
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

    if console:
        console.say(f"training {run.steps - progress['step']:,} steps of {tokens_per_step:,} tokens on {device} "
                    f"({run.precision}{', compiled' if compile_backend else ''}); the first step includes warm-up")
    model.train()
    stopped_by, valid_loss, last_saved_step = "steps", math.nan, progress["step"] if resume else -1
    interval_seconds, interval_steps = 0.0, 0  # throughput counts training steps only, not validation
    try:
        with _StopSignal() as stop:
            while progress["step"] < run.steps:
                step_start = time.perf_counter()
                step = progress["step"] + 1
                measure = bool(run.stats_interval) and (step % run.stats_interval == 0 or step == 1)
                # Step 1 is always logged: the curve then starts near ln(vocab_size), where every model starts.
                logs = step % run.log_interval == 0 or step == run.steps or step == 1
                validates = bool(run.eval_interval) and step % run.eval_interval == 0 and step < run.steps
                checkpoints = bool(run.checkpoint_interval) and step % run.checkpoint_interval == 0
                lr = learning_rate(config, step - 1, progress["wall_s"])
                result = _optimizer_step(context, batches.next_step(), step, lr, progress["wall_s"], measure)
                interval_loss += result.loss

                budget_may_be_spent = bool(run.time_budget_s) and (
                    progress["wall_s"] + time.perf_counter() - step_start >= run.time_budget_s)
                console_gone = console is not None and console.broken  # e.g. `| head` has read its lines
                reads = (logs or measure or validates or checkpoints or budget_may_be_spent
                         or stop.received is not None or console_gone)
                if reads:
                    runtime.synchronize(device)  # the work queued for this step is training time: wait for it here
                step_seconds = time.perf_counter() - step_start  # the measurements below are not training time
                progress["step"] = step
                progress["tokens"] += tokens_per_step
                progress["loss_steps"] += 1
                # With a time budget the clock sets the learning rate and the end: every rank must use the same one.
                wall_s = progress["wall_s"] + step_seconds
                progress["wall_s"] = distributed.main_rank_value(wall_s) if run.time_budget_s else wall_s
                interval_seconds += step_seconds
                interval_steps += 1
                budget_spent = bool(run.time_budget_s) and progress["wall_s"] >= run.time_budget_s
                if console:
                    console.advance(step, progress["wall_s"])  # host counters only: drawing waits for nothing
                if not (reads or budget_spent):
                    continue  # nothing is read back between read points

                raise_if_diverged()
                if measure and log:
                    log.write({"kind": "stats", **progress_fields(), "lr": result.lr,
                               **_measure_dynamics(context, model, result)})
                if logs:
                    tokens_per_s = interval_steps * tokens_per_step / interval_seconds
                    if log:
                        log.write({"kind": "train", **progress_fields(),
                                   "loss": float(interval_loss) / progress["loss_steps"],
                                   "lr": result.lr, "grad_norm": float(result.grad_norm),
                                   "tokens_per_s": round(tokens_per_s, 1),
                                   "mfu": round(tokens_per_s * flops_per_token / peak, 4)})
                    interval_loss.zero_()
                    progress["loss_sum"], progress["loss_steps"] = 0.0, 0
                    interval_seconds, interval_steps = 0.0, 0
                if budget_spent:
                    stopped_by = "time budget"
                    break
                if stop.received is None and console_gone:
                    # The reader of our output went away: stop as Unix tools do on SIGPIPE, but keep the work.
                    stop.received = signal.SIGPIPE
                if stop.received is not None:
                    save()
                    raise Interrupted(
                        f"stopped by {signal.Signals(stop.received).name} after step {step}; a checkpoint was saved. "
                        f"Continue with: cs336-train resume {run_dir}", stop.received)
                if validates:
                    save(validate())
                    last_saved_step = step
                elif checkpoints:
                    save()
                    last_saved_step = step
            raise_if_diverged()
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
        if console:
            console.close()
        if wandb_run is not None:
            wandb_run.finish()
        distributed.barrier()
    return TrainResult(run_dir, progress["step"], progress["tokens"], progress["wall_s"], valid_loss, stopped_by)


def _json_number(value: float) -> float | str:
    """A float for metrics.jsonl: JSON has no nan or inf, so those are written as the strings "nan", "inf"."""
    return value if math.isfinite(value) else str(value)


@dataclass
class StepContext:
    """What every optimizer step uses and no step changes (the watch's device tensors excepted)."""

    config: TrainConfig
    forward: torch.nn.Module  # the model, or its torch.compile'd wrapper
    optimizer: torch.optim.Optimizer
    groups: ParameterGroups  # the trainable parameters, grouped for the instruments
    loss_fn: object
    dist: distributed.Distributed
    device: torch.device
    watch: DivergenceWatch  # notices the first non-finite step, on the device
    parameters: list[torch.nn.Parameter] = field(init=False)  # every trainable one, in the groups' order

    def __post_init__(self):
        self.parameters = [parameter for group in self.groups.parameters for parameter in group]


@dataclass
class StepResult:
    loss: torch.Tensor  # mean training loss of the step's global batch (a device scalar: reading it waits)
    grad_norm: torch.Tensor  # global gradient norm before clipping (a device scalar)
    lr: float  # the schedule's rate for the step (the optimizer used 0 if the step was not finite)
    group_grad_norms: dict[str, float] | None = None  # per parameter group: on measured steps
    update_ratios: dict[str, float] | None = None  # per parameter group: on measured steps
    last_inputs: torch.Tensor | None = None  # the last micro-batch's inputs: on measured steps (for the probe)


def _optimizer_step(context: StepContext, micro_batches: list[tuple[torch.Tensor, torch.Tensor]], step: int,
                    lr: float, wall_s: float, measure: bool) -> StepResult:
    """Optimizer step number `step` over the whole global batch, queued on the device without reading anything
    back, except with `measure`: then also the instruments' per-group gradient norms (before clipping) and
    update ratios. From the first step whose loss or gradient norm is not finite on, the weights are left
    untouched (`context.watch`)."""
    config, run = context.config, context.config.run
    loss_total = torch.zeros((), device=context.device)
    for inputs, targets in micro_batches:
        with runtime.autocast(context.device, run.precision):
            logits = context.forward(inputs)
        loss = context.loss_fn(logits.float(), targets) / run.grad_accum_steps
        loss.backward()
        loss_total += loss.detach()
    if context.dist.enabled:
        distributed.average_gradients(context.parameters, context.dist.world_size)
        loss_total = distributed.average_across_ranks(loss_total, context.dist.world_size)
    gradients = [parameter.grad for parameter in context.parameters if parameter.grad is not None]
    grad_norm, parameter_grad_norms = gradient_norms(gradients)
    result = StepResult(loss_total, grad_norm, lr)
    if measure:
        result.group_grad_norms = context.groups.gradient_norms()
    context.watch.observe(step, wall_s, loss_total, grad_norm, parameter_grad_norms)
    if config.optimizer.grad_clip:
        scale_to_norm_(gradients, grad_norm, config.optimizer.grad_clip)
    for gradient in gradients:  # a bad step's nan/inf must not reach AdamW's moments (its rate is 0 anyway)
        gradient.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    rate = context.watch.gate(lr)  # lr, or 0 once a step was not finite: decided on the device
    for group in context.optimizer.param_groups:
        group["lr"] = rate
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


def _diverged(context: StepContext, run_directory: RunDirectory, divergence: Divergence) -> TrainingDiverged:
    """The report a learner needs when the loss turns nan or inf: where, from what, and which layers."""
    config = context.config
    steps_saved = run_directory.step_checkpoints()
    latest = str(steps_saved[-1]) if steps_saved else "none (none saved yet)"
    clipping = "" if config.optimizer.grad_clip else " or set optimizer.grad_clip (e.g. 1.0)"
    norms = divergence.parameter_grad_norms
    culprits = largest(context.groups.combine(norms) if len(norms) == len(context.parameters) else {})
    last = divergence.last_finite_loss
    # Both wordings start "the training loss became X at step N": the sweep finds the step by that phrase.
    what = (f"became {divergence.loss} at step {divergence.step}" if not math.isfinite(divergence.loss) else
            f"became unusable at step {divergence.step}: its gradient norm was {divergence.grad_norm}")
    error = TrainingDiverged(
        f"the training loss {what} (the last finite loss was {'none' if last is None else f'{last:.4f}'}; "
        f"largest gradient norms: "
        f"{', '.join(f'{name} {value:.3g}' for name, value in culprits.items()) or 'none'}); the weights are those "
        f"from before that step and the last good checkpoint is {latest}. Lower optimizer.lr "
        f"({config.optimizer.lr:g}), raise optimizer.warmup_fraction{clipping}"
    )
    error.step, error.last_finite_loss, error.largest_grad_norms = divergence.step, last, culprits
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
