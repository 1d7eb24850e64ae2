"""The batch file reader: many files, many byte ranges, through io_uring or a thread
pool of os.pread where io_uring is blocked.

    read_files(paths)                  -> list of bytes, in input order
    iter_files(paths)                  -> (index, path, bytes) as files complete
    read_ranges(path, offsets, lengths) -> list of bytes (pread semantics)
    read_ranges_into(path, buffer, offsets, lengths, buffer_offsets) -> byte counts
    BatchReader(...)                   the reusable object behind them
"""
import array
import itertools
import os
import threading
import warnings

from ._ring import ByteBudget, check_ranges
from .availability import is_unavailable_errno
from .errors import UringSyscallError, UringUnavailableError

__all__ = ["BatchReader", "read_files", "iter_files", "read_ranges", "read_ranges_into",
           "BACKEND_ENV"]

BACKEND_ENV = "VYRE_URING_BACKEND"     # forces a backend: io_uring or threads
BACKENDS = ("auto", "io_uring", "threads")
DEFAULT_QUEUE_DEPTH = 64
ITER_BATCH_FILES = 4096                # most files one iter_files batch considers

_warned = threading.Event()            # "auto" warns once per process when it falls back


class BatchReader:
    """Owns a backend (an io_uring ring, or a thread pool) and reads through it.

    backend: "auto" (io_uring, falling back to threads with a warning when io_uring
    is unavailable here), "io_uring" (UringUnavailableError instead of falling
    back) or "threads". The environment variable VYRE_URING_BACKEND overrides it.
    direct=True reads with O_DIRECT, bypassing the page cache: alignment is handled
    here (aligned reads through page-aligned bounce buffers, copied out), and files
    on filesystems that refuse O_DIRECT are read buffered, counted in
    stats()["direct_fallbacks"].
    """

    def __init__(self, *, backend="auto", queue_depth=DEFAULT_QUEUE_DEPTH, workers=None,
                 direct=False):
        backend = os.environ.get(BACKEND_ENV) or backend
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}"
                             f"{' (from ' + BACKEND_ENV + ')' if os.environ.get(BACKEND_ENV) else ''}")
        if not 1 <= queue_depth <= 4096:
            raise ValueError(f"queue_depth must be between 1 and 4096, not {queue_depth}")
        if workers is not None and not 1 <= workers <= 256:
            raise ValueError(f"workers must be between 1 and 256, not {workers}")
        self.fallback_reason = None
        self._queue_depth = queue_depth
        self._backend = self._make_backend(backend, queue_depth, workers, bool(direct))
        self._files = self._bytes = 0

    def _make_backend(self, backend, queue_depth, workers, direct):
        if backend != "threads":
            try:
                from ._uring_backend import UringBackend
                return UringBackend(queue_depth, workers or default_workers(), direct)
            except UringSyscallError as exc:
                if backend == "io_uring" or not (isinstance(exc, UringUnavailableError)
                                                 or is_unavailable_errno(exc.errno)):
                    raise
                self.fallback_reason = str(exc)
                if not _warned.is_set():
                    _warned.set()
                    warnings.warn(f"vyre_uring: io_uring is unavailable, reading with "
                                  f"threads instead: {exc}", RuntimeWarning, stacklevel=4)
        from ._threads_backend import ThreadsBackend
        # Blocking reads: a few threads per core keep the disk busy; page-cache reads
        # gain nothing past the core count, and each thread costs GIL hand-offs.
        return ThreadsBackend(workers or min(16, (os.cpu_count() or 1) * 2), direct)

    @property
    def backend(self):
        """The backend in use: "io_uring" or "threads"."""
        return self._backend.name

    def close(self):
        self._backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def stats(self):
        """Counters since creation: files, bytes, operations, short reads resubmitted,
        syscalls, the backend, and why it fell back (None when it did not)."""
        return {"files": self._files, "bytes": self._bytes, **self._backend.stats,
                "backend": self.backend, "fallback_reason": self.fallback_reason}

    def read_files(self, paths, *, on_error="raise", progress=None):
        """Every file's bytes, in input order. With on_error="return" a failed path's
        slot holds its OSError (errno and filename set) and the others are still read;
        with "raise" the first failure (in input order) is raised after the batch.
        progress: True for a tqdm bar (when tqdm is installed), or a callable
        receiving (files_done, files_total, bytes_done)."""
        if on_error not in ("raise", "return"):
            raise ValueError(f'on_error must be "raise" or "return", not {on_error!r}')
        paths = paths if isinstance(paths, (list, tuple)) else list(paths)
        out = [None] * len(paths)
        report = _Progress(progress, len(paths))
        try:
            self._backend.read_files(paths, out, report)
        finally:
            report.close()
        self._files += report.files
        self._bytes += report.bytes
        if on_error == "raise":
            for r in out:
                if isinstance(r, BaseException):
                    raise r
        return out

    def iter_files(self, paths, *, max_bytes_in_flight=64 << 20, progress=None):
        """Yield (index, path, bytes_or_OSError) batch by batch, as files complete
        (not in input order). Memory stays within `max_bytes_in_flight` whatever the
        total: a batch takes files while their sizes fit the budget (a file larger
        than the budget comes alone); the files that did not fit go first in the next
        batch."""
        if max_bytes_in_flight < 1:
            raise ValueError(f"max_bytes_in_flight must be >= 1, not {max_bytes_in_flight}")
        paths = paths if isinstance(paths, (list, tuple)) else list(paths)
        report = _Progress(progress, len(paths))
        pending = list(range(len(paths)))
        try:
            while pending:
                indices = pending[:ITER_BATCH_FILES]
                out = [None] * len(indices)
                before = report.bytes
                deferred = self._backend.read_files([paths[i] for i in indices], out,
                                                    report, ByteBudget(max_bytes_in_flight))
                self._files += len(indices) - len(deferred)
                self._bytes += report.bytes - before
                left = set(deferred)
                pending = [indices[k] for k in deferred] + pending[len(indices):]
                for k, i in enumerate(indices):
                    if k not in left:
                        yield i, paths[i], out[k]
                        out[k] = None           # the caller's now, not ours
        finally:
            report.close()

    def read_ranges_into(self, path, buffer, offsets, lengths, buffer_offsets=None):
        """pread each range into the caller's writable buffer; returns the bytes read
        per range (fewer than asked past EOF). buffer_offsets=None packs the ranges."""
        offsets, lengths = _int_list(offsets, "offsets"), _int_list(lengths, "lengths")
        if buffer_offsets is None:
            buffer_offsets = _packed(lengths)
        buffer_offsets = _int_list(buffer_offsets, "buffer_offsets")
        with memoryview(buffer) as view:
            if view.readonly:
                raise TypeError(f"buffer must be writable (bytearray, mmap, numpy array), "
                                f"not a read-only {type(buffer).__name__}")
            check_ranges(offsets, lengths, buffer_offsets, view.nbytes)
        got = self._backend.read_ranges_into(os.fspath(path), buffer, offsets, lengths,
                                             buffer_offsets)
        self._bytes += sum(got)
        return got

    def read_ranges(self, path, offsets, lengths):
        """Each range's bytes (pread semantics: a range past EOF returns what exists)."""
        offsets, lengths = _int_list(offsets, "offsets"), _int_list(lengths, "lengths")
        check_ranges(offsets, lengths)
        out = self._backend.read_ranges(os.fspath(path), offsets, lengths)
        self._bytes += sum(map(len, out))
        return out


