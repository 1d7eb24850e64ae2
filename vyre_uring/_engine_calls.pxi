# A reader call's tasks, run so that nothing a call started outlives it.
#
# A call (read_files, read_ranges_into...) is split into tasks, each fn(resource,
# stop) run on a resource (a ring) taken from a queue. With worker threads the
# calling thread only posts the tasks and collects their outcomes; otherwise it runs
# them itself. Either way run_call returns or raises only when no task is running
# any more: an interrupt (Ctrl-C) or a failing progress callback sets the call's
# Stop, which every job reads after each completion (it then cancels its requests
# and waits for them), and the calling thread keeps collecting until every task has
# answered. These loops are Cython on purpose: compiled code runs no signal handler
# between taking a resource and the try that gives it back, or between posting the
# tasks and collecting them, as Python bytecode could.

from queue import SimpleQueue as _SimpleQueue

from vyre_uring._files import OPEN_FLAGS, check_regular

cdef extern from "Python.h":
    object PyOS_FSPath(object path)

cdef int _READ_FLAGS = OPEN_FLAGS


@cython.final
cdef class Stop:
    """Set when a call is abandoned; its tasks stop at their next completion. Jobs
    read it without the GIL."""
    cdef int flag

    @property
    def is_set(self):
        return vy_flag_get(&self.flag)


class CallStopped(Exception):
    """A task ended early because its call was abandoned (never seen by callers)."""


def run_task(Py_ssize_t index, fn, resources, Stop stop, results):
    """Worker threads: fn(resource, stop) on a resource from `resources` (a
    SimpleQueue, or None for no resource), given back whatever happens; puts
    (index, value, exception) into `results`, never raises."""
    results.put((index,) + _run_one(fn, resources, stop))


cdef tuple _run_one(fn, resources, Stop stop):
    cdef object resource = None, value = None, exc = None
    if vy_flag_get(&stop.flag):
        return None, CallStopped()
    try:
        if resources is not None:
            resource = resources.get()
        value = fn(resource, stop)
    except BaseException as e:
        exc = e
    finally:
        if resource is not None:
            resources.put(resource)
    return value, exc


def run_call(list tasks, post, resources, on_result=None):
    """Run every task, each fn(resource, stop); returns [(value, exception)] in
    task order. With `post` (a worker pool's post method) the tasks run on its
    threads, else here one after the other. on_result(value, exception) runs in
    this thread after each task, holding no resource: a progress callback there may
    call the reader again. An interrupt or an exception from on_result stops the
    call; it is raised once every task has ended."""
    cdef Stop stop = Stop()
    cdef Py_ssize_t i, n = len(tasks), left = n
    cdef list out = [None] * n
    cdef object first = None, item, results
    if post is None:
        for i in range(n):
            out[i] = _run_one(tasks[i], resources, stop)
            first = _after_task(out[i], on_result, stop, first)
            if first is not None:
                break
    else:
        results = _SimpleQueue()
        for i in range(n):
            try:
                post((i, tasks[i], resources, stop, results))
            except BaseException as e:          # collect those posted, then raise
                vy_flag_set(&stop.flag)
                first = e
                left = i
                break
        while left:
            try:
                item = results.get()
            except BaseException as e:          # Ctrl-C while waiting: stop, keep waiting
                vy_flag_set(&stop.flag)
                if first is None:
                    first = e
                continue
            left -= 1
            out[item[0]] = item[1:]
            first = _after_task(out[item[0]], on_result, stop, first)
    if first is not None:
        raise first
    return out


cdef object _after_task(tuple outcome, on_result, Stop stop, object first):
    """The call's first reason to stop, after one task's outcome."""
    if first is not None:
        return first
    if outcome[1] is not None and not isinstance(outcome[1], Exception):
        vy_flag_set(&stop.flag)                 # KeyboardInterrupt inside the task
        return outcome[1]
    if on_result is not None:
        try:
            on_result(*outcome)
        except BaseException as e:
            vy_flag_set(&stop.flag)
            return e
    return None


def with_file(path, bint direct, fn):
    """fn(fd, is_direct) with the regular file `path` open for reading (O_DIRECT
    when asked and the filesystem allows it), closed afterwards whatever happens.
    Opening and the try that closes are one compiled step: no interrupt between."""
    cdef int fd = _open_regular(path, direct)
    try:
        return fn(fd, (fcntl(fd, F_GETFL) & _O_DIRECT) != 0)
    finally:
        close(fd)


def with_files(paths, fn):
    """fn(fds) with every path of `paths` open for reading (regular files only,
    buffered), as with_file opens one; all closed afterwards whatever happens, those
    opened before a failed open included. A loop, not one with_file per path
    nested: hundreds of files would be hundreds of frames."""
    cdef list fds = []
    try:
        for path in paths:
            fds.append(_open_regular(path, False))
        return fn(fds)
    finally:
        for fd in fds:
            close(fd)


cdef int _open_regular(object path, bint direct) except -1:
    """An fd of the regular file at `path`, or the OSError naming it."""
    cdef bytes name = os.fsencode(PyOS_FSPath(path))
    cdef const char *p = PyBytes_AS_STRING(name)
    cdef int fd
    cdef stat_t st
    if strlen(p) != <size_t>len(name):
        raise path_error(EINVAL, path, "embedded null byte")
    with nogil:
        fd = _open_stat(p, direct, &st)
    if fd < 0:
        raise path_error(-fd, path)
    if not S_ISREG(st.st_mode):
        close(fd)
        check_regular(st.st_mode, path)
    return fd


cdef int _open_stat(const char *p, bint direct, stat_t *st) noexcept nogil:
    """open(p) for reading (O_DIRECT when asked and the filesystem allows it) and
    fstat it into `st`: the fd, or -errno (nothing left open)."""
    cdef int err
    cdef int fd = c_open(p, _READ_FLAGS | (_O_DIRECT if direct else 0))
    if fd < 0 and direct and errno == EINVAL:
        fd = c_open(p, _READ_FLAGS)     # the filesystem refuses O_DIRECT
    if fd < 0:
        return -errno
    if fstat(fd, st) != 0:
        err = errno
        close(fd)
        return -err
    return fd
