"""The training loop (handout §5.3): `train` reads top to bottom as the handout's loop, one piece per part of it.

    set up       a seeded model, AdamW and data sampler; to resume, as a checkpoint left them
    each step    plan it: its learning rate and its read points              step_plan.py, schedule.py
                 forward, backward, clip, AdamW                              optimizer_step.py
                 at a read point: stop if a step was not finite              divergence.py
                                  log lines and the instruments' records     training_log.py
                                  validate                                   evaluation.py
                                  checkpoint; on Ctrl-C/SIGTERM, then stop   checkpointing.py, stop_signal.py
    the end      when run.steps are done or the time budget is spent: a last validation and checkpoint

What changes as the run trains (weights, optimizer moments, data sampler, counters) is one `TrainingState`
(training_state.py), and every checkpoint holds all of it, so a resumed run continues exactly.

A step reads nothing back from the device: on a GPU every read makes the host wait until the device has finished
all the work queued so far, so the host could no longer queue the next step while the device computes this one.
The step's loss and gradient norm stay device tensors; numbers are read only at read points (step_plan.py). That
is also where a divergence is noticed, and the report names the step where it began.
"""

import contextlib
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch

from cs336_nn import TransformerLM, loss_function
from cs336_optim import make_adamw, parameter_groups
from cs336_train import distributed, runtime
from cs336_train.checkpointing import prepare_run_directory, restore_training_state, save_training_state
from cs336_train.config import RunConfig, TrainConfig
from cs336_train.data import TrainingBatches, open_tokens, require_one_window, tokenizer_fingerprint_of
from cs336_train.divergence import DivergenceWatch, divergence_report
from cs336_train.errors import ConfigError, Interrupted, TrainError
from cs336_train.evaluation import evaluate
from cs336_train.instruments import ParameterGroups
from cs336_train.optimizer_step import StepContext, StepResult, measure_dynamics, optimizer_step
from cs336_train.run_directory import CONFIG_FILE, RunDirectory
from cs336_train.step_plan import StepPlan, plan_step
from cs336_train.stop_signal import StopSignal
from cs336_train.training_log import TrainingLog
from cs336_train.training_state import Progress, TrainingState


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    tokens: int
    wall_s: float
    valid_loss: float
    stopped_by: str  # "steps", "time budget"


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


def _train(config: TrainConfig, run_directory: RunDirectory, dist: distributed.Distributed, device: torch.device,
           resume: bool, resume_from: str | Path | None) -> TrainResult:
    """Set the run up (new, or restored from a checkpoint), then train it to the end."""
    run = config.run
    runtime.configure_backends(device, run.num_threads, run.deterministic)
    _check_batch_split(run, dist)
    if resume and resume_from is None and not run_directory.has_checkpoints():
        # Killed before its first checkpoint was complete: nothing was saved, so continuing means starting over.
        if dist.is_main:
            _say(f"{str(run_directory.path)!r} has no checkpoint yet (its first save never completed); starting it "
                 f"from step 0 with its saved {CONFIG_FILE}")
        resume = False
    if not resume and dist.is_main:
        prepare_run_directory(config, run_directory)
    distributed.barrier()

    # What the loop changes: at step 0, or as the checkpoint left it.
    train_tokens, valid_tokens, fingerprint = _open_token_files(config, run_directory)
    state = _initial_state(config, train_tokens, device, dist)
    if resume:
        checkpoint = _resume(state, run_directory, resume_from, config, fingerprint, device, dist)
        budget_spent = bool(run.time_budget_s) and state.progress.wall_s >= run.time_budget_s
        if state.progress.step >= run.steps or budget_spent:
            return _already_finished(state.progress, run, checkpoint, run_directory, dist, budget_spent)

    # What every step uses and none changes, and where the run reports.
    compile_backend, compile_note = runtime.compile_plan(run.compile, device)
    _say(compile_note if dist.is_main else None)
    groups = ParameterGroups(state.model.named_parameters())
    forward = runtime.compile_model(state.model, compile_backend) if compile_backend else state.model
    context = StepContext(config, forward, state.optimizer, groups, loss_function(run.loss_impl), dist, device,
                          DivergenceWatch(device, sum(len(group) for group in groups.parameters)))
    peak_flops = run.peak_tflops * 1e12 or runtime.measure_matmul_peak(device, run.precision)
    log = TrainingLog.start(config, run_directory.path, state.progress, dist.is_main, peak_flops)
    loop = _Loop(config, run_directory, state, context, valid_tokens, fingerprint, log)
    log.say(f"training {run.steps - state.progress.step:,} steps of {loop.tokens_per_step:,} tokens on {device} "
            f"({run.precision}{', compiled' if compile_backend else ''}); the first step includes warm-up")
    state.model.train()
    try:
        # Ctrl-C and SIGTERM are remembered from here on, not raised: the loop saves a checkpoint, then stops.
        with StopSignal() as stop:
            stopped_by = loop.run_steps(stop)
            valid_loss = loop.finish()
    except torch.OutOfMemoryError as error:
        raise TrainError(_out_of_memory_message(config, error)) from None
    except RuntimeError as error:
        if "out of memory" in str(error) or "can't allocate memory" in str(error):
            raise TrainError(_out_of_memory_message(config, error)) from None
        raise
    finally:
        log.close()
        distributed.barrier()
    progress = state.progress
    return TrainResult(run_directory.path, progress.step, progress.tokens, progress.wall_s, valid_loss, stopped_by)


