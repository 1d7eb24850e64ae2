"""The batch file reader: many files, many byte ranges, through io_uring or a thread
pool of os.pread where io_uring is blocked.

    read_files(paths)                  -> list of bytes, in input order
    read_files_into(paths, buffer)     -> PackedFiles: every file in one buffer
    iter_files(paths)                  -> (index, path, bytes) as files complete
    read_ranges(path, offsets, lengths) -> list of bytes (pread semantics)
    read_ranges_into(path, buffer, offsets, lengths, buffer_offsets) -> byte counts
    read_path_ranges(paths, offsets, lengths) -> list of bytes, ranges of many files
    BatchReader(...)                   the reusable object behind them
"""
from __future__ import annotations

import array
import atexit
import errno
import itertools
import os
import threading
import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal, Optional, Union, overload

from ._engine import ByteBudget, Packing, check_ranges
from ._staging import (STAGING_DEFAULT, CudaTarget, StagingCache, check_staging_bytes,
                       cuda_destination, read_into)
from .availability import is_unavailable_errno
from .errors import UringSyscallError, UringUnavailableError
from .packed import PackedFiles

if TYPE_CHECKING:
    from ._typing import Backend, Buffer, IntArray, OnError, OnErrorNoFailures, PathArg, Progress

__all__ = ["BatchReader", "read_files", "read_files_into", "iter_files", "read_ranges",
           "read_ranges_into", "read_path_ranges", "BACKEND_ENV"]

BACKEND_ENV = "VYRE_URING_BACKEND"     # forces a backend: io_uring or threads
BACKENDS = ("auto", "io_uring", "threads")
DEFAULT_QUEUE_DEPTH = 64
ITER_BATCH_FILES = 4096                # most files one iter_files batch considers
SPLIT_MIN = 4 << 20                    # the smallest piece a large range is cut into

_warned = threading.Event()            # "auto" warns once per process when it falls back
# Guards replacing a forked child's backends and the shared readers; a new lock in
# each child, since a parent thread may have held it at fork time.
_lock = threading.Lock()


def _new_lock_in_child():
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)


