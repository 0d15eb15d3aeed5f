"""`cs336-train compare CONFIG`: each component's three implementations, side by side, at CONFIG's sizes.

    cs336-train compare tinystories_cpu                      # 2 sequences on the CPU: seconds
    cs336-train compare tinystories_course --device cuda --batch 8

Every component exists three times: the plain version of the handout (`reference`, in cs336_nn's and cs336_optim's
reference.py), our fast from-scratch one (`scratch`, the default) and the torch built-in it replaces (`torch`); the
model config's `norm_impl`, `attention_impl` and `ffn_impl`, `run.loss_impl` and `optimizer.impl` choose between
them. This command feeds the same random inputs, at the config's sizes in float32, through the three versions of
the norm, the causal attention, RoPE, the feed-forward network, the loss, the optimizer's step and the whole model
(forward, loss and backward, every `*_impl` set to the same value), and prints one table:

    component  impl        output Δ gradient Δ        ms  speed  what
    norm       reference          -          -     2.061  1.00x  rmsnorm: x (2, 256, 256)
    norm       scratch     9.54e-07   1.14e-05     0.647  3.18x
    norm       torch       4.77e-07   1.53e-05     0.987  2.09x
    ...
    model      scratch     0.00e+00   4.66e-09   197.575  1.64x

`output Δ` and `gradient Δ` are the largest absolute differences from the reference, of the outputs and of the
gradients of the inputs and parameters (with one random upstream gradient for all three); float32 rounding makes
them about 1e-7 to 1e-5 of the values' size, and a difference orders of magnitude above that is a bug (but for the
optimizer's torch row: its note under the table says why). `ms` is
the median time of --repeats forward and backward passes after a warm-up (for the optimizer, of one step, and its
output is the parameters after all the steps); `speed` is the reference's time over this one's.

Only click and the standard library are imported at the top: `cs336-train --help` must not wait for torch (see
cli.py). Each function imports what it needs.
"""

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cs336_train.errors import TrainError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from cs336_nn import ModelConfig
    from cs336_train.config import OptimizerConfig, TrainConfig

IMPLEMENTATIONS = ("reference", "scratch", "torch")  # the first is what the others are measured against


@dataclass
class Run:
    """One implementation of one component, run: its outputs, its gradients and its median time."""

    outputs: "list[Tensor]"
    gradients: "list[Tensor]"
    milliseconds: float


@dataclass
class Row:
    component: str
    impl: str
    output_difference: float | None  # None for the reference itself
    gradient_difference: float | None  # None for the reference, and for the optimizer (it has no gradients)
    milliseconds: float
    speed: float  # the reference's time / this one's
    what: str  # the component's inputs, on its first row
    note: str = ""  # why a difference is expected, on its first row


@dataclass
class Component:
    """A component's name, a description of its inputs, and one function per implementation that runs it."""

    name: str
    what: str
    runs: dict[str, Callable[[], Run]]
    note: str = ""  # printed under the table: why a difference is expected


def synchronize(device: "torch.device") -> None:
    """Wait for the device to finish queued work, so that a timer measures the work and not its queueing."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(step: Callable[[], object], device: "torch.device") -> float:
    """Milliseconds of one call of `step`."""
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3


def random_normal(shape, device: "torch.device", seed: int) -> "Tensor":
    """Standard normal numbers, the same for a given shape and seed on any device (drawn on the CPU)."""
    import torch

    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)


def random_integers(high: int, shape, device: "torch.device", seed: int) -> "Tensor":
    """Integers in [0, high), the same for a given shape and seed on any device (drawn on the CPU)."""
    import torch

    return torch.randint(high, shape, generator=torch.Generator().manual_seed(seed)).to(device)


def forward_backward(forward: "Callable[[], Tensor]", leaves: "list[Tensor]", repeats: int,
                     device: "torch.device") -> Run:
    """Run forward() and the backward pass to `leaves`: once to warm up (allocations, cached masks, kernel
    choices), then `repeats` times, timed. The upstream gradient is random (1 for a scalar), the same for every
    implementation, so that each output element's gradient counts."""
    import torch

    output = forward()
    upstream = torch.ones_like(output) if output.dim() == 0 else random_normal(output.shape, device, seed=99)
    result = {}

    def step():
        output = forward()
        result["output"], result["gradients"] = output.detach(), torch.autograd.grad(output, leaves, upstream)

    step()
    milliseconds = statistics.median(timed(step, device) for _ in range(repeats))
    return Run([result["output"]], list(result["gradients"]), milliseconds)