class _Loop:
    """The loop and what it does at read points, over the pieces `_train` set up once."""

    def __init__(self, config: TrainConfig, run_directory: RunDirectory, state: TrainingState, context: StepContext,
                 valid_tokens: np.ndarray, tokenizer_fingerprint: str | None, log: TrainingLog):
        self.config, self.run_directory, self.state, self.context = config, run_directory, state, context
        self.valid_tokens, self.tokenizer_fingerprint, self.log = valid_tokens, tokenizer_fingerprint, log
        self.tokens_per_step = config.run.batch_size * config.model.context_length

    def run_steps(self, stop: StopSignal) -> str:
        """Optimizer steps until run.steps or the time budget (returns which of the two stopped them), or until
        `stop` receives a signal (Interrupted, after a checkpoint)."""
        run, state, progress = self.config.run, self.state, self.state.progress
        while progress.step < run.steps:
            step_start = time.perf_counter()
            plan = plan_step(self.config, progress)
            result = optimizer_step(self.context, plan, state.batches.next_step())
            state.interval_loss += result.loss

            budget_may_be_spent = bool(run.time_budget_s) and (
                progress.wall_s + time.perf_counter() - step_start >= run.time_budget_s)
            output_closed = self.log.output_closed  # e.g. `| head` has read its lines
            reads = plan.reads.any or budget_may_be_spent or stop.received is not None or output_closed
            if reads:
                runtime.synchronize(self.context.device)  # this step's queued work is training time: wait here
            step_seconds = time.perf_counter() - step_start  # the measurements below are not training time
            progress.count_step(self.tokens_per_step, step_seconds)
            if run.time_budget_s:  # the clock then sets the learning rate and the end: one clock for all ranks
                progress.wall_s = distributed.main_rank_value(progress.wall_s)
            self.log.count_step(progress, step_seconds)  # host counters only: drawing waits for nothing
            budget_spent = bool(run.time_budget_s) and progress.wall_s >= run.time_budget_s
            if not (reads or budget_spent):
                continue  # nothing is read back between read points

            self._report(plan, result)
            if budget_spent:
                return "time budget"  # `finish` validates and saves
            self._save_or_stop(plan, stop, output_closed)
        return "steps"

    def finish(self) -> float:
        """After the last step: validate and save the final checkpoint (the last step is never a planned
        checkpoint, see step_plan.read_points). Returns the validation loss."""
        self._raise_if_diverged()
        valid_loss = self._validate()
        self._save(valid_loss)
        return valid_loss

    def _report(self, plan: StepPlan, result: StepResult) -> None:
        """The first part of a read point: stop if a step was not finite, else the records planned for the step."""
        state, progress = self.state, self.state.progress
        self._raise_if_diverged()
        if plan.reads.measures and self.log.writes:
            self.log.dynamics(progress, result, measure_dynamics(self.context, state.model, result))
        if plan.reads.logs:
            self.log.training(progress, state.interval_loss, result)
            state.start_log_interval()

    def _save_or_stop(self, plan: StepPlan, stop: StopSignal, output_closed: bool) -> None:
        """The rest of a read point: a stop signal saves a checkpoint and ends the run (Interrupted); otherwise
        the validation or checkpoint planned for the step."""
        if stop.received is None and output_closed:
            # The reader of our output went away: stop as Unix tools do on SIGPIPE, but keep the work.
            stop.received = signal.SIGPIPE
        if stop.received is not None:
            self._save()
            raise Interrupted(
                f"stopped by {signal.Signals(stop.received).name} after step {self.state.progress.step}; a "
                f"checkpoint was saved. Continue with: cs336-train resume {self.run_directory.path}", stop.received)
        if plan.reads.validates:
            self._save(self._validate())  # its checkpoint becomes best.pt if the loss is the lowest so far
        elif plan.reads.checkpoints:
            self._save()

    def _validate(self) -> float:
        context = self.context
        valid_loss = evaluate(context.forward, self.valid_tokens, self.config, context.device, context.dist)
        self.log.validation(self.state.progress, valid_loss)
        return valid_loss

    def _save(self, valid_loss: float | None = None) -> None:
        """A checkpoint of the state now, written by the main process (the others only keep count)."""
        self._raise_if_diverged()  # never a checkpoint of weights that saw a non-finite step
        is_best = self.state.progress.record_validation(valid_loss)
        if self.context.dist.is_main:
            save_training_state(self.run_directory, self.state, self.config, self.tokenizer_fingerprint,
                                valid_loss, is_best)

    def _raise_if_diverged(self) -> None:
        """At a read point: stop with the report if a step since the last one was not finite."""
        divergence = self.context.watch.first_divergence()
        if divergence is not None:
            report = divergence_report(divergence, self.config, self.context.groups, self.run_directory)
            self.log.divergence(divergence, report)
            raise report


