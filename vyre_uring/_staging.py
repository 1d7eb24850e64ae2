"""Reading into GPU memory: file ranges go through pinned host staging slots and are
copied to the device on CUDA streams, reading slot k+1 while slot k is copied.

The plan. Each range is cut into pieces of at most one slot (`chunk` bytes), and
consecutive pieces are packed into loads of at most one slot each. Each of the
reader's rings runs one lane: a stream and SLOTS_PER_LANE slots of its own. A lane
takes the next load (lanes share one counter, so a shard's loads go to every ring),
waits until its slot's previous copies completed (an event per slot), reads the
load into the slot in C without the GIL (several requests per slot, so a cold disk
sees a deep queue), queues the copies and records the slot's event.

Memory. A slot is refilled only after its event; every lane's stream is
synchronized before the call returns or raises, so no copy is in flight on a slot
or into the caller's memory once the call is over; staging is unpinned and freed
only after that. The copy side is a `lane` object (copy, record, wait, finish):
CUDA's CopyLane here, a host one in the tests, which run this same pipeline in CI.
"""
import array
import contextlib
import ctypes
import mmap
import os
from collections import namedtuple
from itertools import count

from . import _cuda
from ._files import OPEN_FLAGS, check_regular, path_error
from .buffers import PAGE_SIZE, alloc_buffer

__all__ = ["STAGING_DEFAULT", "STAGING_MAX", "STAGING_MIN", "CudaTarget", "Staging",
           "StagingCache", "check_staging_bytes", "cuda_destination", "read_into"]

STAGING_DEFAULT = 256 << 20     # 16 lanes x 3 slots of 5 MiB: enough to keep 16 cores
STAGING_MIN = 1 << 20           # and the copy engine busy; pinned memory is scarce,
STAGING_MAX = 4 << 30           # so a caller may not take more than this.
SLOTS_PER_LANE = 3              # one being read, one being copied, one spare for jitter
CHUNK_MAX = 16 << 20            # larger slots gain nothing and delay the first copy
REQUEST_BYTES = 4 << 20         # one read request; a slot is read by several at once

Destination = namedtuple("Destination", "address nbytes device owner")
Piece = namedtuple("Piece", "index slot_offset dest_offset nbytes first_request requests")
Load = namedtuple("Load", "reads pieces")
FileReads = namedtuple("FileReads", "fd name offsets lengths slot_offsets")


def check_staging_bytes(nbytes):
    if not STAGING_MIN <= nbytes <= STAGING_MAX:
        raise ValueError(f"staging_bytes must be between {STAGING_MIN} and {STAGING_MAX} "
                         f"(1 MiB and 4 GiB of pinned memory), not {nbytes}")
    return nbytes


def cuda_destination(obj):
    """A Destination for a CUDA array (anything with __cuda_array_interface__: torch
    tensors, CuPy arrays), or None for anything else. Refuses read-only and
    non-contiguous arrays, and checks that the memory is one device allocation."""
    try:
        cai = obj.__cuda_array_interface__
    except AttributeError:
        return None
    what = type(obj).__name__
    if cai["data"][1]:
        raise TypeError(f"buffer must be writable, not a read-only {what}")
    itemsize = int(cai["typestr"][2:])
    shape = tuple(cai["shape"])
    nbytes = itemsize
    for n in shape:
        nbytes *= n
    strides = cai.get("strides")
    if strides is not None and nbytes and tuple(strides) != _c_strides(shape, itemsize):
        raise TypeError(f"buffer must be C-contiguous; this {what} has strides {strides}")
    address = cai["data"][0]
    if nbytes == 0:
        return Destination(address, 0, None, obj)
    device = _cuda.device(_cuda.device_ordinal_of(address))
    base, size = device.allocation_of(address)
    if address + nbytes > base + size:
        raise ValueError(f"buffer's {nbytes} bytes run past its CUDA allocation")
    return Destination(address, nbytes, device, obj)


def _c_strides(shape, itemsize):
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def read_into(backend, groups, target, staging_bytes):
    """Read `groups` (path, offsets, lengths, dest_offsets; every range checked to lie
    inside the destination) through at most `staging_bytes` of staging into
    `target` (a CudaTarget); returns the byte count of each range, in order."""
    with _open_files([path for path, *_ in groups]) as fds:
        layout, loads, pieces = plan(groups, fds, backend.workers, staging_bytes)
        got = []
        if loads:
            with target.session(layout) as (staging, lanes):
                got = run_pipeline(backend, layout, loads, len(pieces), staging, lanes,
                                   target.address, target.device)
    return _range_counts(groups, pieces, got)