class BatchReader:
    """Owns a backend (io_uring rings, or a thread pool) and reads through it.

    backend: "auto" (io_uring, falling back to threads with a warning when io_uring
    is unavailable here, or no ring can be made within RLIMIT_MEMLOCK), "io_uring"
    (the UringSyscallError instead of falling back) or "threads". The environment
    variable VYRE_URING_BACKEND chooses in place of "auto"; an explicit backend wins.
    direct=True reads with O_DIRECT, bypassing the page cache: alignment is handled
    here (aligned reads through page-aligned bounce buffers, copied out), and files
    on filesystems that refuse O_DIRECT are read buffered, counted in
    stats()["direct_fallbacks"].

    read_ranges_into also reads into CUDA memory (a torch tensor or CuPy array on a
    GPU): through at most `staging_bytes` of pinned host memory (1 MiB to 4 GiB,
    kept between calls), copied to the device while the rings read the next piece.

    One reader may be shared by any number of threads. Used in a forked child (a
    multiprocessing or DataLoader worker), it makes itself a new backend there: the
    parent's rings and threads are not the child's. A progress callback may call
    the reader that runs it.
    """

    def __init__(self, *, backend: Backend = "auto", queue_depth: int = DEFAULT_QUEUE_DEPTH,
                 workers: Optional[int] = None, direct: bool = False,
                 staging_bytes: int = STAGING_DEFAULT) -> None:
        backend = _chosen_backend(backend)
        if not 1 <= queue_depth <= 4096:
            raise ValueError(f"queue_depth must be between 1 and 4096, not {queue_depth}")
        if workers is not None and not 1 <= workers <= 256:
            raise ValueError(f"workers must be between 1 and 256, not {workers}")
        self.fallback_reason = None
        self._config = (backend, queue_depth, workers, bool(direct))
        self._counts = threading.Lock()
        self._files = self._bytes = 0
        self._pid = os.getpid()
        self._staging_bytes = check_staging_bytes(staging_bytes)
        self._staging = StagingCache()
        self._backend = self._make_backend(*self._config)

    def _make_backend(self, backend, queue_depth, workers, direct):
        if backend != "threads":
            try:
                from ._uring_backend import UringBackend
                return UringBackend(queue_depth, workers or default_workers(), direct)
            except UringSyscallError as exc:
                if backend == "io_uring" or not _means_unavailable(exc):
                    raise
                self.fallback_reason = str(exc)
                if not _warned.is_set():
                    _warned.set()
                    warnings.warn(f"vyre_uring: io_uring is unavailable, reading with "
                                  f"threads instead: {exc}", RuntimeWarning, stacklevel=4)
        from ._threads_backend import ThreadsBackend
        # Blocking reads: a few threads per core keep the disk busy; page-cache reads
        # gain nothing past the core count, and each thread costs GIL hand-offs.
        return ThreadsBackend(workers or min(16, 2 * default_workers()), direct)

    def _current(self):
        """The backend of this process: in a forked child, a new one (once)."""
        if self._pid != os.getpid():
            with _lock:
                if self._pid != os.getpid():
                    self._leave_parents()
                    self._backend = self._make_backend(*self._config)
                    self._pid = os.getpid()
        return self._backend

    def _leave_parents(self):
        """In a forked child: let go of the parent's rings and threads, and of its
        staging cache and counts lock (a parent thread may have held their locks at
        the fork). The parent's pinned memory is freed here when collected, never
        unpinned: CUDA does not survive fork."""
        self._backend.forget()
        self._counts = threading.Lock()
        self._staging = StagingCache()

    def _count(self, files, nbytes):
        with self._counts:
            self._files += files
            self._bytes += nbytes

    @property
    def backend(self) -> str:
        """The backend in use: "io_uring" or "threads"."""
        return self._backend.name

    def close(self) -> None:
        if self._pid != os.getpid():
            with _lock:
                if self._pid != os.getpid():    # closed here, as it would be there
                    self._leave_parents()
                    self._pid = os.getpid()
                    return
        try:
            self._staging.close()
        finally:
            self._backend.close()

    def __enter__(self) -> BatchReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """Counters since creation: files, bytes, operations, short reads resubmitted,
        syscalls (io_uring_enter calls: not the statx or fstat that sizes each whole
        file), the backend, and why it fell back (None when it did not); whether
        whole files open as direct descriptors (in each ring's file table, not the
        process's: Linux 5.19, io_uring backend with three rings or more, not with
        direct=True); reads made with pread because the file is on FUSE
        (sync_reads), and calls handed to threads for that reason (fuse_calls). The
        threads backend counts neither: None."""
        return {"files": self._files, "bytes": self._bytes, **self._backend.stats,
                "backend": self.backend, "workers": self._backend.workers,
                "fallback_reason": self.fallback_reason}

    @overload
    def read_files(self, paths: Iterable[PathArg], *, on_error: OnErrorNoFailures = ...,
                   progress: Progress = ...) -> list[bytes]: ...
    @overload
    def read_files(self, paths: Iterable[PathArg], *, on_error: Literal["return"],
                   progress: Progress = ...) -> list[Union[bytes, OSError]]: ...
    def read_files(self, paths: Iterable[PathArg], *, on_error: OnError = "raise",
                   progress: Progress = None) -> Union[list[bytes], list[Union[bytes, OSError]]]:
        """Every file's bytes, in input order. `paths`: a sequence (or iterable) of
        str, bytes or os.PathLike. on_error: "raise" (the default) raises the first
        failure (in input order) after the whole batch was read; "return" puts a
        failed path's OSError (errno and filename set) in its slot; "skip" (or
        "omit", fsspec's word) leaves failed paths out of the list. One failed path
        never stops the others being read. progress: True for a tqdm bar (when tqdm
        is installed), or a callable receiving (files_done, files_total, bytes_done).
        Raises TypeError for a single path where the sequence belongs."""
        on_error = _on_error(on_error)
        paths = _path_list(paths)
        out = [None] * len(paths)
        report = _Progress(progress, len(paths))
        try:
            self._current().read_files(paths, out, report.advance)
        finally:
            report.close()
        self._count(report.files, report.bytes)
        if on_error == "raise":
            for r in out:
                if isinstance(r, BaseException):
                    raise r
        elif on_error == "skip":
            out = [r for r in out if not isinstance(r, BaseException)]
        return out

    def read_files_into(self, paths: Iterable[PathArg], buffer: Buffer, *, align: int = 1,
                        on_error: Literal["raise", "return"] = "raise",
                        progress: Progress = None) -> PackedFiles:
        """Every file's bytes in one writable `buffer` (bytearray, numpy array, mmap,
        pinned memory) instead of a bytes object each: file i lies at
        result.offsets[i], result.lengths[i] bytes long, and result[i] is a
        memoryview of it. Files are packed in the order they are sized (each start a
        multiple of `align`, a power of two), not in input order. Reusing a buffer
        across calls reuses memory already faulted in. A file that does not fit in
        what is left fails with ENOBUFS; like any failed file it fails alone.
        on_error: "raise" (the default) raises the first failure in input order
        after the whole batch was read; "return" keeps failures in result.errors
        (index -> OSError) and result[i]. progress as for read_files. Raises
        TypeError for a buffer that is not writable and contiguous, or for a single
        path where the sequence belongs."""
        if on_error not in ("raise", "return"):
            raise ValueError(f'on_error must be "raise" or "return", not {on_error!r}')
        paths = _path_list(paths)
        pack = Packing(buffer, len(paths), align)
        out: list[Any] = [None] * len(paths)
        report = _Progress(progress, len(paths))
        try:
            self._current().read_files(paths, out, report.advance, pack=pack)
        finally:
            report.close()
        self._count(report.files, report.bytes)
        errors = {i: r for i, r in enumerate(out) if r is not None}
        if on_error == "raise" and errors:
            raise errors[min(errors)]
        return PackedFiles(buffer, pack.offsets, pack.lengths, errors, pack.used)

    def iter_files(self, paths: Iterable[PathArg], *, max_bytes_in_flight: int = 64 << 20,
                   max_file_bytes: Optional[int] = None, progress: Progress = None,
                   ) -> Iterator[tuple[int, PathArg, Union[bytes, OSError]]]:
        """Yield (index, path, bytes_or_OSError) batch by batch, as files complete
        (not in input order; index is the path's position in `paths`). `paths` is
        consumed lazily, a batch at a time, so a generator of a million paths starts
        yielding at once. Memory stays within `max_bytes_in_flight` whatever the
        total: a batch takes files while their sizes fit the budget (a file larger
        than the budget comes alone); the files that did not fit go first in the
        next batch. With `max_file_bytes` (at most max_bytes_in_flight) the bound is
        hard: a larger file is not read and comes as an OSError with errno EFBIG,
        for the caller to read in pieces (read_ranges_into)."""
        if max_bytes_in_flight < 1:
            raise ValueError(f"max_bytes_in_flight must be >= 1, not {max_bytes_in_flight}")
        if max_file_bytes is not None and not 1 <= max_file_bytes <= max_bytes_in_flight:
            raise ValueError(f"max_file_bytes must be 1 to max_bytes_in_flight "
                             f"({max_bytes_in_flight}), not {max_file_bytes}")
        _refuse_single_path(paths)
        source = enumerate(paths)
        _Progress.check(progress)
        total = len(paths) if hasattr(paths, "__len__") else None
        # Checked above, read below: the arguments fail at the call, not at the first
        # next().
        return self._iter_files(source, (max_bytes_in_flight, max_file_bytes),
                                progress, total)

    def _iter_files(self, source, budget_args, progress, total):
        report = _Progress(progress, total)
        waiting = []                        # (index, path) deferred by the last batch
        try:
            while True:
                batch = waiting + list(itertools.islice(source, ITER_BATCH_FILES - len(waiting)))
                if not batch:
                    return
                waiting = yield from self._iter_batch(batch, ByteBudget(*budget_args), report)
        finally:
            report.close()

    def _iter_batch(self, batch, budget, report):
        """Read one iter_files batch; yields what was read, returns what was deferred."""
        out = [None] * len(batch)
        before = report.bytes
        deferred = self._current().read_files([p for _, p in batch], out, report.advance,
                                              budget)
        self._count(len(batch) - len(deferred), report.bytes - before)
        left = set(deferred)
        for k, (i, path) in enumerate(batch):
            if k not in left:
                yield i, path, out[k]
                out[k] = None               # the caller's now, not ours
        return [batch[k] for k in deferred]

    def read_ranges_into(self, path: PathArg, buffer: Buffer, offsets: IntArray,
                         lengths: IntArray, buffer_offsets: Optional[IntArray] = None,
                         ) -> list[int]:
        """pread each range into the caller's writable buffer; returns the bytes read
        per range (fewer than asked past EOF). buffer_offsets=None packs the ranges.
        `buffer` may be CUDA memory (anything with __cuda_array_interface__: a torch
        tensor or CuPy array, C-contiguous): the bytes then go through pinned staging,
        and every copy has completed when the call returns or raises."""
        dest = cuda_destination(buffer)
        if dest is None:
            offsets, lengths, buffer_offsets = ranges_into_args(buffer, offsets, lengths,
                                                                buffer_offsets)
            backend = self._current()
            split = _split_for_workers(offsets, lengths, buffer_offsets, backend.workers)
            if split is None:
                got = backend.read_ranges_into(os.fspath(path), buffer, offsets, lengths,
                                               buffer_offsets)
            else:
                got = _joined(backend.read_ranges_into(os.fspath(path), buffer, *split[:3]),
                              split[1], split[3], len(offsets))
        else:
            offsets, lengths, buffer_offsets = _checked_ranges(offsets, lengths,
                                                               buffer_offsets, dest.nbytes)
            got = self._into_device([(os.fspath(path), offsets, lengths, buffer_offsets)],
                                    dest)
        self._count(0, sum(got))
        return got

    def _into_device(self, groups, dest):
        """Ranges of several files, (path, offsets, lengths, dest_offsets) each, into
        the CUDA Destination `dest`; the byte counts of every range, in order. Every
        range is checked to lie inside `dest` first."""
        for _, offsets, lengths, dest_offsets in groups:
            check_ranges(offsets, lengths, dest_offsets, dest.nbytes)
        return read_into(self._current(), groups, CudaTarget(dest, self._staging),
                         self._staging_bytes)

    def read_ranges(self, path: PathArg, offsets: IntArray, lengths: IntArray) -> list[bytes]:
        """Each range's bytes (pread semantics: a range past EOF returns what exists)."""
        offsets, lengths = _int_list(offsets, "offsets"), _int_list(lengths, "lengths")
        check_ranges(offsets, lengths)
        out = self._current().read_ranges(os.fspath(path), offsets, lengths)
        self._count(0, sum(map(len, out)))
        return out

    def read_path_ranges(self, paths, offsets, lengths, *, on_error="raise"):
        """Byte ranges of many files in one call: range i is lengths[i] bytes at
        offsets[i] of paths[i] (pread semantics: fewer past EOF; a negative length
        reads to EOF). Each distinct path is opened once however many ranges it has
        (once per ring sharing its ranges, where fewer files than rings hold large
        ranges), and its ranges are read in the same job as the other files'. With
        on_error="return" a failed range holds its OSError (every range of a file
        that cannot be read holds that file's) and the rest are read; with "raise"
        the first failure in input order is raised after the call."""
        if on_error not in ("raise", "return"):
            raise ValueError(f'on_error must be "raise" or "return", not {on_error!r}')
        paths = _path_list(paths)
        offsets, lengths = _int_list(offsets, "offsets"), _int_list(lengths, "lengths")
        if not len(paths) == len(offsets) == len(lengths):
            raise ValueError(f"paths, offsets and lengths must have one value per range: "
                             f"{len(paths)}, {len(offsets)} and {len(lengths)}")
        # The offsets as read_ranges checks them (a negative length is allowed here).
        check_ranges(offsets, array.array("q", bytes(8 * len(offsets))))
        out = [None] * len(paths)
        self._count(0, self._current().read_path_ranges(paths, offsets, lengths, out))
        if on_error == "raise":
            for r in out:
                if isinstance(r, BaseException):
                    raise r
        return out


