"""Loading checkpoints and the `cs336-sample` CLI, on tiny checkpoints written here in the trainer's format."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cs336_bpe import Tokenizer, train_bpe
from cs336_nn import ModelConfig, TransformerLM
from cs336_sample import SampleError, generate, load_model_and_tokenizer
from cs336_sample.cli import main

EOT = "<|endoftext|>"
TEXT = ("Once upon a time there was a little dog. The dog liked to run. " * 20 + EOT) * 3


def save_checkpoint(path: Path, lm: TransformerLM, tokenizer: Tokenizer, iteration: int, **overrides) -> Path:
    """A checkpoint exactly as the trainer writes it (see cs336_sample.loading); `overrides` replace entries."""
    checkpoint = {
        "format": "cs336-checkpoint", "format_version": 1, "iteration": iteration, "model": lm.state_dict(),
        "config": {"model": lm.config.to_dict(), "training": {"lr": 1e-3}},
        "tokenizer_fingerprint": tokenizer.fingerprint(), "optimizer": {"state": {}}, "rng": {"torch": 1},
        "data_state": {"position": 0}, "best_val_loss": 2.5,
    } | overrides
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def tiny_model(seed: int, context_length: int = 32, vocab_size: int = 300) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(ModelConfig(vocab_size=vocab_size, context_length=context_length, d_model=16, num_layers=1,
                                     num_heads=2))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    corpus = tmp_path_factory.mktemp("corpus") / "text.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    vocab, merges = train_bpe(corpus, vocab_size=300, special_tokens=[EOT])
    return Tokenizer(vocab, merges, special_tokens=[EOT])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tokenizer) -> Path:
    """RUN/checkpoints/step_00000002.pt (older, context 16), step_00000010.pt (newest), best.pt; RUN/tokenizer."""
    run = tmp_path_factory.mktemp("run")
    tokenizer.save(run / "tokenizer")
    save_checkpoint(run / "checkpoints" / "step_00000002.pt", tiny_model(1, context_length=16), tokenizer, 2)
    save_checkpoint(run / "checkpoints" / "step_00000010.pt", tiny_model(2), tokenizer, 10)
    save_checkpoint(run / "checkpoints" / "best.pt", tiny_model(3), tokenizer, 8)
    return run


def invoke(*arguments, input=None):
    return CliRunner().invoke(main, [str(argument) for argument in arguments], input=input)


# ------------------------------------------------------------------------------------------------ loading
def test_a_run_directory_loads_its_newest_checkpoint_and_tokenizer(run_dir, tokenizer):
    model, loaded_tokenizer, config = load_model_and_tokenizer(run_dir)
    assert model.config.context_length == 32 and config["training"] == {"lr": 1e-3}
    for name, value in tiny_model(2).state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert loaded_tokenizer.fingerprint() == tokenizer.fingerprint()


def test_a_checkpoint_file_finds_the_runs_tokenizer_or_takes_one(run_dir, tmp_path, tokenizer):
    model, _, _ = load_model_and_tokenizer(run_dir / "checkpoints" / "step_00000002.pt")
    assert model.config.context_length == 16
    elsewhere = save_checkpoint(tmp_path / "loose.pt", tiny_model(4), tokenizer, 1)
    with pytest.raises(SampleError, match="no tokenizer at"):
        load_model_and_tokenizer(elsewhere)
    model, _, _ = load_model_and_tokenizer(elsewhere, tokenizer_dir=run_dir / "tokenizer")
    assert torch.equal(model.lm_head.weight, tiny_model(4).lm_head.weight)


def test_weights_saved_from_a_compiled_model_load(tmp_path, run_dir, tokenizer):
    model = tiny_model(5)
    prefixed = {f"_orig_mod.{name}": value for name, value in model.state_dict().items()}
    path = save_checkpoint(tmp_path / "c.pt", model, tokenizer, 1, model=prefixed)
    loaded, _, _ = load_model_and_tokenizer(path, tokenizer_dir=run_dir / "tokenizer")
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_streams_the_same_text_as_generate(run_dir):
    result = invoke(run_dir, "Once upon", "--max-tokens", 12, "--temperature", 0.9, "--top-p", 0.9, "--seed", 3,
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    model, tokenizer, _ = load_model_and_tokenizer(run_dir)
    expected = generate(model, tokenizer, "Once upon", max_new_tokens=12, temperature=0.9, top_p=0.9, seed=3)
    assert result.stdout == "Once upon" + expected.text + "\n"
    assert "step_00000010.pt" in result.stderr
    assert f"[{len(expected.token_ids)} tokens in" in result.stderr and "tokens/s" in result.stderr
    assert "seed 3]" in result.stderr


def test_cli_reads_the_prompt_from_stdin_and_draws_several_samples(run_dir):
    result = invoke(run_dir, "--max-tokens", 6, "--seed", 10, "--num-samples", 2, "--top-k", 5, input="The dog\n")
    assert result.exit_code == 0, result.output
    model, tokenizer, _ = load_model_and_tokenizer(run_dir)
    samples = generate(model, tokenizer, ["The dog", "The dog"], max_new_tokens=6, seed=10, top_k=5)
    assert result.stdout == "".join(f"--- sample {index + 1} of 2 (seed {10 + index}) ---\nThe dog{sample.text}\n"
                                    for index, sample in enumerate(samples))
    assert "2 samples" in result.stderr


def test_cli_greedy_output_is_the_same_with_and_without_the_cache(run_dir):
    with_cache = invoke(run_dir, "Once", "--max-tokens", 20, "--temperature", 0)
    without = invoke(run_dir, "Once", "--max-tokens", 20, "--temperature", 0, "--no-kv-cache")
    assert with_cache.exit_code == without.exit_code == 0
    assert with_cache.stdout == without.stdout


def test_cli_says_when_the_context_is_full(tmp_path):
    # A tokenizer without <|endoftext|>, so no sample can stop early by chance: it must run into the context.
    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT.replace(EOT, " "), encoding="utf-8")
    tokenizer = Tokenizer(*train_bpe(corpus, vocab_size=300, special_tokens=[]))
    tokenizer.save(tmp_path / "run" / "tokenizer")
    save_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000002.pt", tiny_model(1, context_length=16),
                    tokenizer, 2)
    result = invoke(tmp_path / "run", "Once upon a time", "--max-tokens", 100)
    assert result.exit_code == 0, result.output
    assert "context of 16 tokens is full" in result.stderr


def test_cli_help():
    result = invoke("--help")
    assert result.exit_code == 0
    for option in ("--max-tokens", "--temperature", "--top-p", "--top-k", "--seed", "--num-samples", "--device",
                   "--tokenizer"):
        assert option in result.output


def test_the_installed_script_runs():
    script = shutil.which("cs336-sample", path=str(Path(sys.executable).parent))
    assert script is not None, "cs336-sample is not installed in this environment; run `uv sync`"
    completed = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0 and "--top-p" in completed.stdout


def write_bad_checkpoints(run_dir: Path, tmp_path: Path, tokenizer: Tokenizer) -> dict[str, list]:
    """name -> CLI arguments that must fail."""
    model = tiny_model(6)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    plain = tmp_path / "plain.pt"
    torch.save({"weights": 1}, plain)
    other_tokenizer = Tokenizer(tokenizer.vocab, tokenizer.merges[:-5], special_tokens=[EOT])
    big_tokenizer_dir = tmp_path / "big_tokenizer"
    Tokenizer({**{byte: bytes([byte]) for byte in range(256)}, 400: b"zz"}, [(b"z", b"z")],
              special_tokens=[EOT]).save(big_tokenizer_dir)
    tokenizer_dir = run_dir / "tokenizer"
    return {
        "missing path": [tmp_path / "nope", "hi"],
        "run without checkpoints": [tmp_path, "hi"],
        "garbage file": [garbage, "hi", "--tokenizer", tokenizer_dir],
        "not our format": [plain, "hi", "--tokenizer", tokenizer_dir],
        "newer format": [save_checkpoint(tmp_path / "v99.pt", model, tokenizer, 1, format_version=99), "hi",
                         "--tokenizer", tokenizer_dir],
        "missing tokenizer": [save_checkpoint(tmp_path / "lonely" / "c.pt", model, tokenizer, 1), "hi"],
        "fingerprint mismatch": [save_checkpoint(tmp_path / "fp.pt", model, other_tokenizer, 1), "hi",
                                 "--tokenizer", tokenizer_dir],
        "tokenizer vocab too large": [save_checkpoint(tmp_path / "v.pt", model, tokenizer, 1,
                                                      tokenizer_fingerprint=None), "hi",
                                      "--tokenizer", big_tokenizer_dir],
        "weights do not fit": [save_checkpoint(tmp_path / "w.pt", model, tokenizer, 1,
                                               model=tiny_model(7, vocab_size=310).state_dict()), "hi",
                               "--tokenizer", tokenizer_dir],
        "prompt longer than the context": [run_dir, "Once upon a time there was a little dog. " * 4],
        "top-p zero": [run_dir, "hi", "--top-p", 0],
        "top-p above one": [run_dir, "hi", "--top-p", 1.5],
        "negative temperature": [run_dir, "hi", "--temperature", -1],
        "top-k zero": [run_dir, "hi", "--top-k", 0],
        "unknown device": [run_dir, "hi", "--device", "tpu"],
    }


EXPECTED_MESSAGES = {
    "missing path": "does not exist", "run without checkpoints": "without checkpoints",
    "garbage file": "not a readable checkpoint", "not our format": "not a cs336 checkpoint",
    "newer format": "upgrade cs336-sample", "missing tokenizer": "--tokenizer DIR",
    "fingerprint mismatch": "is not the one", "tokenizer vocab too large": "tokenizer has 402 tokens",
    "weights do not fit": "do not fit its model configuration",
    "prompt longer than the context": "shorten the prompt", "top-p zero": "top-p must be in (0, 1]",
    "top-p above one": "top-p must be in (0, 1]", "negative temperature": "temperature must be >= 0",
    "top-k zero": "top-k must be at least 1", "unknown device": "is not a device",
}


@pytest.mark.parametrize("case", list(EXPECTED_MESSAGES))
def test_cli_input_errors_are_one_clear_message_and_a_failing_exit(case, run_dir, tmp_path, tokenizer):
    result = invoke(*write_bad_checkpoints(run_dir, tmp_path, tokenizer)[case])
    assert result.exit_code not in (0, None)
    assert isinstance(result.exception, SystemExit), result.exception  # handled, not a crash
    assert "Traceback" not in result.output
    assert EXPECTED_MESSAGES[case] in " ".join(result.stderr.split()), result.stderr
