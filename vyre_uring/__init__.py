"""vyre_uring: io_uring for Python, with the hot loops in C.

``Ring`` is the engine (raw io_uring syscalls, mmap'd queues, batch methods whose
loops run in C). See README.md for the kernel it needs and what happens where
io_uring is blocked.
"""
import sys

if not sys.platform.startswith("linux"):
    raise ImportError(f"vyre_uring needs Linux (io_uring); this is {sys.platform}")

from ._ring import Completion, Op, Ring, Statx, StatxArray  # noqa: E402
from .constants import (FEAT_EXT_ARG, FEAT_NODROP, FEAT_SINGLE_MMAP,  # noqa: E402
                        FILE_INDEX_ALLOC, SETUP_COOP_TASKRUN, SETUP_DEFER_TASKRUN,
                        SETUP_SINGLE_ISSUER, SETUP_SQPOLL, SQE_ASYNC, SQE_FIXED_FILE,
                        SQE_IO_DRAIN, SQE_IO_HARDLINK, SQE_IO_LINK)
from .availability import Availability, check  # noqa: E402
from .buffers import alloc_buffer  # noqa: E402
from .packed import PackedFiles  # noqa: E402
from .reader import (BatchReader, iter_files, read_files, read_files_into,  # noqa: E402
                     read_path_ranges, read_ranges, read_ranges_into)
from .errors import (ArgumentRangeError, RingBusyError, RingClosedError,  # noqa: E402
                     RingForkedError, RingFullError, UringError, UringSyscallError,
                     UringUnavailableError)

__version__ = "0.1.0"

__all__ = [
    "BatchReader", "read_files", "read_files_into", "PackedFiles", "iter_files", "read_ranges",
    "read_ranges_into", "read_path_ranges",
    "Ring", "Completion", "Statx", "StatxArray", "Op", "alloc_buffer", "check", "Availability",
    "UringError", "UringSyscallError", "UringUnavailableError", "RingClosedError",
    "RingBusyError", "RingForkedError", "RingFullError", "ArgumentRangeError",
    "SQE_FIXED_FILE", "SQE_IO_DRAIN", "SQE_IO_LINK", "SQE_IO_HARDLINK", "SQE_ASYNC",
    "FILE_INDEX_ALLOC", "SETUP_SQPOLL", "SETUP_SINGLE_ISSUER", "SETUP_DEFER_TASKRUN",
    "SETUP_COOP_TASKRUN", "FEAT_SINGLE_MMAP", "FEAT_NODROP", "FEAT_EXT_ARG",
]
