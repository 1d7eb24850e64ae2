# Argument validators: one per kind of argument, used by every method that takes one.
# Nothing is truncated or rounded: a value that is not an integer (a float, a str,
# bytes) is a TypeError, and one outside the range its kind accepts is an
# ArgumentRangeError (an OverflowError, and a ValueError). Each message names the
# argument, or the array element (`name[i]`).

cdef str _arg_name(str name, Py_ssize_t index):
    return name if index < 0 else f"{name}[{index}]"


cdef int _raise_range(str name, Py_ssize_t index, object v, object lo, object hi) except -1:
    raise ArgumentRangeError(f"{_arg_name(name, index)} must be between {lo} and {hi}, "
                             f"not {v!r}")


cdef object _as_int(object v, str name, Py_ssize_t index):
    """An integer argument that is not an int (a numpy integer) as an int; anything
    else is a TypeError."""
    if PyIndex_Check(v):
        try:
            return PyNumber_Index(v)
        except TypeError:          # a numpy array of more than one element
            pass
    raise TypeError(f"{_arg_name(name, index)} must be an int, not {type(v).__name__}")


cdef inline int64_t _int_arg(object v, str name, int64_t lo, int64_t hi,
                             Py_ssize_t index=-1) except? -1:
    """An integer argument between lo and hi inclusive."""
    cdef int overflow = 0
    cdef int64_t x
    if not PyLong_Check(v):
        v = _as_int(v, name, index)
    x = _as_i64_overflow(v, &overflow)
    if overflow or x < lo or x > hi:
        _raise_range(name, index, v, lo, hi)
    return x


cdef inline int64_t _i64_arg(object v, str name) except? -1:
    """An integer argument whose range a later check knows (fd, buf_index, file_index)."""
    return _int_arg(v, name, INT64_MIN, INT64_MAX)


# A read or write at offset -1 (all ones as the kernel's u64) uses the file position
# and advances it, as read(2)/write(2) do; on a file without one (a pipe, a socket)
# it reads or writes the stream. Every other negative offset is refused.
cdef enum:
    FILE_POSITION = -1


cdef inline bint _offset_ok(int64_t offset) noexcept nogil:
    """Whether `offset` is a file offset (>= 0) or FILE_POSITION."""
    return offset >= FILE_POSITION


cdef inline int64_t _offset_arg(object v) except? -1:
    """A file offset, or -1 for the file position."""
    cdef int64_t offset = _int_arg(v, "offset", INT64_MIN, INT64_MAX)
    if not _offset_ok(offset):
        raise ArgumentRangeError(f"offset must be >= 0, or -1 for the file position, "
                                 f"not {v!r}")
    return offset


cdef inline uint64_t _u64_arg(object v, str name, Py_ssize_t index=-1) \
        except? 0xFFFFFFFFFFFFFFFF:
    """An unsigned 64-bit argument (user_data)."""
    cdef uint64_t x
    if not PyLong_Check(v):
        v = _as_int(v, name, index)
    x = _as_u64_noraise(v)
    if x == 0xFFFFFFFFFFFFFFFF and PyErr_Occurred() != NULL:
        PyErr_Clear()              # negative, or past 2**64 - 1
        _raise_range(name, index, v, 0, 0xFFFFFFFFFFFFFFFF)
    return x


cdef inline uint32_t _u32_arg(object v, str name) except? 0xFFFFFFFF:
    """A count, or a kernel field of 32 bits (open flags, mode, statx mask)."""
    return <uint32_t>_int_arg(v, name, 0, UINT32_MAX)


cdef inline uint8_t _u8_arg(object v, str name) except? 0xFF:
    """IOSQE_* flag bits (which of them are allowed, _check_fd says)."""
    return <uint8_t>_int_arg(v, name, 0, 0xFF)


cdef int32_t _dir_fd_arg(object v) except? -1:
    """dir_fd: a directory's file descriptor, or AT_FDCWD."""
    cdef int64_t d = _int_arg(v, "dir_fd", INT64_MIN, INT64_MAX)
    if d != AT_FDCWD and not 0 <= d <= 0x7FFFFFFF:
        raise ArgumentRangeError(f"dir_fd must be a directory's file descriptor "
                                 f"(0..2147483647) or AT_FDCWD ({AT_FDCWD}), not {v!r}")
    return <int32_t>d


cdef double _seconds_arg(object v, str name, double limit) except? -2.0:
    """A duration in seconds, an int or a float, between 0 and `limit`."""
    cdef double t
    if not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a number of seconds (an int or a float), "
                        f"not {type(v).__name__}")
    try:
        t = v
    except OverflowError:          # an int past the largest double
        t = INFINITY
    if not (0 <= t and t <= limit):
        if limit == INFINITY:
            raise ArgumentRangeError(f"{name} must be >= 0 seconds or None, not {v!r}")
        raise ArgumentRangeError(f"{name} must be >= 0 and finite (at most {limit:g} "
                                 f"seconds), not {v!r}")
    return t


cdef double _timeout_arg(object timeout) except? -2.0:
    """A wait's timeout: None -> -1 (wait for ever); otherwise seconds >= 0."""
    if timeout is None:
        return -1.0
    cdef double t = _seconds_arg(timeout, "timeout", INFINITY)
    return t if t < 1e9 else -1.0      # 30 years or infinity: no limit


cdef bytes _path_bytes(object path):
    cdef bytes b = os.fsencode(path)
    if b"\0" in b:
        raise ValueError(f"path contains a NUL byte: {path!r}")
    return b
