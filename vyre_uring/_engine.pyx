# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: embedsignature=True
"""The reader's engine: jobs that open, size, read and close many files, or read
many byte ranges, through a Ring, one Python call per batch (reader.py and
_uring_backend.py are its API). It drives the ring through the ring module's C API
(_ring.pxd) and the core's free functions (_queues.pxd), never a Ring's fields."""
import array
import os

cimport cython
from cpython cimport array as carray
from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_SIMPLE, PyBUF_WRITABLE,
                             PyBuffer_Release, PyObject_GetBuffer)
from cpython.bytes cimport PyBytes_AS_STRING
from cpython.exc cimport PyErr_CheckSignals, PyErr_Clear
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.errno cimport EAGAIN, EBUSY, EINTR, EINVAL, ENOMEM, ETIME, errno
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t, UINT32_MAX
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset, strlen
from posix.stat cimport fstat, struct_stat as stat_t

from vyre_uring.includes.kernel cimport *
from vyre_uring._queues cimport *
from vyre_uring._ring cimport *

from vyre_uring._files import path_error, pread_to_eof
from vyre_uring.errors import UringError, syscall_error

__all__ = ["ARENA_MAX", "Arena", "ByteBudget", "CallStopped", "CopyOps", "DEFERRED",
           "DIRECT_ALIGN", "DIRECT_CHUNK", "GROWN", "GROW_LATER", "GROW_NEVER",
           "MAX_PIECE", "NOT_REGULAR", "NUL_BYTE", "OVER_BUDGET", "PREAD_PIECE", "Packing",
           "StagePlan", "Stop", "UNSIZED_FIRST", "check_ranges", "drain_jobs",
           "group_paths", "read_file_window", "read_path_ranges_job",
           "read_ranges_job", "run_call", "run_stage_lane", "run_task",
           "with_file", "with_files"]

# The reader's C core: whole files (openat -> fstat -> read -> close) and byte ranges
# of one file, driven through a Ring with one Python call per batch of files or
# ranges, however many requests that takes.
#
# Every file or range is an item. Its requests carry the user_data
#     kind << 56 | job id << 32 | item
# so the completions of a job that ended early (an exception while waiting) are
# recognised and ignored by later jobs, and the fds their opens returned are closed.
#
# A job runs without the GIL: opening, sizing, reading, resubmitting short reads and
# closing are one nogil loop (_job_steps), which comes back to the GIL only to run
# signal handlers, to give large files their bytes objects, and once at the end.
# Small files (up to ARENA_MAX bytes) are read into the ring's arena, memory reused
# from job to job (so already faulted in), and copied into their bytes objects in
# that last pass; larger ones are read straight into their final bytes objects,
# which stay referenced by the job's Hold until their last read completes. O_DIRECT
# reads go through page-aligned bounce slots and are copied. Files that report
# size 0 (empty, /proc, sysfs) are read to EOF in growing pieces of the job's own
# memory, within the byte budget when there is one.
#
# A job that ends early (an exception, or its call's Stop) cancels what it has in
# flight and waits for it before the exception leaves: no read it started writes
# into a buffer after the call is over, and no fd it opened is left behind.

from cpython.bytes cimport PyBytes_FromStringAndSize

cdef extern from "Python.h":
    bytes PyUnicode_EncodeFSDefault(object)
    const char *PyUnicode_AsUTF8AndSize(object, Py_ssize_t *) except NULL
    Py_ssize_t PY_SSIZE_T_MAX
    void PyObject_GC_UnTrack(PyObject *)

cdef extern from *:
    """
    /* Whether a str is all ASCII. Before 3.12 a str made through the legacy C API
       may not be "ready", which PyUnicode_IS_ASCII asserts in debug builds. */
    static int vy_str_is_ascii(PyObject *s) {
    #if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(s) < 0)
            return -1;
    #endif
        return PyUnicode_IS_ASCII(s) ? 1 : 0;
    }
    """
    int vy_str_is_ascii(object) except -1
from posix.fcntl cimport F_GETFL, F_SETFL, fcntl, open as c_open
from posix.mman cimport madvise, MADV_HUGEPAGE
from libc.errno cimport EFBIG, EINTR, EMFILE, ENFILE, ENOBUFS, ENOSYS
from libc.stdlib cimport realloc
from libc.stdint cimport INT64_MAX
from posix.unistd cimport pread, usleep
from posix.stat cimport S_ISREG

cdef extern from "<sys/vfs.h>" nogil:
    ctypedef struct vy_statfs "struct statfs":
        long f_type
    int c_statfs "statfs"(const char *path, vy_statfs *buf)
    int c_fstatfs "fstatfs"(int fd, vy_statfs *buf)

# FUSE (statfs f_type). Linux 6.18 gets io_uring reads of a FUSE file opened with
# FOPEN_DIRECT_IO wrong: when the server answers short (at EOF, or before it), the
# kernel asks for the rest again at the first offset, and the read completes full
# with the file's start repeated in it (tests/test_fuse.py shows it). We cannot tell
# such a file from userspace, so every FUSE file is read with pread, which is right.
cdef long _FUSE_SUPER_MAGIC = 0x65735546

cdef extern from "counters.h" nogil:
    int64_t vy_i64_load(const int64_t *p)
    int64_t vy_i64_add(int64_t *p, int64_t delta)
    bint vy_i64_cas(int64_t *p, int64_t expected, int64_t desired)
    bint vy_flag_get(const int *p)
    void vy_flag_set(int *p)

cdef enum:
    KIND_OPEN = 1
    KIND_READ = 2
    KIND_CLOSE = 3
    KIND_OPEN_DIRECT = 5    # direct descriptors: opened into the ring's file table

# Item errors that are not errnos: the Python side turns them into OSErrors.
cdef enum:
    ITEM_NOT_REGULAR = -1   # the mode says what it is
    ITEM_OVER_BUDGET = -2   # holds more than the byte budget lets one file take
    ITEM_NUL_BYTE = -3      # the path holds a NUL byte
    ITEM_DEFERRED = -4      # not read: the job's byte budget was spent

NOT_REGULAR = ITEM_NOT_REGULAR
OVER_BUDGET = ITEM_OVER_BUDGET
NUL_BYTE = ITEM_NUL_BYTE
DEFERRED = ITEM_DEFERRED

# A file that reports size 0 is read into this much memory first, doubled as needed.
UNSIZED_FIRST = 64 << 10
cdef int64_t _UNSIZED_FIRST = UNSIZED_FIRST
# ...plus this much room past what the budget reserved: a read that reaches into it
# shows the file holds more, without another request. A multiple of 8 bytes, as
# /proc/self/pagemap wants its reads.
cdef int64_t _UNSIZED_SLACK = 4096

# ByteBudget.grow's answers.
cdef enum:
    BUDGET_GROWN = 0
    BUDGET_LATER = 1        # not now: other files hold the rest of the budget
    BUDGET_NEVER = 2        # the file alone would exceed the whole budget

GROWN = BUDGET_GROWN
GROW_LATER = BUDGET_LATER
GROW_NEVER = BUDGET_NEVER

# One read request carries at most this much: Linux caps a single read near 2 GiB.
MAX_PIECE = 1 << 30
cdef int64_t _MAX_PIECE = MAX_PIECE
# At most this much per pread of a file the ring must not read (_read_now): the job
# sees its call's Stop between two (a 1 GiB pread from a network FUSE server would
# hold it for as long as that takes).
PREAD_PIECE = 8 << 20
cdef int64_t _PREAD_PIECE = PREAD_PIECE

# O_DIRECT: file offsets, lengths and memory aligned to 4096 bytes suit every
# logical block size up to 4 KiB; each direct read moves at most one bounce slot.
DIRECT_ALIGN = 4096
DIRECT_CHUNK = 256 << 10
cdef int64_t _ALIGN = DIRECT_ALIGN
cdef int64_t _CHUNK = DIRECT_CHUNK
cdef int _O_DIRECT = os.O_DIRECT
cdef int _O_CLOEXEC = os.O_CLOEXEC

include "_engine_calls.pxi"

cdef uint32_t _next_job_id = 0
# fds that jobs (on every ring of the process) have opened and not yet closed; an
# atomic, as jobs run without the GIL. A job that meets EMFILE while other jobs
# hold fds waits for them rather than failing the file.
cdef int64_t _fds_held = 0
# fds that jobs have closed, ever: a wait for other jobs' fds measures its patience
# from the last close, so that it goes on while they read and close files. Relaxed,
# as _fds_held (counters.h): it is only compared with an earlier value of itself,
# and publishes nothing.
cdef int64_t _fds_closed = 0


def _forget_fds_in_child():
    """A forked child holds none of the fds its parent's jobs were holding."""
    global _fds_held
    _fds_held = 0


os.register_at_fork(after_in_child=_forget_fds_in_child)
# How long a job waits for other jobs' fds, with none of them closed meanwhile,
# before EMFILE fails a file after all.
cdef double _FD_WAIT_S = 5.0
cdef double _FD_GRACE_S = 0.02


cdef inline double _fd_patience() noexcept nogil:
    """How long an open at the fd limit may keep trying: other jobs' fds may be
    closed (_FD_WAIT_S); with none held, only closes still being carried out
    (_FD_GRACE_S)."""
    return _FD_WAIT_S if vy_i64_load(&_fds_held) > 0 else _FD_GRACE_S


cdef bint _may_wait_for_fds(double *since, int64_t *closed) noexcept nogil:
    """At the fd limit, with no fd of one's own to close: whether to keep trying.
    The patience counts from the first refusal (since[0] == 0 before it) or from
    the last fd a job closed after it (closed[0]: _fds_closed then): files other
    jobs read slowly (FUSE, a cold disk) hold their fds long, but a wait that sees
    them closed is not stuck."""
    cdef double now = vy_monotonic()
    cdef int64_t c = vy_i64_load(&_fds_closed)
    if since[0] == 0 or c != closed[0]:
        since[0] = now
        closed[0] = c
    return now - since[0] < _fd_patience()


cdef inline void _fds_gone(int64_t n) noexcept nogil:
    """n fds that jobs held are closed (or handed to the kernel, which closes them)."""
    vy_i64_add(&_fds_held, -n)
    vy_i64_add(&_fds_closed, n)

