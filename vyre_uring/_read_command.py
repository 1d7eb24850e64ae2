"""The work behind `vyre-uring read`: files through the reader, hashed in bounded
memory while the next files are read, reported in input order.

Small files come from BatchReader.iter_files, whose byte budget bounds what is read
and not yet handed on; a group of them is hashed in a pool thread (hashlib and zlib
release the GIL) while the main thread's next iter_files batch reads without it.
Files larger than WHOLE_FILE_MAX are not read whole: a pool thread streams each
through the reader in pieces (read_ranges_into into one buffer it reuses).

Memory held for file contents, whatever the tree: READ_BUDGET (read, not yet
handed on) + HASH_BUDGET (handed on, not yet hashed, large files' pieces
included), 16 MiB in all; the peak RSS grows by about twice that (allocator
slack, the reader's arenas), measured in tests/test_cli_io.py.
"""
import collections
import errno
import hashlib
import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

READ_BUDGET = 8 << 20
HASH_BUDGET = 8 << 20
WHOLE_FILE_MAX = 4 << 20          # larger files are streamed (at most READ_BUDGET)
GROUP_FILES = 512                 # a pool task hashes at most this many files
MAX_WAITING = 1 << 16             # results kept for in-order output behind a slow file


class Crc32:
    """zlib.crc32 with hashlib's update/hexdigest (8 hex digits)."""

    def __init__(self):
        self.value = 0

    def update(self, data):
        self.value = zlib.crc32(data, self.value)

    def hexdigest(self):
        return f"{self.value & 0xFFFFFFFF:08x}"


def new_hash(algorithm):
    """A hash object for `algorithm` (crc32 or a hashlib name), or None to only count."""
    if algorithm is None:
        return None
    return Crc32() if algorithm == "crc32" else hashlib.new(algorithm)


def _summed(algorithm, data):
    """(bytes, hex digest or None) of one file's contents."""
    h = new_hash(algorithm)
    if h is None:
        return len(data), None
    h.update(data)
    return len(data), h.hexdigest()


def hash_threads():
    """Pool threads: one per core this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


class ReadPipeline:
    """Reads (path, error) items with `reader` and calls emit(path, result) for each,
    in input order: result is (bytes, digest or None), or the OSError that stopped
    it. Call run(items) once; close() stops the pool."""

    def __init__(self, reader, algorithm):
        self.reader = reader
        self.algorithm = algorithm
        self.threads = hash_threads()
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="vyre-uring-hash")
        self.stopping = threading.Event()     # Ctrl-C: streams stop between pieces
        # Every thread gets work while the hand-off stays within HASH_BUDGET: groups
        # and pieces of a size that lets twice as many be in flight as threads.
        share = HASH_BUDGET // (2 * self.threads)
        self.group_max = max(64 << 10, share)
        self.piece = max(256 << 10, min(4 << 20, share))
        self.pending = collections.deque()     # (future, bytes it holds), oldest first
        self.held = 0                         # bytes the pending futures hold
        self.ready = {}                       # seq -> (path, result), not yet emitted
        self.next_seq = 0
        self.group, self.group_bytes = [], 0

    def run(self, items, emit):
        self.emit = emit
        seq_of = {}                           # reader index -> seq, until its result

        def paths():
            index = 0
            for seq, (path, err) in enumerate(items):
                if err is not None:
                    self._done(seq, path, err)
                else:
                    seq_of[index] = seq
                    index += 1
                    yield path
        for index, path, result in self.reader.iter_files(
                paths(), max_bytes_in_flight=READ_BUDGET, max_file_bytes=WHOLE_FILE_MAX):
            seq = seq_of.pop(index)
            if isinstance(result, bytes):
                self._add_to_group(seq, path, result)
            elif getattr(result, "errno", None) == errno.EFBIG:
                self._flush_group()
                self._submit(self._stream, (seq, path), self.piece)
            else:
                self._done(seq, path, result)
            self._collect()
        self._flush_group()
        while self.pending:
            self._wait_oldest()

    def close(self):
        self.stopping.set()
        self.pool.shutdown(wait=True, cancel_futures=True)

    # ---- hand-off ----------------------------------------------------------------

    def _add_to_group(self, seq, path, data):
        if self.algorithm is None:            # nothing to compute: no hand-off
            self._done(seq, path, (len(data), None))
            return
        self.group.append((seq, path, data))
        self.group_bytes += len(data)
        if self.group_bytes >= self.group_max or len(self.group) >= GROUP_FILES:
            self._flush_group()

    def _flush_group(self):
        if self.group:
            self._submit(self._hash_group, self.group, self.group_bytes)
            self.group, self.group_bytes = [], 0

    def _submit(self, fn, arg, nbytes):
        while self.pending and self.held + nbytes > HASH_BUDGET:
            self._wait_oldest()
        self.pending.append((self.pool.submit(fn, arg), nbytes))
        self.held += nbytes

    def _collect(self):
        """Take in what has finished; wait while too many results queue for output."""
        while self.pending and (self.pending[0][0].done() or len(self.ready) > MAX_WAITING):
            self._wait_oldest()

    def _wait_oldest(self):
        future, nbytes = self.pending.popleft()
        self.held -= nbytes
        for seq, path, result in future.result():
            self._done(seq, path, result)

    def _done(self, seq, path, result):
        self.ready[seq] = (path, result)
        while self.next_seq in self.ready:
            self.emit(*self.ready.pop(self.next_seq))
            self.next_seq += 1

    # ---- pool work ---------------------------------------------------------------

    def _hash_group(self, group):
        return [(seq, path, _summed(self.algorithm, data)) for seq, path, data in group]

    def _stream(self, item):
        """A large file, read in pieces into one buffer and hashed as it comes."""
        seq, path = item
        h = new_hash(self.algorithm)
        buf = bytearray(self.piece)
        total = 0
        with memoryview(buf) as view:
            while not self.stopping.is_set():
                try:
                    [got] = self.reader.read_ranges_into(path, buf, [total], [self.piece])
                except OSError as exc:
                    return [(seq, path, exc)]
                if h is not None:
                    h.update(view[:got])
                total += got
                if got < self.piece:
                    return [(seq, path, (total, h.hexdigest() if h is not None else None))]
        return []                             # stopped: nothing to report
