"""Accounting as code: the handout's written problems transformer_accounting (§3.6) and adamw_accounting (§4.3).

Every number comes from a formula over a `ModelConfig`, so the answers change with the config and a test can
check each formula against the real module or a hand computation. The handout's conventions:

- FLOPs count matrix multiplies only: an (m, n) @ (n, p) product costs 2·m·n·p. Norms, softmax, SiLU, RoPE and
  residual additions are O(T·d) and negligible next to the O(T·d²) products. The scores QKᵀ are counted over
  the full T × T matrix: the causal mask discards half of it, but the product as written computes all of it.
- Training memory is float32 (4 bytes per value); "80GB" is 80·10⁹ bytes.
- The backward pass costs twice the forward pass (Kaplan et al.; Hoffmann et al.).

GPT-2 XL as the handout specifies it (d_ff 4,288), worked through:

    >>> xl = gpt2_config("gpt2-xl")
    >>> f"{count_parameters(xl):,} parameters, {4 * count_parameters(xl) / 1e9:.2f} GB in float32"
    '1,640,452,800 parameters, 6.56 GB in float32'
    >>> f"{forward_flops(xl).total / 1e12:.3f} TFLOPs per 1,024-token forward pass"
    '3.517 TFLOPs per 1,024-token forward pass'
    >>> memory = training_memory(xl, batch_size=1)
    >>> f"{memory.per_sequence / 1e9:.2f} GB · batch_size + {memory.fixed / 1e9:.2f} GB"
    '16.37 GB · batch_size + 26.25 GB'
    >>> memory.max_batch_size(80e9)
    3
    >>> f"{adamw_step_flops(xl):.3e} FLOPs per AdamW step"
    '2.297e+10 FLOPs per AdamW step'
    >>> f"{training_time_s(xl, steps=400_000, batch_size=1024) / 86_400:.1f} days on one H100 at 50% MFU"
    '202.1 days on one H100 at 50% MFU'
"""

from dataclasses import dataclass

from cs336_nn.config import ModelConfig
from cs336_nn.feedforward import default_swiglu_d_ff

# ---------------------------------------------------------------------------------------------------------------
# The handout's GPT-2 shapes

GPT2_VOCAB_SIZE = 50_257
GPT2_CONTEXT_LENGTH = 1_024
GPT2_SHAPES = {  # handout §3.6 (a) and (d): (num_layers, d_model, num_heads)
    "gpt2-small": (12, 768, 12),
    "gpt2-medium": (24, 1024, 16),
    "gpt2-large": (36, 1280, 20),
    "gpt2-xl": (48, 1600, 25),
}


def gpt2_config(name: str, context_length: int = GPT2_CONTEXT_LENGTH) -> ModelConfig:
    """A GPT-2-sized model in our architecture (RMSNorm, RoPE, SwiGLU, untied embeddings), as the handout poses it.

    d_ff: the handout gives only XL's, 4,288, "the nearest multiple of 64 to 8/3 × 1,600"; the other sizes get
    the same rule (`default_swiglu_d_ff`), which the handout does not state for them. (The real GPT-2 used a
    plain 4·d_model MLP; these are GPT-2 shapes, not GPT-2.)

        >>> [gpt2_config(name).d_ff for name in GPT2_SHAPES]
        [2048, 2752, 3392, 4288]
    """
    if name not in GPT2_SHAPES:
        raise ValueError(f"unknown GPT-2 preset {name!r}; choose one of {', '.join(GPT2_SHAPES)}")
    num_layers, d_model, num_heads = GPT2_SHAPES[name]
    return ModelConfig(vocab_size=GPT2_VOCAB_SIZE, context_length=context_length, d_model=d_model,
                       num_layers=num_layers, num_heads=num_heads, d_ff=default_swiglu_d_ff(d_model))


# ---------------------------------------------------------------------------------------------------------------
# Parameters (transformer_accounting (a))