# Results at least this large ask for transparent huge pages: the kernel then
# faults their memory in 2 MiB at a time, not 4 KiB, which on a VM is most of
# the cost of reading a large file into fresh memory.
cdef int64_t _HUGE_RESULT = 8 << 20
cdef size_t _HUGE_PAGE = 2 << 20


def _test_set_limits(int64_t max_piece, int64_t direct_align):
    """Tests only: shrink the piece size, so that reads in many pieces can be tested
    without gigabytes of data, or the O_DIRECT alignment, so that a filesystem
    refuses the reads. Returns the previous (max_piece, direct_align)."""
    global _MAX_PIECE, _ALIGN
    if not (1 <= max_piece <= MAX_PIECE and 1 <= direct_align <= DIRECT_ALIGN and
            DIRECT_CHUNK % direct_align == 0):
        raise ValueError("limits out of range")
    old = (_MAX_PIECE, _ALIGN)
    _MAX_PIECE, _ALIGN = max_piece, direct_align
    return old


cdef struct Budget:
    # limit, largest and unsized_cap are set when the ByteBudget is made, before any
    # job sees it, and never change: plain reads suffice.
    int64_t limit
    int64_t largest         # the most one file may hold (INT64_MAX: no such limit)
    int64_t unsized_cap     # the most a file that reports size 0 may hold
    int64_t taken           # atomic: the jobs of several rings take from it at once
    int spent               # atomic flag: open no more files


@cython.final
cdef class ByteBudget:
    """The bytes a batch's results may take together, shared by the jobs (and
    threads) reading it: a file is taken while its size fits what is left, and the
    first file always fits, unless it is larger than `largest` (then it is not read:
    the caller reads it in pieces). Jobs use it without the GIL (atomics)."""
    cdef Budget b

    def __cinit__(self, int64_t limit, largest=None):
        if limit < 1:
            raise ValueError(f"a byte budget must be >= 1, not {limit}")
        if largest is not None and not 1 <= largest <= limit:
            raise ValueError(f"the largest file must be 1 to {limit} bytes, not {largest}")
        self.b.limit = limit
        self.b.largest = INT64_MAX if largest is None else largest
        # A file that reports size 0 is read into memory grown as it fills: it may
        # never hold more than the whole budget.
        self.b.unsized_cap = min(limit, self.b.largest)

    @property
    def limit(self):
        return self.b.limit

    @property
    def largest(self):
        """The most one file may hold, None when only the budget limits it."""
        return None if self.b.largest == INT64_MAX else self.b.largest

    @property
    def unsized_cap(self):
        """The most a file that reports size 0 may hold."""
        return self.b.unsized_cap

    @property
    def taken(self):
        return vy_i64_load(&self.b.taken)

    @property
    def spent(self):
        return vy_flag_get(&self.b.spent)

    def take(self, int64_t size):
        """Reserve `size` bytes; False (and spent from then on) when they do not fit."""
        return _budget_take(&self.b, size)

    def grow(self, int64_t own, int64_t extra):
        """A file that reports size 0 and holds `own` bytes of the budget needs
        `extra` more: GROWN (reserved), GROW_LATER (other files hold what it needs:
        give `own` back and read it in a later batch) or GROW_NEVER (it alone would
        hold more than unsized_cap)."""
        return _budget_grow(&self.b, own, extra)

    def give_back(self, int64_t size):
        """Return a reservation whose file was not read after all."""
        vy_i64_add(&self.b.taken, -size)


cdef struct PackState:
    # base, size and align are set when the Packing is made, before any job sees it.
    char *base
    int64_t size
    int64_t align           # a power of two: where a file may start
    int64_t used            # atomic: the jobs of several rings take from it at once
    int64_t *offsets        # per file: where its bytes start; -1 while it has none
    int64_t *lengths        # per file: how many bytes it holds


@cython.final
@cython.no_gc_clear         # the C pointers into offsets and lengths live until dealloc
cdef class Packing:
    """The caller's buffer of a read_files_into call, filled by the jobs of every ring
    at once: a file takes its size from what is left (one atomic per file), so files
    lie packed in the order they were sized, and `offsets` / `lengths` (array('q'),
    one per file, offsets -1 until placed) say where. The buffer stays exported (a
    bytearray cannot be resized meanwhile) while the Packing lives."""
    cdef PackState p
    cdef Py_buffer view
    cdef bint has_view
    cdef readonly object offsets, lengths

    def __cinit__(self, buffer, Py_ssize_t n, int64_t align=1):
        if align < 1 or align & (align - 1):
            raise ValueError(f"align must be a power of two, not {align}")
        self.offsets = array.array("q", [-1]) * n
        self.lengths = array.array("q", bytes(8 * n))
        try:
            PyObject_GetBuffer(buffer, &self.view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS)
        except (BufferError, TypeError) as exc:
            raise TypeError(f"buffer must be a writable contiguous buffer (bytearray, "
                            f"numpy array, mmap...), not {type(buffer).__name__}: "
                            f"{exc}") from None
        self.has_view = True
        self.p.base = <char *>self.view.buf
        self.p.size = self.view.len
        self.p.align = align
        self.p.offsets = <int64_t *>(<carray.array>self.offsets).data.as_chars
        self.p.lengths = <int64_t *>(<carray.array>self.lengths).data.as_chars

    @property
    def buffer(self):
        # The export's own reference: a collector clearing the Packing cannot drop
        # the buffer while it is still exported.
        return <object>self.view.obj

    @property
    def used(self):
        """Bytes of the buffer taken so far (alignment padding included)."""
        return vy_i64_load(&self.p.used)

    def take(self, int64_t size):
        """Where `size` bytes now start in the buffer (taken), or -1 when they do
        not fit: for the thread backend, which fills the buffer itself."""
        return _pack_take(&self.p, size)

    def __dealloc__(self):
        # Only here: a read in flight holds the Packing (through its job's hold), so
        # the export outlives every write into the buffer.
        if self.has_view:
            PyBuffer_Release(&self.view)


cdef int64_t _pack_take(PackState *p, int64_t size) noexcept nogil:
    """Where `size` bytes now start in the buffer, or -1 when they do not fit (an
    empty file always fits: at the end, when no aligned start is left)."""
    cdef int64_t used = vy_i64_load(&p.used)
    cdef int64_t start
    while True:
        start = (used + p.align - 1) & ~(p.align - 1)
        if start > p.size or size > p.size - start:
            return -1 if size else min(used, p.size)
        if vy_i64_cas(&p.used, used, start + size):
            return start
        used = vy_i64_load(&p.used)


cdef bint _budget_take(Budget *b, int64_t size) noexcept nogil:
    cdef int64_t taken
    while True:
        if vy_flag_get(&b.spent):
            return False
        taken = vy_i64_load(&b.taken)
        if taken and size > b.limit - taken:
            vy_flag_set(&b.spent)
            return False
        if vy_i64_cas(&b.taken, taken, taken + size):
            if taken + size >= b.limit:
                vy_flag_set(&b.spent)
            return True


cdef int _budget_grow(Budget *b, int64_t own, int64_t extra) noexcept nogil:
    cdef int64_t taken
    if own + extra > b.unsized_cap:
        return BUDGET_NEVER
    while True:
        taken = vy_i64_load(&b.taken)
        if extra > b.limit - taken:
            vy_flag_set(&b.spent)
            return BUDGET_LATER
        if vy_i64_cas(&b.taken, taken, taken + extra):
            if taken + extra >= b.limit:
                vy_flag_set(&b.spent)
            return BUDGET_GROWN


# The arena: where a ring's jobs read small files, in blocks of which the first
# _ARENA_KEEP bytes are kept from job to job (their pages stay faulted in); the
# rest go back as soon as the job's results are copied out.
ARENA_MAX = 64 << 10                # larger files are read into their bytes objects
cdef int64_t _ARENA_MAX = ARENA_MAX
cdef size_t _ARENA_BLOCK = 4 << 20
cdef size_t _ARENA_KEEP = 4 << 20


cdef struct ArenaBlock:
    char *base
    size_t size, used


cdef struct ArenaState:
    ArenaBlock *blocks
    Py_ssize_t n, cap, cur


@cython.final
cdef class Arena:
    """A ring's arena (one job at a time uses it)."""
    cdef ArenaState a

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.a.n):
            free(self.a.blocks[i].base)
        free(self.a.blocks)


cdef char *_arena_alloc(ArenaState *a, size_t size) noexcept nogil:
    """`size` bytes of the arena (8-byte aligned), or NULL without memory."""
    cdef ArenaBlock *blk
    cdef void *p
    size = (size + 7) & ~(<size_t>7)
    while a.cur < a.n:
        blk = &a.blocks[a.cur]
        if blk.size - blk.used >= size:
            blk.used += size
            return blk.base + blk.used - size
        a.cur += 1
    if a.n == a.cap:
        p = realloc(a.blocks, (a.cap * 2 + 4) * sizeof(ArenaBlock))
        if p == NULL:
            return NULL
        a.blocks = <ArenaBlock *>p
        a.cap = a.cap * 2 + 4
    blk = &a.blocks[a.n]
    blk.size = max(size, _ARENA_BLOCK)
    blk.base = <char *>malloc(blk.size)
    if blk.base == NULL:
        return NULL
    blk.used = size
    a.cur = a.n
    a.n += 1
    return blk.base


cdef void _arena_reset(ArenaState *a) noexcept nogil:
    """Every block free again; blocks past the first ARENA_KEEP bytes go back."""
    cdef Py_ssize_t i, kept = 0
    cdef size_t total = 0
    for i in range(a.n):
        if total + a.blocks[i].size <= _ARENA_KEEP:
            total += a.blocks[i].size
            a.blocks[i].used = 0
            a.blocks[kept] = a.blocks[i]
            kept += 1
        else:
            free(a.blocks[i].base)
    a.n = kept
    a.cur = 0


