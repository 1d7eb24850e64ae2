"""The io_uring backend of the reader.

Python runs once per job (a batch of up to a few thousand files, or of ranges),
never once per file or request: each job's openat, fstat, read and close loop is C
(`_engine.read_file_window`, `_engine.read_ranges_job`). Python only turns the rare
failures into exceptions.

Each of the `workers` rings serves one job at a time: with one ring the calling
thread runs the jobs, with several the reader's worker threads do, each taking a
free ring. Any number of threads may share one backend.
"""
import _thread
import array
import bisect
import errno
import os
import queue
import threading
import time
import weakref

from ._files import OPEN_FLAGS, check_regular, over_budget_error, path_error
from ._engine import (DEFERRED, DIRECT_CHUNK, NOT_REGULAR, NUL_BYTE, OVER_BUDGET,
                      PREAD_PIECE, Arena, CopyOps, drain_jobs, group_paths, on_fuse,
                      pread_only, read_file_window, read_path_ranges_job, read_ranges_job,
                      run_call, run_stage_lane, with_file, with_files)
from ._ring import Op, Ring
from ._threads_backend import ThreadsBackend
from .constants import FILE_INDEX_ALLOC
from ._workers import Workers, block_async_signals
from .buffers import alloc_buffer
from .errors import UringSyscallError

__all__ = ["UringBackend"]

# Jobs: the same number on every ring (1 to 4), each of at most MAX_JOB_FILES files.
# Four per ring where a call is small or very large (one ring's results, made under
# the GIL, then overlap the other rings' reads); in between, as many as keep jobs
# near JOB_FILES files. Measured on 16 cores (10,000 cached 4 KiB files, 16 rings),
# read_files ran 1.11-1.12x faster in jobs of 313 files than of 157: a job's fixed
# cost is mostly hand-offs of the GIL between rings. Never many more, smaller jobs:
# each takes the GIL back once, which beside a busy Python thread waits up to its
# switch interval (5 ms).
MAX_JOB_FILES = 4096
JOB_FILES = 320
# All the reader's rings ever run: the kernel refuses anything else on them.
READER_OPS = frozenset({Op.OPENAT, Op.READ, Op.READ_FIXED, Op.CLOSE})
# With at least this many rings, whole files are opened as direct descriptors, in a
# sparse file table of each ring (slots: twice the queue depth), where the kernel
# can (Linux 5.19): rings in many threads then never contend on the process fd table
# (on 16 cores that contention held 16 rings to about what 4 read). With fewer, the
# contention is small and plain fds win: an fd is sized by fstat, a direct
# descriptor by a statx of its path (a second path walk). Measured on 16 cores
# (10,000 cached 4 KiB files, read_files_into, three interleaved rounds): 1 ring,
# fds 256-376 k files/s, table 235-349 k; 2 rings 503-549 k against 469-519 k; 4
# rings, table 876-974 k against 803-836 k; 8 rings 1.51-1.53 M against 0.81-0.83 M.
# None: plain fds everywhere (tests use both).
DIRECT_TABLE_RINGS = 3
SOCKET_OPCODE = 45                     # IORING_OP_SOCKET: Linux 5.19, as FILE_INDEX_ALLOC
# How long close() waits for the last closes before the ring cancels.
CLOSE_PATIENCE_S = 10.0
# Ranges of one file from which registering its fd pays for the two syscalls.
REGISTER_FILE_MIN_RANGES = 256
# A staged (GPU) call of at most this many files: each ring reads them through fds of
# its own, registered with it (16 rings x 16 files: 256 fds at most, well inside the
# usual limit of 1,024; past it, or at EMFILE, the rings share the call's fds).
MAX_REGISTERED_FILES = 16
# When fewer files than rings hold a call's ranges, a file's ranges are shared out
# over several rings if they average SPREAD_MIN_AVERAGE bytes or more, in shares of
# SPREAD_MIN_BYTES or more. Small cached ranges stay on one ring per file whatever
# their number: their cost is the GIL-held part of a job (the results), which more
# rings only queue on (2,000 cached 4 KiB ranges: 0.75x on 2 rings, 0.57x on 16).
# Small uncached ones are shared out, in shares of SPREAD_MIN_RANGES or more: the
# disk then has more in flight (the same 2,000 uncached: 1.3-1.5x on 16 rings). Which
# they are, COLD_PROBES ranges of the file tell (preadv2 RWF_NOWAIT of one byte).
SPREAD_MIN_AVERAGE = 256 << 10
SPREAD_MIN_BYTES = 4 << 20
SPREAD_MIN_RANGES = 128
COLD_PROBES = 8
# A call of two or more files whose first is on FUSE, or of two or more ranges of a
# FUSE file, goes to this many threads instead of the rings (each pread at most
# PREAD_PIECE, as the rings', so a stopped call ends soon). A ring must pread FUSE
# files (see _engine._FUSE_SUPER_MAGIC), one after another, and FUSE is where reads
# wait: gcsfuse, s3fs, sshfs answer each over the network. Measured here (64 files
# of 64 KiB from tests/fusefs.py, whose reads wait 5 ms): one ring 770 ms, 4
# threads 197 ms, 32 threads 49 ms. Files on FUSE elsewhere in a call the rings read
# themselves, with pread.
FUSE_THREADS = 32
# After a call of bytes results (read_files, iter_files, read_ranges,
# read_path_ranges) that came to at most RETAIN_BYTES, the backend keeps, for each
# thread that ran the call's jobs, a reference (a `top`) to that thread's result
# from malloc's heap (see _engine._higher) at the highest address: glibc then cannot
# hand the memory below it back to the kernel when the caller drops the results (it
# trims only the free top of a heap), and the next call's results reuse that memory
# instead of page-faulting on fresh pages, with the GIL held. By thread, not by
# ring: glibc gives each thread a heap (arena) of its own, and which ring a worker
# thread takes changes from call to call. Call after call, each call's results
# dropped (2 cores, cached): one ring, 10,000 files of 4 KiB, 204-209 k files/s
# without, 293-351 k with; 10,000 ranges of 4 KiB of one file, 386 k ranges/s
# without, 0.99-1.10 M with. A top goes RETAIN_S after the call that kept it,
# unless a call of the same thread keeps a new one first: what stays below a top can
# be more than that call's results (all the process freed below it meanwhile), and
# a process that has stopped calling gets it back.
RETAIN_BYTES = 64 << 20
RETAIN_S = 1.0
# A ring just closed returns its locked memory asynchronously: ENOMEM right after
# one closed is retried this many times, waiting 1, 2, 4... ms, before rings shrink.
ENOMEM_RETRIES = 5


