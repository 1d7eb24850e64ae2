# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: embedsignature=True
"""The io_uring engine: a Ring over raw syscalls and mmap'd queues.

Kernel `user_data` names our slot, never the caller's value: each request owns a
slot that records the caller's user_data and what keeps its memory alive, so
completions map back exactly once whatever order they arrive in. The low 32 bits
are the slot index, the high 32 bits the request's generation (the low 32 bits of
its sequence number): a kernel user_data read back from the shared ring is masked,
bounds-checked and matched against the slot's generation before it is used, and a
cancel aimed at a request that has completed since finds nothing (-ENOENT), never
the request that reused its slot. There are as many
slots as CQ entries, which bounds the outstanding requests by the CQ's capacity.
"""
import array
import os
import warnings
from enum import IntEnum

from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_SIMPLE,
                             PyBUF_WRITABLE, PyBuffer_Release, PyObject_CheckBuffer,
                             PyObject_GetBuffer)
cimport cython
from cpython cimport array as carray
from cpython.bytes cimport PyBytes_AS_STRING
from cpython.exc cimport PyErr_CheckSignals, PyErr_Clear, PyErr_Occurred
from cpython.long cimport PyLong_Check
from cpython.number cimport PyIndex_Check, PyNumber_Index
from cpython.object cimport PyObject, Py_SIZE
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.limits cimport LLONG_MAX
from libc.math cimport INFINITY
from libc.stdint cimport (int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t,
                          uint64_t, INT64_MAX, INT64_MIN, UINT32_MAX)
from libc.errno cimport EAGAIN, EBUSY, EINTR, EINVAL, ENOMEM, ETIME, errno
from posix.stat cimport fstat, struct_stat as stat_t
from libc.stdio cimport fprintf, stderr
from libc.stdlib cimport abort, calloc, free, malloc
from libc.string cimport memcpy, memset, strlen

from vyre_uring.includes.kernel cimport *
from vyre_uring._queues cimport *
from vyre_uring.includes.process cimport *

from vyre_uring.availability import is_unavailable_errno, unavailable_error
from vyre_uring.constants import FILE_INDEX_ALLOC as _FILE_INDEX_ALLOC
from vyre_uring._files import path_error, pread_to_eof
from vyre_uring.errors import (ArgumentRangeError, RingBusyError, RingClosedError,
                               RingForkedError, RingFullError, UringError, syscall_error)

include "_args.pxi"
include "_holds.pxi"
include "_intarrays.pxi"
include "_batch.pxi"
include "_path_batch.pxi"

__all__ = ["Ring", "Completion", "Statx", "StatxArray", "Op", "try_setup"]

Op = IntEnum("Op", [
    ("NOP", IORING_OP_NOP), ("READV", IORING_OP_READV), ("WRITEV", IORING_OP_WRITEV),
    ("FSYNC", IORING_OP_FSYNC), ("READ_FIXED", IORING_OP_READ_FIXED),
    ("WRITE_FIXED", IORING_OP_WRITE_FIXED), ("POLL_ADD", IORING_OP_POLL_ADD),
    ("POLL_REMOVE", IORING_OP_POLL_REMOVE), ("SYNC_FILE_RANGE", IORING_OP_SYNC_FILE_RANGE),
    ("SENDMSG", IORING_OP_SENDMSG), ("RECVMSG", IORING_OP_RECVMSG),
    ("TIMEOUT", IORING_OP_TIMEOUT), ("TIMEOUT_REMOVE", IORING_OP_TIMEOUT_REMOVE),
    ("ACCEPT", IORING_OP_ACCEPT), ("ASYNC_CANCEL", IORING_OP_ASYNC_CANCEL),
    ("LINK_TIMEOUT", IORING_OP_LINK_TIMEOUT), ("CONNECT", IORING_OP_CONNECT),
    ("FALLOCATE", IORING_OP_FALLOCATE), ("OPENAT", IORING_OP_OPENAT),
    ("CLOSE", IORING_OP_CLOSE), ("FILES_UPDATE", IORING_OP_FILES_UPDATE),
    ("STATX", IORING_OP_STATX), ("READ", IORING_OP_READ), ("WRITE", IORING_OP_WRITE),
    ("FADVISE", IORING_OP_FADVISE), ("MADVISE", IORING_OP_MADVISE),
    ("SEND", IORING_OP_SEND), ("RECV", IORING_OP_RECV), ("OPENAT2", IORING_OP_OPENAT2),
    ("EPOLL_CTL", IORING_OP_EPOLL_CTL), ("SPLICE", IORING_OP_SPLICE),
    ("PROVIDE_BUFFERS", IORING_OP_PROVIDE_BUFFERS),
    ("REMOVE_BUFFERS", IORING_OP_REMOVE_BUFFERS), ("TEE", IORING_OP_TEE),
    ("SHUTDOWN", IORING_OP_SHUTDOWN), ("RENAMEAT", IORING_OP_RENAMEAT),
    ("UNLINKAT", IORING_OP_UNLINKAT), ("MKDIRAT", IORING_OP_MKDIRAT),
    ("SYMLINKAT", IORING_OP_SYMLINKAT), ("LINKAT", IORING_OP_LINKAT),
    ("MSG_RING", IORING_OP_MSG_RING),
])
Op.__doc__ = "io_uring opcodes, numbered as in the kernel's <linux/io_uring.h>."

CYTHON_VERSION = (<bytes>VYRE_CYTHON_VERSION).decode()   # the Cython that built this module


def _check_constants():
    """vyre_uring.constants holds the kernel's values as plain ints: each must be the
    one this module was compiled against."""
    from vyre_uring import constants
    compiled = {"SQE_FIXED_FILE": IOSQE_FIXED_FILE, "SQE_IO_DRAIN": IOSQE_IO_DRAIN,
                "SQE_IO_LINK": IOSQE_IO_LINK, "SQE_IO_HARDLINK": IOSQE_IO_HARDLINK,
                "SQE_ASYNC": IOSQE_ASYNC, "SETUP_SQPOLL": IORING_SETUP_SQPOLL,
                "SETUP_SINGLE_ISSUER": IORING_SETUP_SINGLE_ISSUER,
                "SETUP_DEFER_TASKRUN": IORING_SETUP_DEFER_TASKRUN,
                "SETUP_COOP_TASKRUN": IORING_SETUP_COOP_TASKRUN,
                "FEAT_SINGLE_MMAP": IORING_FEAT_SINGLE_MMAP, "FEAT_NODROP": IORING_FEAT_NODROP,
                "FEAT_EXT_ARG": IORING_FEAT_EXT_ARG}
    for name, value in compiled.items():
        if getattr(constants, name) != value:
            raise ImportError(f"vyre_uring.constants.{name} is {getattr(constants, name)}, "
                              f"but the kernel header says {value}")


_check_constants()

# CQE_SKIP_SUCCESS would leave a slot without its completion; BUFFER_SELECT needs
# provided buffers, which this engine does not manage.
cdef uint8_t _ALLOWED_SQE_FLAGS = (IOSQE_FIXED_FILE | IOSQE_IO_DRAIN | IOSQE_IO_LINK |
                                   IOSQE_IO_HARDLINK | IOSQE_ASYNC)
cdef uint8_t _LINK_FLAGS = IOSQE_IO_LINK | IOSQE_IO_HARDLINK
cdef int _MAX_ENTRIES = 32768
cdef double _DRAIN_PATIENCE_S = 10.0

if vy_install_atfork() != 0:
    raise ImportError("pthread_atfork failed: cannot guard rings across fork()")


cdef class Completion:
    """One completed request, as wait() and completions() return it: `user_data` as
    given to the prep call, `res` (the request's result: a byte count, an fd, 0, or
    -errno) and `flags` (IORING_CQE_F_* bits). Immutable, hashable, compares by value."""
    cdef readonly uint64_t user_data
    cdef readonly int32_t res
    cdef readonly uint32_t flags

    def __repr__(self):
        return f"Completion(user_data={self.user_data}, res={self.res}, flags={self.flags})"

    def __eq__(self, other):
        if not isinstance(other, Completion):
            return NotImplemented
        return (self.user_data, self.res, self.flags) == \
            ((<Completion>other).user_data, (<Completion>other).res, (<Completion>other).flags)

    def __hash__(self):
        return hash((self.user_data, self.res, self.flags))


cdef Completion _completion(uint64_t user_data, int32_t res, uint32_t flags):
    cdef Completion c = Completion.__new__(Completion)
    c.user_data = user_data
    c.res = res
    c.flags = flags
    return c


cdef class Statx:
    """The destination of prep_statx: the kernel fills it when the request completes.

    Read its fields (size, mode, ino, nlink, uid, gid, blksize, blocks, mtime_ns, and
    `mask`, the STATX_* bits the kernel filled) after the completion is reaped; until
    then the ring holds it and the kernel may be writing it. All zero before."""
    cdef statx buf

    @property
    def mask(self): return self.buf.stx_mask
    @property
    def size(self): return self.buf.stx_size
    @property
    def mode(self): return self.buf.stx_mode
    @property
    def ino(self): return self.buf.stx_ino
    @property
    def nlink(self): return self.buf.stx_nlink
    @property
    def uid(self): return self.buf.stx_uid
    @property
    def gid(self): return self.buf.stx_gid
    @property
    def blksize(self): return self.buf.stx_blksize
    @property
    def blocks(self): return self.buf.stx_blocks
    @property
    def mtime_ns(self):
        return self.buf.stx_mtime.tv_sec * 1000000000 + self.buf.stx_mtime.tv_nsec

    def __repr__(self):
        return f"Statx(size={self.size}, mode=0o{self.mode:o}, ino={self.ino})"


def try_setup():
    """Create and destroy a one-entry ring; return 0, or the (positive) errno
    io_uring_setup gave. Never raises; vyre_uring.check() explains a failure."""
    cdef io_uring_params p
    memset(&p, 0, sizeof(p))
    cdef int fd = vy_io_uring_setup(1, &p)
    if fd < 0:
        return -fd
    close(fd)
    return 0


cdef inline int enter(RingCore *r, uint32_t to_submit, uint32_t min_complete,
                      uint32_t flags, void *argp, size_t argsz) noexcept nogil:
    """The one io_uring_enter call: through the registered ring fd in the thread that
    registered it (the kernel skips the fd lookup), else through the fd. Returns the
    kernel's result or -errno; the caller decides about the GIL and retries."""
    cdef int fd = r.fd
    if r.ring_index >= 0 and vy_thread_token() == r.ring_thread:
        fd = r.ring_index
        flags |= IORING_ENTER_REGISTERED_RING
    return vy_io_uring_enter(fd, to_submit, min_complete, flags, argp, argsz)


cdef int ring_enter(RingCore *r, uint32_t to_submit, uint32_t min_complete,
                    uint32_t flags, void *argp, size_t argsz) noexcept nogil:
    """enter, for the engine (exported through _ring.pxd); the Ring's own calls
    inline it."""
    return enter(r, to_submit, min_complete, flags, argp, argsz)


cdef int register_checked(int fd, uint32_t opcode, const void *arg, uint32_t nr_args,
                          str what, str detail=None) except -1:
    """The one io_uring_register call whose failure is an error: the GIL is released
    (registering buffers pins their pages, and files registration may wait for the
    ring to quiesce), and -errno becomes UringSyscallError naming `what`. `detail`
    says what the caller's argument must be; EBUSY is never about the argument (the
    resource is registered already) and goes without it."""
    cdef int ret
    with nogil:
        ret = vy_io_uring_register(fd, opcode, arg, nr_args)
    if ret < 0:
        raise syscall_error(f"io_uring_register({what})", -ret,
                            None if ret == -EBUSY else detail)
    return ret


# Register operations a restricted ring keeps: what its methods use after creation.
cdef tuple _RESTRICTED_REGISTER_OPS = (
    IORING_REGISTER_BUFFERS, IORING_UNREGISTER_BUFFERS, IORING_REGISTER_FILES,
    IORING_UNREGISTER_FILES, IORING_REGISTER_FILES_UPDATE, IORING_REGISTER_PROBE,
    IORING_REGISTER_RING_FDS, IORING_UNREGISTER_RING_FDS, IORING_REGISTER_EVENTFD,
    IORING_UNREGISTER_EVENTFD)


cdef bytes _allowed_ops(object ops):
    """allowed_ops as bytes of opcodes (ASYNC_CANCEL added), or None."""
    if ops is None:
        return None
    cdef set codes = {IORING_OP_ASYNC_CANCEL}
    for op in ops:
        if not isinstance(op, int) or not 0 <= op < IORING_OP_LAST:
            raise ValueError(f"allowed_ops: {op!r} is not an io_uring opcode (an Op)")
        codes.add(int(op))
    return bytes(sorted(codes))


cdef int _restrict(int fd, bytes ops) except -1:
    """Register the restrictions on a ring created disabled, then enable it."""
    cdef Py_ssize_t i, n = len(ops) + 1 + len(_RESTRICTED_REGISTER_OPS)
    cdef io_uring_restriction *r = <io_uring_restriction *>calloc(n, sizeof(io_uring_restriction))
    if r == NULL:
        raise MemoryError()
    try:
        for i in range(len(ops)):
            r[i].opcode = IORING_RESTRICTION_SQE_OP
            r[i].sqe_op = ops[i]
        i = len(ops)
        r[i].opcode = IORING_RESTRICTION_SQE_FLAGS_ALLOWED
        r[i].sqe_flags = _ALLOWED_SQE_FLAGS
        for i in range(len(_RESTRICTED_REGISTER_OPS)):
            r[len(ops) + 1 + i].opcode = IORING_RESTRICTION_REGISTER_OP
            r[len(ops) + 1 + i].register_op = <uint8_t>_RESTRICTED_REGISTER_OPS[i]
        register_checked(fd, IORING_REGISTER_RESTRICTIONS, r, <uint32_t>n,
                         "REGISTER_RESTRICTIONS")
        register_checked(fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0, "ENABLE_RINGS")
    finally:
        free(r)
    return 0