class _Progress:
    """progress=True: a tqdm bar; a callable: (files_done, files_total, bytes_done),
    called in the thread that called the reader, between its jobs (files_total is
    None for paths given as an iterator)."""

    @staticmethod
    def check(progress):
        if not (progress is None or isinstance(progress, bool) or callable(progress)):
            raise TypeError(f"progress must be True, a callable or None, not {progress!r}")

    def __init__(self, progress, total):
        self.check(progress)
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

    def advance(self, files, nbytes):
        """`files` more files done, `nbytes` more bytes read."""
        self.files += files
        self.bytes += nbytes
        if self._bar is not None:
            self._bar.update(files)
        elif self._callback is not None:
            self._callback(self.files, self.total, self.bytes)

    def close(self):
        if self._bar is not None:
            self._bar.close()


def _chosen_backend(backend):
    """`backend`, or for "auto" what VYRE_URING_BACKEND asks for, checked."""
    from_env = backend == "auto" and os.environ.get(BACKEND_ENV)
    if from_env:
        backend = from_env
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}"
                         f"{' (from ' + BACKEND_ENV + ')' if from_env else ''}")
    return backend


def default_workers() -> int:
    """Rings (threads) for the io_uring backend: one per core this process may run
    on. Jobs run without the GIL, so each ring keeps a core busy; a call splits
    into at most as many jobs as its work fills (a small call runs on one ring)."""
    return max(1, min(256, len(os.sched_getaffinity(0))))


