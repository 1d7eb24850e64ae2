# Types of the compiled module vyre_uring._engine (built from _engine.pyx): the
# reader's engine, used by vyre_uring's backends, not a public API.
# tests/test_typing.py checks this stub against the module with mypy's stubtest.
from collections.abc import Callable, Sequence
from queue import SimpleQueue
from typing import Any, Final, Optional, Union, final

from typing_extensions import Self, TypeAlias

from ._ring import Ring
from ._typing import Buffer
from ._typing import IntArray as _IntArray
from ._typing import PathArg as _Path

__all__ = ["ARENA_MAX", "Arena", "ByteBudget", "CallStopped", "DEFERRED", "DIRECT_ALIGN",
           "DIRECT_CHUNK", "GROWN", "GROW_LATER", "GROW_NEVER", "MAX_PIECE", "NOT_REGULAR",
           "NUL_BYTE", "OVER_BUDGET", "Packing", "Stop", "UNSIZED_FIRST", "check_ranges", "drain_jobs",
           "group_paths", "read_file_window", "read_path_ranges_job", "read_ranges_job",
           "run_call", "run_task", "with_file", "with_files"]

NOT_REGULAR: Final[int]
OVER_BUDGET: Final[int]
NUL_BYTE: Final[int]
DEFERRED: Final[int]
UNSIZED_FIRST: Final[int]
GROWN: Final[int]
GROW_LATER: Final[int]
GROW_NEVER: Final[int]
MAX_PIECE: Final[int]
DIRECT_ALIGN: Final[int]
DIRECT_CHUNK: Final[int]
ARENA_MAX: Final[int]

@final
class ByteBudget:
    def __new__(cls, limit: int, largest: Optional[int] = None) -> Self: ...
    @property
    def limit(self) -> int: ...
    @property
    def largest(self) -> Optional[int]: ...
    @property
    def unsized_cap(self) -> int: ...
    @property
    def taken(self) -> int: ...
    @property
    def spent(self) -> bool: ...
    def take(self, size: int) -> bool: ...
    def grow(self, own: int, extra: int) -> int: ...
    def give_back(self, size: int) -> None: ...

@final
class Arena: ...

@final
class Packing:
    def __new__(cls, buffer: Buffer, n: int, align: int = 1) -> Self: ...
    @property
    def buffer(self) -> Buffer: ...
    @property
    def offsets(self) -> Any: ...   # array.array('q')
    @property
    def lengths(self) -> Any: ...   # array.array('q')
    @property
    def used(self) -> int: ...
    def take(self, size: int) -> int: ...

@final
class Stop:
    @property
    def is_set(self) -> bool: ...

class CallStopped(Exception): ...

# A task of a call: fn(resource, stop).
_Task: TypeAlias = Callable[[Any, Stop], Any]

def run_task(index: int, fn: _Task, resources: Optional[SimpleQueue[Any]], stop: Stop,
             results: SimpleQueue[tuple[int, Any, Optional[BaseException]]]) -> None: ...
def run_call(tasks: list[_Task], post: Optional[Callable[[tuple[Any, ...]], object]],
             resources: Optional[SimpleQueue[Any]],
             on_result: Optional[Callable[[Any, Optional[BaseException]], object]] = None,
             ) -> list[tuple[Any, Optional[BaseException]]]: ...
def with_file(path: _Path, direct: bool, fn: Callable[[int, bool], Any]) -> Any: ...
def with_files(paths: Sequence[_Path], fn: Callable[[list[int]], Any]) -> Any: ...
def read_file_window(ring: Ring, paths: Sequence[_Path], start: int, stop: int,
                     out: list[Any], open_flags: int, depth: int, stats: Buffer,
                     bounce: Optional[Buffer] = None, budget: Optional[ByteBudget] = None,
                     call: Optional[Stop] = None, arena: Optional[Arena] = None,
                     pack: Optional[Packing] = None, table: int = 0,
                     ) -> tuple[list[tuple[int, int, int]], int]: ...
def read_ranges_job(ring: Ring, fd: int, offsets: _IntArray, lengths: _IntArray,
                    buffer: Optional[Buffer], buffer_offsets: Optional[_IntArray], depth: int,
                    stats: Buffer, name: object, bounce: Optional[Buffer] = None,
                    fixed_file: bool = False, call: Optional[Stop] = None,
                    ) -> Union[list[int], list[bytes]]: ...
def check_ranges(offsets: _IntArray, lengths: _IntArray,
                 buffer_offsets: Optional[_IntArray] = None, buflen: int = -1) -> None: ...
def drain_jobs(ring: Ring, stats: Buffer, timeout: float = -1.0) -> bool: ...
def group_paths(paths: Sequence[_Path]) -> tuple[list[Any], Any, Any]: ...
def read_path_ranges_job(ring: Ring, files: list[Any], order: _IntArray, first: _IntArray,
                         offsets: _IntArray, lengths: _IntArray, f0: int, f1: int,
                         out: list[Any], depth: int, stats: Buffer,
                         error_of: Callable[[int, int, Any], OSError],
                         bounce: Optional[Buffer] = None, call: Optional[Stop] = None,
                         ) -> int: ...
