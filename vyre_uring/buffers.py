"""Page-aligned buffers for registration and fast large reads.

An anonymous private mmap starts on a page boundary (a destination 16 bytes off a
page boundary halves large-read speed on the machines we measured), is writable,
exports the buffer protocol, and refuses to be closed or resized while a request or
a registration holds it.
"""
import mmap

__all__ = ["alloc_buffer", "PAGE_SIZE"]

PAGE_SIZE: int = mmap.PAGESIZE


def alloc_buffer(nbytes: int) -> mmap.mmap:
    """A zero-filled, page-aligned, writable buffer of ``nbytes`` (rounded up to pages).

    Returns an anonymous ``mmap.mmap`` (a writable buffer: give it to prep_read,
    prep_reads, register_buffers or read_ranges_into). While a request or a
    registration holds it, closing or resizing it raises BufferError; its memory is
    returned when it is closed or collected. Raises ValueError when ``nbytes`` <= 0,
    and OSError (ENOMEM) when the mapping cannot be made."""
    nbytes = int(nbytes)
    if nbytes <= 0:
        raise ValueError(f"nbytes must be > 0, not {nbytes}")
    size = -(-nbytes // PAGE_SIZE) * PAGE_SIZE
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                     prot=mmap.PROT_READ | mmap.PROT_WRITE)
