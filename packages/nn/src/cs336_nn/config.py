"""`ModelConfig`: every architectural choice of the Transformer LM in one dataclass.

The defaults are the assignment's architecture (pre-norm RMSNorm, RoPE, SwiGLU, untied embeddings). The other
values exist for the handout's ablations. Each `*_impl` field picks, per component, the plain version of
reference.py ("reference"), our fast from-scratch code ("scratch", the default) or the torch built-in it replaces
("torch"), to compare outputs and speed one part at a time (`cs336-train compare CONFIG` does it for you).

`d_ff` unset (or 0) means the parameter-matched size for the chosen `ffn` (`default_d_ff`):

    >>> ModelConfig(vocab_size=10_000, context_length=256, d_model=512, num_layers=4, num_heads=16).d_ff
    1344
    >>> ModelConfig(vocab_size=10_000, context_length=256, d_model=512, num_layers=4, num_heads=16, ffn="silu").d_ff
    2048

A plain MLP given SwiGLU's size (typically inherited, as in `--set model.ffn=silu` on a SwiGLU config) is
refused: it would hold a third fewer feed-forward weights, and the handout's SwiGLU-vs-SiLU comparison is meant
to match parameter counts.
"""

import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from cs336_nn.feedforward import default_swiglu_d_ff

IMPLEMENTATIONS = ("reference", "scratch", "torch")
CHOICES = {
    "norm": ("rmsnorm", "layernorm", "none"),
    "norm_position": ("pre", "post"),
    "positions": ("rope", "nope", "sinusoidal", "learned"),
    "ffn": ("swiglu", "silu", "relu"),
    "norm_impl": IMPLEMENTATIONS,
    "attention_impl": IMPLEMENTATIONS,
    "ffn_impl": IMPLEMENTATIONS,
}
GATED_FFNS = ("swiglu",)


def default_d_ff(ffn: str, d_model: int) -> int:
    """The parameter-matched inner size: about 8/3·d_model (to a multiple of 64) gated, 4·d_model plain.

    Three d_model × d_ff matrices at 8/3·d_model hold 8·d_model² weights, as two at 4·d_model do (handout
    §3.4.2 and its swiglu_ablation). 256 -> 704 for swiglu, 1024 for silu or relu.
    """
    return default_swiglu_d_ff(d_model) if ffn in GATED_FFNS else 4 * d_model


@dataclass
class ModelConfig:
    vocab_size: int
    context_length: int
    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int | None = None  # None or 0: default_d_ff (8/3 d_model rounded to 64 for swiglu, 4 d_model otherwise)
    rope_theta: float = 10_000.0
    norm: str = "rmsnorm"
    norm_position: str = "pre"
    positions: str = "rope"
    ffn: str = "swiglu"
    tie_embeddings: bool = False
    norm_eps: float = 1e-5
    norm_impl: str = "scratch"
    attention_impl: str = "scratch"
    ffn_impl: str = "scratch"  # the FFN's activation and gate; its matrix products are the same in all three

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
        if self.d_ff is not None and (not isinstance(self.d_ff, int) or isinstance(self.d_ff, bool) or self.d_ff < 0):
            raise ValueError(f"model.d_ff must be a positive integer, or 0 for the parameter-matched default; "
                             f"got {self.d_ff!r}")
        if not self.d_ff:
            self.d_ff = default_d_ff(self.ffn, self.d_model)
        self._refuse_a_gated_d_ff_for_a_plain_mlp()

    def _refuse_a_gated_d_ff_for_a_plain_mlp(self) -> None:
        # Switching ffn alone keeps the gated config's d_ff, and the "ablation" then compares models of different
        # sizes without saying so. The gated default is the telltale value; any other explicit d_ff is a choice.
        gated, matched = default_d_ff("swiglu", self.d_model), default_d_ff(self.ffn, self.d_model)
        if self.ffn not in GATED_FFNS and self.d_ff == gated != matched:
            raise ValueError(
                f"model.d_ff {self.d_ff} is SwiGLU's size for d_model {self.d_model}; a parameter-matched {self.ffn} "
                f"FFN needs d_ff = 4·d_model = {matched}: set it with --set model.d_ff={matched} "
                f"(or model.d_ff=0 for the matched default of any ffn)"
            )

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
