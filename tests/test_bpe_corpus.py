"""Whole-file encoding: same ids as `encode`, correct metadata, nothing half-written on failure."""

import json
import multiprocessing
import os
import time

import numpy as np
import pytest

from cs336_bpe import BPEInputError, Tokenizer
from cs336_bpe.corpus import encode_file, open_token_file, token_dtype
from cs336_bpe.parallel import chunk_workers, file_encoding, processes
from cs336_bpe.parallel.chunk_workers import claim_chunks


@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_encoded_file_equals_encode(tmp_path, owt_text, gpt2_tokenizer, num_workers):
    big = tmp_path / "big.txt"
    big.write_text(owt_text * 8, encoding="utf-8")  # over the parallel threshold: real workers, many chunks
    progress = []
    metadata = encode_file(gpt2_tokenizer, big, tmp_path / "out.bin", num_workers=num_workers,
                           on_progress=lambda done, total: progress.append((done, total)))
    tokens = open_token_file(tmp_path / "out.bin", expected_fingerprint=gpt2_tokenizer.fingerprint())
    assert tokens.dtype == np.uint16 and metadata["dtype"] == "uint16"
    assert tokens.tolist() == gpt2_tokenizer.encode(owt_text * 8)
    assert metadata["num_tokens"] == len(tokens) and metadata["vocab_size"] == 50257
    saved = json.loads((tmp_path / "out.bin.json").read_text())
    assert saved == metadata
    # Progress counts every chunk once, in order, up to the whole file; no scratch files are left behind.
    size = big.stat().st_size
    assert len(progress) >= 8 and progress[-1] == (size, size)
    assert [done for done, _ in progress] == sorted({done for done, _ in progress})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["big.txt", "out.bin", "out.bin.json"]
    assert multiprocessing.active_children() == []


def test_processes_claim_each_chunk_once():
    shared_counter = multiprocessing.Value("q", 0)
    first, second = claim_chunks(7, shared_counter), claim_chunks(7, shared_counter)
    claimed = [next(first), next(second), next(second), *first, *second]
    assert claimed == [0, 1, 2, 3, 4, 5, 6]
    assert list(claim_chunks(3, None)) == [0, 1, 2]  # a lone process takes them all


@pytest.mark.parametrize("main_encodes", [True, False])
def test_invalid_utf8_in_a_parallel_encode_is_a_clear_error(tmp_path, owt_text, gpt2_tokenizer, monkeypatch,
                                                            main_encodes):
    # One bad byte in a file of many chunks: whichever process claims that chunk (with main_encodes=False, a
    # worker surely does), the error names the byte and its offset in the file, nothing is written, and the
    # workers are gone.
    if not main_encodes:
        monkeypatch.setattr(file_encoding, "claim_chunks", lambda num_chunks, next_chunk: iter(()))
    text = owt_text.encode("utf-8")
    source = tmp_path / "bad.txt"
    source.write_bytes(text * 3 + b"\xff" + text * 5)
    output = tmp_path / "out.bin"
    output.write_bytes(b"previous result")
    with pytest.raises(BPEInputError, match=rf"is not valid UTF-8: byte 0xff at offset {len(text) * 3} .*convert it"):
        encode_file(gpt2_tokenizer, source, output, num_workers=2)
    assert output.read_bytes() == b"previous result"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad.txt", "out.bin"]
    assert multiprocessing.active_children() == []


def test_a_worker_that_dies_is_an_error(tmp_path, owt_text, gpt2_tokenizer, monkeypatch):
    main_process, encode_array = os.getpid(), gpt2_tokenizer.encode_array

    def die_in_workers(text):  # forked workers inherit this; only they exit, as if killed
        if os.getpid() != main_process:
            os._exit(3)
        return encode_array(text)

    monkeypatch.setattr(gpt2_tokenizer, "encode_array", die_in_workers)
    monkeypatch.setattr(file_encoding, "claim_chunks", lambda num_chunks, next_chunk: iter(()))  # workers take them all
    source = tmp_path / "big.txt"
    source.write_text(owt_text * 8, encoding="utf-8")
    with pytest.raises(RuntimeError, match="an encoding worker exited with code 3"):
        encode_file(gpt2_tokenizer, source, tmp_path / "out.bin", num_workers=2)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["big.txt"]


