# ReadBatch: the arguments of prep_reads / prep_read_fixed_batch, copied into private
# memory, validated whole in one C pass before any SQE is written, then filled chunk
# by chunk (the GIL is released between chunks: the copies are what is filled).

cdef struct ReadBatch:
    IntCopy fd, off, length, boff, ud, index
    Py_ssize_t n
    char *base              # prep_reads: the destination buffer
    Py_ssize_t base_len
    uint8_t opcode, flags
    int64_t cursor          # next packed offset when buffer_offsets is None

# Why a range is refused (see _batch_error).
cdef enum:
    BAD_FD = 1
    BAD_FIXED_FD
    BAD_OFFSET
    BAD_LENGTH
    BAD_BUFFER_OFFSET
    BAD_RANGE
    BAD_INDEX


cdef inline int64_t _buffer_offset(ReadBatch *b, Py_ssize_t i) noexcept nogil:
    """Range i's offset in its destination. buffer_offsets=None packs prep_reads'
    ranges back to back, and puts each fixed read at the start of its buffer."""
    cdef int64_t v
    if b.boff.v != NULL:
        return b.boff.v[i]
    if b.opcode == IORING_OP_READ_FIXED:
        return 0
    v = b.cursor
    b.cursor += b.length.v[i]
    return v


cdef Py_ssize_t _first_bad_range(ReadBatch *b, int64_t nfiles, Hold *reg, uint32_t nbufs,
                                 int *why) noexcept nogil:
    cdef Py_ssize_t i
    cdef int64_t fd, off, length, boff, index, limit
    cdef int64_t saved = b.cursor
    for i in range(b.n):
        fd = ic_get(&b.fd, i)
        off = b.off.v[i]
        length = b.length.v[i]
        boff = _buffer_offset(b, i)
        limit = b.base_len
        why[0] = 0
        if b.flags & IOSQE_FIXED_FILE:
            if not 0 <= fd < nfiles:
                why[0] = BAD_FIXED_FD
        elif not 0 <= fd <= 0x7FFFFFFF:
            why[0] = BAD_FD
        if why[0] == 0 and not _offset_ok(off):
            why[0] = BAD_OFFSET
        elif why[0] == 0 and not 0 <= length <= UINT32_MAX:
            why[0] = BAD_LENGTH
        elif why[0] == 0 and boff < 0:
            why[0] = BAD_BUFFER_OFFSET
        if why[0] == 0 and b.opcode == IORING_OP_READ_FIXED:
            index = ic_get(&b.index, i)
            if not 0 <= index < nbufs:
                why[0] = BAD_INDEX
            else:
                limit = reg.views[index].len
        if why[0] == 0 and not span_fits(boff, length, limit):
            why[0] = BAD_RANGE
        if why[0]:
            b.cursor = saved
            return i
    b.cursor = saved
    return -1


cdef str _batch_error(ReadBatch *b, Py_ssize_t i, int why, int64_t nfiles, uint32_t nbufs):
    cdef int64_t boff
    cdef Py_ssize_t j
    if b.boff.v != NULL:
        boff = b.boff.v[i]
    elif b.opcode == IORING_OP_READ_FIXED:
        boff = 0
    else:
        boff = sum(b.length.v[j] for j in range(i))
    fd, off, length = ic_get(&b.fd, i), b.off.v[i], b.length.v[i]
    where = f"range {i} (fd {fd}, offset {off}, length {length}, buffer offset {boff})"
    if why == BAD_FD:
        return f"{where}: fd must be a non-negative file descriptor"
    if why == BAD_FIXED_FD:
        return f"{where}: fd is not a slot of the registered file table ({nfiles} slots)"
    if why == BAD_OFFSET:
        return f"{where}: offsets[{i}] must be >= 0, or -1 for the file position"
    if why == BAD_LENGTH:
        return f"{where}: lengths[{i}] must be between 0 and {UINT32_MAX}"
    if why == BAD_BUFFER_OFFSET:
        return f"{where}: buffer_offsets[{i}] must be >= 0"
    if why == BAD_INDEX:
        return (f"{where}: buf_index {ic_get(&b.index, i)} is outside the registered "
                f"buffers ({nbufs} registered)")
    return f"{where}: the range does not fit in the destination buffer"


cdef void _close_batch(ReadBatch *b) noexcept:
    int_copy_free(&b.fd)
    int_copy_free(&b.off)
    int_copy_free(&b.length)
    int_copy_free(&b.boff)
    int_copy_free(&b.ud)
    int_copy_free(&b.index)


cdef int check_same_length(IntArray *a, str name, Py_ssize_t n,
                            str reference="offsets") except -1:
    return _check_len(a.n, name, n, reference)


cdef int _check_len(Py_ssize_t got, str name, Py_ssize_t n, str reference="offsets") \
        except -1:
    """An array of `got` elements (-1: a broadcast scalar) must have `reference`'s n."""
    if got >= 0 and got != n:
        raise ValueError(f"{name} has {got} elements but {reference} has {n}: the arrays "
                         f"must have equal lengths")
    return 0


