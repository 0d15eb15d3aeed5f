"""Share new words between the processes that encode one file, so that each word goes through BPE once.

Each process of `corpus.encode_file` has its own caches, and the first sight of a pre-token costs a BPE run
(several microseconds of Python). On the 4 MB TinyStories file, each of two processes meets about 6,600
distinct pre-tokens, but the whole file has only about 8,400: without sharing, a third of the BPE work is
done twice.

So every process publishes the pre-tokens it encodes, and before running BPE on a word it reads what the
others have published since it last looked. A cache miss is the only moment the news can help, so it is the
only moment a process looks, and a miss that finds its word there costs a dictionary update instead of BPE.
Measured on that file: about 8,470 BPE runs in all instead of 13,200 (BENCHMARKS.md).

The news travels through shared memory: one append-only log per process, which only that process writes.

    log of process i:  [bytes used: int64][length: uint32][marshal of {pre-token: packed ids}][length]...

A process publishes its entries in batches of `BATCH_ENTRIES` (a batch is a `marshal`-ed dict, which loads
in C). Each log has a lock: the writer appends a batch and only then raises the count of bytes used, under
the lock, so a reader that takes the lock never sees half a batch. Anything that goes wrong only loses the
sharing, never correctness, since every process can still encode every word itself: a full log stops
publishing, and a lock held for over `LOCK_TIMEOUT_SECONDS` (its holder was killed in the few microseconds it
holds it) ends the sharing with that log instead of waiting forever.

Only processes started by ``fork`` share (they inherit the memory map); elsewhere each process works alone.

The `Tokenizer` knows nothing of this: `sharing_words` swaps its pre-token cache for a `SharingPretokenCache`
while the processes run, and puts the plain one back afterwards.
"""

import contextlib
import marshal
import mmap
import struct
from collections.abc import Iterator
from multiprocessing.context import BaseContext

from cs336_bpe.tokenizer import PretokenCache, Tokenizer

# All the logs together: about 800,000 entries. This also bounds what one `receive` can add to a cache (about
# 100 MB as Python objects, at worst), however many processes there are. Only pages actually written take memory.
SHARED_BYTES = 16 << 20
BATCH_ENTRIES = 64  # small enough that news arrives while it is still useful, large enough to be cheap
LOCK_TIMEOUT_SECONDS = 1.0  # a lock is held for microseconds; this long means its holder has died
_USED = struct.Struct("<q")  # a log's first 8 bytes: how many bytes of batches follow
_LENGTH = struct.Struct("<I")  # before each batch: its length


class WordExchange:
    """The logs of `num_processes` processes. Create it before forking; each process then calls `join`.

    The process that creates it writes log 0 until it calls `join` with another index.
    """

    def __init__(self, num_processes: int, context: BaseContext):
        self.log_bytes = SHARED_BYTES // num_processes
        self.memory = mmap.mmap(-1, self.log_bytes * num_processes)  # anonymous and shared: forked children see it
        self.locks = [context.Lock() for _ in range(num_processes)]  # one per log
        self.read_upto = [0] * num_processes  # bytes of each log already read
        self.pending: dict[str, bytes] = {}  # entries waiting for a full batch
        self.publishing = True  # until the log is full, or its lock is lost
        self.join(0)

    def join(self, index: int) -> None:
        """From now on this process writes log `index` and reads the others."""
        self.own = index
        self.others = [other for other in range(len(self.locks)) if other != index]

    def receive(self, cache: dict[str, bytes]) -> None:
        """Add to `cache` every entry the other processes have published since the last call."""
        for index in self.others:
            base = index * self.log_bytes
            start = self.read_upto[index]
            if _USED.unpack_from(self.memory, base)[0] == start:  # nothing new (read without the lock: a hint)
                continue
            if not self.locks[index].acquire(timeout=LOCK_TIMEOUT_SECONDS):
                self.others = [other for other in self.others if other != index]  # stop reading that log
                continue
            try:
                end = _USED.unpack_from(self.memory, base)[0]
                batches = self.memory[base + _USED.size + start:base + _USED.size + end]
            finally:
                self.locks[index].release()
            self.read_upto[index] = end
            position = 0
            while position < len(batches):
                (length,) = _LENGTH.unpack_from(batches, position)
                position += _LENGTH.size
                cache.update(marshal.loads(batches[position:position + length]))
                position += length

    def publish(self, pretoken: str, packed: bytes) -> None:
        """Offer one newly encoded pre-token to the others (it is written when its batch is full)."""
        if not self.publishing:
            return
        self.pending[pretoken] = packed
        if len(self.pending) < BATCH_ENTRIES:
            return
        batch = marshal.dumps(self.pending)
        self.pending = {}
        base = self.own * self.log_bytes
        if not self.locks[self.own].acquire(timeout=LOCK_TIMEOUT_SECONDS):
            self.publishing = False  # a reader died holding the lock
            return
        try:
            used = _USED.unpack_from(self.memory, base)[0]
            start = base + _USED.size + used
            end = start + _LENGTH.size + len(batch)
            if end > base + self.log_bytes:  # the log is full
                self.publishing = False
                return
            _LENGTH.pack_into(self.memory, start, len(batch))
            self.memory[start + _LENGTH.size:end] = batch
            _USED.pack_into(self.memory, base, end - base - _USED.size)  # last: readers now see the batch
        finally:
            self.locks[self.own].release()

    def close(self) -> None:
        self.memory.close()


class SharingPretokenCache(PretokenCache):
    """A tokenizer's pre-token cache whose misses go through `exchange`: take the others' news, and only then
    run BPE on a word nobody has published, and publish it."""

    def __init__(self, cache: PretokenCache, exchange: WordExchange):
        super().__init__(cache.bpe, cache.id_typecode)
        self.update(cache)
        self.exchange = exchange

    def __missing__(self, pretoken: str) -> bytes:
        self.exchange.receive(self)
        if pretoken in self:  # another process encoded it first
            return self[pretoken]
        packed = super().__missing__(pretoken)
        self.exchange.publish(pretoken, packed)
        return packed


@contextlib.contextmanager
def sharing_words(tokenizer: Tokenizer, exchange: WordExchange | None) -> Iterator[None]:
    """While inside, `tokenizer` shares the words it encodes through `exchange` (None: it does not share).

    Enter before forking, so that the workers inherit the sharing cache. On leaving, the tokenizer gets its plain
    cache back, with everything the sharing one learnt."""
    if exchange is None:
        yield
        return
    plain = tokenizer.pretoken_cache
    sharing = tokenizer.pretoken_cache = SharingPretokenCache(plain, exchange)
    try:
        yield
    finally:
        plain.update(sharing)
        tokenizer.pretoken_cache = plain
