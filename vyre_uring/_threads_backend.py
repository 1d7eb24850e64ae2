"""The fallback backend: plain os.pread/os.preadv in a thread pool.

Same semantics as the io_uring backend; it is what users get where io_uring is
blocked, and the oracle the reader's tests compare io_uring against.
"""
import os
from concurrent.futures import ThreadPoolExecutor

from ._files import open_regular, path_error, read_to_eof

__all__ = ["ThreadsBackend"]


class ThreadsBackend:
    name = "threads"

    def __init__(self, workers):
        self._workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vyre-read")
        # Not counted per call here: None says so rather than a made-up 0.
        self.stats = {"syscalls": None, "operations": None, "short_reads": None,
                      "sync_reads": None}

    def close(self):
        self._pool.shutdown(wait=True)

    def _in_runs(self, n, fn):
        """fn(i) for i in range(n) on the pool, in order; each task handles a run of
        indices: a task per small read costs more than the read."""
        step = max(1, min(64, n // (4 * self._workers) or 1))

        def run(start):
            return [fn(i) for i in range(start, min(start + step, n))]
        return [x for part in self._pool.map(run, range(0, n, step)) for x in part]

    def read_files(self, paths, out, report):
        """out[i] = the bytes of paths[i], or its OSError; report.advance(files,
        bytes) after each file."""
        def one(i):
            out[i] = result = _read_file(paths[i])
            report.advance(1, 0 if isinstance(result, BaseException) else len(result))
        self._in_runs(len(paths), one)

    def read_ranges_into(self, path, buffer, offsets, lengths, buffer_offsets):
        """pread each range into buffer[buffer_offsets[i]:]; returns the byte counts."""
        fd = open_regular(path)
        view = memoryview(buffer).cast("B")
        try:
            def one(i):
                start = buffer_offsets[i]
                return _pread_into(fd, view[start:start + lengths[i]], offsets[i], path)
            return self._in_runs(len(offsets), one)
        finally:
            view.release()
            os.close(fd)

    def read_ranges(self, path, offsets, lengths):
        """Each range's bytes (pread semantics: past EOF, what exists)."""
        fd = open_regular(path)
        try:
            def one(i):
                try:
                    return _pread_all(fd, lengths[i], offsets[i])
                except OSError as exc:
                    raise path_error(exc.errno, path) from None
            return self._in_runs(len(offsets), one)
        finally:
            os.close(fd)


def _read_file(path):
    """The file's bytes (as many as its size when opened, fewer if it shrank), or
    the OSError that stopped it."""
    try:
        fd = open_regular(path)
    except OSError as exc:
        return exc
    try:
        size = os.fstat(fd).st_size
        if size == 0:                     # empty, or /proc: its size says nothing
            return read_to_eof(fd, path)
        return _pread_all(fd, size, 0)
    except OSError as exc:
        return path_error(exc.errno, path)
    finally:
        os.close(fd)


def _pread_all(fd, size, offset):
    """`size` bytes at `offset`, fewer at EOF (a file that shrank: what read()
    would return)."""
    parts = []
    done = 0
    while done < size:
        chunk = os.pread(fd, size - done, offset + done)
        if not chunk:
            break
        parts.append(chunk)
        done += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _pread_into(fd, view, offset, path):
    """Fill `view` from `offset` until it is full or EOF; returns the byte count."""
    done = 0
    while done < len(view):
        try:
            n = os.preadv(fd, [view[done:]], offset + done)
        except OSError as exc:
            raise path_error(exc.errno, path) from None
        if n == 0:
            break
        done += n
    return done
