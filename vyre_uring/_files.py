"""What both reader backends agree on: how files are opened, which paths are
refused, and how a failure names its path."""
import errno
import fcntl
import os
import stat

__all__ = ["OPEN_FLAGS", "check_regular", "is_direct", "open_regular", "path_error",
           "read_to_eof"]

# O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused as not a
# regular file). It changes nothing for regular files.
OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY

_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def path_error(err, path, strerror=None):
    """OSError(err, strerror, path): Python picks FileNotFoundError and friends."""
    return OSError(err, strerror or os.strerror(err), os.fsdecode(path))


def check_regular(mode, path):
    """Raise the OSError for a path that is not a regular file."""
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise path_error(errno.EISDIR, path)
    kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
    raise path_error(errno.EINVAL, path, f"not a regular file: {kind}")


def open_regular(path, direct=False):
    """An fd of the regular file at `path` (the caller closes it), or the OSError.
    direct=True opens it O_DIRECT, or buffered where the filesystem refuses that
    (is_direct(fd) tells which)."""
    try:
        try:
            fd = os.open(path, OPEN_FLAGS | (os.O_DIRECT if direct else 0))
        except OSError as exc:
            if not (direct and exc.errno == errno.EINVAL):
                raise
            fd = os.open(path, OPEN_FLAGS)
    except OSError as exc:
        raise path_error(exc.errno, path) from None
    except ValueError:                    # a NUL byte: refused before any syscall
        raise path_error(errno.EINVAL, path, "embedded null byte") from None
    try:
        check_regular(os.fstat(fd).st_mode, path)
    except OSError:
        os.close(fd)
        raise
    return fd


def is_direct(fd):
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


def read_to_eof(fd, path):
    """Read `fd` from offset 0 until EOF: for regular files that report size 0 (empty
    files, and /proc or sysfs files, whose size says nothing) but may hold data."""
    parts = []
    offset = 0
    try:
        while True:
            chunk = os.pread(fd, 64 << 10, offset)
            if not chunk:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            parts.append(chunk)
            offset += len(chunk)
    except OSError as exc:
        return path_error(exc.errno, path)
