# Types of the compiled module vyre_uring._ring (built from _ring.pyx): what type
# checkers and IDEs read in place of the extension. The docstrings live in the
# module itself (help(vyre_uring.Ring)); tests/test_typing.py checks this stub
# against it with mypy's stubtest.
from collections.abc import Iterable
from enum import IntEnum
from types import TracebackType
from typing import Any, Final, Optional, Union, final

from typing_extensions import Self

from ._typing import Buffer
from ._typing import IntArray as _IntArray
from ._typing import PathArg as _Path

__all__ = ["Ring", "Completion", "Statx", "StatxArray", "Op", "try_setup"]

class Op(IntEnum):
    NOP = 0
    READV = 1
    WRITEV = 2
    FSYNC = 3
    READ_FIXED = 4
    WRITE_FIXED = 5
    POLL_ADD = 6
    POLL_REMOVE = 7
    SYNC_FILE_RANGE = 8
    SENDMSG = 9
    RECVMSG = 10
    TIMEOUT = 11
    TIMEOUT_REMOVE = 12
    ACCEPT = 13
    ASYNC_CANCEL = 14
    LINK_TIMEOUT = 15
    CONNECT = 16
    FALLOCATE = 17
    OPENAT = 18
    CLOSE = 19
    FILES_UPDATE = 20
    STATX = 21
    READ = 22
    WRITE = 23
    FADVISE = 24
    MADVISE = 25
    SEND = 26
    RECV = 27
    OPENAT2 = 28
    EPOLL_CTL = 29
    SPLICE = 30
    PROVIDE_BUFFERS = 31
    REMOVE_BUFFERS = 32
    TEE = 33
    SHUTDOWN = 34
    RENAMEAT = 35
    UNLINKAT = 36
    MKDIRAT = 37
    SYMLINKAT = 38
    LINKAT = 39
    MSG_RING = 40

CYTHON_VERSION: Final[str]
SQE_FIXED_FILE: Final[int]
SQE_IO_DRAIN: Final[int]
SQE_IO_LINK: Final[int]
SQE_IO_HARDLINK: Final[int]
SQE_ASYNC: Final[int]
FILE_INDEX_ALLOC: Final[int]
SETUP_SQPOLL: Final[int]
SETUP_SINGLE_ISSUER: Final[int]
SETUP_DEFER_TASKRUN: Final[int]
SETUP_COOP_TASKRUN: Final[int]
FEAT_SINGLE_MMAP: Final[int]
FEAT_NODROP: Final[int]
FEAT_EXT_ARG: Final[int]

class Completion:
    @property
    def user_data(self) -> int: ...
    @property
    def res(self) -> int: ...
    @property
    def flags(self) -> int: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

