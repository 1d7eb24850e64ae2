"""asyncio file I/O through io_uring: each event loop gets one ring, and awaiting a
read costs a request in that ring, not a thread hop.

    await read_file(path)                          -> bytes
    await read_files(paths)                        -> list of bytes, in order
    await read_ranges(path, offsets, lengths)      -> list of bytes (pread semantics)
    await read_ranges_into(path, buffer, offsets, lengths, buffer_offsets) -> counts
    await write_file(path, data)                   -> bytes written
    async with open(path, "rb") as f: await f.read(n) / readinto / seek / write
    ring = loop_ring(); await ring.read(fd, buf, offset)   the ops themselves

How completions reach the loop: the ring signals an eventfd (IORING_REGISTER_EVENTFD)
that the loop watches with add_reader; its callback reaps every completion there is
in one call. Requests made during one loop iteration are submitted together by a
callback scheduled once (call_soon), which then reaps at once: page-cache reads
complete inside the submit, so they need no wakeup at all. A read on an idle ring
(nothing else outstanding, so nothing to batch with) is submitted at once instead:
a page-cache hit returns without a Future or a loop iteration.

Cancellation: a cancelled call sends ASYNC_CANCEL for what it has in flight and
waits for those completions before CancelledError leaves it (a second cancel does
not cut that wait short). So no request writes into a buffer after the caller saw
CancelledError, and no fd the call opened stays open. A request the kernel had
already completed has written its bytes: its result is discarded.

Closing the loop closes its ring after draining whatever is in flight: the calls
still waiting are cancelled and their requests reaped (asyncio.run cancels the
remaining tasks first, so they end normally with CancelledError).

Where io_uring is unavailable (seccomp, kernel.io_uring_disabled, an old kernel) or
VYRE_URING_BACKEND=threads, the same calls run their requests on a thread pool,
with the same semantics; a RuntimeWarning says so once, and fallback_reason() why.
"""
import asyncio
import atexit
import collections
import errno
import os
import resource
import threading
import warnings
import weakref
from array import array
import concurrent.futures
from concurrent.futures import ThreadPoolExecutor

from ._files import OPEN_FLAGS, check_regular, lengths_within_eof, path_error
from ._engine import MAX_PIECE, UNSIZED_FIRST, check_ranges, pread_only
from ._workers import block_async_signals
from .errors import RingClosedError, RingFullError, UringSyscallError
# _warned: "io_uring is unavailable" is said once per process, by aio or the reader.
from .reader import (_chosen_backend, _int_list, _means_unavailable, _path_list,
                     _shared_reader, _warned, default_workers, ranges_into_args)

__all__ = ["read_file", "read_files", "read_ranges", "read_ranges_into", "write_file",
           "open", "AsyncFile", "LoopRing", "loop_ring", "fallback_reason"]

RING_ENTRIES = 512      # SQ entries; the CQ (twice that) bounds requests in flight
MAX_OPEN_FILES = 256    # fds the whole-file calls of one loop hold at once, at most
_REAP_BATCH = 1024

_engines = weakref.WeakKeyDictionary()      # loop -> its engine
_pread_engines = weakref.WeakKeyDictionary()    # loop -> its engine for pread_only files
# read_files calls of at least this many files run on the synchronous reader: its
# jobs in C on every ring, from a thread of their own; the loop awaits one future.
READER_BATCH_FILES = 64
# Paths per reader call of such a batch, per ring: each ring gets several jobs of a
# call (a stop waits for the jobs running), and a 16-ring reader is not starved.
BATCH_SLICE = 1024
_fallback_reason = None


def fallback_reason():
    """Why this process runs the async calls on threads, or None when it uses io_uring
    (or has not made an engine yet)."""
    return _fallback_reason


def _engine():
    """The running loop's engine, made on first use (in the loop's thread)."""
    loop = asyncio.get_running_loop()
    engine = _engines.get(loop)
    if engine is None or engine.closed:
        engine = _engines[loop] = _make_engine(loop)
    return engine


def _make_engine(loop):
    global _fallback_reason
    backend = _chosen_backend("auto")        # VYRE_URING_BACKEND, checked as the reader does
    if backend != "threads":
        try:
            return _RingEngine(loop)
        except UringSyscallError as exc:
            if backend == "io_uring" or not _means_unavailable(exc):
                raise
            _fallback_reason = str(exc)
            if not _warned.is_set():
                _warned.set()
                warnings.warn(f"vyre_uring.aio: io_uring is unavailable, running file I/O "
                              f"on threads instead: {exc}", RuntimeWarning, stacklevel=4)
    return _ThreadEngine(loop)


def _pread_engine(engine):
    """Where the files a ring engine must not read go (pread_only: on FUSE, the
    kernel gets io_uring reads wrong when the server answers short): the loop's
    thread engine, made on first use."""
    loop = asyncio.get_running_loop()
    threads = _pread_engines.get(loop)
    if threads is None or threads.closed:
        threads = _pread_engines[loop] = _ThreadEngine(loop)
    return threads


def _close_with_loop(loop, engine):
    """Close `engine` when `loop` is closed. asyncio has no close hook, so the loop's
    close is wrapped on the instance (its class is untouched)."""
    original = loop.close

    def close():
        if not loop.is_running():           # else original() refuses: nothing to drain
            engine.close(loop)
        original()
    loop.close = close


# ---- engines: where requests run ----------------------------------------------------
#
# An engine runs requests for calls: engine.read(call, item, ...) and the like, and
# later call._done(item, res) once per request, in the loop thread, res being what
# the syscall returned or -errno. While a request is outstanding its token is in
# call.live.

