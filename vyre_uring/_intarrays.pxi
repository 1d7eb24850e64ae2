# Integer-array arguments, two ways.
#
# IntCopy: what the batch methods read. The caller's array (array.array, numpy array,
# memoryview, list, range) is copied once into private int64 memory, before anything
# is validated and before the GIL is first released: another thread rewriting the
# caller's array meanwhile cannot change what was checked, or what goes into SQEs.
# A scalar broadcasts (one fd for a whole batch).
#
# IntArray: a 1-D integer buffer read or written in place, element by element,
# whatever its integer type: reap()'s output arrays, and the reader's inputs.
#
# The structs and their element accessors are in _ring.pxd, for the engine too.

cdef const char *_FORMAT_UNSIGNED_BYTE = b"B"   # a buffer with no format is bytes


cdef int int_copy(IntCopy *a, object obj, str name, bint allow_scalar,
                  bint unsigned64=False) except -1:
    """Copy `obj` into `a`; free it with int_copy_free, also after an error. The
    common case (a native integer buffer) is one export and one C loop, with no
    Python-level exception handling: it is a hot path. The elements of a sequence
    are checked as int64 values, or with `unsigned64` as uint64 ones (user_data)."""
    cdef Py_buffer view
    cdef char code
    cdef int flags = PyBUF_FORMAT | PyBUF_C_CONTIGUOUS
    a.v = NULL
    a.n = 0
    if isinstance(obj, carray.array):
        code = _array_code(<carray.array>obj, name)
        return _copy_ints(a, (<carray.array>obj).data.as_chars, Py_SIZE(obj),
                          (<carray.array>obj).ob_descr.itemsize, code in b"bhilq")
    _refuse_text(obj, name)
    # One value for every request: an int, or a numpy integer (or 0-d array).
    if allow_scalar and (PyLong_Check(obj) or PyIndex_Check(obj) and
                         getattr(obj, "ndim", 0) == 0):
        a.scalar = _int_arg(obj, name, INT64_MIN, INT64_MAX)
        a.n = -1
        return 0
    if not PyObject_CheckBuffer(obj):
        return _copy_sequence(a, obj, name, unsigned64)
    if _get_buffer_noraise(obj, &view, flags) < 0:
        _reraise_buffer_error(obj, flags, name)
    code = _int_format(&view)
    if code == 0:
        _release_bad_format(&view, name)
    try:
        return _copy_ints(a, <char *>view.buf, view.shape[0], <int>view.itemsize,
                          code in b"bhilqn")
    finally:
        PyBuffer_Release(&view)


cdef int _not_int_array(object obj, str name) except -1:
    raise TypeError(f"{name} must be a 1-D integer array (array.array, numpy array) or a "
                    f"sequence of ints, not {type(obj).__name__}")


cdef int _refuse_text(object obj, str name) except -1:
    """bytes, bytearray and str are text or raw bytes, never integer arrays (a
    memoryview or a numpy array of uint8 still is one)."""
    if isinstance(obj, (str, bytes, bytearray)):
        _not_int_array(obj, name)
    return 0


cdef int64_t *_int_copy_room(IntCopy *a, Py_ssize_t n) except NULL:
    """Memory for n int64s: the IntCopy's own for a few, else malloc's."""
    cdef int64_t *v
    if n <= INT_COPY_SMALL:
        return a.small
    v = <int64_t *>malloc(n * sizeof(int64_t))
    if v == NULL:
        raise MemoryError()
    return v


cdef int _copy_sequence(IntCopy *a, object obj, str name, bint unsigned64) except -1:
    """A list, tuple, range or other iterable of ints, element by element."""
    cdef Py_ssize_t i
    cdef list items
    if obj is None or PyIndex_Check(obj) or isinstance(obj, float):
        _not_int_array(obj, name)
    try:
        items = obj if type(obj) is list else list(obj)
    except TypeError:
        _not_int_array(obj, name)
    a.v = _int_copy_room(a, len(items))
    a.n = len(items)
    for i in range(a.n):
        if unsigned64:
            a.v[i] = <int64_t>_u64_arg(items[i], name, i)
        else:
            a.v[i] = _int_arg(items[i], name, INT64_MIN, INT64_MAX, i)
    return 0


