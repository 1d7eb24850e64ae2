"""The exceptions of vyre_uring, and the one place that turns a C ``-errno`` into one.

Engine errors are domain classes that also inherit a builtin, so callers can catch
either (``RingClosedError`` is a ``ValueError``; every syscall failure is an
``OSError`` carrying ``errno``). A failed syscall names the syscall, the errno and a
one-line fix hint.
"""
import errno as _errno
import os
from typing import Any, Optional, Union

__all__ = [
    "UringError", "UringSyscallError", "UringUnavailableError", "RingClosedError",
    "RingBusyError", "RingForkedError", "RingFullError", "ArgumentRangeError",
    "syscall_error",
]


class UringError(Exception):
    """Base class of every vyre_uring engine error."""


class UringSyscallError(UringError, OSError):
    """An io_uring or mmap syscall failed; ``syscall`` and ``hint`` say which and what to do.

    An ``OSError``: ``errno`` and ``strerror`` are the syscall's. ``detail``, when
    set, is a diagnosis of the cause (see ``UringUnavailableError``). str() gives
    all of it: the syscall, the errno's name, the detail and ``fix: <hint>``.
    """
    syscall: str
    hint: str
    detail: Optional[str]

    def __init__(self, err: int, syscall: str, hint: str, detail: Optional[str] = None) -> None:
        OSError.__init__(self, err, os.strerror(err))
        self.syscall = syscall
        self.hint = hint
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across process pools
        return (type(self), (self.errno, self.syscall, self.hint, self.detail))

    def __str__(self) -> str:
        name = _errno.errorcode.get(self.errno or 0, str(self.errno))
        text = f"{self.syscall} failed: {name} ({self.strerror})"
        if self.detail:
            text += f"\n{self.detail}"
        return f"{text}\nfix: {self.hint}"


class UringUnavailableError(UringSyscallError):
    """io_uring cannot be used in this process (disabled by sysctl, seccomp, or kernel).

    Raised by ``Ring()`` (and ``BatchReader(backend="io_uring")``); ``detail`` names the
    cause found (the sysctl's value, the seccomp line of /proc/self/status, the
    kernel) and ``hint`` the fix. ``vyre_uring.check()`` answers the same without
    raising."""


class RingClosedError(UringError, ValueError):
    """The Ring was closed."""


class RingBusyError(UringError, RuntimeError):
    """Another thread is using this Ring right now; give each thread its own Ring."""


class RingForkedError(UringError, RuntimeError):
    """The Ring was created in the parent of this forked process."""


class RingFullError(UringError, RuntimeError):
    """As many requests are outstanding as the completion queue can hold; reap first."""


class ArgumentRangeError(OverflowError, ValueError):
    """An integer argument outside the range its kind accepts (an fd past 2**31 - 1,
    flags past 32 bits, a negative count...). An OverflowError, as Python's own
    conversions raise for a value too large for its C type, and a ValueError, as
    for any other argument refused; never silently truncated."""


# One-line fix hints, per syscall and errno; "*" is the syscall's fallback.
_HINTS: dict[str, dict[Union[int, str], str]] = {
    "io_uring_setup": {
        _errno.EINVAL: "a size or setup flag this kernel rejects: entries must be 1..32768 and "
                       "cq_entries >= entries; single_issuer needs Linux 6.0, defer_taskrun 6.1, "
                       "coop_taskrun 5.19",
        _errno.ENOMEM: "out of locked memory for the rings: raise RLIMIT_MEMLOCK (ulimit -l) "
                       "or use fewer or smaller rings",
        _errno.EMFILE: "the process has too many open files: raise the nofile limit (ulimit -n)",
        _errno.ENFILE: "the system has too many open files: check /proc/sys/fs/file-max",
        _errno.EFAULT: "io_uring_params was not readable (a bug in vyre_uring: please report it)",
        "*": "check the kernel version (>= 5.6) and the process's limits (ulimit -l, ulimit -n)",
    },
    "mmap": {
        _errno.ENOMEM: "check /proc/sys/vm/max_map_count and the process's memory limits",
        "*": "check /proc/sys/vm/max_map_count and the process's memory limits",
    },
    "io_uring_enter": {
        _errno.EEXIST: "a single_issuer ring was used from a thread other than the one "
                       "that first submitted to it",
        _errno.ENXIO: "the ring is being torn down, or its SQPOLL thread died",
        _errno.EOWNERDEAD: "the SQPOLL thread died; create a new Ring",
        _errno.EBADR: "completions were dropped on a kernel without IORING_FEAT_NODROP",
        _errno.EFAULT: "a buffer or path given to a request was not valid memory",
        "*": "retry on EINTR/EAGAIN/EBUSY is automatic; anything else is a bug to report",
    },
    "io_uring_register": {
        _errno.ENOMEM: "not enough locked memory to pin the buffers: raise RLIMIT_MEMLOCK "
                       "(ulimit -l), register less, or keep each buffer <= 1 GiB",
        _errno.EBUSY: "something is registered already: unregister it first",
        _errno.ENXIO: "nothing of that kind is registered",
        _errno.EMFILE: "too many files for the table: raise the nofile limit (ulimit -n)",
        _errno.EBADF: "one of the file descriptors is not open",
        _errno.EFAULT: "a buffer is not backed by ordinary pages (for example file-backed "
                       "shared memory); use alloc_buffer()",
        _errno.EOVERFLOW: "a buffer is too large (each is limited to 1 GiB)",
        _errno.EINVAL: "an argument this kernel rejects (too many entries, or a feature it lacks)",
        "*": "check the arguments and RLIMIT_MEMLOCK (ulimit -l)",
    },
}


def fix_hint(syscall: str, err: int) -> str:
    """The one-line fix hint for ``syscall`` failing with ``err``."""
    table = _HINTS.get(syscall.split("(")[0], {})
    return table.get(err) or table.get("*") or "see the syscall's man page"


def syscall_error(syscall: str, err: int, detail: Optional[str] = None) -> UringSyscallError:
    """The exception for ``syscall`` failing with positive errno ``err``."""
    return UringSyscallError(err, syscall, fix_hint(syscall, err), detail)