class _RingEngine:
    """One loop's ring. A request is prepared at once when the ring has room, else
    queued (opens also wait for the fd budget); a callback scheduled once per loop
    iteration submits and reaps; the eventfd callback reaps the rest."""
    name = "io_uring"
    api = None                                  # its LoopRing, once asked for

    def __init__(self, loop):
        from ._ring import Ring
        self.ring = Ring(RING_ENTRIES)
        try:
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            try:
                self.ring.register_eventfd(self._efd)
                loop.add_reader(self._efd, self._on_eventfd)
            except BaseException:
                os.close(self._efd)
                raise
        except BaseException:
            self.ring.close()
            raise
        self.closed = self._closing = False
        self._calls = {}                        # user_data -> (call, item)
        self._next = 1
        self._queue = collections.deque()       # (user_data, prep) waiting for room
        self._opens = collections.deque()       # (user_data, prep) waiting for fd budget
        self._waiting = set()                   # user_data of both; withdrawn: removed
        self._budget_waiting = set()            # user_data of _opens
        self.open_fds = 0                       # fds whole-file calls hold (or will)
        self.fd_budget = open_files_budget()
        self.batches = set()                    # read_files calls on the reader
        self._flush_due = False
        self._ud = array("Q", bytes(8 * _REAP_BATCH))
        self._res = array("i", bytes(4 * _REAP_BATCH))
        _close_with_loop(loop, self)

    def read(self, call, item, fd, buf, offset, nbytes, buf_offset):
        prep = self.ring.prep_read
        self._start(call, item, lambda ud: prep(fd, buf, offset, nbytes=nbytes,
                                                buf_offset=buf_offset, user_data=ud))

    def read_now(self, fd, buf, offset, nbytes, buf_offset):
        """One read at once, skipping the Future and the loop iteration when the ring
        is idle: submitted alone, a page-cache hit completes inside the submit and
        its res (bytes read, or -errno) is returned. Otherwise an _Op to run: it owns
        the read already in flight, or issues it the usual way when the ring is busy
        (where batching with the other requests pays)."""
        if self._calls or self._closing:
            return _read_op(self, fd, buf, offset, nbytes, buf_offset)
        ud = self._next
        self._next = ud + 1
        try:
            res = self.ring.submit_read(fd, buf, offset, nbytes=nbytes,
                                        buf_offset=buf_offset, user_data=ud)
        except BaseException:
            self._drain_alone(ud)
            raise
        return res if res is not None else self.owner_of(ud)

    def owner_of(self, ud):
        """An _Op to run for read `ud`, submitted already and not done at once."""
        return _Op(self, lambda op: self._adopt(op, 0, ud))

    def _drain_alone(self, ud):
        """read_now's read after its call failed before any _Op owned it: cancelled
        and waited for (the ring had nothing else in flight), so that nothing writes
        into the caller's buffer once the exception leaves."""
        ring = self.ring
        if not (ring.in_flight or ring.pending):
            return                      # refused before it was prepared
        ring.prep_cancel(ud, user_data=self._next)
        self._next += 1
        while ring.in_flight or ring.pending:
            ring.reap(self._ud, self._res, min_complete=1)

    def _adopt(self, call, item, ud):
        """Make `call` the owner of request `ud`, submitted already."""
        self._calls[ud] = (call, item)
        call.live.add(ud)

    def write(self, call, item, fd, buf, offset, nbytes, buf_offset):
        prep = self.ring.prep_write
        self._start(call, item, lambda ud: prep(fd, buf, offset, nbytes=nbytes,
                                                buf_offset=buf_offset, user_data=ud))

    def openat(self, call, item, path, flags, mode, budget=False):
        """budget=True: the fd counts against fd_budget until release_fd(); the open
        waits while the budget is spent."""
        prep = self.ring.prep_openat
        wait = budget and (self._opens or self.open_fds >= self.fd_budget)
        self.open_fds += budget and not wait
        self._start(call, item, lambda ud: prep(path, flags, mode, user_data=ud),
                    self._opens if wait else None)

    def release_fd(self):
        self.open_fds -= 1
        while self._opens and self.open_fds < self.fd_budget:
            ud, prep = self._opens.popleft()
            if ud in self._budget_waiting:
                self._budget_waiting.discard(ud)
                self._waiting.discard(ud)
                self.open_fds += 1
                self._prep(ud, prep)
                self._schedule()

    def fsync(self, call, item, fd, datasync):
        prep = self.ring.prep_fsync
        self._start(call, item, lambda ud: prep(fd, datasync, user_data=ud))

    def nop(self, call, item):
        prep = self.ring.prep_nop
        self._start(call, item, lambda ud: prep(user_data=ud))

    def _start(self, call, item, prep, queue=None):
        if self.closed:
            raise RingClosedError("the event loop's ring is closed")
        ud = self._next
        self._next += 1
        self._calls[ud] = (call, item)
        call.live.add(ud)
        if queue is not None:
            queue.append((ud, prep))
            self._waiting.add(ud)
            self._budget_waiting.add(ud)
        else:
            try:
                self._prep(ud, prep)
            except BaseException:
                del self._calls[ud]
                call.live.discard(ud)
                raise
        self._schedule()

    def _schedule(self):
        """Submit what is prepared once this loop iteration's callbacks have run."""
        if not self._flush_due and not self._closing:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _prep(self, ud, prep):
        """Prepare now, or queue behind the requests already waiting for room."""
        if self._queue:
            self._queue.append((ud, prep))
            self._waiting.add(ud)
            return
        try:
            prep(ud)
        except RingFullError:
            self._queue.append((ud, prep))
            self._waiting.add(ud)

    def cancel(self, call):
        """Withdraw `call`'s queued requests and ask the kernel to cancel the rest:
        every one still completes (res -ECANCELED when withdrawn or cancelled)."""
        for ud in list(call.live):
            if ud in self._waiting:
                self._waiting.discard(ud)
                if ud in self._budget_waiting:
                    self._budget_waiting.discard(ud)
                    self.open_fds += 1      # as if started: its completion gives it back
                self._complete(ud, -errno.ECANCELED)
            else:
                prep = self.ring.prep_cancel
                self._start(_IGNORE, None, lambda cud, ud=ud: prep(ud, user_data=cud))

    def _complete(self, ud, res):
        owner = self._calls.pop(ud, None)
        if owner is None:
            # read_now's read, left without an owner by an interrupt between its
            # submit and the _Op that adopts it: the ring released its buffer.
            return
        call, item = owner
        call.live.discard(ud)
        call._done(item, res)

    def _flush(self):
        self._flush_due = False
        if not self.closed:
            self.ring.submit()
            self._reap()        # what completed inside the submit (page-cache hits)

    def _on_eventfd(self):
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            pass                # a signal for completions reaped already
        self._reap()

    def _reap(self, wait=0):
        ring, ud, res, complete = self.ring, self._ud, self._res, self._complete
        while True:
            n = ring.reap(ud, res, min_complete=wait, timeout=1.0 if wait else None)
            for i in range(n):
                complete(ud[i], res[i])
            self._refill()
            if n < _REAP_BATCH:
                return

    def _refill(self):
        queue, waiting = self._queue, self._waiting
        while queue:
            ud, prep = queue[0]
            if ud in waiting:
                try:
                    prep(ud)
                except RingFullError:
                    return
                except Exception:
                    # Refused now what the call's checks allowed when it was queued
                    # (a bytearray shrunk meanwhile): that request fails alone, the
                    # queue goes on.
                    waiting.discard(ud)
                    queue.popleft()
                    self._complete(ud, -errno.EINVAL)
                    continue
                waiting.discard(ud)
            queue.popleft()

    def close(self, loop):
        """Abandon the calls in flight, reap all their requests (closing the fds
        opened meanwhile), then close the ring. Blocking: the loop is closing."""
        if self.closed:
            return
        _stop_batches(self.batches)
        self._closing = True
        for call in {call for call, _ in self._calls.values()}:
            call.orphan()
        try:
            while self._calls and self.ring.in_flight + self.ring.pending:
                self.ring.submit()
                self._reap(wait=1)
        finally:
            self.closed = True
            loop.remove_reader(self._efd)
            os.close(self._efd)
            self.ring.close()       # anything still in flight: cancelled and drained


