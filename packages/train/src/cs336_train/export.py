"""`cs336-train export`: a trained model in the formats the rest of the ecosystem reads.

    cs336-train export runs/first --format hf exported/first          # a Hugging Face model directory
    cs336-train export runs/first --format safetensors first.safetensors   # the weights alone, our names

**hf** writes a directory that transformers loads with no custom code (``AutoModelForCausalLM``,
``AutoTokenizer``, ``pipeline("text-generation")``), and so do the tools built on it (evaluation harnesses,
model hubs):

    config.json              a LlamaConfig with our sizes, rope_theta, rms_norm_eps, tie_word_embeddings
    model.safetensors        the weights under Llama's names
    tokenizer.json           our byte-level BPE (see cs336_bpe.hf_format), tokenizer_config.json beside it
    generation_config.json   <|endoftext|> ends a text; sampling at temperature 0.8, top-p 0.95, at most half
                             the context length of new tokens
    README.md                a model card: architecture, data, tokens, validation loss, how it was made

Our default architecture is Llama's: pre-norm RMSNorm, RoPE, SwiGLU, no biases. The weights map one to one
(`hf_state_dict`), with one twist: RoPE. We rotate interleaved pairs of a head's coordinates, (x[0], x[1]),
(x[2], x[3]) ...; HF's Llama rotates the two halves, (x[0], x[d/2]), (x[1], x[d/2 + 1]) ..., with the same
frequency for pair k in both. Reordering the rows of the query and key projections of each head, even rows
first, then odd rows (`interleaved_to_halves`), makes HF's k-th pair hold exactly our k-th pair, so HF rotates
the same numbers by the same angles; the attention scores q·k are unchanged because q and k are reordered
alike. (This is the permutation Meta's original Llama weights needed too.) A configuration Llama cannot express
(post-norm, LayerNorm or no norm, absolute or no positions, a non-gated FFN) is refused with one line naming it.

**safetensors** writes our own state dict and configuration as one ``.safetensors`` file
(`cs336_train.checkpoint.save_weights`), which `cs336-sample` and `cs336-train eval` load like a checkpoint.

Only click and the standard library are imported at the top: `cs336-train --help` must not wait for torch (see
cli.py). The rest is imported inside the functions that need it.
"""

import json
import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cs336_train.errors import CheckpointError, ConfigError, DataError, TrainError

if TYPE_CHECKING:
    from torch import Tensor

    from cs336_bpe import Tokenizer
    from cs336_nn import ModelConfig

FORMATS = ("hf", "safetensors")
END_OF_TEXT = "<|endoftext|>"
# What Llama is, setting by setting, and why another value cannot be written as a LlamaConfig.
LLAMA_SETTINGS = {
    "norm": ("rmsnorm", "Llama normalizes with RMSNorm"),
    "norm_position": ("pre", "Llama normalizes before each sublayer (pre-norm)"),
    "positions": ("rope", "Llama encodes positions with RoPE"),
    "ffn": ("swiglu", "Llama's feed-forward network is gated (SwiGLU)"),
}
# Sampling settings written into generation_config.json: those cs336-train's own samples use.
GENERATION_DEFAULTS = {"do_sample": True, "temperature": 0.8, "top_p": 0.95}


class ExportError(TrainError):
    """A model or an output that cannot be exported as asked."""


