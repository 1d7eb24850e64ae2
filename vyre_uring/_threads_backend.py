"""The fallback backend: plain os.pread/os.preadv in a thread pool.

Same semantics as the io_uring backend; it is what users get where io_uring is
blocked, and the oracle the reader's tests compare io_uring against.
"""
import errno
import fcntl
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from ._files import is_direct, open_regular, path_error, read_to_eof
from ._ring import DIRECT_ALIGN, DIRECT_CHUNK
from .buffers import alloc_buffer

__all__ = ["ThreadsBackend"]


class ThreadsBackend:
    name = "threads"

    def __init__(self, workers, direct=False):
        self._workers = workers
        self.direct = direct
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vyre-read")
        self._fallbacks = 0
        self._lock = threading.Lock()

    @property
    def stats(self):
        # Syscalls and the like are not counted per call here: None says so rather
        # than a made-up 0.
        return {"syscalls": None, "operations": None, "short_reads": None,
                "sync_reads": None, "direct_fallbacks": self._fallbacks,
                "buffer_registration": None}

    def close(self):
        self._pool.shutdown(wait=True)

    def _in_runs(self, n, fn):
        """fn(i) for i in range(n) on the pool, in order; each task handles a run of
        indices: a task per small read costs more than the read."""
        step = max(1, min(64, n // (4 * self._workers) or 1))

        def run(start):
            return [fn(i) for i in range(start, min(start + step, n))]
        return [x for part in self._pool.map(run, range(0, n, step)) for x in part]

    def _open(self, path):
        """(fd, direct): the file opened O_DIRECT when asked and allowed."""
        fd = open_regular(path, self.direct)
        direct = self.direct and is_direct(fd)
        if self.direct and not direct:
            with self._lock:
                self._fallbacks += 1
        return fd, direct

    def read_files(self, paths, out, report, budget=None):
        """out[i] = the bytes of paths[i], or its OSError; report.advance(files,
        bytes) after each file. With a byte `budget` (a ByteBudget), the results
        together stay within it (or are one file): returns the indices of the files
        left for a later call."""
        def one(i):
            result = self._read_file(paths[i], budget)
            if result is _DEFERRED:
                return i
            out[i] = result
            report.advance(1, 0 if isinstance(result, BaseException) else len(result))
            return None
        return [i for i in self._in_runs(len(paths), one) if i is not None]

    def _read_file(self, path, budget):
        """The file's bytes (as many as its size when opened, fewer if it shrank),
        the OSError that stopped it, or _DEFERRED when the budget has no room."""
        if budget is not None and budget.spent:
            return _DEFERRED
        try:
            fd, direct = self._open(path)
        except OSError as exc:
            return exc
        try:
            size = os.fstat(fd).st_size
            if size == 0:                 # empty, or /proc: its size says nothing
                return read_to_eof(fd, path)
            if size > sys.maxsize - 64:
                return path_error(errno.EFBIG, path)   # no bytes object can hold it
            if budget is not None and not budget.take(size):
                return _DEFERRED
            return self._pread_all(fd, size, 0, direct)
        except OSError as exc:
            return path_error(exc.errno, path)
        except (MemoryError, OverflowError):     # no bytes object that large
            return path_error(errno.ENOMEM, path)
        finally:
            os.close(fd)

    def read_ranges_into(self, path, buffer, offsets, lengths, buffer_offsets):
        """pread each range into buffer[buffer_offsets[i]:]; returns the byte counts."""
        view = memoryview(buffer).cast("B")
        fd, direct = self._open(path)
        try:
            def one(i):
                start = buffer_offsets[i]
                try:
                    if not direct:
                        return _pread_into(fd, view[start:start + lengths[i]], offsets[i])
                    data = self._pread_all(fd, lengths[i], offsets[i], True)
                    view[start:start + len(data)] = data
                    return len(data)
                except OSError as exc:
                    raise path_error(exc.errno, path) from None
            return self._in_runs(len(offsets), one)
        finally:
            view.release()
            os.close(fd)

    def read_ranges(self, path, offsets, lengths):
        """Each range's bytes (pread semantics: past EOF, what exists)."""
        fd, direct = self._open(path)
        try:
            def one(i):
                try:
                    return self._pread_all(fd, lengths[i], offsets[i], direct)
                except OSError as exc:
                    raise path_error(exc.errno, path) from None
            return self._in_runs(len(offsets), one)
        finally:
            os.close(fd)

    def _pread_all(self, fd, size, offset, direct):
        """`size` bytes at `offset`, fewer at EOF (a file that shrank: what read()
        would return)."""
        if direct:
            try:
                return _pread_direct(fd, size, offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # The filesystem refuses this O_DIRECT read: buffered instead.
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                with self._lock:
                    self._fallbacks += 1
        parts = []
        done = 0
        while done < size:
            chunk = os.pread(fd, size - done, offset + done)
            if not chunk:
                break
            parts.append(chunk)
            done += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)


_DEFERRED = object()               # a file the budget left for a later call


_local = threading.local()         # each thread's O_DIRECT bounce buffer


def _pread_direct(fd, size, offset):
    """`size` bytes at `offset` of an O_DIRECT fd: aligned reads into a page-aligned
    bounce buffer, copied out."""
    bounce = getattr(_local, "bounce", None)
    if bounce is None:
        bounce = _local.bounce = alloc_buffer(DIRECT_CHUNK)
    view = memoryview(bounce)
    out = bytearray()
    pos, end = offset, offset + size
    while pos < end:
        skip = pos % DIRECT_ALIGN
        length = min(-(-(end - pos + skip) // DIRECT_ALIGN) * DIRECT_ALIGN, DIRECT_CHUNK)
        got = min(os.preadv(fd, [view[:length]], pos - skip) - skip, end - pos)
        if got <= 0:
            break
        out += view[skip:skip + got]
        pos += got
    view.release()
    return bytes(out)


def _pread_into(fd, view, offset):
    """Fill `view` from `offset` until it is full or EOF; returns the byte count."""
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done
