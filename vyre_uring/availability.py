"""Why io_uring is or is not usable in this process, in words a user can act on.

``io_uring_setup`` fails with EPERM when ``kernel.io_uring_disabled`` forbids it or a
seccomp filter (Docker's default profile, many CI sandboxes) blocks it, and with
ENOSYS when the kernel lacks io_uring or a filter answers ENOSYS. The error alone
does not say which; this module reads the evidence and says.
"""
import errno as _errno
import os
from dataclasses import dataclass
from typing import Optional

from .errors import UringUnavailableError

__all__ = ["Availability", "check", "unavailable_error"]

_SYSCTL = "/proc/sys/kernel/io_uring_disabled"
_UNAVAILABLE_ERRNOS = (_errno.EPERM, _errno.ENOSYS, _errno.EACCES)


@dataclass(frozen=True)
class Availability:
    """The answer of :func:`check`: ``available``, and when not, ``reason``; the
    evidence it was drawn from: ``kernel`` (release), ``sysctl`` (the value of
    kernel.io_uring_disabled, or None) and ``seccomp`` (the Seccomp: line of
    /proc/self/status, or None)."""
    available: bool
    reason: str
    kernel: str
    sysctl: Optional[int]
    seccomp: Optional[str]


def _read_sysctl() -> Optional[int]:
    try:
        with open(_SYSCTL) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _seccomp_line() -> Optional[str]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Seccomp:"):
                    return line.strip()
    except OSError:
        pass
    return None


def _in_io_uring_group() -> bool:
    try:
        with open("/proc/sys/kernel/io_uring_group") as f:
            gid = int(f.read().strip())
    except (OSError, ValueError):
        return False
    return gid >= 0 and (gid == os.getegid() or gid in os.getgroups())


def _diagnose(err: int, sqpoll: bool) -> tuple[str, str]:
    """(cause, fix) of io_uring_setup failing with ``err``."""
    kernel = os.uname().release
    sysctl = _read_sysctl()
    seccomp = _seccomp_line()
    if err == _errno.EPERM and sysctl == 2:
        return (f"io_uring is disabled system-wide: {_SYSCTL} = 2 (kernel {kernel}).",
                "an administrator can enable it with 'sysctl kernel.io_uring_disabled=0'; "
                "meanwhile use the reader's backend='threads'")
    if err == _errno.EPERM and sysctl == 1 and not _in_io_uring_group() and os.geteuid() != 0:
        return (f"io_uring is restricted: {_SYSCTL} = 1 allows only CAP_SYS_ADMIN and the "
                f"group in /proc/sys/kernel/io_uring_group (kernel {kernel}).",
                "join that group, or set the sysctl to 0; meanwhile use backend='threads'")
    if seccomp and not seccomp.endswith(("\t0", " 0")) and err in (_errno.EPERM, _errno.ENOSYS):
        return (f"a seccomp filter blocks io_uring_setup ({seccomp}; {_SYSCTL} = {sysctl}; "
                f"kernel {kernel}).",
                "run the container with a seccomp profile that allows io_uring_setup, "
                "io_uring_enter and io_uring_register, or use backend='threads'")
    if err == _errno.EPERM and sqpoll:
        return (f"SQPOLL needs CAP_SYS_ADMIN on kernels before 5.11 (kernel {kernel}).",
                "create the Ring with sqpoll=False")
    if err == _errno.ENOSYS:
        return (f"this kernel ({kernel}) has no io_uring.",
                "Linux 5.6 or newer built with CONFIG_IO_URING is needed; "
                "meanwhile use backend='threads'")
    return (f"io_uring_setup was refused (kernel {kernel}; {_SYSCTL} = {sysctl}; "
            f"{seccomp or 'Seccomp: unknown'}); a security module such as SELinux may deny it.",
            "use backend='threads', or ask the administrator what blocks io_uring")


def unavailable_error(err: int, sqpoll: bool = False) -> UringUnavailableError:
    """A :class:`UringUnavailableError` whose message diagnoses the cause of ``err``
    (returned, not raised)."""
    cause, fix = _diagnose(err, sqpoll)
    return UringUnavailableError(err, "io_uring_setup", fix, detail=cause)


def is_unavailable_errno(err: int) -> bool:
    """True when io_uring_setup failing with ``err`` means io_uring is blocked here."""
    return err in _UNAVAILABLE_ERRNOS


def check() -> Availability:
    """Try to create a one-entry ring and say whether io_uring works in this process.

    Returns an :class:`Availability`: ``available``; ``reason``, when not, the same
    diagnosis and fix that ``UringUnavailableError`` gives; the kernel release, the
    value of ``kernel.io_uring_disabled`` (None where the kernel has no such sysctl)
    and the ``Seccomp:`` line of /proc/self/status. Never raises for io_uring being
    blocked; the ring it tries is closed before it returns."""
    from ._ring import try_setup
    err = try_setup()
    kernel = os.uname().release
    if err == 0:
        return Availability(True, "io_uring works here", kernel, _read_sysctl(), _seccomp_line())
    if is_unavailable_errno(err):
        reason = "%s Fix: %s." % _diagnose(err, False)
    else:
        reason = f"io_uring_setup failed: {os.strerror(err)}"
    return Availability(False, reason, kernel, _read_sysctl(), _seccomp_line())