@dataclass
class TrainedModel:
    """What an export needs from a run: the weights under our names and where they came from."""

    checkpoint_path: Path
    weights: dict[str, "Tensor"]
    config: dict  # the whole training configuration (model, optimizer, data, run)
    iteration: int
    tokens: int | None
    valid_loss: float | None
    tokenizer_fingerprint: str | None
    tokenizer_dir: Path | None = None

    @property
    def model_config(self) -> "ModelConfig":
        from cs336_nn import ModelConfig

        try:
            return ModelConfig.from_dict(self.config["model"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{str(self.checkpoint_path)!r} has no valid model configuration: {error}") from None


def load_trained_model(source: str | os.PathLike, which: str | None = None,
                       tokenizer_dir: str | os.PathLike | None = None) -> TrainedModel:
    """The checkpoint (or weights file) of `source`: a run directory (its newest checkpoint, or `which`) or a file.

    The tokenizer is `tokenizer_dir`, else the run's (`RUN/tokenizer`, also for RUN/checkpoints/FILE.pt).
    """
    from cs336_train.checkpoint import read_checkpoint
    from cs336_train.run_directory import TOKENIZER_DIR, RunDirectory

    source = Path(source)
    if source.is_dir():
        path, run_dir = RunDirectory(source).choose(which), source
    elif source.is_file():
        path, run_dir = source, source.parent.parent
    else:
        raise CheckpointError(f"{str(source)!r} does not exist; give a run directory or a checkpoint file (.pt)")
    state = read_checkpoint(path)
    if "config" not in state:
        raise CheckpointError(f"{str(path)!r} has no saved configuration (it is a bare hook checkpoint); export a "
                              "checkpoint written by `cs336-train fit`")
    if tokenizer_dir is None and (run_dir / TOKENIZER_DIR).is_dir():
        tokenizer_dir = run_dir / TOKENIZER_DIR
    progress = state.get("progress") or {}
    valid_loss = state.get("valid_loss")
    if valid_loss is None and state.get("best_val_loss") not in (None, float("inf")):
        valid_loss = state["best_val_loss"]
    return TrainedModel(
        checkpoint_path=path,
        weights={key.removeprefix("_orig_mod."): value for key, value in state["model"].items()},
        config=state["config"], iteration=state["iteration"], tokens=progress.get("tokens"), valid_loss=valid_loss,
        tokenizer_fingerprint=state.get("tokenizer_fingerprint"),
        tokenizer_dir=Path(tokenizer_dir) if tokenizer_dir is not None else None,
    )


def load_tokenizer(model: TrainedModel) -> "Tokenizer":
    """The model's tokenizer, checked against the fingerprint its checkpoint recorded."""
    from cs336_bpe import BPEInputError, Tokenizer

    if model.tokenizer_dir is None:
        raise DataError(f"no tokenizer found for {str(model.checkpoint_path)!r}; pass the one it was trained with: "
                        "--tokenizer RUN/tokenizer")
    try:
        tokenizer = Tokenizer.load(model.tokenizer_dir)
    except BPEInputError as error:
        raise DataError(f"cannot load the tokenizer in {str(model.tokenizer_dir)!r}: {error}") from None
    expected = model.tokenizer_fingerprint
    if expected is not None and not tokenizer.has_fingerprint(expected):
        raise DataError(f"the tokenizer in {str(model.tokenizer_dir)!r} (fingerprint {tokenizer.fingerprint()}) is "
                        f"not the one {str(model.checkpoint_path)!r} was trained with ({expected}); pass the run's own "
                        "tokenizer with --tokenizer")
    if tokenizer.vocab_size > model.model_config.vocab_size:
        raise DataError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                        f"{model.model_config.vocab_size}; pass the tokenizer the model was trained with")
    return tokenizer


# ---- the Llama mapping -------------------------------------------------------------------------------------------

def check_llama_compatible(model_config: "ModelConfig") -> None:
    """Raise ExportError, in one line, naming every setting a LlamaConfig cannot express."""
    problems = [f"model.{name} = {getattr(model_config, name)!r} ({reason})"
                for name, (llama_value, reason) in LLAMA_SETTINGS.items()
                if getattr(model_config, name) != llama_value]
    if problems:
        raise ExportError(f"cannot export as a Hugging Face Llama model: {'; '.join(problems)}; export the weights "
                          "with --format safetensors instead")


def interleaved_to_halves(weight: "Tensor", num_heads: int) -> "Tensor":
    """Reorder the output rows of a query or key projection from our RoPE pairing to HF Llama's.

    Within each head, our rows (0, 1), (2, 3), ... are rotated together; HF rotates rows (k, k + d/2). Putting
    each head's even rows first and its odd rows after makes row k + d/2 the partner of row k.
    (d_model, d_model) -> (d_model, d_model); for one head of size 4, rows [0, 1, 2, 3] -> [0, 2, 1, 3].
    """
    from einops import rearrange

    return rearrange(weight, "(heads pair two) d_in -> (heads two pair) d_in", heads=num_heads, two=2)


def hf_state_dict(weights: dict[str, "Tensor"], model_config: "ModelConfig") -> dict[str, "Tensor"]:
    """Our state dict under `LlamaForCausalLM`'s names (tied embeddings: no separate lm_head.weight)."""
    check_llama_compatible(model_config)
    heads = model_config.num_heads
    hf = {"model.embed_tokens.weight": weights["token_embeddings.weight"],
          "model.norm.weight": weights["ln_final.weight"]}
    if not model_config.tie_embeddings:
        hf["lm_head.weight"] = weights["lm_head.weight"]
    for layer in range(model_config.num_layers):
        ours, theirs = f"layers.{layer}.", f"model.layers.{layer}."
        hf.update({
            f"{theirs}self_attn.q_proj.weight": interleaved_to_halves(weights[f"{ours}attn.q_proj.weight"], heads),
            f"{theirs}self_attn.k_proj.weight": interleaved_to_halves(weights[f"{ours}attn.k_proj.weight"], heads),
            f"{theirs}self_attn.v_proj.weight": weights[f"{ours}attn.v_proj.weight"],
            f"{theirs}self_attn.o_proj.weight": weights[f"{ours}attn.output_proj.weight"],
            f"{theirs}input_layernorm.weight": weights[f"{ours}ln1.weight"],
            f"{theirs}post_attention_layernorm.weight": weights[f"{ours}ln2.weight"],
            # SwiGLU: w2(silu(w1 x) * w3 x) is Llama's down(silu(gate x) * up x).
            f"{theirs}mlp.gate_proj.weight": weights[f"{ours}ffn.w1.weight"],
            f"{theirs}mlp.up_proj.weight": weights[f"{ours}ffn.w3.weight"],
            f"{theirs}mlp.down_proj.weight": weights[f"{ours}ffn.w2.weight"],
        })
    return {name: tensor.detach().to("cpu").contiguous() for name, tensor in hf.items()}


def llama_config(model_config: "ModelConfig", special_token_ids: dict[str, int], dtype: str) -> dict:
    """config.json: a LlamaConfig with our sizes (plain JSON: exporting does not need transformers)."""
    end_of_text = special_token_ids.get(END_OF_TEXT)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": model_config.vocab_size,
        "hidden_size": model_config.d_model,
        "intermediate_size": model_config.d_ff,
        "num_hidden_layers": model_config.num_layers,
        "num_attention_heads": model_config.num_heads,
        "num_key_value_heads": model_config.num_heads,  # no grouped-query attention
        "head_dim": model_config.d_head,
        "hidden_act": "silu",
        "max_position_embeddings": model_config.context_length,
        "rms_norm_eps": model_config.norm_eps,
        # transformers 4 reads rope_theta, transformers 5 rope_parameters (and converts the older key too).
        "rope_theta": model_config.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": model_config.rope_theta},
        "tie_word_embeddings": model_config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": end_of_text,
        "eos_token_id": end_of_text,
        "pad_token_id": None,
        "use_cache": True,
        "torch_dtype": dtype,
    }


