# The reader's C core: whole files (openat -> fstat -> read -> close) and byte ranges
# of one file, driven through a Ring with one Python call per batch of files or
# ranges, however many requests that takes.
#
# Every file or range is an item. Its requests carry the user_data
#     kind << 56 | job id << 32 | item
# so the completions of a job that ended early (an exception while waiting) are
# recognised and ignored by later jobs, and the fds their opens returned are closed.
#
# Results are read straight into their final bytes objects: no pool, no copy. A
# bytes object stays referenced by the job's Hold until its last read completes, and
# no Python code sees it before that.

from cpython.bytes cimport PyBytes_FromStringAndSize

cdef extern from "Python.h":
    bytes PyUnicode_EncodeFSDefault(object)
from posix.unistd cimport pread
from posix.stat cimport S_ISREG

cdef enum:
    KIND_OPEN = 1
    KIND_READ = 2
    KIND_CLOSE = 3

# Item errors that are not errnos: the Python side turns them into OSErrors.
cdef enum:
    ITEM_NOT_REGULAR = -1   # the mode says what it is
    ITEM_UNSIZED = -2       # a regular file that reports size 0 (empty, or /proc):
                            # its fd stays open for the caller to read to EOF
    ITEM_NUL_BYTE = -3      # the path holds a NUL byte

NOT_REGULAR = ITEM_NOT_REGULAR
UNSIZED = ITEM_UNSIZED
NUL_BYTE = ITEM_NUL_BYTE

# One read request carries at most this much: Linux caps a single read near 2 GiB.
MAX_PIECE = 1 << 30
cdef int64_t _MAX_PIECE = MAX_PIECE

cdef uint32_t _next_job_id = 0


def _test_set_max_piece(int64_t nbytes):
    """Tests only: shrink the piece size, so that reads in many pieces can be tested
    without gigabytes of data. Returns the previous size."""
    global _MAX_PIECE
    if not 1 <= nbytes <= MAX_PIECE:
        raise ValueError(f"piece size must be between 1 and {MAX_PIECE}")
    old, _MAX_PIECE = _MAX_PIECE, nbytes
    return old


cdef struct Job:
    Py_ssize_t n
    uint32_t id             # 24 bits, in bits 32..55 of every request's user_data
    uint64_t tag            # id << 32
    bint close_fds          # files: close each fd when its item is done
    int open_flags
    const char **paths      # files: NULL where the path was refused
    int32_t *fd             # -1 when not open
    int64_t *off            # the item's first byte in its file
    int64_t *want           # bytes wanted
    int64_t *got            # bytes read so far
    char **dest             # where the item's bytes go
    int32_t *err            # 0, an errno, or an ITEM_* code
    int32_t *mode           # files: st_mode
    Py_ssize_t next_open    # files: first item not yet opened
    Py_ssize_t *readq       # a ring of items waiting for a read request (capacity n)
    Py_ssize_t rq_head, rq_len
    int32_t *closeq         # fds waiting for a close request (capacity n)
    Py_ssize_t cq_len
    Py_ssize_t left         # items not yet done
    Py_ssize_t depth        # at most this many opens and reads in flight
    Py_ssize_t busy         # opens and reads in flight
    int64_t syscalls, ops, short_reads, sync_reads, nbytes