cdef struct Job:
    Py_ssize_t n
    void *block             # the per-item arrays below live in this one allocation
    uint32_t id             # 24 bits, in bits 32..55 of every request's user_data
    uint64_t tag            # id << 32
    bint close_fds          # files: close each fd when its item is done
    int open_flags
    const char **paths      # files: NULL where the path was refused
    int32_t *fd             # -1 when not open
    int64_t *off            # the item's first byte in its file
    int64_t *want           # bytes wanted (unsized: its buffer, less the slack)
    int64_t *got            # bytes read so far
    char **dest             # where the item's bytes go
    char **fill             # files: a new bytes object's memory that _copy_out copies
                            # dest into, or NULL
    int32_t *err            # 0, an errno, or an ITEM_* code
    int32_t *mode           # files: st_mode
    uint8_t *unsized        # files: reports size 0; dest is the job's, grown to EOF
    uint8_t *copied         # files: dest is job memory (arena, or malloc'd when
                            # unsized), copied into a bytes object at the end
    uint8_t *sync           # read with pread, not the ring (_untrusted_fs); fd is
                            # then an fd of the process, closed here when done
    bint fs_known           # the last device a file was checked on (_untrusted_fs)...
    uint64_t fs_dev
    bint fs_fuse            # ...and whether it is FUSE
    bint eintr              # a pread was cut short by a signal: see to it
    Py_ssize_t *allocq      # files: items waiting for a bytes object (the GIL)
    Py_ssize_t nalloc
    ArenaState *arena
    Py_ssize_t next_open    # files: first item not yet opened
    Py_ssize_t *retry       # files: items to open again (EMFILE), nretry of them
    Py_ssize_t nretry
    Py_ssize_t opening      # opens in flight
    Py_ssize_t held         # fds the job opened and has not handed to a close
    Py_ssize_t closing      # fds in close requests not yet submitted
    Py_ssize_t fd_cap       # at most this many opening + held (lowered by EMFILE)
    double fd_wait_since    # > 0: waiting for other jobs' fds since then...
    int64_t fd_wait_closed  # ...when _fds_closed was this (_may_wait_for_fds)
    bint fd_wait            # an open met EMFILE while only other jobs held fds
    Py_ssize_t *readq       # a ring of items waiting for a read request (capacity n)
    Py_ssize_t rq_head, rq_len
    int32_t *closeq         # fds waiting for a close request (capacity n)
    Py_ssize_t cq_len
    Py_ssize_t left         # items not yet done
    Py_ssize_t depth        # at most this many opens and reads in flight
    Py_ssize_t busy         # opens and reads in flight
    bint fixed_file         # ranges: the items' file is a registered file of the ring,
    int32_t fixed_index     # at this index (the reads name it; fd stays for pread)
    char *bounce            # direct: `depth` page-aligned slots of _CHUNK bytes
    int bounce_index        # the bounce's registered buffer index, or -1
    uint8_t *direct         # per item: read with O_DIRECT, through a bounce slot
    int32_t *slot           # per item: its bounce slot while its read is in flight
    int32_t *free_slots     # bounce slots not in use, nfree of them
    Py_ssize_t nfree
    Budget *budget          # files: a ByteBudget's (the caller holds it), or NULL
    PackState *pack         # files: read into the caller's buffer (read_files_into)
    bint table              # files: direct descriptors in the ring's file table; fd
                            # holds a slot, and a statx before the open sizes it
    statx *stx              # table: each item's statx
    Py_ssize_t *openq       # table: statx'd regular files to open again (the table
                            # was full)
    Py_ssize_t oq_len
    int64_t *pack_offsets   # ...and this window's offsets there (the Packing's)
    int *stop               # the call's Stop flag (the caller holds it), or NULL
    bint spent              # the budget is spent: open no more files
    int enter_err           # the -errno of a failed io_uring_enter
    int64_t syscalls, ops, short_reads, sync_reads, direct_fallbacks, nbytes


