# The ring module's internal C API, cimported by the reader's engine
# (vyre_uring._engine): a Ring's core (RingCore, _queues.pxd) and guards, the one
# enter path, and the converters that make arguments private before the GIL is
# released. The Ring class itself is private to _ring.pyx: the engine never reads its
# fields, only what is declared here.
from cpython.buffer cimport Py_buffer
from libc.stdint cimport (int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t,
                          uint64_t)
from libc.stdlib cimport free

from vyre_uring._queues cimport Hold, RingCore


# ---- a Ring, for the engine --------------------------------------------------------

cdef RingCore *ring_core(object ring) except NULL
cdef RingCore *ring_acquire(object ring) except NULL
cdef void ring_release(object ring) noexcept
cdef int ring_submit_and_wait(object ring, uint32_t min_complete, double timeout) except -1
cdef Py_ssize_t ring_reap(object ring) except -1
cdef bint ring_buffer_is_fixed(object ring, const void *buf) noexcept
cdef int ring_enter(RingCore *r, uint32_t to_submit, uint32_t min_complete,
                    uint32_t flags, void *argp, size_t argsz) noexcept nogil


# ---- holds (_holds.pxi) -------------------------------------------------------------

cdef void hold_free(Hold *h) noexcept
cdef void hold_unref(Hold *h) noexcept
cdef int hold_export(Hold *h, object obj, bint writable, str what) except -1
cdef Hold *hold_object(object obj, Py_ssize_t nviews=*) except NULL


# ---- integer-array arguments (_intarrays.pxi) ----------------------------------------

cdef struct IntArray:
    char *buf
    Py_ssize_t n            # -1 for a broadcast scalar
    int itemsize
    bint is_signed
    int64_t scalar
    Py_buffer view
    bint has_view


cdef enum:
    INT_COPY_SMALL = 4      # copies this short live in the IntCopy: no malloc (batch 1)


cdef struct IntCopy:
    int64_t *v              # the private copy (in small, or malloc'd); NULL when
                            # absent or a scalar. An IntCopy is never copied by value.
    Py_ssize_t n            # -1 for a broadcast scalar
    int64_t scalar
    int64_t small[INT_COPY_SMALL]


cdef inline void int_copy_free(IntCopy *a) noexcept:
    if a.v != a.small:
        free(a.v)
    a.v = NULL


cdef inline int64_t ic_get(const IntCopy *a, Py_ssize_t i) noexcept nogil:
    if a.n < 0:
        return a.scalar
    return a.v[i]


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


# ---- ranges -----------------------------------------------------------------------

cdef inline bint span_fits(int64_t start, int64_t length, int64_t size) noexcept nogil:
    """Whether `length` bytes at `start` lie inside `size` bytes: the one test of a
    destination range, for single requests, batches and the engine's jobs (each
    names what is at fault in its own words). Written so that nothing overflows."""
    return 0 <= start <= size and 0 <= length <= size - start


cdef int int_copy(IntCopy *a, object obj, str name, bint allow_scalar,
                  bint unsigned64=*) except -1
cdef int int_array_open(IntArray *a, object obj, str name, bint writable,
                        bint allow_scalar, bint borrow=*) except -1
cdef void int_array_close(IntArray *a) noexcept
cdef int check_same_length(IntArray *a, str name, Py_ssize_t n,
                           str reference=*) except -1