cdef int _copy_ints(IntCopy *a, const char *src, Py_ssize_t n, int itemsize,
                    bint is_signed) except -1:
    """Widen n integers of `itemsize` bytes into int64s in the IntCopy's room (its
    own for a few, else malloc'd); an unsigned 64-bit value past INT64_MAX comes out
    negative, as ia_get reads it."""
    cdef Py_ssize_t i
    cdef int64_t *v = _int_copy_room(a, n)
    if itemsize == 8:
        memcpy(v, src, n * sizeof(int64_t))
    elif itemsize == 4 and is_signed:
        for i in range(n):
            v[i] = (<const int32_t *>src)[i]
    elif itemsize == 4:
        for i in range(n):
            v[i] = (<const uint32_t *>src)[i]
    elif itemsize == 2 and is_signed:
        for i in range(n):
            v[i] = (<const int16_t *>src)[i]
    elif itemsize == 2:
        for i in range(n):
            v[i] = (<const uint16_t *>src)[i]
    elif is_signed:
        for i in range(n):
            v[i] = (<const int8_t *>src)[i]
    else:
        for i in range(n):
            v[i] = (<const uint8_t *>src)[i]
    a.v = v
    a.n = n
    return 0


cdef char _int_format(const Py_buffer *view) noexcept:
    """The struct code of a 1-D buffer of native integers, or 0 for anything else."""
    cdef const char *fmt = view.format
    if fmt == NULL:
        fmt = _FORMAT_UNSIGNED_BYTE
    if fmt[0] == b"@" or fmt[0] == b"=" or fmt[0] == b"<":
        fmt += 1
    if view.ndim != 1 or fmt[0] == 0 or fmt[1] != 0 or fmt[0] not in b"bBhHiIlLqQnN" \
            or view.itemsize not in (1, 2, 4, 8):
        return 0
    return fmt[0]


cdef int _release_bad_format(Py_buffer *view, str name) except -1:
    """Release an export that is not a 1-D integer array, and say so."""
    cdef str fmt = (<bytes>view.format).decode() if view.format else "B"
    cdef int ndim = view.ndim
    PyBuffer_Release(view)
    raise TypeError(f"{name} must be a 1-D array of native integers; got format "
                    f"{fmt!r} with {ndim} dimension(s)")


cdef int int_array_open(IntArray *a, object obj, str name, bint writable,
                        bint allow_scalar, bint borrow=False) except -1:
    """Fill `a` from `obj`; release with int_array_close. The common case (a native
    integer buffer) takes no Python-level exception handling: it is a hot path.

    With `borrow`, an array.array is read in place without a buffer export. Such a
    view is valid only while the GIL stays held and no Python code runs: the caller
    must not release the GIL, call into Python or free holds before closing it."""
    cdef char code
    a.has_view = False
    a.n = 0
    _refuse_text(obj, name)
    if allow_scalar and isinstance(obj, int):
        a.n = -1
        a.scalar = obj
        return 0
    if borrow and isinstance(obj, carray.array):
        return _borrow_array(a, <carray.array>obj, name)
    if not PyObject_CheckBuffer(obj):
        if writable or obj is None:
            raise TypeError(f"{name} must be a 1-D integer buffer (array.array, numpy array), "
                            f"not {type(obj).__name__}")
        obj = _array_q(obj, name)
    cdef int flags = PyBUF_FORMAT | PyBUF_C_CONTIGUOUS | (PyBUF_WRITABLE if writable else 0)
    if _get_buffer_noraise(obj, &a.view, flags) < 0:
        _reraise_buffer_error(obj, flags, name)
    code = _int_format(&a.view)
    if code == 0:
        _release_bad_format(&a.view, name)
    a.has_view = True
    a.buf = <char *>a.view.buf
    a.n = a.view.shape[0]
    a.itemsize = <int>a.view.itemsize
    a.is_signed = code in b"bhilqn"
    return 0


cdef char _array_code(carray.array arr, str name) except 0:
    """The typecode of an array.array of integers."""
    cdef char code = arr.ob_descr.typecode
    if code not in b"bBhHiIlLqQ":
        raise TypeError(f"{name} must be an array of integers, not typecode {chr(code)!r}")
    return code


cdef int _borrow_array(IntArray *a, carray.array arr, str name) except -1:
    cdef char code = _array_code(arr, name)
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
