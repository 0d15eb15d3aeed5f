"""`cs336-train account`: what a model costs before you train it (cs336-nn's accounting as tables).

Two reports:

- `accounting_report(config)`: a training configuration at its own batch, precision and step count.
- `handout_report("gpt2-xl")`: the handout's written problems transformer_accounting (§3.6) and adamw_accounting
  (§4.3) for a GPT-2 preset, every number computed by cs336_nn's formulas (see `cs336_nn.accounting` for the
  conventions: matrix multiplies only, float32, backward = 2 × forward, GB = 10⁹ bytes).
"""

from cs336_nn import (
    ADAMW_FLOPS_PER_PARAMETER,
    FORWARD_MATMULS,
    GPT2_SHAPES,
    H100_TF32_PEAK_FLOPS,
    ModelConfig,
    activation_counts,
    adamw_step_flops,
    count_parameters,
    forward_flops,
    gpt2_config,
    parameter_count,
    training_flops_per_token,
    training_memory,
    training_step_flops,
    training_time_s,
)
from cs336_train.config import TrainConfig

GB = 1e9  # the handout's "80GB"
LONG_CONTEXT = 16_384  # transformer_accounting (e)
MEMORY_BUDGET = 80 * GB  # adamw_accounting (b)
STEPS, BATCH_SIZE, MFU = 400_000, 1_024, 0.5  # adamw_accounting (d)


def accounting_report(config: TrainConfig) -> str:
    model, run = config.model, config.run
    micro_batch = run.batch_size // run.grad_accum_steps
    flops = forward_flops(model)
    bytes_per_activation = 2 if run.precision == "bf16" else 4
    memory = training_memory(model, micro_batch)
    activations_gib = memory.activations / 4 * bytes_per_activation / 2**30
    checkpointed = training_memory(model, micro_batch, activation_checkpointing=True)
    checkpointed_gib = checkpointed.activations / 4 * bytes_per_activation / 2**30
    tokens = run.steps * run.batch_size * model.context_length
    parameters = parameter_count(model)
    lines = [
        f"parameters            {count_parameters(model):>16,}  (embedding {parameters.embedding:,}, "
        f"non-embedding {parameters.non_embedding:,})",
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
        f"    checkpointed      {checkpointed_gib:>12.3f} GiB  (with activation checkpointing: the block inputs, "
        f"one block recomputed at a time)",
        f"  total               {(memory.total - memory.activations) / 2**30 + activations_gib:>12.3f} GiB",
    ]
    return "\n".join(lines)


def handout_report(preset: str) -> str:
    """transformer_accounting (a)-(e) and adamw_accounting (a)-(d) for one GPT-2 preset, as printed text."""
    config = gpt2_config(preset)
    return "\n".join([
        *_shapes(preset, config), "",
        "transformer_accounting",
        *_parameters(config), "",
        *_forward_flops(config), "",
        *_shares_by_size(preset), "",
        "adamw_accounting (float32 everywhere: 4 bytes a value; GB = 10⁹ bytes)",
        *_peak_memory(config), "",
        *_adamw_flops(config), "",
        *_training_time(config),
    ])


def _shapes(preset: str, config: ModelConfig) -> list[str]:
    d_ff_source = ("as the handout gives it" if preset == "gpt2-xl"
                   else "the handout gives d_ff only for XL; same rule")
    return [
        f"{preset} in the assignment's architecture (RMSNorm, RoPE, SwiGLU, untied embeddings):",
        f"  vocab {config.vocab_size:,}, context {config.context_length:,}, {config.num_layers} layers, "
        f"d_model {config.d_model:,}, {config.num_heads} heads, d_ff {config.d_ff:,}",
        f"  (d_ff: the multiple of 64 nearest 8/3·d_model = {8 * config.d_model / 3:,.1f}, {d_ff_source})",
    ]


def _parameters(config: ModelConfig) -> list[str]:
    counts = parameter_count(config)
    rows = [
        ("token embeddings (V·d)", counts.token_embeddings),
        ("LM head, the output embedding (V·d)", counts.lm_head),
        ("  embedding", counts.embedding),
        ("attention Q, K, V, output (L·4·d²)", counts.attention),
        ("feed-forward W1, W2, W3 (L·3·d·d_ff)", counts.feed_forward),
        ("RMSNorm gains ((2·L + 1)·d)", counts.norms),
        ("  non-embedding", counts.non_embedding),
    ]
    return [
        "(a) trainable parameters: 2·V·d + L·(4·d² + 3·d·d_ff + 2·d) + d",
        *(f"  {name:<40}{value:>15,}  {100 * value / counts.total:5.1f}%" for name, value in rows),
        f"  {'total':<40}{counts.total:>15,}  = {4 * counts.total / GB:.2f} GB to load in float32",
    ]


def _forward_flops(config: ModelConfig) -> list[str]:
    flops = forward_flops(config)
    shares = flops.component_shares()
    largest = max(shares, key=shares.get)
    return [
        f"(b) forward pass over {config.context_length:,} tokens, by matrix multiply (2·m·n·p FLOPs each):",
        *(f"  {name:<18} {FORWARD_MATMULS[name]:<62}{value:>19,}  {100 * share:5.1f}%"
          for (name, value), share in zip(vars(flops).items(), flops.fractions().values(), strict=True)),
        f"  {'total':<81}{flops.total:>19,}  = {flops.total / 1e12:.3f} TFLOPs",
        "(c) by component: " + ", ".join(f"{name} {100 * share:.1f}%" for name, share in shares.items()),
        f"    the most FLOPs: {largest} ({100 * shares[largest]:.1f}%)",
    ]