class _ThreadEngine:
    """The same requests as plain syscalls on a thread pool, for where io_uring is
    blocked. Cancel withdraws a request not yet started; one running ends first."""
    name = "threads"
    api = None

    def __init__(self, loop):
        self._pool = ThreadPoolExecutor(min(32, 4 * default_workers()),
                                        thread_name_prefix="vyre-aio")
        self._owners = {}                       # concurrent future -> (call, item)
        self.open_fds = 0                       # fds whole-file calls hold (or will)
        self.fd_budget = open_files_budget()
        self.batches = set()                    # read_files calls on the reader
        self._opens = collections.deque()       # tokens of opens waiting for fd budget
        self._budget_waiting = {}               # token -> (call, item, fn)
        self.closed = False
        _close_with_loop(loop, self)

    def read(self, call, item, fd, buf, offset, nbytes, buf_offset):
        def run():
            with memoryview(buf) as view:
                return os.preadv(fd, [view[buf_offset:buf_offset + nbytes]], offset)
        self._start(call, item, run)

    def read_now(self, fd, buf, offset, nbytes, buf_offset):
        """Never at once: a read is a hop to the pool."""
        return _read_op(self, fd, buf, offset, nbytes, buf_offset)

    def write(self, call, item, fd, buf, offset, nbytes, buf_offset):
        def run():
            with memoryview(buf) as view:
                return os.pwrite(fd, view[buf_offset:buf_offset + nbytes], offset)
        self._start(call, item, run)

    def openat(self, call, item, path, flags, mode, budget=False):
        """budget=True: the fd counts against fd_budget until release_fd(); the open
        waits while the budget is spent (opens finish long before the reads behind
        them in the pool: unbounded, they would hold an fd per file)."""
        fn = lambda: os.open(path, flags | os.O_CLOEXEC, mode)    # noqa: E731
        if budget and (self._opens or self.open_fds >= self.fd_budget):
            token = object()                    # the open in call.live until it starts
            self._budget_waiting[token] = (call, item, fn)
            self._opens.append(token)
            call.live.add(token)
            return
        self.open_fds += budget
        self._start(call, item, fn)

    def release_fd(self):
        self.open_fds -= 1
        while self._opens and self.open_fds < self.fd_budget:
            token = self._opens.popleft()
            waiting = self._budget_waiting.pop(token, None)
            if waiting is not None:             # (else withdrawn)
                call, item, fn = waiting
                call.live.discard(token)
                self.open_fds += 1
                self._start(call, item, fn)

    def fsync(self, call, item, fd, datasync):
        self._start(call, item, lambda: (os.fdatasync if datasync else os.fsync)(fd) or 0)

    def nop(self, call, item):
        self._start(call, item, lambda: 0)

    def _start(self, call, item, fn):
        if self.closed:
            raise RingClosedError("the event loop's thread pool is closed")
        loop = asyncio.get_running_loop()
        future = self._pool.submit(_errno_of, fn)
        self._owners[future] = (call, item)
        call.live.add(future)
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(self._finished, f))

    def _finished(self, future):
        owner = self._owners.pop(future, None)
        if owner is not None:
            owner[0].live.discard(future)
            owner[0]._done(owner[1], -errno.ECANCELED if future.cancelled()
                           else future.result())

    def cancel(self, call):
        for token in list(call.live):
            waiting = self._budget_waiting.pop(token, None)
            if waiting is None:
                token.cancel()              # a future: the done callback completes it
                continue
            call.live.discard(token)        # an open not started: withdrawn
            self.open_fds += 1              # as if started: its completion gives it back
            call._done(waiting[1], -errno.ECANCELED)

    def close(self, loop):
        if self.closed:
            return
        _stop_batches(self.batches)
        calls = {call for call, _ in self._owners.values()}
        calls.update(call for call, _, _ in self._budget_waiting.values())
        for call in calls:
            call.orphan()                   # withdraws its opens still waiting for budget
        self.closed = True
        self._pool.shutdown(wait=True)      # running requests end before the loop does
        for future in list(self._owners):
            self._finished(future)          # their callbacks will never run now