def test_workers_already_started_are_stopped_when_the_next_one_cannot_start(tmp_path, gpt2_tokenizer, monkeypatch):
    workers = chunk_workers.ChunkWorkers(3, gpt2_tokenizer, str(tmp_path / "unused.txt"), [(0, 1)] * 99,
                                         np.dtype("<u2"), tmp_path)
    workers.next_chunk.value = 99  # nothing left to claim: a started worker exits at once

    def refuse():
        raise OSError("no more processes")

    monkeypatch.setattr(workers._processes[1], "start", refuse)
    with pytest.raises(OSError, match="no more processes"):
        workers.__enter__()
    assert workers._processes[0].exitcode is not None  # the first one was started, then joined
    assert workers._processes[2].pid is None  # the third was never started
    assert multiprocessing.active_children() == []


def test_chunks_are_little_endian_whatever_dtype_is_asked_for(tmp_path, gpt2_tokenizer):
    source = tmp_path / "a.txt"
    source.write_text("Once upon a time", encoding="utf-8")
    tokens = chunk_workers.encode_span(gpt2_tokenizer, str(source), (0, 16), np.dtype(">u2"))
    assert tokens.tobytes() == np.array(gpt2_tokenizer.encode("Once upon a time"), "<u2").tobytes()


def test_worker_reports_its_error_to_the_main_process(tmp_path, gpt2_tokenizer):
    source = tmp_path / "bad.txt"
    source.write_bytes(b"fine text \xfe")
    receiver, sender = multiprocessing.Pipe(duplex=False)
    with pytest.raises(SystemExit):
        chunk_workers._work(gpt2_tokenizer, str(source), [(0, 5), (5, 11)], np.dtype("<u2"), tmp_path,
                            multiprocessing.Value("q", 0), sender, None, 1, None)
    finished_chunk, error = receiver.recv(), receiver.recv()
    assert finished_chunk == 0
    assert isinstance(error, BPEInputError) and "byte 0xfe at offset 10" in str(error)
    assert (tmp_path / "0.bin").read_bytes() == np.array(gpt2_tokenizer.encode("fine "), "<u2").tobytes()

    receiver, sender = multiprocessing.Pipe(duplex=False)
    with pytest.raises(SystemExit):  # any other failure arrives as a RuntimeError that names it
        chunk_workers._work(gpt2_tokenizer, str(source), [(0, 5)], np.dtype("<u2"), tmp_path / "missing",
                            multiprocessing.Value("q", 0), sender, None, 1, None)
    error = receiver.recv()
    assert isinstance(error, RuntimeError) and "FileNotFoundError" in str(error)