def generation_config(model_config: "ModelConfig", special_token_ids: dict[str, int]) -> dict:
    end_of_text = special_token_ids.get(END_OF_TEXT)
    # At most half the context, leaving the rest for the prompt: the model never saw positions past its context.
    return {"bos_token_id": end_of_text, "eos_token_id": end_of_text, "pad_token_id": end_of_text,
            "max_new_tokens": max(1, model_config.context_length // 2), **GENERATION_DEFAULTS}


# ---- the model card ----------------------------------------------------------------------------------------------

def model_card(model: TrainedModel, tokenizer: "Tokenizer", num_parameters: int, command: str) -> str:
    """README.md: what the model is, what it was trained on, how well it does and how it was made."""
    from cs336_train.config import TrainConfig

    config, model_config = model.config, model.model_config
    run = config.get("run", {})
    norm = "RMSNorm" if model_config.norm == "rmsnorm" else model_config.norm
    architecture = (f"LlamaForCausalLM: d_model {model_config.d_model}, {model_config.num_layers} layers, "
                    f"{model_config.num_heads} heads, d_ff {model_config.d_ff}, {norm} (pre-norm, eps "
                    f"{model_config.norm_eps:g}), RoPE (theta {model_config.rope_theta:g}), SwiGLU, "
                    f"{'tied' if model_config.tie_embeddings else 'untied'} input and output embeddings")
    tokens = f"{model.tokens:,}" if model.tokens is not None else "unknown"
    loss = "not measured"
    if model.valid_loss is not None:
        loss = f"{model.valid_loss:.4f} (perplexity {math.exp(min(model.valid_loss, 700.0)):.2f})"
    rows = [
        ("architecture", architecture),
        ("parameters", f"{num_parameters:,}"),
        ("context length", f"{model_config.context_length} tokens"),
        ("tokenizer", f"byte-level BPE, {tokenizer.vocab_size:,} tokens, special tokens "
                      f"{', '.join(f'`{token}`' for token in tokenizer.special_tokens) or 'none'}"),
        ("training data", _data_description(config.get("data", {}).get("train"))),
        ("validation data", _data_description(config.get("data", {}).get("valid"))),
        ("training", f"{model.iteration:,} steps of {run.get('batch_size', '?')} sequences, {tokens} tokens, "
                     f"AdamW (peak lr {config.get('optimizer', {}).get('lr', '?')}), {run.get('precision', '?')}"),
        ("validation loss", loss),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    try:
        training_config = f"```toml\n{TrainConfig.from_dict(config).to_toml().strip()}\n```"
    except ConfigError:  # a run saved by an older cs336-train, with settings this one no longer has
        training_config = f"```json\n{json.dumps(config, indent=2)}\n```"
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags:
- cs336
- llama
- from-scratch
---

# A language model trained from scratch with cs336-train

A small Llama-architecture language model and its byte-level BPE tokenizer, both trained from scratch with the
CS336 Assignment 1 packages (`cs336-bpe`, `cs336-nn`, `cs336-train`), then exported to this standard format.

| | |
|---|---|
{table}

## Use it

```python
from transformers import pipeline

generator = pipeline("text-generation", model="path/to/this/directory")
print(generator("Once upon a time", max_new_tokens=100)[0]["generated_text"])
```

`generation_config.json` samples at temperature {GENERATION_DEFAULTS['temperature']} and top-p \
{GENERATION_DEFAULTS['top_p']}, and stops at `{END_OF_TEXT}`; pass `do_sample=False` for greedy decoding.

## How it was made

Trained with `cs336-train fit config.toml` on this configuration (checkpoint `{model.checkpoint_path.name}`, \
step {model.iteration:,}):

{training_config}

Exported with:

```sh
{command}
```
"""


def _data_description(token_file: str | None) -> str:
    """A token file and, when its metadata is beside it, the text it was encoded from."""
    if not token_file:
        return "not recorded"
    description = f"`{token_file}`"
    try:
        from cs336_bpe import read_token_metadata

        metadata = read_token_metadata(token_file)
        description += f": {metadata['num_tokens']:,} tokens of `{Path(metadata['source']).name}`"
    except (OSError, ValueError, KeyError):  # the file is not on this machine any more: the path alone
        pass
    return description


# ---- writing the exports -----------------------------------------------------------------------------------------

def export_hf(model: TrainedModel, out_dir: str | os.PathLike, command: str = "") -> list[Path]:
    """Write the Hugging Face model directory (see the module docstring); returns the files written."""
    from safetensors.torch import save

    from cs336_bpe import BPEInputError, atomic_write, ensure_writable_directory

    model_config = model.model_config
    check_llama_compatible(model_config)
    tokenizer = load_tokenizer(model)
    weights = hf_state_dict(model.weights, model_config)
    try:
        out_dir = ensure_writable_directory(out_dir)
    except BPEInputError as error:
        raise ExportError(str(error)) from None
    dtype = str(weights["model.embed_tokens.weight"].dtype).removeprefix("torch.")
    num_parameters = sum(tensor.numel() for tensor in weights.values())
    try:  # first: the one step that can still refuse (a special token spelled like another token)
        tokenizer.save(out_dir, format="hf", model_max_length=model_config.context_length)
    except BPEInputError as error:
        raise ExportError(f"cannot export the tokenizer: {error}") from None
    with atomic_write(out_dir / "model.safetensors", "wb") as handle:
        handle.write(save(weights, metadata={"format": "pt"}))  # transformers refuses files without "format"
    documents = {"config.json": llama_config(model_config, tokenizer.special_token_ids, dtype),
                 "generation_config.json": generation_config(model_config, tokenizer.special_token_ids)}
    for name, document in documents.items():
        with atomic_write(out_dir / name, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
    with atomic_write(out_dir / "README.md", "w", encoding="utf-8") as handle:
        handle.write(model_card(model, tokenizer, num_parameters, command))
    return [out_dir / name for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                                        "generation_config.json", "README.md")]


def export_safetensors(model: TrainedModel, out_file: str | os.PathLike) -> Path:
    """Write our weights and configuration to one ``.safetensors`` file (`checkpoint.save_weights`)."""
    from cs336_train.checkpoint import WEIGHTS_SUFFIX, save_weights

    out_file = Path(out_file)
    if out_file.suffix != WEIGHTS_SUFFIX:
        raise ExportError(f"--format safetensors writes one file: give a name ending in {WEIGHTS_SUFFIX}, "
                          f"not {str(out_file)!r}")
    state = {"model": model.weights, "config": model.config, "iteration": model.iteration,
             "progress": {"tokens": model.tokens} if model.tokens is not None else {},
             "valid_loss": model.valid_loss, "tokenizer_fingerprint": model.tokenizer_fingerprint}
    return save_weights(state, out_file)


# ---- the command -------------------------------------------------------------------------------------------------

@click.command(name="export")
@click.argument("source", metavar="RUN_DIR|CHECKPOINT", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--format", "export_format", type=click.Choice(FORMATS), default="hf", show_default=True,
              help="hf: a Hugging Face Llama model directory (transformers loads it with no custom code); "
                   "safetensors: the weights alone, under our names, in one OUT.safetensors file.")
@click.option("--from", "which", metavar="STEP|best", default=None,
              help="For a run directory: which checkpoint (default: the newest).")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(path_type=Path), default=None,
              help="The tokenizer the model was trained with (default: the run's tokenizer/).")
def export_command(source: Path, out: Path, export_format: str, which: str | None, tokenizer_dir: Path | None):
    """Export a trained model for other tools: a Hugging Face directory (OUT) or a .safetensors file.

    \b
    cs336-train export runs/first exported/first            # then, in Python:
        transformers.pipeline("text-generation", model="exported/first")
    cs336-train export runs/first --format safetensors first.safetensors
    """
    command = ["cs336-train", "export", str(source), "--format", export_format, str(out)]
    command += ["--from", which] if which else []
    command += ["--tokenizer", str(tokenizer_dir)] if tokenizer_dir else []
    try:
        model = load_trained_model(source, which, tokenizer_dir)
        if export_format == "hf":
            export_hf(model, out, command=shlex.join(command))
            click.echo(f"wrote a Hugging Face model to {out}/ (step {model.iteration:,}): load it with "
                       f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})", err=True)
        else:
            export_safetensors(model, out)
            click.echo(f"wrote the weights of step {model.iteration:,} to {out}", err=True)
    except TrainError as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:  # a full disk, a read-only directory
        raise click.ClickException(f"cannot write {str(out)!r}: {error.strerror or error}") from None
    except KeyboardInterrupt:
        click.echo("cs336-train: interrupted", err=True)
        raise SystemExit(130) from None