cdef int _job_alloc(Job *j, Py_ssize_t n) except -1:
    global _next_job_id
    memset(j, 0, sizeof(Job))
    cdef Py_ssize_t m = max(n, 1)
    j.n = n
    j.left = n
    j.id = _next_job_id & 0xFFFFFF
    j.tag = (<uint64_t>j.id) << 32
    _next_job_id += 1
    j.paths = <const char **>calloc(m, sizeof(char *))
    j.fd = <int32_t *>malloc(m * sizeof(int32_t))
    j.off = <int64_t *>calloc(m, sizeof(int64_t))
    j.want = <int64_t *>calloc(m, sizeof(int64_t))
    j.got = <int64_t *>calloc(m, sizeof(int64_t))
    j.dest = <char **>calloc(m, sizeof(char *))
    j.err = <int32_t *>calloc(m, sizeof(int32_t))
    j.mode = <int32_t *>calloc(m, sizeof(int32_t))
    j.readq = <Py_ssize_t *>malloc(m * sizeof(Py_ssize_t))
    j.closeq = <int32_t *>malloc(m * sizeof(int32_t))
    if not (j.paths and j.fd and j.off and j.want and j.got and j.dest and j.err and
            j.mode and j.readq and j.closeq):
        _job_free(j)
        raise MemoryError()
    memset(j.fd, 0xFF, m * sizeof(int32_t))        # every fd -1
    return 0


cdef void _job_free(Job *j) noexcept:
    free(j.paths); free(j.fd); free(j.off); free(j.want); free(j.got)
    free(j.dest); free(j.err); free(j.mode); free(j.readq); free(j.closeq)
    memset(j, 0, sizeof(Job))


cdef void _job_abandon(Job *j) noexcept:
    """After an exception: close every fd the job still owns. An fd with a read in
    flight can be closed too: the request holds its own reference to the file."""
    cdef Py_ssize_t i
    for i in range(j.cq_len):
        close(j.closeq[i])
    j.cq_len = 0
    if j.close_fds:
        for i in range(j.n):
            if j.fd[i] >= 0:
                close(j.fd[i])
                j.fd[i] = -1


cdef inline void _queue_read(Job *j, Py_ssize_t i) noexcept nogil:
    j.readq[(j.rq_head + j.rq_len) % j.n] = i
    j.rq_len += 1


cdef inline void _finish(Job *j, Py_ssize_t i) noexcept nogil:
    j.left -= 1
    if j.err[i] == 0:
        j.nbytes += j.got[i]
    if j.close_fds and j.fd[i] >= 0 and j.err[i] != ITEM_UNSIZED:
        j.closeq[j.cq_len] = j.fd[i]
        j.cq_len += 1
        j.fd[i] = -1


cdef void _fill(Ring ring, Job *j, uint32_t k, Hold *hold) noexcept nogil:
    """Write up to k SQEs: closes first (they free fds), then reads, then opens,
    these two within the job's depth."""
    cdef Claim c
    cdef io_uring_sqe *sqe
    cdef Py_ssize_t i
    ring._claim_begin(&c)
    while k and j.cq_len:
        j.cq_len -= 1
        sqe = claim_sqe(&c, (<uint64_t>KIND_CLOSE << 56) | j.tag, NULL)
        sqe.opcode = IORING_OP_CLOSE
        sqe.fd = j.closeq[j.cq_len]
        k -= 1
    k = <uint32_t>min(<Py_ssize_t>k, j.depth - j.busy)
    j.busy += k             # less any opens skipped below
    while k and j.rq_len:
        i = j.readq[j.rq_head]
        j.rq_head = (j.rq_head + 1) % j.n
        j.rq_len -= 1
        sqe = claim_sqe(&c, (<uint64_t>KIND_READ << 56) | j.tag | <uint64_t>i, hold)
        sqe.opcode = IORING_OP_READ
        sqe.fd = j.fd[i]
        sqe.addr = <uint64_t>(j.dest[i] + j.got[i])
        sqe.off = <uint64_t>(j.off[i] + j.got[i])
        sqe.len = <uint32_t>min(j.want[i] - j.got[i], _MAX_PIECE)
        hold.refs += 1
        k -= 1
    while k and j.next_open < j.n:
        i = j.next_open
        j.next_open += 1
        if j.paths[i] == NULL:
            continue                        # refused before the kernel saw it
        sqe = claim_sqe(&c, (<uint64_t>KIND_OPEN << 56) | j.tag | <uint64_t>i, hold)
        sqe.opcode = IORING_OP_OPENAT
        sqe.fd = AT_FDCWD
        sqe.addr = <uint64_t><size_t>j.paths[i]
        sqe.open_flags = <uint32_t>j.open_flags
        hold.refs += 1
        k -= 1
    j.busy -= k             # what the depth allowed but nothing needed
    ring._claim_end(&c)