def function_runs(functions: "dict[str, Callable[..., Tensor]]", inputs: "list[Tensor]", repeats: int,
                  device: "torch.device") -> dict[str, Callable[[], Run]]:
    """For each implementation, a run of function(*inputs): its output and the inputs' gradients."""
    return {impl: partial(forward_backward, partial(function, *inputs), inputs, repeats, device)
            for impl, function in functions.items()}


def module_runs(modules: "dict[str, torch.nn.Module]", inputs: "list[Tensor]", repeats: int,
                device: "torch.device") -> dict[str, Callable[[], Run]]:
    """For each implementation, a run of module(*inputs): its output and the gradients of the inputs and of the
    parameters (which `same_weights` made equal)."""
    return {impl: partial(forward_backward, partial(module, *inputs), [*inputs, *module.parameters()], repeats, device)
            for impl, module in modules.items()}


def same_weights(build: "Callable[[str], torch.nn.Module]", seed: int) -> "dict[str, torch.nn.Module]":
    """One module per implementation from build(impl), all holding the reference's weights. Norms' gains and biases
    are moved off their initial 1 and 0, where a bug that ignores them would go unseen."""
    import torch

    modules = {impl: build(impl) for impl in IMPLEMENTATIONS}
    with torch.no_grad():
        for index, parameter in enumerate(modules["reference"].parameters()):
            if parameter.ndim == 1:
                parameter.add_(0.1 * random_normal(parameter.shape, parameter.device, seed=seed + index))
    for module in modules.values():
        module.load_state_dict(modules["reference"].state_dict())
    return modules


def layer_components(model: "ModelConfig", batch: int, device: "torch.device", repeats: int) -> list[Component]:
    """The norm, the causal attention, RoPE, the feed-forward network and the loss, each on random inputs."""
    from cs336_nn import RotaryPositionalEmbedding, loss_function, reference
    from cs336_nn.components import causal_attention_for, make_ffn, make_norm

    seq, heads, d_head = model.context_length, model.num_heads, model.d_head
    activations = random_normal((batch, seq, model.d_model), device, seed=1).requires_grad_()  # (batch, seq, d)
    q, k, v = (random_normal((batch, heads, seq, d_head), device, seed=2 + i).requires_grad_() for i in range(3))
    logits = (3 * random_normal((batch, seq, model.vocab_size), device, seed=5)).requires_grad_()
    targets = random_integers(model.vocab_size, (batch, seq), device, seed=6)
    components = []
    if model.norm != "none":
        norms = same_weights(lambda impl: make_norm(replace(model, norm_impl=impl), device=device), seed=7)
        components.append(Component("norm", f"{model.norm}: x {shape(activations)}",
                                    module_runs(norms, [activations], repeats, device)))
    attentions = {impl: causal_attention_for(replace(model, attention_impl=impl)) for impl in IMPLEMENTATIONS}
    components.append(Component("attention", f"causal softmax(QKᵀ/√d)V: q, k, v {shape(q)}",
                                function_runs(attentions, [q, k, v], repeats, device)))
    if model.positions == "rope":
        rotary = RotaryPositionalEmbedding(model.rope_theta, d_head, seq, device=device)
        positions = random_integers(seq, (batch, 1, seq), device, seed=8)  # any positions, the same for each head
        rotations = {"reference": partial(reference.rope, token_positions=positions, theta=model.rope_theta),
                     "scratch": partial(rotary, token_positions=positions)}
        components.append(Component("rope", f"rotate pairs: x {shape(q)} (no torch built-in)",
                                    function_runs(rotations, [q], repeats, device)))
    ffns = same_weights(lambda impl: make_ffn(replace(model, ffn_impl=impl), device=device), seed=9)
    components.append(Component("ffn", f"{model.ffn}: x {shape(activations)}, d_ff {model.d_ff}",
                                module_runs(ffns, [activations], repeats, device)))
    losses = {impl: partial(loss_function(impl), targets=targets) for impl in IMPLEMENTATIONS}
    components.append(Component("loss", f"cross-entropy: logits {shape(logits)}",
                                function_runs(losses, [logits], repeats, device)))
    return components


