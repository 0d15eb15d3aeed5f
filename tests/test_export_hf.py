"""`cs336-train export`: our trained model in HF transformers, and as a safetensors weights file.

The references are independent: transformers' own LlamaForCausalLM, rotary embedding and text-generation pipeline
(built locally from the exported directory, nothing downloaded), compared with our TransformerLM in float32.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cs336_bpe import Tokenizer
from cs336_nn import ModelConfig, RotaryPositionalEmbedding, TransformerLM
from cs336_train import CheckpointError, RunDirectory, TrainConfig, read_checkpoint, train, write_checkpoint
from cs336_train.evaluation import evaluate_checkpoint
from cs336_train.export import export_command, interleaved_to_halves
from tests.train_helpers import tiny_config_values

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

pytestmark = pytest.mark.usefixtures("restore_torch_threads")

PROMPTS = ["Tom saw the big red ball.", "Lily was very happy and then she ran", "the", "sad dog sat on a mat with"]
EOT = "<|endoftext|>"


def _export(*arguments) -> "CliRunner.invoke":
    return CliRunner().invoke(export_command, [str(argument) for argument in arguments])


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    return lines[0]


def _config_values(token_files: dict, **model) -> dict:
    values = tiny_config_values(token_files)
    # rope_theta and norm_eps differ from HF's defaults (10,000 and 1e-6): a mapping that dropped either would show.
    values["model"].update({"rope_theta": 1000.0, "norm_eps": 1e-5, **model})
    return values


@pytest.fixture(scope="module")
def trained_run(token_files, tmp_path_factory) -> Path:
    """A tiny Llama-shaped model trained for 40 steps by `cs336-train fit`'s own loop."""
    config = TrainConfig.from_dict(_config_values(token_files), ["run.steps=40", "run.eval_interval=40"])
    run_dir = tmp_path_factory.mktemp("export") / "run"
    threads = torch.get_num_threads()
    try:
        train(config, run_dir)
    finally:
        torch.set_num_threads(threads)
    return run_dir


@pytest.fixture(scope="module")
def hf_dir(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "model"
    result = _export(trained_run, "--format", "hf", out)
    assert result.exit_code == 0, result.output
    return out


def _our_model(run_dir: Path) -> tuple[TransformerLM, Tokenizer]:
    from cs336_sample import load_model_and_tokenizer

    model, tokenizer, _ = load_model_and_tokenizer(run_dir)
    return model.float(), tokenizer


def _untrained_run(tmp_path: Path, token_files: dict, **model) -> Path:
    """A run directory holding one checkpoint of a freshly initialised model with these model settings."""
    config = TrainConfig.from_dict(_config_values(token_files, **model))
    torch.manual_seed(0)
    network = TransformerLM(config.model)
    for name, parameter in network.named_parameters():  # norms start at 1: make them matter for the comparison
        if name.endswith("ln1.weight") or name.endswith("ln2.weight") or name == "ln_final.weight":
            parameter.data.uniform_(0.5, 1.5)
    run_dir = tmp_path / "run"
    shutil.copytree(token_files["tokenizer"], run_dir / "tokenizer")
    write_checkpoint({"model": network.state_dict(), "config": config.to_dict(), "iteration": 0,
                      "tokenizer_fingerprint": Tokenizer.load(token_files["tokenizer"]).fingerprint()},
                     run_dir / "checkpoints" / "step_00000000.pt")
    return run_dir


def _greedy(model: TransformerLM, prompt_ids: list[int], max_new_tokens: int, eos_id: int) -> list[int]:
    """Our greedy decoding, written out: append the argmax until max_new_tokens or <|endoftext|>."""
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            next_id = int(model(torch.tensor([ids]))[0, -1].argmax())
            ids.append(next_id)
            if next_id == eos_id:
                break
    return ids[len(prompt_ids):]


# ---- the RoPE permutation, against HF's own rotary embedding ------------------------------------------------------

def test_reordered_projections_make_hf_rope_rotate_our_pairs():
    d_model, num_heads, seq = 32, 4, 12
    d_head = d_model // num_heads
    config = transformers.LlamaConfig(hidden_size=d_model, num_attention_heads=num_heads, head_dim=d_head,
                                      max_position_embeddings=seq, rope_theta=500.0)
    torch.manual_seed(1)
    x = torch.randn(2, seq, d_model)
    q_weight, k_weight = torch.randn(d_model, d_model), torch.randn(d_model, d_model)
    positions = torch.arange(seq)

    def heads(t):  # (batch, seq, d_model) -> (batch, heads, seq, d_head)
        return t.unflatten(-1, (num_heads, d_head)).transpose(1, 2)

    rope = RotaryPositionalEmbedding(500.0, d_head, seq)
    ours_q, ours_k = rope(heads(x @ q_weight.T), positions), rope(heads(x @ k_weight.T), positions)
    cos, sin = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)(x, positions[None])
    hf_q, hf_k = transformers.models.llama.modeling_llama.apply_rotary_pos_emb(
        heads(x @ interleaved_to_halves(q_weight, num_heads).T),
        heads(x @ interleaved_to_halves(k_weight, num_heads).T), cos, sin)
    # Each HF head holds our head's coordinates, even ones first: the same rotated numbers, reordered ...
    even_then_odd = torch.cat((torch.arange(0, d_head, 2), torch.arange(1, d_head, 2)))
    torch.testing.assert_close(hf_q, ours_q[..., even_then_odd], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hf_k, ours_k[..., even_then_odd], rtol=1e-5, atol=1e-5)
    # ... so the attention scores are the same.
    torch.testing.assert_close(hf_q @ hf_k.transpose(-1, -2), ours_q @ ours_k.transpose(-1, -2), rtol=1e-5, atol=1e-4)