def _check_batch_split(run: RunConfig, dist: distributed.Distributed) -> None:
    """The global batch must split evenly into grad_accum_steps micro-batches on each process."""
    micro_batch, remainder = divmod(run.batch_size, run.grad_accum_steps * dist.world_size)
    if remainder or micro_batch == 0:
        raise ConfigError(
            f"run.batch_size {run.batch_size} must be a multiple of run.grad_accum_steps × processes = "
            f"{run.grad_accum_steps} × {dist.world_size}"
        )


def _open_token_files(config: TrainConfig, run_directory: RunDirectory) -> tuple[np.ndarray, np.ndarray, str]:
    """(training tokens, validation tokens, tokenizer fingerprint): both files must come from the run's tokenizer
    (when it has one), and from the same tokenizer."""
    run_tokenizer = run_directory.tokenizer()
    fingerprint = run_tokenizer.fingerprint() if run_tokenizer else tokenizer_fingerprint_of(config.data.train)
    train_tokens = open_tokens(config.data.train, config.model.vocab_size, fingerprint)
    valid_tokens = open_tokens(config.data.valid, config.model.vocab_size, fingerprint)
    require_one_window(len(train_tokens), config.model.context_length)
    return train_tokens, valid_tokens, fingerprint


def _initial_state(config: TrainConfig, train_tokens: np.ndarray, device: torch.device,
                   dist: distributed.Distributed) -> TrainingState:
    """Step 0: the seeded initial weights, a fresh AdamW, the data sampler at its seed, the counters at zero."""
    run = config.run
    # The same seed on every rank: identical initial weights, and the same global batch of window starts, of which
    # each rank takes its own share.
    runtime.seed_everything(run.seed)
    model = TransformerLM(config.model, device=device)
    model.activation_checkpointing = run.activation_checkpointing  # recompute in backward: same numbers, less memory
    optimizer = make_adamw(parameter_groups(model.named_parameters(), config.optimizer.weight_decay),
                           impl=config.optimizer.impl, lr=config.optimizer.lr, betas=config.optimizer.betas,
                           eps=config.optimizer.eps, weight_decay=config.optimizer.weight_decay)
    # On CUDA the next step's windows are prepared while the GPU computes this one; the draw order is the same.
    batches = TrainingBatches(train_tokens, run.batch_size, config.model.context_length,
                              np.random.default_rng(run.seed), device, run.grad_accum_steps, dist.world_size,
                              dist.rank)
    return TrainingState(model, optimizer, batches, Progress(), torch.zeros((), device=device))


def _resume(state: TrainingState, run_directory: RunDirectory, which: str | Path | None, config: TrainConfig,
            fingerprint: str | None, device: torch.device, dist: distributed.Distributed) -> dict:
    """Restore `state` from the chosen checkpoint and say so; returns the checkpoint's dict."""
    path, checkpoint = restore_training_state(state, run_directory, which, config, fingerprint, device)
    progress = state.progress
    if dist.is_main:
        if which is not None:
            moved = run_directory.set_aside_checkpoints_after(progress.step)
            _say(f"moved {len(moved)} later checkpoint(s) to {moved[0].parent}: this run continues from step "
                 f"{progress.step} instead" if moved else None)
        _say(f"resuming from {path.name}: step {progress.step:,}, {progress.tokens:,} tokens, "
             f"{progress.wall_s:.1f} s of training so far")
    return checkpoint


def _already_finished(progress: Progress, run: RunConfig, checkpoint: dict, run_directory: RunDirectory,
                      dist: distributed.Distributed, budget_spent: bool = False) -> TrainResult:
    """A resume of a run that has done all its steps, or spent its time budget: nothing to train, the result as
    it was."""
    last = checkpoint.get("valid_loss")
    done = (f"its {run.time_budget_s:g} s time budget is spent ({progress.step} steps)" if budget_spent
            else f"{progress.step} of {run.steps} steps")
    more = "run.time_budget_s" if budget_spent else "run.steps"
    _say(f"the run already finished: {done}" + (f", validation loss {last:.4f}" if isinstance(last, float) else "")
         + f"; nothing to do (to train longer, start a new run with more {more})" if dist.is_main else None)
    return TrainResult(run_directory.path, progress.step, progress.tokens, progress.wall_s,
                       last if isinstance(last, float) else math.nan, "time budget" if budget_spent else "steps")


def _say(note: str | None) -> None:
    if note:
        click.echo(f"cs336-train: {note}", err=True)


def _out_of_memory_message(config: TrainConfig, error: Exception) -> str:
    run = config.run
    return (
        f"out of memory ({str(error).splitlines()[0][:200]}). Lower the memory one step needs: halve "
        f"run.batch_size ({run.batch_size}) and double run.grad_accum_steps ({run.grad_accum_steps}) to keep the same "
        f"batch, or use run.precision=bf16, a shorter model.context_length ({config.model.context_length}) or a "
        f"smaller model.d_model ({config.model.d_model}). `cs336-train account` shows the memory a config needs"
    )
