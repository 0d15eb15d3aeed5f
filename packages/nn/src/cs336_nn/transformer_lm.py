"""`TransformerLM` (handout §3.1, §3.5, Figure 1): token ids -> logits over the next token.

Plain version: `reference.transformer_lm`, the handout's model as a function of a state dict. This module holds
the parameters, builds the config's variants, and can recompute activations to save memory (below).

    embed -> [+ absolute positions] -> num_layers x TransformerBlock -> final norm -> lm_head

State-dict keys are the course's (token_embeddings.weight, layers.{i}.attn.q_proj.weight, ..., ln_final.weight,
lm_head.weight), so the course's reference weights load directly.

Activation checkpointing (`model.activation_checkpointing = True`): in training, keep only each block's input
for the backward pass and recompute the block's activations from it when the backward pass reaches the block.
The activations held at the peak shrink from every block's (norms, Q, K, V, the FFN's d_ff-wide products...)
to one d_model-wide tensor per block plus one block's worth at a time, for one more forward pass of the blocks
(about a third more compute). It trades compute for memory: worth it when a larger batch or model would not fit.
"""

import math

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from cs336_nn.block import TransformerBlock
from cs336_nn.components import make_norm
from cs336_nn.config import ModelConfig
from cs336_nn.embedding import Embedding
from cs336_nn.kv_cache import KVCache
from cs336_nn.linear import Linear
from cs336_nn.rope import RotaryPositionalEmbedding


class SinusoidalPositions(nn.Module):
    """The original Transformer's fixed absolute positions: sin/cos at geometric frequencies, added to x."""

    def __init__(self, context_length: int, d_model: int, device=None):
        super().__init__()
        positions = torch.arange(context_length, dtype=torch.float64, device=device).unsqueeze(1)
        frequencies = 10_000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64, device=device) / d_model)
        table = torch.zeros(context_length, d_model, dtype=torch.float64, device=device)
        table[:, 0::2] = torch.sin(positions * frequencies)
        table[:, 1::2] = torch.cos(positions * frequencies)[:, : d_model // 2]
        self.register_buffer("table", table.float(), persistent=False)

    def forward(self, x: Tensor, token_positions: Tensor) -> Tensor:
        return x + self.table[token_positions].to(x.dtype)


class LearnedPositions(nn.Module):
    """GPT-2's learned absolute positions: one trained vector per position, added to x."""

    def __init__(self, context_length: int, d_model: int, device=None, dtype=None):
        super().__init__()
        self.position_embeddings = Embedding(context_length, d_model, device=device, dtype=dtype)
        nn.init.trunc_normal_(self.position_embeddings.weight, std=0.02, a=-0.06, b=0.06)

    def forward(self, x: Tensor, token_positions: Tensor) -> Tensor:
        return x + self.position_embeddings(token_positions)


class TransformerLM(nn.Module):
    def __init__(self, config: ModelConfig, device=None, dtype=None):
        super().__init__()
        self.config = config
        self.token_embeddings = Embedding(config.vocab_size, config.d_model, device=device, dtype=dtype)
        rope = None
        self.absolute_positions: nn.Module | None = None
        if config.positions == "rope":
            rope = RotaryPositionalEmbedding(config.rope_theta, config.d_head, config.context_length, device=device)
        elif config.positions == "sinusoidal":
            self.absolute_positions = SinusoidalPositions(config.context_length, config.d_model, device=device)
        elif config.positions == "learned":
            self.absolute_positions = LearnedPositions(config.context_length, config.d_model, device, dtype)
        self.rope = rope  # one instance, shared by every layer (its buffers are not saved)
        self.layers = nn.ModuleList(TransformerBlock(config, rope, device=device, dtype=dtype)
                                    for _ in range(config.num_layers))
        self.ln_final = make_norm(config, device=device, dtype=dtype)
        self.lm_head = Linear(config.d_model, config.vocab_size, device=device, dtype=dtype)
        self.activation_checkpointing = False  # recompute each block in the backward pass (see the module docstring)
        if config.tie_embeddings:
            # One matrix for both ends. N(0, 1) embeddings would make the logits huge (d_model-sized dot
            # products), so tied weights start at std 1/sqrt(d_model).
            std = 1 / math.sqrt(config.d_model)
            nn.init.trunc_normal_(self.token_embeddings.weight, std=std, a=-3 * std, b=3 * std)
            self.lm_head.weight = self.token_embeddings.weight

    def forward(self, token_ids: Tensor, token_positions: Tensor | None = None,
                kv_cache: KVCache | None = None) -> Tensor:
        """token_ids (batch, seq) with seq <= context_length -> logits (batch, seq, vocab_size).

        With `kv_cache` (generation), the tokens sit at token_positions ((batch, seq) or (seq,), default
        0..seq-1) and attend to the cached keys at or before their positions; see `kv_cache.py`.
        """
        sequence_length = token_ids.shape[-1]
        if sequence_length > self.config.context_length:
            raise ValueError(f"input has {sequence_length} tokens but context_length is {self.config.context_length}")
        if token_positions is None:
            token_positions = torch.arange(sequence_length, device=token_ids.device)
        layer_caches: list = [None] * len(self.layers)
        if kv_cache is not None:
            token_positions = token_positions.expand(token_ids.shape)  # (batch, seq): the cache is per row
            layer_caches = kv_cache.layers(token_positions)
        x = self.token_embeddings(token_ids)  # (batch, seq, d_model)
        if self.absolute_positions is not None:
            x = self.absolute_positions(x, token_positions)
        # Only in training with gradients: in evaluation or generation nothing is saved, so nothing to recompute.
        recompute = (self.activation_checkpointing and self.training and torch.is_grad_enabled()
                     and kv_cache is None)
        for layer, layer_cache in zip(self.layers, layer_caches):
            if recompute:
                # Saves only x (and the positions) for the backward pass, which reruns layer(x) to get the rest.
                # use_reentrant=False: the variant torch recommends, which also works under torch.compile.
                x = checkpoint(layer, x, token_positions, layer_cache, use_reentrant=False)
            else:
                x = layer(x, token_positions, layer_cache)
        return self.lm_head(self.ln_final(x))  # (batch, seq, vocab)