@dataclass(frozen=True)
class ParameterCount:
    """Trainable parameters by where they live (all layers together).

    "Embedding" parameters are the token embeddings, learned positions (if any) and the LM head, which the
    handout calls the output embedding; "non-embedding" are the Transformer blocks and the final norm, the
    count scaling laws use (Kaplan et al.), since it is what the compute per token grows with.
    """

    token_embeddings: int
    position_embeddings: int  # learned absolute positions only; RoPE has no parameters
    attention: int  # Q, K, V and output projections, no biases
    feed_forward: int
    norms: int  # gains of every norm, the final one included
    lm_head: int  # 0 when tied to the token embeddings

    @property
    def embedding(self) -> int:
        return self.token_embeddings + self.position_embeddings + self.lm_head

    @property
    def non_embedding(self) -> int:
        return self.attention + self.feed_forward + self.norms

    @property
    def total(self) -> int:
        return self.embedding + self.non_embedding


def _ffn_matrices(config: ModelConfig) -> int:
    return 3 if config.ffn == "swiglu" else 2  # SwiGLU's W1, W2, W3; a plain MLP's W1, W2


def parameter_count(config: ModelConfig) -> ParameterCount:
    """Parameters of `TransformerLM(config)` from the formula (a test checks it against the module's numel)."""
    d, V, L = config.d_model, config.vocab_size, config.num_layers
    gain = {"rmsnorm": d, "layernorm": 2 * d, "none": 0}[config.norm]
    return ParameterCount(
        token_embeddings=V * d,
        position_embeddings=config.context_length * d if config.positions == "learned" else 0,
        attention=L * 4 * d * d,
        feed_forward=L * _ffn_matrices(config) * d * config.d_ff,
        norms=(2 * L + 1) * gain,  # two per block, one final
        lm_head=0 if config.tie_embeddings else V * d,
    )


def count_parameters(config: ModelConfig) -> int:
    """Trainable parameters of `TransformerLM(config)`: 2·V·d + L·(4d² + 3·d·d_ff + 2d) + d by default."""
    return parameter_count(config).total


# ---------------------------------------------------------------------------------------------------------------
# Forward FLOPs (transformer_accounting (b)-(e))

FORWARD_MATMULS = {  # what each ForwardFlops field counts, per sequence of T tokens
    "qkv_projections": "x (T×d) @ W_QKV (d×3d), every layer",
    "attention_scores": "Q (T×d_k) @ Kᵀ (d_k×T), every head of every layer",
    "attention_values": "softmax (T×T) @ V (T×d_k), every head of every layer",
    "output_projection": "heads (T×d) @ W_O (d×d), every layer",
    "feed_forward": "W1, W3: (T×d) @ (d×d_ff); W2: (T×d_ff) @ (d_ff×d), every layer",
    "lm_head": "final norm (T×d) @ W_lm (d×V), once",
}
COMPONENTS = {  # the handout's coarser grouping, for comparing shares across model sizes
    "attention projections": ("qkv_projections", "output_projection"),
    "QKᵀ and weighted sum": ("attention_scores", "attention_values"),
    "feed-forward": ("feed_forward",),
    "LM head": ("lm_head",),
}


@dataclass
class ForwardFlops:
    """Forward-pass FLOPs for one sequence of `sequence_length` tokens, by matrix multiply (all layers)."""

    qkv_projections: int
    attention_scores: int  # Q Kᵀ
    attention_values: int  # softmax(...) V
    output_projection: int
    feed_forward: int
    lm_head: int

    @property
    def total(self) -> int:
        return sum(vars(self).values())

    def fractions(self) -> dict[str, float]:
        """Each matrix multiply's share of the total; the shares sum to 1."""
        return {name: value / self.total for name, value in vars(self).items()}

    def component_shares(self) -> dict[str, float]:
        """Shares of the `COMPONENTS` groups (attention projections, QKᵀ + weighted sum, FFN, LM head)."""
        return {group: sum(getattr(self, name) for name in names) / self.total for group, names in COMPONENTS.items()}


def forward_flops(config: ModelConfig, sequence_length: int | None = None) -> ForwardFlops:
    """FLOPs of the matrix multiplies of one forward pass over `sequence_length` tokens (default: the context).

    With h heads of size d_k = d/h, QKᵀ costs h·2·T·d_k·T = 2·T²·d per layer whatever the number of heads.
    """
    T = sequence_length or config.context_length
    d, L = config.d_model, config.num_layers
    return ForwardFlops(
        qkv_projections=L * 2 * T * d * 3 * d,
        attention_scores=L * 2 * T * T * d,
        attention_values=L * 2 * T * T * d,
        output_projection=L * 2 * T * d * d,
        feed_forward=L * _ffn_matrices(config) * 2 * T * d * config.d_ff,
        lm_head=2 * T * d * config.vocab_size,
    )