def _stop_batches(batches):
    """The loop is closing (or the process exiting): stop these read_files calls on
    the reader and wait for them (blocking: nothing runs on the loop any more), so
    that their fds are closed."""
    batches = list(batches)
    for batch in batches:
        batch.stop.set()
    for batch in batches:
        batch.wait()


def open_files_budget():
    """How many fds one loop's whole-file calls may hold at once: MAX_OPEN_FILES, or a
    quarter of RLIMIT_NOFILE where that is smaller (the rest of the process needs
    fds too), and never fewer than 4."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_OPEN_FILES
    return max(4, min(MAX_OPEN_FILES, soft // 4))


def _read_op(engine, fd, buf, offset, nbytes, buf_offset):
    return _Op(engine, lambda op: engine.read(op, 0, fd, buf, offset, nbytes, buf_offset))


def _errno_of(fn):
    try:
        return fn()
    except OSError as exc:
        return -exc.errno


class _Ignore:
    """The owner of requests whose result nobody needs (the cancels)."""
    live = set()

    def _done(self, item, res):
        pass

    def orphan(self):
        pass


_IGNORE = _Ignore()


# ---- calls: what one await does --------------------------------------------------------

class _Call:
    """The requests of one awaited call. It is finished when nothing of it is
    outstanding; stopped (cancelled, failed, or its loop closing) it issues nothing
    more, cancels what is out, and ends only once every request has completed."""

    def __init__(self, engine):
        self.engine = engine
        self.live = set()               # the engine's tokens of outstanding requests
        self.stopping = False
        self.error = None
        self._draining = self._orphaned = False
        self._future = asyncio.get_running_loop().create_future()

    async def run(self):
        try:
            self.start()
        except BaseException:
            if self.live:
                await self._drain()
            raise
        self._settle_if_idle()
        try:
            return await self._future
        except asyncio.CancelledError:
            if self.live:
                await self._drain()
            raise

    async def _drain(self):
        """Stop, and wait (a second cancel notwithstanding) until nothing is out."""
        self.abandon()
        self._draining = True
        drained = self._future = asyncio.get_running_loop().create_future()
        self._settle_if_idle()
        while not drained.done():
            try:
                await asyncio.shield(drained)
            except asyncio.CancelledError:
                pass                    # the caller is being cancelled already

    def abandon(self, error=None):
        """Stop: issue nothing more and cancel what is outstanding. With `error`,
        the call raises it once nothing is (unless it drains a cancel)."""
        if self.error is None:
            self.error = error
        if not self.stopping:
            self.stopping = True
            self.engine.cancel(self)

    def orphan(self):
        """Stop because the loop is closing: nobody will run to see an outcome, so
        none is set (its task is destroyed pending, as asyncio says)."""
        self._orphaned = True
        self.abandon()

    def _done(self, item, res):
        try:
            if self.stopping:
                self.discard(item, res)
            else:
                self.completed(item, res)
        except Exception as exc:        # an error here must not stop the loop's reap
            self.abandon(exc)
        self._settle_if_idle()

    def _settle_if_idle(self):
        if self.live or self._future.done():
            return
        self.release()
        if self._orphaned:
            return
        if self._draining:
            self._future.set_result(None)
        elif self.error is not None:
            self._future.set_exception(self.error)
        else:
            self._future.set_result(self.result())

    # What a call defines.
    def start(self):
        """Issue the first requests."""

    def completed(self, item, res):
        """A request of `item` completed with `res` (bytes, an fd, or -errno)."""

    def discard(self, item, res):
        """A request completed after the call stopped: free what it gave."""

    def release(self):
        """The call is over (nothing outstanding): close what it still holds."""

    def result(self):
        return None


def _no_nonblock(fd):
    """A file opened O_NONBLOCK whose filesystem will not wait for the page cache
    answers EAGAIN: read it blocking (in the kernel's workers) from then on."""
    import fcntl
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)


class _Reads(_Call):
    """Items read from fd[i] at off[i] into dest[i][base[i]:]: up to want[i] bytes,
    short reads resubmitted, stopping at EOF. An item with grow[i] (a whole file
    that reports size 0, or read() to EOF) doubles its bytearray until EOF."""

    def items(self, n):
        self.fd, self.dest = [-1] * n, [None] * n
        self.base, self.off, self.want, self.got = [0] * n, [0] * n, [0] * n, [0] * n
        self.grow = [False] * n

    def read_next(self, i):
        got = self.got[i]
        self.engine.read(self, i, self.fd[i], self.dest[i], self.off[i] + got,
                         min(self.want[i] - got, MAX_PIECE), self.base[i] + got)

    def completed(self, i, res):
        if res == -errno.EAGAIN:
            _no_nonblock(self.fd[i])
        elif res < 0:
            return self.item_failed(i, res)
        else:
            self.got[i] += res
            if res == 0 or (self.got[i] == self.want[i] and not self.grow[i]):
                return self.item_done(i)
            if self.got[i] == self.want[i]:         # growing: EOF not seen yet
                self.dest[i].extend(bytes(self.want[i]))
                self.want[i] *= 2
        self.read_next(i)

    def item_done(self, i):
        pass

    def item_failed(self, i, res):
        self.abandon(OSError(-res, os.strerror(-res)))


