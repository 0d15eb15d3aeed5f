"""`cs336-train account`: what a configuration costs before you train it (cs336-nn's accounting as a table)."""

from cs336_nn import count_parameters, forward_flops, training_flops_per_token, training_memory
from cs336_train.config import TrainConfig


def accounting_report(config: TrainConfig) -> str:
    model, run = config.model, config.run
    micro_batch = run.batch_size // run.grad_accum_steps
    flops = forward_flops(model)
    bytes_per_activation = 2 if run.precision == "bf16" else 4
    memory = training_memory(model, micro_batch)
    activations_gib = memory.activations / 4 * bytes_per_activation / 2**30
    tokens = run.steps * run.batch_size * model.context_length
    lines = [
        f"parameters            {count_parameters(model):>16,}",
        f"forward FLOPs per sequence of {model.context_length} tokens, by matrix product:",
        *(f"  {name:<20}{value:>16,}  {100 * share:5.1f}%" for (name, value), share
          in zip(vars(flops).items(), flops.fractions().values(), strict=True)),
        f"  {'total':<20}{flops.total:>16,}",
        f"training FLOPs/token  {training_flops_per_token(model):>16,.0f}  (3 x forward)",
        f"training FLOPs, run   {training_flops_per_token(model) * tokens:>16.3e}  "
        f"({run.steps} steps x {run.batch_size} x {model.context_length} tokens)",
        f"training memory at micro-batch {micro_batch} (float32 weights, gradients, AdamW moments):",
        f"  parameters          {memory.parameters / 2**30:>12.3f} GiB",
        f"  gradients           {memory.gradients / 2**30:>12.3f} GiB",
        f"  optimizer state     {memory.optimizer_state / 2**30:>12.3f} GiB",
        f"  activations         {activations_gib:>12.3f} GiB  (approximate, {run.precision})",
        f"  total               {(memory.total - memory.activations) / 2**30 + activations_gib:>12.3f} GiB",
    ]
    return "\n".join(lines)