cdef void _advise_huge(char *p, int64_t size) noexcept nogil:
    """Ask for huge pages over the 2 MiB-aligned interior of a fresh result (advice:
    refused or not, nothing changes but speed)."""
    cdef size_t start, end
    if size < _HUGE_RESULT:
        return
    start = (<size_t>p + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
    end = (<size_t>p + <size_t>size) & ~(_HUGE_PAGE - 1)
    if end > start:
        madvise(<void *>start, end - start, MADV_HUGEPAGE)


# How many per-item arrays _job_alloc carves (each may take 7 bytes of padding).
cdef enum:
    _JOB_ARRAYS = 19


cdef inline void *_carve(char **cursor, Py_ssize_t m, size_t size) noexcept nogil:
    """The next m elements of `size` bytes from a job's block, 8-byte aligned."""
    cdef void *p = cursor[0]
    cursor[0] += (<size_t>m * size + 7) & ~(<size_t>7)
    return p


cdef int _job_alloc(Job *j, Py_ssize_t n) except -1:
    """The job's per-item arrays, carved from one zeroed block: one allocation (a
    million ranges made seventeen mmaps, and as many munmaps, each stopping every
    other thread of the process to flush its TLB), which the first nogil pass over
    the items faults in."""
    global _next_job_id
    memset(j, 0, sizeof(Job))
    cdef Py_ssize_t m = max(n, 1)
    # The arrays carved below, by element type; each is padded to 8 bytes.
    cdef size_t per_item = (3 * sizeof(char *) + 3 * sizeof(int64_t) +
                            4 * sizeof(Py_ssize_t) + 5 * sizeof(int32_t) +
                            4 * sizeof(uint8_t))
    cdef char *cursor
    j.n = n
    j.left = n
    j.id = _next_job_id & 0xFFFFFF
    j.tag = (<uint64_t>j.id) << 32
    j.fd_cap = PY_SSIZE_T_MAX
    _next_job_id += 1
    if <size_t>m > (<size_t>PY_SSIZE_T_MAX - _JOB_ARRAYS * 8) // per_item:
        raise MemoryError()
    j.block = calloc(1, <size_t>m * per_item + _JOB_ARRAYS * 8)
    if j.block == NULL:
        raise MemoryError()
    cursor = <char *>j.block
    j.paths = <const char **>_carve(&cursor, m, sizeof(char *))
    j.dest = <char **>_carve(&cursor, m, sizeof(char *))
    j.fill = <char **>_carve(&cursor, m, sizeof(char *))
    j.off = <int64_t *>_carve(&cursor, m, sizeof(int64_t))
    j.want = <int64_t *>_carve(&cursor, m, sizeof(int64_t))
    j.got = <int64_t *>_carve(&cursor, m, sizeof(int64_t))
    j.allocq = <Py_ssize_t *>_carve(&cursor, m, sizeof(Py_ssize_t))
    j.retry = <Py_ssize_t *>_carve(&cursor, m, sizeof(Py_ssize_t))
    j.readq = <Py_ssize_t *>_carve(&cursor, m, sizeof(Py_ssize_t))
    j.openq = <Py_ssize_t *>_carve(&cursor, m, sizeof(Py_ssize_t))
    j.fd = <int32_t *>_carve(&cursor, m, sizeof(int32_t))
    j.err = <int32_t *>_carve(&cursor, m, sizeof(int32_t))
    j.mode = <int32_t *>_carve(&cursor, m, sizeof(int32_t))
    j.closeq = <int32_t *>_carve(&cursor, m, sizeof(int32_t))
    j.slot = <int32_t *>_carve(&cursor, m, sizeof(int32_t))
    j.unsized = <uint8_t *>_carve(&cursor, m, sizeof(uint8_t))
    j.copied = <uint8_t *>_carve(&cursor, m, sizeof(uint8_t))
    j.direct = <uint8_t *>_carve(&cursor, m, sizeof(uint8_t))
    j.sync = <uint8_t *>_carve(&cursor, m, sizeof(uint8_t))
    memset(j.fd, 0xFF, m * sizeof(int32_t))        # every fd -1
    return 0


cdef void _job_free(Job *j) noexcept:
    cdef Py_ssize_t i
    cdef void *block = j.block
    if j.unsized != NULL:
        for i in range(j.n):
            if j.unsized[i]:
                free(j.dest[i])
    free(j.free_slots); free(j.stx)
    memset(j, 0, sizeof(Job))
    with nogil:                 # a large block's munmap: other rings need not wait
        free(block)


cdef int _job_direct(Job *j, Hold *hold, object bounce) except -1:
    """Read every item with O_DIRECT through `bounce` (page-aligned, at least
    depth * DIRECT_CHUNK bytes), which `hold` keeps alive and unresizable. When the
    bounce is the ring's registered buffer 0, the reads are READ_FIXED: the kernel
    skips pinning its pages for every request."""
    cdef Py_ssize_t s
    hold_export(hold, bounce, True, "bounce")
    j.bounce = <char *>hold.views[hold.nviews - 1].buf
    if hold.views[hold.nviews - 1].len < j.depth * _CHUNK or \
            <size_t>j.bounce % <size_t>_ALIGN:
        raise ValueError(f"bounce must be page-aligned and hold {j.depth} x "
                         f"{DIRECT_CHUNK} bytes")
    j.free_slots = <int32_t *>malloc(j.depth * sizeof(int32_t))
    if j.free_slots == NULL:
        raise MemoryError()
    for s in range(j.depth):
        j.free_slots[s] = <int32_t>s
    j.nfree = j.depth
    memset(j.direct, 1, max(j.n, 1))
    j.bounce_index = -1                     # _run_owned looks, holding the ring
    return 0


cdef void _job_abandon(object ring, RingCore *r, Job *j) noexcept:
    """After an exception: nothing the job started may outlive it. Every prepared
    request goes to the kernel (a close left unsubmitted would leak its fd), then
    every request in flight on the ring (the job owns the ring) is cancelled and
    waited for, and the fds the job still owns are closed."""
    cdef Py_ssize_t i
    if not _quiesce(ring, r):
        _keep_job_memory(j)
    _closes_submitted(j)
    for i in range(j.cq_len):
        _close_item_fd(r, j, j.closeq[i])
    j.cq_len = 0
    if j.close_fds:
        for i in range(j.n):
            if j.fd[i] >= 0 and j.sync[i]:
                _close_now(j, i)
            elif j.fd[i] >= 0:
                _close_item_fd(r, j, j.fd[i])
                j.fd[i] = -1


cdef void _close_item_fd(RingCore *r, Job *j, int32_t fd) noexcept nogil:
    """Close an fd the job holds, or with direct descriptors empty its slot."""
    if j.table:
        _drop_slot(r, fd)
        j.held -= 1
    else:
        close(fd)
        _release_fd(j)


cdef inline void _close_now(Job *j, Py_ssize_t i) noexcept nogil:
    """Close item i's fd here: one of the process's that pread reads (_open_now,
    or a plain open of a file the ring must not read)."""
    close(j.fd[i])
    _release_fd(j)
    j.fd[i] = -1


cdef void _drop_slot(RingCore *r, int32_t slot) noexcept nogil:
    """Close the direct descriptor in `slot` of the ring's file table, at once (a
    file table update to -1): one an interrupted job held, or one an abandoned
    job's open put there. Best effort, as close(2) is for an fd."""
    cdef int32_t empty = -1
    cdef io_uring_files_update up
    memset(&up, 0, sizeof(up))
    up.offset = <uint32_t>slot
    up.fds = <uint64_t><size_t>&empty
    vy_io_uring_register(r.fd, IORING_REGISTER_FILES_UPDATE, &up, 1)


cdef void _keep_job_memory(Job *j) noexcept:
    """The kernel refused to wait, so reads may still be in flight into the job's
    memory: never free or reuse it (a leak, as Ring.close keeps a request's hold).
    The unsized buffers stay allocated, and the arena starts over without its
    blocks."""
    cdef Py_ssize_t i
    for i in range(j.n):
        j.unsized[i] = False                # _job_free frees only unsized buffers
        j.copied[i] = False
    if j.arena != NULL:
        memset(j.arena, 0, sizeof(ArenaState))
        j.arena = NULL


cdef bint _quiesce(object ring, RingCore *r) noexcept:
    """Submit, cancel and reap until nothing is in flight on `ring`, closing the fds
    that opens return meanwhile. The wait does not run signal handlers (a second
    Ctrl-C is raised after it): a read left in flight could still write into a
    buffer its caller has got back. Cancelling is IORING_ASYNC_CANCEL_ANY (5.19);
    older kernels refuse it and the requests simply complete. Only a kernel that
    refuses to wait at all ends it early: False then, with requests in flight."""
    cdef int ret = 0
    cdef bint cancelled = False
    cdef uint32_t t, n
    while slots_used(r) and (ret >= 0 or ret == -EINTR or ret == -EAGAIN or ret == -EBUSY
                            or ret == -ETIME):
        if not cancelled and r.sq.entries > sq_pending(r):
            sq_push_internal(r, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL, 0)
            cancelled = True
        sq_publish(r)
        with nogil:
            ret = ring_enter(r, sq_pending(r), 1, IORING_ENTER_GETEVENTS,
                             NULL, 0)
        try:
            n = <uint32_t>ring_reap(ring)
        except BaseException:
            PyErr_Clear()
            n = 0
        for t in range(n):
            _drop_foreign_open(r, r.scratch_ud[t], r.scratch_res[t])
    return slots_used(r) == 0


cdef inline void _drop_foreign_open(RingCore *r, uint64_t ud, int32_t res) noexcept nogil:
    """A completion no job owns any more: what an open of it returned is closed."""
    if res >= 0 and (ud >> 56) == KIND_OPEN:
        close(res)
    elif res >= 0 and (ud >> 56) == KIND_OPEN_DIRECT:
        _drop_slot(r, res)


cdef inline void _queue_read(Job *j, Py_ssize_t i) noexcept nogil:
    j.readq[(j.rq_head + j.rq_len) % j.n] = i
    j.rq_len += 1


cdef inline void _start_range(Job *j, Py_ssize_t i) noexcept nogil:
    """A range with its want set: nothing to read is done at once, else it waits
    for its read."""
    if j.want[i] == 0:
        j.left -= 1
    else:
        _queue_read(j, i)


cdef inline void _finish(Job *j, Py_ssize_t i) noexcept nogil:
    j.left -= 1
    if j.err[i] == 0:
        j.nbytes += j.got[i]
    if j.close_fds and j.fd[i] >= 0 and j.sync[i]:
        _close_now(j, i)
    elif j.close_fds and j.fd[i] >= 0:
        j.closeq[j.cq_len] = j.fd[i]
        j.cq_len += 1
        j.fd[i] = -1


cdef inline int64_t _piece(Job *j, Py_ssize_t i, int64_t *file_off, int64_t *skip) \
        noexcept nogil:
    """The next read of item i: returns its length, and sets its file offset and the
    bytes at its start that are not the item's (a direct read starts aligned). An
    unsized item also reads into the slack past `want`."""
    cdef int64_t pos = j.off[i] + j.got[i]
    cdef int64_t left = j.want[i] - j.got[i] + (_UNSIZED_SLACK if j.unsized[i] else 0)
    if not j.direct[i]:
        file_off[0] = pos
        skip[0] = 0
        return min(left, _PREAD_PIECE if j.sync[i] else _MAX_PIECE)
    skip[0] = pos % _ALIGN
    file_off[0] = pos - skip[0]
    return min((left + skip[0] + _ALIGN - 1) // _ALIGN * _ALIGN, _CHUNK)


cdef inline char *_read_target(Job *j, Py_ssize_t i) noexcept nogil:
    """Where item i's current read lands: its destination, or its bounce slot."""
    if j.direct[i]:
        return j.bounce + j.slot[i] * _CHUNK
    return j.dest[i] + j.got[i]


cdef inline void _release_fd(Job *j) noexcept nogil:
    """One of the job's fds is closed."""
    j.held -= 1
    _fds_gone(1)


cdef inline void _closes_submitted(Job *j) noexcept nogil:
    """The close requests filled so far went to the kernel (which closes a regular
    file's fd while submitting): their fds no longer count as held. (After every
    submit: no atomic at all when it carried no close.)"""
    if j.closing:
        _fds_gone(j.closing)
        j.closing = 0


cdef inline bint _may_open(Job *j) noexcept nogil:
    return (j.nretry or j.next_open < j.n) and not j.spent and \
        j.opening + j.held < j.fd_cap


cdef void _fill(RingCore *r, Job *j, uint32_t k, Hold *hold) noexcept nogil:
    """Write up to k SQEs: closes first (they free fds), then reads, then opens,
    these two within the job's depth."""
    cdef Claim c
    cdef io_uring_sqe *sqe
    cdef Py_ssize_t i
    cdef int64_t file_off, skip
    claim_begin(r, &c)
    while k and j.cq_len:
        j.cq_len -= 1
        sqe = claim_sqe(&c, (<uint64_t>KIND_CLOSE << 56) | j.tag, NULL)
        sqe.opcode = IORING_OP_CLOSE
        j.held -= 1                         # closed by the next submission
        if j.table:
            sqe.file_index = <uint32_t>j.closeq[j.cq_len] + 1
        else:
            sqe.fd = j.closeq[j.cq_len]
            j.closing += 1
        k -= 1
    k = <uint32_t>min(<Py_ssize_t>k, j.depth - j.busy)
    j.busy += k             # less any opens skipped below
    while k and j.rq_len and not j.eintr:
        i = j.readq[j.rq_head]
        j.rq_head = (j.rq_head + 1) % j.n
        j.rq_len -= 1
        if j.direct[i]:                     # depth slots for at most depth reads
            j.nfree -= 1
            j.slot[i] = j.free_slots[j.nfree]
        if j.sync[i]:
            _read_now(j, i)
            j.busy -= 1                     # done already: nothing in flight
            k -= 1
            if j.stop != NULL and vy_flag_get(j.stop):
                break                       # the loop sees it next
            continue
        sqe = claim_sqe(&c, (<uint64_t>KIND_READ << 56) | j.tag | <uint64_t>i, hold)
        sqe.opcode = IORING_OP_READ
        sqe.fd = j.fd[i]
        if j.fixed_file:
            sqe.fd = j.fixed_index
        if j.fixed_file or j.table:
            sqe.flags = IOSQE_FIXED_FILE
        if j.direct[i] and j.bounce_index >= 0:
            sqe.opcode = IORING_OP_READ_FIXED
            sqe.buf_index = <uint16_t>j.bounce_index
        sqe.len = <uint32_t>_piece(j, i, &file_off, &skip)
        sqe.off = <uint64_t>file_off
        sqe.addr = <uint64_t>_read_target(j, i)
        hold.refs += 1
        k -= 1
    while k and j.oq_len and j.opening + j.held < j.fd_cap:
        j.oq_len -= 1
        _open_direct(&c, j, j.openq[j.oq_len], hold)
        k -= 1
    while k and _may_open(j) and not j.eintr:
        if j.nretry:
            j.nretry -= 1
            i = j.retry[j.nretry]
        else:
            i = j.next_open
            j.next_open += 1
            if j.paths[i] == NULL:
                continue                    # refused before the kernel saw it
        if j.table:
            if not _stat_regular(j, i):
                continue
            if _untrusted_fs(j, _stx_dev(&j.stx[i]), j.paths[i], -1):
                k -= 1                      # an open made here, within the depth
                j.busy -= 1
                if not _open_now(j, i):
                    break                   # to be opened again: not at once
                continue
            _open_direct(&c, j, i, hold)
            k -= 1
            continue
        _prep_open(&c, j, i, hold, KIND_OPEN).open_flags = \
            <uint32_t>(j.open_flags | (_O_DIRECT if j.direct[i] else 0))
        k -= 1
    j.busy -= k             # what the depth allowed but nothing needed
    claim_end(r, &c)


cdef inline io_uring_sqe *_prep_open(Claim *c, Job *j, Py_ssize_t i, Hold *hold,
                                     uint64_t kind) noexcept nogil:
    """An OPENAT of item i's path (the caller sets its flags)."""
    cdef io_uring_sqe *sqe = claim_sqe(c, (kind << 56) | j.tag | <uint64_t>i, hold)
    sqe.opcode = IORING_OP_OPENAT
    sqe.fd = AT_FDCWD
    sqe.addr = <uint64_t><size_t>j.paths[i]
    hold.refs += 1
    j.opening += 1
    return sqe


cdef inline void _open_direct(Claim *c, Job *j, Py_ssize_t i, Hold *hold) noexcept nogil:
    """Direct descriptors: open item i into any free slot of the ring's table."""
    cdef io_uring_sqe *sqe = _prep_open(c, j, i, hold, KIND_OPEN_DIRECT)
    # A direct descriptor takes no O_CLOEXEC (the kernel refuses it): it is no fd.
    sqe.open_flags = <uint32_t>(j.open_flags & ~_O_CLOEXEC)
    sqe.file_index = IORING_FILE_INDEX_ALLOC


cdef inline uint64_t _stx_dev(const statx *stx) noexcept nogil:
    return (<uint64_t>stx.stx_dev_major << 32) | stx.stx_dev_minor


cdef int _fs_kind(const char *path, int fd) noexcept nogil:
    """1 when the file at `path` (else open as `fd`) is on FUSE, whose reads the
    ring must not make (see _FUSE_SUPER_MAGIC), or on a filesystem that refuses
    statfs (a FUSE server without it does: ENOSYS); 0 when on another; -1 when
    statfs failed otherwise (the path went away, a signal): pread, to be safe."""
    cdef vy_statfs sf
    if (c_statfs(path, &sf) if path != NULL else c_fstatfs(fd, &sf)) != 0:
        return 1 if errno == ENOSYS else -1
    return sf.f_type == _FUSE_SUPER_MAGIC


cpdef bint pread_only(int fd) noexcept:
    """Whether reads of the open file `fd` must be preads, not the ring's: it is on
    FUSE (see _FUSE_SUPER_MAGIC), or on a filesystem that refuses statfs."""
    cdef int kind
    with nogil:                     # on FUSE, statfs asks the server
        kind = _fs_kind(NULL, fd)
    return kind != 0


def on_fuse(path) -> bool:
    """Whether the file at `path` is on FUSE, or on a filesystem that refuses statfs:
    one whose reads are preads (pread_only). False where statfs fails otherwise (a
    missing path): the reader then finds out per file, as it reads."""
    cdef bytes b
    cdef const char *c
    cdef int kind
    try:
        b = os.fsencode(path)
    except TypeError:
        return False                # not a path: the reader's checks name it
    if b"\0" in b:
        return False
    c = b
    with nogil:                     # on FUSE, statfs asks the server
        kind = _fs_kind(c, -1)
    return kind == 1


cdef bint _untrusted_fs(Job *j, uint64_t dev, const char *path, int fd) noexcept nogil:
    """Whether the ring must not read the file on device `dev` (at `path`, else
    open as `fd`), by _fs_kind: one statfs per device the job meets in a row, not
    one per file."""
    cdef int kind
    if j.fs_known and dev == j.fs_dev:
        return j.fs_fuse
    kind = _fs_kind(path, fd)
    if kind >= 0:                   # a definite answer: the device's
        j.fs_known = True
        j.fs_dev = dev
        j.fs_fuse = kind
    return kind != 0


cdef bint _open_now(Job *j, Py_ssize_t i) noexcept nogil:
    """Direct descriptors, a file the ring must not read (_untrusted_fs): open it
    here as an fd of the process, for pread, and size it by its statx. False when
    it is to be opened again later: the fd limit (_opened), or a signal (the job's
    loop then runs the handlers first)."""
    cdef int fd = c_open(j.paths[i], j.open_flags)
    if fd < 0 and errno == EINTR:
        j.retry[j.nretry] = i
        j.nretry += 1
        j.eintr = True
        return False
    if _opened(j, i, fd if fd >= 0 else -errno, j.retry, &j.nretry):
        vy_i64_add(&_fds_held, 1)
        j.sync[i] = 1
        _sized(j, i, j.stx[i].stx_mode, <int64_t>j.stx[i].stx_size)
    return j.fd[i] >= 0 or j.err[i] != 0


cdef void _read_now(Job *j, Py_ssize_t i) noexcept nogil:
    """Item i's next read, made here with pread (_untrusted_fs); its result goes
    where a completion's would. A signal that cuts it short leaves the read queued
    and the job's loop comes back to the GIL to run the handlers."""
    cdef int64_t file_off, skip
    cdef int64_t asked = _piece(j, i, &file_off, &skip)
    cdef ssize_t got = pread(j.fd[i], _read_target(j, i), <size_t>asked, file_off)
    j.sync_reads += 1
    if got < 0 and errno == EINTR:
        if j.direct[i]:
            j.free_slots[j.nfree] = j.slot[i]
            j.nfree += 1
        _queue_read(j, i)
        j.eintr = True
        return
    _on_read(j, i, <int32_t>got if got >= 0 else -errno)


cdef bint _may_retry_open(Job *j) noexcept nogil:
    """An open met the fd limit: whether to open the file again later. When this
    job holds fds, it opens fewer at a time from now on; when only other jobs do,
    it waits for them to close some (_may_wait_for_fds). When none does, the
    limit is the caller's: after a short grace for closes still being carried out,
    the file fails with EMFILE."""
    if j.opening + j.held:
        j.fd_cap = max(1, j.opening + j.held)
        return True
    j.fd_wait = True
    return _may_wait_for_fds(&j.fd_wait_since, &j.fd_wait_closed)


cdef void _on_open(Job *j, Py_ssize_t i, int32_t res) noexcept nogil:
    """An open completed: fstat the fd, and size the file (_sized)."""
    cdef stat_t st
    j.opening -= 1
    if res == -EINVAL and j.direct[i]:
        # The filesystem refuses O_DIRECT: open it buffered (rare; synchronously).
        j.direct[i] = 0
        j.direct_fallbacks += 1
        res = c_open(j.paths[i], j.open_flags)
        if res < 0:
            res = -errno
    if not _opened(j, i, res, j.retry, &j.nretry):
        return
    vy_i64_add(&_fds_held, 1)
    if fstat(res, &st) != 0:
        j.err[i] = errno
        _finish(j, i)
        return
    if S_ISREG(st.st_mode) and _untrusted_fs(j, st.st_dev, NULL, res):
        j.sync[i] = 1
    _sized(j, i, st.st_mode, st.st_size)


cdef bint _stat_regular(Job *j, Py_ssize_t i) noexcept nogil:
    """Direct descriptors, which have no fstat: statx the path before opening it,
    here and not in the ring (the STATX opcode always goes to an io-wq worker
    thread, which cost a quarter of a small-file job). True for a regular file,
    which its open then sizes (nothing is reserved for a file that then fails to
    open); anything else is refused unopened, and the item finished."""
    cdef int res = vy_statx(j.paths[i], &j.stx[i])
    if res < 0:
        j.err[i] = -res
    elif not S_ISREG(j.stx[i].stx_mode):
        j.err[i] = ITEM_NOT_REGULAR
        j.mode[i] = j.stx[i].stx_mode
    else:
        return True
    _finish(j, i)
    return False


cdef void _on_open_direct(Job *j, Py_ssize_t i, int32_t res) noexcept nogil:
    """Direct descriptors: a regular file's open completed, into slot `res` of the
    ring's file table: size it by its statx (_sized), and its reads follow. (The
    path could have been replaced between the two: then what it became is read as
    a file of the size statx gave, without waiting, being opened O_NONBLOCK.)"""
    j.opening -= 1
    if _opened(j, i, res, j.openq, &j.oq_len):      # (a full table: opened again later)
        _sized(j, i, j.stx[i].stx_mode, <int64_t>j.stx[i].stx_size)


cdef bint _opened(Job *j, Py_ssize_t i, int32_t res, Py_ssize_t *again,
                  Py_ssize_t *nagain) noexcept nogil:
    """An open of item i returned `res` (an fd, or a slot of the ring's table): True
    when the item now holds it. At the fd or table limit the item goes back on
    `again` to be opened later (_may_retry_open); any other failure finishes it."""
    if (res == -EMFILE or res == -ENFILE) and _may_retry_open(j):
        again[nagain[0]] = i
        nagain[0] += 1
        return False
    if res < 0:
        j.err[i] = -res
        _finish(j, i)
        return False
    j.fd[i] = res
    j.held += 1
    j.fd_wait_since = 0
    return True


cdef void _sized(Job *j, Py_ssize_t i, uint32_t mode, int64_t size) noexcept nogil:
    """Refuse what is not a regular file, and give the file memory of its size to
    read into (in the arena or the Packing, or a bytes object that the GIL must
    make: then it waits in allocq)."""
    if not S_ISREG(mode):
        j.err[i] = ITEM_NOT_REGULAR
        j.mode[i] = mode
    elif size == 0:
        _start_unsized(j, i)
        return
    elif size > PY_SSIZE_T_MAX - 64:
        j.err[i] = EFBIG                    # no bytes object can hold it
    elif j.budget != NULL and size > j.budget.largest:
        j.err[i] = ITEM_OVER_BUDGET         # the caller reads it in pieces
    elif j.budget != NULL and not _budget_take(j.budget, size):
        j.err[i] = ITEM_DEFERRED            # for a later job
        j.spent = True
    elif j.pack != NULL:
        j.pack_offsets[i] = _pack_take(j.pack, size)
        if j.pack_offsets[i] >= 0:
            j.dest[i] = j.pack.base + j.pack_offsets[i]
            j.want[i] = size
            _queue_read(j, i)
            return
        j.err[i] = ENOBUFS                  # no room left in the buffer
    elif size <= _ARENA_MAX and j.arena != NULL:
        j.dest[i] = _arena_alloc(j.arena, size)
        j.want[i] = size
        if j.dest[i] != NULL:
            j.copied[i] = True
            _queue_read(j, i)
            return
        j.err[i] = ENOMEM
    else:
        j.want[i] = size
        j.allocq[j.nalloc] = i
        j.nalloc += 1
        return
    _finish(j, i)


cdef int _give_bytes(Job *j, list keep) except -1:
    """With the GIL: a bytes object for every item in allocq, to read into."""
    cdef Py_ssize_t t, i
    cdef object data
    for t in range(j.nalloc):
        i = j.allocq[t]
        try:
            data = PyBytes_FromStringAndSize(NULL, j.want[i])
        except MemoryError:
            j.err[i] = ENOMEM
            _finish(j, i)
            continue
        keep[i] = data
        j.dest[i] = PyBytes_AS_STRING(data)
        _advise_huge(j.dest[i], j.want[i])
        _queue_read(j, i)
    j.nalloc = 0
    return 0


cdef void _start_unsized(Job *j, Py_ssize_t i) noexcept nogil:
    """A file that reports size 0 (empty, /proc, sysfs): its size says nothing, so
    it is read to EOF into memory of the job's, grown as it fills."""
    cdef int64_t first = _UNSIZED_FIRST
    if j.direct[i]:
        fcntl(j.fd[i], F_SETFL, fcntl(j.fd[i], F_GETFL) & ~_O_DIRECT)
        j.direct[i] = 0                     # /proc and sysfs refuse it anyway
    if j.budget != NULL:
        first = min(first, j.budget.unsized_cap)
        if not _budget_take(j.budget, first):
            j.err[i] = ITEM_DEFERRED
            j.spent = True
            _finish(j, i)
            return
    j.dest[i] = <char *>malloc(first + _UNSIZED_SLACK)
    if j.dest[i] == NULL:
        _unsized_fails(j, i, ENOMEM)
        return
    j.unsized[i] = True
    j.copied[i] = True
    j.want[i] = first
    _queue_read(j, i)


cdef void _unsized_fails(Job *j, Py_ssize_t i, int32_t err) noexcept nogil:
    """An unsized item ends unread (err): its reservation and memory go back."""
    if j.budget != NULL and j.want[i]:
        vy_i64_add(&j.budget.taken, -j.want[i])
    if err == ITEM_DEFERRED:
        j.spent = True
    free(j.dest[i])
    j.dest[i] = NULL
    j.unsized[i] = False
    j.copied[i] = False
    j.err[i] = err
    _finish(j, i)


cdef bint _grow_unsized(Job *j, Py_ssize_t i) noexcept nogil:
    """An unsized item filled its buffer: double it, within the budget. False when
    the item ended instead (deferred, over the budget, or out of memory)."""
    cdef int64_t extra = j.want[i]
    cdef int answer
    cdef char *p
    if j.budget != NULL:
        extra = max(1, min(extra, j.budget.unsized_cap - j.want[i]))
        answer = _budget_grow(j.budget, j.want[i], extra)
        if answer != BUDGET_GROWN:
            _unsized_fails(j, i, ITEM_OVER_BUDGET if answer == BUDGET_NEVER else ITEM_DEFERRED)
            return False
    p = <char *>realloc(j.dest[i], j.want[i] + extra + _UNSIZED_SLACK)
    if p == NULL or j.want[i] + extra > PY_SSIZE_T_MAX - 64:
        if p != NULL:
            j.dest[i] = p
        j.want[i] += extra if j.budget != NULL else 0      # what the budget holds
        _unsized_fails(j, i, ENOMEM)
        return False
    j.dest[i] = p
    j.want[i] += extra
    return True


cdef void _on_read(Job *j, Py_ssize_t i, int32_t res) noexcept nogil:
    cdef ssize_t r
    cdef int64_t file_off, skip, n
    cdef int64_t asked = _piece(j, i, &file_off, &skip)
    cdef char *target = _read_target(j, i)
    if res == -EAGAIN and not j.table:      # (a slot is no fd: the error stands)
        # A file opened O_NONBLOCK on a filesystem (or kernel) that will not wait for
        # the page cache: read this piece synchronously.
        r = pread(j.fd[i], target, <size_t>asked, file_off)
        res = <int32_t>r if r >= 0 else -errno
        j.sync_reads += 1
    if j.direct[i]:
        j.free_slots[j.nfree] = j.slot[i]   # copied out below before any reuse
        j.nfree += 1
        if res == -EINVAL:
            # The filesystem refuses this O_DIRECT read: buffered from here on.
            fcntl(j.fd[i], F_SETFL, fcntl(j.fd[i], F_GETFL) & ~_O_DIRECT)
            j.direct[i] = 0
            j.direct_fallbacks += 1
            _queue_read(j, i)
            return
    if res < 0:
        if j.unsized[i]:
            _unsized_fails(j, i, -res)
            return
        j.err[i] = -res
    elif j.unsized[i]:
        if res > 0:
            j.got[i] += res
            if j.got[i] <= j.want[i] or _grow_unsized(j, i):
                _queue_read(j, i)
            return
    else:
        n = min(res - skip, j.want[i] - j.got[i])
        if n > 0:
            if j.direct[i]:
                memcpy(j.dest[i] + j.got[i], target + skip, <size_t>n)
            j.got[i] += n
            if j.got[i] < j.want[i]:
                if res < asked:
                    j.short_reads += 1      # resubmit the rest
                _queue_read(j, i)
                return
    _finish(j, i)                           # n <= 0: EOF, what pread returns


cdef void _reap_job(RingCore *r, Job *j) noexcept nogil:
    """Reap every completion ready and hand each to its item; those of other jobs
    (abandoned earlier) are dropped, closing the fds their opens returned."""
    cdef uint32_t t, n = cq_reap(r, r.scratch_ud, r.scratch_res, NULL,
                                         r.st.n)
    cdef uint64_t ud
    cdef int32_t res
    cdef uint32_t kind
    cdef Py_ssize_t i
    j.ops += n
    for t in range(n):
        ud = r.scratch_ud[t]
        res = r.scratch_res[t]
        kind = <uint32_t>(ud >> 56)
        if ((ud >> 32) & 0xFFFFFF) != j.id:
            _drop_foreign_open(r, ud, res)  # an abandoned job's open: nobody owns it
            continue
        if kind == KIND_CLOSE:
            continue
        j.busy -= 1                         # an open or a read: within depth
        i = <Py_ssize_t><uint32_t>ud
        if kind == KIND_OPEN:
            _on_open(j, i, res)
        elif kind == KIND_READ:
            _on_read(j, i, res)
        else:
            _on_open_direct(j, i, res)


# A job's wait lasts at most this long before it looks at signals and its Stop.
cdef long long _WAIT_SLICE_NS = 100000000

# What brings a job's nogil loop back to the GIL.
cdef enum:
    STEP_DONE = 0
    STEP_SIGNAL = 1         # a wait was interrupted or timed out: run the handlers
    STEP_ALLOC = 2          # items wait in allocq for bytes objects
    STEP_STOP = 3           # the call's Stop is set
    STEP_ERROR = 4          # io_uring_enter failed: j.enter_err
    STEP_STUCK = 5          # items left, nothing in flight: a bug


cdef int _job_enter(RingCore *r, uint32_t wait) noexcept nogil:
    """Submit every prepared request and wait for `wait` completions (0 or 1), for
    at most _WAIT_SLICE_NS (-ETIME then) where the kernel takes a timeout (5.11):
    a signal may land in another thread, and a read may never complete (a pipe),
    yet Ctrl-C and the call's Stop must still be seen."""
    cdef uint32_t flags = IORING_ENTER_GETEVENTS if wait else 0
    cdef vy_getevents_arg arg
    cdef vy_timespec ts
    cdef void *argp = NULL
    cdef size_t argsz = 0
    sq_publish(r)
    if wait and r.features & IORING_FEAT_EXT_ARG:
        ts.tv_sec = 0
        ts.tv_nsec = _WAIT_SLICE_NS
        memset(&arg, 0, sizeof(arg))
        arg.ts = <uint64_t><size_t>&ts
        argp = &arg
        argsz = sizeof(arg)
        flags |= IORING_ENTER_EXT_ARG
    return ring_enter(r, sq_pending(r), wait, flags, argp, argsz)


cdef int _job_steps(RingCore *r, Job *j, Hold *hold) noexcept nogil:
    """Fill, submit, wait and reap until the job is done or needs the GIL. It also
    comes back when a wait ended with no completion (a signal cut it short, or its
    time slice ran out) and every _WAIT_SLICE_NS anyway: a signal that lands while
    the thread is outside the syscall is seen too."""
    cdef uint32_t k
    cdef Py_ssize_t wanted
    cdef int ret
    cdef double since = vy_monotonic()
    while True:
        if j.nalloc:
            return STEP_ALLOC
        wanted = j.cq_len + min(j.rq_len + j.oq_len + (j.n - j.next_open) + j.nretry,
                                j.depth - j.busy)
        if wanted:
            k = min(<uint32_t>min(wanted, <Py_ssize_t>UINT32_MAX),
                    r.sq.entries - sq_pending(r), r.st.n - slots_used(r))
            if k:
                _fill(r, j, k, hold)
        if j.eintr:
            j.eintr = False
            return STEP_SIGNAL
        if j.left == 0 and j.cq_len == 0:
            if sq_pending(r) == 0:
                return STEP_DONE            # no close to hand over: no syscall
            ret = _job_enter(r, 0)           # the last closes: the fds close now
            if ret == -EINTR:
                return STEP_SIGNAL
            if ret == -EAGAIN or ret == -EBUSY:
                vy_poll_in(r.fd, 1)
                continue
            if ret < 0:
                j.enter_err = ret
                return STEP_ERROR
            _closes_submitted(j)
            return STEP_DONE
        if slots_used(r):
            ret = _job_enter(r, 1)
            j.syscalls += 1
            if ret >= 0:
                _closes_submitted(j)
            elif ret == -EINTR:
                return STEP_SIGNAL
            elif ret == -EAGAIN or ret == -EBUSY:
                vy_poll_in(r.fd, 1)         # short of request memory: back off
            elif ret != -ETIME:
                j.enter_err = ret
                return STEP_ERROR
            if cq_ready(r) == 0 and ret != -EAGAIN and ret != -EBUSY:
                ret = -ETIME                # the wait ended with nothing: a signal?
            _reap_job(r, j)
        elif j.rq_len or j.nretry or j.nalloc or j.next_open < j.n:
            ret = 0     # nothing in flight: the reads and opens left are made here
                        # (files the ring must not read, _untrusted_fs)
        else:
            return STEP_STUCK
        if j.stop != NULL and vy_flag_get(j.stop):
            return STEP_STOP
        if ret == -ETIME or vy_monotonic() - since > _WAIT_SLICE_NS * 1e-9:
            return STEP_SIGNAL
        if j.budget != NULL and vy_flag_get(&j.budget.spent):
            j.spent = True                  # (another job may have spent it)
        if j.spent:
            _defer_unopened(j)
        if j.fd_wait:
            j.fd_wait = False
            usleep(1000)                    # for other jobs to close some fds


cdef int _run_job(RingCore *r, Job *j, Hold *hold, list keep) except -1:
    """The job's nogil loop, and what only the GIL can do between its steps."""
    cdef int step
    while True:
        with nogil:
            step = _job_steps(r, j, hold)
        if step == STEP_DONE:
            return 0
        if step == STEP_SIGNAL:
            PyErr_CheckSignals()            # Ctrl-C raises here
        elif step == STEP_ALLOC:
            PyErr_CheckSignals()
            _give_bytes(j, keep)
        elif step == STEP_STOP:
            raise CallStopped()
        elif step == STEP_ERROR:
            raise syscall_error("io_uring_enter", -j.enter_err)
        else:
            raise UringError("internal error: a read job is waiting with nothing in flight")


cdef void _defer_unopened(Job *j) noexcept nogil:
    while j.nretry:
        j.nretry -= 1
        j.err[j.retry[j.nretry]] = ITEM_DEFERRED
        j.left -= 1
    while j.next_open < j.n:
        if j.paths[j.next_open] != NULL:    # (a refused path is already done)
            j.err[j.next_open] = ITEM_DEFERRED
            j.left -= 1
        j.next_open += 1


cdef int _run_owned(object ring, Job *j, Hold *hold, list keep) except -1:
    """_run_job holding the ring; after an exception nothing of the job's is left
    in flight (_job_abandon) before it propagates."""
    cdef RingCore *r = ring_acquire(ring)
    try:
        if j.bounce != NULL and ring_buffer_is_fixed(ring, j.bounce):
            j.bounce_index = 0              # registered buffer 0: READ_FIXED
        try:
            _run_job(r, j, hold, keep)
        except BaseException:
            _job_abandon(ring, r, j)
            raise
    finally:
        ring_release(ring)
    return 0


cdef void _drop_job_ref(Hold *hold) noexcept:
    """The job is over: the hold now lives only as long as requests still use it."""
    hold_unref(hold)


cdef int _add_stats(object stats, Job *j) except -1:
    stats[0] += j.syscalls
    stats[1] += j.ops
    stats[2] += j.short_reads
    stats[3] += j.sync_reads
    stats[4] += j.direct_fallbacks
    return 0


# Whether an ASCII str encodes to itself in the filesystem encoding (it does in
# every encoding Python runs with on Linux; this proves it for the one in use).
cdef bint _ascii_is_fs():
    try:
        return os.fsencode("".join(map(chr, range(1, 128)))) == bytes(range(1, 128))
    except UnicodeError:            # an encoding that cannot even encode ASCII
        return False


cdef bint _ASCII_IS_FS = _ascii_is_fs()


cdef const char *_path_of(object p, list names) except? NULL:
    """p as a NUL-terminated path that `names` keeps alive, or NULL when it holds a
    NUL byte. An ASCII str needs no bytes object: its UTF-8 form, which is its
    encoded path, is the str's own buffer. Making those objects, and freeing them,
    takes the GIL, which many rings queue for."""
    cdef bytes b
    cdef const char *c
    cdef Py_ssize_t size
    if type(p) is str and _ASCII_IS_FS and vy_str_is_ascii(p):
        c = PyUnicode_AsUTF8AndSize(p, &size)
        names.append(p)
        return c if strlen(c) == <size_t>size else NULL
    if type(p) is str:
        b = PyUnicode_EncodeFSDefault(p)
    elif type(p) is bytes:
        b = <bytes>p
    else:
        b = os.fsencode(p)
    names.append(b)
    if strlen(PyBytes_AS_STRING(b)) != <size_t>len(b):
        return NULL
    return PyBytes_AS_STRING(b)


cdef void _place(PackState *p, Job *j, Py_ssize_t i, Py_ssize_t start) noexcept:
    """A file read into a Packing gets its length; one read into job memory (it
    reported size 0) is copied into the buffer first, or fails ENOBUFS."""
    cdef int64_t o
    if j.copied[i]:
        o = _pack_take(p, j.got[i])
        if o < 0:
            j.err[i] = ENOBUFS
            return
        memcpy(p.base + o, j.dest[i], <size_t>j.got[i])
        p.offsets[start + i] = o
    p.lengths[start + i] = j.got[i]


cdef inline object _untracked(object container):
    """`container` (a list or tuple that holds results being read into, and no
    object that could lead back to it), untracked by the collector: gc.get_objects()
    in another thread then never reaches a result the kernel is still writing (its
    referents would be the half-written bytes, whose hash bytes would cache).
    Reference counting frees it as before; it is in no cycle."""
    PyObject_GC_UnTrack(<PyObject *>container)
    return container


def read_file_window(ring, paths, Py_ssize_t start, Py_ssize_t stop,
                     list out, int open_flags, Py_ssize_t depth, stats, bounce=None,
                     ByteBudget budget=None, Stop call=None, Arena arena=None,
                     Packing pack=None, Py_ssize_t table=0, list kept=None):
    """Read the whole files paths[start:stop] into out[start:stop] as bytes, through
    `ring`. Returns (leftovers, bytes_read): leftovers lists (i, code, mode) for
    each file not read here, code an errno or NOT_REGULAR / OVER_BUDGET / NUL_BYTE /
    DEFERRED; `kept` (a list) gets (bytes_read, top) appended (see _higher). At
    most `depth` opens and reads are in flight, and fewer opens when the fd limit
    is reached. With a `bounce` buffer (see _job_direct) files are read
    with O_DIRECT, and buffered where the filesystem refuses it. With a ByteBudget,
    files it cannot take now come back DEFERRED, for a later call, and no more are
    opened once it is spent. `call`: the call's Stop, read after every completion.
    `arena`: the ring's Arena for small files (else one for this call). With a
    Packing, files are read into its buffer instead (out is left alone; a file
    that does not fit comes back ENOBUFS) and their offsets and lengths set there.
    With `table` > 0 (no bounce), the ring has a sparse registered file table of
    that many slots: files are sized by a statx and opened as direct
    descriptors there, so that rings in many threads do not share the process fd
    table. `stats` (5 int64s: syscalls, operations, short reads, synchronous reads,
    O_DIRECT refusals) is added to."""
    ring_core(ring)                 # a Ring, or TypeError before any work
    cdef Job j
    cdef Hold *hold = NULL
    cdef Py_ssize_t i, n = stop - start
    cdef list names = []
    cdef list keep = _untracked([None] * n)
    cdef list made = None
    cdef list leftovers = []
    cdef object data, top = None
    if not 0 <= start <= stop <= len(paths) or stop > len(out):
        raise ValueError(f"window {start}:{stop} is outside the paths or out")
    if pack is None:                    # the results, made up front (no MemoryError
        made = _untracked([None] * n)   # later)
    if arena is None:
        arena = Arena()
    if pack is not None and (budget is not None or len(pack.offsets) < stop):
        raise ValueError("a Packing takes no budget, and needs an offset per path")
    _job_alloc(&j, n)
    try:
        j.open_flags = open_flags | os.O_CLOEXEC
        j.close_fds = True
        j.depth = max(depth, 1)
        j.budget = &budget.b if budget is not None else NULL
        if pack is not None:
            j.pack = &pack.p
            j.pack_offsets = pack.p.offsets + start
        if table > 0 and bounce is None:
            j.table = True
            j.fd_cap = table
            j.stx = <statx *>malloc(max(n, 1) * sizeof(statx))
            if j.stx == NULL:
                raise MemoryError()
        j.stop = &call.flag if call is not None else NULL
        j.arena = &arena.a
        for i in range(n):
            j.paths[i] = _path_of(paths[start + i], names)
            if j.paths[i] == NULL:
                j.err[i] = ITEM_NUL_BYTE
                j.left -= 1
        # The hold keeps the Packing, and so its export of the caller's buffer, for
        # as long as any read into it may be in flight.
        hold = hold_object(_untracked((names, keep, pack)), bounce is not None)
        hold.refs += 1              # the job's own: the hold outlives every reap
        try:
            if bounce is not None:
                _job_direct(&j, hold, bounce)
            _run_owned(ring, &j, hold, keep)
        finally:
            _drop_job_ref(hold)
        for i in range(n):
            if j.err[i] == 0 and pack is not None:
                _place(&pack.p, &j, i, start)
            if j.err[i] != 0:
                if pack is not None:
                    pack.p.offsets[start + i] = -1
                leftovers.append((i, j.err[i], j.mode[i]))
        if pack is None:
            _copy_out(&j, keep, made, leftovers)
            for i in range(n):
                data = made[i]
                if data is not None:
                    out[start + i] = data
                    top = _higher(top, data, j.got[i])
        _add_stats(stats, &j)
        if kept is not None:
            kept.append((j.nbytes, top))
        return leftovers, j.nbytes
    finally:
        if j.arena != NULL:
            _arena_reset(j.arena)           # copied out: free for the next job
        _job_free(&j)


cdef int _copy_out(Job *j, list keep, list made, list leftovers) except -1:
    """Each file's bytes object into made[i] (left None where it failed): those read
    into job memory (the arena, or an unsized file's buffer) or that came out short
    are made here, all at once with the GIL, and filled in one pass without it. That
    copy, and the page faults of fresh result memory, are most of a small file's
    cost: under the GIL they queued the other rings' jobs behind this one. A file
    that cannot have its bytes fails ENOMEM, alone. `made` is one the collector does
    not track: gc.get_objects() in another thread never sees the unfilled ones."""
    cdef Py_ssize_t i, copies = 0
    cdef object data
    for i in range(j.n):
        if j.err[i] != 0:
            continue
        if not j.copied[i] and j.got[i] == j.want[i]:
            made[i] = keep[i]                   # read straight into it
            continue
        try:
            data = PyBytes_FromStringAndSize(NULL, j.got[i])
        except MemoryError:
            j.err[i] = ENOMEM
            leftovers.append((i, ENOMEM, 0))
            continue
        made[i] = data
        j.fill[i] = PyBytes_AS_STRING(data)
        copies += 1
    if copies == 0:
        return 0                                # (the GIL is not given up for nothing)
    with nogil:                                 # (keep holds what short ones read)
        for i in range(j.n):
            if j.fill[i] != NULL:
                memcpy(j.fill[i], j.dest[i], <size_t>j.got[i])
    return 0


cdef inline bint _range_fits(int64_t o, int64_t m, int64_t b, int64_t buflen) \
        noexcept nogil:
    """What _check_range checks, without the GIL (buflen < 0: no buffer)."""
    return (o >= 0 and m >= 0 and o <= INT64_MAX - m - _CHUNK and
            (buflen < 0 or span_fits(b, m, buflen)))


cdef int _check_range(Py_ssize_t i, int64_t o, int64_t m, int64_t b, int64_t buflen) \
        except -1:
    if _range_fits(o, m, b, buflen):
        return 0
    if o < 0 or m < 0:
        raise ValueError(f"range {i}: offset {o} and length {m} must be >= 0")
    if o > INT64_MAX - m - _CHUNK:
        raise ValueError(f"range {i}: offset {o} + length {m} is past the "
                         f"largest file offset")
    if buflen >= 0 and not span_fits(b, m, buflen):
        raise ValueError(f"range {i} (offset {o}, length {m}, buffer offset "
                         f"{b}) does not fit a {buflen}-byte buffer")
    return 0


cdef int64_t _known_size(int fd) noexcept:
    """The size of a regular file that reports one, else -1 (a /proc file reports 0
    and holds more)."""
    cdef stat_t st
    if fstat(fd, &st) == 0 and S_ISREG(st.st_mode) and st.st_size > 0:
        return st.st_size
    return -1


cdef object _higher(object top, object data, int64_t size):
    """`data` (a result of `size` bytes) if it comes from malloc's heap (over 512
    bytes, pymalloc's largest, whose arenas are mappings of their own, as b"" is
    static; at most ARENA_MAX, far below malloc's mapping threshold) and lies at a
    higher address than `top`, else `top`: a job's `kept` top, which the backend
    holds on to (RETAIN_BYTES). Not a larger one, though glibc serves those from
    its heap too once it has raised its mapping threshold: which of them are
    mappings of their own only malloc's internals tell (malloc_usable_size), and
    Python's debug allocators and mimalloc hand out pointers that are not
    malloc's."""
    if 512 < size <= _ARENA_MAX and (top is None or
                                     <size_t><PyObject *>data > <size_t><PyObject *>top):
        return data
    return top


cdef bytes _range_bytes(Py_ssize_t i, int64_t size, name):
    """A new bytes object for range i; a MemoryError that names the range."""
    try:
        return PyBytes_FromStringAndSize(NULL, size)
    except MemoryError:
        raise MemoryError(f"no memory for range {i} of {name!r}: {size} bytes") from None


def read_ranges_job(ring, int fd, offsets, lengths, buffer,
                    buffer_offsets, Py_ssize_t depth, stats, name, bounce=None,
                    bint fixed_file=False, Stop call=None, list out=None,
                    Py_ssize_t out_start=0, list kept=None, *, bint pread):
    """pread semantics for many ranges of one open fd, through `ring`: range i reads
    lengths[i] bytes at offsets[i], into buffer[buffer_offsets[i]:] (a writable
    buffer), or with buffer=None into a new bytes object. Short reads are resubmitted
    until the range is full or EOF, at most `depth` reads in flight. Returns per
    range its byte count (or its bytes); a failed read raises its OSError, naming
    the file `name`, once every read has completed. Each value is read from the
    caller's arrays once, into the job, and checked there: what is checked is what
    the reads use. With a `bounce` buffer, fd was opened O_DIRECT and the reads go
    through it (see _job_direct). fixed_file: fd is registered as the ring's file
    0, which the reads then name instead. `call`: the call's Stop. With a buffer
    and `out`, the byte counts go into out[out_start:out_start + n] (rings sharing
    one call's list), and out is returned. Bytes results: `kept` (a list) gets
    (bytes read, top) appended, as read_file_window's does. `pread` (required, so
    that no caller forgets it): fd's file is one the ring must not read (pread_only,
    which the caller asks once a call): every range is read with pread."""
    ring_core(ring)                 # a Ring, or TypeError before any work
    cdef Job j
    cdef Hold *hold = NULL
    cdef IntArray off, length, boff
    cdef Py_ssize_t i, n
    cdef int64_t b = 0
    cdef char *base = NULL
    cdef Py_ssize_t base_len = -1
    cdef int64_t eof = -1
    cdef list keep
    cdef list results
    cdef object top = None
    off.has_view = length.has_view = boff.has_view = False
    memset(&j, 0, sizeof(Job))
    try:
        int_array_open(&off, offsets, "offsets", False, False)
        n = off.n
        if out is not None and (buffer is None or not 0 <= out_start <= len(out) - n):
            raise ValueError(f"out (for byte counts only) holds {len(out)} counts: no "
                             f"room for {n} at {out_start}")
        _job_alloc(&j, n)
        j.depth = max(depth, 1)
        j.stop = &call.flag if call is not None else NULL
        keep = _untracked([None] * n) if buffer is None else None   # the bytes read into
        hold = hold_object(keep, (buffer is not None) + (bounce is not None))
        hold.refs += 1              # the job's own: the hold outlives every reap
        int_array_open(&length, lengths, "lengths", False, False)
        check_same_length(&length, "lengths", n)
        if buffer is not None:
            int_array_open(&boff, buffer_offsets, "buffer_offsets", False, False)
            check_same_length(&boff, "buffer_offsets", n)
            hold_export(hold, buffer, True, "buffer")
            base = <char *>hold.views[0].buf
            base_len = hold.views[0].len
            # A million ranges are taken in without the GIL, so that the rings of
            # other threads are not kept waiting (nor by the page faults of the
            # job's new arrays, which this first touches).
            with nogil:
                i = _take_ranges(&j, &off, &length, &boff, base, base_len, fd, &b)
            if i >= 0:
                _check_range(i, j.off[i], j.want[i], b, base_len)   # raises
        else:
            # New bytes objects only as large as the file lets them be: a range
            # asking for 64 GiB of a 10-byte file allocates 10 bytes.
            eof = _known_size(fd)
            for i in range(n):
                j.off[i] = ia_get(&off, i)
                j.want[i] = ia_get(&length, i)
                _check_range(i, j.off[i], j.want[i], 0, -1)
                if eof >= 0:
                    j.want[i] = max(0, min(j.want[i], eof - j.off[i]))
                j.fd[i] = fd
                keep[i] = _range_bytes(i, j.want[i], name)
                j.dest[i] = PyBytes_AS_STRING(keep[i])
                _advise_huge(j.dest[i], j.want[i])
                _start_range(&j, i)
        if bounce is not None:
            _job_direct(&j, hold, bounce)
        if fixed_file:
            if ring.registered_files < 1:
                raise ValueError("fixed_file needs fd registered as the ring's file 0")
            j.fixed_file = True
        if pread:
            memset(j.sync, 1, <size_t>n)
        _run_owned(ring, &j, hold, keep)
        _add_stats(stats, &j)
        if buffer is not None:
            return _byte_counts(&j, name, out, out_start)
        results = [None] * n
        for i in range(n):
            if j.err[i]:
                raise path_error(j.err[i], name)
            elif j.got[i] < j.want[i]:
                results[i] = PyBytes_FromStringAndSize(j.dest[i], j.got[i])
            else:
                results[i] = keep[i]
            top = _higher(top, results[i], j.got[i])
        if kept is not None:
            kept.append((j.nbytes, top))
        return results
    finally:
        if hold != NULL:
            _drop_job_ref(hold)
        int_array_close(&boff)
        int_array_close(&length)
        int_array_close(&off)
        _job_free(&j)


cdef Py_ssize_t _take_ranges(Job *j, const IntArray *off, const IntArray *length,
                             const IntArray *boff, char *base, int64_t base_len, int fd,
                             int64_t *bad_b) noexcept nogil:
    """Ranges into a buffer: read each range's values once, into the job, check
    them there and queue the range. Returns -1, or the first range that does not
    fit (its values left in j.off, j.want and *bad_b, for the caller to name)."""
    cdef Py_ssize_t i
    cdef int64_t b
    for i in range(j.n):
        j.off[i] = ia_get(off, i)
        j.want[i] = ia_get(length, i)
        b = ia_get(boff, i)
        if not _range_fits(j.off[i], j.want[i], b, base_len):
            bad_b[0] = b
            return i
        j.fd[i] = fd
        j.dest[i] = base + b
        _start_range(j, i)
    return -1


cdef list _byte_counts(Job *j, object name, list out, Py_ssize_t start):
    """Each range's byte count, in order, into out[start:] (a new list when out is
    None; read_ranges_job checked that it has room); the first failed read raises
    its OSError. A count equal to the one before is the same int object (ints are
    immutable): a million 4 KiB reads make one int under the GIL, not a million."""
    cdef object count = None
    cdef int64_t last = -1
    cdef Py_ssize_t i
    if out is None:
        out, start = [None] * j.n, 0
    for i in range(j.n):
        if j.err[i]:
            raise path_error(j.err[i], name)
        if j.got[i] != last:
            last = j.got[i]
            count = last
        out[start + i] = count
    return out


def check_ranges(offsets, lengths, buffer_offsets=None, Py_ssize_t buflen=-1):
    """Raise ValueError naming the first invalid range: offsets and lengths must be
    >= 0 and, with buffer_offsets, each range must fit a `buflen`-byte buffer. A C
    loop: ranges are checked whole before any is read, at no cost per range."""
    cdef IntArray off, length, boff
    cdef Py_ssize_t i, n
    off.has_view = length.has_view = boff.has_view = False
    try:
        int_array_open(&off, offsets, "offsets", False, False)
        int_array_open(&length, lengths, "lengths", False, False)
        n = off.n
        check_same_length(&length, "lengths", n)
        if buffer_offsets is not None:
            int_array_open(&boff, buffer_offsets, "buffer_offsets", False, False)
            check_same_length(&boff, "buffer_offsets", n)
        for i in range(n):
            _check_range(i, ia_get(&off, i), ia_get(&length, i),
                         ia_get(&boff, i) if buffer_offsets is not None else 0,
                         buflen if buffer_offsets is not None else -1)
    finally:
        int_array_close(&boff)
        int_array_close(&length)
        int_array_close(&off)


def drain_jobs(ring, stats, double timeout=-1.0):
    """Submit what is left and reap everything in flight, closing the fds of
    abandoned jobs' opens; for at most `timeout` seconds (< 0: until done). Returns
    True when nothing is left in flight."""
    cdef Job j
    cdef double left, deadline = vy_monotonic() + timeout
    cdef RingCore *r
    cdef bint drained
    _job_alloc(&j, 0)       # an id no request carries: every completion is foreign
    try:
        r = ring_acquire(ring)
        try:
            while slots_used(r):
                left = deadline - vy_monotonic()
                if timeout >= 0 and left <= 0:
                    break
                ring_submit_and_wait(ring, 1, left if timeout >= 0 else -1.0)
                j.syscalls += 1
                _reap_job(r, &j)
            drained = slots_used(r) == 0
        finally:
            ring_release(ring)
        _add_stats(stats, &j)
        return drained
    finally:
        _job_free(&j)


include "_engine_path_ranges.pxi"
include "_engine_staging.pxi"