_PREAD_ONLY = object()      # _WholeFiles' result for a file the ring must not read


class _WholeFiles(_Reads):
    """read_file(s): per path, openat (in the ring), fstat, reads until the size is
    read (or EOF), close. Each file fails alone; result() has bytes or OSError."""

    def __init__(self, engine, paths):
        super().__init__(engine)
        self.paths = paths
        self.names = [os.fsencode(p) for p in paths]    # TypeError before any request
        self.out = [None] * len(paths)
        self.items(len(paths))
        self.pread_devs = {}        # st_dev -> pread_only: one statfs per device met

    def start(self):
        for i, name in enumerate(self.names):
            if b"\0" in name:
                self.out[i] = path_error(errno.EINVAL, name, "embedded null byte")
            else:
                self.engine.openat(self, i, name, OPEN_FLAGS, 0, budget=True)

    def completed(self, i, res):
        if self.fd[i] >= 0:
            return super().completed(i, res)
        if res < 0:
            self.engine.release_fd()
            self.out[i] = path_error(-res, self.names[i])
            return
        self.fd[i] = res
        try:
            st = os.fstat(res)
            check_regular(st.st_mode, self.names[i])
        except OSError as exc:
            self.out[i] = _named(exc, self.names[i])
            return self.close(i)
        if self.engine.name != "threads" and self._pread_only(st.st_dev, res):
            self.out[i] = _PREAD_ONLY           # for _whole_files to read on threads
            return self.close(i)
        self.grow[i] = st.st_size == 0
        self.want[i] = st.st_size or UNSIZED_FIRST
        self.dest[i] = bytearray(self.want[i])
        self.read_next(i)

    def _pread_only(self, dev, fd):
        """pread_only(fd), asked once per device this call meets (a statfs on the
        loop's thread; on a network filesystem, a round trip)."""
        answer = self.pread_devs.get(dev)
        if answer is None:
            answer = self.pread_devs[dev] = pread_only(fd)
        return answer

    def item_done(self, i):
        dest = self.dest[i]
        self.out[i] = bytes(dest) if self.got[i] == len(dest) else bytes(dest[:self.got[i]])
        self.dest[i] = None
        self.close(i)

    def item_failed(self, i, res):
        self.out[i] = path_error(-res, self.names[i])
        self.close(i)

    def close(self, i):
        fd, self.fd[i] = self.fd[i], -1
        os.close(fd)
        self.engine.release_fd()

    def discard(self, i, res):
        if self.fd[i] >= 0:
            return                          # a read: release() closes the fd
        if res >= 0:
            self.fd[i] = res                # opened after all: release() closes it
        else:
            self.engine.release_fd()

    def release(self):
        for i, fd in enumerate(self.fd):
            if fd >= 0:
                self.close(i)

    def result(self):
        return self.out


class _Ranges(_Reads):
    """read_ranges(_into): ranges of one open fd, all in flight at once."""

    def __init__(self, engine, fd, dests, bases, offsets, lengths):
        super().__init__(engine)
        self.items(len(offsets))
        self.fd = [fd] * len(offsets)
        self.dest, self.base, self.off, self.want = dests, bases, offsets, lengths

    def start(self):
        for i, want in enumerate(self.want):
            if want:
                self.read_next(i)

    def result(self):
        return self.got


class _Writes(_Call):
    """write_file / AsyncFile.write: all of `data` at `offset`, short writes resubmitted."""

    def __init__(self, engine, fd, data, offset):
        super().__init__(engine)
        self.fd, self.data, self.offset, self.done = fd, data, offset, 0
        self.size = memoryview(data).nbytes

    def start(self):
        if self.size:
            self.write_next()

    def write_next(self):
        self.engine.write(self, 0, self.fd, self.data, self.offset + self.done,
                          min(self.size - self.done, MAX_PIECE), self.done)

    def completed(self, item, res):
        if res < 0 and res != -errno.EAGAIN:
            return self.abandon(OSError(-res, os.strerror(-res)))
        self.done += max(res, 0)
        if self.done < self.size:
            self.write_next()

    def result(self):
        return self.done


class _Op(_Call):
    """One request of the LoopRing API: its res, or OSError."""

    def __init__(self, engine, issue, on_discard=None):
        super().__init__(engine)
        self.issue, self.on_discard, self.res = issue, on_discard, None

    def start(self):
        self.issue(self)

    def completed(self, item, res):
        if res < 0:
            self.abandon(OSError(-res, os.strerror(-res)))
        self.res = res

    def discard(self, item, res):
        if res >= 0 and self.on_discard is not None:
            self.on_discard(res)

    def result(self):
        return self.res


# ---- the API ---------------------------------------------------------------------------------

def _named(exc, path):
    if isinstance(exc, OSError) and exc.filename is None:
        exc.filename = os.fsdecode(path)
    return exc


async def read_files(paths, *, on_error="raise"):
    """Every file's bytes, in input order. Files are opened, read and closed through
    the loop's ring, as many at once as the ring and the fd budget allow; a call of
    READER_BATCH_FILES or more runs on the synchronous reader (every ring, its
    loops in C) from a thread, and the loop awaits its result. With
    on_error="return" a failed path's slot holds its OSError (errno and filename);
    with "raise" the first failure in input order is raised once all are done."""
    if on_error not in ("raise", "return"):
        raise ValueError(f'on_error must be "raise" or "return", not {on_error!r}')
    paths = _path_list(paths)
    if len(paths) >= READER_BATCH_FILES:
        return await _on_reader(_engine(), paths, on_error)
    out = await _whole_files(paths)
    if on_error == "raise":
        for r in out:
            if isinstance(r, BaseException):
                raise r
    return out


