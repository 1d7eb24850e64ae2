"""The work behind `vyre-uring read`: files through the reader, hashed on every core
in bounded memory, reported in input order.

Each of a pool of threads (one per core) takes the next CHUNK_FILES paths, reads
them with BatchReader.iter_files within a byte budget of its own (THREAD_BUDGET)
and hashes each file as it comes (hashlib and zlib release the GIL), so reading and
hashing overlap across threads. A file larger than the budget goes to a queue that
every thread serves before taking more paths: it is read in pieces into one buffer
the thread reuses (read_ranges_into) and hashed as they come. The
main thread only walks the paths (under a lock, for whichever thread asks) and
prints the results in input order.

Memory held for file contents, whatever the tree: per thread, THREAD_BUDGET of
results (copied out of a ring's arena, so twice that at most) or one piece; the
peak RSS growth is measured in tests/test_cli_io.py and on 16 cores.
"""
import errno
import hashlib
import itertools
import os
import queue
import threading
import zlib

from ._workers import block_async_signals

THREAD_BUDGET = 1 << 20           # results read and not yet hashed, per thread
CHUNK_FILES = 64                  # paths a thread takes at once: one ring job's worth
MAX_WAITING = 1 << 16             # results kept for in-order output behind a slow file
# Rings the command reads with unless told: hashing, not reading, is what needs the
# cores; a ring per two threads keeps them fed.
READ_RINGS = 8


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
    """Threads that read and hash: one per core this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


class ReadPipeline:
    """Reads (path, error) items with `reader` and calls emit(path, result) for each,
    in input order: result is (bytes, digest or None), or the OSError that stopped
    it. Call run(items, emit) once, then close()."""

    def __init__(self, reader, algorithm):
        self.reader = reader
        self.algorithm = algorithm
        self.stopping = threading.Event()     # Ctrl-C or a failure: threads stop early
        self.done = queue.SimpleQueue()       # from the threads: results, or the end
        self.slots = threading.Semaphore(MAX_WAITING)   # records taken, not yet printed
        self.source_lock = threading.Lock()
        self.large = queue.SimpleQueue()      # (seq, path) of files to stream
        self.threads = []

    def run(self, items, emit):
        self.source = enumerate(items)
        self.threads = [threading.Thread(target=self._serve, name=f"vyre-uring-read-{k}",
                                         daemon=True) for k in range(hash_threads())]
        for t in self.threads:
            t.start()
        ready, next_seq, running = {}, 0, len(self.threads)
        while running:
            results = self.done.get()
            if results is None:
                running -= 1
                continue
            if isinstance(results, BaseException):
                raise results
            for seq, path, result in results:
                ready[seq] = (path, result)
            while next_seq in ready:
                emit(*ready.pop(next_seq))
                next_seq += 1
                self.slots.release()

    def close(self):
        """Stops the threads (between files or pieces) and waits for them."""
        self.stopping.set()
        self.slots.release(MAX_WAITING)       # none waits for output any more
        for t in self.threads:
            t.join()

    # ---- in the threads ------------------------------------------------------------

    def _serve(self):
        block_async_signals()
        piece = bytearray(THREAD_BUDGET)      # this thread's buffer for large files
        try:
            while not self.stopping.is_set():
                # Large files first, whoever found them: adjacent paths (one
                # directory's libraries) would otherwise leave one thread hashing
                # them all while the others wait.
                large = self._next_large()
                if large is not None:
                    seq, path = large
                    self._hand_over([(seq, path, self._stream(path, piece))])
                    continue
                chunk = self._take_chunk()
                if not chunk:
                    break                     # a large file found meanwhile: its
                self._read_chunk(chunk)       # finder streams it before leaving
        except BaseException as exc:          # raised again in the main thread
            self.stopping.set()
            self.done.put(exc)
        self.done.put(None)

    def _take_chunk(self):
        """The next CHUNK_FILES (seq, path, walk error) items; waits while too many
        results queue for output (behind a slow file)."""
        with self.source_lock:
            chunk = list(itertools.islice(self.source, CHUNK_FILES))
        for _ in chunk:
            self.slots.acquire()
        return [(seq, path, err) for seq, (path, err) in chunk]

    def _next_large(self):
        try:
            return self.large.get_nowait()
        except queue.Empty:
            return None

    def _read_chunk(self, chunk):
        """Read and hash a chunk's small files and hand their results to the main
        thread; its large files go to the queue any thread streams from."""
        out = [(seq, path, err) for seq, path, err in chunk if err is not None]
        todo = [(seq, path) for seq, path, err in chunk if err is None]
        for i, path, result in self.reader.iter_files(
                [path for _, path in todo], max_bytes_in_flight=THREAD_BUDGET,
                max_file_bytes=THREAD_BUDGET):
            if isinstance(result, bytes):
                out.append((todo[i][0], path, _summed(self.algorithm, result)))
            elif getattr(result, "errno", None) == errno.EFBIG:
                self.large.put(todo[i])
            else:
                out.append((todo[i][0], path, result))
        self._hand_over(out)

    def _hand_over(self, results):
        # After a stop, a stream may have ended part-way: its result is no result.
        if results and not self.stopping.is_set():
            self.done.put(results)

    def _stream(self, path, buf):
        """A file larger than THREAD_BUDGET: (bytes, digest) read in pieces into `buf`
        and hashed as they come, or its OSError."""
        h = new_hash(self.algorithm)
        total = 0
        with memoryview(buf) as view:
            while not self.stopping.is_set():
                try:
                    [got] = self.reader.read_ranges_into(path, buf, [total], [len(buf)])
                except OSError as exc:
                    return exc
                if h is not None:
                    h.update(view[:got])
                total += got
                if got < len(buf):
                    break
        return total, h.hexdigest() if h is not None else None