def test_without_the_reordering_hf_scores_differ():
    """The test above can fail: HF's rotation of unpermuted projections is not ours."""
    d_model, num_heads, seq = 16, 2, 6
    config = transformers.LlamaConfig(hidden_size=d_model, num_attention_heads=num_heads, head_dim=8,
                                      max_position_embeddings=seq)
    torch.manual_seed(2)
    q, k = torch.randn(1, num_heads, seq, 8), torch.randn(1, num_heads, seq, 8)
    positions = torch.arange(seq)
    rope = RotaryPositionalEmbedding(10_000.0, 8, seq)
    cos, sin = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)(q, positions[None])
    hf_q, hf_k = transformers.models.llama.modeling_llama.apply_rotary_pos_emb(q, k, cos, sin)
    ours = rope(q, positions) @ rope(k, positions).transpose(-1, -2)
    assert not torch.allclose(hf_q @ hf_k.transpose(-1, -2), ours, atol=1e-3)


# ---- the HF directory ---------------------------------------------------------------------------------------------

def test_hf_directory_holds_what_transformers_needs(hf_dir, trained_run):
    names = {path.name for path in hf_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "README.md"} <= names
    config = transformers.AutoConfig.from_pretrained(hf_dir)
    assert config.model_type == "llama"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size,
            config.vocab_size, config.max_position_embeddings) == (32, 2, 4, 64, 320, 16)
    rope_theta = getattr(config, "rope_parameters", None) or {"rope_theta": config.rope_theta}
    assert rope_theta["rope_theta"] == 1000.0 and config.rms_norm_eps == 1e-5
    assert config.tie_word_embeddings is False and config.eos_token_id == 0 and config.bos_token_id == 0


def test_hf_logits_equal_ours(hf_dir, trained_run):
    model, tokenizer = _our_model(trained_run)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    assert type(hf_model).__name__ == "LlamaForCausalLM"
    for prompt in PROMPTS + [EOT + "Tom ran" + EOT + "the"]:
        ids = torch.tensor([tokenizer.encode(prompt)[:16]])
        with torch.no_grad():
            ours, theirs = model(ids), hf_model(ids).logits
        torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
    batch = torch.randint(0, 320, (3, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(batch).logits, model(batch), rtol=1e-4, atol=1e-5)


def test_hf_greedy_continuation_is_ours(hf_dir, trained_run):
    model, tokenizer = _our_model(trained_run)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    for prompt in PROMPTS:
        assert hf_tokenizer(prompt)["input_ids"] == tokenizer.encode(prompt)  # no BOS: our model never saw one first
        prompt_ids = tokenizer.encode(prompt)[:8]  # leave 8 of the 16 positions to generate
        ours = _greedy(model, prompt_ids, 16 - len(prompt_ids), eos_id=0)
        generated = hf_model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids)),
                                      max_new_tokens=16 - len(prompt_ids), do_sample=False)
        assert generated[0, len(prompt_ids):].tolist() == ours, prompt