def training_flops_per_token(config: ModelConfig, sequence_length: int | None = None) -> float:
    """Forward + backward = 3 × forward (the backward pass does two products per forward product), per token."""
    T = sequence_length or config.context_length
    return 3 * forward_flops(config, T).total / T


# ---------------------------------------------------------------------------------------------------------------
# Training memory (adamw_accounting (a), (b))


def activation_counts(config: ModelConfig, sequence_length: int | None = None) -> dict[str, int]:
    """Values saved for the backward pass by one sequence, all layers together, item by item.

    Exactly the handout's list, one tensor per item: per block the two RMSNorm outputs (T·d each); Q, K, V
    (3·T·d); the scores QKᵀ and their softmax (h·T² each); the weighted sum of values and the output projection
    (T·d each); the feed-forward's W1 and W3 outputs, the SiLU and the element-wise product (T·d_ff each) and
    W2's output (T·d). Then the final RMSNorm (T·d), the output embedding's logits (T·V) and the cross-entropy's
    softmax over them (T·V). A plain MLP (silu or relu) has W1, its activation and W2. Nothing else counts:
    not the embedding lookup, the residual sums or RoPE's rotated copies (the handout leaves them out).
    """
    L = config.num_layers
    per_block = _block_activation_counts(config, sequence_length)
    return {name: L * values for name, values in per_block.items()} | _head_activation_counts(config, sequence_length)


def checkpointed_activation_counts(config: ModelConfig, sequence_length: int | None = None) -> dict[str, int]:
    """`activation_counts` with activation checkpointing (`TransformerLM.activation_checkpointing`).

    The forward pass keeps only each block's input (T·d values per block); the backward pass recomputes one
    block's activations from its input when it reaches that block, and frees them before the next. So the
    peak holds the block inputs, one block's activations and the head's (final norm, logits, softmax), which
    are saved as before. GPT-2 XL in float32, GB a sequence (16.373 without checkpointing):

        >>> counts = checkpointed_activation_counts(gpt2_config("gpt2-xl"))
        >>> [round(4 * values / 1e9, 3) for values in counts.values()], round(4 * sum(counts.values()) / 1e9, 3)
        ([0.315, 0.332, 0.007, 0.206, 0.206], 1.065)
    """
    T = sequence_length or config.context_length
    one_block = sum(_block_activation_counts(config, sequence_length).values())
    return {
        "block inputs (kept)": config.num_layers * T * config.d_model,
        "one block's activations (recomputed)": one_block,
    } | _head_activation_counts(config, sequence_length)


def _block_activation_counts(config: ModelConfig, sequence_length: int | None) -> dict[str, int]:
    """The handout's activations of one Transformer block, per sequence (see `activation_counts`)."""
    T = sequence_length or config.context_length
    d, h, d_ff = config.d_model, config.num_heads, config.d_ff
    norm = 0 if config.norm == "none" else T * d
    per_block = {
        "RMSNorms (2 per block)": 2 * norm,
        "Q, K, V projections": 3 * T * d,
        "QKᵀ scores": h * T * T,
        "softmax": h * T * T,
        "weighted sum of values": T * d,
        "output projection": T * d,
        "FFN W1": T * d_ff,
    }
    if config.ffn == "swiglu":
        per_block |= {"FFN W3": T * d_ff, "FFN SiLU": T * d_ff, "FFN element-wise product": T * d_ff}
    else:
        per_block |= {f"FFN {config.ffn}": T * d_ff}
    per_block["FFN W2"] = T * d
    return per_block


def _head_activation_counts(config: ModelConfig, sequence_length: int | None) -> dict[str, int]:
    """After the blocks: the final norm's output, the logits and the cross-entropy's softmax, per sequence."""
    T = sequence_length or config.context_length
    return {
        "final RMSNorm": 0 if config.norm == "none" else T * config.d_model,
        "output embedding (logits)": T * config.vocab_size,
        "cross-entropy (softmax of the logits)": T * config.vocab_size,
    }