# Tests only (_test_set_overcommit): extra request slots beyond the CQ's size.
cdef uint32_t _overcommit = 0


def _test_set_overcommit(n):
    """Tests only: rings made from now on accept `n` more requests than their CQ
    holds, so that completions overflow to the kernel's list (the CQ-overflow tests).
    Returns the previous value."""
    global _overcommit
    old = _overcommit
    _overcommit = <uint32_t>_int_arg(n, "n", 0, _MAX_ENTRIES)
    return old


@cython.final        # cdef methods become direct calls the compiler can inline
cdef class Ring:
    """An io_uring instance: submission and completion queues shared with the kernel.

    Prepare requests with the prep_* methods (or the batch methods for many at
    once), submit them, and reap their completions. A Ring belongs to one thread at
    a time: a second thread calling in while the first is inside gets RingBusyError.
    Use it as a context manager, or call close(): closing cancels and drains every
    request still in flight before the memory they use is released.

    Linked requests (SQE_IO_LINK, SQE_IO_HARDLINK) stay one chain: when a prep call
    finds the SQ full, it submits only what precedes the open chain (the requests
    since the last one prepared without a link flag), never part of the chain. A
    chain that fills the whole SQ cannot grow: the prep that would extend it raises
    RingFullError, and a batch method whose linked batch could not fit the SQ with
    the chain it joins refuses it before preparing any of it. submit(),
    submit_and_wait(), wait() and reap(min_complete > 0) submit everything, an open
    chain included: the kernel ends a chain at the end of a submission.

    Memory: a buffer given to a request stays exported (a bytearray cannot be
    resized, no object is freed) from the prep call until that request's completion
    is reaped, or the ring is closed; each method says what it holds.

    Errors common to every method: RingClosedError (a ValueError) after close();
    RingBusyError (a RuntimeError) while another thread is inside a method of this
    ring; RingForkedError in a forked child (a child must create its own Ring);
    UringSyscallError (an OSError naming the syscall, the errno and a fix) when a
    prep call that finds the SQ full submits and io_uring_enter fails. Integer
    arguments are never truncated: a non-integer is a TypeError, and a value
    outside the argument's range an ArgumentRangeError (an OverflowError and a
    ValueError) naming it. A request the kernel fails completes with res = -errno.

    Prep methods (one request each) return None. They raise TypeError or
    ArgumentRangeError for an argument of the wrong type or range, ValueError for
    one the ring cannot use (a fixed-file slot or buf_index outside what is
    registered, a range outside the buffer), RingFullError when as many requests
    are outstanding as the CQ holds (reap first), and the errors above; nothing is
    prepared when they raise.

    Batch methods (prep_nops, prep_reads, prep_read_fixed_batch,
    prep_openat_batch, prep_statx_batch, prep_close_batch) return how many requests
    they prepared, in order from the first: fewer than asked (possibly 0) when the
    CQ's capacity is reached; reap, then prepare the rest. They raise TypeError for
    an argument that is not an integer array (bytes, bytearray and str are
    refused), ValueError when the arrays' lengths differ, ArgumentRangeError or
    ValueError naming the first bad element, RingFullError for a linked batch that
    could not fit the SQ, and the errors above. A batch is checked whole before any
    of it is prepared: when it raises, nothing is.
    """
    cdef int _busy                  # first: _enter_api reads these three every call
    cdef bint _closed
    cdef unsigned long _fork_gen
    cdef RingCore core              # the queues and slots (_queues.pxd)
    cdef Hold *_reg_buffers
    cdef uint32_t _reg_buffer_count
    cdef int64_t _reg_file_count
    cdef object _allowed            # frozenset of the Ops allowed_ops restricted it to

    def __cinit__(self, *args, **kwargs):
        self.core.fd = -1
        self.core.ring_index = -1
        self._closed = True

    def __init__(self, entries=256, *, cq_entries=None, bint sqpoll=False,
                 sq_thread_idle_ms=1000, sq_thread_cpu=None,
                 bint single_issuer=False, bint defer_taskrun=False,
                 bint coop_taskrun=False, allowed_ops=None):
        """Create a ring of `entries` submission slots (the kernel rounds up to a power of
        two).

        cq_entries: completion-queue size (default: twice `entries`); it bounds how many
        requests can be outstanding at once. sqpoll: a kernel thread polls the SQ (opt-
        in; it costs a core). sq_thread_idle_ms, sq_thread_cpu: that thread's idle time
        before it sleeps, and the CPU it is pinned to. single_issuer, defer_taskrun,
        coop_taskrun: the kernel's IORING_SETUP_* hints for rings used by one thread
        (Linux 6.0, 6.1, 5.19). allowed_ops: the only opcodes (Op values) the kernel
        will run on this ring (IORING_REGISTER_RESTRICTIONS, Linux 5.10): any other
        request completes with -EACCES, and the register operations are limited to
        buffers, files and probing. ASYNC_CANCEL is always allowed: close() needs it.

        Raises UringUnavailableError (an OSError) where io_uring is blocked (sysctl,
        seccomp, no kernel support), saying which and how to fix it; UringSyscallError
        when io_uring_setup or mmap fails otherwise (ENOMEM: RLIMIT_MEMLOCK); TypeError
        or ArgumentRangeError for an argument of the wrong type or range.
        """
        cdef io_uring_params p
        cdef int fd
        cdef uint32_t n, idle_ms
        if self.core.fd >= 0 or not self._closed and self.core.st.slots != NULL:
            raise RuntimeError("Ring.__init__ was already called")
        # A closed Ring may be initialised again: nothing of its last life (an
        # inherited copy's flag, an open chain) carries over.
        memset(&self.core, 0, sizeof(RingCore))
        self.core.fd = -1
        self.core.ring_index = -1
        n = <uint32_t>_int_arg(entries, "entries", 1, _MAX_ENTRIES)
        idle_ms = _u32_arg(sq_thread_idle_ms, "sq_thread_idle_ms")
        memset(&p, 0, sizeof(p))
        self._setup_params(&p, n, cq_entries, sqpoll, idle_ms, sq_thread_cpu, single_issuer,
                           defer_taskrun, coop_taskrun)
        cdef bytes allowed = _allowed_ops(allowed_ops)
        if allowed is not None:
            p.flags |= IORING_SETUP_R_DISABLED      # enabled once restricted
        with nogil:
            fd = vy_io_uring_setup(n, &p)
        if fd < 0:
            if is_unavailable_errno(-fd):
                raise unavailable_error(-fd, sqpoll)
            raise syscall_error("io_uring_setup", -fd)
        try:
            self._map_rings(fd, &p)
            self._alloc_slots(p.cq_entries + _overcommit)
            if allowed is not None:
                _restrict(fd, allowed)
        except BaseException:
            self._free_tables()
            self._unmap()
            close(fd)
            raise
        self.core.fd = fd
        self.core.setup_flags = p.flags
        self.core.features = p.features
        self._reg_file_count = 0
        self._fork_gen = vy_fork_gen()
        self._closed = False
        self._allowed = None if allowed is None else frozenset(Op(o) for o in allowed)
        self._register_ring_fd()

    cdef void _register_ring_fd(self) noexcept:
        """Register the ring fd with the kernel (5.18) so io_uring_enter skips the fd
        lookup (fget/fput) on every call. Optional: older kernels, or a thread that
        already registered 16 rings, simply use the plain fd."""
        cdef vy_rsrc_update up
        memset(&up, 0, sizeof(up))
        up.offset = UINT32_MAX             # let the kernel pick the slot
        up.data = <uint64_t>self.core.fd
        if vy_io_uring_register(self.core.fd, IORING_REGISTER_RING_FDS, &up, 1) == 1:
            self.core.ring_index = <int>up.offset
            self.core.ring_thread = vy_thread_token()

    cdef void _unregister_ring_fd(self) noexcept:
        """Only the registering thread can unregister. Closed from another thread,
        the registration keeps the kernel's ring object until the registering thread
        exits, so what is heavy goes first: the registered files and buffers (not in
        a forked child, whose ring object is the parent's). The rest is a few pages,
        and at most 16 rings per thread (the kernel's limit of registrations)."""
        cdef vy_rsrc_update up
        if self.core.ring_index < 0:
            return
        if vy_thread_token() == self.core.ring_thread:
            memset(&up, 0, sizeof(up))
            up.offset = <uint32_t>self.core.ring_index
            vy_io_uring_register(self.core.fd, IORING_UNREGISTER_RING_FDS, &up, 1)
        elif self._fork_gen == vy_fork_gen():
            vy_io_uring_register(self.core.fd, IORING_UNREGISTER_FILES, NULL, 0)
            vy_io_uring_register(self.core.fd, IORING_UNREGISTER_BUFFERS, NULL, 0)
        self.core.ring_index = -1

    cdef int _setup_params(self, io_uring_params *p, uint32_t entries, object cq_entries,
                           bint sqpoll, uint32_t idle_ms, object cpu, bint single_issuer,
                           bint defer_taskrun, bint coop_taskrun) except -1:
        if cq_entries is not None:
            p.cq_entries = <uint32_t>_int_arg(cq_entries, "cq_entries", entries,
                                              2 * _MAX_ENTRIES)
            p.flags |= IORING_SETUP_CQSIZE
        if sqpoll:
            p.flags |= IORING_SETUP_SQPOLL
            p.sq_thread_idle = idle_ms
            if cpu is not None:
                p.flags |= IORING_SETUP_SQ_AFF
                p.sq_thread_cpu = _u32_arg(cpu, "sq_thread_cpu")
        elif cpu is not None:
            raise ValueError("sq_thread_cpu needs sqpoll=True")
        if defer_taskrun and not single_issuer:
            raise ValueError("defer_taskrun=True needs single_issuer=True (a kernel rule)")
        if defer_taskrun and sqpoll:
            raise ValueError("defer_taskrun cannot be combined with sqpoll (a kernel rule)")
        if single_issuer:
            p.flags |= IORING_SETUP_SINGLE_ISSUER
        if defer_taskrun:
            p.flags |= IORING_SETUP_DEFER_TASKRUN
        if coop_taskrun:
            p.flags |= IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG
        return 0

    cdef int _map_rings(self, int fd, io_uring_params *p) except -1:
        """mmap the SQ ring, CQ ring and SQE array (one mapping for both rings when the
        kernel reports IORING_FEAT_SINGLE_MMAP). Sizes are u32 offsets plus u32 counts
        times small records: they cannot overflow a 64-bit size_t."""
        cdef int err = 0
        cdef uint32_t i
        cdef uint32_t *sq_array
        self.core.maps.sq_len = p.sq_off.array + p.sq_entries * sizeof(uint32_t)
        self.core.maps.cq_len = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe)
        if p.features & IORING_FEAT_SINGLE_MMAP:
            self.core.maps.sq_len = max(self.core.maps.sq_len, self.core.maps.cq_len)
            self.core.maps.cq_len = self.core.maps.sq_len
        self.core.maps.sq = vy_mmap_ring(fd, self.core.maps.sq_len, IORING_OFF_SQ_RING, &err)
        if self.core.maps.sq == MAP_FAILED:
            self.core.maps.sq = NULL
            raise syscall_error("mmap(SQ ring)", err)
        if p.features & IORING_FEAT_SINGLE_MMAP:
            self.core.maps.cq = self.core.maps.sq
        else:
            self.core.maps.cq = vy_mmap_ring(fd, self.core.maps.cq_len, IORING_OFF_CQ_RING, &err)
            if self.core.maps.cq == MAP_FAILED:
                self.core.maps.cq = NULL
                raise syscall_error("mmap(CQ ring)", err)
        self.core.maps.sqes_len = p.sq_entries * sizeof(io_uring_sqe)
        self.core.sq.sqes = <io_uring_sqe *>vy_mmap_ring(fd, self.core.maps.sqes_len, IORING_OFF_SQES, &err)
        if <void *>self.core.sq.sqes == MAP_FAILED:
            self.core.sq.sqes = NULL
            raise syscall_error("mmap(SQE array)", err)
        cdef char *sq = <char *>self.core.maps.sq
        cdef char *cq = <char *>self.core.maps.cq
        self.core.sq.khead = <uint32_t *>(sq + p.sq_off.head)
        self.core.sq.ktail = <uint32_t *>(sq + p.sq_off.tail)
        self.core.sq.kflags = <uint32_t *>(sq + p.sq_off.flags)
        self.core.sq.mask = (<uint32_t *>(sq + p.sq_off.ring_mask))[0]
        self.core.sq.entries = (<uint32_t *>(sq + p.sq_off.ring_entries))[0]
        self.core.cq.khead = <uint32_t *>(cq + p.cq_off.head)
        self.core.cq.ktail = <uint32_t *>(cq + p.cq_off.tail)
        self.core.cq.koverflow = <uint32_t *>(cq + p.cq_off.overflow)
        self.core.cq.mask = (<uint32_t *>(cq + p.cq_off.ring_mask))[0]
        self.core.cq.entries = (<uint32_t *>(cq + p.cq_off.ring_entries))[0]
        self.core.cq.cqes = <io_uring_cqe *>(cq + p.cq_off.cqes)
        # The SQ index array maps ring positions to SQEs; fill it once with the
        # identity so publishing a batch is a single tail store. The kernel reads it
        # only after our release store of the tail, which orders these writes.
        sq_array = <uint32_t *>(sq + p.sq_off.array)
        for i in range(self.core.sq.entries):
            sq_array[i] = i
        # Our local tail starts where the kernel's is (0 on a new ring).
        self.core.sq.tail = vy_load_relaxed(self.core.sq.ktail)
        self.core.sq.published = self.core.sq.tail
        return 0

    cdef int _alloc_slots(self, uint32_t nslots) except -1:
        cdef uint32_t i
        self.core.st.slots = <Slot *>calloc(nslots, sizeof(Slot))
        self.core.st.released = <Hold **>calloc(nslots, sizeof(Hold *))
        self.core.scratch_ud = <uint64_t *>calloc(nslots, sizeof(uint64_t))
        self.core.scratch_res = <int32_t *>calloc(nslots, sizeof(int32_t))
        self.core.scratch_flags = <uint32_t *>calloc(nslots, sizeof(uint32_t))
        self.core.st.seqs = <uint64_t *>calloc(nslots, sizeof(uint64_t))
        self.core.st.free_stack = <uint32_t *>calloc(nslots, sizeof(uint32_t))
        self.core.st.ts = <vy_timespec *>calloc(nslots, sizeof(vy_timespec))
        if (self.core.st.slots == NULL or self.core.st.released == NULL or self.core.scratch_ud == NULL
                or self.core.scratch_res == NULL or self.core.scratch_flags == NULL
                or self.core.st.seqs == NULL or self.core.st.ts == NULL
                or self.core.st.free_stack == NULL):
            raise MemoryError()
        for i in range(nslots):
            self.core.st.free_stack[i] = nslots - 1 - i
        self.core.st.n = nslots
        self.core.st.free_top = nslots
        return 0

    # ---- guards -----------------------------------------------------------------

    cdef int _enter_api(self) except -1:
        """Every public operation starts here; pair with _leave_api in a finally."""
        if self._closed:
            raise RingClosedError("the Ring is closed")
        if self._fork_gen != vy_fork_gen():
            raise RingForkedError("this Ring was created before fork(); a child process "
                                  "must create its own Ring")
        if not vy_try_lock(&self._busy):
            raise RingBusyError("another thread is using this Ring; give each thread its "
                                "own Ring or serialise access with a lock")
        return 0

    cdef inline void _leave_api(self) noexcept:
        vy_unlock(&self._busy)

    # ---- slots and SQEs ---------------------------------------------------------

    cdef inline io_uring_sqe *_take_sqe(self, uint64_t user_data, uint8_t flags,
                                        Hold *hold) noexcept nogil:
        """One slot and zeroed SQE (per-op prep); the caller checked there is room."""
        cdef Claim c
        cdef io_uring_sqe *sqe
        claim_begin(&self.core, &c)
        sqe = claim_sqe(&c, user_data, hold)
        sqe.flags = flags                  # before claim_end follows the chain
        claim_end(&self.core, &c)
        if hold != NULL:
            hold.refs += 1
        return sqe

    cdef void _drop_released(self) noexcept:
        cdef uint32_t i, n = self.core.st.nreleased
        # Emptied first: hold_free can run Python code (a finalizer), and a fork
        # there must not leave the child a list of holds already freed.
        self.core.st.nreleased = 0
        for i in range(n):
            hold_free(self.core.st.released[i])

    cdef uint32_t _room(self, uint32_t wanted) except? 0xFFFFFFFF:
        """How many of `wanted` new requests fit now, submitting to free SQ space.
        Zero means the CQ's capacity is reached: completions must be reaped first."""
        cdef uint32_t space
        if slots_used(&self.core) >= self.core.st.n:
            return 0
        space = self.core.sq.entries - sq_pending(&self.core)
        if space == 0:
            self._make_sq_room()
            space = self.core.sq.entries - sq_pending(&self.core)
        return min(wanted, space, self.core.st.n - slots_used(&self.core))

    cdef int _make_sq_room(self) except -1:
        """Submit so that the full SQ has room again: everything, or with a chain
        open only what precedes it, since the kernel ends a chain at the end of a
        submission. A chain that fills the whole SQ cannot grow (RingFullError)."""
        cdef int ret
        cdef uint32_t flags, end, before
        cdef bint sqpoll = (self.core.setup_flags & IORING_SETUP_SQPOLL) != 0
        if not self.core.sq.chain_open:
            if not sqpoll:
                self._submit_and_wait(0, -1.0)
                return 0
            sq_publish(&self.core)
        else:
            if self.core.sq.tail - self.core.sq.chain_start >= self.core.sq.entries:
                raise RingFullError(
                    f"a chain of {self.core.sq.tail - self.core.sq.chain_start} linked requests "
                    f"fills the whole submission queue ({self.core.sq.entries} entries), so it "
                    f"cannot grow: a chain is submitted whole; use a larger Ring or a "
                    f"shorter chain, or submit() the chain as it is")
            end = self.core.sq.chain_start
            sq_publish_to(&self.core, end)
            while not sqpoll:
                # Acquire: pairs with the kernel's store-release of the SQ head.
                before = end - vy_load_acquire(self.core.sq.khead)
                if before == 0:
                    return 0
                ret = self._enter(before, 0, 0, -1.0)
                if ret == 0:
                    raise UringError(f"io_uring_enter consumed none of {before} pending "
                                     f"requests")
        # SQPOLL: the kernel thread consumes what is published. With the chain left
        # unpublished the kernel's SQ is not full, so SQ_WAIT returns at once and
        # this loop polls until the thread has taken at least one entry.
        while sq_pending(&self.core) >= self.core.sq.entries:
            flags = IORING_ENTER_SQ_WAIT | sqpoll_wakeup(&self.core)
            with nogil:
                ret = enter(&self.core, 0, 0, flags, NULL, 0)
            if ret == -EINTR:
                PyErr_CheckSignals()
            elif ret < 0:
                raise syscall_error("io_uring_enter(SQ_WAIT)", -ret)
        return 0

    cdef int _check_chain_fits(self, uint8_t flags, Py_ssize_t n) except -1:
        """Refuse, before any of it is prepared, a linked batch of `n` whose chain (the
        open one it extends, plus the batch) could never be in the SQ at once."""
        cdef Py_ssize_t length = n
        if not flags & _LINK_FLAGS:
            return 0
        if self.core.sq.chain_open:
            length += self.core.sq.tail - self.core.sq.chain_start
        if length > self.core.sq.entries:
            raise RingFullError(
                f"a chain of {length} linked requests cannot fit the submission queue "
                f"({self.core.sq.entries} entries), and a chain is submitted whole; use a "
                f"larger Ring or a shorter chain")
        return 0

    cdef io_uring_sqe *_next_sqe(self, uint64_t user_data, uint8_t flags, Hold *hold) \
            except NULL:
        """One SQE for a per-op prep. On failure the unused `hold` is freed."""
        try:
            if self._room(1) == 0:
                raise RingFullError(
                    f"{slots_used(&self.core)} requests are outstanding, as many as the completion "
                    f"queue holds ({self.core.st.n}); reap completions before preparing more")
        except BaseException:
            if hold != NULL and hold.refs == 0:
                hold_free(hold)
            raise
        return self._take_sqe(user_data, flags, hold)

    cdef int _check_fd(self, int64_t fd, uint8_t flags) except -1:
        if flags & ~_ALLOWED_SQE_FLAGS:
            raise ValueError(f"flags 0x{flags:x}: only SQE_FIXED_FILE, SQE_IO_DRAIN, "
                             f"SQE_IO_LINK, SQE_IO_HARDLINK and SQE_ASYNC are allowed")
        if flags & IOSQE_FIXED_FILE:
            if not 0 <= fd < self._reg_file_count:
                raise ValueError(f"fd {fd} is not a slot of the registered file table "
                                 f"({self._reg_file_count} slots)")
        elif not 0 <= fd <= 0x7FFFFFFF:
            _raise_range("fd", -1, fd, 0, 0x7FFFFFFF)
        return 0

    # ---- submission and waiting -------------------------------------------------

    cdef int _submit_and_wait(self, uint32_t min_complete, double timeout) except -1:
        """Submit every pending SQE, then wait until `min_complete` completions are
        ready or `timeout` seconds pass (< 0: no limit). Returns how many SQEs this
        call handed to the kernel. Signals run their handlers (Ctrl-C raises) and the
        wait resumes; EAGAIN/EBUSY back off and retry; partial submits loop."""
        cdef double deadline = vy_monotonic() + timeout if timeout >= 0 else -1.0
        cdef bint sqpoll = (self.core.setup_flags & IORING_SETUP_SQPOLL) != 0
        cdef int submitted = 0
        cdef int ret
        cdef uint32_t to_submit, enter_flags
        cdef bint waiting
        if sqpoll:
            submitted = <int>(self.core.sq.tail - self.core.sq.published)
        sq_publish(&self.core)
        while True:
            waiting = min_complete > 0 and cq_ready(&self.core) < min_complete and not (
                deadline >= 0 and vy_monotonic() >= deadline)
            to_submit = 0 if sqpoll else sq_pending(&self.core)
            enter_flags = 0
            if sqpoll and sq_pending(&self.core):
                enter_flags |= sqpoll_wakeup(&self.core)
            if waiting or cq_needs_flush(&self.core):
                enter_flags |= IORING_ENTER_GETEVENTS
            if to_submit == 0 and enter_flags == 0:
                return submitted
            ret = self._enter(to_submit, min_complete if waiting else 0, enter_flags,
                              deadline if waiting else -1.0)
            if ret < 0:
                continue               # EINTR (handlers ran), ETIME, EAGAIN or EBUSY
            if not sqpoll:
                if ret == 0 and to_submit > 0:
                    raise UringError(f"io_uring_enter consumed none of {to_submit} "
                                     f"pending requests")
                submitted += ret
            if min_complete == 0 or cq_ready(&self.core) >= min_complete:
                if sqpoll or <uint32_t>ret == to_submit:
                    return submitted
            elif waiting:
                # A signal can cut the wait short while the call still reports its
                # submissions as success: run the handlers here (Ctrl-C raises).
                PyErr_CheckSignals()

    cdef int _enter(self, uint32_t to_submit, uint32_t min_complete, uint32_t flags,
                    double deadline) except? -1000:
        """One io_uring_enter with the GIL released. Returns its result, or -EINTR,
        -ETIME, -EAGAIN or -EBUSY (the caller loops); raises on anything else. Past the
        deadline it still submits, without waiting."""
        cdef vy_getevents_arg arg
        cdef vy_timespec ts
        cdef double left
        cdef int ret
        cdef void *argp = NULL
        cdef size_t argsz = 0
        if min_complete and deadline >= 0:
            left = deadline - vy_monotonic()
            if left <= 0:
                if to_submit == 0:
                    return -ETIME
                min_complete = 0
                flags &= ~IORING_ENTER_GETEVENTS
            elif self.core.features & IORING_FEAT_EXT_ARG:
                ts.tv_sec = <int64_t>left
                ts.tv_nsec = <long long>((left - ts.tv_sec) * 1e9)
                memset(&arg, 0, sizeof(arg))
                arg.ts = <uint64_t><size_t>&ts
                argp = &arg
                argsz = sizeof(arg)
                flags |= IORING_ENTER_EXT_ARG
            else:
                return self._enter_then_poll(to_submit, flags, left)
        with nogil:
            ret = enter(&self.core, to_submit, min_complete, flags, argp, argsz)
        return self._enter_result(ret)

    cdef int _enter_then_poll(self, uint32_t to_submit, uint32_t flags, double left) \
            except? -1000:
        """Kernels before 5.11 take no timeout: submit, then poll the ring fd."""
        cdef int ret, ms = <int>(min(left, 3600.0) * 1000) + 1
        with nogil:
            ret = enter(&self.core, to_submit, 0, flags & ~IORING_ENTER_GETEVENTS,
                             NULL, 0)
            if ret >= 0:
                vy_poll_in(self.core.fd, ms)   # EINTR or not: the caller re-checks
        return self._enter_result(ret)

    cdef int _enter_result(self, int ret) except? -1000:
        if ret >= 0 or ret == -ETIME:
            return ret
        if ret == -EINTR:
            PyErr_CheckSignals()       # raises KeyboardInterrupt on Ctrl-C
            return ret
        if ret == -EAGAIN or ret == -EBUSY:
            # The kernel is short of request memory, or holds overflowed CQEs: back
            # off until a completion arrives (at most 1 ms), then the caller retries.
            with nogil:
                vy_poll_in(self.core.fd, 1)
            return ret
        raise syscall_error("io_uring_enter", -ret)

    cdef void _flush_cq(self) noexcept:
        """Enter with GETEVENTS and no wait, keeping the GIL: the call does not block
        (it moves overflowed CQEs into the ring, or runs deferred task work), and the
        caller may hold borrowed arrays. An error just ends the flush; a signal stays
        pending for the next check."""
        enter(&self.core, 0, 0, IORING_ENTER_GETEVENTS, NULL, 0)

    cdef int _check_waitable(self, uint32_t min_complete) except -1:
        if min_complete > slots_used(&self.core):
            raise ValueError(f"cannot wait for {min_complete} completions: only "
                             f"{slots_used(&self.core)} requests are outstanding")
        return 0

    # ---- reaping ------------------------------------------------------------------

    cdef uint32_t _reap_to_sinks(self, Sinks *sinks, Py_ssize_t offset, uint32_t maxn) \
            noexcept:
        """cq_reap into the caller's arrays: straight in when they have the native
        types (uint64 / int32 / uint32), else through the scratch arrays and widened."""
        cdef uint32_t i, n
        if sinks.ud.itemsize == 8 and sinks.res.itemsize == 4 and \
                (not sinks.has_flags or sinks.flags.itemsize == 4):
            return cq_reap(&self.core, 
                <uint64_t *>sinks.ud.buf + offset, <int32_t *>sinks.res.buf + offset,
                <uint32_t *>sinks.flags.buf + offset if sinks.has_flags else NULL, maxn)
        n = cq_reap(&self.core, self.core.scratch_ud, self.core.scratch_res, self.core.scratch_flags,
                            min(maxn, self.core.st.n))
        for i in range(n):
            ia_set(&sinks.ud, offset + i, <int64_t>self.core.scratch_ud[i])
            ia_set(&sinks.res, offset + i, self.core.scratch_res[i])
            if sinks.has_flags:
                ia_set(&sinks.flags, offset + i, self.core.scratch_flags[i])
        return n

    cdef Py_ssize_t _reap(self, object ud_out, object res_out, object flags_out,
                          Py_ssize_t capacity) except -1:
        """Reap up to `capacity` completions into the caller's arrays (None: into the
        ring's scratch arrays), flushing CQ overflow or deferred task work when the
        kernel flags it. Between borrowing the arrays and returning, nothing releases
        the GIL or runs Python code: holds are freed only at the end."""
        cdef Sinks sinks
        if ud_out is None:
            self._scratch_sinks(&sinks)
        try:
            if ud_out is not None:
                capacity = min(capacity, _open_sinks(&sinks, ud_out, res_out, flags_out))
            return self._reap_sinks(&sinks, capacity)
        finally:
            _close_sinks(&sinks)
            self._drop_released()

    cdef Py_ssize_t _reap_sinks(self, Sinks *sinks, Py_ssize_t capacity) noexcept:
        """_reap into sinks the caller opened (the caller closes them, then drops the
        released holds). Runs no Python code: borrowed arrays stay valid throughout."""
        cdef Py_ssize_t total = 0
        cdef uint32_t got
        cdef bint flushed = False
        if cq_ready(&self.core) == 0 and cq_needs_flush(&self.core):
            self._flush_cq()
            flushed = True
        while total < capacity:
            got = self._reap_to_sinks(sinks, total, <uint32_t>min(
                capacity - total, <Py_ssize_t>UINT32_MAX))
            total += got
            if (flushed and got == 0) or not cq_needs_flush(&self.core):
                break
            self._flush_cq()
            flushed = True
        return total

    cdef void _scratch_sinks(self, Sinks *sinks) noexcept:
        """Sinks over the ring's own scratch arrays (capacity: one per slot)."""
        memset(sinks, 0, sizeof(Sinks))
        sinks.ud.buf = <char *>self.core.scratch_ud
        sinks.ud.itemsize = 8
        sinks.res.buf = <char *>self.core.scratch_res
        sinks.res.itemsize = 4
        sinks.flags.buf = <char *>self.core.scratch_flags
        sinks.flags.itemsize = 4
        sinks.has_flags = True

    cdef list _reap_list(self):
        cdef Py_ssize_t i, n = self._reap(None, None, None, self.core.st.n)
        return [_completion(self.core.scratch_ud[i], self.core.scratch_res[i], self.core.scratch_flags[i])
                for i in range(n)]

    # ---- public: state ------------------------------------------------------------

    @property
    def sq_entries(self):
        """Submission queue size (the kernel rounds `entries` up to a power of two)."""
        return self.core.sq.entries

    @property
    def cq_entries(self):
        """Completion queue size; also the most requests that can be outstanding."""
        return self.core.cq.entries

    @property
    def features(self):
        """IORING_FEAT_* bits the kernel reported."""
        return self.core.features

    @property
    def setup_flags(self):
        """IORING_SETUP_* bits the ring was created with."""
        return self.core.setup_flags

    @property
    def closed(self):
        """True after close() (or a failed __init__): every method but close() then
        raises RingClosedError."""
        return self._closed

    @property
    def pending(self):
        """Requests prepared but not yet consumed by the kernel."""
        return 0 if self._closed else sq_pending(&self.core)

    @property
    def allowed_ops(self):
        """The opcodes this ring is restricted to (a frozenset of Op), or None."""
        return self._allowed

    @property
    def in_flight(self):
        """Requests submitted whose completion has not been reaped yet."""
        return 0 if self._closed else slots_used(&self.core) - sq_pending(&self.core)

    @property
    def registered_files(self):
        """Slots in the registered file table (0 when none is registered)."""
        return self._reg_file_count

    @property
    def registered_buffers(self):
        """Buffers registered with register_buffers (0 when none)."""
        return self._reg_buffer_count

    def fileno(self):
        """The ring's file descriptor. Raises RingClosedError after close()."""
        if self._closed:
            raise RingClosedError("the Ring is closed")
        return self.core.fd

    def __repr__(self):
        if self._closed:
            return "<Ring closed>"
        return (f"<Ring fd={self.core.fd} sq={self.core.sq.entries} cq={self.core.cq.entries} "
                f"pending={self.pending} in_flight={self.in_flight}>")

    # ---- public: per-op prep ------------------------------------------------------

    def prep_nop(self, *, user_data=0, flags=0):
        """Prepare a request that does nothing and completes with res 0: a way to test the
        ring, or to end a linked chain.

        Returns None. Raises as every prep method does (see Ring); nothing is prepared
        then.
        """
        cdef uint64_t ud = _u64_arg(user_data, "user_data")
        cdef uint8_t fl = _u8_arg(flags, "flags")
        self._enter_api()
        try:
            self._check_fd(0, fl & ~IOSQE_FIXED_FILE)
            self._next_sqe(ud, fl, NULL).opcode = IORING_OP_NOP
        finally:
            self._leave_api()

    def prep_read(self, fd, buf, offset=0, *, nbytes=None, buf_offset=0, user_data=0,
                  flags=0):
        """Prepare one read of up to `nbytes` bytes (default: the rest of `buf`) from `fd`
        at `offset`, into the writable buffer `buf` starting at `buf_offset`.

        `offset` is a file offset, or -1 for the file position: the request then reads
        or writes at the file's current position and advances it, as read(2)/write(2) do
        (requests using it run in submission order only when linked). Any other negative
        offset raises ArgumentRangeError. `fd` is a file descriptor, or with
        flags=SQE_FIXED_FILE a slot of the registered file table. `flags`: SQE_* bits
        (IO_LINK, IO_HARDLINK, IO_DRAIN, ASYNC, FIXED_FILE). Returns None; the
        completion's `res` is the byte count read (0 at EOF) or -errno, and carries
        `user_data`.

        Holds: `buf` stays exported (a bytearray cannot be resized, no object is freed)
        from this call until the completion is reaped (wait, completions, reap) or the
        ring is closed.

        Raises TypeError or ArgumentRangeError (an OverflowError and a ValueError) for
        an argument of the wrong type or range, ValueError for one the ring cannot use,
        RingFullError when as many requests are outstanding as the CQ holds, and the
        errors common to every method (see Ring). Nothing is prepared when it raises. A
        read-only `buf` is a TypeError.
        """
        self._prep_rw(IORING_OP_READ, _i64_arg(fd, "fd"), buf, _offset_arg(offset), nbytes,
                      buf_offset, _u64_arg(user_data, "user_data"), _u8_arg(flags, "flags"), True)

    def prep_write(self, fd, buf, offset=0, *, nbytes=None, buf_offset=0, user_data=0,
                   flags=0):
        """Prepare one write of `nbytes` bytes (default: the rest of `buf`) from
        `buf[buf_offset:]` to `fd` at `offset`.

        `offset`: as in prep_read (>= 0, or -1 for the file position). Returns None; the
        completion's `res` is the byte count written or -errno.

        Holds: `buf` stays exported from this call until the completion is reaped or the
        ring is closed: a bytearray cannot be resized meanwhile.

        Raises as every prep method does (see Ring); nothing is prepared then.
        """
        self._prep_rw(IORING_OP_WRITE, _i64_arg(fd, "fd"), buf, _offset_arg(offset), nbytes,
                      buf_offset, _u64_arg(user_data, "user_data"), _u8_arg(flags, "flags"), False)

    cdef int _prep_rw(self, uint8_t opcode, int64_t fd, object buf, int64_t offset,
                      object nbytes, object buf_offset, uint64_t user_data, uint8_t flags,
                      bint writable) except -1:
        self._enter_api()
        try:
            self._fill_rw(opcode, fd, buf, offset, nbytes, buf_offset, user_data, flags,
                          writable)
        finally:
            self._leave_api()
        return 0

    cdef io_uring_sqe *_fill_rw(self, uint8_t opcode, int64_t fd, object buf,
                                int64_t offset, object nbytes, object buf_offset,
                                uint64_t user_data, uint8_t flags, bint writable) \
            except NULL:
        """_prep_rw's work, inside the caller's _enter_api: the SQE it filled."""
        cdef Hold *hold
        cdef io_uring_sqe *sqe
        cdef Py_ssize_t n, boff
        self._check_fd(fd, flags)
        hold = hold_new(1)
        try:
            hold_export(hold, buf, writable, "buf")
            n = _checked_range(hold.views[0].len, buf_offset, nbytes, &boff)
        except BaseException:
            hold_free(hold)
            raise
        sqe = self._next_sqe(user_data, flags, hold)
        sqe.opcode = opcode
        sqe.fd = <int32_t>fd
        sqe.off = <uint64_t>offset
        sqe.addr = <uint64_t>(<char *>hold.views[0].buf + boff)
        sqe.len = <uint32_t>n
        return sqe

    def prep_readv(self, fd, buffers, offset=0, *, user_data=0,
                   flags=0):
        """Prepare one scatter read (READV) from `fd` at `offset`, filling each writable
        buffer of `buffers` (1 to 1024 of them) in turn.

        `offset`: as in prep_read (>= 0, or -1 for the file position). Returns None; the
        completion's `res` is the total byte count read or -errno.

        Holds: every buffer of `buffers` stays exported, and the iovec array is kept,
        until the completion is reaped or the ring is closed.

        Raises as every prep method does (see Ring); nothing is prepared then. A read-
        only buffer is a TypeError naming it (`buffers[i]`).
        """
        self._prep_rwv(IORING_OP_READV, _i64_arg(fd, "fd"), buffers, _offset_arg(offset),
                       _u64_arg(user_data, "user_data"), _u8_arg(flags, "flags"), True)

    def prep_writev(self, fd, buffers, offset=0, *, user_data=0,
                    flags=0):
        """Prepare one gather write (WRITEV) to `fd` at `offset` of each buffer of
        `buffers` (1 to 1024 of them) in turn.

        `offset`: as in prep_read (>= 0, or -1 for the file position). Returns None; the
        completion's `res` is the total byte count written or -errno.

        Holds: every buffer of `buffers` stays exported until the completion is reaped
        or the ring is closed.

        Raises as every prep method does (see Ring); nothing is prepared then.
        """
        self._prep_rwv(IORING_OP_WRITEV, _i64_arg(fd, "fd"), buffers, _offset_arg(offset),
                       _u64_arg(user_data, "user_data"), _u8_arg(flags, "flags"), False)

    cdef int _prep_rwv(self, uint8_t opcode, int64_t fd, object buffers, int64_t offset,
                       uint64_t user_data, uint8_t flags, bint writable) except -1:
        cdef list bufs = list(buffers)
        cdef Py_ssize_t i, n = len(bufs)
        cdef Hold *hold
        cdef io_uring_sqe *sqe
        if not 0 < n <= 1024:
            raise ValueError(f"buffers must hold 1 to 1024 buffers (IOV_MAX), not {n}")
        self._enter_api()
        try:
            self._check_fd(fd, flags)
            hold = hold_new(n)
            try:
                hold.iov = <iovec *>malloc(n * sizeof(iovec))
                if hold.iov == NULL:
                    raise MemoryError()
                for i in range(n):
                    hold_export(hold, bufs[i], writable, f"buffers[{i}]")
                    hold.iov[i].iov_base = hold.views[i].buf
                    hold.iov[i].iov_len = hold.views[i].len
            except BaseException:
                hold_free(hold)
                raise
            sqe = self._next_sqe(user_data, flags, hold)
            sqe.opcode = opcode
            sqe.fd = <int32_t>fd
            sqe.off = <uint64_t>offset
            sqe.addr = <uint64_t><size_t>hold.iov
            sqe.len = <uint32_t>n
        finally:
            self._leave_api()
        return 0

    def prep_read_fixed(self, fd, buf_index, offset, nbytes, buf_offset=0, *, user_data=0,
                        flags=0):
        """Prepare one read of `nbytes` from `fd` at `offset` into registered buffer
        `buf_index` (see register_buffers) at `buf_offset`, with no page pinning per
        request.

        `offset`: as in prep_read (>= 0, or -1 for the file position). Returns None; the
        completion's `res` is the byte count read or -errno.

        Holds: the registered buffers stay registered and exported until the completion
        is reaped, even if unregister_buffers() is called meanwhile.

        Raises as every prep method does (see Ring); nothing is prepared then. A
        `buf_index` outside the registered buffers, or a range past the end of that
        buffer, is a ValueError.
        """
        self._prep_fixed(IORING_OP_READ_FIXED, _i64_arg(fd, "fd"), _i64_arg(buf_index, "buf_index"),
                         _offset_arg(offset), nbytes, buf_offset,
                         _u64_arg(user_data, "user_data"), _u8_arg(flags, "flags"))

    def prep_write_fixed(self, fd, buf_index, offset, nbytes, buf_offset=0, *, user_data=0,
                         flags=0):
        """Prepare one write of `nbytes` from registered buffer `buf_index` at `buf_offset`
        to `fd` at `offset`.

        `offset`: as in prep_read (>= 0, or -1 for the file position). Returns None; the
        completion's `res` is the byte count written or -errno.

        Holds: the registered buffers stay exported until the completion is reaped, even
        if unregister_buffers() is called meanwhile.

        Raises as every prep method does (see Ring); nothing is prepared then.
        """
        self._prep_fixed(IORING_OP_WRITE_FIXED, _i64_arg(fd, "fd"), _i64_arg(buf_index, "buf_index"),
                         _offset_arg(offset), nbytes, buf_offset,
                         _u64_arg(user_data, "user_data"), _u8_arg(flags, "flags"))

    cdef int _prep_fixed(self, uint8_t opcode, int64_t fd, int64_t buf_index, int64_t offset,
                         object nbytes, object buf_offset, uint64_t user_data,
                         uint8_t flags) except -1:
        cdef io_uring_sqe *sqe
        cdef Py_ssize_t n, boff
        self._enter_api()
        try:
            self._check_fd(fd, flags)
            self._check_buf_index(buf_index)
            n = _checked_range(self._reg_buffers.views[buf_index].len, buf_offset, nbytes,
                               &boff)
            sqe = self._next_sqe(user_data, flags, self._reg_buffers)
            sqe.opcode = opcode
            sqe.fd = <int32_t>fd
            sqe.off = <uint64_t>offset
            sqe.addr = <uint64_t>(<char *>self._reg_buffers.views[buf_index].buf + boff)
            sqe.len = <uint32_t>n
            sqe.buf_index = <uint16_t>buf_index
        finally:
            self._leave_api()
        return 0

    cdef int _check_buf_index(self, int64_t buf_index) except -1:
        if not 0 <= buf_index < self._reg_buffer_count:
            raise ValueError(f"buf_index {buf_index} is outside the registered buffers "
                             f"({self._reg_buffer_count} registered)")
        return 0

    def prep_openat(self, path, flags=os.O_RDONLY, mode=0o644, *, dir_fd=AT_FDCWD,
                    file_index=None, user_data=0, sqe_flags=0):
        """Prepare openat(2) of `path` (str, bytes or os.PathLike) relative to `dir_fd`
        (default AT_FDCWD), with open `flags` and `mode`.

        The file is opened O_CLOEXEC, as Python opens files; the completion's `res` is
        the new fd (yours to close) or -errno. With `file_index`, it opens into that
        slot of the registered file table instead (a direct descriptor; res is 0), or
        into a free slot with FILE_INDEX_ALLOC (res is the slot); direct descriptors
        have no close-on-exec. Returns None.

        Holds: a private copy of the path until the completion is reaped.

        Raises as every prep method does (see Ring); nothing is prepared then. A path
        with a NUL byte is a ValueError; `file_index` without a registered file table,
        or outside it, is a ValueError.
        """
        cdef bytes b = _path_bytes(path)
        cdef uint32_t open_flags = _u32_arg(flags, "flags")
        cdef uint32_t direct = 0
        cdef uint64_t ud = _u64_arg(user_data, "user_data")
        cdef uint8_t fl = _u8_arg(sqe_flags, "sqe_flags")
        cdef int32_t dfd = _dir_fd_arg(dir_fd)
        cdef uint32_t perms = _u32_arg(mode, "mode")
        cdef io_uring_sqe *sqe
        self._enter_api()
        try:
            self._check_fd(0, fl & ~IOSQE_FIXED_FILE)
            if file_index is None:
                open_flags |= os.O_CLOEXEC
            else:
                direct = self._direct_slot(file_index)
                open_flags &= ~os.O_CLOEXEC        # the kernel refuses it for direct slots
            sqe = self._next_sqe(ud, fl, hold_object(b))
            sqe.opcode = IORING_OP_OPENAT
            sqe.fd = dfd
            sqe.addr = <uint64_t><size_t>PyBytes_AS_STRING(b)
            sqe.len = perms
            sqe.open_flags = open_flags
            sqe.file_index = direct
        finally:
            self._leave_api()

    cdef uint32_t _direct_slot(self, object file_index) except? 0xFFFFFFFE:
        """sqe.file_index for a direct descriptor: slot + 1, or IORING_FILE_INDEX_ALLOC."""
        cdef int64_t index = _i64_arg(file_index, "file_index")
        if self._reg_file_count == 0:
            raise ValueError("file_index needs a registered file table: call "
                             "register_files([-1] * n) first")
        if index == _FILE_INDEX_ALLOC:
            return IORING_FILE_INDEX_ALLOC
        if not 0 <= index < self._reg_file_count:
            raise ValueError(f"file_index {index} is outside the registered file table "
                             f"({self._reg_file_count} slots)")
        return <uint32_t>index + 1

    def prep_close(self, fd, bint fixed=False, *, user_data=0, flags=0):
        """Prepare close(2) of `fd`, or with fixed=True of the direct descriptor in slot
        `fd` of the registered file table. Returns None; res is 0 or -errno.

        Raises as every prep method does (see Ring); nothing is prepared then.
        """
        cdef int64_t f = _i64_arg(fd, "fd")
        cdef uint64_t ud = _u64_arg(user_data, "user_data")
        cdef uint8_t fl = _u8_arg(flags, "flags") & ~IOSQE_FIXED_FILE
        cdef io_uring_sqe *sqe
        self._enter_api()
        try:
            self._check_fd(f, IOSQE_FIXED_FILE if fixed else 0)
            self._check_fd(0, fl)
            sqe = self._next_sqe(ud, fl, NULL)
            sqe.opcode = IORING_OP_CLOSE
            if fixed:
                sqe.file_index = <uint32_t>f + 1
            else:
                sqe.fd = <int32_t>f
        finally:
            self._leave_api()

    def prep_statx(self, path, Statx statx_buf not None, *, flags=0,
                   mask=STATX_BASIC_STATS, dir_fd=AT_FDCWD, user_data=0, sqe_flags=0):
        """Prepare statx(2) of `path` relative to `dir_fd` into `statx_buf` (a Statx);
        `flags` are AT_* flags, `mask` the STATX_* fields wanted (default: the basic
        ones).

        Returns None; res is 0 or -errno, and `statx_buf` is filled once the completion
        has been reaped (read it then, not before).

        Holds: the path's bytes and `statx_buf` until the completion is reaped.

        Raises as every prep method does (see Ring); nothing is prepared then.
        """
        cdef bytes b = _path_bytes(path)
        cdef uint32_t at_flags = _u32_arg(flags, "flags")
        cdef uint32_t want = _u32_arg(mask, "mask")
        cdef int32_t dfd = _dir_fd_arg(dir_fd)
        cdef uint64_t ud = _u64_arg(user_data, "user_data")
        cdef uint8_t fl = _u8_arg(sqe_flags, "sqe_flags")
        cdef io_uring_sqe *sqe
        self._enter_api()
        try:
            self._check_fd(0, fl & ~IOSQE_FIXED_FILE)
            sqe = self._next_sqe(ud, fl, hold_object((b, statx_buf)))
            sqe.opcode = IORING_OP_STATX
            sqe.fd = dfd
            sqe.addr = <uint64_t><size_t>PyBytes_AS_STRING(b)
            sqe.len = want
            sqe.off = <uint64_t><size_t>&statx_buf.buf
            sqe.statx_flags = at_flags
        finally:
            self._leave_api()

    def prep_fsync(self, fd, bint datasync=False, *, user_data=0, flags=0):
        """Prepare fsync(2) of `fd`, or fdatasync(2) with datasync=True. Returns None; res
        is 0 or -errno. Link it after writes (SQE_IO_LINK) to have it wait for them.

        Raises as every prep method does (see Ring); nothing is prepared then.
        """
        cdef int64_t f = _i64_arg(fd, "fd")
        cdef uint64_t ud = _u64_arg(user_data, "user_data")
        cdef uint8_t fl = _u8_arg(flags, "flags")
        cdef io_uring_sqe *sqe
        self._enter_api()
        try:
            self._check_fd(f, fl)
            sqe = self._next_sqe(ud, fl, NULL)
            sqe.opcode = IORING_OP_FSYNC
            sqe.fd = <int32_t>f
            sqe.fsync_flags = IORING_FSYNC_DATASYNC if datasync else 0
        finally:
            self._leave_api()

    def prep_timeout(self, seconds, count=0, *, user_data=0, flags=0):
        """Prepare a timeout: it completes after `seconds` (res -ETIME), or once `count`
        other requests have completed (res 0), whichever is first; count=0 is a pure
        timer. Returns None. The timespec lives in the ring until the completion is
        reaped.

        Raises as every prep method does (see Ring); nothing is prepared then. `seconds`
        must be a number >= 0 and finite.
        """
        cdef uint32_t n = _u32_arg(count, "count")
        cdef uint64_t ud = _u64_arg(user_data, "user_data")
        cdef uint8_t fl = _u8_arg(flags, "flags")
        cdef io_uring_sqe *sqe
        cdef vy_timespec *ts
        cdef uint32_t slot
        cdef double secs = _seconds_arg(seconds, "seconds", 1e15)
        self._enter_api()
        try:
            self._check_fd(0, fl & ~IOSQE_FIXED_FILE)
            sqe = self._next_sqe(ud, fl, NULL)
            # The timespec lives in the request's slot, which outlives the request.
            slot = slot_of(&self.core, sqe.user_data)
            if slot == NO_SLOT:
                raise UringError("internal error: a new request has no live slot")
            ts = &self.core.st.ts[slot]
            ts.tv_sec = <int64_t>secs
            ts.tv_nsec = <long long>((secs - ts.tv_sec) * 1e9)
            sqe.opcode = IORING_OP_TIMEOUT
            sqe.addr = <uint64_t><size_t>ts
            sqe.len = 1
            sqe.off = n
        finally:
            self._leave_api()

    def prep_cancel(self, target_user_data, *, user_data=0, flags=0):
        """Prepare a cancel of the oldest outstanding request whose user_data is
        `target_user_data`. Returns None; res is 0 when it was cancelled (the target
        then completes with -ECANCELED), -ENOENT when no such request was found, and
        -EALREADY when it was already running.

        Raises as every prep method does (see Ring); nothing is prepared then.
        """
        cdef uint64_t target = _u64_arg(target_user_data, "target_user_data")
        cdef uint64_t ud = _u64_arg(user_data, "user_data")
        cdef uint8_t fl = _u8_arg(flags, "flags")
        cdef io_uring_sqe *sqe
        self._enter_api()
        try:
            self._check_fd(0, fl & ~IOSQE_FIXED_FILE)
            target = self._find_slot(target)
            sqe = self._next_sqe(ud, fl, NULL)
            sqe.opcode = IORING_OP_ASYNC_CANCEL
            sqe.addr = target
        finally:
            self._leave_api()

    cdef uint64_t _find_slot(self, uint64_t user_data) except? 0:
        """The kernel user_data (slot and generation) of the oldest request carrying
        `user_data` that has not completed yet (completions waiting in the CQ are
        skipped); when none, a key no request has, so the kernel answers -ENOENT."""
        cdef uint32_t i, idx, head, tail, best = NO_SLOT
        cdef uint64_t best_seq = 0xFFFFFFFFFFFFFFFF
        cdef uint8_t *completed = <uint8_t *>calloc(self.core.st.n, 1)
        if completed == NULL:
            raise MemoryError()
        head = vy_load_relaxed(self.core.cq.khead)
        tail = vy_load_acquire(self.core.cq.ktail)   # pairs with the kernel's tail release
        while head != tail:
            idx = slot_of(&self.core, self.core.cq.cqes[head & self.core.cq.mask].user_data)
            if idx != NO_SLOT:
                completed[idx] = 1
            head += 1
        for i in range(self.core.st.n):
            if self.core.st.slots[i].live and not completed[i] and \
                    self.core.st.slots[i].user_data == user_data and self.core.st.seqs[i] < best_seq:
                best = i
                best_seq = self.core.st.seqs[i]
        free(completed)
        if best == NO_SLOT:
            return kernel_user_data(NO_SLOT, 0)
        return kernel_user_data(best, best_seq)

    # ---- public: batch prep -------------------------------------------------------

    def prep_nops(self, user_data, *, flags=0):
        """Prepare one NOP per element of `user_data` (a 1-D integer array: array.array,
        numpy array or a sequence of ints), each completing with res 0.

        Returns how many requests were prepared: fewer than asked when the CQ's capacity
        is reached (see Ring).

        Raises as every batch method does (see Ring), naming the first bad element;
        nothing is prepared then.
        """
        cdef IntCopy ud
        cdef Py_ssize_t done = 0
        cdef uint32_t k
        cdef uint8_t fl = _u8_arg(flags, "flags")
        ud.v = NULL
        self._enter_api()
        try:
            self._check_fd(0, fl & ~IOSQE_FIXED_FILE)
            int_copy(&ud, user_data, "user_data", False, True)
            self._check_chain_fits(fl, ud.n)
            while done < ud.n:
                k = self._room(<uint32_t>min(ud.n - done, <Py_ssize_t>UINT32_MAX))
                if k == 0:
                    break
                self._fill_nops(&ud, done, k, fl)
                done += k
        finally:
            int_copy_free(&ud)
            self._leave_api()
        return done

    cdef void _fill_nops(self, const IntCopy *ud, Py_ssize_t start, uint32_t count,
                         uint8_t flags) noexcept nogil:
        cdef Claim c
        cdef Py_ssize_t i
        claim_begin(&self.core, &c)
        for i in range(start, start + count):
            claim_sqe(&c, <uint64_t>ud.v[i], NULL).flags = flags
        claim_end(&self.core, &c)

    def prep_reads(self, fd, buffer, offsets, lengths, buffer_offsets=None, user_data=None,
                   *, flags=0):
        """Prepare many reads into one writable `buffer`, in one call whose loops run in C.

        Range i reads lengths[i] bytes from fd (an int, or one fd per range) at
        offsets[i] into buffer[buffer_offsets[i]:buffer_offsets[i] + lengths[i]].
        buffer_offsets=None packs the ranges back to back from the start of `buffer`.
        user_data=None numbers the ranges 0..n-1 (the completions carry these);
        otherwise one 64-bit value per range. offsets, lengths, buffer_offsets,
        user_data and fd (as an array) are 1-D integer arrays: array.array, numpy
        arrays, memoryviews of them, or sequences of ints. They are copied before they
        are checked, so another thread changing them meanwhile cannot change what runs.
        `flags` (SQE_* bits) apply to every range; with SQE_FIXED_FILE, fd names slots
        of the registered file table.

        Each offsets[i] is a file offset, or -1 for the file position (the read advances
        it; ranges using it are ordered only when linked); any other negative offset is
        an ArgumentRangeError naming `offsets[i]`. A range must fit inside `buffer`. A
        completion's `res` is that range's byte count (short at EOF) or -errno.

        Returns how many requests were prepared, in order from the first: fewer than
        asked (possibly 0) when the completion queue's capacity is reached; reap, then
        prepare the rest. When the SQ fills, what is prepared is submitted first (never
        part of a linked chain).

        Holds: `buffer` stays exported (a bytearray cannot be resized, a numpy array or
        mmap cannot be freed) from this call until the completion of the last range
        prepared is reaped, or the ring is closed. The integer arrays are not held: they
        were copied.

        Raises TypeError for an argument that is not an integer array (bytes, bytearray
        and str are refused), ValueError when the arrays' lengths differ, and
        ArgumentRangeError or ValueError naming the first bad element (`range i`, with
        its values); RingFullError for a linked batch (SQE_IO_LINK) that could not fit
        the SQ; and the errors common to every method (see Ring). The whole batch is
        checked before any of it is prepared: when it raises, nothing is. A read-only
        `buffer` is a TypeError.

        Example::

            n = ring.prep_reads(fd, buf, offsets=[0, 4096], lengths=[4096, 4096])
            ud, res = array.array("Q", [0] * n), array.array("i", [0] * n)
            ring.reap(ud, res, min_complete=n)
        """
        return self._prep_batch(IORING_OP_READ, fd, buffer, offsets, lengths, buffer_offsets,
                                user_data, _u8_arg(flags, "flags"))

    def prep_read_fixed_batch(self, fd, buf_index, offsets, lengths, buffer_offsets=None,
                              user_data=None, *, flags=0):
        """prep_reads into registered buffers (see register_buffers): range i reads
        lengths[i] bytes from fd (an int, or one per range) at offsets[i] into
        registered buffer buf_index (an int, or one index per range) at
        buffer_offsets[i] (default: the start of that buffer). Offsets follow
        prep_reads: >= 0, or -1 for the file position.

        Returns how many requests were prepared: fewer than asked when the CQ's capacity
        is reached (see Ring).

        Holds: the registered buffers stay exported until every prepared range's
        completion is reaped, even if unregister_buffers() is called meanwhile.

        Raises as every batch method does (see Ring), naming the first bad element;
        nothing is prepared then. A buf_index outside the registered buffers is a
        ValueError.
        """
        return self._prep_batch(IORING_OP_READ_FIXED, fd, buf_index, offsets, lengths,
                                buffer_offsets, user_data, _u8_arg(flags, "flags"))

    cdef Py_ssize_t _prep_batch(self, uint8_t opcode, object fd, object target, object offsets,
                                object lengths, object buffer_offsets, object user_data,
                                uint8_t flags) except -1:
        cdef ReadBatch b
        cdef Hold *hold = NULL
        cdef Py_ssize_t done = 0
        memset(&b, 0, sizeof(ReadBatch))
        self._enter_api()
        try:
            self._check_fd(0, flags & ~IOSQE_FIXED_FILE)
            b.opcode = opcode
            b.flags = flags
            try:
                self._open_batch(&b, fd, target, offsets, lengths, buffer_offsets, user_data)
                if opcode == IORING_OP_READ:
                    hold = hold_new(1)
                    hold_export(hold, target, True, "buffer")
                    b.base = <char *>hold.views[0].buf
                    b.base_len = hold.views[0].len
                else:
                    hold = self._reg_buffers
                self._validate_batch(&b)
                self._check_chain_fits(flags, b.n)
                done = self._fill_loop(&b, NULL, b.n, hold)
            finally:
                if hold != NULL and hold.refs == 0:
                    hold_free(hold)
                _close_batch(&b)
        finally:
            self._leave_api()
        return done

    cdef int _open_batch(self, ReadBatch *b, object fd, object target, object offsets,
                         object lengths, object buffer_offsets, object user_data) except -1:
        int_copy(&b.fd, fd, "fd", True)
        int_copy(&b.off, offsets, "offsets", False)
        int_copy(&b.length, lengths, "lengths", False)
        b.n = b.off.n
        if b.opcode == IORING_OP_READ_FIXED:
            int_copy(&b.index, target, "buf_index", True)
            _check_len(b.index.n, "buf_index", b.n)
        if buffer_offsets is not None:
            int_copy(&b.boff, buffer_offsets, "buffer_offsets", False)
            _check_len(b.boff.n, "buffer_offsets", b.n)
        if user_data is not None:
            int_copy(&b.ud, user_data, "user_data", False, True)
            _check_len(b.ud.n, "user_data", b.n)
        _check_len(b.length.n, "lengths", b.n)
        _check_len(b.fd.n, "fd", b.n)
        return 0

    cdef int _validate_batch(self, ReadBatch *b) except -1:
        """Check every range before any SQE is written: a batch is prepared whole or
        not at all (apart from the CQ capacity limit)."""
        cdef Py_ssize_t bad
        cdef int why
        bad = _first_bad_range(b, self._reg_file_count, self._reg_buffers,
                               self._reg_buffer_count, &why)
        if bad >= 0:
            # A value outside its argument's range, as the per-request methods say it.
            error = ArgumentRangeError if why in (BAD_OFFSET, BAD_LENGTH, BAD_BUFFER_OFFSET) \
                else ValueError
            raise error(_batch_error(b, bad, why, self._reg_file_count,
                                     self._reg_buffer_count))
        return 0

    cdef Py_ssize_t _fill_loop(self, ReadBatch *reads, PathBatch *paths, Py_ssize_t n,
                               Hold *hold) except -1:
        """Fill a validated batch chunk by chunk, submitting when the SQ is full;
        returns how many were prepared (short when the CQ's capacity is reached)."""
        cdef Py_ssize_t done = 0
        cdef uint32_t k
        while done < n:
            k = self._room(<uint32_t>min(n - done, <Py_ssize_t>UINT32_MAX))
            if k == 0:
                break
            if reads != NULL:
                self._fill_reads(reads, done, k, hold)
            else:
                self._fill_paths(paths, done, k, hold)
            done += k
        return done

    cdef void _fill_paths(self, PathBatch *b, Py_ssize_t start, uint32_t count,
                          Hold *hold) noexcept nogil:
        cdef Claim c
        cdef Py_ssize_t i
        claim_begin(&self.core, &c)
        for i in range(start, start + count):
            _fill_path_sqe(b, i, claim_sqe(&c, _batch_user_data(&b.ud, i), hold))
        claim_end(&self.core, &c)
        if hold != NULL:
            hold.refs += count

    def prep_openat_batch(self, paths, flags=os.O_RDONLY, mode=0o644, *, dir_fd=AT_FDCWD,
                          file_indexes=None, user_data=None, sqe_flags=0):
        """Prepare one openat(2) per path of `paths` (str, bytes or os.PathLike), relative
        to `dir_fd`, with open `flags` and `mode`. Each file is opened O_CLOEXEC and its
        completion's res is the new fd (yours to close) or -errno. With `file_indexes`
        (an int array, one slot per path, or FILE_INDEX_ALLOC), they open into those
        slots of the registered file table instead (direct descriptors). user_data=None
        numbers them 0..n-1.

        Returns how many requests were prepared: fewer than asked when the CQ's capacity
        is reached (see Ring).

        Holds: private copies of the paths until every prepared completion is reaped.

        Raises as every batch method does (see Ring), naming the first bad element;
        nothing is prepared then. A path with a NUL byte is a ValueError.
        """
        cdef PathBatch b
        cdef tuple t = _paths_tuple(paths)
        memset(&b, 0, sizeof(PathBatch))
        b.opcode = IORING_OP_OPENAT
        b.dir_fd = _dir_fd_arg(dir_fd)
        b.mode = _u32_arg(mode, "mode")
        b.open_flags = _u32_arg(flags, "flags") | (os.O_CLOEXEC if file_indexes is None else 0)
        if file_indexes is not None:
            b.open_flags &= ~(<uint32_t>os.O_CLOEXEC)  # the kernel refuses it for slots
            b.direct = True
        return self._prep_paths(&b, t, None, file_indexes, user_data, sqe_flags)

    def prep_statx_batch(self, paths, StatxArray results not None, *, flags=0,
                         mask=STATX_BASIC_STATS, dir_fd=AT_FDCWD, user_data=None, sqe_flags=0):
        """Prepare one statx(2) per path of `paths` into results[i] (a StatxArray at least
        as long); `flags` are AT_* flags, `mask` the STATX_* fields wanted. res is 0 or
        -errno; read results (results.sizes(), results.modes()) after the completions
        are reaped. user_data=None numbers them 0..n-1.

        Returns how many requests were prepared: fewer than asked when the CQ's capacity
        is reached (see Ring).

        Holds: the paths' bytes and `results` until every prepared completion is reaped.

        Raises as every batch method does (see Ring), naming the first bad element;
        nothing is prepared then.
        """
        cdef PathBatch b
        cdef tuple t = _paths_tuple(paths)
        if len(t) > results.n:
            raise ValueError(f"results holds {results.n} entries for {len(t)} paths")
        memset(&b, 0, sizeof(PathBatch))
        b.opcode = IORING_OP_STATX
        b.dir_fd = _dir_fd_arg(dir_fd)
        b.at_flags = _u32_arg(flags, "flags")
        b.mask = _u32_arg(mask, "mask")
        b.statx_base = results.items
        return self._prep_paths(&b, t, results, None, user_data, sqe_flags)

    def prep_close_batch(self, fds, *, bint fixed=False, user_data=None, sqe_flags=0):
        """Prepare close(2) of every fd of `fds` (an int array), or with fixed=True of
        those slots of the registered file table. user_data=None numbers them 0..n-1;
        res is 0 or -errno.

        Returns how many requests were prepared: fewer than asked when the CQ's capacity
        is reached (see Ring).

        Raises as every batch method does (see Ring), naming the first bad element;
        nothing is prepared then.
        """
        cdef PathBatch b
        memset(&b, 0, sizeof(PathBatch))
        b.opcode = IORING_OP_CLOSE
        b.direct = fixed
        return self._prep_paths(&b, None, None, fds, user_data, sqe_flags)

    cdef Py_ssize_t _prep_paths(self, PathBatch *b, tuple paths, object keep,
                                object index, object user_data, object sqe_flags) \
            except -1:
        cdef Hold *hold = NULL
        cdef Py_ssize_t done = 0
        b.sqe_flags = _u8_arg(sqe_flags, "sqe_flags") & ~IOSQE_FIXED_FILE
        self._enter_api()
        try:
            self._check_fd(0, b.sqe_flags)
            try:
                self._open_path_batch(b, paths, index, user_data)
                self._check_chain_fits(b.sqe_flags, b.n)
                if paths is not None:
                    hold = hold_object((paths, keep))
                done = self._fill_loop(NULL, b, b.n, hold)
            finally:
                if hold != NULL and hold.refs == 0:
                    hold_free(hold)
                _close_path_batch(b)
        finally:
            self._leave_api()
        return done

    cdef int _open_path_batch(self, PathBatch *b, tuple paths, object index,
                              object user_data) except -1:
        cdef Py_ssize_t i
        cdef int64_t v
        if index is not None:
            int_copy(&b.index, index, "file_indexes" if paths is not None else "fds", True)
        b.n = len(paths) if paths is not None else b.index.n
        if b.n < 0:
            raise TypeError("fds must be an array of file descriptors, not an int")
        if index is not None:
            _check_len(b.index.n, "file_indexes" if paths is not None else "fds", b.n,
                       "paths")
        if user_data is not None:
            int_copy(&b.ud, user_data, "user_data", False, True)
            _check_len(b.ud.n, "user_data", b.n, "paths")
        for i in range(b.n if index is not None else 0):
            v = ic_get(&b.index, i)
            if b.direct and not (0 <= v < self._reg_file_count or
                                 (paths is not None and v == _FILE_INDEX_ALLOC)):
                if self._reg_file_count == 0:
                    raise ValueError("direct descriptors need a registered file table: "
                                     "call register_files([-1] * n) first")
                raise ValueError(f"entry {i}: slot {v} is outside the registered file "
                                 f"table ({self._reg_file_count} slots)")
            if not b.direct and not 0 <= v <= 0x7FFFFFFF:
                raise ValueError(f"entry {i}: fd must be a non-negative file descriptor, "
                                 f"not {v}")
        if paths is not None:
            _path_pointers(b, paths)
        return 0

    cdef void _fill_reads(self, ReadBatch *b, Py_ssize_t start, uint32_t count,
                          Hold *hold) noexcept nogil:
        """Write `count` validated read SQEs, ranges start.., in one C loop."""
        cdef Py_ssize_t i, end = start + count
        cdef int64_t boff, index = 0
        cdef char *base = b.base
        cdef io_uring_sqe *sqe
        cdef Claim c
        claim_begin(&self.core, &c)
        for i in range(start, end):
            boff = _buffer_offset(b, i)
            sqe = claim_sqe(&c, _batch_user_data(&b.ud, i), hold)
            sqe.opcode = b.opcode
            sqe.flags = b.flags
            sqe.fd = <int32_t>ic_get(&b.fd, i)
            sqe.off = <uint64_t>b.off.v[i]
            sqe.len = <uint32_t>b.length.v[i]
            if b.opcode == IORING_OP_READ_FIXED:
                index = ic_get(&b.index, i)
                base = <char *>self._reg_buffers.views[index].buf
                sqe.buf_index = <uint16_t>index
            sqe.addr = <uint64_t>(base + boff)
        claim_end(&self.core, &c)
        hold.refs += count

    # ---- public: submit and reap --------------------------------------------------

    def submit(self):
        """Hand every prepared request to the kernel, an open linked chain included (which
        ends it). Returns how many requests the kernel took. Does not wait.

        Raises UringSyscallError when io_uring_enter fails (EINTR, EAGAIN and EBUSY are
        retried; Ctrl-C raises KeyboardInterrupt), and the errors common to every
        method.
        """
        self._enter_api()
        try:
            return self._submit_and_wait(0, -1.0)
        finally:
            self._leave_api()

    def submit_read(self, fd, buf, offset=0, *, nbytes=None, buf_offset=0, user_data=0):
        """prep_read, then submit, in one call: returns the read's result (the byte
        count, or -errno) when the kernel completed it inside the submit (a page-cache
        hit usually does) and its completion is the first one ready, reaping that
        completion and releasing `buf`; else None, and the read is in flight (or its
        completion waits behind others) like any submitted request. This is the
        latency path for one read at a time: one call where three cost twice as much.

        Arguments, holds and errors as prep_read and submit; nothing is prepared when
        an argument is refused. If the submit raises (Ctrl-C), the read may be in
        flight: reap or cancel it by `user_data` as any request.
        """
        cdef int64_t f = _i64_arg(fd, "fd")
        cdef int64_t off = _offset_arg(offset)
        cdef uint64_t ud = _u64_arg(user_data, "user_data")
        cdef uint64_t kernel_ud
        self._enter_api()               # one hold of the Ring from prepare to reap
        try:
            kernel_ud = self._fill_rw(IORING_OP_READ, f, buf, off, nbytes, buf_offset, ud,
                                      0, True).user_data
            self._submit_and_wait(0, -1.0)
            return self._reap_head(kernel_ud)
        finally:
            self._leave_api()

    cdef object _reap_head(self, uint64_t kernel_ud):
        """The res of the first ready completion, reaped, when it is request
        `kernel_ud`'s; else None, reaping nothing."""
        cdef uint64_t ud
        cdef int32_t res = 0
        if cq_ready(&self.core) == 0 and cq_needs_flush(&self.core):
            self._flush_cq()
        # cq_ready's acquire of the CQ tail (pairing with the kernel's release after
        # it wrote the CQEs) makes the head CQE readable; the head itself is ours
        # alone to store, so relaxed.
        if cq_ready(&self.core) == 0 or \
                self.core.cq.cqes[vy_load_relaxed(self.core.cq.khead) & self.core.cq.mask].user_data \
                != kernel_ud:
            return None
        cq_reap(&self.core, &ud, &res, NULL, 1)
        self._drop_released()
        return res

    def submit_and_wait(self, min_complete=1, timeout=None):
        """Submit what is prepared, then wait until `min_complete` completions are ready or
        `timeout` seconds pass (None: no limit); on timeout it returns normally, with
        fewer ready, and never raises TimeoutError. Returns how many requests were
        submitted; reap the completions with completions(), wait() or reap(). The GIL is
        released while it waits; Ctrl-C raises KeyboardInterrupt.

        Raises ValueError when `min_complete` exceeds what is outstanding (the wait
        could never end), UringSyscallError when io_uring_enter fails, and the errors
        common to every method.
        """
        cdef double t = _timeout_arg(timeout)
        cdef uint32_t want = _u32_arg(min_complete, "min_complete")
        self._enter_api()
        try:
            self._check_waitable(want)
            return self._submit_and_wait(want, t)
        finally:
            self._leave_api()

    def completions(self):
        """Every completion available now, without submitting or blocking, as a list of
        Completion(user_data, res, flags), possibly empty. Reaping releases what each
        request held (its buffer exports, paths). Raises the errors common to every
        method.
        """
        self._enter_api()
        try:
            return self._reap_list()
        finally:
            self._leave_api()

    def wait(self, min_complete=1, timeout=None):
        """Submit what is pending, wait until `min_complete` completions are ready or
        `timeout` seconds pass (None: no limit), and return every completion available
        as a list of Completion; on timeout it returns what is there, possibly an empty
        list, and never raises TimeoutError. Reaping releases what each request held.
        The GIL is released while it waits; Ctrl-C raises KeyboardInterrupt.

        Raises ValueError when `min_complete` exceeds what is outstanding,
        UringSyscallError when io_uring_enter fails, and the errors common to every
        method.
        """
        cdef double t = _timeout_arg(timeout)
        cdef uint32_t want = _u32_arg(min_complete, "min_complete")
        self._enter_api()
        try:
            self._check_waitable(want)
            self._submit_and_wait(want, t)
            return self._reap_list()
        finally:
            self._leave_api()

    def reap(self, user_data_out, res_out, flags_out=None, *, min_complete=0, timeout=None):
        """Copy up to len(user_data_out) completions into the caller's arrays and return
        how many: user_data_out[i], res_out[i] and flags_out[i] (optional) describe
        completion i. The arrays are writable 1-D integer buffers of equal length:
        user_data_out of 8-byte items (array('Q')), res_out of signed 4- or 8-byte items
        (array('i')), flags_out of 4- or 8-byte items (array('I')). With min_complete >
        0 it first submits what is pending and waits (GIL released) for that many, or
        until `timeout` seconds pass; with 0 it never blocks. Reaping releases what each
        request held (its buffer exports, paths). The arrays are only borrowed during
        the call.

        Raises TypeError for arrays of the wrong kind or item size, ValueError for
        arrays of unequal length or a min_complete larger than they are,
        UringSyscallError when io_uring_enter fails, and the errors common to every
        method.
        """
        cdef double t = _timeout_arg(timeout)
        cdef uint32_t want = _u32_arg(min_complete, "min_complete")
        cdef Py_ssize_t capacity = <Py_ssize_t>LLONG_MAX
        self._enter_api()
        try:
            if want:
                capacity = self._waitable_into(user_data_out, res_out, flags_out, want)
                self._submit_and_wait(want, t)
            return self._reap(user_data_out, res_out, flags_out, capacity)
        finally:
            self._leave_api()

    def submit_and_reap(self, user_data_out, res_out, min_complete=1, flags_out=None):
        """The round trip of a caller with few requests in flight, in one call: submit
        what is prepared, wait until `min_complete` completions are ready (for ever;
        Ctrl-C raises KeyboardInterrupt), and copy up to len(user_data_out) of them
        into the arrays as reap() does. Returns how many it copied. Pass the arguments
        by position: that keeps the call on the interpreter's fast path.

        The submit keeps the GIL (it never blocks), and what the kernel completes
        inside it (a NOP, a read of cached pages) needs no wait: the GIL is released
        only when a completion must be waited for. The kernel copies a cached read
        inside that submit, so for reads of many megabytes, whose copy other threads
        would wait for, submit_and_wait() and reap() release the GIL for the submit
        too.

        Raises as reap() does with min_complete > 0.
        """
        cdef uint32_t want = _u32_arg(min_complete, "min_complete")
        cdef Py_ssize_t capacity
        cdef Sinks sinks
        self._enter_api()
        try:
            try:
                capacity = _open_sinks(&sinks, user_data_out, res_out, flags_out)
                self._check_waitable_into(want, capacity)
                # The common case in one pass over borrowed arrays, where no Python
                # code may run: the submit completed enough, reap at once.
                if self._submit_held() and cq_ready(&self.core) >= want:
                    return self._reap_sinks(&sinks, capacity)
            finally:
                _close_sinks(&sinks)
                self._drop_released()
            self._submit_and_wait(want, -1.0)     # the arrays given back: it may wait
            return self._reap(user_data_out, res_out, flags_out, capacity)
        finally:
            self._leave_api()

    cdef Py_ssize_t _waitable_into(self, object ud_out, object res_out, object flags_out,
                                   uint32_t want) except -1:
        """The output arrays' common length, checked (and given back: a wait must not
        keep them borrowed), once it is known that `want` completions can be waited
        for and fit them."""
        cdef Sinks sinks
        cdef Py_ssize_t capacity
        try:
            capacity = _open_sinks(&sinks, ud_out, res_out, flags_out)
        finally:
            _close_sinks(&sinks)
        self._check_waitable_into(want, capacity)
        return capacity

    cdef int _check_waitable_into(self, uint32_t want, Py_ssize_t capacity) except -1:
        if want > capacity:
            raise ValueError(f"min_complete ({want}) exceeds the output arrays' "
                             f"length ({capacity})")
        return self._check_waitable(want)

    cdef bint _submit_held(self) noexcept:
        """Submit what is pending in one io_uring_enter, keeping the GIL (a submit
        without GETEVENTS does not wait) and running no Python code (the caller may
        hold borrowed arrays). True when nothing is left pending; anything else (a
        partial submit, an error, an SQPOLL ring) is _submit_and_wait's to finish."""
        cdef uint32_t n
        if self.core.setup_flags & IORING_SETUP_SQPOLL:
            return False
        sq_publish(&self.core)
        n = sq_pending(&self.core)
        return n == 0 or enter(&self.core, n, 0, 0, NULL, 0) == <int>n

    # ---- public: registration -------------------------------------------------------

    def probe(self):
        """The opcodes the running kernel supports (IORING_REGISTER_PROBE, Linux 5.6), as a
        frozenset of Op members (plain ints for opcodes newer than this build). Raises
        UringSyscallError when the kernel refuses the probe, and the errors common to
        every method.
        """
        cdef size_t size = sizeof(io_uring_probe) + 256 * sizeof(io_uring_probe_op)
        cdef io_uring_probe *p
        cdef int i
        self._enter_api()
        try:
            p = <io_uring_probe *>calloc(1, size)
            if p == NULL:
                raise MemoryError()
            try:
                register_checked(self.core.fd, IORING_REGISTER_PROBE, p, 256, "PROBE")
                ops = [p.ops[i].op for i in range(p.ops_len)
                       if p.ops[i].flags & IO_URING_OP_SUPPORTED]
            finally:
                free(p)
        finally:
            self._leave_api()
        known = Op._value2member_map_
        return frozenset(known.get(op, op) for op in ops)

    def register_buffers(self, buffers):
        """Register `buffers` (an iterable of 1 to 16384 writable, non-empty buffers) for
        prep_read_fixed, prep_write_fixed and prep_read_fixed_batch: the kernel pins
        their pages once instead of per request. alloc_buffer() gives page-aligned
        buffers. Returns None.

        Holds: every buffer stays exported (it cannot be resized or freed) until
        unregister_buffers() or close(), and beyond that until every fixed request using
        it has completed and been reaped.

        Raises TypeError for a read-only buffer and ValueError for an empty one (naming
        `buffers[i]`), UringSyscallError when the kernel refuses (EBUSY: buffers are
        registered already; ENOMEM: RLIMIT_MEMLOCK too low), and the errors common to
        every method.
        """
        cdef list bufs = list(buffers)
        cdef Py_ssize_t i, n = len(bufs)
        cdef Hold *hold
        if not 0 < n <= 16384:
            raise ValueError(f"register 1 to 16384 buffers, not {n}")
        self._enter_api()
        try:
            hold = hold_new(n)
            try:
                hold.iov = <iovec *>malloc(n * sizeof(iovec))
                if hold.iov == NULL:
                    raise MemoryError()
                for i in range(n):
                    hold_export(hold, bufs[i], True, f"buffers[{i}]")
                    if hold.views[i].len == 0:
                        raise ValueError(f"buffers[{i}] is empty")
                    hold.iov[i].iov_base = hold.views[i].buf
                    hold.iov[i].iov_len = hold.views[i].len
                register_checked(self.core.fd, IORING_REGISTER_BUFFERS, hold.iov, n,
                                 "REGISTER_BUFFERS")
            except BaseException:
                hold_free(hold)
                raise
            hold.refs = 1                      # the registration's own reference
            self._reg_buffers = hold
            self._reg_buffer_count = <uint32_t>n
        finally:
            self._leave_api()

    def unregister_buffers(self):
        """Unregister the buffers. Requests prepared before this call are submitted first,
        so they still find the buffers they name; fixed requests in flight keep theirs
        alive until reaped. Returns None. Raises UringSyscallError (ENXIO when none are
        registered) and the errors common to every method.
        """
        self._enter_api()
        try:
            self._submit_and_wait(0, -1.0)
            register_checked(self.core.fd, IORING_UNREGISTER_BUFFERS, NULL, 0,
                             "UNREGISTER_BUFFERS")
            self._release_registered_buffers()
        finally:
            self._leave_api()

    cdef void _release_registered_buffers(self) noexcept:
        cdef Hold *hold = self._reg_buffers
        self._reg_buffers = NULL
        self._reg_buffer_count = 0
        if hold != NULL:
            hold_unref(hold)

    def register_files(self, fds):
        """Register a file table of the fds in `fds` (an int array or a sequence of ints);
        -1 leaves a slot empty, for direct descriptors (prep_openat's file_index). With
        SQE_FIXED_FILE, requests then name a slot instead of an fd. Returns None; the
        table is copied (the kernel takes its own references to the files).

        Raises ArgumentRangeError for an entry outside -1..2**31-1, ValueError for a
        table of more than 2**20 slots or none, UringSyscallError when the kernel
        refuses (EBUSY: a table is registered already; EBADF: an fd is not open), and
        the errors common to every method.
        """
        cdef Py_ssize_t n
        cdef int32_t *table = _file_table(fds, &n)
        try:
            self._enter_api()
            try:
                register_checked(self.core.fd, IORING_REGISTER_FILES, table, n,
                                 "REGISTER_FILES")
                self._reg_file_count = n
            finally:
                self._leave_api()
        finally:
            free(table)

    def update_files(self, offset, fds):
        """Replace registered file slots offset.. with `fds` (-1 empties a slot). `offset`
        is a slot index, not a file offset. Requests prepared before this call are
        submitted first, against the table they were prepared for. Returns how many
        slots the kernel updated.

        Raises ValueError when the slots run past the registered table,
        UringSyscallError when the kernel refuses, and the errors common to every
        method.
        """
        cdef uint32_t first = _u32_arg(offset, "offset")
        cdef Py_ssize_t n
        cdef int32_t *table = _file_table(fds, &n)
        cdef io_uring_files_update up
        try:
            self._enter_api()
            try:
                if first + n > self._reg_file_count:
                    raise ValueError(f"slots {first}..{first + n - 1} are outside the "
                                     f"registered file table ({self._reg_file_count} slots)")
                self._submit_and_wait(0, -1.0)
                memset(&up, 0, sizeof(up))
                up.offset = first
                up.fds = <uint64_t><size_t>table
                return register_checked(self.core.fd, IORING_REGISTER_FILES_UPDATE, &up, n,
                                        "FILES_UPDATE")
            finally:
                self._leave_api()
        finally:
            free(table)

    def unregister_files(self):
        """Unregister the file table. Requests prepared before this call are submitted
        first, so they still find their files; requests in flight keep their files open.
        Returns None. Raises UringSyscallError (ENXIO when none is registered) and the
        errors common to every method.
        """
        self._enter_api()
        try:
            self._submit_and_wait(0, -1.0)
            register_checked(self.core.fd, IORING_UNREGISTER_FILES, NULL, 0,
                             "UNREGISTER_FILES")
            self._reg_file_count = 0
        finally:
            self._leave_api()

    def register_eventfd(self, fd):
        """Have the kernel signal eventfd `fd` (os.eventfd) each time it posts a
        completion (IORING_REGISTER_EVENTFD), so that an event loop can watch for
        completions among its other fds. A signal may come for a completion that
        was already reaped: read the counter, then reap whatever is there. One
        eventfd per ring; the ring neither owns nor closes it."""
        cdef int64_t f = _i64_arg(fd, "fd")
        cdef int32_t efd
        self._enter_api()
        try:
            self._check_fd(f, 0)
            efd = <int32_t>f
            register_checked(self.core.fd, IORING_REGISTER_EVENTFD, &efd, 1,
                             "REGISTER_EVENTFD", f"fd {f} must be an open eventfd (os.eventfd)")
        finally:
            self._leave_api()

    def unregister_eventfd(self):
        """Stop signalling the eventfd given to register_eventfd."""
        self._enter_api()
        try:
            register_checked(self.core.fd, IORING_UNREGISTER_EVENTFD, NULL, 0,
                             "UNREGISTER_EVENTFD")
        finally:
            self._leave_api()

    # ---- closing ------------------------------------------------------------------

    def close(self):
        """Cancel and drain every request in flight, release what they held (buffer
        exports, paths, registered buffers), then unmap the rings and close the fd.
        Prepared but unsubmitted requests are discarded. Idempotent; returns None.

        Raises RingBusyError when another thread is using the ring (close it from
        there). Ctrl-C during the drain raises KeyboardInterrupt with the ring still
        open and consistent: call close() again. In a forked child it only releases the
        child's copy, never touching the parent's requests.
        """
        if self._closed:
            return
        if self._fork_gen != vy_fork_gen():
            self._teardown()               # the parent's ring: never cancel or drain it
            return
        if not vy_try_lock(&self._busy):
            raise RingBusyError("another thread is using this Ring; close it from there")
        try:
            self._cancel_and_drain(True)
        finally:
            self._leave_api()
        self._teardown()

    def __enter__(self):
        if self._closed:
            raise RingClosedError("the Ring is closed")
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if self._closed:
            return
        warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self)
        if self._fork_gen == vy_fork_gen():
            self._cancel_and_drain(False)
        self._teardown()

    def __dealloc__(self):
        if not self._closed:
            if self._fork_gen == vy_fork_gen():
                self._cancel_and_drain(False)
            self._teardown()

    cdef int _cancel_and_drain(self, bint interruptible) except -1:
        """Discard unsubmitted requests, cancel the rest and reap until none is left.
        When `interruptible`, Ctrl-C stops the drain with the ring still open and
        consistent. If the kernel refuses to cancel or drain (a single-issuer ring
        closed from another thread) or requests outlive _DRAIN_PATIENCE_S, their
        memory is kept alive for ever instead (closing the fd cancels them)."""
        cdef double deadline
        self._discard_unsubmitted()
        if slots_used(&self.core) == 0:
            return 0
        if not self._cancel_all():
            self._leak_outstanding("the kernel refused to cancel them (a single-issuer "
                                   "ring closed from another thread?)")
            return 0
        deadline = vy_monotonic() + _DRAIN_PATIENCE_S
        while slots_used(&self.core) > 0:
            if vy_monotonic() > deadline:
                self._leak_outstanding(f"they did not finish within {_DRAIN_PATIENCE_S:.0f} "
                                       f"s of being cancelled")
                return 0
            if not self._drain_step(interruptible):
                self._leak_outstanding("the kernel refused to reap them (a single-issuer "
                                       "ring closed from another thread?)")
                return 0
        return 0

    cdef void _discard_unsubmitted(self) noexcept:
        """Roll back SQEs the kernel has not consumed: their slots and holds go back.
        (Under SQPOLL the kernel thread may be reading them: they are submitted.)"""
        cdef uint32_t khead, idx
        if self.core.setup_flags & IORING_SETUP_SQPOLL:
            sq_publish(&self.core)
            return
        khead = vy_load_acquire(self.core.sq.khead)   # pairs with the kernel's head release
        # Unpublish first (the kernel reads the SQ only inside our enter, which no one
        # else can make now), so that the tables agree at every slot freed below.
        # Release: pairs with the kernel's tail acquire, as in sq_publish.
        vy_store_release(self.core.sq.ktail, khead)
        self.core.sq.published = khead
        self.core.sq.chain_open = False
        while self.core.sq.tail != khead:
            self.core.sq.tail -= 1
            idx = slot_of(&self.core, self.core.sq.sqes[self.core.sq.tail & self.core.sq.mask].user_data)
            if idx != NO_SLOT:                    # not an internal SQE
                free_slot(&self.core, idx)
        self._drop_released()

    cdef bint _cancel_all(self) noexcept:
        """Cancel every request: IORING_ASYNC_CANCEL_ANY (5.19), or on older kernels
        one cancel per request. False when the kernel refuses the submission."""
        cdef uint32_t i
        self.core.internal_res = 0
        if not sq_push_internal(&self.core, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL, 0):
            return False
        if self._enter_quietly(1) < 0:
            self._discard_unsubmitted()
            return False
        if self.core.internal_res != -EINVAL:
            return True
        for i in range(self.core.st.n):
            if self.core.st.slots[i].live:
                if self.core.sq.entries == sq_pending(&self.core) and self._enter_quietly(0) < 0:
                    break
                sq_push_internal(&self.core, 0, kernel_user_data(i, self.core.st.seqs[i]))
        if self._enter_quietly(0) < 0:
            self._discard_unsubmitted()
            return False
        return True

    cdef int _enter_quietly(self, uint32_t wait_nr) noexcept:
        """Submit the engine's own SQEs, optionally wait, reap and discard; returns
        the syscall's result (EINTR retried a few times)."""
        cdef int ret = -EINTR, tries = 0
        cdef uint32_t to_submit = 0
        if not (self.core.setup_flags & IORING_SETUP_SQPOLL):
            to_submit = sq_pending(&self.core)
        while ret == -EINTR and tries < 100:
            tries += 1
            with nogil:
                ret = enter(&self.core, to_submit, wait_nr,
                                 IORING_ENTER_GETEVENTS | IORING_ENTER_SQ_WAKEUP, NULL, 0)
        self._reap_discard()
        return ret

    cdef void _reap_discard(self) noexcept:
        cdef uint32_t i
        for i in range(4):                 # flush overflow a few times, then re-wait
            cq_reap(&self.core, self.core.scratch_ud, self.core.scratch_res, NULL, self.core.st.n)
            self._drop_released()
            if not (vy_load_relaxed(self.core.sq.kflags) & IORING_SQ_CQ_OVERFLOW):
                return
            self._flush_cq()

    cdef int _drain_step(self, bint interruptible) except -1:
        """Wait up to 0.2 s for completions and discard them. Returns 0 when the
        kernel refuses (the drain cannot progress), 1 otherwise."""
        cdef vy_getevents_arg arg
        cdef vy_timespec ts
        cdef int ret
        ts.tv_sec = 0
        ts.tv_nsec = 200000000             # re-check the drain deadline every 0.2 s
        memset(&arg, 0, sizeof(arg))
        arg.ts = <uint64_t><size_t>&ts
        with nogil:
            if self.core.features & IORING_FEAT_EXT_ARG:
                ret = enter(&self.core, 0, 1, IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG,
                                 &arg, sizeof(arg))
            else:
                ret = vy_poll_in(self.core.fd, 200)
        if ret == -EINTR and interruptible:
            PyErr_CheckSignals()
        self._reap_discard()
        return ret >= 0 or ret in (-EINTR, -ETIME, -EAGAIN, -EBUSY)

    cdef void _leak_outstanding(self, str why) noexcept:
        """Keep every outstanding request's memory alive for ever: the kernel's ring
        teardown may still write into it after we close the fd."""
        cdef uint32_t i
        for i in range(self.core.st.n):
            if self.core.st.slots[i].live:
                self.core.st.slots[i].hold = NULL
                self.core.st.slots[i].live = False
        if self._reg_buffers != NULL:
            self._reg_buffers.refs += 1     # never reaches zero
        self.core.st.free_top = self.core.st.n       # the table is freed next, unused
        warnings.warn(f"Ring.close: {why}; the buffers of the requests still in flight "
                      f"are kept alive for ever", ResourceWarning)

    cdef void _teardown(self) noexcept:
        """Unmap, close, and release every hold; nothing may be in flight any more
        (or this is a forked child, where the kernel writes only into the parent)."""
        cdef uint32_t i
        cdef Hold *hold
        self._closed = True
        self.core.inherited = self._fork_gen != vy_fork_gen()
        # (_busy read plainly: a forked child has only this thread.)
        if self.core.st.slots != NULL and not (self.core.inherited and self._busy):
            # Only the holds are let go: the tables are freed next, so the free stack
            # is not touched. In a forked child whose parent had a thread inside this
            # ring (busy) the tables are a snapshot taken in the middle of that
            # thread's fill or reap (slots live but still counted free, a hold's
            # count one off): its holds are leaked there, never freed twice.
            self._drop_released()
            for i in range(self.core.st.n):
                hold = self.core.st.slots[i].hold
                if self.core.st.slots[i].live and hold != NULL:
                    self.core.st.slots[i].hold = NULL
                    hold_unref(hold)
        self._unregister_ring_fd()
        self._release_registered_buffers()
        self._unmap()
        if self.core.fd >= 0:
            close(self.core.fd)
            self.core.fd = -1
        self._free_tables()

    cdef void _free_tables(self) noexcept:
        free(self.core.st.slots)
        free(self.core.st.released)
        free(self.core.scratch_ud)
        free(self.core.scratch_res)
        free(self.core.scratch_flags)
        free(self.core.st.seqs)
        free(self.core.st.ts)
        free(self.core.st.free_stack)
        self.core.st.free_stack = NULL
        self.core.st.seqs = NULL
        self.core.st.ts = NULL
        self.core.st.slots = NULL
        self.core.st.released = NULL
        self.core.scratch_ud = NULL
        self.core.scratch_res = NULL
        self.core.scratch_flags = NULL

    cdef void _unmap(self) noexcept:
        if self.core.sq.sqes != NULL:
            munmap(self.core.sq.sqes, self.core.maps.sqes_len)
            self.core.sq.sqes = NULL
        if self.core.maps.cq != NULL and self.core.maps.cq != self.core.maps.sq:
            munmap(self.core.maps.cq, self.core.maps.cq_len)
        self.core.maps.cq = NULL
        if self.core.maps.sq != NULL:
            munmap(self.core.maps.sq, self.core.maps.sq_len)
            self.core.maps.sq = NULL