def test_hf_pipeline_text_generation(hf_dir, trained_run):
    model, tokenizer = _our_model(trained_run)
    generator = transformers.pipeline("text-generation", model=str(hf_dir), device="cpu")
    prompt = "Tom saw the big"
    prompt_ids = tokenizer.encode(prompt)
    continuation = [i for i in _greedy(model, prompt_ids, 16 - len(prompt_ids), eos_id=0) if i != 0]
    result = generator(prompt, max_new_tokens=16 - len(prompt_ids), do_sample=False)
    assert result[0]["generated_text"] == prompt + tokenizer.decode(continuation)


def test_hf_tokenizer_gives_our_ids(hf_dir, trained_run, fixtures_dir):
    tokenizer = Tokenizer.load(trained_run / "tokenizer")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert hf_tokenizer.eos_token == EOT and hf_tokenizer.bos_token == EOT and hf_tokenizer.model_max_length == 16
    for name in ("tinystories_sample.txt", "german.txt", "address.txt", "special_token_trailing_newlines.txt"):
        text = (fixtures_dir / name).read_text(encoding="utf-8")
        ids = tokenizer.encode(text)
        assert hf_tokenizer(text)["input_ids"] == ids, name
        assert hf_tokenizer.decode(ids) == tokenizer.decode(ids), name


def test_model_card_describes_the_run(hf_dir, trained_run):
    card = (hf_dir / "README.md").read_text(encoding="utf-8")
    state = read_checkpoint(RunDirectory(trained_run).choose())
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\n")
    assert f"{state['valid_loss']:.4f}" in card
    assert f"{state['progress']['tokens']:,} tokens" in card
    assert "train.txt" in card  # the text the training tokens were encoded from
    assert f"cs336-train export {trained_run} --format hf {hf_dir}" in card
    assert 'pipeline("text-generation"' in card
    assert "rope_theta = 1000.0" in card  # the training configuration


def test_tied_embeddings_export_and_match(tmp_path, token_files):
    run_dir = _untrained_run(tmp_path, token_files, tie_embeddings=True)
    result = _export(run_dir, "--format", "hf", tmp_path / "hf")
    assert result.exit_code == 0, result.output
    with safetensors_torch.safe_open(tmp_path / "hf" / "model.safetensors", "pt") as handle:
        assert "lm_head.weight" not in handle.keys()  # noqa: SIM118 (not iterable)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert hf_model.config.tie_word_embeddings
    model, _ = _our_model(run_dir)
    batch = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(batch).logits, model(batch), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("setting", "value"), [
    ("norm_position", "post"), ("norm", "layernorm"), ("norm", "none"), ("positions", "nope"),
    ("positions", "sinusoidal"), ("positions", "learned"), ("ffn", "silu"), ("ffn", "relu"),
])
def test_a_configuration_llama_cannot_express_is_refused(tmp_path, token_files, setting, value):
    extra = {"d_ff": 128} if setting == "ffn" else {}
    run_dir = _untrained_run(tmp_path, token_files, **{setting: value}, **extra)
    line = _one_line_error(_export(run_dir, "--format", "hf", tmp_path / "hf"))
    assert f"model.{setting} = {value!r}" in line and "--format safetensors" in line
    assert not (tmp_path / "hf").exists()
    assert _export(run_dir, "--format", "safetensors", tmp_path / "w.safetensors").exit_code == 0


