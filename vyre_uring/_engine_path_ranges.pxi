# Byte ranges of many files in one call: ranges are grouped by file (group_paths),
# and a job opens each file once, reads all its ranges through the ring with the
# range machinery above (_fill, _on_read: short reads resubmitted, O_DIRECT through
# bounce slots), then closes it. Files are taken a window at a time, so that a call
# over thousands of files holds at most _FILE_WINDOW fds.
#
# The opens are synchronous, in a nogil C loop: a window's reads depend on its
# opens, and an openat of a cached path costs about what submitting it would
# (io_uring runs it inline when the lookup is cached).

# Files a window holds open: far below the usual fd limit (1024), with room for
# the windows of other rings and for the caller's own files.
cdef Py_ssize_t _FILE_WINDOW = 128

cdef int64_t *_q_data(object arr):
    return <int64_t *>(<carray.array>arr).data.as_chars


def group_paths(paths):
    """(files, order, first): the distinct paths of `paths` in first-seen order; the
    indices of `paths` grouped by file, in input order within each file; and where
    each file's indices sit in `order`: file f's are order[first[f]:first[f + 1]].
    One compiled loop: no Python call per path. Paths are compared as given (str,
    bytes, or what os.fspath makes of a PathLike)."""
    cdef dict index = {}
    cdef list files = []
    cdef Py_ssize_t i, f, nfiles, n = len(paths)
    cdef object key, found
    file_of = array.array("q", bytes(8 * n))
    cdef int64_t *fo = _q_data(file_of)
    for i in range(n):
        key = paths[i]
        if type(key) is not str and type(key) is not bytes:
            key = PyOS_FSPath(key)
        found = index.get(key)
        if found is None:
            found = index[key] = len(files)
            files.append(key)
        fo[i] = <Py_ssize_t>found
    nfiles = len(files)
    first = array.array("q", bytes(8 * (nfiles + 1)))
    order = array.array("q", bytes(8 * n))
    cdef int64_t *fi = _q_data(first)
    cdef int64_t *od = _q_data(order)
    for i in range(n):                      # counting sort, stable
        fi[fo[i] + 1] += 1
    for f in range(nfiles):
        fi[f + 1] += fi[f]
    for i in range(n):
        od[fi[fo[i]]] = i
        fi[fo[i]] += 1
    for f in range(nfiles, 0, -1):          # each count moved one file on: back
        fi[f] = fi[f - 1]
    fi[0] = 0
    return files, order, first


cdef struct FileWindow:
    Py_ssize_t n            # files in the window
    Py_ssize_t opened       # of which the first `opened` were tried (the rest wait)
    Py_ssize_t refused      # files opened buffered: the filesystem refused O_DIRECT
    const char **names      # NULL where the path holds a NUL byte
    int32_t *fd             # -1 when not open
    int64_t *size
    int32_t *err            # 0, an errno, ITEM_NUL_BYTE or ITEM_NOT_REGULAR
    int32_t *mode
    uint8_t *direct         # opened with O_DIRECT


cdef int _window_alloc(FileWindow *w, Py_ssize_t n) except -1:
    memset(w, 0, sizeof(FileWindow))
    w.n = n
    w.names = <const char **>calloc(n, sizeof(char *))
    w.fd = <int32_t *>malloc(n * sizeof(int32_t))
    w.size = <int64_t *>calloc(n, sizeof(int64_t))
    w.err = <int32_t *>calloc(n, sizeof(int32_t))
    w.mode = <int32_t *>calloc(n, sizeof(int32_t))
    w.direct = <uint8_t *>calloc(n, sizeof(uint8_t))
    if not (w.names and w.fd and w.size and w.err and w.mode and w.direct):
        _window_free(w)
        raise MemoryError()
    memset(w.fd, 0xFF, n * sizeof(int32_t))        # every fd -1
    return 0


cdef void _window_free(FileWindow *w) noexcept nogil:
    """Close what the window opened, and free it."""
    cdef Py_ssize_t k
    if w.fd != NULL:
        for k in range(w.n):
            if w.fd[k] >= 0:
                close(w.fd[k])
                _fds_gone(1)
    free(w.names); free(w.fd); free(w.size); free(w.err); free(w.mode); free(w.direct)
    memset(w, 0, sizeof(FileWindow))