cdef int _on_open(Job *j, Py_ssize_t i, int32_t res, list keep) except -1:
    """An open completed: fstat the fd, refuse what is not a regular file, and give
    the file a bytes object of its size to read into."""
    cdef stat_t st
    cdef object data
    if res < 0:
        j.err[i] = -res
        _finish(j, i)
        return 0
    j.fd[i] = res
    if fstat(res, &st) != 0:
        j.err[i] = errno
    elif not S_ISREG(st.st_mode):
        j.err[i] = ITEM_NOT_REGULAR
        j.mode[i] = st.st_mode
    elif st.st_size == 0:
        j.err[i] = ITEM_UNSIZED
    else:
        try:
            data = PyBytes_FromStringAndSize(NULL, st.st_size)
        except MemoryError:
            j.err[i] = ENOMEM
        else:
            keep[i] = data
            j.dest[i] = PyBytes_AS_STRING(data)
            j.want[i] = st.st_size
            _queue_read(j, i)
            return 0
    _finish(j, i)
    return 0


cdef void _on_read(Job *j, Py_ssize_t i, int32_t res) noexcept:
    cdef ssize_t r
    if res == -EAGAIN:
        # A file opened O_NONBLOCK on a filesystem (or kernel) that will not wait for
        # the page cache: read this piece synchronously, without the GIL.
        with nogil:
            r = pread(j.fd[i], j.dest[i] + j.got[i], <size_t>min(j.want[i] - j.got[i],
                      _MAX_PIECE), j.off[i] + j.got[i])
        res = <int32_t>r if r >= 0 else -errno
        j.sync_reads += 1
    if res < 0:
        j.err[i] = -res
    elif res > 0:
        j.got[i] += res
        if j.got[i] < j.want[i]:
            j.short_reads += 1              # resubmit the rest
            _queue_read(j, i)
            return
    _finish(j, i)                           # res == 0: EOF, what pread returns


cdef int _reap_job(Ring ring, Job *j, list keep) except -1:
    cdef Py_ssize_t t, n = ring._reap(None, None, None, ring._nslots)
    cdef uint64_t ud
    cdef int32_t res
    cdef uint32_t kind
    j.ops += n
    for t in range(n):
        ud = ring._scratch_ud[t]
        res = ring._scratch_res[t]
        kind = <uint32_t>(ud >> 56)
        if ((ud >> 32) & 0xFFFFFF) != j.id:
            if kind == KIND_OPEN and res >= 0:
                close(res)                  # an abandoned job's open: nobody owns it
            continue
        if kind == KIND_OPEN:
            j.busy -= 1
            _on_open(j, <Py_ssize_t><uint32_t>ud, res, keep)
        elif kind == KIND_READ:
            j.busy -= 1
            _on_read(j, <Py_ssize_t><uint32_t>ud, res)
    return 0


cdef int _run_job(Ring ring, Job *j, Hold *hold, list keep) except -1:
    """Fill, submit, wait and reap until every item is done. Closes left unsubmitted
    go to the kernel with the next job's first submission, or drain_jobs()."""
    cdef uint32_t k
    cdef Py_ssize_t wanted
    while True:
        wanted = j.cq_len + min(j.rq_len + (j.n - j.next_open), j.depth - j.busy)
        if wanted:
            k = ring._room(<uint32_t>min(wanted, <Py_ssize_t>UINT32_MAX))
            if k:
                _fill(ring, j, k, hold)
        if j.left == 0 and j.cq_len == 0:
            return 0
        if ring._used() == 0:
            raise UringError("internal error: a read job is waiting with nothing in flight")
        ring._submit_and_wait(1, -1.0)
        j.syscalls += 1
        _reap_job(ring, j, keep)