class CudaTarget:
    """The CUDA memory of a Destination, with the reader's StagingCache: a session
    pins staging (or reuses the cache's), makes the device's context current, waits
    for the destination's pending work and gives each lane a stream; on leaving,
    every stream is synchronized before the staging goes back to the cache."""

    def __init__(self, dest, cache):
        self.address = dest.address
        self.device = dest.device
        self._cache = cache

    @contextlib.contextmanager
    def session(self, layout):
        staging = self._cache.take(layout.nbytes, self.device)
        old = self.device.make_current()
        lanes = []
        try:
            self.device.synchronize()       # the destination's pending work, any stream
            for _ in range(layout.lanes):
                lanes.append(self.device.copy_lane(layout.slots))
            yield staging, lanes
        finally:
            try:
                _close_all(lanes)           # each synchronizes: no copy outlives the call
            except BaseException:
                _abandoned.append(staging)  # a copy may still read it: never freed or reused
                raise
            finally:
                self.device.restore(old)
            self._cache.give(staging)


_abandoned = []


def _close_all(lanes):
    """Close every lane, even after one fails; raises the first failure once every
    lane was tried."""
    first = None
    for lane in lanes:
        try:
            lane.close()
        except BaseException as exc:
            first = first or exc
    if first is not None:
        raise first


Layout = namedtuple("Layout", "lanes slots chunk nbytes")