def _means_unavailable(exc):
    """Whether `auto` falls back on this ring-creation failure: io_uring blocked or
    disabled, or no ring fits in RLIMIT_MEMLOCK (ENOMEM even for the smallest)."""
    return isinstance(exc, UringUnavailableError) or is_unavailable_errno(exc.errno) \
        or exc.errno == errno.ENOMEM


def _on_error(value):
    """on_error checked; fsspec's "omit" is our "skip"."""
    if value not in ("raise", "return", "skip", "omit"):
        raise ValueError(f'on_error must be "raise", "return" or "skip", not {value!r}')
    return "skip" if value == "omit" else value


def _refuse_single_path(paths):
    """TypeError for one path passed where a sequence of paths belongs (a str would
    otherwise be read as one path per character)."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise TypeError(f"paths must be a sequence of paths, not one "
                        f"{type(paths).__name__} ({paths!r}): pass [path]")


def _path_list(paths):
    """`paths` as a list or tuple, refusing a single path."""
    _refuse_single_path(paths)
    return paths if isinstance(paths, (list, tuple)) else list(paths)


def _int_list(values, name):
    """`values` as a new array of int64: the reader's own copy, which no other
    thread can change between its checks and its reads. A contiguous buffer of
    native int64s (array('q'), a numpy int64 array) is copied whole: element by
    element, a million offsets took 18-33 ms."""
    if isinstance(values, array.array) and values.typecode == "q":
        return values[:]
    try:
        with memoryview(values) as view:
            if view.ndim == 1 and view.format in ("q", "l") and view.itemsize == 8 \
                    and view.c_contiguous:
                out = array.array("q")
                out.frombytes(view)
                return out
    except (TypeError, ValueError):
        pass                            # not a buffer (or one of dates): a sequence
    try:
        return array.array("q", values)
    except (TypeError, OverflowError) as exc:
        raise TypeError(f"{name} must be a sequence of ints: {exc}") from None


def ranges_into_args(buffer, offsets, lengths, buffer_offsets):
    """read_ranges_into's arguments checked against `buffer` (writable, every range
    inside it), as the caller's own int64 arrays: (offsets, lengths, buffer_offsets)."""
    with memoryview(buffer) as view:
        if view.readonly:
            raise TypeError(f"buffer must be writable (bytearray, mmap, numpy array), "
                            f"not a read-only {type(buffer).__name__}")
        return _checked_ranges(offsets, lengths, buffer_offsets, view.nbytes)