class Statx:
    @property
    def mask(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def mode(self) -> int: ...
    @property
    def ino(self) -> int: ...
    @property
    def nlink(self) -> int: ...
    @property
    def uid(self) -> int: ...
    @property
    def gid(self) -> int: ...
    @property
    def blksize(self) -> int: ...
    @property
    def blocks(self) -> int: ...
    @property
    def mtime_ns(self) -> int: ...

class StatxArray:
    def __new__(cls, n: int) -> Self: ...
    @property
    def n(self) -> int: ...
    def __len__(self) -> int: ...
    def sizes(self) -> Any: ...   # array.array('Q')
    def modes(self) -> Any: ...   # array.array('I')

def try_setup() -> int: ...

@final
class Ring:
    def __init__(self, entries: int = 256, *, cq_entries: Optional[int] = None,
                 sqpoll: bool = False, sq_thread_idle_ms: int = 1000,
                 sq_thread_cpu: Optional[int] = None, single_issuer: bool = False,
                 defer_taskrun: bool = False, coop_taskrun: bool = False,
                 allowed_ops: Optional[Iterable[int]] = None) -> None: ...
    @property
    def sq_entries(self) -> int: ...
    @property
    def cq_entries(self) -> int: ...
    @property
    def features(self) -> int: ...
    @property
    def setup_flags(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def pending(self) -> int: ...
    @property
    def allowed_ops(self) -> Optional[frozenset[Op]]: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def registered_files(self) -> int: ...
    @property
    def registered_buffers(self) -> int: ...
    def fileno(self) -> int: ...

    # per request
    def prep_nop(self, *, user_data: int = 0, flags: int = 0) -> None: ...
    def prep_read(self, fd: int, buf: Buffer, offset: int = 0, *,
                  nbytes: Optional[int] = None, buf_offset: int = 0, user_data: int = 0,
                  flags: int = 0) -> None: ...
    def prep_write(self, fd: int, buf: Buffer, offset: int = 0, *,
                   nbytes: Optional[int] = None, buf_offset: int = 0, user_data: int = 0,
                   flags: int = 0) -> None: ...
    def prep_readv(self, fd: int, buffers: Iterable[Buffer], offset: int = 0, *,
                   user_data: int = 0, flags: int = 0) -> None: ...
    def prep_writev(self, fd: int, buffers: Iterable[Buffer], offset: int = 0, *,
                    user_data: int = 0, flags: int = 0) -> None: ...
    def prep_read_fixed(self, fd: int, buf_index: int, offset: int, nbytes: int,
                        buf_offset: int = 0, *, user_data: int = 0,
                        flags: int = 0) -> None: ...
    def prep_write_fixed(self, fd: int, buf_index: int, offset: int, nbytes: int,
                         buf_offset: int = 0, *, user_data: int = 0,
                         flags: int = 0) -> None: ...
    def prep_openat(self, path: _Path, flags: int = ..., mode: int = 0o644, *,
                    dir_fd: int = ..., file_index: Optional[int] = None,
                    user_data: int = 0, sqe_flags: int = 0) -> None: ...
    def prep_close(self, fd: int, fixed: bool = False, *, user_data: int = 0,
                   flags: int = 0) -> None: ...
    def prep_statx(self, path: _Path, statx_buf: Statx, *, flags: int = 0,
                   mask: int = ..., dir_fd: int = ..., user_data: int = 0,
                   sqe_flags: int = 0) -> None: ...
    def prep_fsync(self, fd: int, datasync: bool = False, *, user_data: int = 0,
                   flags: int = 0) -> None: ...
    def prep_timeout(self, seconds: float, count: int = 0, *, user_data: int = 0,
                     flags: int = 0) -> None: ...
    def prep_cancel(self, target_user_data: int, *, user_data: int = 0,
                    flags: int = 0) -> None: ...

    # batches: each returns how many requests it prepared
    def prep_nops(self, user_data: _IntArray, *, flags: int = 0) -> int: ...
    def prep_reads(self, fd: Union[int, _IntArray], buffer: Buffer, offsets: _IntArray,
                   lengths: _IntArray, buffer_offsets: Optional[_IntArray] = None,
                   user_data: Optional[_IntArray] = None, *, flags: int = 0) -> int: ...
    def prep_read_fixed_batch(self, fd: Union[int, _IntArray],
                              buf_index: Union[int, _IntArray], offsets: _IntArray,
                              lengths: _IntArray, buffer_offsets: Optional[_IntArray] = None,
                              user_data: Optional[_IntArray] = None, *,
                              flags: int = 0) -> int: ...
    def prep_openat_batch(self, paths: Iterable[_Path], flags: int = ..., mode: int = 0o644,
                          *, dir_fd: int = ..., file_indexes: Union[int, _IntArray, None] = None,
                          user_data: Optional[_IntArray] = None, sqe_flags: int = 0) -> int: ...
    def prep_statx_batch(self, paths: Iterable[_Path], results: StatxArray, *, flags: int = 0,
                         mask: int = ..., dir_fd: int = ...,
                         user_data: Optional[_IntArray] = None, sqe_flags: int = 0) -> int: ...
    def prep_close_batch(self, fds: _IntArray, *, fixed: bool = False,
                         user_data: Optional[_IntArray] = None, sqe_flags: int = 0) -> int: ...

    # submit and reap
    def submit(self) -> int: ...
    def submit_read(self, fd: int, buf: Buffer, offset: int = 0, *,
                    nbytes: Optional[int] = None, buf_offset: int = 0,
                    user_data: int = 0) -> Optional[int]: ...
    def submit_and_wait(self, min_complete: int = 1,
                        timeout: Optional[float] = None) -> int: ...
    def completions(self) -> list[Completion]: ...
    def wait(self, min_complete: int = 1,
             timeout: Optional[float] = None) -> list[Completion]: ...
    def reap(self, user_data_out: Buffer, res_out: Buffer, flags_out: Optional[Buffer] = None,
             *, min_complete: int = 0, timeout: Optional[float] = None) -> int: ...
    def submit_and_reap(self, user_data_out: Buffer, res_out: Buffer, min_complete: int = 1,
                        flags_out: Optional[Buffer] = None) -> int: ...

    # registration
    def probe(self) -> frozenset[Union[Op, int]]: ...
    def register_buffers(self, buffers: Iterable[Buffer]) -> None: ...
    def unregister_buffers(self) -> None: ...
    def register_files(self, fds: _IntArray) -> None: ...
    def update_files(self, offset: int, fds: _IntArray) -> int: ...
    def unregister_files(self) -> None: ...
    def register_eventfd(self, fd: int) -> None: ...
    def unregister_eventfd(self) -> None: ...

    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, exc_type: Optional[type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None: ...
