"""PackedFiles: what read_files_into returns, many files in one caller buffer."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from ._typing import Buffer

__all__ = ["PackedFiles"]


class PackedFiles:
    """The files of one read_files_into call: file i is
    ``buffer[offsets[i]:offsets[i] + lengths[i]]``, and ``files[i]`` is that
    memoryview (no copy), or the file's OSError when it could not be read
    (on_error="return"; its offset is then -1). Files lie in the buffer in the order
    they were sized, not in input order. `used` is how much of the buffer they take
    (alignment padding included). Holding the result holds a view of the buffer: a
    bytearray cannot be resized until the result is gone."""

    __slots__ = ("buffer", "offsets", "lengths", "errors", "used")

    def __init__(self, buffer: Buffer, offsets: Any, lengths: Any,
                 errors: dict[int, OSError], used: int) -> None:
        with memoryview(buffer) as whole:
            self.buffer = whole.cast("B")
        self.offsets = offsets          # array('q')
        self.lengths = lengths          # array('q')
        self.errors = errors            # index -> OSError, for the files not read
        self.used = used

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> Union[memoryview, OSError]:
        if not isinstance(i, int):
            raise TypeError(f"PackedFiles indices must be integers, not {type(i).__name__}")
        if i < 0:
            i += len(self.offsets)
        start = self.offsets[i]                 # IndexError when out of range
        if start < 0:
            return self.errors[i]
        return self.buffer[start:start + self.lengths[i]]

    def __iter__(self):
        return (self[i] for i in range(len(self.offsets)))

    def __repr__(self) -> str:
        return (f"<PackedFiles {len(self)} files, {len(self.errors)} failed, "
                f"{self.used} of {len(self.buffer)} bytes used>")
