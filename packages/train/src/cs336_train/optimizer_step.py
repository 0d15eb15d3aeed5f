"""One optimizer step over the global batch (handout §5.3), queued on the device without reading anything back.

    1. for each of grad_accum_steps micro-batches: forward, loss / grad_accum_steps, backward
    2. average the gradients across processes (data-parallel runs only)
    3. the global gradient norm; the NaN guard notes on the device whether the loss and the norm are finite
    4. clip the gradients to optimizer.grad_clip
    5. AdamW at the planned learning rate (a device 0 from the first non-finite step on: divergence.py)

A measured step (run.stats_interval) also takes the instruments' numbers (instruments.py): the per-group
gradient norms before clipping, the update ratios of the AdamW step, and afterwards one probe forward pass
(`measure_dynamics`).
"""

from dataclasses import dataclass, field

import torch

from cs336_nn import TransformerLM
from cs336_optim import gradient_norms, scale_to_norm_
from cs336_train import distributed, runtime
from cs336_train.config import TrainConfig
from cs336_train.divergence import DivergenceWatch
from cs336_train.instruments import ActivationProbe, ParameterGroups
from cs336_train.step_plan import StepPlan


@dataclass
class StepContext:
    """What every optimizer step uses and no step changes (the watch's device tensors excepted)."""

    config: TrainConfig
    forward: torch.nn.Module  # the model, or its torch.compile'd wrapper
    optimizer: torch.optim.Optimizer
    groups: ParameterGroups  # the trainable parameters, grouped for the instruments
    loss_fn: object  # (logits, targets) -> mean loss: cs336_nn.loss_function(run.loss_impl)
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


def optimizer_step(context: StepContext, plan: StepPlan,
                   micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> StepResult:
    """Optimizer step `plan.step` over the global batch (one (inputs, targets) pair per micro-batch).

    Nothing is read back from the device, except on a measured step (`plan.reads.measures`), which also takes
    the instruments' per-group gradient norms (before clipping) and update ratios. From the first step whose loss
    or gradient norm is not finite on, the weights are left untouched (`context.watch`).
    """
    run, measure = context.config.run, plan.reads.measures
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
    result = StepResult(loss_total, grad_norm, plan.lr)
    if measure:
        result.group_grad_norms = context.groups.gradient_norms()
    context.watch.observe(plan.step, plan.started_at_s, loss_total, grad_norm, parameter_grad_norms)
    if context.config.optimizer.grad_clip:
        scale_to_norm_(gradients, grad_norm, context.config.optimizer.grad_clip)
    for gradient in gradients:  # a bad step's nan/inf must not reach AdamW's moments (its rate is 0 anyway)
        gradient.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    rate = context.watch.gate(plan.lr)  # lr, or 0 once a step was not finite: decided on the device
    for group in context.optimizer.param_groups:
        group["lr"] = rate
    before = context.groups.snapshot() if measure else None
    context.optimizer.step()
    if measure:
        result.update_ratios = context.groups.update_ratios(before)
        result.last_inputs = inputs
    context.optimizer.zero_grad(set_to_none=True)
    return result


def measure_dynamics(context: StepContext, model: TransformerLM, result: StepResult,
                     probe_sequences: int = 4) -> dict:
    """The instruments' record of one measured step (see instruments.py): norms, ratios and one probe pass."""
    record = {"grad_norm": result.group_grad_norms, "weight_norm": context.groups.weight_norms(),
              "update_ratio": result.update_ratios}
    precision = context.config.run.precision
    was_training = model.training
    model.eval()
    with ActivationProbe(model) as probe, torch.no_grad(), runtime.autocast(context.device, precision):
        model(result.last_inputs[:probe_sequences])
    model.train(was_training)
    record["activation_rms"], record["attention_entropy"] = probe.activation_rms, probe.attention_entropy
    return record
