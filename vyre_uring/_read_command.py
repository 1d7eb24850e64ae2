"""The work behind `vyre-uring read`: files through the reader, hashed in bounded
memory while the next files are read, reported in input order.

Small files come from BatchReader.iter_files, whose byte budget bounds what is read
and not yet handed on; a group of them is hashed in a pool thread (hashlib and zlib
release the GIL) while the main thread's next iter_files batch reads without it.
Files larger than WHOLE_FILE_MAX are not read whole: a pool thread streams each
through the reader in pieces (read_ranges_into into one buffer it reuses).

Memory held for file contents, whatever the tree: READ_BUDGET (read, not yet
handed on) and a hash budget (handed on, not yet hashed, large files' pieces
included) of 8 MiB on 8 cores or fewer, 1 MiB per core beyond, at most 16 MiB; the
peak RSS grows by about twice that (small files are copied out of the rings'
arenas, allocator slack), measured in tests/test_cli_io.py and on 16 cores.
"""
import errno
import hashlib
import os
import queue
import threading
import zlib

from ._workers import block_async_signals

WHOLE_FILE_MAX = 4 << 20          # larger files are streamed (at most the read budget)
READ_BUDGET = 8 << 20             # read, not yet handed on (small files land twice:
                                  # in a ring's arena, then in their bytes)
# Rings the command reads with unless told: hashing, not reading, is what needs the
# cores, and each ring keeps an arena of its own (4 MiB) resident.
READ_RINGS = 4
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


def hash_budget(threads):
    """Bytes handed to the hash threads and not yet hashed: enough to keep `threads`
    busy (a large file is hashed by one thread, so many cores need many files in
    flight), within a bound that does not grow with the machine."""
    return min(16 << 20, max(8 << 20, threads << 20))


class ReadPipeline:
    """Reads (path, error) items with `reader` and calls emit(path, result) for each,
    in input order: result is (bytes, digest or None), or the OSError that stopped
    it. Call run(items) once; close() stops the pool."""

    def __init__(self, reader, algorithm):
        self.reader = reader
        self.algorithm = algorithm
        self.threads = hash_threads()
        self.budget = hash_budget(self.threads)
        self.pool = HashPool(self.threads)
        self.stopping = threading.Event()     # Ctrl-C: streams stop between pieces
        # Every thread gets work while the hand-off stays within the budget: groups
        # and pieces of a size that lets twice as many be in flight as threads.
        share = self.budget // (2 * self.threads)
        self.group_max = max(64 << 10, share)
        self.piece = max(256 << 10, min(4 << 20, share))
        self.pending = 0                      # tasks posted, not yet taken back
        self.held = 0                         # bytes the pending tasks hold
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
            self._take(self.pool.done.get())

    def close(self):
        self.stopping.set()
        self.pool.close()

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
        # Waits for whichever task ends first, not the oldest: a long stream must not
        # hold up the hand-off while other threads are free.
        while self.pending and self.held + nbytes > self.budget:
            self._take(self.pool.done.get())
        self.pool.post(fn, arg, nbytes)
        self.pending += 1
        self.held += nbytes

    def _collect(self):
        """Take in what has finished; wait while too many results queue for output."""
        while not self.pool.done.empty():
            self._take(self.pool.done.get())
        while self.pending and len(self.ready) > MAX_WAITING:
            self._take(self.pool.done.get())

    def _take(self, finished):
        nbytes, results = finished
        self.pending -= 1
        self.held -= nbytes
        if isinstance(results, BaseException):
            raise results
        for seq, path, result in results:
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


class HashPool:
    """`n` threads running posted tasks; each finished task's (bytes it held, result
    or exception) goes to the `done` queue, in the order they finish."""

    def __init__(self, n):
        self.todo = queue.SimpleQueue()
        self.done = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._serve, name=f"vyre-uring-hash-{k}",
                                         daemon=True) for k in range(n)]
        for t in self.threads:
            t.start()

    def post(self, fn, arg, nbytes):
        self.todo.put((fn, arg, nbytes))

    def close(self):
        """Ends the threads once the tasks already posted ran."""
        for _ in self.threads:
            self.todo.put(None)
        for t in self.threads:
            t.join()

    def _serve(self):
        block_async_signals()
        while True:
            task = self.todo.get()
            if task is None:
                return
            fn, arg, nbytes = task
            try:
                result = fn(arg)
            except BaseException as exc:       # raised again in the main thread
                result = exc
            self.done.put((nbytes, result))
            del task, arg, result               # the data is hashed: let it go