cdef void _drop_job_ref(Hold *hold) noexcept:
    """The job is over: the hold now lives only as long as requests still use it."""
    hold.refs -= 1
    if hold.refs == 0:
        hold_free(hold)


cdef int _add_stats(object stats, Job *j) except -1:
    stats[0] += j.syscalls
    stats[1] += j.ops
    stats[2] += j.short_reads
    stats[3] += j.sync_reads
    return 0


cdef const char *_path_of(object p, list names) except? NULL:
    """p as bytes (kept in `names`), or NULL when it holds a NUL byte."""
    cdef bytes b
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


def read_file_window(Ring ring not None, paths, Py_ssize_t start, Py_ssize_t stop,
                     list out, int open_flags, Py_ssize_t depth, stats):
    """Read the whole files paths[start:stop] into out[start:stop] as bytes, through
    `ring`. Returns (leftovers, bytes_read): leftovers lists (i, code, mode, fd) for
    each file not read here, code an errno or NOT_REGULAR / UNSIZED / NUL_BYTE; an
    UNSIZED file's fd is left open for the caller. At most `depth` opens and reads
    are in flight. `stats` (4 int64s: syscalls, operations, short reads, synchronous
    reads) is added to."""
    cdef Job j
    cdef Hold *hold = NULL
    cdef Py_ssize_t i, n = stop - start
    cdef list names = []
    cdef list keep = [None] * n
    cdef list leftovers = []
    cdef object data
    if not 0 <= start <= stop <= len(paths) or stop > len(out):
        raise ValueError(f"window {start}:{stop} is outside the paths or out")
    _job_alloc(&j, n)
    try:
        j.open_flags = open_flags | os.O_CLOEXEC
        j.close_fds = True
        j.depth = max(depth, 1)
        for i in range(n):
            j.paths[i] = _path_of(paths[start + i], names)
            if j.paths[i] == NULL:
                j.err[i] = ITEM_NUL_BYTE
                j.left -= 1
        ring._enter_api()
        try:
            hold = hold_object((names, keep))
            hold.refs += 1          # the job's own: the hold outlives every reap
            try:
                _run_job(ring, &j, hold, keep)
            except BaseException:
                _job_abandon(&j)
                raise
            finally:
                _drop_job_ref(hold)
        finally:
            ring._leave_api()
        for i in range(n):
            if j.err[i] != 0:
                leftovers.append((i, j.err[i], j.mode[i], j.fd[i]))
                continue
            data = keep[i]
            if j.got[i] < j.want[i]:            # the file shrank while being read
                data = PyBytes_FromStringAndSize(j.dest[i], j.got[i])
            out[start + i] = data
        _add_stats(stats, &j)
        return leftovers, j.nbytes
    finally:
        _job_free(&j)


def check_ranges(offsets, lengths, buffer_offsets=None, Py_ssize_t buflen=-1):
    """Raise ValueError naming the first invalid range: offsets and lengths must be
    >= 0 and, with buffer_offsets, each range must fit a `buflen`-byte buffer. A C
    loop: ranges are checked whole before any is read, at no cost per range."""
    cdef IntArray off, length, boff
    cdef Py_ssize_t i, n
    cdef int64_t o, m, b
    off.has_view = length.has_view = boff.has_view = False
    try:
        int_array_open(&off, offsets, "offsets", False, False)
        int_array_open(&length, lengths, "lengths", False, False)
        n = off.n
        _check_same_length(&length, "lengths", n)
        if buffer_offsets is not None:
            int_array_open(&boff, buffer_offsets, "buffer_offsets", False, False)
            _check_same_length(&boff, "buffer_offsets", n)
        for i in range(n):
            o = ia_get(&off, i)
            m = ia_get(&length, i)
            if o < 0 or m < 0:
                raise ValueError(f"range {i}: offset {o} and length {m} must be >= 0")
            if buffer_offsets is not None:
                b = ia_get(&boff, i)
                if b < 0 or b > buflen or m > buflen - b:
                    raise ValueError(f"range {i} (offset {o}, length {m}, buffer offset "
                                     f"{b}) does not fit a {buflen}-byte buffer")
    finally:
        int_array_close(&boff)
        int_array_close(&length)
        int_array_close(&off)