cdef void _open_window(FileWindow *w, bint direct, const int *stop) noexcept nogil:
    """Open and size the window's files. At the fd limit, with some of the window's
    files open, the window ends there (w.opened): the rest go to the next window,
    after these are closed. With none open, see _open_at_limit."""
    cdef Py_ssize_t k, held = 0
    cdef int fd
    cdef stat_t st
    for k in range(w.n):
        if w.names[k] == NULL:
            w.err[k] = ITEM_NUL_BYTE
            continue
        fd = _open_stat(w.names[k], direct, &st)
        if fd == -EMFILE or fd == -ENFILE:
            if held:
                w.opened = k
                return
            fd = _open_at_limit(w.names[k], direct, &st, stop)
        if fd < 0:
            w.err[k] = -fd
            continue
        w.fd[k] = fd
        held += 1
        vy_i64_add(&_fds_held, 1)
        if not S_ISREG(st.st_mode):
            w.err[k] = ITEM_NOT_REGULAR
            w.mode[k] = st.st_mode
        w.size[k] = st.st_size
        w.direct[k] = direct and (fcntl(fd, F_GETFL) & _O_DIRECT) != 0
        w.refused += direct and not w.direct[k]
    w.opened = w.n


cdef int _open_at_limit(const char *p, bint direct, stat_t *st, const int *stop) \
        noexcept nogil:
    """_open_stat at the fd limit with no fd of our own to close: other jobs' fds
    are waited for (_may_wait_for_fds), or when none holds any, closes still being
    carried out (_FD_GRACE_S); then the file fails with EMFILE. The call's Stop ends
    the wait."""
    cdef double since = 0
    cdef int64_t closed = 0
    cdef int fd = -EMFILE
    while (fd == -EMFILE or fd == -ENFILE) and not (stop != NULL and vy_flag_get(stop)) \
            and _may_wait_for_fds(&since, &closed):
        usleep(1000)
        fd = _open_stat(p, direct, st)
    return fd


cdef inline int64_t _clamped(int64_t off, int64_t length, int64_t size) noexcept nogil:
    """The bytes a range can read of a file of `size` bytes (a negative length: to
    the end of the file). A size of 0 says nothing (/proc reports it): the length
    asked for."""
    cdef int64_t rest = size - off if off < size else 0
    if size == 0:
        return length
    return rest if length < 0 else min(length, rest)


def read_path_ranges_job(ring, list files, order, first, offsets, lengths,
                         Py_ssize_t f0, Py_ssize_t f1, list out, Py_ssize_t depth, stats,
                         error_of, bounce=None, Stop call=None, list kept=None):
    """The ranges of files[f0:f1] (grouped by group_paths) through `ring`: range r
    reads lengths[r] bytes at offsets[r] (pread semantics: fewer past EOF; a
    negative length reads to EOF) of its file, into out[r] as bytes. A file that
    cannot be read puts error_of(code, mode, path) into every one of its ranges
    (code an errno, NOT_REGULAR or NUL_BYTE), and a failed read its OSError into
    its range: the other files and ranges are still read. With a `bounce` buffer
    (see _job_direct) files are opened O_DIRECT where the filesystem allows it.
    `call`: the call's Stop. Returns the bytes read; `kept` (a list) gets (bytes
    read, top) appended per job, as read_file_window's does."""
    ring_core(ring)                 # a Ring, or TypeError before any work
    cdef FileWindow w
    cdef Py_ssize_t k, pos = f0
    cdef int64_t nbytes = 0
    cdef list names
    cdef IntCopy off, length, cord, cfirst
    memset(&w, 0, sizeof(FileWindow))
    off.v = length.v = cord.v = cfirst.v = NULL
    try:
        # The reader's own arrays, copied again: what the window checks is what
        # its reads use, whatever another thread does to the caller's.
        int_copy(&off, offsets, "offsets", False)
        int_copy(&length, lengths, "lengths", False)
        int_copy(&cord, order, "order", False)
        int_copy(&cfirst, first, "first", False)
        if off.n != len(out) or length.n != len(out):
            raise ValueError("offsets and lengths must have one value per range")
        _check_groups(&cord, &cfirst, len(files), f0, f1, len(out))
        while pos < f1:
            names = []
            _window_alloc(&w, min(_FILE_WINDOW, f1 - pos))
            for k in range(w.n):
                w.names[k] = _path_of(files[pos + k], names)
            with nogil:
                _open_window(&w, bounce is not None,
                             &call.flag if call is not None else NULL)
            stats[4] += w.refused
            nbytes += _read_window(ring, &w, files, pos, cord.v, cfirst.v, &off, &length,
                                   out, depth, stats, error_of, bounce, call, kept)
            pos += w.opened
            _window_free(&w)
        return nbytes
    finally:
        _window_free(&w)
        int_copy_free(&cfirst)
        int_copy_free(&cord)
        int_copy_free(&length)
        int_copy_free(&off)


