"""The io_uring backend of the reader.

Python runs once per job (a batch of up to a few thousand files, or of ranges),
never once per file or request: each job's openat, fstat, read and close loop is C
(`_ring.read_file_window`, `_ring.read_ranges_job`). Python only turns the rare
failures into exceptions and reads the files that report size 0 to EOF.
"""
import array
import errno
import os
import queue
from concurrent.futures import ThreadPoolExecutor, wait

from ._files import (OPEN_FLAGS, check_regular, is_direct, open_regular, path_error,
                     read_to_eof)
from ._ring import (DEFERRED, DIRECT_CHUNK, NOT_REGULAR, NUL_BYTE, UNSIZED, Op, Ring,
                    drain_jobs, read_file_window, read_ranges_job)
from .buffers import alloc_buffer
from .errors import UringSyscallError

__all__ = ["UringBackend"]

# Files per job: large enough that Python's per-job work vanishes, small enough
# that several rings share a batch evenly and a job's tables stay small.
MAX_JOB_FILES = 4096
# All the reader's rings ever run: the kernel refuses anything else on them.
READER_OPS = frozenset({Op.OPENAT, Op.READ, Op.READ_FIXED, Op.CLOSE})
# How long close() waits for an interrupted job's requests before the ring cancels.
CLOSE_PATIENCE_S = 10.0
# Ranges of one file from which registering its fd pays for the two syscalls.
REGISTER_FILE_MIN_RANGES = 256


