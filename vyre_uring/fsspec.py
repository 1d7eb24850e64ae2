"""An fsspec filesystem, protocol "vyre": fsspec's local filesystem with its reads
batched through vyre_uring's reader.

    import fsspec
    fs = fsspec.filesystem("vyre")                 # or any "vyre:///abs/path" URL
    fs.cat_ranges(paths, starts, ends)             # one reader call for all ranges
    pandas.read_parquet("vyre:///data/table.parquet")

Listing, info, writes, moves and deletes are LocalFileSystem's own. Ours:
cat_file, cat_ranges (every range of every file in one call, each file opened
once), cat (whole files in one call), get (the files it copies read in one call),
and files opened "rb", whose range fetches go through the reader. The results and
the exceptions are LocalFileSystem's, with one difference: FIFOs and devices are
refused (OSError EINVAL) rather than read, as the reader refuses them.

Plain paths and file:// URLs keep fsspec's own local filesystem unless you call
route_local_paths(). Readers are per process (the module-level shared reader,
rebuilt in a forked child), so filesystems pickled to Dask workers work there.
"""
import array
import operator
import os
import threading

from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractBufferedFile
from fsspec.utils import isfilelike

from ._engine import with_file
from .reader import _shared_reader

__all__ = ["VyreFileSystem", "VyreFile", "route_local_paths"]

# The reads in flight per ring. cat_ranges puts a file's small ranges on one ring,
# so this is the disk's queue depth for them: 2,000 random 4 KiB ranges of an
# uncached 1 GiB file on 16 cores went 62-63 k -> 82 k ranges/s from 64 to 256, and
# cached ones did not slow down (605 k -> 641 k).
QUEUE_DEPTH = 256

# get() copies files larger than this with the kernel's copy (shutil.copyfile)
# rather than through memory; smaller ones are read in one reader call.
GET_BATCH_MAX_FILE = 16 << 20
# get() reads at most this many bytes of files per reader call.
GET_BATCH_BYTES = 256 << 20

# Files opened "rb" read ahead this much on a small read (a larger read is fetched
# exactly): a reader call costs more than a buffered read of a few KiB.
OPEN_BLOCK_SIZE = 64 << 10

_get_pairs = threading.local()      # get(): the (source, destination) pairs to copy