cdef Py_ssize_t _checked_range(Py_ssize_t buflen, object buf_offset, object nbytes,
                               Py_ssize_t *boff) except -1:
    """The byte count of a request on buf[buf_offset:buf_offset + nbytes], checked;
    the offset, checked, goes to boff."""
    cdef int64_t b = _int_arg(buf_offset, "buf_offset", 0, INT64_MAX)
    cdef int64_t n
    if b > buflen:
        raise ValueError(f"buf_offset {b} is outside the buffer ({buflen} bytes)")
    n = buflen - b if nbytes is None else _int_arg(nbytes, "nbytes", 0, INT64_MAX)
    if n > UINT32_MAX:
        raise ArgumentRangeError(f"nbytes {n} exceeds {UINT32_MAX}, the most one request "
                                 f"can carry; split it")
    if not span_fits(b, n, buflen):
        raise ValueError(f"nbytes {n} at buf_offset {b} runs past the end of the buffer "
                         f"({buflen} bytes)")
    boff[0] = <Py_ssize_t>b
    return <Py_ssize_t>n


cdef int32_t *_file_table(object fds, Py_ssize_t *n) except NULL:
    """fds (an int array, or a sequence of ints) as a new C array the caller frees:
    each -1 (an empty slot) or a file descriptor. The kernel reads it during the
    register call, with the GIL released: it is private memory."""
    cdef IntCopy c
    cdef Py_ssize_t i
    cdef int32_t *table = NULL
    int_copy(&c, fds, "fds", False)
    try:
        if not 0 < c.n <= 1 << 20:
            raise ValueError(f"fds must hold 1 to {1 << 20} file slots, not {c.n}")
        for i in range(c.n):
            if not -1 <= c.v[i] <= 0x7FFFFFFF:
                _raise_range("fds", i, c.v[i], -1, 0x7FFFFFFF)
        table = <int32_t *>malloc(c.n * sizeof(int32_t))
        if table == NULL:
            raise MemoryError()
        for i in range(c.n):
            table[i] = <int32_t>c.v[i]
        n[0] = c.n
    finally:
        int_copy_free(&c)
    return table


# Sinks: the caller's output arrays of reap(), borrowed for one C copy.
cdef struct Sinks:
    IntArray ud, res, flags
    bint has_flags


cdef Py_ssize_t _open_sinks(Sinks *s, object ud_out, object res_out, object flags_out) \
        except -1:
    """Borrow and check reap()'s output arrays; returns their common length. The
    caller closes the sinks, also when this raises (no exception handling here: it
    runs on every reap)."""
    # Borrow only when all three are array.array: exporting any other object can
    # run Python code (a __buffer__ method), which must not happen while a borrow
    # is open.
    cdef bint borrow = isinstance(ud_out, carray.array) and \
        isinstance(res_out, carray.array) and \
        (flags_out is None or isinstance(flags_out, carray.array))
    s.has_flags = False
    s.ud.has_view = s.res.has_view = s.flags.has_view = False
    if borrow and _native_sink(&s.ud, ud_out, b"QL", 8) and \
            _native_sink(&s.res, res_out, b"il", 4) and s.res.n == s.ud.n and \
            (flags_out is None or (_native_sink(&s.flags, flags_out, b"IL", 4)
                                   and s.flags.n == s.ud.n)):
        s.has_flags = flags_out is not None
        return s.ud.n                      # the common case, checked in a few loads
    int_array_open(&s.ud, ud_out, "user_data_out", True, False, borrow)
    if s.ud.itemsize != 8:
        raise TypeError("user_data_out must hold 8-byte integers (array('Q'), uint64)")
    int_array_open(&s.res, res_out, "res_out", True, False, borrow)
    if s.res.itemsize < 4 or not s.res.is_signed:
        raise TypeError("res_out must hold signed 4- or 8-byte integers (array('i'))")
    if s.res.n != s.ud.n:
        check_same_length(&s.res, "res_out", s.ud.n, "user_data_out")
    if flags_out is not None:
        int_array_open(&s.flags, flags_out, "flags_out", True, False, borrow)
        s.has_flags = True
        if s.flags.itemsize < 4:
            raise TypeError("flags_out must hold 4- or 8-byte integers (array('I'))")
        if s.flags.n != s.ud.n:
            check_same_length(&s.flags, "flags_out", s.ud.n, "user_data_out")
    return s.ud.n


cdef inline bint _native_sink(IntArray *a, carray.array arr, const char *codes,
                              int itemsize) noexcept:
    """Borrow an array.array whose typecode is one of `codes` with `itemsize`."""
    cdef char code = arr.ob_descr.typecode
    if arr.ob_descr.itemsize != itemsize or (code != codes[0] and code != codes[1]):
        return False
    a.buf = arr.data.as_chars
    a.n = Py_SIZE(arr)
    a.itemsize = itemsize
    a.is_signed = code == b"i" or code == b"l"
    return True


cdef void _close_sinks(Sinks *s) noexcept:
    int_array_close(&s.ud)
    int_array_close(&s.res)
    int_array_close(&s.flags)