# ---- the engine's API (declared in _ring.pxd) ----------------------------------------
# The reader's engine drives a Ring through these and the core's free functions
# (_queues.pxd); a Ring's other fields and methods are this module's alone.

cdef RingCore *ring_core(object ring) except NULL:
    """The core of `ring`, which must be a Ring. Its tables exist only while the
    ring is open: use them between ring_acquire and ring_release."""
    if not isinstance(ring, Ring):
        raise TypeError(f"ring must be a vyre_uring.Ring, not {type(ring).__name__}")
    return &(<Ring>ring).core


cdef RingCore *ring_acquire(object ring) except NULL:
    """The guards every public method passes (open, not inherited across fork, no other
    thread inside); returns the core. Pair with ring_release in a finally; the other
    functions below are for the time in between."""
    cdef RingCore *r = ring_core(ring)
    (<Ring>ring)._enter_api()
    return r


cdef void ring_release(object ring) noexcept:
    (<Ring>ring)._leave_api()


cdef int ring_submit_and_wait(object ring, uint32_t min_complete, double timeout) \
        except -1:
    """Submit everything prepared and wait as Ring.submit_and_wait does (signals run
    their handlers: Ctrl-C raises)."""
    return (<Ring>ring)._submit_and_wait(min_complete, timeout)


cdef Py_ssize_t ring_reap(object ring) except -1:
    """Reap every ready completion into the core's scratch arrays, releasing the
    holds of the requests that ended; returns how many."""
    return (<Ring>ring)._reap(None, None, None, (<Ring>ring).core.st.n)


cdef bint ring_buffer_is_fixed(object ring, const void *buf) noexcept:
    """True when `buf` is where the ring's registered buffer 0 starts."""
    cdef Ring r = <Ring>ring
    return r._reg_buffer_count > 0 and r._reg_buffers.views[0].buf == buf