async def _whole_files(paths):
    """_WholeFiles on the loop's engine; the files it must not read (pread_only)
    are read again on threads."""
    engine = _engine()
    out = await _WholeFiles(engine, paths).run()
    again = [i for i, r in enumerate(out) if r is _PREAD_ONLY]
    if again:
        redo = await _WholeFiles(_pread_engine(engine), [paths[i] for i in again]).run()
        for i, r in zip(again, redo):
            out[i] = r
    return out


class _BatchStopped(Exception):
    """Ends a read_files call on the reader at its next job (its task was cancelled,
    or its loop is closing)."""


class _Batch:
    """A read_files call on the process's BatchReader, in a thread of its own, in
    slices of BATCH_SLICE paths per ring: a stop takes effect at the reader's next
    job. `live`: every batch of this process still running."""
    live = set()

    def __init__(self, paths):
        self.paths = list(paths)            # ours: the caller's list may change meanwhile
        self.stop = threading.Event()
        self.pid = os.getpid()
        self.done = concurrent.futures.Future()
        self.done.set_running_or_notify_cancel()    # a cancelled await cannot undo it

    def start(self):
        _Batch.live.add(self)
        self.done.add_done_callback(lambda _: _Batch.live.discard(self))
        threading.Thread(target=self._run, name="vyre-aio-batch", daemon=True).start()

    def wait(self):
        """Block until it ended; in a forked child, where its thread does not exist,
        it has failed already (_batches_lost_in_child)."""
        if self.pid == os.getpid():
            concurrent.futures.wait([self.done])

    def _run(self):
        block_async_signals()               # Ctrl-C belongs to the main thread
        try:
            reader, out = _shared_reader(), []
            step = BATCH_SLICE * reader.stats()["workers"]  # its rings, as many as it got
            for s in range(0, len(self.paths), step):
                if self.stop.is_set():
                    raise _BatchStopped()
                out += reader.read_files(self.paths[s:s + step], on_error="return",
                                         progress=self._progress)
            self.done.set_result(out)
        except BaseException as exc:
            self.done.set_exception(exc)

    def _progress(self, files, total, nbytes):
        if self.stop.is_set():
            raise _BatchStopped()


def _batches_lost_in_child():
    for batch in list(_Batch.live):
        if not batch.done.done():
            batch.done.set_exception(RuntimeError(
                "the process forked while this read_files call ran on the reader: its "
                "thread does not exist in the child"))
    _Batch.live.clear()


os.register_at_fork(after_in_child=_batches_lost_in_child)
# After the reader's own exit hook is registered (reader is imported first), so
# that this one runs before it: no batch is still using the reader when it closes.
atexit.register(lambda: _stop_batches(_Batch.live))


async def _on_reader(engine, paths, on_error):
    """read_files through the process's BatchReader (a _Batch): a cancelled call
    stops at the reader's next job and ends, its fds closed, before CancelledError
    reaches the caller (the results are new bytes: no caller memory is involved)."""
    for p in paths:
        os.fsencode(p)                      # a TypeError before anything is read
    batch = _Batch(paths)
    engine.batches.add(batch)
    batch.done.add_done_callback(lambda _: engine.batches.discard(batch))
    batch.start()
    try:
        out = await asyncio.wrap_future(batch.done)
    except asyncio.CancelledError:
        batch.stop.set()
        waiting = asyncio.wrap_future(batch.done)   # (the first went with the cancel)
        while not waiting.done():
            try:
                await asyncio.wait([waiting])
            except asyncio.CancelledError:
                pass                        # cancelled again: the first is being honoured
        if not waiting.cancelled():
            waiting.exception()             # _BatchStopped, expected: retrieved
        raise
    except _BatchStopped:
        raise RingClosedError("the event loop closed while this read_files call "
                              "ran") from None
    except BaseException:
        batch.stop.set()                    # (KeyboardInterrupt, GeneratorExit)
        raise
    if on_error == "raise":
        for r in out:
            if isinstance(r, BaseException):
                raise r
    return out


async def read_file(path):
    """The file's bytes (FileNotFoundError and friends carry errno and filename)."""
    out = await _whole_files([path])
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


async def read_ranges_into(path, buffer, offsets, lengths, buffer_offsets=None):
    """pread each range of `path` into the writable `buffer`; returns the bytes read
    per range (fewer past EOF). buffer_offsets=None packs the ranges."""
    offsets, lengths, buffer_offsets = ranges_into_args(buffer, offsets, lengths,
                                                        buffer_offsets)
    async with open(path, "rb") as f:
        return await _Ranges(f.engine, f.fileno(), [buffer] * len(offsets),
                             list(buffer_offsets), list(offsets), list(lengths)).run()


async def read_ranges(path, offsets, lengths):
    """Each range's bytes (pread semantics: a range past EOF returns what exists)."""
    offsets, lengths = _int_list(offsets, "offsets"), _int_list(lengths, "lengths")
    check_ranges(offsets, lengths)
    async with open(path, "rb") as f:
        # Buffers only as large as the file lets them be, as the sync reader's.
        lengths = lengths_within_eof(f.fileno(), offsets, lengths)
        dests = [bytearray(n) for n in lengths]
        got = await _Ranges(f.engine, f.fileno(), dests, [0] * len(dests), list(offsets),
                            list(lengths)).run()
    return [bytes(d) if g == len(d) else bytes(d[:g]) for d, g in zip(dests, got)]