def _checked_ranges(offsets, lengths, buffer_offsets, nbytes):
    """(offsets, lengths, buffer_offsets) as our own int64 arrays, every range checked
    to lie inside an `nbytes`-byte buffer."""
    offsets, lengths = _int_list(offsets, "offsets"), _int_list(lengths, "lengths")
    if buffer_offsets is None:
        buffer_offsets = _packed(lengths)
    buffer_offsets = _int_list(buffer_offsets, "buffer_offsets")
    check_ranges(offsets, lengths, buffer_offsets, nbytes)
    return offsets, lengths, buffer_offsets


def _split_for_workers(offsets, lengths, buffer_offsets, workers):
    """Fewer ranges than workers, and large: the ranges cut into pieces of at least
    SPLIT_MIN bytes, about four per worker, so that every ring (or thread) reads (one
    range is one worker's). Returns (offsets, lengths, buffer_offsets, owner: the
    range of each piece), or None when the ranges are fine as they are."""
    if workers < 2 or len(offsets) >= workers:
        return None                     # (before the sum: a million ranges take 10 ms)
    total = sum(lengths)
    if total < 2 * SPLIT_MIN:
        return None
    size = max(SPLIT_MIN, -(-total // (4 * workers)) + 4095 & ~4095)
    out = array.array("q"), array.array("q"), array.array("q"), []
    for r, (o, n, b) in enumerate(zip(offsets, lengths, buffer_offsets)):
        for k in range(0, n, size):
            out[0].append(o + k)
            out[1].append(min(size, n - k))
            out[2].append(b + k)
            out[3].append(r)
    return out


def _joined(got, lengths, owner, n):
    """Bytes read per range from its pieces' counts: the pieces up to the first short
    one (EOF), as one pread of the whole range would return."""
    counts, short = [0] * n, [False] * n
    for g, want, r in zip(got, lengths, owner):
        if not short[r]:
            counts[r] += g
            short[r] = g < want
    return counts


def _packed(lengths):
    """Buffer offsets that put the ranges back to back."""
    starts = array.array("q", itertools.accumulate(lengths, initial=0))
    starts.pop()
    return starts


def _shared_reader(backend="auto", queue_depth=DEFAULT_QUEUE_DEPTH, workers=None,
                  direct=False):
    """The process's BatchReader for these settings, made on first use and kept:
    the module-level calls below share it instead of making rings (and their
    locked memory, which the kernel returns only some time after a close) per call."""
    key = (_chosen_backend(backend), queue_depth, workers, bool(direct))
    reader = _shared.get(key)
    if reader is None:
        with _lock:
            reader = _shared.get(key)
            if reader is None:
                reader = _shared[key] = BatchReader(backend=backend, queue_depth=queue_depth,
                                                    workers=workers, direct=direct)
    return reader


_shared = {}


@atexit.register
def _close_shared():
    for reader in _shared.values():
        reader.close()
    _shared.clear()


@overload
def read_files(paths: Iterable[PathArg], *, on_error: OnErrorNoFailures = ...,
               backend: Backend = ..., queue_depth: int = ..., workers: Optional[int] = ...,
               progress: Progress = ..., direct: bool = ...) -> list[bytes]: ...
@overload
def read_files(paths: Iterable[PathArg], *, on_error: Literal["return"], backend: Backend = ...,
               queue_depth: int = ..., workers: Optional[int] = ..., progress: Progress = ...,
               direct: bool = ...) -> list[Union[bytes, OSError]]: ...
def read_files(paths: Iterable[PathArg], *, on_error: OnError = "raise",
               backend: Backend = "auto", queue_depth: int = DEFAULT_QUEUE_DEPTH,
               workers: Optional[int] = None, progress: Progress = None, direct: bool = False,
               ) -> Union[list[bytes], list[Union[bytes, OSError]]]:
    """Read whole files; see BatchReader.read_files."""
    return _shared_reader(backend, queue_depth, workers, direct).read_files(
        paths, on_error=on_error, progress=progress)


def read_files_into(paths: Iterable[PathArg], buffer: Buffer, *, align: int = 1,
                    on_error: Literal["raise", "return"] = "raise", backend: Backend = "auto",
                    queue_depth: int = DEFAULT_QUEUE_DEPTH, workers: Optional[int] = None,
                    progress: Progress = None, direct: bool = False) -> PackedFiles:
    """Read whole files into one buffer; see BatchReader.read_files_into."""
    return _shared_reader(backend, queue_depth, workers, direct).read_files_into(
        paths, buffer, align=align, on_error=on_error, progress=progress)


def iter_files(paths: Iterable[PathArg], *, max_bytes_in_flight: int = 64 << 20,
               max_file_bytes: Optional[int] = None, backend: Backend = "auto",
               queue_depth: int = DEFAULT_QUEUE_DEPTH, workers: Optional[int] = None,
               progress: Progress = None, direct: bool = False,
               ) -> Iterator[tuple[int, PathArg, Union[bytes, OSError]]]:
    """Yield (index, path, bytes_or_OSError) as files complete; see BatchReader.iter_files."""
    return _shared_reader(backend, queue_depth, workers, direct).iter_files(
        paths, max_bytes_in_flight=max_bytes_in_flight, max_file_bytes=max_file_bytes,
        progress=progress)


def read_ranges(path: PathArg, offsets: IntArray, lengths: IntArray, *,
                backend: Backend = "auto", queue_depth: int = DEFAULT_QUEUE_DEPTH,
                direct: bool = False) -> list[bytes]:
    """Read byte ranges of one file; see BatchReader.read_ranges."""
    return _shared_reader(backend, queue_depth, None, direct).read_ranges(path, offsets,
                                                                         lengths)


def read_ranges_into(path: PathArg, buffer: Buffer, offsets: IntArray, lengths: IntArray,
                     buffer_offsets: Optional[IntArray] = None, *, backend: Backend = "auto",
                     queue_depth: int = DEFAULT_QUEUE_DEPTH, direct: bool = False) -> list[int]:
    """Read byte ranges of one file into a buffer; see BatchReader.read_ranges_into."""
    return _shared_reader(backend, queue_depth, None, direct).read_ranges_into(
        path, buffer, offsets, lengths, buffer_offsets)


def read_path_ranges(paths, offsets, lengths, *, on_error="raise", backend="auto",
                     queue_depth=DEFAULT_QUEUE_DEPTH, workers=None, direct=False):
    """Read byte ranges of many files; see BatchReader.read_path_ranges."""
    return _shared_reader(backend, queue_depth, workers, direct).read_path_ranges(
        paths, offsets, lengths, on_error=on_error)
