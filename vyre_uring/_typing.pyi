# Type aliases shared by the stubs and the annotations of vyre_uring: a stub-only
# module (nothing imports it at run time; reader.py imports it under TYPE_CHECKING).
import os
from collections.abc import Callable, Sequence
from typing import Literal, Optional, Union

from typing_extensions import Buffer as Buffer, TypeAlias

# A path as os.open takes it.
PathArg: TypeAlias = Union[str, bytes, os.PathLike[str], os.PathLike[bytes]]
# A 1-D array of integers: an array.array, a numpy array, a memoryview of one, or a
# sequence of ints (bytes, bytearray and str are refused at run time).
IntArray: TypeAlias = Union[Buffer, Sequence[int]]
Backend: TypeAlias = Literal["auto", "io_uring", "threads"]
# on_error values that leave failures out of the result, or raise the first.
OnErrorNoFailures: TypeAlias = Literal["raise", "skip", "omit"]
OnError: TypeAlias = Union[OnErrorNoFailures, Literal["return"]]
# progress=: True for a tqdm bar, or a callable of (files_done, files_total or None,
# bytes_done).
Progress: TypeAlias = Union[bool, Callable[[int, Optional[int], int], object], None]