def read_ranges_job(Ring ring not None, int fd, offsets, lengths, buffer,
                    buffer_offsets, Py_ssize_t depth, stats, name):
    """pread semantics for many ranges of one open fd, through `ring`: range i reads
    lengths[i] bytes at offsets[i], into buffer[buffer_offsets[i]:] (a writable
    buffer), or with buffer=None into a new bytes object. Short reads are resubmitted
    until the range is full or EOF, at most `depth` reads in flight. Returns per
    range its byte count (or its bytes); a failed read raises its OSError, naming
    the file `name`, once every read has completed."""
    cdef Job j
    cdef Hold *hold = NULL
    cdef IntArray off, length, boff
    cdef Py_ssize_t i, n
    cdef char *base = NULL
    cdef Py_ssize_t base_len = 0
    cdef list keep
    cdef list results
    off.has_view = length.has_view = boff.has_view = False
    memset(&j, 0, sizeof(Job))
    try:
        int_array_open(&off, offsets, "offsets", False, False)
        n = off.n
        _job_alloc(&j, n)
        j.depth = max(depth, 1)
        keep = [None] * n
        hold = hold_new(0 if buffer is None else 1)
        Py_INCREF(keep)
        hold.obj = <PyObject *>keep
        hold.refs += 1              # the job's own: the hold outlives every reap
        int_array_open(&length, lengths, "lengths", False, False)
        _check_same_length(&length, "lengths", n)
        if buffer is not None:
            int_array_open(&boff, buffer_offsets, "buffer_offsets", False, False)
            _check_same_length(&boff, "buffer_offsets", n)
            hold_export(hold, buffer, True, "buffer")
            base = <char *>hold.views[0].buf
            base_len = hold.views[0].len
        check_ranges(offsets, lengths, buffer_offsets, base_len)
        for i in range(n):
            j.fd[i] = fd
            j.off[i] = ia_get(&off, i)
            j.want[i] = ia_get(&length, i)
            if buffer is not None:
                j.dest[i] = base + ia_get(&boff, i)
            else:
                keep[i] = PyBytes_FromStringAndSize(NULL, j.want[i])
                j.dest[i] = PyBytes_AS_STRING(keep[i])
            if j.want[i] == 0:
                j.left -= 1
            else:
                _queue_read(&j, i)
        ring._enter_api()
        try:
            _run_job(ring, &j, hold, keep)
        finally:
            ring._leave_api()
        _add_stats(stats, &j)
        results = [None] * n
        for i in range(n):
            if j.err[i]:
                raise path_error(j.err[i], name)
            elif buffer is not None:
                results[i] = j.got[i]
            elif j.got[i] < j.want[i]:
                results[i] = PyBytes_FromStringAndSize(j.dest[i], j.got[i])
            else:
                results[i] = keep[i]
        return results
    finally:
        if hold != NULL:
            _drop_job_ref(hold)
        int_array_close(&boff)
        int_array_close(&length)
        int_array_close(&off)
        _job_free(&j)


def drain_jobs(Ring ring not None, stats):
    """Submit what is left (the last window's closes) and reap everything in flight,
    closing the fds of abandoned jobs' opens."""
    cdef Job j
    _job_alloc(&j, 0)       # an id no request carries: every completion is foreign
    try:
        ring._enter_api()
        try:
            while ring._used():
                ring._submit_and_wait(1, -1.0)
                j.syscalls += 1
                _reap_job(ring, &j, None)
        finally:
            ring._leave_api()
        _add_stats(stats, &j)
    finally:
        _job_free(&j)