class UringBackend:
    """`workers` rings used by as many threads; each job goes to whichever ring is
    free. Waits release the GIL, so the rings' I/O overlaps."""
    name = "io_uring"

    def __init__(self, queue_depth, workers, direct=False):
        self.queue_depth = queue_depth
        self.direct = direct
        self._rings = []
        try:
            for _ in range(workers):
                self._rings.append(_RingReader(queue_depth, direct))
        except BaseException:
            self.close()
            raise
        self._free = queue.SimpleQueue()
        for r in self._rings:
            self._free.put(r)
        self._pool = ThreadPoolExecutor(workers, "vyre-uring") if workers > 1 else None

    @property
    def stats(self):
        keys = ("syscalls", "operations", "short_reads", "sync_reads", "direct_fallbacks")
        out = {key: sum(r.stats[k] for r in self._rings) for k, key in enumerate(keys)}
        out["buffer_registration"] = self._rings[0].registration
        return out

    def close(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=True)
        for r in self._rings:
            r.close()

    def _run(self, tasks):
        """Run fn(ring) for every fn, on the free rings, in parallel when there are
        several rings and several tasks; returns the results in order. When one
        fails, the others still finish before its exception is raised: the caller's
        fd and buffer must outlive every read."""
        def on_a_free_ring(fn):
            r = self._free.get()
            try:
                return fn(r)
            finally:
                self._free.put(r)
        if self._pool is None or len(tasks) < 2:
            return [on_a_free_ring(fn) for fn in tasks]
        futures = [self._pool.submit(on_a_free_ring, fn) for fn in tasks]
        wait(futures)
        return [f.result() for f in futures]

    def read_files(self, paths, out, report, budget=None):
        """out[i] = the bytes of paths[i], or its OSError; report.advance(files,
        bytes) after each job (from several threads when there are several rings).
        With a byte `budget` (a ByteBudget, shared by the rings), the results
        together stay within it (or are one file): returns the indices of the files
        left for a later call."""
        n = len(paths)
        rings = len(self._rings)
        step = max(self.queue_depth, min(MAX_JOB_FILES, -(-n // (4 * rings))))
        if budget is not None:
            step = max(1, -(-n // rings))      # one job per ring
        deferred = self._run([
            lambda r, s=s: r.read_files(paths, s, min(s + step, n), out, report, budget)
            for s in range(0, n, step)])
        for r in self._rings:
            r.drain()
        return [i for part in deferred for i in part]

    def read_ranges_into(self, path, buffer, offsets, lengths, buffer_offsets):
        """Range i into buffer[buffer_offsets[i]:]; returns the byte counts."""
        return self._ranges(path, offsets, lengths, buffer, buffer_offsets)

    def read_ranges(self, path, offsets, lengths):
        """Each range as a bytes object, read straight into it."""
        return self._ranges(path, offsets, lengths, None, None)

    def _ranges(self, path, offsets, lengths, buffer, buffer_offsets):
        """With several rings, each reads a contiguous share of the ranges."""
        n = len(offsets)
        share = max(1, -(-n // len(self._rings)))
        def share_of(seq, s):
            return None if seq is None else seq[s:s + share]
        fd = open_regular(path, self.direct)
        direct = self.direct and is_direct(fd)
        if self.direct and not direct:
            self._rings[0].stats[4] += 1       # the filesystem refused O_DIRECT
        try:
            parts = self._run([
                lambda r, s=s: r.read_ranges(fd, offsets[s:s + share], lengths[s:s + share],
                                             buffer, share_of(buffer_offsets, s), path,
                                             direct)
                for s in range(0, n, share)])
        finally:
            os.close(fd)
        return parts[0] if len(parts) == 1 else [x for part in parts for x in part]


class _RingReader:
    """One ring, its counters (syscalls, operations, short reads, synchronous reads,
    O_DIRECT refusals) and, with direct=True, its bounce slots for O_DIRECT reads."""

    def __init__(self, queue_depth, direct):
        # CQ room for a full depth of opens and reads plus the closes behind them.
        self.ring = _restricted_ring(queue_depth, cq_entries=4 * queue_depth)
        self.depth = queue_depth
        self.stats = array.array("q", [0] * 5)
        # Page-aligned, touched only as far as reads use it; registered, so that
        # O_DIRECT reads skip pinning its pages each time, where the kernel and
        # RLIMIT_MEMLOCK allow (else the reads go unregistered, and stats say why).
        self.bounce = None
        self.registration = None              # nothing to register
        if direct:
            self.bounce = alloc_buffer(queue_depth * DIRECT_CHUNK)
            try:
                self.ring.register_buffers([self.bounce])
                self.registration = "registered"
            except UringSyscallError as exc:
                self.registration = f"refused: {exc}"

    def close(self):
        # Completes the last closes and closes the fds of opens an interrupted job
        # left behind (ring.close() would only cancel and discard them).
        try:
            drain_jobs(self.ring, self.stats, CLOSE_PATIENCE_S)
        except Exception:
            pass                                # the ring's own close still drains
        self.ring.close()
        if self.bounce is not None:
            try:
                self.bounce.close()
            except BufferError:
                pass        # a read the close could not cancel still holds it: leave it


    def _settle(self):
        """Before an O_DIRECT job: an interrupted job's reads may still write into
        the bounce slots the next job would hand out again. Wait for them."""
        if self.bounce is not None and self.ring.in_flight:
            drain_jobs(self.ring, self.stats)

    def read_files(self, paths, start, stop, out, report, budget):
        """Files start..stop-1 into out; returns the indices deferred by the budget."""
        self._settle()
        leftovers, nbytes = read_file_window(self.ring, paths, start, stop, out,
                                             OPEN_FLAGS, self.depth, self.stats,
                                             self.bounce, budget)
        deferred = []
        seen = 0
        try:
            for i, code, mode, fd in leftovers:
                seen += 1
                if code == DEFERRED:
                    deferred.append(start + i)
                    continue
                path = paths[start + i]
                out[start + i] = result = _leftover(path, code, mode, fd)
                if not isinstance(result, BaseException):
                    nbytes += len(result)
        finally:
            for i, code, mode, fd in leftovers[seen:]:     # only after an exception
                if code == UNSIZED:
                    os.close(fd)
        report.advance(stop - start - len(deferred), nbytes)
        return deferred

    def read_ranges(self, fd, offsets, lengths, buffer, buffer_offsets, path, direct):
        if direct:
            self._settle()
        # The fd as a registered file: each read then skips taking and dropping a
        # reference to the file (two atomics on a line that several rings share).
        # Registering costs two syscalls: worth it for many ranges only.
        fixed = False
        if len(offsets) >= REGISTER_FILE_MIN_RANGES:
            try:
                self.ring.register_files([fd])
                fixed = True
            except UringSyscallError:
                pass                            # plain fd: the same reads, a bit slower
        try:
            return read_ranges_job(self.ring, fd, offsets, lengths, buffer, buffer_offsets,
                                   self.depth, self.stats, path,
                                   self.bounce if direct else None, fixed)
        finally:
            if fixed:
                self.ring.unregister_files()

    def drain(self):
        """Complete what is still outstanding (the last job's closes)."""
        drain_jobs(self.ring, self.stats)


def _restricted_ring(entries, **kwargs):
    """A Ring the kernel lets run only the reader's opcodes (Linux 5.10 and later;
    older kernels refuse the setup flag with EINVAL, and get an unrestricted ring)."""
    try:
        return Ring(entries, allowed_ops=READER_OPS, **kwargs)
    except UringSyscallError as exc:
        if exc.errno != errno.EINVAL:
            raise
    return Ring(entries, **kwargs)


def _leftover(path, code, mode, fd):
    """The result of a file the C loop did not read: its error, or (size 0) its
    bytes read to EOF through the fd it left open."""
    if code == UNSIZED:
        try:
            return read_to_eof(fd, path)
        finally:
            os.close(fd)
    if code == NUL_BYTE:
        return path_error(errno.EINVAL, path, "embedded null byte")
    if code == NOT_REGULAR:
        try:
            check_regular(mode, path)
        except OSError as exc:
            return exc
    return path_error(code, path)
