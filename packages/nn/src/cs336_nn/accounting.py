"""Accounting as code (handout §3.6 and §4.3): parameters, forward FLOPs and training memory of a config.

FLOPs count matrix multiplies only (2 · m · n · k for an (m, k) @ (k, n) product), which dominate: norms,
softmax and activations are O(T·d) and negligible next to the O(T·d²) products.

    >>> gpt2_xl = ModelConfig(vocab_size=50257, context_length=1024, d_model=1600, num_layers=48, num_heads=25,
    ...                       d_ff=6400)
    >>> f"{count_parameters(gpt2_xl):,}"
    '2,127,057,600'
    >>> f"{forward_flops(gpt2_xl).total / 1e12:.2f} TFLOPs"
    '4.51 TFLOPs'
"""

from dataclasses import dataclass

from cs336_nn.config import ModelConfig


def count_parameters(config: ModelConfig) -> int:
    """Trainable parameters of `TransformerLM(config)`, from the formula (a test checks it against the module)."""
    d, V = config.d_model, config.vocab_size
    norm = {"rmsnorm": d, "layernorm": 2 * d, "none": 0}[config.norm]
    ffn_matrices = 3 if config.ffn == "swiglu" else 2
    per_layer = 4 * d * d + ffn_matrices * d * config.d_ff + 2 * norm
    embeddings = V * d if config.tie_embeddings else 2 * V * d
    positions = config.context_length * d if config.positions == "learned" else 0
    return embeddings + positions + config.num_layers * per_layer + norm


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
        return {name: value / self.total for name, value in vars(self).items()}


def forward_flops(config: ModelConfig, sequence_length: int | None = None) -> ForwardFlops:
    T = sequence_length or config.context_length
    d, L = config.d_model, config.num_layers
    ffn_matrices = 3 if config.ffn == "swiglu" else 2
    return ForwardFlops(
        qkv_projections=L * 2 * T * d * 3 * d,
        attention_scores=L * 2 * T * T * d,
        attention_values=L * 2 * T * T * d,
        output_projection=L * 2 * T * d * d,
        feed_forward=L * ffn_matrices * 2 * T * d * config.d_ff,
        lm_head=2 * T * d * config.vocab_size,
    )


def training_flops_per_token(config: ModelConfig, sequence_length: int | None = None) -> float:
    """Forward + backward ≈ 3 × forward (the backward pass does two products per forward product)."""
    T = sequence_length or config.context_length
    return 3 * forward_flops(config, T).total / T


@dataclass
class TrainingMemory:
    """Bytes needed to train with AdamW: parameters, gradients, optimizer state (m and v) and activations."""

    parameters: int
    gradients: int
    optimizer_state: int
    activations: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_state + self.activations


def training_memory(config: ModelConfig, batch_size: int, sequence_length: int | None = None,
                    bytes_per_value: int = 4) -> TrainingMemory:
    """Memory of one training step (float32 by default), counting the activations saved for the backward pass.

    Activations per layer, as in the handout's list: two norms (B·T·d each), the Q, K, V projections (3·B·T·d),
    the attention scores and their softmax (2·B·H·T²), the weighted values and the output projection
    (2·B·T·d), and the feed-forward's inner activations (W1, W3, the SiLU and the product: 4·B·T·d_ff; two for
    a plain MLP); then the final norm (B·T·d) and the logits with their softmax for the loss (2·B·T·V).
    """
    B, T = batch_size, sequence_length or config.context_length
    d, H, d_ff = config.d_model, config.num_heads, config.d_ff
    ffn_values = 4 if config.ffn == "swiglu" else 2
    per_layer = 2 * B * T * d + 3 * B * T * d + 2 * B * H * T * T + 2 * B * T * d + ffn_values * B * T * d_ff
    activations = config.num_layers * per_layer + B * T * d + 2 * B * T * config.vocab_size
    parameters = count_parameters(config)
    return TrainingMemory(
        parameters=parameters * bytes_per_value,
        gradients=parameters * bytes_per_value,
        optimizer_state=2 * parameters * bytes_per_value,
        activations=activations * bytes_per_value,
    )
