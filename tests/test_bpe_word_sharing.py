"""Processes encoding one file share new words: each goes through BPE about once, and the ids do not change."""

import multiprocessing

import numpy as np
import pytest

from cs336_bpe import Tokenizer
from cs336_bpe.corpus import encode_file
from cs336_bpe.parallel import word_sharing
from cs336_bpe.parallel.word_sharing import BATCH_ENTRIES, WordExchange
from cs336_bpe.pretokenize import PRETOKEN_RE

FORK = multiprocessing.get_context("fork")


@pytest.mark.parametrize("num_workers", [2, 3])
def test_each_new_word_goes_through_bpe_about_once(tmp_path, fresh_gpt2_tokenizer, owt_text, monkeypatch,
                                                  num_workers):
    # Every process counts its BPE runs in one shared counter. Without sharing, each process would meet most of
    # the sample's words (the file repeats it 8 times): 2.4-2.8 runs per distinct pre-token with 3 processes.
    runs = FORK.Value("q", 0)
    bpe = Tokenizer._bpe

    def counting_bpe(self, token_bytes):
        with runs.get_lock():
            runs.value += 1
        return bpe(self, token_bytes)

    monkeypatch.setattr(Tokenizer, "_bpe", counting_bpe)
    tokenizer = fresh_gpt2_tokenizer()
    source = tmp_path / "big.txt"
    source.write_text(owt_text * 8, encoding="utf-8")
    encode_file(tokenizer, source, tmp_path / "out.bin", num_workers=num_workers)

    distinct = len(set(PRETOKEN_RE.findall(owt_text)))
    assert distinct <= runs.value < 1.5 * distinct  # a word is run twice only if two processes meet it at once
    monkeypatch.undo()
    expected = fresh_gpt2_tokenizer().encode(owt_text * 8)
    assert np.fromfile(tmp_path / "out.bin", dtype="<u2").tolist() == expected
    # The caller's tokenizer no longer shares (the exchange is closed), and words it has never seen still encode.
    assert tokenizer.encode(" Zyzzyvas quokka") == fresh_gpt2_tokenizer().encode(" Zyzzyvas quokka")


def _publish(exchange: WordExchange, process_number: int, count: int) -> None:
    exchange.join(process_number)
    for number in range(count):
        exchange.publish(f"{process_number}:{number}", bytes([number % 256]))


def test_only_whole_batches_are_seen_by_the_other_processes():
    exchange = WordExchange(3, FORK)
    writer = FORK.Process(target=_publish, args=(exchange, 2, 2 * BATCH_ENTRIES + 3))
    writer.start()
    writer.join()
    assert writer.exitcode == 0
    cache = {"kept": b"x"}
    exchange.receive(cache)  # as process 0: reads logs 1 (empty) and 2
    # The last 3 entries wait for a full batch; they never leave the writer, which has exited.
    assert cache == {"kept": b"x"} | {f"2:{number}": bytes([number]) for number in range(2 * BATCH_ENTRIES)}
    cache.clear()
    exchange.receive(cache)
    assert cache == {}  # nothing is read twice
    exchange.close()


def test_a_full_log_stops_sharing_and_nothing_else(tmp_path, fresh_gpt2_tokenizer, owt_text, monkeypatch):
    monkeypatch.setattr(word_sharing, "SHARED_BYTES", 8000)  # room for a few batches in each of the 2 logs
    exchange = WordExchange(2, FORK)
    _publish(exchange, 0, 100 * BATCH_ENTRIES)
    assert not exchange.publishing
    exchange.join(1)
    cache = {}
    exchange.receive(cache)
    assert 0 < len(cache) < 100 * BATCH_ENTRIES and len(cache) % BATCH_ENTRIES == 0
    assert cache == {f"0:{number}": bytes([number % 256]) for number in range(len(cache))}
    exchange.close()

    source = tmp_path / "big.txt"
    source.write_text(owt_text * 8, encoding="utf-8")
    encode_file(fresh_gpt2_tokenizer(), source, tmp_path / "out.bin", num_workers=2)
    expected = fresh_gpt2_tokenizer().encode(owt_text * 8)
    assert np.fromfile(tmp_path / "out.bin", dtype="<u2").tolist() == expected


def test_a_lock_whose_holder_died_ends_the_sharing_instead_of_hanging(monkeypatch):
    # A process killed while it holds a log's lock never releases it. The others must go on without that log.
    monkeypatch.setattr(word_sharing, "LOCK_TIMEOUT_SECONDS", 0.05)
    exchange = WordExchange(3, FORK)
    _publish(exchange, 1, BATCH_ENTRIES)  # log 1 has a batch
    _publish(exchange, 2, BATCH_ENTRIES + 1)  # log 2 too; the one entry over it waits in `pending`
    exchange.join(0)
    exchange.locks[1].acquire()  # as if its holder had died
    cache = {}
    exchange.receive(cache)
    assert exchange.others == [2]  # log 1 is dropped
    assert cache == {f"2:{number}": bytes([number]) for number in range(BATCH_ENTRIES)}  # log 2's batch arrived

    exchange.locks[0].acquire()  # a dead reader holding this process's own lock: publishing stops
    _publish(exchange, 0, BATCH_ENTRIES)
    assert not exchange.publishing
    exchange.close()
