"""A key/value cache for generation: each new token costs one position, not a re-run of the whole sequence.

Without a cache, generating token t+1 runs the model over all t tokens again, although the keys and values of
tokens 1..t-1 are the same as at the previous step (causal attention: a token never sees what comes after it).
With a cache, every attention layer stores the keys and values it computed, and a step feeds only the new
token: its query attends to the stored keys. Work per token drops from O(t) positions to one.

    cache = KVCache.for_model(model, batch_size=1)
    logits = model(prompt_ids, kv_cache=cache)                   # prefill (1, n): positions 0..n-1
    next_id = logits[:, -1].argmax(-1, keepdim=True)             # (1, 1)
    logits = model(next_id, torch.tensor([[n]]), kv_cache=cache)  # one token at position n

Storage is preallocated to the full context, (batch, heads, context_length, d_head) per layer, so no step
allocates or copies. Keys and values are written at their tokens' absolute positions, and a query at position
p may attend to the keys at positions 0..p: the causal mask, expressed with positions, so rows of a batch may
be at different lengths. Entries beyond a row's current position may hold stale values; the mask never shows
them, and they are overwritten before they become visible.
"""

from typing import NamedTuple

import torch
from torch import Tensor

from cs336_nn.attention import scaled_dot_product_attention


class LayerKVCache(NamedTuple):
    """One layer's view of the cache for one step: keys, values (batch, heads, length, d_head) for positions
    0..length-1, where this step's tokens go (batch, seq), and which cached keys each of them may see."""

    keys: Tensor
    values: Tensor
    token_positions: Tensor  # (batch, seq)
    visible: Tensor  # (batch, 1, seq, length), True = may attend: the causal mask, by position, for every head

    def store(self, k: Tensor, v: Tensor) -> None:
        """Write k, v (batch, heads, seq, d_head) at this step's token positions."""
        rows = torch.arange(k.shape[0], device=k.device).unsqueeze(-1)  # (batch, 1)
        # Indexing (rows, :, positions) selects (batch, seq, heads, d_head): the indexed axes come first.
        self.keys[rows, :, self.token_positions] = k.transpose(1, 2).to(self.keys.dtype)
        self.values[rows, :, self.token_positions] = v.transpose(1, 2).to(self.values.dtype)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Store k, v, then attend from q to every cached key at or before each query's position.

        q, k, v (batch, heads, seq, d_head) -> (batch, heads, seq, d_head).
        """
        self.store(k, v)
        return scaled_dot_product_attention(q, self.keys, self.values, self.visible)


class KVCache:
    """Keys and values of every layer, for `batch_size` sequences of up to `context_length` tokens."""

    def __init__(self, num_layers: int, batch_size: int, num_heads: int, context_length: int, d_head: int,
                 device=None, dtype=None):
        shape = (batch_size, num_heads, context_length, d_head)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.batch_size, self.context_length = batch_size, context_length

    @classmethod
    def for_model(cls, model, batch_size: int) -> "KVCache":
        """A cache sized for `model` (a TransformerLM): its layers, heads and context, its device and dtype."""
        config = model.config
        parameter = next(model.parameters())
        return cls(config.num_layers, batch_size, config.num_heads, config.context_length, config.d_head,
                   device=parameter.device, dtype=parameter.dtype)

    def layers(self, token_positions: Tensor) -> list[LayerKVCache]:
        """Per layer, the view for a step whose tokens sit at token_positions (batch, seq).

        The views end at the furthest position, so attention costs that many keys, not the whole context; the
        mask is the same for every layer, so it is built here once per step.
        """
        length = int(token_positions.max()) + 1  # one host sync per step
        if not 0 < length <= self.context_length:
            raise ValueError(f"positions must lie in 0..{self.context_length - 1} (the context length), "
                             f"but this step reaches position {length - 1}")
        key_positions = torch.arange(length, device=token_positions.device)  # (length,)
        visible = (key_positions <= token_positions.unsqueeze(-1)).unsqueeze(1)  # (batch, 1, seq, length)
        return [LayerKVCache(keys[:, :, :length], values[:, :, :length], token_positions, visible)
                for keys, values in zip(self.keys, self.values)]
