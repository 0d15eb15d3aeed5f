"""An encode killed outright (SIGKILL runs no cleanup) loses nothing for long: its workers die with it, and the
next encode to the same output removes its scratch files, while a live writer's scratch is never touched."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cs336_bpe import BPEInputError, Tokenizer, atomic, encode_file, open_token_file
from cs336_bpe.cli import main
from cs336_bpe.writer_lock import exclusive_writer

needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; SIGKILL; flock")
needs_flock = pytest.mark.skipif(sys.platform == "win32", reason="no flock: no cleanup on Windows")


def _byte_tokenizer() -> Tokenizer:
    return Tokenizer({byte: bytes([byte]) for byte in range(256)}, [], ["<|endoftext|>"])


def _write_story(path: Path, megabytes: float = 0.001) -> Path:
    story = "Once upon a time there was a tiny robot who liked to count the stars. " * 8 + "<|endoftext|>\n"
    path.write_text(story * max(1, int(megabytes * 1e6 / len(story))), encoding="utf-8")
    return path


def _names(directory: Path) -> set[str]:
    """Every file and directory under `directory`, relative to it."""
    return {str(path.relative_to(directory)) for path in directory.rglob("*")}


def _make_leftovers(directory: Path, output_name: str) -> list[str]:
    """The entries an encode to `output_name` killed mid-way leaves (as `atomic` and `corpus` name them)."""
    (directory / f".{output_name}.k3x9_2ab.partial").write_bytes(b"\0" * 1_000_000)
    (directory / f".{output_name}.json.q0w1e2r3.partial").write_text("{")
    chunks = directory / f".{output_name}.chunks-zz81yq0p"
    chunks.mkdir()
    (chunks / "3.bin").write_bytes(b"\0" * 500_000)
    (chunks / "5.partial").write_bytes(b"\0" * 10)
    (directory / f".{output_name}.lock").touch()
    return sorted(path.name for path in directory.iterdir() if path.name.startswith(f".{output_name}."))


@needs_flock
def test_the_next_encode_removes_what_a_killed_one_left_and_says_so(tmp_path):
    source = _write_story(tmp_path / "story.txt")
    _make_leftovers(tmp_path, "out.bin")
    # Look-alikes that belong to other outputs: never touched.
    others = {".out.bin.x.k3x9_2ab.partial", ".other.bin.a1b2c3d4.partial", ".out.binary.chunks-abcdefgh", "notes.txt"}
    for name in others:
        (tmp_path / name).touch()
    notes = []
    encode_file(_byte_tokenizer(), source, tmp_path / "out.bin", on_note=notes.append)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted({"story.txt", "out.bin", "out.bin.json", *others})
    assert len(notes) == 1 and "\n" not in notes[0], notes
    assert notes[0].startswith("removed 3 leftover file(s) (1.5 MB) of an earlier encode to ") and "killed" in notes[0]

    encode_file(_byte_tokenizer(), source, tmp_path / "out.bin", on_note=notes.append)
    assert len(notes) == 1  # nothing left over this time: nothing to say


@needs_flock
def test_the_cli_notes_the_cleanup(tmp_path):
    source = _write_story(tmp_path / "story.txt")
    _byte_tokenizer().save(tmp_path / "tok")
    _make_leftovers(tmp_path, "t.bin")
    result = CliRunner().invoke(main, ["encode", str(tmp_path / "tok"), str(source), str(tmp_path / "t.bin")])
    assert result.exit_code == 0, result.output
    assert "note: removed 3 leftover file(s) (1.5 MB) of an earlier encode to" in result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["story.txt", "t.bin", "t.bin.json", "tok"]


@needs_flock
def test_a_live_writers_scratch_is_never_removed(tmp_path):
    source = _write_story(tmp_path / "story.txt")
    with exclusive_writer(tmp_path / "out.bin"):  # a live writer of out.bin (another open of the lock file)
        live_scratch = _make_leftovers(tmp_path, "out.bin")
        with pytest.raises(BPEInputError, match=r"another process is writing .*out\.bin.* wait for it to finish"):
            encode_file(_byte_tokenizer(), source, tmp_path / "out.bin")
        encode_file(_byte_tokenizer(), source, tmp_path / "other.bin")  # another output in the same directory
        still_there = sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".out.bin."))
        assert still_there == live_scratch
        assert (tmp_path / ".out.bin.chunks-zz81yq0p" / "3.bin").exists()
    assert open_token_file(tmp_path / "other.bin").tolist() == _byte_tokenizer().encode(source.read_text())


def test_atomic_write_fsyncs_the_directory_after_the_rename(tmp_path, monkeypatch):
    synced = []
    fsync = os.fsync

    def recording_fsync(descriptor):
        is_directory = os.path.isdir(f"/proc/self/fd/{descriptor}") if sys.platform.startswith("linux") else None
        synced.append((is_directory, (tmp_path / "out.txt").exists()))
        fsync(descriptor)

    monkeypatch.setattr(atomic.os, "fsync", recording_fsync)
    with atomic.atomic_write(tmp_path / "out.txt", "w", encoding="utf-8") as handle:
        handle.write("done")
    assert len(synced) == 2
    assert synced[-1][1], "the directory is synced after the rename, when the new name is in it"
    if sys.platform.startswith("linux"):
        assert [is_directory for is_directory, _ in synced] == [False, True]


def test_directory_fsync_is_skipped_where_directories_cannot_be_opened(tmp_path, monkeypatch):
    def refuse(*_):
        raise PermissionError("directories cannot be opened here (as on Windows)")

    monkeypatch.setattr(atomic.os, "open", refuse)
    atomic.fsync_directory(tmp_path)  # no error


# A real `encode_file` with 2 processes, in a subprocess. Hooks make it slow so that the test can kill it
# mid-way: the main process stalls in its first chunk, the worker takes a second per chunk; each drops a marker
# file named after its role and pid.
ENCODE_SCRIPT = r"""
import os, sys, time
from pathlib import Path
from cs336_bpe import Tokenizer, encode_file
from cs336_bpe.parallel import chunk_workers

