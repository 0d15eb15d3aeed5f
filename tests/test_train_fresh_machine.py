"""A new user on a fresh clone, with no ../shared beside it: `cs336-train pipeline` must work from any directory,
offline, and every mistake must be one line that says what to do, before any work starts.

Covers: bundled configurations found by name (configs.toml moved into the package), the bundled TinyStories sample
as the default data, `--dataset tinystories|owt` (against a local server), input checks before the tokenizer,
a text too small for the vocabulary asked, and progress lines for the tokenizer and encoding stages.
"""

import gzip
import importlib.util
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from cs336_bpe import Tokenizer
from cs336_train import TrainConfig, pipeline
from cs336_train.cli import main
from cs336_train.config_files import CONFIG_DIR, bundled_configs, describe_config, resolve_config
from cs336_train.datasets import download
from cs336_train.errors import ConfigError
from cs336_train.experiment import load_experiment
from cs336_train.pipeline import OWT_FALLBACK, dataset_config, texts_for
from cs336_train.stage_progress import StageProgress
from tests.test_train_download import FakeServer
from tests.train_helpers import write_stories

pytestmark = pytest.mark.usefixtures("restore_torch_threads")
ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "packages" / "train" / "src" / "cs336_train"
# A model that trains a step in milliseconds; the tokenizer and data stages stay as a user runs them.
TINY = ["model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.d_ff=64", "model.context_length=32",
        "run.steps=2", "run.batch_size=4", "run.precision=fp32", "run.device=cpu", "run.compile=false",
        "run.num_threads=1", "run.log_interval=1", "run.eval_interval=0", "run.valid_batch_size=64"]
TINYSTORIES_PATHS = {
    "train": "/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-train.txt",
    "valid": "/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-valid.txt",
}


def _invoke(*arguments):
    return CliRunner().invoke(main, [str(argument) for argument in arguments])


def _settings(overrides: list[str]) -> list[str]:
    return [argument for override in overrides for argument in ("--set", override)]


