# Holds: what keeps a request's memory alive from submission until its completion.
#
# A Hold owns buffer exports (Py_buffer), an optional object reference (a path's
# bytes, a Statx) and an optional iovec array. Every slot whose request uses it
# counts one reference in `refs`; the reap loop (nogil) only decrements the count and
# queues the Hold when it reaches zero, and the queue is freed once the GIL is ours.
# A bytearray with an export cannot be resized, and an exported object cannot be
# collected: the kernel never writes into memory Python has freed.

# The Hold struct is declared in _queues.pxd, beside the slots that point to it.


cdef Hold *hold_new(Py_ssize_t nviews) except NULL:
    cdef Hold *h = <Hold *>calloc(1, sizeof(Hold))
    if h == NULL:
        raise MemoryError()
    if nviews:
        h.views = <Py_buffer *>calloc(nviews, sizeof(Py_buffer))
        if h.views == NULL:
            free(h)
            raise MemoryError()
    h.capacity = nviews
    return h


cdef void hold_free(Hold *h) noexcept:
    """Release everything `h` keeps alive. Needs the GIL."""
    cdef Py_ssize_t i
    for i in range(h.nviews):
        PyBuffer_Release(&h.views[i])
    Py_XDECREF(h.obj)
    free(h.iov)
    free(h.views)
    free(h)


cdef void hold_unref(Hold *h) noexcept:
    """Drop one reference to `h`; the last one frees it. Needs the GIL."""
    h.refs -= 1
    if h.refs == 0:
        hold_free(h)


cdef int hold_export(Hold *h, object obj, bint writable, str what) except -1:
    """Take a contiguous export of `obj` into `h` (writable for reads)."""
    cdef int flags = PyBUF_WRITABLE if writable else PyBUF_SIMPLE
    if not PyObject_CheckBuffer(obj):
        raise TypeError(f"{what} must support the buffer protocol (bytearray, memoryview, "
                        f"mmap, array.array, numpy array), not {type(obj).__name__}")
    try:
        PyObject_GetBuffer(obj, &h.views[h.nviews], flags)
    except BufferError as exc:
        if writable:
            raise TypeError(f"{what} must be a writable contiguous buffer; "
                            f"{type(obj).__name__} refused: {exc}") from None
        raise TypeError(f"{what} must be a contiguous buffer; {exc}") from None
    h.nviews += 1
    return 0


cdef Hold *hold_object(object obj, Py_ssize_t nviews=0) except NULL:
    """A Hold that keeps `obj` alive (a path's bytes, a Statx), with room for
    `nviews` buffer exports."""
    cdef Hold *h = hold_new(nviews)
    Py_INCREF(obj)
    h.obj = <PyObject *>obj
    return h