async def write_file(path, data, *, perms=0o666):
    """Create or truncate `path` (new files get `perms`, less the umask) and write
    all of `data` (a bytes-like object); returns the bytes written."""
    with memoryview(data):
        pass                            # TypeError before anything is opened
    async with open(path, "wb", perms=perms) as f:
        return await f.write(data)


_MODES = {"rb": os.O_RDONLY, "r+b": os.O_RDWR, "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
          "w+b": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
          "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
          "a+b": os.O_RDWR | os.O_CREAT | os.O_APPEND, "xb": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
          "x+b": os.O_RDWR | os.O_CREAT | os.O_EXCL}
_MODE_SETS = {frozenset(m): m for m in _MODES}


def open(path, mode="rb", *, perms=0o666):  # noqa: A001 (the idiom of aiofiles.open)
    """An AsyncFile opened through the ring: `async with open(p) as f` or
    `f = await open(p)`. Binary modes only ("rb", "wb", "ab", "xb", with "+");
    a file it creates gets `perms`, less the umask."""
    canonical = _MODE_SETS.get(frozenset(mode)) if len(set(mode)) == len(mode) else None
    if canonical is None:
        raise ValueError(f"mode must be a binary mode ({', '.join(_MODES)}), not {mode!r}")
    name = os.fsencode(path)
    if b"\0" in name:
        raise ValueError("embedded null byte in path")
    return _Opening(name, _MODES[canonical] | os.O_CLOEXEC, canonical, perms)


class _Opening:
    """What open() returns: awaitable, and an async context manager."""

    def __init__(self, name, flags, mode, bits):
        self._args = (name, flags, mode, bits)
        self._file = None

    def __await__(self):
        return self._open().__await__()

    async def _open(self):
        name, flags, mode, bits = self._args
        engine = _engine()
        try:
            fd = await _Op(engine, lambda op: engine.openat(op, 0, name, flags, bits),
                           os.close).run()
        except OSError as exc:
            raise _named(exc, name) from None
        if engine.name != "threads" and pread_only(fd):
            engine = _pread_engine(engine)  # its reads and writes on threads
        return AsyncFile(engine, fd, name, mode)

    async def __aenter__(self):
        self._file = await self._open()
        return self._file

    async def __aexit__(self, *exc):
        await self._file.close()