def optimizer_component(model: "ModelConfig", optimizer: "OptimizerConfig", device: "torch.device",
                        repeats: int) -> Component:
    """AdamW steps on parameters of the model's shapes, with the same random gradients at each step for all."""
    import torch

    from cs336_nn import TransformerLM
    from cs336_optim import make_adamw, parameter_groups

    torch.manual_seed(0)
    initial = [(name, parameter.detach()) for name, parameter in TransformerLM(model, device=device).named_parameters()]
    count = sum(parameter.numel() for _, parameter in initial)

    def run(impl: str) -> Run:
        parameters = [(name, torch.nn.Parameter(value.clone())) for name, value in initial]
        adamw = make_adamw(parameter_groups(parameters, optimizer.weight_decay), impl=impl, lr=optimizer.lr,
                           betas=optimizer.betas, eps=optimizer.eps, weight_decay=optimizer.weight_decay)
        times = []
        for step in range(1 + repeats):  # the first step builds m and v: a warm-up
            for index, (_, parameter) in enumerate(parameters):
                parameter.grad = 1e-3 * random_normal(parameter.shape, device, seed=1000 * step + index)
            times.append(timed(adamw.step, device))
        return Run([parameter.detach() for _, parameter in parameters], [], statistics.median(times[1:]))

    return Component("optimizer", f"{1 + repeats} AdamW steps: {count:,} parameters, lr {optimizer.lr:g}",
                     {impl: partial(run, impl) for impl in IMPLEMENTATIONS},
                     note="torch's AdamW adds ε to sqrt(v / (1 - β2^t)), Algorithm 1 to sqrt(v): coordinates whose "
                          "gradients are within a few orders of magnitude of ε move differently in the first steps "
                          "(by up to lr a step), so its output Δ is that, not rounding")


def model_component(model: "ModelConfig", batch: int, device: "torch.device", repeats: int) -> Component:
    """The whole TransformerLM and its loss, with every *_impl set to one implementation, on the same weights."""
    from cs336_nn import TransformerLM, loss_function

    models = same_weights(lambda impl: TransformerLM(
        replace(model, norm_impl=impl, attention_impl=impl, ffn_impl=impl), device=device), seed=10)
    # (batch, seq + 1): the inputs, and shifted by one, their next tokens
    token_ids = random_integers(model.vocab_size, (batch, model.context_length + 1), device, seed=11)

    def run(impl: str) -> Run:
        lm, loss = models[impl], loss_function(impl)
        return forward_backward(lambda: loss(lm(token_ids[:, :-1]), token_ids[:, 1:]), list(lm.parameters()),
                                repeats, device)

    return Component("model", f"TransformerLM + loss, forward and backward: token ids {shape(token_ids[:, :-1])}",
                     {impl: partial(run, impl) for impl in IMPLEMENTATIONS})


def largest_difference(actual: "list[Tensor]", expected: "list[Tensor]") -> float:
    return max(((a.float() - e.float()).abs().max().item() for a, e in zip(actual, expected, strict=True)),
               default=0.0)


