# PathBatch: the arguments of prep_openat_batch / prep_statx_batch /
# prep_close_batch, checked whole before any SQE is written, then filled in C loops.

cdef struct PathBatch:
    uint8_t opcode
    uint8_t sqe_flags
    Py_ssize_t n
    const char **paths      # borrowed from a tuple of bytes the Hold keeps alive
    IntCopy ud              # v NULL: number the requests 0..n-1
    IntCopy index           # openat: direct-descriptor slots; close: fds or slots
    bint direct             # openat into the registered table / close a fixed slot
    int32_t dir_fd
    uint32_t open_flags, mode, at_flags, mask
    statx *statx_base       # prep_statx_batch: destination i is statx_base[i]


cdef enum:
    ANY_FREE_SLOT = -1      # FILE_INDEX_ALLOC in a file_indexes array


cdef tuple _paths_tuple(object paths):
    """The paths as a tuple of bytes, each free of NUL bytes."""
    cdef tuple t = tuple([p if type(p) is bytes else os.fsencode(p) for p in paths])
    cdef Py_ssize_t i
    cdef bytes b
    for i in range(len(t)):
        b = t[i]
        if strlen(PyBytes_AS_STRING(b)) != <size_t>len(b):
            raise ValueError(f"paths[{i}] contains a NUL byte: {b!r}")
    return t


cdef int _path_pointers(PathBatch *b, tuple t) except -1:
    cdef Py_ssize_t i
    b.paths = <const char **>malloc(max(1, len(t)) * sizeof(char *))
    if b.paths == NULL:
        raise MemoryError()
    for i in range(len(t)):
        b.paths[i] = PyBytes_AS_STRING(<bytes>t[i])
    return 0


cdef void _close_path_batch(PathBatch *b) noexcept:
    free(b.paths)
    b.paths = NULL
    int_copy_free(&b.ud)
    int_copy_free(&b.index)


cdef inline uint64_t _batch_user_data(const IntCopy *ud, Py_ssize_t i) noexcept nogil:
    """The caller's user_data of request i, or i when none was given."""
    return <uint64_t>ud.v[i] if ud.v != NULL else <uint64_t>i


cdef void _fill_path_sqe(PathBatch *b, Py_ssize_t i, io_uring_sqe *sqe) noexcept nogil:
    cdef int64_t index
    sqe.opcode = b.opcode
    sqe.flags = b.sqe_flags
    if b.opcode == IORING_OP_OPENAT:
        sqe.fd = b.dir_fd
        sqe.addr = <uint64_t><size_t>b.paths[i]
        sqe.len = b.mode
        sqe.open_flags = b.open_flags
        if b.direct:
            index = ic_get(&b.index, i)
            sqe.file_index = IORING_FILE_INDEX_ALLOC if index == ANY_FREE_SLOT \
                else <uint32_t>index + 1
    elif b.opcode == IORING_OP_STATX:
        sqe.fd = b.dir_fd
        sqe.addr = <uint64_t><size_t>b.paths[i]
        sqe.len = b.mask
        sqe.off = <uint64_t><size_t>&b.statx_base[i]
        sqe.statx_flags = b.at_flags
    else:                                   # IORING_OP_CLOSE
        index = ic_get(&b.index, i)
        if b.direct:
            sqe.file_index = <uint32_t>index + 1
        else:
            sqe.fd = <int32_t>index


cdef class StatxArray:
    """`n` statx(2) results side by side: the destination of prep_statx_batch.

    StatxArray(n) allocates n zeroed entries (n >= 1; MemoryError when they do not
    fit). Read them with sizes() and modes() after the completions are reaped: until
    then the ring holds the array and the kernel may be writing it."""
    cdef statx *items
    cdef readonly Py_ssize_t n

    def __cinit__(self, n):
        self.n = <Py_ssize_t>_int_arg(n, "n", 1, INT64_MAX // sizeof(statx))
        self.items = <statx *>calloc(self.n, sizeof(statx))
        if self.items == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.items)

    def __len__(self):
        return self.n

    def sizes(self):
        """stx_size of every entry, as array('Q')."""
        cdef object out = array.array("Q", bytes(8 * self.n))
        cdef uint64_t *p = <uint64_t *>(<carray.array>out).data.as_voidptr
        cdef Py_ssize_t i
        for i in range(self.n):
            p[i] = self.items[i].stx_size
        return out

    def modes(self):
        """stx_mode of every entry (file type and permissions), as array('I')."""
        cdef object out = array.array("I", bytes(4 * self.n))
        cdef uint32_t *p = <uint32_t *>(<carray.array>out).data.as_voidptr
        cdef Py_ssize_t i
        for i in range(self.n):
            p[i] = self.items[i].stx_mode
        return out