def plan(groups, fds, workers, staging_bytes):
    """(Layout, loads, pieces): how `groups` go through staging. Lengths are cut to
    each file's size first (a file whose size says nothing, /proc, keeps them)."""
    total = 0
    ranges = []                                 # (fd index, offset, length, dest offset)
    for g, (_, offsets, lengths, dest_offsets) in enumerate(groups):
        size = os.fstat(fds[g]).st_size
        for off, n, d in zip(offsets, lengths, dest_offsets):
            n = max(0, min(n, size - off)) if size else n
            ranges.append((g, off, n, d))
            total += n
    lanes = max(1, min(workers, staging_bytes // (SLOTS_PER_LANE * STAGING_MIN)))
    chunk = min(CHUNK_MAX, staging_bytes // (lanes * SLOTS_PER_LANE))
    # A small call pins only what it uses.
    chunk = min(chunk, -(-total // (lanes * SLOTS_PER_LANE)))
    chunk = max(PAGE_SIZE, chunk // PAGE_SIZE * PAGE_SIZE)
    loads, pieces = _loads(groups, fds, ranges, chunk)
    lanes = max(1, min(lanes, len(loads)))
    slots = max(1, min(SLOTS_PER_LANE, -(-len(loads) // lanes)))
    return Layout(lanes, slots, chunk, lanes * slots * chunk), loads, pieces


def _loads(groups, fds, ranges, chunk):
    """Pack the ranges, cut into pieces of at most `chunk`, into loads of at most
    `chunk` bytes; pieces[k] is the range index of piece k."""
    loads, pieces = [], []
    current, used = [], 0
    for r, (g, off, n, d) in enumerate(ranges):
        done = 0
        while done < n:
            if used == chunk:
                loads.append(_load(groups, fds, current))
                current, used = [], 0
            take = min(n - done, chunk - used)
            current.append((len(pieces), g, off + done, take, d + done, used))
            pieces.append(r)
            used += take
            done += take
        if n == 0:
            pieces.append(r)                    # a range with nothing to read
    if current:
        loads.append(_load(groups, fds, current))
    return loads, pieces


def _load(groups, fds, items):
    """A Load: per file, the read requests (at most REQUEST_BYTES each), and the
    pieces with where their requests are."""
    by_file = {}
    for index, g, off, n, d, slot_off in items:
        by_file.setdefault(g, []).append((index, off, n, d, slot_off))
    reads, pieces = [], []
    for g, group in by_file.items():
        offsets, lengths, slot_offsets = array.array("q"), array.array("q"), array.array("q")
        for index, off, n, d, slot_off in group:
            first = len(offsets)
            for k in range(0, n, REQUEST_BYTES):
                offsets.append(off + k)
                lengths.append(min(REQUEST_BYTES, n - k))
                slot_offsets.append(slot_off + k)
            pieces.append(Piece(index, slot_off, d, n, (len(reads), first),
                                len(offsets) - first))
        reads.append(FileReads(fds[g], groups[g][0], offsets, lengths, slot_offsets))
    return Load(reads, pieces)


def run_pipeline(backend, layout, loads, npieces, staging, lanes, dest_address, device=None):
    """Run the loads on `layout.lanes` rings of `backend`, through `staging` (at least
    layout.nbytes of host memory), copying with `lanes` (one per lane) to
    dest_address + piece.dest_offset. Returns the bytes read per piece. With a
    `device`, each ring's thread makes its context current while it runs."""
    got = [0] * npieces
    claim = count()                             # next(count) is atomic under the GIL
    failed = []                                 # a lane failed: the others stop too
    slot_bytes = layout.chunk

    def lane_task(i, read, stop):
        copies = lanes[i]
        base = i * layout.slots * slot_bytes
        with memoryview(staging.memory) as whole:
            slots = [whole[base + s * slot_bytes:base + (s + 1) * slot_bytes]
                     for s in range(layout.slots)]
            old = device.make_current() if device is not None else None
            try:
                _lane(read, stop, failed, loads, claim, slots, copies, got,
                      staging.address + base, slot_bytes, dest_address)
                copies.finish()
            except BaseException:
                failed.append(i)
                raise
            finally:
                for view in slots:
                    view.release()
                if device is not None:
                    device.restore(old)
    backend.run_lanes(layout.lanes, lane_task)
    return got


def _lane(read, stop, failed, loads, claim, slots, copies, got, slots_address, slot_bytes,
          dest_address):
    turn = 0
    while not (stop.is_set or failed):
        k = next(claim)
        if k >= len(loads):
            return
        s = turn % len(slots)
        turn += 1
        copies.wait(s)                          # its last copies are done: refill it
        load = loads[k]
        counts = [read(f.fd, f.offsets, f.lengths, slots[s], f.slot_offsets, f.name)
                  for f in load.reads]
        source = slots_address + s * slot_bytes
        for piece in load.pieces:
            f, first = piece.first_request
            spans = _filled_spans(load.reads[f], counts[f], first, piece.requests)
            for start, n in spans:
                copies.copy(dest_address + piece.dest_offset + (start - piece.slot_offset),
                            source + start, n)
            got[piece.index] = sum(n for _, n in spans)
        copies.record(s)


def _filled_spans(reads, counts, first, requests):
    """(slot offset, bytes) of what the requests first..first+requests-1 read, runs
    of full requests merged: one span unless a read came back short (EOF)."""
    spans = []
    for q in range(first, first + requests):
        start, n = reads.slot_offsets[q], counts[q]
        if spans and spans[-1][0] + spans[-1][1] == start:
            spans[-1] = (spans[-1][0], spans[-1][1] + n)
        elif n:
            spans.append((start, n))
    return [(s, n) for s, n in spans if n]


def _range_counts(groups, pieces, got):
    """Bytes read per range (the sum of its pieces), ranges in input order."""
    counts = [0] * sum(len(offsets) for _, offsets, *_ in groups)
    for k, r in enumerate(pieces):
        if k < len(got):
            counts[r] += got[k]
    return counts


class _open_files:
    """The paths open for reading (regular files only), closed on exit; an OSError
    names the path."""

    def __init__(self, paths):
        self.paths = paths
        self.fds = []

    def __enter__(self):
        try:
            for path in self.paths:
                try:
                    fd = os.open(path, OPEN_FLAGS)
                except OSError as exc:
                    raise path_error(exc.errno, path) from None
                self.fds.append(fd)
                check_regular(os.fstat(fd).st_mode, path)
        except BaseException:
            self.__exit__()
            raise
        return self.fds

    def __exit__(self, *exc):
        for fd in self.fds:
            os.close(fd)
        self.fds = []


class Staging:
    """Page-aligned host memory, pinned for `device` (a _cuda.Device) when given."""

    def __init__(self, nbytes, device=None):
        self.memory = alloc_buffer(nbytes)
        _huge_pages(self.memory)
        self.nbytes = len(self.memory)
        self._anchor = ctypes.c_char.from_buffer(self.memory)
        self.address = ctypes.addressof(self._anchor)
        self.device = None
        if device is not None:
            try:
                device.pin(self.address, self.nbytes)
            except BaseException:
                self.close()
                raise
            self.device = device

    def close(self):
        """Unpin and free. Only once no copy from it can be in flight."""
        if self.device is not None:
            self.device.unpin(self.address)
            self.device = None
        self._anchor = None
        try:
            self.memory.close()
        except BufferError:
            pass    # a traceback still holds a view of it: freed with that view



def _huge_pages(memory):
    """Ask for transparent huge pages: the rings' copies into staging and the DMA
    engine's reads from it then walk 2 MiB pages, not 4 KiB ones. Advice only."""
    try:
        memory.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):
        pass            # no THP in this kernel or Python: 4 KiB pages, still correct


class StagingCache:
    """The pinned staging a reader keeps between calls (pinning hundreds of MiB costs
    milliseconds): one area, taken by one call at a time; a concurrent call pins its
    own, and only the largest is kept."""

    def __init__(self):
        self._kept = None
        self._pid = os.getpid()

    def take(self, nbytes, device):
        kept, self._kept = self._kept, None     # one bytecode: atomic under the GIL
        if kept is not None and kept.nbytes >= nbytes and kept.device is device:
            return kept
        if kept is not None:
            kept.close()
        return Staging(nbytes, device)

    def give(self, staging):
        other, self._kept = self._kept, staging
        if other is not None:
            if other.nbytes > staging.nbytes:
                self._kept, other = other, staging
            other.close()

    def close(self):
        kept, self._kept = self._kept, None
        if kept is not None and self._pid == os.getpid():
            kept.close()        # a forked child must not call CUDA: it just drops it