class _Progress:
    """progress=True: a tqdm bar; a callable: (files_done, files_total, bytes_done)."""

    def __init__(self, progress, total):
        self._lock = threading.Lock()       # advance() runs in several threads
        self.files = self.bytes = 0
        self.total = total
        self._bar = None
        self._callback = None
        if progress is True:
            try:
                from tqdm import tqdm
            except ImportError:
                warnings.warn("progress=True needs tqdm (pip install vyre-uring[progress])",
                              RuntimeWarning, stacklevel=3)
            else:
                self._bar = tqdm(total=total, unit="file")
        elif callable(progress):
            self._callback = progress
        elif progress not in (None, False):
            raise TypeError(f"progress must be True, a callable or None, not {progress!r}")

    def advance(self, files, nbytes):
        """`files` more files done, `nbytes` more bytes read (from any thread)."""
        with self._lock:
            self.files += files
            self.bytes += nbytes
            if self._bar is not None:
                self._bar.update(files)
            elif self._callback is not None:
                self._callback(self.files, self.total, self.bytes)

    def close(self):
        if self._bar is not None:
            self._bar.close()


def default_workers():
    """Rings (threads) for the io_uring backend: one per core, at most four; each
    waits with the GIL released, so their I/O overlaps."""
    return max(1, min(4, os.cpu_count() or 1))


def _int_list(values, name):
    """`values` as an array of int64 (as is when it already is one)."""
    if isinstance(values, array.array) and values.typecode == "q":
        return values
    try:
        return array.array("q", values)
    except (TypeError, OverflowError) as exc:
        raise TypeError(f"{name} must be a sequence of ints: {exc}") from None


def _packed(lengths):
    """Buffer offsets that put the ranges back to back."""
    starts = array.array("q", itertools.accumulate(lengths, initial=0))
    starts.pop()
    return starts


def read_files(paths, *, on_error="raise", backend="auto", queue_depth=DEFAULT_QUEUE_DEPTH,
               workers=None, progress=None, direct=False):
    """Read whole files; see BatchReader.read_files."""
    with BatchReader(backend=backend, queue_depth=queue_depth, workers=workers,
                     direct=direct) as r:
        return r.read_files(paths, on_error=on_error, progress=progress)


def iter_files(paths, *, max_bytes_in_flight=64 << 20, backend="auto",
               queue_depth=DEFAULT_QUEUE_DEPTH, workers=None, progress=None, direct=False):
    """Yield (index, path, bytes_or_OSError) as files complete; see BatchReader.iter_files."""
    with BatchReader(backend=backend, queue_depth=queue_depth, workers=workers,
                     direct=direct) as r:
        yield from r.iter_files(paths, max_bytes_in_flight=max_bytes_in_flight,
                                progress=progress)


def read_ranges(path, offsets, lengths, *, backend="auto", queue_depth=DEFAULT_QUEUE_DEPTH,
                direct=False):
    """Read byte ranges of one file; see BatchReader.read_ranges."""
    with BatchReader(backend=backend, queue_depth=queue_depth, direct=direct) as r:
        return r.read_ranges(path, offsets, lengths)


def read_ranges_into(path, buffer, offsets, lengths, buffer_offsets=None, *, backend="auto",
                     queue_depth=DEFAULT_QUEUE_DEPTH, direct=False):
    """Read byte ranges of one file into a buffer; see BatchReader.read_ranges_into."""
    with BatchReader(backend=backend, queue_depth=queue_depth, direct=direct) as r:
        return r.read_ranges_into(path, buffer, offsets, lengths, buffer_offsets)