def _one_error_line(result) -> str:
    """The whole output of a refused command: exit status 1, one line, no traceback."""
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.fixture
def tokenizer_trainings(monkeypatch) -> list:
    """Records every tokenizer training the pipeline starts (a refused input must start none)."""
    calls = []
    real = pipeline.train_bpe
    monkeypatch.setattr(pipeline, "train_bpe", lambda *args, **kwargs: calls.append(args) or real(*args, **kwargs))
    return calls


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """An empty working directory (no configs/, no ../shared) and a cache of its own."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("CS336_CACHE", str(tmp_path / "cache"))
    return work


# --- bundled configurations ----------------------------------------------------------------------------------


def test_a_config_is_a_file_or_a_bundled_name_in_any_of_its_spellings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nowhere near the repository
    bundled = CONFIG_DIR / "tinystories_cpu.toml"
    for spelling in ("tinystories_cpu", "tinystories_cpu.toml", "configs/tinystories_cpu.toml"):
        assert resolve_config(spelling) == bundled
    own = tmp_path / "configs" / "tinystories_cpu.toml"  # a file of that name where the command runs wins
    own.parent.mkdir()
    own.write_text("[model]\n")
    assert resolve_config("configs/tinystories_cpu.toml") == Path("configs/tinystories_cpu.toml")
    for wrong in ("tinystories_gpu", "elsewhere/tinystories_cpu.toml", "tinystories_cpu.json"):
        with pytest.raises(ConfigError, match=rf"'{wrong}' is neither a file nor a bundled configuration; the "
                                              "bundled ones are .*tinystories_course, tinystories_cpu"):
            resolve_config(wrong)


def test_the_configs_moved_into_the_package_and_each_says_what_it_is_for():
    assert not (ROOT / "configs").exists()
    configs = bundled_configs()
    assert {"tinystories_cpu", "tinystories_course"} <= set(configs)
    assert describe_config(configs["tinystories_cpu"]).startswith("The CPU default")
    course = describe_config(configs["tinystories_course"])
    assert course.startswith("For a GPU") and "327,680,000 tokens" in course and "minutes" in course
    for path in configs.values():
        TrainConfig.from_toml(path, ['data.train="-"', 'data.valid="-"'])


def test_configs_lists_the_bundled_ones_and_prints_one_to_copy():
    listed = _invoke("configs")
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line for line in listed.output.splitlines() if not line.startswith("(")}
    for name, path in bundled_configs().items():
        assert rows[name].endswith(f"  {describe_config(path)}")
    shown = _invoke("configs", "tinystories_course")
    assert shown.exit_code == 0 and shown.output == (CONFIG_DIR / "tinystories_course.toml").read_text()
    assert "tinystories_cpu" in _one_error_line(_invoke("configs", "nope"))


@pytest.mark.parametrize("command", [["fit"], ["overfit"], ["account"], ["pipeline", "--config"]])
def test_every_command_taking_a_config_names_the_bundled_ones_for_an_unknown_one(command, elsewhere):
    line = _one_error_line(_invoke(*command, "tinystories_gpu"))
    assert "'tinystories_gpu' is neither a file nor a bundled configuration" in line and "tinystories_cpu" in line


def test_commands_find_bundled_configs_from_any_directory(elsewhere, token_files):
    assert "8,333,568" in _invoke("account").output  # the default, tinystories_cpu
    assert "parameters" in _invoke("account", "tinystories_course.toml").output
    data = [f"data.train={token_files['train']}", f"data.valid={token_files['valid']}",
            f"data.tokenizer={token_files['tokenizer']}", "model.vocab_size=320"]
    fitted = _invoke("fit", "configs/tinystories_cpu.toml", "--out", elsewhere / "run", *_settings(data + TINY))
    assert fitted.exit_code == 0, fitted.output
    assert "d_model = 32" in (elsewhere / "run" / "config.toml").read_text()


def _experiment(folder: Path, base: str) -> Path:
    path = folder / "tiny.toml"
    path.write_text(f'[scale.cpu]\nbase = "{base}"\ntrain_text = "t.txt"\nvalid_text = "v.txt"\n'
                    '[[runs]]\nname = "base"\n')
    return path


def test_an_experiment_base_is_a_bundled_name_or_a_file(tmp_path):
    for base in ("tinystories_cpu", "configs/tinystories_cpu.toml"):
        experiment = load_experiment(_experiment(tmp_path, base), "cpu", tmp_path / "out")
        assert experiment.base == CONFIG_DIR / "tinystories_cpu.toml"
        assert experiment.runs[0].fit_command(experiment.base, tmp_path)[1] == str(CONFIG_DIR / "tinystories_cpu.toml")
    with pytest.raises(ConfigError, match=r"tiny\.toml: base: configuration 'tinystorie_cpu' is neither .* "
                                          r"tinystories_cpu"):
        load_experiment(_experiment(tmp_path, "tinystorie_cpu"), "cpu", tmp_path / "out")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("uv") is None, reason="uv builds the wheel")
def test_the_wheel_carries_the_configs_and_the_sample_with_its_notice(tmp_path):
    subprocess.run(["uv", "build", "--package", "cs336-train", "--wheel", "--out-dir", str(tmp_path)], cwd=ROOT,
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("cs336_train-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"cs336_train/configs/{path.name}" for path in CONFIG_DIR.glob("*.toml")} | {
        "cs336_train/tinystories_sample/train.txt.xz", "cs336_train/tinystories_sample/valid.txt.xz",
        "cs336_train/tinystories_sample/NOTICE.md"}
    assert expected <= names


# --- the pipeline with no arguments: the bundled sample ------------------------------------------------------


@pytest.mark.slow
def test_pipeline_with_no_arguments_trains_on_the_bundled_sample_from_any_directory(elsewhere):
    result = _invoke("pipeline", *_settings(TINY))
    assert result.exit_code == 0, result.output
    run_dir = elsewhere / "runs" / "tinystories-sample"
    assert "TinyStories sample bundled with cs336-train" in result.output and "NOTICE.md" in result.output
    for stage in ("pre-tokenizing: done", "merging: done, 9,743 merges", "encoding train: done",
                  "encoding valid: done"):
        assert stage in result.output, stage
    assert "WARNING" not in result.output  # the sample supports the 10K vocabulary
    assert (run_dir / "samples.txt").read_text().count("--- prompt:") == 3
    assert TrainConfig.from_toml(run_dir / "config.toml").model.vocab_size == 10_000

    again = _invoke("pipeline", *_settings(TINY))
    assert "already holds a trained run" in _one_error_line(again) and "--out" in again.output


# --- --dataset: download, verify, train in one command -------------------------------------------------------


@pytest.fixture
def story_server(tmp_path, monkeypatch):
    """A local stand-in for Hugging Face serving small TinyStories and OpenWebText files, pinned as the real ones."""
    train = write_stories(tmp_path / "served-train.txt", 300, seed=1).read_bytes()
    valid = write_stories(tmp_path / "served-valid.txt", 30, seed=2).read_bytes()
    files = {TINYSTORIES_PATHS["train"]: train, TINYSTORIES_PATHS["valid"]: valid,
             "/datasets/stanford-cs336/owt-sample/resolve/main/owt_train.txt.gz": gzip.compress(train, mtime=0),
             "/datasets/stanford-cs336/owt-sample/resolve/main/owt_valid.txt.gz": gzip.compress(valid, mtime=0)}
    monkeypatch.setattr(download, "PINNED", {Path(path).name: download.Pin(len(body), _sha256(body))
                                             for path, body in files.items()})
    server = FakeServer(files)
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@pytest.mark.slow
def test_dataset_tinystories_downloads_then_trains_and_sizes_the_model_to_a_small_tokenizer(story_server, elsewhere,
                                                                                          tokenizer_trainings):
    data_dir = elsewhere / "datasets"
    result = _invoke("pipeline", "--dataset", "tinystories", "--data-dir", data_dir, "--base-url", story_server.url,
                     *_settings(TINY))
    assert result.exit_code == 0, result.output
    assert "data: TinyStories V2 (GPT-4 stories) into" in result.output and "MB to fetch" in result.output
    assert (data_dir / "TinyStoriesV2-GPT4-train.txt").read_bytes() == story_server.files[TINYSTORIES_PATHS["train"]]
    run_dir = elsewhere / "runs" / "tinystories"
    # 300 generated stories of 27 words cannot support 10,000 tokens: one loud line, and the model follows.
    tokenizer = Tokenizer.load(run_dir / "tokenizer")
    assert tokenizer.vocab_size < 10_000
    warning = (f"WARNING: the training text supports only {tokenizer.vocab_size:,} tokens, not the 10,000 asked; "
               f"the model uses {tokenizer.vocab_size:,}")
    assert sum(warning in line for line in result.output.splitlines()) == 1
    assert TrainConfig.from_toml(run_dir / "config.toml").model.vocab_size == tokenizer.vocab_size
    assert "merging: stopped at" in result.output
    assert (run_dir / "samples.txt").is_file()

    requests = len(story_server.requests)
    second = _invoke("pipeline", "--dataset", "tinystories", "--data-dir", data_dir, "--base-url", story_server.url,
                     "--out", elsewhere / "second", *_settings(TINY))
    assert second.exit_code == 0, second.output
    assert len(story_server.requests) == requests  # verified from its records, not downloaded again
    assert "already downloaded, to be verified" in second.output


def test_dataset_owt_downloads_and_decompresses_and_asks_for_32000_tokens(story_server, tmp_path):
    name, overrides = dataset_config("owt")
    config = TrainConfig.from_toml(resolve_config(name), overrides + ['data.train="-"', 'data.valid="-"'])
    assert config.model.vocab_size == 32_000
    assert name == "owt_course" if "owt_course" in bundled_configs() else (name, overrides) == OWT_FALLBACK
    lines = []
    train, valid = texts_for("owt", tmp_path / "data", story_server.url, lines.append)
    assert (train.name, valid.name) == ("owt_train.txt", "owt_valid.txt")
    assert valid.read_bytes() == gzip.decompress(story_server.files[
        "/datasets/stanford-cs336/owt-sample/resolve/main/owt_valid.txt.gz"])
    assert lines[0].startswith("data: the CS336 OpenWebText sample into") and "then decompressed" in lines[0]


def test_a_bad_run_directory_is_refused_before_anything_is_downloaded(story_server, elsewhere):
    (elsewhere / "taken").write_text("a file")
    line = _one_error_line(_invoke("pipeline", "--dataset", "tinystories", "--base-url", story_server.url,
                                   "--out", elsewhere / "taken"))
    assert "is a file, not a directory; choose another --out" in line
    assert story_server.requests == []


# --- every input checked before the tokenizer trains ---------------------------------------------------------


@pytest.fixture
def texts(tmp_path) -> dict:
    return {"train": write_stories(tmp_path / "train.txt", 40, seed=1),
            "valid": write_stories(tmp_path / "valid.txt", 10, seed=2)}


def _bad_text(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.txt"
    if kind == "missing":
        return path
    if kind == "directory":
        path.mkdir()
    else:
        path.write_bytes({"empty": b"", "latin1": "Once upon a time, a café.".encode("latin-1"),
                          "binary": b"PK\x03\x04\x00\x00 zip"}[kind])
    return path


@pytest.mark.parametrize(("kind", "message"), [
    ("missing", "does not exist; `cs336-train pipeline` without --train-text trains on the TinyStories sample it "
                "ships, `cs336-train pipeline --dataset tinystories` downloads the full set"),
    ("directory", "is not a file"),
    ("empty", "is empty; give a file with text in it"),
    ("latin1", "is not UTF-8: byte 0xe9 at offset 23"),
    ("binary", "has a NUL byte at offset 4: it looks binary"),
])
@pytest.mark.parametrize("split", ["training", "validation"])
def test_a_bad_text_is_one_line_before_the_tokenizer_trains(tmp_path, texts, tokenizer_trainings, kind, message,
                                                            split):
    bad = _bad_text(tmp_path, kind)
    train, valid = (bad, texts["valid"]) if split == "training" else (texts["train"], bad)
    line = _one_error_line(_invoke("pipeline", "--train-text", train, "--valid-text", valid,
                                   "--out", tmp_path / "run"))
    assert f"{split} text '{bad}' {message}" in line
    assert tokenizer_trainings == [] and not (tmp_path / "run").exists()


def test_a_utf8_character_cut_by_the_check_window_is_no_error(tmp_path):
    text = tmp_path / "long.txt"
    text.write_bytes(b"a" * (pipeline.TEXT_CHECK_BYTES - 1) + "é and more".encode())  # é straddles the window
    pipeline.check_text(text, "training")


@pytest.mark.parametrize(("arguments", "message"), [
    (["--set", "model.d_model=-1"], "model.d_model must be a positive integer"),
    (["--config", "nope"], "'nope' is neither a file nor a bundled configuration"),
    (["--out", "{tmp}/file/run"], "is not a writable directory; choose another --out"),
    (["--out", "{tmp}/file"], "is a file, not a directory; choose another --out"),
    (["--dataset", "sample"], "give either --dataset sample or --train-text/--valid-text, not both"),
])
def test_bad_settings_are_one_line_before_the_tokenizer_trains(tmp_path, texts, tokenizer_trainings, arguments,
                                                               message):
    (tmp_path / "file").write_text("not a directory")
    arguments = [argument.format(tmp=tmp_path) for argument in arguments]
    line = _one_error_line(_invoke("pipeline", "--train-text", texts["train"], "--valid-text", texts["valid"],
                                   *(["--out", tmp_path / "run"] if "--out" not in arguments else []), *arguments))
    assert message in line
    assert tokenizer_trainings == []


@pytest.mark.parametrize(("arguments", "message"), [
    (["--train-text", "t.txt"], "give --train-text and --valid-text together"),
    (["--data-dir", "d"], "--data-dir is where --dataset tinystories or owt downloads to"),
    (["--dataset", "sample", "--data-dir", "d"], "--data-dir is where --dataset tinystories or owt downloads to"),
])
def test_options_that_do_not_go_together_are_one_line(elsewhere, arguments, message):
    assert message in _one_error_line(_invoke("pipeline", *arguments))


def test_a_missing_cs336_sample_is_refused_before_the_tokenizer_trains(tmp_path, texts, tokenizer_trainings,
                                                                       monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "cs336_sample" else real(name, *args))
    line = _one_error_line(_invoke("pipeline", "--train-text", texts["train"], "--valid-text", texts["valid"],
                                   "--out", tmp_path / "run"))
    assert 'pip install "cs336-train[sample]"' in line and tokenizer_trainings == []


# --- progress of the tokenizer and encoding stages -----------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_lines_come_every_interval_and_at_the_end_of_each_stage():
    lines, clock = [], FakeClock()
    progress = StageProgress(lines.append, interactive=False, interval_s=30, clock=clock)
    for done in range(0, 4_000_001, 500_000):
        clock.now += 10
        progress("pretokenize", done, 4_000_000)
    for done in (100, 200):  # a text that supports fewer merges than asked stops early
        clock.now += 1
        progress("merge", done, 9_743)
    encode_valid = progress.encoding("valid")
    encode_valid(800_000, 800_000)
    encode_valid(800_000, 800_000)  # a repeated final call says nothing twice
    progress.close()
    # Each stage's time counts from the end of the one before (its first report comes after some work).
    assert lines == [
        "pre-tokenizing: 1.0 of 4.0 MB (25%), 30 s",
        "pre-tokenizing: 2.5 of 4.0 MB (62%), 60 s",
        "pre-tokenizing: done, 4.0 MB in 90 s",
        "merging: stopped at 200 of 9,743 merges, 2 s",
        "encoding valid: done, 800 KB in 0 s",
    ]


def test_a_terminal_gets_bars_instead_of_lines(capsys):
    lines = []
    progress = StageProgress(lines.append, interactive=True)
    progress("pretokenize", 2, 4)
    progress("pretokenize", 4, 4)
    progress.close()
    assert lines == [] and "pre-tokenizing" in capsys.readouterr().err
