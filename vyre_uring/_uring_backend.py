"""The io_uring backend of the reader: batches of openat, reads, closes.

Python runs once per window of files (or per window of completions), never once per
I/O request: every prep and reap is a batch call whose loop is C.
"""
import array
import os
import queue
import stat
from concurrent.futures import ThreadPoolExecutor

from ._files import OPEN_FLAGS, check_regular, open_regular, path_error
from ._ring import Ring, fstat_batch, scatter
from .buffers import alloc_buffer

__all__ = ["UringBackend", "read_pieces"]

# One read request carries at most this much: Linux caps a single read near 2 GiB.
MAX_PIECE = 1 << 30
# Files up to this size share the window's pool buffer; larger ones get their own.
POOLED_FILE = 1 << 20

OPEN, READ, CLOSE = range(3)


def _tag(kind, index):
    return (kind << 40) | index


class UringBackend:
    """`workers` rings used by as many threads; each window of files goes to whichever
    ring is free. Waits release the GIL, so the rings' I/O overlaps."""
    name = "io_uring"

    def __init__(self, queue_depth, workers):
        self.queue_depth = queue_depth
        self._rings = []
        try:
            for _ in range(workers):
                self._rings.append(_RingReader(queue_depth))
        except BaseException:
            self.close()
            raise
        self._free = queue.SimpleQueue()
        for r in self._rings:
            self._free.put(r)
        self._pool = ThreadPoolExecutor(workers, "vyre-uring") if workers > 1 else None

    @property
    def stats(self):
        return {key: sum(r.stats[key] for r in self._rings)
                for key in ("syscalls", "operations", "short_reads")}

    def close(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=True)
        for r in self._rings:
            r.close()

    def _run(self, tasks):
        """Run fn(ring) for every fn, on the free rings, in parallel when there are
        several rings and several tasks; returns the results in order."""
        def on_a_free_ring(fn):
            r = self._free.get()
            try:
                return fn(r)
            finally:
                self._free.put(r)
        if self._pool is None or len(tasks) < 2:
            return [on_a_free_ring(fn) for fn in tasks]
        return list(self._pool.map(on_a_free_ring, tasks))

    def read_files(self, paths, on_done):
        """Read every path; on_done(index, bytes_or_exception) as each finishes (from
        several threads when there are several rings)."""
        w = self.queue_depth
        windows = [range(s, min(s + w, len(paths))) for s in range(0, len(paths), w)]
        self._run([lambda r, win=win: r.read_window(paths, win, on_done) for win in windows])
        for r in self._rings:
            r.drain()

    def read_ranges_into(self, path, buffer, offsets, lengths, buffer_offsets):
        """Range i into buffer[buffer_offsets[i]:]; returns the byte counts. With
        several rings, each reads a contiguous share of the ranges."""
        n = len(offsets)
        share = max(1, -(-n // len(self._rings)))
        parts = self._run([
            lambda r, s=s: r.read_ranges_into(path, buffer, offsets[s:s + share],
                                              lengths[s:s + share],
                                              buffer_offsets[s:s + share])
            for s in range(0, n, share)])
        return [count for part in parts for count in part]


class _RingReader:
    """One ring's worth of the reader: windows of files, ranges of one file."""

    def __init__(self, queue_depth):
        self.ring = Ring(queue_depth, cq_entries=4 * queue_depth)
        n = 4 * queue_depth
        self._ud = array.array("Q", bytes(8 * n))
        self._res = array.array("i", bytes(4 * n))
        self.stats = {"syscalls": 0, "operations": 0, "short_reads": 0}
        self._pool = None

    def close(self):
        self.ring.close()
        if self._pool is not None:
            self._pool.close()

    # ---- completions -------------------------------------------------------------

    def _reap(self, min_complete):
        """Reap at least `min_complete` completions into self._ud / self._res;
        returns how many."""
        n = self.ring.reap(self._ud, self._res, min_complete=min(min_complete, len(self._ud)))
        self.stats["syscalls"] += 1
        self.stats["operations"] += n
        return n

    # ---- whole files ---------------------------------------------------------------

    def read_window(self, paths, window, on_done):
        """Open, stat, read and close the files paths[i] for i in `window`; the
        closes complete during the next window's reaps (or drain())."""
        names = [paths[i] for i in window]
        n = len(names)
        fds = array.array("i", [-1]) * n
        self.ring.prep_openat_batch(names, OPEN_FLAGS, user_data=array.array(
            "Q", range(_tag(OPEN, 0), _tag(OPEN, n))))
        waiting = n
        while waiting:                         # (closes of the last window come too)
            got = self._reap(waiting)
            waiting -= scatter(self._ud, self._res, got, fds, _tag(OPEN, 0))
        # Sizes and types by fstat of the new fds in one C loop: io_uring's STATX
        # would go through a kernel worker thread, several times slower.
        sizes = array.array("q", [0]) * n
        modes = array.array("i", [0]) * n
        fstat_batch(fds, sizes, modes)
        readable = []
        for j, index in enumerate(window):
            error = _open_error(fds[j], modes[j], names[j])
            if error is None:
                readable.append(j)
            else:
                on_done(index, error)
        if readable:
            self._read_opened(names, window, fds, sizes, readable, on_done)
        opened = array.array("i", [fd for fd in fds if fd >= 0])
        if opened:
            # Completed by the next window's reaps, or by drain().
            self.ring.prep_close_batch(opened, user_data=array.array(
                "Q", [_tag(CLOSE, 0)] * len(opened)))

    def _read_opened(self, names, window, fds, sizes, readable, on_done):
        small = [j for j in readable if sizes[j] <= POOLED_FILE]
        if small:
            lengths = array.array("q", [sizes[j] for j in small])
            starts = array.array("q", [0]) * len(small)
            pos = 0
            for k, length in enumerate(lengths):
                starts[k] = pos
                pos += length
            pool = self._pool_of(pos)
            got = read_pieces(self, array.array("i", [fds[j] for j in small]), pool,
                              array.array("q", [0]) * len(small), lengths, starts,
                              lambda k: names[small[k]])
            for k, j in enumerate(small):
                result = got[k]
                if not isinstance(result, OSError):
                    result = pool[starts[k]:starts[k] + result]
                on_done(window[j], result)
        for j in readable:
            if sizes[j] > POOLED_FILE:
                on_done(window[j], self._read_large(fds[j], sizes[j], names[j]))

    def _pool_of(self, nbytes):
        """The ring's page-aligned pool, grown to at least `nbytes`. Kept between
        windows: a fresh mapping per window costs a page fault per page. Results are
        sliced only up to the bytes each read returned, so older contents never show."""
        if self._pool is None or len(self._pool) < nbytes:
            if self._pool is not None:
                self._pool.close()
            self._pool = alloc_buffer(max(nbytes, 1 << 16))
        return self._pool

    def _read_large(self, fd, size, name):
        buf = bytearray(size)
        got = read_pieces(self, array.array("i", [fd]), buf, array.array("q", [0]),
                          array.array("q", [size]), array.array("q", [0]),
                          lambda k: name)[0]
        if isinstance(got, OSError):
            return got
        return bytes(memoryview(buf)[:got])

    def drain(self):
        """Reap what is still outstanding (the last window's closes)."""
        while self.ring.in_flight or self.ring.pending:
            self._reap(1)

    # ---- ranges of one file --------------------------------------------------------

    def read_ranges_into(self, path, buffer, offsets, lengths, buffer_offsets):
        fd = open_regular(path)
        try:
            got = read_pieces(self, fd, buffer, offsets, lengths, buffer_offsets,
                              lambda i: path)
        finally:
            os.close(fd)
        for result in got:
            if isinstance(result, OSError):
                raise result
        return got


def _open_error(fd, mode, name):
    """The error that stops this file before its read, or None (mode < 0: -errno
    of the fstat)."""
    if fd < 0:
        return path_error(-fd, name)
    if mode < 0:
        return path_error(-mode, name)
    if not stat.S_ISREG(mode):
        try:
            check_regular(mode, name)
        except OSError as exc:
            return exc
    return None


def read_pieces(backend, fds, buffer, offsets, lengths, buffer_offsets, name_of):
    """Read range i (fds an int or one fd per range) into buffer[buffer_offsets[i]:],
    resubmitting the rest after a short read, in pieces of at most MAX_PIECE, until
    the range is full or EOF. Returns per range the bytes read, or its OSError
    (named by name_of(i))."""
    n = len(offsets)
    done = [0] * n
    result = [0 if lengths[i] == 0 else None for i in range(n)]
    todo = [i for i in range(n) if lengths[i]]
    ring = backend.ring
    while todo:
        batch = todo[:len(backend._ud)]
        todo = todo[len(batch):]
        piece_len = array.array("q", [min(lengths[i] - done[i], MAX_PIECE) for i in batch])
        prepared = ring.prep_reads(
            fds if isinstance(fds, int) else array.array("i", [fds[i] for i in batch]),
            buffer,
            array.array("q", [offsets[i] + done[i] for i in batch]),
            piece_len,
            array.array("q", [buffer_offsets[i] + done[i] for i in batch]),
            array.array("Q", [_tag(READ, i) for i in batch]))
        todo = batch[prepared:] + todo
        waiting = prepared
        while waiting:
            got = backend._reap(waiting)
            for ud, res in zip(backend._ud[:got], backend._res[:got]):
                if ud >> 40 != READ:
                    continue                   # a close from an earlier window
                waiting -= 1
                i = ud & 0xFFFFFFFFFF
                if res < 0:
                    result[i] = path_error(-res, name_of(i))
                elif res == 0:
                    result[i] = done[i]        # EOF: what pread would return
                else:
                    done[i] += res
                    if done[i] < lengths[i]:
                        backend.stats["short_reads"] += 1
                        todo.append(i)
                    else:
                        result[i] = done[i]
    return result
