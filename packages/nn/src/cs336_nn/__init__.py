"""cs336-nn: a Transformer language model built from tensor operations (handout §3), plus its loss.

    >>> import torch
    >>> from cs336_nn import ModelConfig, TransformerLM
    >>> model = TransformerLM(ModelConfig(vocab_size=100, context_length=16, d_model=32, num_layers=2, num_heads=4))
    >>> model(torch.zeros(1, 8, dtype=torch.long)).shape
    torch.Size([1, 8, 100])
"""

from cs336_nn.accounting import (
    ADAMW_FLOPS_PER_PARAMETER,
    FORWARD_MATMULS,
    GPT2_SHAPES,
    H100_TF32_PEAK_FLOPS,
    ForwardFlops,
    ParameterCount,
    TrainingMemory,
    activation_counts,
    adamw_step_flops,
    checkpointed_activation_counts,
    count_parameters,
    forward_flops,
    gpt2_config,
    parameter_count,
    training_flops_per_token,
    training_memory,
    training_step_flops,
    training_time_s,
)
from cs336_nn.activations import relu, silu, softmax
from cs336_nn.attention import MultiHeadSelfAttention, causal_attention, causal_mask, scaled_dot_product_attention
from cs336_nn.block import TransformerBlock
from cs336_nn.components import loss_function
from cs336_nn.config import IMPLEMENTATIONS, ModelConfig
from cs336_nn.embedding import Embedding
from cs336_nn.feedforward import MLP, SwiGLU, default_swiglu_d_ff
from cs336_nn.kernel_policy import CPU_POLICY, CUDA_POLICY, KernelPolicy, policy_for, use_policy
from cs336_nn.kv_cache import KVCache, LayerKVCache
from cs336_nn.linear import Linear
from cs336_nn.loss import cross_entropy, perplexity
from cs336_nn.rmsnorm import LayerNorm, RMSNorm
from cs336_nn.rope import RotaryPositionalEmbedding
from cs336_nn.transformer_lm import TransformerLM

__all__ = [
    "ForwardFlops", "TrainingMemory", "count_parameters", "forward_flops", "training_flops_per_token",
    "training_memory", "ADAMW_FLOPS_PER_PARAMETER", "FORWARD_MATMULS", "GPT2_SHAPES", "H100_TF32_PEAK_FLOPS",
    "ParameterCount", "activation_counts", "adamw_step_flops", "checkpointed_activation_counts", "gpt2_config",
    "parameter_count",
    "training_step_flops", "training_time_s",
    "CPU_POLICY", "CUDA_POLICY", "KernelPolicy", "policy_for", "use_policy",
    "IMPLEMENTATIONS", "KVCache", "LayerKVCache", "MLP", "Embedding", "LayerNorm", "Linear", "ModelConfig",
    "MultiHeadSelfAttention", "RMSNorm",
    "RotaryPositionalEmbedding", "SwiGLU", "TransformerBlock", "TransformerLM", "causal_attention", "causal_mask",
    "cross_entropy", "default_swiglu_d_ff", "loss_function", "perplexity", "relu", "scaled_dot_product_attention",
    "silu", "softmax",
]
__version__ = "0.1.0"
