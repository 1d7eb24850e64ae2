"""What both reader backends agree on: how files are opened, which paths are
refused, and how a failure names its path."""
import array
import errno
import os
import stat

__all__ = ["OPEN_FLAGS", "check_regular", "lengths_within_eof", "over_budget_error",
           "path_error", "pread_to_eof"]

# O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused as not a
# regular file). It changes nothing for regular files.
OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY

_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def path_error(err, path, strerror=None):
    """OSError(err, strerror, path): Python picks FileNotFoundError and friends."""
    return OSError(err, strerror or os.strerror(err), os.fsdecode(path))


def over_budget_error(path, budget):
    """A file larger than max_file_bytes, or one that reports size 0 (/proc) but
    holds more than a whole byte budget (a ByteBudget)."""
    if budget.largest is not None:
        why = f"larger than max_file_bytes ({budget.largest} bytes)"
    else:
        why = f"it reports size 0 and holds more than max_bytes_in_flight ({budget.limit} bytes)"
    return path_error(errno.EFBIG, path, f"File too large: {why}")


def check_regular(mode, path):
    """Raise the OSError for a path that is not a regular file."""
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise path_error(errno.EISDIR, path)
    kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
    raise path_error(errno.EINVAL, path, f"not a regular file: {kind}")


def pread_to_eof(fd, offset, path):
    """The bytes of fd from `offset` to its end, for a file whose size says nothing
    (/proc and sysfs report 0): read until a read returns nothing. Its OSError names
    `path`."""
    parts = []
    try:
        while True:
            chunk = os.pread(fd, 64 << 10, offset)
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)
            offset += len(chunk)
    except OSError as exc:
        raise path_error(exc.errno, path) from None


def lengths_within_eof(fd, offsets, lengths):
    """The lengths cut to what the file holds when opened, so that a range asking
    for far more than the file has (a 64 GiB length) allocates only what it can
    return, as read_ranges_job does in C for the io_uring backend. A file that reports
    size 0 (/proc) keeps the lengths asked for."""
    size = os.fstat(fd).st_size
    if size == 0:
        return lengths
    return array.array("q", [max(0, min(n, size - o)) for o, n in zip(offsets, lengths)])
