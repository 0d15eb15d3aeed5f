"""`ModelConfig`: every architectural choice of the Transformer LM in one dataclass.

The defaults are the assignment's architecture (pre-norm RMSNorm, RoPE, SwiGLU, untied embeddings). The other
values exist for the handout's ablations. Each `*_impl` field picks, per component, our from-scratch code
("scratch") or the torch built-in it replaces ("torch"), to compare outputs and speed one part at a time.

    >>> ModelConfig(vocab_size=10_000, context_length=256, d_model=512, num_layers=4, num_heads=16).d_ff
    1344
"""

import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from cs336_nn.feedforward import default_swiglu_d_ff

CHOICES = {
    "norm": ("rmsnorm", "layernorm", "none"),
    "norm_position": ("pre", "post"),
    "positions": ("rope", "nope", "sinusoidal", "learned"),
    "ffn": ("swiglu", "silu", "relu"),
    "norm_impl": ("scratch", "torch"),
    "attention_impl": ("scratch", "torch"),
}


@dataclass
class ModelConfig:
    vocab_size: int
    context_length: int
    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int | None = None  # None: 8/3 d_model rounded to 64 for swiglu, 4 d_model otherwise
    rope_theta: float = 10_000.0
    norm: str = "rmsnorm"
    norm_position: str = "pre"
    positions: str = "rope"
    ffn: str = "swiglu"
    tie_embeddings: bool = False
    norm_eps: float = 1e-5
    norm_impl: str = "scratch"
    attention_impl: str = "scratch"

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"model.{name} = {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name in ("vocab_size", "context_length", "d_model", "num_layers", "num_heads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"model.d_model {self.d_model} must be divisible by model.num_heads {self.num_heads}")
        if self.positions == "rope" and (self.d_model // self.num_heads) % 2:
            raise ValueError(f"RoPE needs an even head size; d_model / num_heads = {self.d_model // self.num_heads}")
        if self.d_ff is None:
            self.d_ff = default_swiglu_d_ff(self.d_model) if self.ffn == "swiglu" else 4 * self.d_model

    @property
    def d_head(self) -> int:
        return self.d_model // self.num_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        valid = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"unknown model settings {unknown}; valid ones are {sorted(valid)}")
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path, table: str = "model") -> "ModelConfig":
        """Read the ``[model]`` table of a TOML file (or the whole file if it has no such table)."""
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
        return cls.from_dict(data.get(table, data))