def test_hf_export_refuses_another_runs_tokenizer(tmp_path, token_files):
    run_dir = _untrained_run(tmp_path, token_files)
    other = Tokenizer({i: bytes([i]) for i in range(256)}, [], [EOT])
    other.save(tmp_path / "other")
    line = _one_line_error(_export(run_dir, "--tokenizer", tmp_path / "other", tmp_path / "hf"))
    assert "is not the one" in line and "--tokenizer" in line


# ---- the safetensors weights file ---------------------------------------------------------------------------------

def test_safetensors_round_trip_restores_identical_weights(trained_run, tmp_path):
    out = tmp_path / "first.safetensors"
    result = _export(trained_run, "--format", "safetensors", out)
    assert result.exit_code == 0, result.output
    original = read_checkpoint(RunDirectory(trained_run).choose())
    restored = read_checkpoint(out)
    assert restored["model"].keys() == original["model"].keys()
    for key, tensor in original["model"].items():
        assert restored["model"][key].dtype == tensor.dtype and torch.equal(restored["model"][key], tensor), key
    assert restored["config"] == json.loads(json.dumps(original["config"]))
    assert restored["iteration"] == original["iteration"]
    assert restored["tokenizer_fingerprint"] == original["tokenizer_fingerprint"]
    # safetensors only: a plain reader sees our names and tensors, no pickle involved.
    plain = safetensors_torch.load_file(out)
    assert torch.equal(plain["layers.0.attn.q_proj.weight"], original["model"]["layers.0.attn.q_proj.weight"])


def test_sample_and_eval_load_the_weights_file(trained_run, tmp_path, token_files):
    from cs336_sample import SampleError, load_model_and_tokenizer

    out = tmp_path / "first.safetensors"
    assert _export(trained_run, "--format", "safetensors", out).exit_code == 0
    model, _ = _our_model(trained_run)
    loaded, tokenizer, _ = load_model_and_tokenizer(out, tokenizer_dir=trained_run / "tokenizer")
    ids = torch.tensor([tokenizer.encode("Tom saw the big red ball.")])
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    with pytest.raises(SampleError, match="--tokenizer"):
        load_model_and_tokenizer(out)
    from_checkpoint = evaluate_checkpoint(trained_run, token_files["valid"], device="cpu")
    from_weights = evaluate_checkpoint(out, token_files["valid"], device="cpu")
    assert from_weights["loss"] == from_checkpoint["loss"]


def test_tied_weights_file_round_trips(tmp_path, token_files):
    run_dir = _untrained_run(tmp_path, token_files, tie_embeddings=True)
    out = tmp_path / "tied.safetensors"
    assert _export(run_dir, "--format", "safetensors", out).exit_code == 0
    restored = read_checkpoint(out)
    model = TransformerLM(ModelConfig.from_dict(restored["config"]["model"]))
    model.load_state_dict(restored["model"])
    assert model.lm_head.weight is model.token_embeddings.weight or torch.equal(model.lm_head.weight,
                                                                               model.token_embeddings.weight)


def test_a_damaged_weights_file_is_refused(tmp_path, token_files):
    run_dir = _untrained_run(tmp_path, token_files)
    out = tmp_path / "w.safetensors"
    assert _export(run_dir, "--format", "safetensors", out).exit_code == 0
    data = bytearray(out.read_bytes())
    data[-5] ^= 0x40  # a flipped bit in the last tensor's bytes
    out.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged"):
        read_checkpoint(out)


def test_safetensors_without_our_metadata_is_refused(tmp_path):
    path = tmp_path / "foreign.safetensors"
    safetensors_torch.save_file({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="cs336-train export --format safetensors"):
        read_checkpoint(path)


def test_safetensors_output_must_be_a_safetensors_file(tmp_path, token_files):
    run_dir = _untrained_run(tmp_path, token_files)
    line = _one_line_error(_export(run_dir, "--format", "safetensors", tmp_path / "weights.pt"))
    assert ".safetensors" in line


def test_a_missing_source_is_one_line(tmp_path):
    line = _one_line_error(_export(tmp_path / "nothing", tmp_path / "hf"))
    assert "does not exist" in line
