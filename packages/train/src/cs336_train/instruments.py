"""Instruments for reading training dynamics: what each part of the model is doing, every `run.stats_interval` steps.

The loss says *that* training goes well or badly; these say *where*. Every measurement is grouped by the part
of the model it belongs to (`parameter_group`): the embeddings, each block's attention, feed-forward and norm
gains, the final norm and the LM head.

    grad_norm          L2 norm of the group's gradients, before clipping. A group whose norm spikes or grows
                       without bound is where instability starts (post-norm's lower layers, no-norm's last ones).
    weight_norm        L2 norm of the group's parameters: grows steadily with a high learning rate, stays put when
                       weight decay and the updates balance.
    update_ratio       ||θ_after - θ_before|| / ||θ_after|| for one optimizer step: how far a step moves the
                       weights relative to their size. About 1e-3 is the classic healthy value; 1e-1 is chaos.
    activation_rms     RMS of each block's output, the residual stream: with pre-norm it grows slowly with depth;
                       without norms it can blow up.
    attention_entropy  mean entropy (nats) of each layer's attention distributions, on a few sequences: near
                       ln(position) means attention spread evenly; near 0, every query looks at one token.

A record in metrics.jsonl:

    {"kind": "stats", "step": 64, "tokens": 131072, "wall_s": 12.5, "lr": 0.0019,
     "grad_norm": {"token_embeddings": 0.1, "layers.0.attn": 0.2, ...}, "weight_norm": {...},
     "update_ratio": {...}, "activation_rms": {"layers.0": 1.2, ...}, "attention_entropy": {"layers.0": 2.1, ...}}

Cost: the norms read every parameter and gradient once; the activation probe is one extra forward pass over a
few sequences without gradients. Only stats steps pay it (BENCHMARKS.md measures the total).

The instrument of every step, the NaN guard, lives in divergence.py.
"""

import math
import re
from collections import defaultdict
from collections.abc import Iterable

import torch
from einops import einsum, rearrange
from torch import Tensor, nn

_BLOCK_PARTS = {"attn": "attn", "ffn": "ffn", "ln1": "norms", "ln2": "norms"}


def parameter_group(name: str) -> str:
    """The part of the model a parameter belongs to.

    >>> parameter_group("layers.3.attn.q_proj.weight"), parameter_group("layers.3.ln2.weight")
    ('layers.3.attn', 'layers.3.norms')
    >>> parameter_group("_orig_mod.token_embeddings.weight")
    'token_embeddings'
    >>> parameter_group("absolute_positions.position_embeddings.weight")
    'positions'
    """
    name = name.removeprefix("_orig_mod.")  # torch.compile's wrapper
    block = re.match(r"layers\.(\d+)\.(\w+)\.", name)
    if block:
        return f"layers.{block.group(1)}.{_BLOCK_PARTS.get(block.group(2), block.group(2))}"
    if name.startswith("absolute_positions."):
        return "positions"
    return name.split(".")[0]