@dataclass(frozen=True)
class TrainingMemory:
    """Peak bytes of an AdamW training step: parameters, gradients, optimizer state and activations.

    The peak is their sum: at the end of the forward pass every saved activation is still held, and the
    gradient buffers and AdamW's two moments (m and v, one value per parameter each) live across steps. It is
    linear in the batch size, `per_sequence · batch_size + fixed`: only the activations grow with it.
    """

    parameters: int
    gradients: int
    optimizer_state: int
    activations_per_sequence: int
    batch_size: int = 1

    @property
    def activations(self) -> int:
        return self.activations_per_sequence * self.batch_size

    @property
    def per_sequence(self) -> int:
        """a in a·batch_size + b."""
        return self.activations_per_sequence

    @property
    def fixed(self) -> int:
        """b in a·batch_size + b: what does not depend on the batch."""
        return self.parameters + self.gradients + self.optimizer_state

    @property
    def total(self) -> int:
        return self.per_sequence * self.batch_size + self.fixed

    def max_batch_size(self, budget_bytes: float) -> int:
        """The largest batch whose peak fits in `budget_bytes` (0 if not even the fixed part fits)."""
        return max(0, int((budget_bytes - self.fixed) // self.per_sequence))


def training_memory(config: ModelConfig, batch_size: int, sequence_length: int | None = None,
                    bytes_per_value: int = 4, activation_checkpointing: bool = False) -> TrainingMemory:
    """Peak memory of one AdamW step (float32 by default) with `activation_counts` as the activations, or
    `checkpointed_activation_counts` with activation checkpointing."""
    parameters = count_parameters(config)
    counts = checkpointed_activation_counts if activation_checkpointing else activation_counts
    return TrainingMemory(
        parameters=parameters * bytes_per_value,
        gradients=parameters * bytes_per_value,
        optimizer_state=2 * parameters * bytes_per_value,  # m and v
        activations_per_sequence=sum(counts(config, sequence_length).values()) * bytes_per_value,
        batch_size=batch_size,
    )


# ---------------------------------------------------------------------------------------------------------------
# AdamW's own FLOPs and the time to train (adamw_accounting (c), (d))

ADAMW_FLOPS_PER_PARAMETER = {  # handout Algorithm 1, per element; α_t and α·λ are scalars computed once a step
    "θ ← θ - αλ·θ": 2,  # multiply, subtract
    "m ← β1·m + (1 - β1)·g": 3,  # two multiplies, an add
    "v ← β2·v + (1 - β2)·g²": 4,  # square, two multiplies, an add
    "θ ← θ - α_t·m / sqrt(v + ε)": 5,  # add, square root, divide, multiply, subtract
}
H100_TF32_PEAK_FLOPS = 495e12  # handout §4.3 (d): an H100's peak for "float32" (TF32) matrix multiplies


def adamw_step_flops(config: ModelConfig) -> int:
    """FLOPs of one AdamW update: `ADAMW_FLOPS_PER_PARAMETER` (14 element-wise operations) per parameter.

    A square root counts as one FLOP, like an add. Negligible next to a training step: 14·P against the
    6·P·tokens (roughly) of the forward and backward passes.
    """
    return sum(ADAMW_FLOPS_PER_PARAMETER.values()) * count_parameters(config)


def training_step_flops(config: ModelConfig, batch_size: int, sequence_length: int | None = None) -> int:
    """One optimizer step: forward (matrix multiplies), backward (2 × forward) and the AdamW update."""
    return 3 * forward_flops(config, sequence_length).total * batch_size + adamw_step_flops(config)


def training_time_s(config: ModelConfig, steps: int, batch_size: int, peak_flops: float = H100_TF32_PEAK_FLOPS,
                    mfu: float = 0.5, sequence_length: int | None = None) -> float:
    """Seconds to train for `steps` steps when the hardware sustains `mfu` of its `peak_flops` (the handout's 50%).

    MFU counts the model's FLOPs only, so this is the FLOPs of all steps over the achieved throughput.
    """
    return steps * training_step_flops(config, batch_size, sequence_length) / (mfu * peak_flops)
