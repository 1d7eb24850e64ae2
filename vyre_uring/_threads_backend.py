"""The fallback backend: plain os.pread/os.preadv on the reader's worker threads.

Same semantics as the io_uring backend; it is what users get where io_uring is
blocked, and the oracle the reader's tests compare io_uring against. Every read runs
on a worker thread, even with one worker: the calling thread only posts and collects
(run_call), so an interrupt there never splits an open from its close.
"""
import errno
import fcntl
import os
import sys
import threading
import time

from ._files import lengths_within_eof, over_budget_error, path_error, pread_to_eof
from ._engine import (DIRECT_ALIGN, DIRECT_CHUNK, GROW_NEVER, GROWN, UNSIZED_FIRST,
                      CallStopped, run_call, with_file)
from ._workers import Workers
from .buffers import alloc_buffer

__all__ = ["ThreadsBackend"]

# One pread carries at most this much, so that an abandoned call stops soon.
MAX_PREAD = 64 << 20
# An open at the fd limit while other threads here hold fds tries again as they
# close them, until this long passes with none closed (as the io_uring backend's
# jobs do).
FD_WAIT_S = 5.0


class ThreadsBackend:
    name = "threads"

    def __init__(self, workers, direct=False, piece=MAX_PREAD):
        """`piece`: the most one pread carries (a stopped call ends after one)."""
        self.direct = direct
        self._piece = piece
        self._fallbacks = 0
        self._lock = threading.Lock()
        self._gate = _FdGate(workers)
        self._workers = Workers(workers, "vyre-read")

    @property
    def workers(self):
        return len(self._workers)

    @property
    def stats(self):
        # Syscalls and the like are not counted per call here: None says so rather
        # than a made-up 0.
        return {"syscalls": None, "operations": None, "short_reads": None,
                "sync_reads": None, "direct_fallbacks": self._fallbacks,
                "buffer_registration": None, "direct_descriptors": False,
                "fuse_calls": None}

    def close(self):
        self._workers.close()

    def forget(self):
        """In a forked child: the parent's threads do not exist here."""
        self._workers.forget()

    def _in_runs(self, n, fn, on_result=None):
        """fn(i) for i in range(n) on the workers, in order; each task handles a run
        of indices (a task per small read costs more than the read) and stops early
        when its call is abandoned."""
        step = max(1, min(64, n // (4 * len(self._workers)) or 1))

        def run(start):
            def task(_, stop):
                values = []
                for i in range(start, min(start + step, n)):
                    if stop.is_set:
                        raise CallStopped()
                    values.append(fn(i, stop))
                return values
            return task
        outcomes = run_call([run(s) for s in range(0, n, step)], self._workers.post, None,
                            on_result)
        for _, exc in outcomes:
            if exc is not None:
                raise exc
        return [x for part, _ in outcomes for x in part]

    def _with_file(self, path, fn, stop):
        """with_file(path, self.direct, fn), through the backend's _FdGate: an open
        that meets the fd limit while other threads here hold fds (or are opening
        one) waits for them to close some and tries again, until FD_WAIT_S pass with
        none closed: files on FUSE hold fds as long as their slow reads take. On
        FUSE a call runs FUSE_THREADS of these at once. Else the limit is the
        caller's: the EMFILE stands."""
        since = seen = None
        while True:
            closes = self._gate.enter(stop)
            opened = False

            def counted(fd, direct):
                nonlocal opened
                opened = True
                return fn(fd, direct)
            try:
                return with_file(path, self.direct, counted)
            except OSError as exc:
                if exc.errno != errno.EMFILE or opened or not self._gate.refused(closes):
                    raise
                if closes != seen:          # first refusal, or files closed since
                    since, seen = time.monotonic(), closes
                elif time.monotonic() - since >= FD_WAIT_S:
                    raise
            finally:
                self._gate.leave(opened)    # after with_file closed the fd

    def _count_refusal(self, direct):
        if self.direct and not direct:
            with self._lock:
                self._fallbacks += 1

    def read_files(self, paths, out, progress, budget=None, pack=None):
        """out[i] = the bytes of paths[i], or its OSError; progress(files, bytes)
        after each run of files. With a byte `budget` (a ByteBudget), the results
        together stay within it (or are one file): returns the indices of the files
        left for a later call. With a `pack` (a Packing) the bytes go into its
        buffer, and out[i] holds only an OSError."""
        if pack is not None:
            return self._read_files_into(paths, out, progress, pack)

        def one(i, stop):
            result = self._read_file(paths[i], budget, stop)
            if result is _DEFERRED:
                return i, 0
            out[i] = result
            return None, len(result) if isinstance(result, bytes) else 0

        def report(values, exc):
            if exc is None:
                progress(sum(d is None for d, _ in values), sum(n for _, n in values))
        return [d for d, _ in self._in_runs(len(paths), one, report) if d is not None]

    def _read_files_into(self, paths, out, progress, pack):
        with memoryview(pack.buffer) as whole, whole.cast("B") as view:
            def one(i, stop):
                try:
                    got = self._with_file(paths[i], lambda fd, direct: self._read_into(
                        fd, direct, paths[i], pack, view, i, stop), stop)
                except OSError as exc:
                    got = exc
                if isinstance(got, OSError):
                    out[i] = got
                    return 0
                return got

            def report(values, exc):
                if exc is None:
                    progress(len(values), sum(values))
            self._in_runs(len(paths), one, report)
        return []

    def _read_into(self, fd, direct, path, pack, view, i, stop):
        """File i into the Packing's buffer: its byte count, or the OSError."""
        self._count_refusal(direct)
        try:
            size = os.fstat(fd).st_size
            data = None
            if size == 0:                 # empty, or /proc: its size says nothing
                data = _read_unsized(fd, path, None, stop)
                size = len(data)
            start = pack.take(size)
            if start < 0:
                return path_error(errno.ENOBUFS, path)
            if data is None and direct:
                data = self._pread_all(fd, size, 0, True, stop)
            if data is None:
                got = _pread_into(fd, view[start:start + size], 0, stop, self._piece)
            else:
                got = len(data)
                view[start:start + got] = data
            pack.offsets[i] = start
            pack.lengths[i] = got
            return got
        except OSError as exc:
            return path_error(exc.errno, path)

    def _read_file(self, path, budget, stop):
        """The file's bytes (as many as its size when opened, fewer if it shrank),
        the OSError that stopped it, or _DEFERRED when the budget has no room."""
        if budget is not None and budget.spent:
            return _DEFERRED
        try:
            return self._with_file(
                path, lambda fd, direct: self._read_open(fd, direct, path, budget, stop), stop)
        except OSError as exc:
            return exc

    def _read_open(self, fd, direct, path, budget, stop):
        self._count_refusal(direct)
        try:
            size = os.fstat(fd).st_size
            if size == 0:                 # empty, or /proc: its size says nothing
                return _read_unsized(fd, path, budget, stop)
            if size > sys.maxsize - 64:
                return path_error(errno.EFBIG, path)   # no bytes object can hold it
            if budget is not None and budget.largest is not None and size > budget.largest:
                return over_budget_error(path, budget)
            if budget is not None and not budget.take(size):
                return _DEFERRED
            return self._pread_all(fd, size, 0, direct, stop)
        except OSError as exc:
            return path_error(exc.errno, path)
        except (MemoryError, OverflowError):     # no bytes object that large
            return path_error(errno.ENOMEM, path)

    def read_ranges_into(self, path, buffer, offsets, lengths, buffer_offsets, opened=None):
        """pread each range into buffer[buffer_offsets[i]:]; returns the byte counts.
        `opened`: (fd, is_direct) of `path`, open already: that is read."""
        with memoryview(buffer) as whole, whole.cast("B") as view:
            def on_file(fd, direct):
                self._count_refusal(direct)

                def one(i, stop):
                    start = buffer_offsets[i]
                    try:
                        if not direct:
                            return _pread_into(fd, view[start:start + lengths[i]],
                                               offsets[i], stop, self._piece)
                        data = self._pread_all(fd, lengths[i], offsets[i], True, stop)
                        view[start:start + len(data)] = data
                        return len(data)
                    except OSError as exc:
                        raise path_error(exc.errno, path) from None
                return self._in_runs(len(offsets), one)
            return on_file(*opened) if opened else with_file(path, self.direct, on_file)

    def run_lanes(self, n, lane):
        """lane(i, stage) for each i < n, each on a worker of its own, at once;
        stage(stages, staging, base, copies) runs one lane of the StagePlan `stages`
        with preads (see _stage_lane). n <= workers."""
        def task(i):
            return lambda _, stop: lane(i, lambda *args: _stage_lane(*args, stop))
        for _, exc in run_call([task(i) for i in range(n)], self._workers.post, None):
            if exc is not None:
                raise exc

    def read_ranges(self, path, offsets, lengths, opened=None):
        """Each range's bytes (pread semantics: past EOF, what exists). `opened`:
        (fd, is_direct) of `path`, open already: that is read."""
        def on_file(fd, direct):
            self._count_refusal(direct)
            sizes = lengths_within_eof(fd, offsets, lengths)

            def one(i, stop):
                try:
                    return self._pread_all(fd, sizes[i], offsets[i], direct, stop)
                except OSError as exc:
                    raise path_error(exc.errno, path) from None
                except MemoryError:
                    raise MemoryError(f"no memory for range {i} of {path!r}: "
                                      f"{sizes[i]} bytes") from None
            return self._in_runs(len(offsets), one)
        return on_file(*opened) if opened else with_file(path, self.direct, on_file)

    def read_path_ranges(self, paths, offsets, lengths, out):
        """out[r] = lengths[r] bytes at offsets[r] of paths[r] (a negative length:
        to EOF), or its OSError; returns the bytes read. Each file is opened once."""
        by_file = {}
        for r, p in enumerate(paths):
            key = p if isinstance(p, (str, bytes)) else os.fspath(p)
            by_file.setdefault(key, []).append(r)
        groups = list(by_file.items())

        def one(g, stop):
            path, ranges = groups[g]
            try:
                return self._with_file(path, lambda fd, direct: self._file_ranges(
                    fd, direct, path, ranges, offsets, lengths, out, stop), stop)
            except OSError as exc:
                for r in ranges:
                    out[r] = exc
                return 0
        return sum(self._in_runs(len(groups), one))

    def _file_ranges(self, fd, direct, path, ranges, offsets, lengths, out, stop):
        """The ranges of one open file, each clamped to its size when opened."""
        self._count_refusal(direct)
        size = os.fstat(fd).st_size
        nbytes = 0
        for r in ranges:
            if stop.is_set:
                raise CallStopped()
            rest = max(0, size - offsets[r])
            try:
                if size == 0:               # says nothing (/proc): as asked, or to EOF
                    out[r] = pread_to_eof(fd, offsets[r], path) if lengths[r] < 0 else \
                        self._pread_all(fd, lengths[r], offsets[r], direct, stop)
                else:
                    out[r] = self._pread_all(fd, rest if lengths[r] < 0 else
                                             min(lengths[r], rest), offsets[r], direct, stop)
                nbytes += len(out[r])
            except OSError as exc:
                out[r] = path_error(exc.errno, path)
        return nbytes

    def _pread_all(self, fd, size, offset, direct, stop):
        """`size` bytes at `offset`, fewer at EOF (a file that shrank: what read()
        would return)."""
        if direct:
            try:
                return _pread_direct(fd, size, offset, stop)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # The filesystem refuses this O_DIRECT read: buffered instead.
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                with self._lock:
                    self._fallbacks += 1
        if size <= self._piece:
            return _pread_small(fd, size, offset, stop)
        buf = bytearray(size)             # no memory for it: MemoryError at once
        with memoryview(buf) as view:
            done = _pread_into(fd, view, offset, stop, self._piece)
        del buf[done:]
        return bytes(buf)


_DEFERRED = object()               # a file the budget left for a later call


_local = threading.local()         # each thread's O_DIRECT bounce buffer


class _FdGate:
    """How many of a backend's threads may hold an fd at once, one being opened
    included: all of them, until an open meets the fd limit while others hold some;
    then as many as held them, and one more after each file closed (the io_uring
    backend's jobs lower and wait likewise)."""

    def __init__(self, threads):
        self._cond = threading.Condition(threading.Lock())
        self._cap = self._most = threads
        self._inside = 0
        self._closes = 0                    # files closed by the threads, ever

    def enter(self, stop):
        """Wait for room; returns the count of closes so far, for refused()."""
        with self._cond:
            while self._inside >= self._cap:
                if stop.is_set:
                    raise CallStopped()
                self._cond.wait(0.1)
            self._inside += 1
            return self._closes

    def leave(self, opened):
        with self._cond:
            self._inside -= 1
            if opened:
                self._closes += 1
                self._cap = min(self._most, self._cap + 1)
            self._cond.notify(2 if opened else 1)     # room for this one, and one more

    def refused(self, closes):
        """An open met the fd limit: whether to try again. Yes if others hold fds,
        which they will close (as many as they now may hold), or if any closed one
        since the open began (`closes`, from enter): the fds the limit counted may
        be free already, with no one left inside to wait for."""
        with self._cond:
            others = self._inside - 1
            if others > 0:
                self._cap = others
            return others > 0 or self._closes != closes


def _read_unsized(fd, path, budget, stop):
    """A file that reports size 0 (empty, /proc, sysfs), read to EOF in pieces; with
    a budget, the pieces are reserved in it as they come, as the io_uring backend
    does: _DEFERRED when other files hold what it needs, EFBIG when it alone holds
    more than the budget lets one file take."""
    own = 0
    if budget is not None:
        own = min(UNSIZED_FIRST, budget.unsized_cap)
        if not budget.take(own):
            return _DEFERRED
    parts = []
    total = 0
    try:
        while True:
            if stop.is_set:
                raise CallStopped()
            chunk = os.pread(fd, UNSIZED_FIRST, total)
            if not chunk:
                own = 0                   # read: the budget keeps what it holds
                return parts[0] if len(parts) == 1 else b"".join(parts)
            parts.append(chunk)
            total += len(chunk)
            while budget is not None and total > own:
                extra = max(1, min(own, budget.unsized_cap - own))
                answer = budget.grow(own, extra)
                if answer != GROWN:
                    return over_budget_error(path, budget) if answer == GROW_NEVER \
                        else _DEFERRED
                own += extra
    finally:
        if budget is not None and own:
            budget.give_back(own)         # not read after all


def _pread_direct(fd, size, offset, stop):
    """`size` bytes at `offset` of an O_DIRECT fd: aligned reads into a page-aligned
    bounce buffer, copied out."""
    bounce = getattr(_local, "bounce", None)
    if bounce is None:
        bounce = _local.bounce = alloc_buffer(DIRECT_CHUNK)
    out = bytearray()
    pos, end = offset, offset + size
    with memoryview(bounce) as view:
        while pos < end:
            if stop.is_set:
                raise CallStopped()
            skip = pos % DIRECT_ALIGN
            length = min(-(-(end - pos + skip) // DIRECT_ALIGN) * DIRECT_ALIGN, DIRECT_CHUNK)
            got = min(os.preadv(fd, [view[:length]], pos - skip) - skip, end - pos)
            if got <= 0:
                break
            out += view[skip:skip + got]
            pos += got
    return bytes(out)


def _pread_small(fd, size, offset, stop):
    """Up to a piece: one pread, more only when it comes back short."""
    parts = []
    done = 0
    while done < size:
        if done and stop.is_set:
            raise CallStopped()
        chunk = os.pread(fd, size - done, offset + done)
        if not chunk:
            break
        parts.append(chunk)
        done += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _pread_into(fd, view, offset, stop, piece=MAX_PREAD):
    """Fill `view` from `offset` until it is full or EOF; returns the byte count."""
    done = 0
    while done < len(view):
        if stop.is_set:
            raise CallStopped()
        n = os.preadv(fd, [view[done:done + piece]], offset + done)
        if n == 0:
            break
        done += n
    return done


def _stage_lane(stages, staging, base, copies, stop):
    """One lane of a StagePlan (see _staging) with preads, as the engine's
    run_stage_lane runs one on a ring: claim a load, wait for its slot's copies,
    read it into the slot, queue its copies, record the slot. Every request is the
    plan's checked copy."""
    turn = 0
    try:
        with memoryview(staging.memory) as whole:
            if base < 0 or base + stages.lane_bytes() > len(whole):
                raise ValueError(f"a lane's slots at {base} do not fit the staging")
            while not (stop.is_set or stages.failed):
                k = stages.claim()
                if k >= stages.nloads:
                    return
                s = turn % stages.slots
                turn += 1
                copies.wait(s)
                slot = base + s * stages.slot_bytes
                for q in range(*stages.load(k)):
                    fd, offset, length, slot_offset, dest_offset, f = stages.request(q)
                    with whole[slot + slot_offset:slot + slot_offset + length] as part:
                        try:
                            n = _pread_into(fd, part, offset, stop)
                        except OSError as exc:
                            raise path_error(exc.errno, stages.names[f]) from None
                    stages.set_got(q, n)
                    if n:
                        copies.copy(stages.dest + dest_offset,
                                    staging.address + slot + slot_offset, n)
                copies.record(s)
    except BaseException:
        stages.fail()
        raise