class ParameterGroups:
    """The model's parameters grouped by `parameter_group`, in a fixed order."""

    def __init__(self, named_parameters: Iterable[tuple[str, nn.Parameter]]):
        groups: dict[str, list[nn.Parameter]] = defaultdict(list)
        for name, parameter in named_parameters:
            if parameter.requires_grad:
                groups[parameter_group(name)].append(parameter)
        self.names = list(groups)
        self.parameters = [groups[name] for name in self.names]

    def norms(self, tensors_of) -> dict[str, float]:
        """{group: L2 norm of `tensors_of(parameter)` over the group's parameters}; one read back to the host."""
        return self._norms([[tensors_of(parameter) for parameter in parameters] for parameters in self.parameters])

    def _norms(self, tensors_by_group: list[list[Tensor | None]]) -> dict[str, float]:
        per_group = []
        for tensors in tensors_by_group:
            squares = [torch.linalg.vector_norm(tensor.detach().float()) ** 2
                       for tensor in tensors if tensor is not None]
            per_group.append(torch.stack(squares).sum().sqrt() if squares else torch.zeros(()))
        return dict(zip(self.names, torch.stack(per_group).tolist(), strict=True))

    def gradient_norms(self) -> dict[str, float]:
        return self.norms(lambda parameter: parameter.grad)

    def weight_norms(self) -> dict[str, float]:
        return self.norms(lambda parameter: parameter)

    def combine(self, parameter_norms: list[float]) -> dict[str, float]:
        """{group: L2 norm} from one norm per parameter, given in this object's order (group by group)."""
        norms, offset = {}, 0
        for name, parameters in zip(self.names, self.parameters, strict=True):
            norms[name] = math.sqrt(sum(norm * norm for norm in parameter_norms[offset:offset + len(parameters)]))
            offset += len(parameters)
        return norms

    def snapshot(self) -> list[list[Tensor]]:
        """A copy of every parameter (to measure the next update)."""
        return [[parameter.detach().clone() for parameter in parameters] for parameters in self.parameters]

    def update_ratios(self, before: list[list[Tensor]]) -> dict[str, float]:
        """{group: ||θ - θ_before|| / ||θ||} for the update made since `before` was taken."""
        changes = self._norms([[parameter.detach() - old for parameter, old in zip(parameters, olds, strict=True)]
                               for parameters, olds in zip(self.parameters, before, strict=True)])
        sizes = self.weight_norms()
        return {name: changes[name] / sizes[name] if sizes[name] else 0.0 for name in self.names}


class ActivationProbe:
    """Hooks on each block: the RMS of its output, and the entropy of its attention distributions.

    Used around one extra forward pass (no gradients) over a few sequences. The attention probabilities are not
    kept by the fused attention, so the probe recomputes them from the attention module's input with its own
    weights, in float32: softmax(Q Kᵀ / sqrt(d_head)) with the causal mask, exactly the textbook form.
    """

    def __init__(self, model: nn.Module):
        self.layers = list(model.layers)
        self.activation_rms: dict[str, float] = {}
        self.attention_entropy: dict[str, float] = {}
        self._handles = []

    def __enter__(self) -> "ActivationProbe":
        for index, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_hook(self._block_output_hook(f"layers.{index}")))
            self._handles.append(layer.attn.register_forward_pre_hook(self._attention_input_hook(f"layers.{index}"),
                                                                      with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _block_output_hook(self, name: str):
        def hook(module, inputs, output):
            self.activation_rms[name] = float(output.detach().float().pow(2).mean().sqrt())
        return hook

    def _attention_input_hook(self, name: str):
        def hook(attention, args, kwargs):
            self.attention_entropy[name] = attention_entropy(attention, args[0])
        return hook


def attention_entropy(attention: nn.Module, x: Tensor) -> float:
    """Mean entropy (nats) of causal attention rows: x (batch, seq, d_model) -> float.

    Row i of a causal attention may spread over i + 1 positions, so its entropy is at most ln(i + 1).
    """
    x = x.detach().float()
    q, k = (rearrange(projection(x), "batch seq (heads d_head) -> batch heads seq d_head", heads=attention.num_heads)
            for projection in (attention.q_proj, attention.k_proj))
    q, k = q.float(), k.float()
    sequence_length = x.shape[-2]
    if attention.rope is not None:
        positions = torch.arange(sequence_length, device=x.device)
        q, k = attention.rope(q, positions), attention.rope(k, positions)
    scores = einsum(q, k, "batch heads query d, batch heads key d -> batch heads query key") / math.sqrt(q.shape[-1])
    causal = torch.ones(sequence_length, sequence_length, dtype=torch.bool, device=x.device).tril()
    log_probabilities = torch.log_softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    probabilities = log_probabilities.exp()
    row_entropy = -(probabilities * log_probabilities.masked_fill(~causal, 0.0)).sum(-1)
    return float(row_entropy.mean())