@pytest.mark.slow
def test_encoded_file_without_fork(tmp_path, owt_text, gpt2_tokenizer, monkeypatch):
    # Where fork is unavailable (macOS and Windows default to spawn), the workers receive the tokenizer pickled.
    # A spawned worker starts slowly, so the main process could encode every chunk before it is up: here the
    # main process claims none, and the spawned worker must encode them all.
    spawn = multiprocessing.get_context("spawn")
    monkeypatch.setattr(processes.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    monkeypatch.setattr(processes.multiprocessing, "get_context", lambda method=None: spawn)
    monkeypatch.setattr(file_encoding, "claim_chunks", lambda num_chunks, next_chunk: iter(()))
    text = owt_text * 8
    source = tmp_path / "big.txt"
    source.write_text(text, encoding="utf-8")
    metadata = encode_file(gpt2_tokenizer, source, tmp_path / "out.bin", num_workers=2)
    assert open_token_file(tmp_path / "out.bin").tolist() == gpt2_tokenizer.encode(text)
    assert metadata["tokenizer_fingerprint"] == gpt2_tokenizer.fingerprint()


def test_dtype_depends_on_vocab_size():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    assert token_dtype(1 << 32) == np.uint32
    with pytest.raises(BPEInputError, match="cannot hold"):
        token_dtype((1 << 32) + 1)


def test_large_vocab_uses_uint32(tmp_path):
    vocab = {b: bytes([b]) for b in range(256)} | {70000: b"<unused>"}  # a vocabulary past 65,536 ids
    tokenizer = Tokenizer(vocab, [], ["<|endoftext|>"])  # the special token gets id 70001
    source = tmp_path / "a.txt"
    source.write_text("hi<|endoftext|>", encoding="utf-8")
    metadata = encode_file(tokenizer, source, tmp_path / "a.bin")
    assert metadata["dtype"] == "uint32"
    assert open_token_file(tmp_path / "a.bin").tolist() == [104, 105, 70001]


def test_interrupted_encode_leaves_no_output(tmp_path, fixtures_dir, gpt2_tokenizer):
    output = tmp_path / "out.bin"
    output.write_bytes(b"previous result")

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_file(gpt2_tokenizer, fixtures_dir / "corpus.en", output, on_progress=interrupt)
    assert output.read_bytes() == b"previous result"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # and no temporary file is left


def test_interrupted_parallel_encode_stops_workers_and_leaves_no_output(tmp_path, owt_text, gpt2_tokenizer,
                                                                         monkeypatch):
    source = tmp_path / "big.txt"
    source.write_text(owt_text * 8, encoding="utf-8")
    output = tmp_path / "out.bin"
    output.write_bytes(b"previous result")

    main_process, encode_array = os.getpid(), gpt2_tokenizer.encode_array
    main_calls = []

    def stall_in_workers(text):
        if os.getpid() != main_process:  # a worker would take 20 s: the interrupt must stop it, not wait for it
            time.sleep(20)
            os._exit(0)
        main_calls.append(len(text))
        if len(main_calls) == 2:  # Ctrl-C while the main process encodes its second chunk
            raise KeyboardInterrupt
        return encode_array(text)

    monkeypatch.setattr(gpt2_tokenizer, "encode_array", stall_in_workers)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        encode_file(gpt2_tokenizer, source, output, num_workers=2)
    assert time.monotonic() - started < 10
    assert output.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt", "out.bin"]  # scratch chunks removed too
    assert multiprocessing.active_children() == []


def test_token_file_checks(tmp_path, fixtures_dir, gpt2_tokenizer):
    encode_file(gpt2_tokenizer, fixtures_dir / "german.txt", tmp_path / "g.bin")
    with pytest.raises(BPEInputError, match="encode it again with this tokenizer"):
        open_token_file(tmp_path / "g.bin", expected_fingerprint="0" * 16)
    with open(tmp_path / "g.bin", "ab") as handle:
        handle.write(b"\x00")
    with pytest.raises(BPEInputError, match="metadata promises"):
        open_token_file(tmp_path / "g.bin")
    with pytest.raises(BPEInputError, match="has no metadata file"):
        open_token_file(tmp_path / "missing.bin")


def test_token_files_of_an_older_format_are_refused_with_the_fix(tmp_path, fixtures_dir, gpt2_tokenizer):
    metadata = encode_file(gpt2_tokenizer, fixtures_dir / "german.txt", tmp_path / "g.bin")
    (tmp_path / "g.bin.json").write_text(json.dumps({**metadata, "format": "cs336-tokens-v1"}), encoding="utf-8")
    with pytest.raises(BPEInputError, match="older cs336-bpe .* encode it again with `cs336-bpe encode`"):
        open_token_file(tmp_path / "g.bin")
    (tmp_path / "g.bin.json").write_text(json.dumps({**metadata, "format": "something-else"}), encoding="utf-8")
    with pytest.raises(BPEInputError, match="has format 'something-else', expected 'cs336-tokens-v2'"):
        open_token_file(tmp_path / "g.bin")


def test_unwritable_output_is_a_clear_error(tmp_path, fixtures_dir, gpt2_tokenizer):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BPEInputError, match="cannot create output directory"):
        encode_file(gpt2_tokenizer, fixtures_dir / "german.txt", blocker / "sub" / "out.bin")