class VyreFileSystem(LocalFileSystem):
    """fsspec's LocalFileSystem, reading through vyre_uring's BatchReader.

    backend, queue_depth, workers: the reader's (see BatchReader); the reader is
    the process's shared one for these settings, made on first use."""
    protocol = ("vyre", "file", "local")

    def __init__(self, auto_mkdir=False, backend="auto", queue_depth=QUEUE_DEPTH,
                 workers=None, **kwargs):
        super().__init__(auto_mkdir=auto_mkdir, **kwargs)
        self._reader_args = (backend, queue_depth, workers)

    @property
    def fsid(self):
        return "vyre"

    def _reader(self):
        return _shared_reader(*self._reader_args)

    def cat_file(self, path, start=None, end=None, **kwargs):
        if kwargs:                          # open() options (compression...): fsspec's
            return super().cat_file(path, start, end, **kwargs)
        return self.cat_ranges([path], [start], [end], on_error="raise")[0]

    def cat_ranges(self, paths, starts, ends, max_gap=None, on_error="return", **kwargs):
        if max_gap is not None:
            raise NotImplementedError
        if not isinstance(paths, list):
            raise TypeError
        if not isinstance(starts, list):
            starts = [starts] * len(paths)
        if not isinstance(ends, list):
            ends = [ends] * len(paths)
        if len(starts) != len(paths) or len(ends) != len(paths):
            raise ValueError
        if kwargs:
            return super().cat_ranges(paths, starts, ends, on_error=on_error, **kwargs)
        paths = self._strip_each(paths)
        offsets, lengths, refused = _resolve_ranges(paths, starts, ends)
        out = self._reader().read_path_ranges(paths, offsets, lengths, on_error="return")
        for i, exc in refused.items():
            if isinstance(out[i], bytes):   # the file opened: then its read refuses
                out[i] = exc
        if on_error != "return":
            for r in out:
                if isinstance(r, Exception):
                    raise r
        return out

    def _strip_each(self, paths):
        """_strip_protocol of each path, computed once per distinct path: the ranges
        of a cat_ranges call come many per file, and it was half the call's Python."""
        done = {}
        out = []
        for p in paths:
            s = done.get(p)
            if s is None:
                s = done[p] = self._strip_protocol(p)
            out.append(s)
        return out

    def cat(self, path, recursive=False, on_error="raise", **kwargs):
        if kwargs:
            return super().cat(path, recursive=recursive, on_error=on_error, **kwargs)
        paths = (not recursive and _plain_paths(path)) or \
            self.expand_path(path, recursive=recursive)
        if len(paths) == 1 and not isinstance(path, list) and \
                paths[0] == self._strip_protocol(path):
            return self.cat_file(paths[0])
        out = {}
        for p, data in zip(paths, self._reader().read_files(paths, on_error="return")):
            if isinstance(data, Exception):
                if on_error == "raise":
                    raise data
                if on_error == "return":
                    out[p] = data
            else:
                out[p] = data
        return out

    def get(self, rpath, lpath, recursive=False, callback=DEFAULT_CALLBACK, maxdepth=None,
            **kwargs):
        """fsspec's get (the same destinations, the same errors): its get_file calls
        only list the files, which are then read in few reader calls and written in
        order, stopping at the first failure as fsspec's loop does."""
        if kwargs or getattr(_get_pairs, "pairs", None) is not None:
            return super().get(rpath, lpath, recursive=recursive, callback=callback,
                               maxdepth=maxdepth, **kwargs)
        _get_pairs.pairs = pairs = []
        try:
            super().get(rpath, lpath, recursive=recursive, callback=callback,
                        maxdepth=maxdepth)
        finally:
            _get_pairs.pairs = None
        self._copy_out(pairs)

    def get_file(self, path1, path2, callback=None, **kwargs):
        pairs = getattr(_get_pairs, "pairs", None)
        if pairs is None or kwargs or isfilelike(path2) or self.isdir(path1):
            return super().get_file(path1, path2, callback=callback, **kwargs)
        pairs.append((self._strip_protocol(path1), path2))

    def _copy_out(self, pairs):
        """Copy each (source, destination) in order; small files are read a batch
        at a time through the reader, large ones copied by the kernel."""
        done = 0
        while done < len(pairs):
            batch, nbytes = [], 0
            while done + len(batch) < len(pairs) and nbytes < GET_BATCH_BYTES:
                src = pairs[done + len(batch)][0]
                size = _size_or_none(src)
                if batch and (size is None or size > GET_BATCH_MAX_FILE):
                    break
                batch.append(size is not None and size <= GET_BATCH_MAX_FILE)
                nbytes += size or 0
            small = [pairs[done + k][0] for k, ok in enumerate(batch) if ok]
            data = iter(self._reader().read_files(small, on_error="return"))
            for k, ok in enumerate(batch):
                src, dst = pairs[done + k]
                if not ok:
                    self.cp_file(src, dst)
                    continue
                content = next(data)
                if isinstance(content, Exception):
                    raise content
                dst = self._strip_protocol(dst)
                if self.auto_mkdir:         # as cp_file does
                    self.makedirs(self._parent(dst), exist_ok=True)
                with open(dst, "wb") as f:
                    f.write(content)
            done += len(batch)

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None,
              **kwargs):
        if mode != "rb" or kwargs:
            return super()._open(path, mode=mode, block_size=block_size,
                                 autocommit=autocommit, cache_options=cache_options,
                                 **kwargs)
        path = self._strip_protocol(path)
        # Opened and sized here, so that a missing path, a directory or a file that
        # may not be read fails at open() as LocalFileSystem's files do.
        size = with_file(path, False, lambda fd, _: os.fstat(fd).st_size)
        return VyreFile(self, path, mode, block_size=block_size or OPEN_BLOCK_SIZE,
                        cache_type="readahead", cache_options=cache_options, size=size)