class UringBackend:
    """Up to `workers` rings of up to `queue_depth` entries: as many and as large as
    RLIMIT_MEMLOCK allows (at least one, else the UringSyscallError of the first)."""
    name = "io_uring"

    def __init__(self, queue_depth, workers, direct=False):
        self.direct = direct
        self._rings = []
        self._lock = threading.Lock()           # the O_DIRECT refusal count
        self._refused_direct = 0
        table = not direct and DIRECT_TABLE_RINGS is not None and \
            workers >= DIRECT_TABLE_RINGS
        try:
            for _ in range(workers):
                try:
                    self._rings.append(_RingReader(queue_depth, direct, table))
                except UringSyscallError as exc:
                    if exc.errno != errno.ENOMEM or not self._rings:
                        raise
                    break                       # fewer rings: what the limit allows
        except BaseException:
            self.close()
            raise
        self.queue_depth = self._rings[0].depth
        self._fuse = None                       # FUSE_THREADS' backend, once needed
        self._fuse_calls = 0
        self._closed = False
        self._free = queue.SimpleQueue()
        for r in self._rings:
            self._free.put(r)
        self._workers = Workers(len(self._rings), "vyre-uring") if len(self._rings) > 1 \
            else None

    @property
    def workers(self):
        return len(self._rings)

    @property
    def stats(self):
        keys = ("syscalls", "operations", "short_reads", "sync_reads", "direct_fallbacks")
        out = {key: sum(r.stats[k] for r in self._rings) for k, key in enumerate(keys)}
        out["direct_fallbacks"] += self._refused_direct
        if self._fuse is not None:
            out["direct_fallbacks"] += self._fuse.stats["direct_fallbacks"]
        out["buffer_registration"] = self._rings[0].registration
        out["direct_descriptors"] = all(r.table for r in self._rings)
        out["fuse_calls"] = self._fuse_calls
        return out

    def close(self):
        with self._lock:
            self._closed = True                 # no FUSE threads made from now on
        _releaser.drop(self)                    # the results it kept can go
        if getattr(self, "_workers", None) is not None:
            self._workers.close()
        if getattr(self, "_fuse", None) is not None:
            self._fuse.close()
        for r in self._rings:
            r.close()

    def forget(self):
        """In a forked child: let go of the parent's rings without waiting for
        threads that do not exist here (the kernel keeps the parent's rings)."""
        for r in self._rings:
            r.ring.close()
        if self._workers is not None:
            self._workers.forget()
        if self._fuse is not None:
            self._fuse.forget()

    def _threads_for(self, files):
        """FUSE_THREADS' backend for a call of two or more `files` whose first is on
        FUSE (one statfs, which there asks the server), else None. One file gains
        nothing from whole-file threads, each of which takes a file: the rings read
        it as fast (and a file's many path ranges they share out), and pay no statfs."""
        if len(files) < 2 or not on_fuse(files[0]):
            return None
        return self._fuse_threads()

    def _fuse_threads(self):
        """FUSE_THREADS' backend, made on first use; None once closed (the rings
        then raise)."""
        with self._lock:
            if self._closed:
                return None
            if self._fuse is None:
                self._fuse = ThreadsBackend(FUSE_THREADS, self.direct, PREAD_PIECE)
            self._fuse_calls += 1
            return self._fuse

    def _run(self, tasks, on_result=None):
        post = self._workers.post if self._workers is not None and len(tasks) > 1 else None
        outcomes = run_call(tasks, post, self._free, on_result)
        for _, exc in outcomes:
            if exc is not None:
                raise exc
        return [value for value, _ in outcomes]

    def read_files(self, paths, out, progress, budget=None, pack=None):
        """out[i] = the bytes of paths[i], or its OSError; progress(files, bytes)
        after each job. With a byte `budget` (a ByteBudget, shared by the rings),
        the results together stay within it (or are one file): returns the indices
        of the files left for a later call. With a `pack` (a Packing, shared by the
        rings) the bytes go into its buffer, and out[i] holds only an OSError. Files
        on FUSE go to threads (_threads_for)."""
        threads = self._threads_for(paths)
        if threads is not None:
            return threads.read_files(paths, out, progress, budget, pack)
        n = len(paths)
        rings = len(self._rings)
        per_ring = 4 if n < rings * JOB_FILES else min(4, round(n / (rings * JOB_FILES)))
        step = max(self._rings[0].depth, min(MAX_JOB_FILES, -(-n // (per_ring * rings))))
        if budget is not None:
            # One job per ring; a call of at most a queue's worth of files, one job.
            step = max(self._rings[0].depth, -(-n // rings))
        tops = _Tops() if pack is None else None      # (packed: no results of ours)
        tasks = [lambda r, stop, s=s: r.read_files(paths, s, min(s + step, n), out, budget,
                                                   stop, pack, tops)
                 for s in range(0, n, step)]
        parts = self._run(tasks, lambda value, exc: exc is None and progress(*value[1:]))
        if tops is not None:
            tops.keep(self)
        return [i for part in parts for i in part[0]]

    def read_ranges_into(self, path, buffer, offsets, lengths, buffer_offsets):
        """Range i into buffer[buffer_offsets[i]:]; returns the byte counts."""
        return self._ranges(path, offsets, lengths, buffer, buffer_offsets)

    def read_ranges(self, path, offsets, lengths):
        """Each range as a bytes object, read straight into it."""
        return self._ranges(path, offsets, lengths, None, None)

    def _ranges(self, path, offsets, lengths, buffer, buffer_offsets):
        """With several rings, each reads a contiguous share of the ranges. Two or
        more ranges of a file on FUSE go to FUSE_THREADS, many waiting at once."""
        n = len(offsets)
        asked = (offsets, lengths, buffer_offsets)
        share = max(1, -(-n // len(self._rings)))
        # Each ring's share is a view of the call's own arrays, not a copy: the job
        # reads each value once into private memory, and checks it there.
        offsets, lengths = memoryview(offsets), memoryview(lengths)
        if buffer_offsets is not None:
            buffer_offsets = memoryview(buffer_offsets)
        # Byte counts: every ring writes its share into one list (a million results
        # joined afterwards cost the caller's thread 10 ms).
        counts = [None] * n if buffer is not None and n > share else None
        tops = _Tops() if buffer is None else None

        def share_of(seq, s):
            return None if seq is None else seq[s:s + share]

        def on_file(fd, direct):
            pread = pread_only(fd)
            threads = self._fuse_threads() if n >= 2 and pread else None
            if threads is not None and buffer is None:
                return threads.read_ranges(path, *asked[:2], opened=(fd, direct))
            if threads is not None:
                return threads.read_ranges_into(path, buffer, *asked, opened=(fd, direct))
            if self.direct and not direct:
                with self._lock:
                    self._refused_direct += 1   # the filesystem refused O_DIRECT
            # A ring's own fd pays for itself over many reads (and a reopened fd
            # would be buffered: not for O_DIRECT).
            reopen = n > share >= REGISTER_FILE_MIN_RANGES and not direct

            def task(s):
                def run(r, stop):
                    def read(fds):
                        return r.read_ranges(fds[0], share_of(offsets, s),
                                             share_of(lengths, s), buffer,
                                             share_of(buffer_offsets, s), path, direct, stop,
                                             counts, s, tops, pread)
                    return _own_fds([fd], read) if reopen else read([fd])
                return run
            parts = self._run([task(s) for s in range(0, n, share)])
            if tops is not None:
                tops.keep(self)
            if counts is not None:
                return counts
            if not parts:
                return []                   # no ranges: the file was still opened
            if len(parts) == 1:
                return parts[0]
            out = parts[0]
            for part in parts[1:]:
                out += part                 # bytes results, joined in place
            return out
        return with_file(path, self.direct, on_file)

    def run_lanes(self, n, lane):
        """lane(i, stage) for each i < n, each on a ring of its own, at once;
        stage(stages, staging, base, copies) runs one lane of the StagePlan `stages`
        on that ring, in C (see _staging). n <= workers."""
        def task(i):
            return lambda r, stop: lane(i, lambda *args: r.stage(*args, stop))
        self._run([task(i) for i in range(n)])

    def read_path_ranges(self, paths, offsets, lengths, out):
        """out[r] = lengths[r] bytes at offsets[r] of paths[r], or its OSError;
        returns the bytes read. With several rings, each takes whole files, shares
        balanced by their ranges; where fewer files than rings hold large ranges, a
        file's ranges are shared out too, each share opening the file (_spread).
        Files on FUSE go to threads (_threads_for)."""
        files, order, first = group_paths(paths)
        threads = self._threads_for(files)
        if threads is not None:
            return threads.read_path_ranges(paths, offsets, lengths, out)
        rings = len(self._rings)
        if 0 < len(files) < rings:
            total = sum(lengths)                # in C: no Python loop per range
            if len(paths) >= 2 * SPREAD_MIN_RANGES or total >= SPREAD_MIN_AVERAGE * len(paths):
                one_file = len(files) == 1 and min(lengths) >= 0
                files, first = _spread(files, order, first, offsets, lengths, rings,
                                       total if one_file else None)
        cuts = sorted({0, len(files)} | {bisect.bisect_left(first, len(paths) * k // rings)
                                         for k in range(1, rings)})
        tops = _Tops()
        tasks = [lambda r, stop, a=a, b=b: r.read_path_ranges(files, order, first, offsets,
                                                              lengths, a, b, out, stop, tops)
                 for a, b in zip(cuts, cuts[1:]) if b > a]
        nbytes = sum(self._run(tasks))
        tops.keep(self)
        return nbytes


class _Tops:
    """One call's results, by the thread whose jobs made them (see RETAIN_BYTES):
    of() is the list the calling thread's jobs append (bytes, top) to; keep() then
    hands the backend each thread's top."""

    def __init__(self):
        self._kept = {}                         # thread ident -> its jobs' (bytes, top)

    def of(self):
        # One setdefault with an int key runs no Python code: atomic, no lock needed.
        return self._kept.setdefault(threading.get_ident(), [])

    def keep(self, backend):
        """After the call, whose jobs made all their results: for each thread that
        ran its jobs, the backend keeps that thread's top of this call (the highest)
        if the call's results came to at most RETAIN_BYTES, else none. A thread that
        ran none keeps what an earlier call left it; a closed backend, nothing."""
        if backend._closed:
            return
        total = sum(nbytes for kept in self._kept.values() for nbytes, _ in kept)
        for thread, kept in self._kept.items():
            tops = [top for _, top in kept if top is not None]
            _releaser.hold(backend, thread, max(tops, key=id)
                           if tops and total <= RETAIN_BYTES else None)


class _Releaser:
    """Holds backends' tops, by backend and thread, and lets each go RETAIN_S
    after it was set, from a thread of its own: it looks every RETAIN_S / 4 while
    any is held, and otherwise waits to be woken. Its lock is acquired in C (Ctrl-C
    in the caller's thread cannot land inside a Python-level __enter__ and leave it
    held) and re-entrant (a finalizer that closes a reader may run inside it, where
    the collector runs). Backends are held weakly, and tops are dropped outside it.

    The thread never ends, and _start returns once it runs Python code: a thread
    frees memory without the GIL as it starts and as it ends (CPython's own), and a
    fork at that moment, under a malloc with no fork handler (GCC 12's ASan), leaves
    the child's allocator locked. So the caller's own fork right after a call is safe
    under ASan too."""

    def __init__(self):
        self._lock = threading.RLock()
        # (weakref to a backend, thread ident) -> ((when it goes, top), ...), the
        # highest top first
        self._held = {}
        self._wake = _thread.allocate_lock()    # released: the thread looks now
        self._wake.acquire()
        self._running = False                   # set by the thread itself

    def hold(self, backend, thread, top):
        """`thread`'s top of `backend` becomes `top` (None: none). A higher top of
        an earlier call stays until its own time: jobs go to whichever worker
        thread is free, so a thread's share of a call's results changes from call
        to call, and one whose share grows then finds the memory it used before."""
        until = time.monotonic() + RETAIN_S
        key = (weakref.ref(backend), thread)
        with self._lock:
            old = self._held.pop(key, ())
            try:
                if top is not None and not self._running and not self._start():
                    top = None                  # no thread can drop it: keep none
                if top is not None:
                    higher = tuple(kept for kept in old[:1] if id(kept[1]) > id(top))
                    self._held[key] = higher + ((until, top),)
                    if self._wake.locked():
                        self._wake.release()    # (Ctrl-C after this: it is held and seen)
            except BaseException:               # Ctrl-C: keep nothing
                self._held.pop(key, None)
                raise
        del old                                 # (freed outside the lock)

    def drop(self, backend):
        """Let all of `backend`'s tops go (it closed)."""
        ref = weakref.ref(backend)
        with self._lock:
            old = [self._held.pop(key, None) for key in list(self._held) if key[0] == ref]
        del old                                 # (freed outside the lock)

    def _start(self):
        """Start the thread; False where none can start (at interpreter shutdown,
        or short of memory): the call's results are read all the same. A bare
        thread: Thread.start() waits on a Condition, in the caller's thread, where
        Ctrl-C could leave its lock held and the thread stuck. (Ctrl-C after the
        start: the thread serves all the same; at worst a second one is started
        later, and the two share the work.)"""
        running = _thread.allocate_lock()
        running.acquire()
        try:
            _thread.start_new_thread(self._run, (running,))
        except (RuntimeError, MemoryError):
            return False
        running.acquire()
        return True

    def _run(self, running):
        self._running = True
        running.release()
        try:
            block_async_signals()               # Ctrl-C belongs to the main thread
            while True:
                self._wake.acquire(timeout=RETAIN_S / 4 if self._held else -1)
                self._expired()                 # what it took is dropped here, unlocked
        except BaseException:                   # (a MemoryError): the next hold starts one
            self._running = False
            raise

    def _expired(self):
        """Take the tops that are due, and those of backends that are gone; returns
        them for the caller to drop, outside the lock."""
        now = time.monotonic()
        out = []
        with self._lock:
            for key, held in list(self._held.items()):
                alive = key[0]() is not None
                left = tuple(kept for kept in held if alive and kept[0] > now)
                if len(left) < len(held):
                    out.append(held)
                    # A finalizer run meanwhile (where the collector ran: after
                    # any call) may have dropped the key: then it stays dropped.
                    # No call between this look and the change.
                    if key in self._held and self._held[key] is held:
                        if left:
                            self._held[key] = left
                        else:
                            del self._held[key]
        return out


def _new_releaser_in_child():
    global _releaser
    held, _releaser = _releaser._held, _Releaser()  # the parent's thread (and lock)
    held.clear()                    # are not here: its tops go now, or never would


_releaser = _Releaser()
os.register_at_fork(after_in_child=_new_releaser_in_child)


def _spread(files, order, first, offsets, lengths, rings, total=None):
    """Fewer files than rings: each file whose ranges (consecutive in `order`)
    average SPREAD_MIN_AVERAGE bytes or more is cut into up to rings // len(files)
    shares of SPREAD_MIN_BYTES or more, and one with many small ranges mostly not
    in the page cache into shares of SPREAD_MIN_RANGES or more; each share is a file
    entry of its own (the ring that reads it opens the file). `total`: the bytes
    of the ranges when they are one file's, all sized. Returns (files, first) over
    the same `order`."""
    per_file = rings // len(files)
    out_files, out_first = [], array.array("q")
    for f, name in enumerate(files):
        a, b = first[f], first[f + 1]
        nbytes = total if total is not None else \
            sum(max(lengths[i], 0) for i in order[a:b])     # -1 (to EOF): unknown
        shares = 1
        if nbytes >= SPREAD_MIN_AVERAGE * (b - a):
            shares = max(1, min(per_file, b - a, nbytes // SPREAD_MIN_BYTES))
        elif b - a >= 2 * SPREAD_MIN_RANGES and _uncached(
                name, [offsets[order[a + (b - a) * k // COLD_PROBES]]
                       for k in range(COLD_PROBES)]):
            shares = max(1, min(per_file, (b - a) // SPREAD_MIN_RANGES))
        for k in range(shares):
            out_files.append(name)
            out_first.append(a + (b - a) * k // shares)
    out_first.append(first[len(files)])
    return out_files, out_first


def _own_fds(fds, fn):
    """fn(fds of this ring's own): each file of `fds` reopened through /proc/self/fd
    (the same file, even if its path was replaced since; buffered). Rings reading one
    file at once then do not share its file description, whose readahead state every
    read writes: one cache line they would fight over at millions of reads a second.
    Without /proc, fn(fds)."""
    opened = []

    def run(own):
        opened.append(own)
        return fn(own)
    try:
        return with_files([f"/proc/self/fd/{fd}" for fd in fds], run)
    except OSError:
        if opened:
            raise                       # the reads failed, not the opens
    return fn(fds)


def _uncached(path, offsets):
    """Whether most of these offsets of the file are not in the page cache (a one-byte
    preadv2 with RWF_NOWAIT fails EAGAIN there). False when it cannot tell (the file
    does not open, an offset is bad, a kernel without RWF_NOWAIT): the read reports
    what is wrong."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except (OSError, TypeError, ValueError):
        return False
    misses = 0
    probe = bytearray(1)
    try:
        for offset in offsets:
            try:
                os.preadv(fd, [probe], offset, os.RWF_NOWAIT)
            except BlockingIOError:
                misses += 1
    except (OSError, OverflowError, TypeError, ValueError):
        return False                    # (a bad offset: the reader's checks name it)
    finally:
        os.close(fd)
    return 2 * misses > len(offsets)


class _RingReader:
    """One ring, its counters (syscalls, operations, short reads, synchronous reads,
    O_DIRECT refusals), the arena its jobs read small files into and, with
    direct=True, its bounce slots for O_DIRECT reads."""

    def __init__(self, queue_depth, direct, table):
        self.ring, self.depth = _sized_ring(queue_depth)
        self.stats = array.array("q", [0] * 5)
        self.arena = Arena()
        # Page-aligned, touched only as far as reads use it; registered, so that
        # O_DIRECT reads skip pinning its pages each time, where the kernel and
        # RLIMIT_MEMLOCK allow (else the reads go unregistered, and stats say why).
        self.bounce = None
        self.registration = None              # nothing to register
        self.table = _direct_table(self.ring, self.depth) if table else 0
        if direct:
            self.bounce = alloc_buffer(self.depth * DIRECT_CHUNK)
            try:
                self.ring.register_buffers([self.bounce])
                self.registration = "registered"
            except UringSyscallError as exc:
                self.registration = f"refused: {exc}"

    def close(self):
        # Completes the last closes (ring.close() would only cancel and discard them).
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

    def read_files(self, paths, start, stop, out, budget, call, pack, tops):
        """Files start..stop-1 into out (or into pack); returns (the indices deferred
        by the budget, files done, bytes read). `tops`: the call's _Tops, or None."""
        leftovers, nbytes = read_file_window(self.ring, paths, start, stop, out, OPEN_FLAGS,
                                             self.depth, self.stats, self.bounce, budget,
                                             call, self.arena, pack, self.table,
                                             None if tops is None else tops.of())
        deferred = []
        for i, code, mode in leftovers:
            if code == DEFERRED:
                deferred.append(start + i)
            else:
                out[start + i] = _leftover(paths[start + i], code, mode, budget)
        return deferred, stop - start - len(deferred), nbytes

    def read_ranges(self, fd, offsets, lengths, buffer, buffer_offsets, path, direct, call,
                    out, out_start, tops, pread):
        """`pread`: the file's reads must be preads (pread_only), asked once a call."""
        # The fd as a registered file: each read then skips taking and dropping a
        # reference to the file (two atomics on a line that several rings share).
        # Registering costs two syscalls: worth it for many ranges only.
        registering = len(offsets) >= REGISTER_FILE_MIN_RANGES
        try:
            fixed = registering and self._register([fd])
            return read_ranges_job(self.ring, fd, offsets, lengths, buffer, buffer_offsets,
                                   self.depth, self.stats, path,
                                   self.bounce if direct else None, fixed, call, out,
                                   out_start, None if tops is None else tops.of(),
                                   pread=pread)
        finally:
            if registering:
                self._unregister(1)

    def _register(self, fds):
        """Registered files 0..len(fds)-1 become `fds`: slots of the direct table where
        there is one (no files job runs meanwhile), else a table of their own. Returns
        whether they all are; where the kernel refuses (or updates only some slots),
        nothing stays registered and the reads name the plain fds (the same reads, a
        bit slower)."""
        try:
            if self.table:
                if self.ring.update_files(0, fds) == len(fds):
                    return True
                self._unregister(len(fds))
                return False
            if self.ring.registered_files:      # left by an interrupted call
                self.ring.unregister_files()
            self.ring.register_files(fds)
        except UringSyscallError:
            return False
        return True

    def _unregister(self, n):
        """Undo _register of n files, so that no slot keeps a file open after the
        call; best effort, as close(2) is (a table left registered is replaced by the
        next _register, and goes with the ring)."""
        try:
            if self.table:
                self.ring.update_files(0, [-1] * n)
            elif self.ring.registered_files:
                self.ring.unregister_files()
        except UringSyscallError:
            pass

    def stage(self, stages, staging, base, copies, call):
        """One lane of a StagePlan, its slots at `base` in the Staging `staging`,
        copied by the lane `copies`. Where the plan has few files (as many as the
        ring can register), the ring reads them through fds of its own (_own_fds),
        registered with it; if registering fails, through the call's fds."""
        n = stages.nfiles

        def lane(fds):
            registering = fds is not None
            try:
                fixed = registering and self._register(fds)
                run_stage_lane(self.ring, stages, staging.memory, base,
                               CopyOps(*copies.c_ops()), self.depth, self.stats,
                               n if fixed else 0, call)
            finally:
                if registering:
                    self._unregister(n)
        if n > min(self.table or MAX_REGISTERED_FILES, MAX_REGISTERED_FILES):
            return lane(None)
        return _own_fds([stages.fd(f) for f in range(n)], lane)

    def read_path_ranges(self, files, order, first, offsets, lengths, f0, f1, out, call,
                         tops):
        return read_path_ranges_job(self.ring, files, order, first, offsets, lengths, f0,
                                    f1, out, self.depth, self.stats, _file_error,
                                    self.bounce, call, tops.of())


def _direct_table(ring, depth):
    """The slots of a sparse file table registered on `ring` for direct descriptors,
    or 0 where the kernel cannot open into one: files are then opened as fds.
    File-index allocation came in Linux 5.19, with the SOCKET opcode, which the
    probe must list: an older kernel ignoring file_index would
    return a plain fd, whose "slot" nothing could close. Then one probe open and
    close of a slot must work."""
    if SOCKET_OPCODE not in ring.probe():
        return 0
    slots = 2 * depth
    try:
        ring.register_files([-1] * slots)
    except UringSyscallError:
        return 0
    ring.prep_openat("/", file_index=FILE_INDEX_ALLOC)
    (opened,) = ring.wait(1, timeout=5)
    if 0 <= opened.res < slots:
        ring.prep_close(opened.res, fixed=True)
        (closed,) = ring.wait(1, timeout=5)
        if closed.res == 0:
            return slots
    ring.unregister_files()             # (closes whatever the probe left there)
    return 0


def _sized_ring(depth):
    """(ring, depth): a restricted ring of `depth` entries, or smaller where
    RLIMIT_MEMLOCK (which io_uring charges for ring memory) does not allow it."""
    while True:
        try:
            return _ring_after_freed_memory(depth), depth
        except UringSyscallError as exc:
            if exc.errno != errno.ENOMEM or depth == 1:
                raise
            depth //= 2


def _ring_after_freed_memory(depth):
    """A ring, retrying ENOMEM while closed rings may still be returning memory."""
    for attempt in range(ENOMEM_RETRIES + 1):
        try:
            # CQ room for a full depth of opens and reads plus the closes behind them.
            return _restricted_ring(depth, cq_entries=4 * depth)
        except UringSyscallError as exc:
            if exc.errno != errno.ENOMEM or attempt == ENOMEM_RETRIES:
                raise
            time.sleep(0.001 * 2 ** attempt)


def _restricted_ring(entries, **kwargs):
    """A Ring the kernel lets run only the reader's opcodes (Linux 5.10 and later;
    older kernels refuse the setup flag with EINVAL, and get an unrestricted ring)."""
    try:
        return Ring(entries, allowed_ops=READER_OPS, **kwargs)
    except UringSyscallError as exc:
        if exc.errno != errno.EINVAL:
            raise
    return Ring(entries, **kwargs)


def _file_error(code, mode, path):
    """The OSError of a file whose ranges could not be read."""
    return _leftover(path, code, mode, None)


def _leftover(path, code, mode, budget):
    """The OSError of a file the C loop did not read."""
    if code == NUL_BYTE:
        return path_error(errno.EINVAL, path, "embedded null byte")
    if code == OVER_BUDGET:
        return over_budget_error(path, budget)
    if code == NOT_REGULAR:
        try:
            check_regular(mode, path)
        except OSError as exc:
            return exc
    return path_error(code, path)

