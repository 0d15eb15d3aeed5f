"""The `cs336-train` command as a user runs it: every subcommand, and errors that are one clear line."""

import json

import pytest
from click.testing import CliRunner

from cs336_bpe import Tokenizer
from cs336_sample import load_model_and_tokenizer
from cs336_train.checkpoint import read_checkpoint, write_checkpoint
from cs336_train.cli import main
from tests.train_helpers import tiny_config, tiny_config_values, write_config

pytestmark = pytest.mark.usefixtures("restore_torch_threads")


def _invoke(*arguments):
    return CliRunner().invoke(main, [str(argument) for argument in arguments])


def test_every_command_has_help():
    for command in ("fit", "resume", "eval", "account", "plot", "download", "pipeline", "sweep", "configs"):
        result = _invoke(command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output


def test_fit_then_eval_then_plot(token_files, tmp_path):
    config_path = write_config(tmp_path / "config.toml", tiny_config(token_files, steps=6, log_interval=2))
    run_dir = tmp_path / "run"
    fitted = _invoke("fit", config_path, "--out", run_dir, "--set", "optimizer.lr=5e-3")
    assert fitted.exit_code == 0, fitted.output
    assert "done: 6 steps" in fitted.output
    assert 'lr = 0.005' in (run_dir / "config.toml").read_text()

    evaluated = _invoke("eval", run_dir, "--data", token_files["valid"], "--device", "cpu")
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.output.strip().splitlines()[-1])
    last_valid = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert report["iteration"] == 6 and report["loss"] == pytest.approx(last_valid["loss"], rel=1e-6)

    plotted = _invoke("plot", run_dir, "--out", tmp_path / "curves.png")
    assert plotted.exit_code == 0, plotted.output
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_account_prints_parameters_flops_and_memory():
    result = _invoke("account", "tinystories_cpu")
    assert result.exit_code == 0, result.output
    # d_model 256, 4 layers, d_ff 704, vocab 10000, untied: 2·V·d + L·(4d² + 3·d·d_ff + 2d) + d
    parameters = 2 * 10000 * 256 + 4 * (4 * 256**2 + 3 * 256 * 704 + 2 * 256) + 256
    assert f"{parameters:,}" in result.output
    assert "lm_head" in result.output and "optimizer state" in result.output


@pytest.mark.parametrize(("change", "message"), [
    ({"optimizer": {"lr": -1.0}}, "optimizer.lr must be a positive number"),
    ({"run": {"stepz": 3}}, "unknown run settings ['stepz']"),
    ({"data": {"train": "/nonexistent/train.bin"}}, "'/nonexistent/train.bin' does not exist"),
])
def test_fit_errors_are_one_clear_line_with_exit_status_1(token_files, tmp_path, change, message):
    values = tiny_config_values(token_files)
    for section, settings in change.items():
        values[section].update(settings)
    config_path = tmp_path / "config.toml"
    config_path.write_text("\n".join(
        f"[{section}]\n" + "\n".join(f"{key} = {json.dumps(value)}" for key, value in table.items())
        for section, table in values.items()))
    result = _invoke("fit", config_path, "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_resume_and_eval_errors(tmp_path, token_files):
    assert "is not a run directory" in _invoke("resume", tmp_path).output
    result = _invoke("eval", tmp_path / "absent.pt", "--data", token_files["valid"])
    assert result.exit_code == 1 and "does not exist" in result.output
    assert _invoke("fit", tmp_path / "absent.toml").exit_code == 1


def _store_fingerprint(run_dir, fingerprint):
    for path in (run_dir / "checkpoints").glob("step_*.pt"):
        state = read_checkpoint(path)
        state["tokenizer_fingerprint"] = fingerprint
        write_checkpoint(state, path)


def test_checkpoints_storing_the_older_fingerprint_still_evaluate_sample_and_resume(token_files, tmp_path):
    # Checkpoints saved before cs336-bpe's token-file format v2 store the older form of the tokenizer's hash.
    config_path = write_config(tmp_path / "config.toml", tiny_config(token_files, steps=6, checkpoint_interval=2))
    run_dir = tmp_path / "run"
    assert _invoke("fit", config_path, "--out", run_dir).exit_code == 0
    (run_dir / "checkpoints" / "step_00000006.pt").unlink()  # as if the run had been stopped after step 4
    tokenizer = Tokenizer.load(run_dir / "tokenizer")
    _store_fingerprint(run_dir, "0" * 16)  # another tokenizer's: refused
    assert "another tokenizer than the run's" in _invoke("resume", run_dir).output
    assert "encode it again with this tokenizer" in _invoke("eval", run_dir, "--data", token_files["valid"]).output

    _store_fingerprint(run_dir, tokenizer._legacy_fingerprint())
    evaluated = _invoke("eval", run_dir, "--data", token_files["valid"], "--device", "cpu")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output.strip().splitlines()[-1])["iteration"] == 4
    load_model_and_tokenizer(run_dir)  # the sampler's loader checks the fingerprint too
    resumed = _invoke("resume", run_dir)
    assert resumed.exit_code == 0, resumed.output
    assert read_checkpoint(run_dir / "checkpoints" / "step_00000006.pt")["tokenizer_fingerprint"] == \
        tokenizer.fingerprint()


def test_download_from_an_unreachable_server_is_a_clear_error(tmp_path):
    result = _invoke("download", "tinystories", tmp_path, "--split", "valid", "--base-url", "http://127.0.0.1:9")
    assert result.exit_code == 1 and "Traceback" not in result.output


@pytest.mark.slow
def test_pipeline_goes_from_raw_text_to_samples(token_files, tmp_path):
    run_dir = tmp_path / "run"
    result = _invoke("pipeline", "--train-text", token_files["train_text"], "--valid-text", token_files["valid_text"],
                     "--out", run_dir, "--set", "model.vocab_size=300", "--set", "model.d_model=32",
                     "--set", "model.num_layers=1", "--set", "model.num_heads=2", "--set", "model.d_ff=64",
                     "--set", "model.context_length=32", "--set", "run.steps=10", "--set", "run.batch_size=4",
                     "--set", "run.precision=fp32", "--set", "run.device=cpu")
    assert result.exit_code == 0, result.output
    for path in ("tokenizer/vocab.json", "data/train.bin", "data/valid.bin.json", "checkpoints/best.pt",
                 "metrics.jsonl", "config.toml"):
        assert (run_dir / path).is_file(), path
    samples = (run_dir / "samples.txt").read_text()
    assert samples.count("--- prompt:") == 3 and "Once upon a time" in samples
    again = _invoke("pipeline", "--train-text", token_files["train_text"], "--valid-text", token_files["valid_text"],
                    "--out", run_dir)
    assert again.exit_code == 1 and "already holds a trained run" in again.output