def compare(config: "TrainConfig", batch: int = 2, device: str = "cpu", repeats: int = 3) -> list[Row]:
    """Every component of `config` in its three implementations: differences from the reference and times.

    Runs with run.num_threads CPU threads when the config sets it (on a busy machine, fewer threads than cores
    make steadier times)."""
    import torch

    device = usable_device(device)
    if config.run.num_threads:
        torch.set_num_threads(config.run.num_threads)
    model = config.model
    components = [*layer_components(model, batch, device, repeats),
                  optimizer_component(model, config.optimizer, device, repeats),
                  model_component(model, batch, device, repeats)]
    rows = []
    for component in components:
        runs = {impl: run() for impl, run in component.runs.items()}
        reference = runs["reference"]
        for impl, run in runs.items():
            is_reference = impl == "reference"
            rows.append(Row(
                component.name, impl,
                None if is_reference else largest_difference(run.outputs, reference.outputs),
                None if is_reference or not run.gradients else largest_difference(run.gradients, reference.gradients),
                run.milliseconds, reference.milliseconds / run.milliseconds, component.what if is_reference else "",
                component.note if is_reference else ""))
    return rows


def format_table(rows: list[Row]) -> str:
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.2e}"

    lines = [f"{'component':<10} {'impl':<10} {'output Δ':>9} {'gradient Δ':>10} {'ms':>9} {'speed':>6}  what"]
    lines += [f"{row.component:<10} {row.impl:<10} {number(row.output_difference):>9} "
              f"{number(row.gradient_difference):>10} {row.milliseconds:>9.3f} {row.speed:>5.2f}x  {row.what}".rstrip()
              for row in rows]
    lines += [f"note, {row.component}: {row.note}" for row in rows if row.note]
    return "\n".join(lines)


def shape(tensor: "Tensor") -> str:
    return str(tuple(tensor.shape))


def usable_device(name: str) -> "torch.device":
    """The --device to compare on: runtime.resolve_device's rules and messages, as a TrainError."""
    from cs336_train.errors import ConfigError
    from cs336_train.runtime import resolve_device

    try:
        return resolve_device(name, setting="--device")
    except ConfigError as error:
        raise TrainError(str(error)) from None


def load_config(config_name: str, overrides: list[str]) -> "TrainConfig":
    """CONFIG with --set overrides; the data files are never read here, so they need not exist."""
    from cs336_train.config import TrainConfig
    from cs336_train.config_files import resolve_config

    return TrainConfig.from_toml(resolve_config(config_name), ['data.train="-"', 'data.valid="-"', *overrides])


@click.command(name="compare")
@click.argument("config_name", metavar="CONFIG", default="tinystories_cpu")
@click.option("--batch", type=click.IntRange(min=1), default=2, show_default=True,
              help="Sequences of the config's context length in each input.")
@click.option("--device", default="cpu", show_default=True, help="Where to run: cpu, cuda, cuda:1, mps.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed passes per implementation (after one warm-up); the table shows their median.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one setting, e.g. --set model.context_length=128 (repeatable).")
def compare_command(config_name: str, batch: int, device: str, repeats: int, overrides: tuple[str, ...]):
    """The reference, scratch and torch implementations of each component of CONFIG (default tinystories_cpu):
    their largest differences from the reference, of outputs and gradients, and their forward+backward times.

    On a busy machine, --set run.num_threads=1 gives steadier times."""
    try:
        config = load_config(config_name, list(overrides))
        usable_device(device)  # before the header line: a bad device is one line of error, nothing else
        click.echo(f"compare {Path(config_name).stem}: float32 on {device}, {batch} x {config.model.context_length} "
                   f"tokens; Δ = largest |x - reference|; ms = median of {repeats} forward+backward passes "
                   "(one step for the optimizer)")
        click.echo(format_table(compare(config, batch, device, repeats)))
    except TrainError as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:
        click.echo("cs336-train: interrupted", err=True)
        raise SystemExit(130) from None