source, output, markers, death_signal = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
if death_signal == "off":  # test the portable fallback alone: the getppid check between chunks
    chunk_workers._ask_kernel_for_sigkill_on_parent_death = lambda: None
tokenizer = Tokenizer({byte: bytes([byte]) for byte in range(256)}, [], ["<|endoftext|>"])
main_process, encode_array = os.getpid(), tokenizer.encode_array

def slow_encode_array(text):
    role = "main" if os.getpid() == main_process else "worker"
    (markers / f"{role}-{os.getpid()}").touch()
    time.sleep(3600 if role == "main" else 1.0)
    return encode_array(text)

tokenizer.encode_array = slow_encode_array
encode_file(tokenizer, source, output, num_workers=2)
"""


def _start_encode(source: Path, output: Path, markers: Path, death_signal: str = "on") -> subprocess.Popen:
    markers.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", ENCODE_SCRIPT, str(source), str(output), str(markers),
                             death_signal])


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _worker_pid(markers: Path, encode: subprocess.Popen) -> int:
    """Wait until both processes are encoding (each in its first chunk); the worker's pid."""
    def both_started():
        assert encode.poll() is None, "the encode subprocess ended early"
        return {path.name.split("-")[0] for path in markers.iterdir()} == {"main", "worker"}

    _wait_for(both_started, 60, "the encode's main process and worker to start encoding")
    return next(int(path.name.split("-")[1]) for path in markers.iterdir() if path.name.startswith("worker-"))


def _running(pid: int) -> bool:
    """Is `pid` a live process? A zombie (dead, not yet reaped by its new parent) is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _kill(*pids: int) -> None:
    """SIGKILL the test's own subprocesses (and their workers), if they are still there."""
    for pid in pids:
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def three_megabytes(tmp_path_factory) -> Path:
    """Over the parallel threshold: 16 chunks for 2 processes, so a worker has 15 s of slow chunks to do."""
    return _write_story(tmp_path_factory.mktemp("input") / "story.txt", megabytes=3)


@pytest.mark.slow
@needs_linux
@pytest.mark.parametrize("death_signal", ["on", "off"])
def test_workers_exit_when_the_encode_is_killed(tmp_path, three_megabytes, death_signal):
    # "on": the kernel kills the worker with its parent (prctl). "off": the worker notices after its current
    # chunk (one second here) that it has been orphaned. Before either, it encoded its ~15 s of chunks.
    encode = _start_encode(three_megabytes, tmp_path / "out.bin", tmp_path / "markers", death_signal)
    worker = None
    try:
        worker = _worker_pid(tmp_path / "markers", encode)
        encode.send_signal(signal.SIGKILL)
        encode.wait()
        _wait_for(lambda: not _running(worker), 5, f"worker {worker} to exit after its parent was killed")
    finally:
        _kill(encode.pid, *([worker] if worker else []))
        encode.wait()


@pytest.mark.slow
@needs_linux
def test_a_killed_encode_is_cleaned_up_by_the_next_one_and_a_live_one_is_not(tmp_path, three_megabytes):
    killed = _start_encode(three_megabytes, tmp_path / "out.bin", tmp_path / "killed-markers")
    live = _start_encode(three_megabytes, tmp_path / "other.bin", tmp_path / "live-markers")
    workers = []
    try:
        workers = [_worker_pid(tmp_path / "killed-markers", killed), _worker_pid(tmp_path / "live-markers", live)]
        _wait_for(lambda: any(tmp_path.glob(".out.bin.chunks-*/*.bin")), 30, "a chunk in the scratch directory")
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        _wait_for(lambda: not _running(workers[0]), 5, "the killed encode's worker to exit")
        left = {name for name in _names(tmp_path) if name.startswith(".out.bin.")}
        assert any(name.endswith(".partial") for name in left) and any(".chunks-" in name for name in left), left
        live_scratch = {name for name in _names(tmp_path) if name.startswith(".other.bin.")}

        notes = []
        encode_file(_byte_tokenizer(), three_megabytes, tmp_path / "out.bin", num_workers=2, on_note=notes.append)
        assert not any(name.startswith(".out.bin.") for name in _names(tmp_path))
        assert len(notes) == 1 and notes[0].startswith("removed "), notes
        text = three_megabytes.read_text(encoding="utf-8")  # ASCII: a token a byte, <|endoftext|> one token
        assert len(open_token_file(tmp_path / "out.bin")) == len(text) - 12 * text.count("<|endoftext|>")

        # The live encode of other.bin, in the same directory, lost nothing, and cannot be raced.
        with pytest.raises(BPEInputError, match="another process is writing"):
            encode_file(_byte_tokenizer(), three_megabytes, tmp_path / "other.bin")
        assert live.poll() is None
        assert live_scratch <= {name for name in _names(tmp_path) if name.startswith(".other.bin.")}
    finally:
        _kill(killed.pid, live.pid, *workers)
        killed.wait()
        live.wait()