def _shares_by_size(preset: str) -> list[str]:
    rows = [(name, gpt2_config(name)) for name in GPT2_SHAPES]
    rows.append((f"{preset} @ {LONG_CONTEXT:,}", gpt2_config(preset, context_length=LONG_CONTEXT)))
    flops = {label: forward_flops(config) for label, config in rows}
    groups = list(next(iter(flops.values())).component_shares())
    header = f"  {'model':<20}{'parameters':>15}{'TFLOPs':>10}" + "".join(f"{group:>{len(group) + 3}}"
                                                                        for group in groups)
    table = [
        f"  {label:<20}{count_parameters(config):>15,}{flops[label].total / 1e12:>10.3f}"
        + "".join(f"{100 * share:>{len(group) + 2}.1f}%"
                  for group, share in flops[label].component_shares().items())
        for label, config in rows
    ]
    smallest, largest = flops[rows[0][0]].component_shares(), flops[rows[-2][0]].component_shares()
    base, long, context = flops[preset].total, flops[rows[-1][0]], gpt2_config(preset).context_length
    return [
        "(d), (e) forward FLOPs by component, per GPT-2 size at its context and at a long context:",
        header, *table,
        f"  from {rows[0][0]} to {rows[-2][0]}:",
        *(f"    {group:<24}{100 * smallest[group]:5.1f}% -> {100 * largest[group]:5.1f}%  "
          f"({'grows' if largest[group] > smallest[group] else 'shrinks'})" for group in groups),
        f"  {preset} at context {LONG_CONTEXT:,}: {long.total / 1e12:.1f} TFLOPs per forward pass, "
        f"{long.total / base:.1f}x the {context:,}-token pass for {LONG_CONTEXT // context}x the tokens",
        "    (QKᵀ and the weighted sum grow with T², everything else with T)",
    ]


def _peak_memory(config: ModelConfig) -> list[str]:
    memory = training_memory(config, batch_size=1)
    best = memory.max_batch_size(MEMORY_BUDGET)
    fits, does_not = (training_memory(config, batch_size) for batch_size in (best, best + 1))
    return [
        f"(a) peak memory = parameters + gradients + optimizer state + activations, with d_ff = {config.d_ff:,} "
        f"for the problem's 8/3·d_model",
        "    (the peak: at the end of the forward pass all four are held)",
        f"  {f'parameters (4·P bytes, P = {count_parameters(config):,})':<46}{memory.parameters / GB:>10.2f} GB",
        f"  {'gradients (4·P)':<46}{memory.gradients / GB:>10.2f} GB",
        f"  {'optimizer state, AdamW m and v (8·P)':<46}{memory.optimizer_state / GB:>10.2f} GB",
        "  activations: 4·batch_size·[L·(8·T·d + 4·T·d_ff + 2·h·T²) + T·d + 2·T·V] bytes, per sequence:",
        *(f"    {name:<44}{4 * values / GB:>10.3f} GB"
          for name, values in activation_counts(config).items()),
        f"  {'activations per sequence':<46}{memory.per_sequence / GB:>10.3f} GB",
        f"  total = {memory.per_sequence / GB:.3f} GB · batch_size + {memory.fixed / GB:.3f} GB   "
        f"(a = {memory.per_sequence:,} bytes, b = {memory.fixed:,} bytes)",
        f"(b) the largest batch in {MEMORY_BUDGET / GB:.0f} GB: {best}  (batch {best}: {fits.total / GB:.2f} GB; "
        f"batch {best + 1}: {does_not.total / GB:.2f} GB)",
    ]


def _adamw_flops(config: ModelConfig) -> list[str]:
    per_parameter = sum(ADAMW_FLOPS_PER_PARAMETER.values())
    return [
        f"(c) one AdamW step: {per_parameter}·P FLOPs = {per_parameter} × {count_parameters(config):,} = "
        f"{adamw_step_flops(config):.3e}  (element-wise, per parameter; α_t is one scalar a step):",
        *(f"    {update:<32}{flops} FLOPs" for update, flops in ADAMW_FLOPS_PER_PARAMETER.items()),
    ]


def _training_time(config: ModelConfig) -> list[str]:
    step_flops = training_step_flops(config, BATCH_SIZE)
    seconds = training_time_s(config, steps=STEPS, batch_size=BATCH_SIZE, mfu=MFU)
    return [
        f"(d) {STEPS:,} steps at batch {BATCH_SIZE:,} (x {config.context_length:,} tokens): "
        f"3 × forward (backward = 2 × forward) + AdamW = {step_flops:.4e} FLOPs a step",
        f"    at {100 * MFU:.0f}% MFU of one H100 ({H100_TF32_PEAK_FLOPS / 1e12:.0f} TFLOP/s TF32): "
        f"{STEPS * step_flops:.3e} FLOPs in {seconds / 3600:,.0f} hours = {seconds / 86_400:.1f} days",
    ]