class AsyncFile:
    """A file whose reads and writes are requests in the loop's ring. It keeps its
    own position (reads and writes at an offset, never the fd's); one operation at
    a time, as with a file. Closing is synchronous underneath (close(2) of a local
    file does not wait for I/O)."""

    def __init__(self, engine, fd, name, mode):
        self.engine, self._fd, self.name, self.mode = engine, fd, os.fsdecode(name), mode
        self._pos = os.lseek(fd, 0, os.SEEK_END) if mode.startswith("a") else 0

    def fileno(self):
        if self._fd < 0:
            raise ValueError("I/O operation on closed file")
        return self._fd

    @property
    def closed(self):
        return self._fd < 0

    async def read(self, size=-1):
        """Up to `size` bytes from the position (all to EOF when size < 0)."""
        fd = self.fileno()
        if size is None or size < 0:
            want = max(os.fstat(fd).st_size - self._pos, 0)
            buf, grow = bytearray(want or UNSIZED_FIRST), True
        else:
            buf, grow = bytearray(size), False
        if not buf:
            return b""
        got = self._read_into(buf, len(buf), grow)
        if got.__class__ is not int:
            got = await got
        return bytes(buf) if got == len(buf) else bytes(buf[:got])

    async def readinto(self, buffer):
        """Read into the writable `buffer` from the position; returns the count."""
        self.fileno()                   # a closed file raises first
        with memoryview(buffer) as view:
            if view.readonly:
                raise TypeError(f"buffer must be writable, not a read-only "
                                f"{type(buffer).__name__}")
            n = view.nbytes
        if not n:
            return 0
        got = self._read_into(buffer, n, False)
        return got if got.__class__ is int else await got

    def _read_into(self, buf, n, grow):
        """Read up to n bytes at the position into buf: the count when one read done
        at once finished it (the ring idle, the page cache hit, or EOF), else a
        coroutine that finishes it. Not a coroutine itself, so that the common case
        costs no second coroutine."""
        first = None
        if not grow:
            # self._fd, checked by the caller; MAX_PIECE bounds one request.
            first = self.engine.read_now(self._fd, buf, self._pos,
                                         n if n <= MAX_PIECE else MAX_PIECE, 0)
            if first.__class__ is int and (first == n or first == 0):
                self._pos += first
                return first
        return self._read_rest(buf, n, grow, first)

    async def _read_rest(self, buf, n, grow, first):
        """_read_into's slow part. `first`: the outcome of the read done at once (an
        _Op still to run, or its count or -errno), or None when there was none. A
        failure seen at once is retried by the full path, which reports it (or
        recovers from it) as it would."""
        got = first
        if got.__class__ is _Op:
            got = await got.run()
        elif got is not None and got < 0:
            got = None
        if got is None or 0 < got < n:      # short of n, yet not at EOF: read the rest
            done = got or 0
            call = _Ranges(self.engine, self.fileno(), [buf], [done], [self._pos + done],
                           [n - done])
            call.grow[0] = grow
            got = done + (await call.run())[0]
        self._pos += got
        return got

    async def write(self, data):
        """Write all of `data` at the position; returns the bytes written."""
        with memoryview(data):
            pass
        done = await _Writes(self.engine, self.fileno(), data, self._pos).run()
        self._pos += done
        return done

    def seek(self, offset, whence=os.SEEK_SET):
        """Move the position (no I/O, so not a coroutine); returns it."""
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = os.fstat(self.fileno()).st_size + offset
        else:
            raise ValueError(f"whence must be os.SEEK_SET, SEEK_CUR or SEEK_END, not {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def tell(self):
        return self._pos

    async def fsync(self, datasync=False):
        fd = self.fileno()
        await _Op(self.engine, lambda op: self.engine.fsync(op, 0, fd, datasync)).run()

    async def close(self):
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def __repr__(self):
        return f"<AsyncFile {self.name!r} mode={self.mode!r}{' closed' if self.closed else ''}>"


class LoopRing:
    """The running loop's ring as awaitable operations, for building your own calls.
    Each returns the request's result (bytes, an fd, 0) or raises OSError; each is
    cancellation-safe as the module says. Buffers are any writable (reads) or
    readable (writes) bytes-like object; the ring holds them until the completion."""

    def __init__(self, engine):
        self._engine = engine

    @property
    def backend(self):
        """"io_uring", or "threads" where io_uring is unavailable."""
        return self._engine.name

    async def read(self, fd, buf, offset=0, *, nbytes=None, buf_offset=0):
        """Read up to `nbytes` (default: the rest of `buf`) at file `offset` into
        `buf[buf_offset:]`; returns the count (0 at EOF)."""
        fd, offset = _fd(fd), _offset(offset)
        n, buf_offset = _span(buf, nbytes, buf_offset, writable=True)
        res = self._engine.read_now(fd, buf, offset, n, buf_offset)
        if res.__class__ is not int:
            return await res.run()
        if res < 0:
            raise OSError(-res, os.strerror(-res))
        return res

    async def write(self, fd, buf, offset=0, *, nbytes=None, buf_offset=0):
        """Write `nbytes` (default: the rest) of `buf[buf_offset:]` at `offset`;
        returns the count written."""
        fd, offset = _fd(fd), _offset(offset)
        n, boff = _span(buf, nbytes, buf_offset, writable=False)
        e = self._engine
        return await _Op(e, lambda op: e.write(op, 0, fd, buf, offset, n, boff)).run()

    async def openat(self, path, flags=os.O_RDONLY, mode=0o644):
        """The new fd (O_CLOEXEC); a cancelled open that succeeded anyway is closed."""
        name = os.fsencode(path)
        e = self._engine
        try:
            return await _Op(e, lambda op: e.openat(op, 0, name, flags | os.O_CLOEXEC, mode),
                             os.close).run()
        except OSError as exc:
            raise _named(exc, name) from None

    async def fsync(self, fd, datasync=False):
        fd = _fd(fd)
        e = self._engine
        return await _Op(e, lambda op: e.fsync(op, 0, fd, bool(datasync))).run()

    async def nop(self):
        e = self._engine
        return await _Op(e, lambda op: e.nop(op, 0)).run()


class _RingLoopRing(LoopRing):
    """LoopRing over io_uring. One read at a time is its latency path: on an idle
    ring the common call (an fd and offset in range, a whole bytearray) goes
    straight to Ring.submit_read, with no Python frame between (each costs about a
    tenth of a cached read). Every other call, a bad argument included, takes
    LoopRing's path and its checks."""

    async def read(self, fd, buf, offset=0, *, nbytes=None, buf_offset=0):
        e = self._engine
        if (e._calls or e._closing or fd.__class__ is not int or not 0 <= fd <= 0x7FFFFFFF
                or offset.__class__ is not int or not 0 <= offset < 1 << 63
                or nbytes is not None or buf_offset.__class__ is not int or buf_offset
                or buf.__class__ is not bytearray or len(buf) > MAX_PIECE):
            return await super().read(fd, buf, offset, nbytes=nbytes, buf_offset=buf_offset)
        ud = e._next                    # as e.read_now does, inlined
        e._next = ud + 1
        try:
            res = e.ring.submit_read(fd, buf, offset, user_data=ud)
        except BaseException:
            e._drain_alone(ud)
            raise
        if res is None:
            return await e.owner_of(ud).run()
        if res < 0:
            raise OSError(-res, os.strerror(-res))
        return res


def loop_ring():
    """The running loop's LoopRing (made on first use; one per loop)."""
    engine = _engine()
    if engine.api is None:
        engine.api = (_RingLoopRing if isinstance(engine, _RingEngine) else LoopRing)(engine)
    return engine.api


def _fd(fd):
    if not isinstance(fd, int) or isinstance(fd, bool) or not 0 <= fd <= 0x7FFFFFFF:
        raise ValueError(f"fd must be an open file descriptor (an int >= 0), not {fd!r}")
    return fd


def _offset(offset):
    if not isinstance(offset, int) or not 0 <= offset < 1 << 63:
        raise ValueError(f"offset must be an int >= 0, not {offset!r}")
    return offset


def _span(buf, nbytes, buf_offset, writable):
    """(nbytes, buf_offset) checked against `buf`, before any request."""
    # A bytearray is writable bytes: its len() is its size, without the memoryview
    # that costs a small read about a seventh of its time.
    size = len(buf) if buf.__class__ is bytearray else _buffer_size(buf, writable)
    if not 0 <= buf_offset <= size:
        raise ValueError(f"buf_offset {buf_offset} is outside the buffer ({size} bytes)")
    n = size - buf_offset if nbytes is None else nbytes
    if not 0 <= n <= size - buf_offset:
        raise ValueError(f"nbytes {n} does not fit the buffer ({size} bytes) at "
                         f"buf_offset {buf_offset}")
    return min(n, MAX_PIECE), buf_offset


def _buffer_size(buf, writable):
    with memoryview(buf) as view:
        if writable and view.readonly:
            raise TypeError(f"buf must be writable, not a read-only {type(buf).__name__}")
        return view.nbytes