cdef int _check_groups(const IntCopy *order, const IntCopy *first, Py_ssize_t nfiles,
                       Py_ssize_t f0, Py_ssize_t f1, Py_ssize_t n) except -1:
    """Refuse groups that would index outside the job's arrays: first must rise from
    0 to len(order), one entry per file and one more, and order name ranges 0..n-1."""
    cdef Py_ssize_t f, t
    if not 0 <= f0 <= f1 <= nfiles or first.n != nfiles + 1 or order.n != n or \
            first.v[0] != 0 or first.v[nfiles] != n:
        raise ValueError("the groups of read_path_ranges_job do not match its files")
    for f in range(nfiles):
        if first.v[f] > first.v[f + 1]:
            raise ValueError("read_path_ranges_job: first must not decrease")
    for t in range(n):
        if not 0 <= order.v[t] < n:
            raise ValueError(f"read_path_ranges_job: order[{t}] is not a range")
    return 0


cdef int64_t _read_window(object ring, FileWindow *w, list files, Py_ssize_t pos,
                          const int64_t *order, const int64_t *first, IntCopy *off,
                          IntCopy *length, list out, Py_ssize_t depth, stats, error_of,
                          bounce, Stop call, list kept) except -1:
    """One job over the ranges of the window's open files."""
    cdef Job j
    cdef Hold *hold = NULL
    cdef Py_ssize_t k, t, i, r, base = first[pos]
    cdef Py_ssize_t n = first[pos + w.opened] - base
    cdef int64_t o
    cdef list keep = _untracked([None] * n)
    cdef object exc, top = None
    cdef bint fuse
    memset(&j, 0, sizeof(Job))
    try:
        _job_alloc(&j, n)
        j.depth = max(depth, 1)
        j.stop = &call.flag if call is not None else NULL
        hold = hold_object(keep, bounce is not None)
        hold.refs += 1              # the job's own: the hold outlives every reap
        if bounce is not None:
            _job_direct(&j, hold, bounce)
        for k in range(w.opened):
            exc = None
            if w.err[k]:
                exc = error_of(w.err[k], w.mode[k], files[pos + k])
            fuse = exc is None and pread_only(w.fd[k])
            for t in range(first[pos + k], first[pos + k + 1]):
                i = t - base
                r = order[t]
                if exc is not None:
                    out[r] = exc
                    j.left -= 1
                    continue
                o = ic_get(off, r)
                if o < 0 or o > INT64_MAX - _CHUNK:
                    raise ValueError(f"range {r}: offset {o} must be >= 0 and a file "
                                     f"offset")
                j.want[i] = _clamped(o, ic_get(length, r), w.size[k])
                if j.want[i] < 0:           # to the end of a file whose size says
                    j.left -= 1                 # nothing: rare (/proc), read here
                    try:
                        out[r] = pread_to_eof(w.fd[k], o, files[pos + k])
                    except OSError as e:
                        out[r] = e
                    continue
                j.fd[i] = w.fd[k]
                j.sync[i] = fuse                # read with pread (pread_only)
                j.off[i] = o
                j.direct[i] = w.direct[k]
                keep[i] = _range_bytes(r, j.want[i], files[pos + k])
                j.dest[i] = PyBytes_AS_STRING(keep[i])
                _advise_huge(j.dest[i], j.want[i])
                _start_range(&j, i)
        _run_owned(ring, &j, hold, keep)
        _add_stats(stats, &j)
        for i in range(n):
            r = order[base + i]
            if j.err[i]:
                out[r] = path_error(j.err[i], files[pos + _file_at(first, pos, base + i)])
            elif j.fd[i] >= 0:
                out[r] = keep[i] if j.got[i] == j.want[i] else \
                    PyBytes_FromStringAndSize(j.dest[i], j.got[i])
                top = _higher(top, out[r], j.got[i])
        if kept is not None:
            kept.append((j.nbytes, top))
        return j.nbytes
    finally:
        if hold != NULL:
            _drop_job_ref(hold)
        _job_free(&j)


cdef Py_ssize_t _file_at(const int64_t *first, Py_ssize_t pos, Py_ssize_t t) noexcept:
    """The window file (counted from pos) whose ranges hold position t of order."""
    cdef Py_ssize_t k = 0
    while first[pos + k + 1] <= t:
        k += 1
    return k
