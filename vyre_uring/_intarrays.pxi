# IntArray: a 1-D integer buffer (array.array, numpy array, memoryview) read or
# written element by element in nogil loops, whatever its integer type. A scalar
# broadcasts (one fd for a whole batch); a list or range is converted once.

cdef struct IntArray:
    char *buf
    Py_ssize_t n            # -1 for a broadcast scalar
    int itemsize
    bint is_signed
    int64_t scalar
    Py_buffer view
    bint has_view


cdef const char *_FORMAT_UNSIGNED_BYTE = b"B"   # a buffer with no format is bytes


cdef int int_array_open(IntArray *a, object obj, str name, bint writable,
                        bint allow_scalar, bint borrow=False) except -1:
    """Fill `a` from `obj`; release with int_array_close. The common case (a native
    integer buffer) takes no Python-level exception handling: it is a hot path.

    With `borrow`, an array.array is read in place without a buffer export. Such a
    view is valid only while the GIL stays held and no Python code runs: the caller
    must not release the GIL, call into Python or free holds before closing it."""
    cdef const char *fmt
    cdef char code
    a.has_view = False
    a.n = 0
    if allow_scalar and isinstance(obj, int):
        a.n = -1
        a.scalar = obj
        return 0
    if borrow and isinstance(obj, carray.array):
        return _borrow_array(a, <carray.array>obj, name)
    if not PyObject_CheckBuffer(obj):
        if writable or obj is None or isinstance(obj, (str, bytes)):
            raise TypeError(f"{name} must be a 1-D integer buffer (array.array, numpy array), "
                            f"not {type(obj).__name__}")
        obj = _array_q(obj, name)
    cdef int flags = PyBUF_FORMAT | PyBUF_C_CONTIGUOUS | (PyBUF_WRITABLE if writable else 0)
    if _get_buffer_noraise(obj, &a.view, flags) < 0:
        _reraise_buffer_error(obj, flags, name)
    a.has_view = True
    fmt = a.view.format
    if fmt == NULL:
        fmt = _FORMAT_UNSIGNED_BYTE
    if fmt[0] == b"@" or fmt[0] == b"=" or fmt[0] == b"<":
        fmt += 1
    code = fmt[0]
    if a.view.ndim != 1 or code == 0 or fmt[1] != 0 or code not in b"bBhHiIlLqQnN" \
            or a.view.itemsize not in (1, 2, 4, 8):
        int_array_close(a)
        raise TypeError(f"{name} must be a 1-D array of native integers; got format "
                        f"{(<bytes>a.view.format).decode() if a.view.format else 'B'!r} "
                        f"with {a.view.ndim} dimension(s)")
    a.buf = <char *>a.view.buf
    a.n = a.view.shape[0]
    a.itemsize = <int>a.view.itemsize
    a.is_signed = code in b"bhilqn"
    return 0


cdef int _borrow_array(IntArray *a, carray.array arr, str name) except -1:
    cdef char code = arr.ob_descr.typecode
    if code not in b"bBhHiIlLqQ":
        raise TypeError(f"{name} must be an array of integers, not typecode {chr(code)!r}")
    a.buf = arr.data.as_chars
    a.n = Py_SIZE(arr)
    a.itemsize = arr.ob_descr.itemsize
    a.is_signed = code in b"bhilq"
    return 0


cdef int _reraise_buffer_error(object obj, int flags, str name) except -1:
    """A failed export, asked again the raising way (cold path), as a TypeError
    naming `name`."""
    cdef Py_buffer view
    PyErr_Clear()
    try:
        PyObject_GetBuffer(obj, &view, flags)
    except BufferError as exc:
        raise TypeError(f"{name}: {exc}") from None
    PyBuffer_Release(&view)
    raise TypeError(f"{name}: the buffer export failed")


cdef object _array_q(object obj, str name):
    try:
        return array.array("q", obj)
    except (TypeError, OverflowError) as exc:
        raise TypeError(f"{name} must be a 1-D integer buffer or a sequence of ints: {exc}") \
            from None


cdef void int_array_close(IntArray *a) noexcept:
    if a.has_view:
        PyBuffer_Release(&a.view)
        a.has_view = False


cdef inline int64_t ia_get(const IntArray *a, Py_ssize_t i) noexcept nogil:
    """Element i as int64; an unsigned 64-bit value past INT64_MAX comes back negative."""
    cdef const char *p
    if a.n < 0:
        return a.scalar
    p = a.buf + i * a.itemsize
    if a.itemsize == 8:
        return (<const int64_t *>p)[0]
    # Each branch widens on its own: a ternary of int32 and uint32 would make both
    # unsigned in C, turning -1 into 4294967295.
    if a.itemsize == 4:
        if a.is_signed:
            return (<const int32_t *>p)[0]
        return (<const uint32_t *>p)[0]
    if a.itemsize == 2:
        if a.is_signed:
            return (<const int16_t *>p)[0]
        return (<const uint16_t *>p)[0]
    if a.is_signed:
        return (<const int8_t *>p)[0]
    return (<const uint8_t *>p)[0]


cdef inline void ia_set(IntArray *a, Py_ssize_t i, int64_t v) noexcept nogil:
    cdef char *p = a.buf + i * a.itemsize
    if a.itemsize == 8:
        (<int64_t *>p)[0] = v
    elif a.itemsize == 4:
        (<int32_t *>p)[0] = <int32_t>v
    elif a.itemsize == 2:
        (<int16_t *>p)[0] = <int16_t>v
    else:
        (<int8_t *>p)[0] = <int8_t>v
