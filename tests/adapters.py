"""Glue between the CS336 course's test suite and this project's packages.

The course's tests import these functions by name; keep the names and parameters exactly as they are and keep
this file free of logic: each hook only calls into our packages. Hooks whose package has not landed yet raise
NotImplementedError naming the package.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import IO, Any, BinaryIO

import numpy.typing as npt
import torch
from torch import Tensor

import cs336_nn as nn_
import cs336_optim as optim_
import cs336_train as train_
from cs336_bpe import Tokenizer, train_bpe


def _not_yet(package: str):
    raise NotImplementedError(f"this hook lands with {package}")


def run_linear(d_in: int, d_out: int, weights: Tensor, in_features: Tensor) -> Tensor:
    layer = nn_.Linear(d_in, d_out, device=weights.device, dtype=weights.dtype)
    layer.load_state_dict({"weight": weights})
    return layer(in_features)


def run_embedding(vocab_size: int, d_model: int, weights: Tensor, token_ids: Tensor) -> Tensor:
    layer = nn_.Embedding(vocab_size, d_model, device=weights.device, dtype=weights.dtype)
    layer.load_state_dict({"weight": weights})
    return layer(token_ids)


def run_swiglu(d_model: int, d_ff: int, w1_weight: Tensor, w2_weight: Tensor, w3_weight: Tensor,
               in_features: Tensor) -> Tensor:
    layer = nn_.SwiGLU(d_model, d_ff, device=w1_weight.device, dtype=w1_weight.dtype)
    layer.load_state_dict({"w1.weight": w1_weight, "w2.weight": w2_weight, "w3.weight": w3_weight})
    return layer(in_features)


def run_scaled_dot_product_attention(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None) -> Tensor:
    return nn_.scaled_dot_product_attention(Q, K, V, mask)


def run_multihead_self_attention(d_model: int, num_heads: int, q_proj_weight: Tensor, k_proj_weight: Tensor,
                                 v_proj_weight: Tensor, o_proj_weight: Tensor, in_features: Tensor) -> Tensor:
    attention = nn_.MultiHeadSelfAttention(d_model, num_heads, device=q_proj_weight.device, dtype=q_proj_weight.dtype)
    attention.load_state_dict({"q_proj.weight": q_proj_weight, "k_proj.weight": k_proj_weight,
                               "v_proj.weight": v_proj_weight, "output_proj.weight": o_proj_weight})
    return attention(in_features)


def run_multihead_self_attention_with_rope(d_model: int, num_heads: int, max_seq_len: int, theta: float,
                                           q_proj_weight: Tensor, k_proj_weight: Tensor, v_proj_weight: Tensor,
                                           o_proj_weight: Tensor, in_features: Tensor,
                                           token_positions: Tensor | None = None) -> Tensor:
    rope = nn_.RotaryPositionalEmbedding(theta, d_model // num_heads, max_seq_len, device=in_features.device)
    attention = nn_.MultiHeadSelfAttention(d_model, num_heads, rope=rope, device=q_proj_weight.device,
                                           dtype=q_proj_weight.dtype)
    attention.load_state_dict({"q_proj.weight": q_proj_weight, "k_proj.weight": k_proj_weight,
                               "v_proj.weight": v_proj_weight, "output_proj.weight": o_proj_weight})
    return attention(in_features, token_positions)


def run_rope(d_k: int, theta: float, max_seq_len: int, in_query_or_key: Tensor, token_positions: Tensor) -> Tensor:
    return nn_.RotaryPositionalEmbedding(theta, d_k, max_seq_len, device=in_query_or_key.device)(
        in_query_or_key, token_positions)


def run_transformer_block(d_model: int, num_heads: int, d_ff: int, max_seq_len: int, theta: float,
                          weights: dict[str, Tensor], in_features: Tensor) -> Tensor:
    config = nn_.ModelConfig(vocab_size=1, context_length=max_seq_len, d_model=d_model, num_layers=1,
                             num_heads=num_heads, d_ff=d_ff, rope_theta=theta)
    rope = nn_.RotaryPositionalEmbedding(theta, d_model // num_heads, max_seq_len, device=in_features.device)
    block = nn_.TransformerBlock(config, rope, device=in_features.device)
    block.load_state_dict(weights)
    return block(in_features)


def run_transformer_lm(vocab_size: int, context_length: int, d_model: int, num_layers: int, num_heads: int,
                       d_ff: int, rope_theta: float, weights: dict[str, Tensor], in_indices: Tensor) -> Tensor:
    config = nn_.ModelConfig(vocab_size=vocab_size, context_length=context_length, d_model=d_model,
                             num_layers=num_layers, num_heads=num_heads, d_ff=d_ff, rope_theta=rope_theta)
    model = nn_.TransformerLM(config, device=in_indices.device)
    model.load_state_dict(weights)
    return model(in_indices)


def run_rmsnorm(d_model: int, eps: float, weights: Tensor, in_features: Tensor) -> Tensor:
    layer = nn_.RMSNorm(d_model, eps=eps, device=weights.device, dtype=weights.dtype)
    layer.load_state_dict({"weight": weights})
    return layer(in_features)


def run_silu(in_features: Tensor) -> Tensor:
    return nn_.silu(in_features)


def run_get_batch(dataset: npt.NDArray, batch_size: int, context_length: int, device: str) -> tuple[Tensor, Tensor]:
    return train_.get_batch(dataset, batch_size, context_length, device)


def run_softmax(in_features: Tensor, dim: int) -> Tensor:
    return nn_.softmax(in_features, dim=dim)


def run_cross_entropy(inputs: Tensor, targets: Tensor) -> Tensor:
    return nn_.cross_entropy(inputs, targets)


def run_gradient_clipping(parameters: Iterable[torch.nn.Parameter], max_l2_norm: float) -> None:
    optim_.clip_gradients(parameters, max_l2_norm)


def get_adamw_cls() -> Any:
    return optim_.AdamW


def run_get_lr_cosine_schedule(it: int, max_learning_rate: float, min_learning_rate: float, warmup_iters: int,
                               cosine_cycle_iters: int) -> float:
    return optim_.cosine_schedule(it, max_learning_rate, min_learning_rate, warmup_iters, cosine_cycle_iters)


def run_save_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int,
                        out: str | os.PathLike | BinaryIO | IO[bytes]) -> None:
    train_.save_checkpoint(model, optimizer, iteration, out)


def run_load_checkpoint(src: str | os.PathLike | BinaryIO | IO[bytes], model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer) -> int:
    return train_.load_checkpoint(src, model, optimizer)


def get_tokenizer(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]],
                  special_tokens: list[str] | None = None) -> Any:
    return Tokenizer(vocab, merges, special_tokens)


def run_train_bpe(input_path: str | os.PathLike, vocab_size: int, special_tokens: list[str],
                  **kwargs) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    return train_bpe(input_path, vocab_size, special_tokens, **kwargs)