class VyreFile(AbstractBufferedFile):
    """A file opened "rb": every fetch is a reader call (one read job)."""

    def read(self, length=-1):
        # As the io.BufferedReader of LocalFileSystem's files (fsspec's would read all).
        if length is not None and length < -1:
            raise ValueError("read length must be non-negative or -1")
        return super().read(length)

    def _fetch_range(self, start, end):
        return self.fs._reader().read_path_ranges([self.path], [start], [end - start])[0]


def _plain_paths(paths):
    """What fsspec's expand_path makes of a list of plain local paths (absolute, no
    protocol, no glob character, no trailing slash: each is its own _strip_protocol
    and matches only itself): the distinct paths, sorted. None for anything else,
    which expand_path handles. Its Python per path was most of a cat of 10,000 files."""
    if not isinstance(paths, list) or not paths or \
            not all(p.__class__ is str and p[:1] == "/" and p[-1:] != "/" for p in paths):
        return None
    joined = "\n".join(paths)
    if "*" in joined or "?" in joined or "[" in joined:     # glob's magic characters
        return None
    return sorted(set(paths))


def _size_or_none(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return None                         # the read reports it


def _resolve_ranges(paths, starts, ends):
    """fsspec's (start, end) of each range as (offset, length) for the reader, and
    {index: exception} for the ranges whose read fsspec's file would refuse once
    open: a start or end that is not an integer (TypeError), or an end before the
    start by more than one byte (f.read(end - tell) raises ValueError; by one byte,
    it reads to EOF). Negative starts and ends count from the end of the file: those
    files are sized first."""
    plain = _plain_ranges(starts, ends)
    if plain is not None:
        return plain[0], plain[1], {}
    offsets, lengths, refused = [0] * len(paths), [0] * len(paths), {}
    sizes = {}
    for i, (path, start, end) in enumerate(zip(paths, starts, ends)):
        try:
            offsets[i], lengths[i] = _resolve(path, start, end, sizes)
        except (TypeError, ValueError) as exc:
            refused[i] = exc
    return offsets, lengths, refused


def _plain_ranges(starts, ends):
    """(offsets, lengths) as arrays when every start and end is an int >= 0 and no
    end is before its start, the common case, checked in C loops; else None."""
    try:
        offsets, stops = array.array("q", starts), array.array("q", ends)
    except (TypeError, OverflowError):      # None, a float, a huge int: the slow path
        return None
    if offsets and (min(offsets) < 0 or min(stops) < 0):
        return None
    lengths = array.array("q", map(operator.sub, stops, offsets))
    if lengths and min(lengths) < 0:        # an end before its start (-1: to EOF)
        return None
    return offsets, lengths


def _resolve(path, start, end, sizes):
    if (start is not None and start < 0) or (end is not None and end < 0):
        if path not in sizes:
            sizes[path] = _size_or_none(path)
        size = sizes[path]
        if size is None:
            return 0, 0                     # the read reports why
        if start is not None and start < 0:
            start = max(0, size + start)
        if end is not None and end < 0:
            end = size + end
    start = start or 0
    if end is None or end - start == -1:
        return start, -1
    if end - start < -1:
        raise ValueError("read length must be non-negative or -1")
    return start, end - start


def route_local_paths():
    """Make plain paths and file:// URLs go through VyreFileSystem in fsspec
    (fsspec.open, fsspec.filesystem("file"), and the libraries that use them), for
    this process. Undo with
    fsspec.register_implementation("file", LocalFileSystem, clobber=True), and
    the same for "local"."""
    import fsspec
    for protocol in ("file", "local"):
        fsspec.register_implementation(protocol, VyreFileSystem, clobber=True)

