"""Page-cache state, established and verified: warm means read and then found
resident by mincore(2); cold means dropped (root only) and found absent."""
import ctypes
import mmap
import os

# Below these a run is not what it claims to be.
WARM_AT_LEAST = 0.99
COLD_AT_MOST = 0.01


def resident_fraction(path):
    """The share of the file's pages in the page cache, 0.0 to 1.0."""
    size = os.path.getsize(path)
    if size == 0:
        return 1.0
    libc = _libc()
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = ctypes.create_string_buffer(pages)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            if libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec.raw) / pages


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def warm(paths, sample=None):
    """Read every file so it is in the page cache, then check residency (of every
    file, or of `sample` of them). Returns the state; raises if it did not take
    (the machine is short of memory)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            while os.read(fd, 8 << 20):
                pass
        finally:
            os.close(fd)
    resident = _mean_residency(paths, sample)
    if resident < WARM_AT_LEAST:
        raise RuntimeError(f"only {resident:.1%} of the data is in the page cache after "
                           f"reading it: not enough free memory for a warm run")
    return f"warm ({resident:.1%} resident)"


def can_drop():
    """None when this process may drop the page cache, else why not."""
    if os.access("/proc/sys/vm/drop_caches", os.W_OK):
        return None
    return "a cold cache needs root (writing /proc/sys/vm/drop_caches)"


def drop(paths, sample=None):
    """Drop the page cache, dentries and inodes, then check the files are out."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")
    resident = _mean_residency(paths, sample)
    if resident > COLD_AT_MOST:
        raise RuntimeError(f"{resident:.1%} of the data is still cached after dropping "
                           f"the page cache")
    return f"cold ({resident:.1%} resident)"


def _mean_residency(paths, sample):
    chosen = paths if sample is None or len(paths) <= sample else \
        paths[::max(1, len(paths) // sample)]
    return sum(resident_fraction(p) for p in chosen) / len(chosen)
