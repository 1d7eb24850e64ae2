"""Reading into GPU memory: file ranges go through pinned host staging slots and are
copied to the device on CUDA streams, reading slot k+1 while slot k is copied.

The plan. The ranges are cut into read requests of at most REQUEST_BYTES, packed
into loads of one slot (`chunk` bytes) each: flat arrays (Requests), checked and
copied once into the engine's StagePlan. Each of the reader's rings runs one lane:
a stream and SLOTS_PER_LANE slots of its own. A lane takes the next load (lanes
share one counter, so a shard's loads go to every ring), waits until its slot's
previous copies completed (an event per slot), reads the load into the slot
(several requests per slot, so a cold disk sees a deep queue), queues the copies
and records the slot's event. On io_uring the whole lane is one call into the
engine that holds the GIL only for signals and errors (run_stage_lane): lanes in
Python queued for the GIL at every load, which capped 16 rings well below the copy
engine. The slots are small enough (128 MiB for 16 lanes) to stay in the CPU's
cache between the read that fills them and the copy that empties them.

Memory. A slot is refilled only after its event; when the call ends, its target's
session synchronizes every lane's stream (_settle) before the call returns or
raises, so no copy is in flight on a slot or into the caller's memory once the call
is over; staging is unpinned and freed only after that. The copy side is a `lane`
object: CUDA's CopyLane here, a host one in the tests, which run this same pipeline
in CI. It offers its calls as C functions (c_ops(), for the engine's lanes) and as
methods (copy, record, wait, close: the thread backend's lanes, and the session).
"""
import array
import contextlib
import ctypes
import mmap
import operator
import os
import threading
import weakref
from collections import namedtuple

from . import _cuda
from ._files import lengths_within_eof
from ._engine import StagePlan, with_files
from .buffers import PAGE_SIZE, alloc_buffer

__all__ = ["STAGING_DEFAULT", "STAGING_MAX", "STAGING_MIN", "CudaTarget", "Staging",
           "StagingCache", "check_staging_bytes", "cuda_destination", "read_into"]

STAGING_DEFAULT = 128 << 20     # 16 lanes x 3 slots of 2.7 MiB: enough to keep 16 cores
STAGING_MIN = 1 << 20           # and the copy engine busy; pinned memory is scarce,
STAGING_MAX = 4 << 30           # so a caller may not take more than this.
SLOTS_PER_LANE = 3              # one being read, one being copied, one spare for jitter
CHUNK_MAX = 16 << 20            # larger slots gain nothing and delay the first copy
REQUEST_BYTES = 2 << 20         # one read request; a slot is read by several at once
LANE_MIN = 4 << 20              # less work per lane costs more in streams than it gains

Destination = namedtuple("Destination", "address nbytes device")


def check_staging_bytes(nbytes):
    try:
        nbytes = operator.index(nbytes)
    except TypeError:
        raise TypeError(f"staging_bytes must be an int, not {type(nbytes).__name__}") from None
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
        return Destination(address, 0, None)
    try:
        device = _cuda.device(_cuda.device_ordinal_of(address))
        old = device.make_current()
        try:
            base, size = device.allocation_of(address)
        finally:
            device.restore(old)
    except _cuda.CudaError as exc:
        raise ValueError(f"buffer: this {what}'s __cuda_array_interface__ points at "
                         f"{address:#x}, which is not CUDA device memory ({exc})") from None
    if address + nbytes > base + size:
        raise ValueError(f"buffer's {nbytes} bytes run past its CUDA allocation")
    return Destination(address, nbytes, device)


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
    def with_fds(fds):
        layout, requests = plan(groups, fds, backend.workers, staging_bytes)
        got = array.array("q", bytes(8 * len(requests.offset)))
        if len(requests.offset):
            with target.session(layout) as (staging, lanes):
                stages = StagePlan(requests, fds, [path for path, *_ in groups], got,
                                   layout.chunk, layout.slots, target.address,
                                   target.nbytes)
                run_pipeline(backend, layout, stages, staging, lanes, target.device)
        return _range_counts(groups, requests, got)
    # Device loads read through the page cache: O_DIRECT would need aligned reads
    # into the slots.
    return with_files([path for path, *_ in groups], with_fds)


class CudaTarget:
    """The CUDA memory of a Destination, with the reader's StagingCache: a session
    makes the device's context current, pins staging (or reuses the cache's), waits
    for the destination's pending work and gives each lane a stream; on leaving,
    every copy has completed (each stream synchronized, or the whole context where
    that failed or was interrupted) before the staging goes back to the cache."""

    def __init__(self, dest, cache):
        self.address = dest.address
        self.nbytes = dest.nbytes
        self.device = dest.device
        self._cache = cache

    @contextlib.contextmanager
    def session(self, layout):
        old = staging = None
        lanes = []
        ok = False
        try:
            old = self.device.make_current()
            staging = self._cache.take(layout.nbytes, self.device)
            self.device.synchronize()       # the destination's pending work, any stream
            for _ in range(layout.lanes):
                lanes.append(self.device.copy_lane(layout.slots))
            yield staging, lanes
            ok = True
        finally:
            try:
                _settle(self.device, lanes)
            finally:
                if staging is not None and ok:
                    self._cache.give(staging)
                elif staging is not None:   # a failed read may still settle into it
                    staging.close()
                if old is not None:
                    self.device.restore(old)


def _settle(device, lanes):
    """Every copy of the lanes completed, before the caller's memory and the staging
    are given back: each lane synchronizes its stream and frees it; if that fails or
    is interrupted, the whole context is synchronized (retried through Ctrl-C) and
    the first exception is raised then."""
    try:
        for lane in lanes:
            lane.close()
    except BaseException:
        interrupted = None
        while True:
            try:
                device.synchronize()
                break
            except KeyboardInterrupt as exc:
                interrupted = exc
        if interrupted is not None:
            raise interrupted from None
        raise


Layout = namedtuple("Layout", "lanes slots chunk nbytes")
# The plan's read requests, one array('q') per field (see StagePlan): request q reads
# length[q] bytes at offset[q] of groups[file[q]] into its slot at slot_offset[q],
# for destination offset dest_offset[q] of range range[q]; load k (one slot's worth)
# is requests load_first[k] up to load_first[k + 1].
Requests = namedtuple("Requests", "file offset length slot_offset dest_offset range "
                                  "load_first")


def plan(groups, fds, workers, staging_bytes):
    """(Layout, Requests): how `groups` go through staging. Lengths are cut to each
    file's size first (a file whose size says nothing, /proc, keeps them)."""
    total = 0
    ranges = []                                 # (fd index, offset, length, dest offset)
    for g, (_, offsets, lengths, dest_offsets) in enumerate(groups):
        for off, n, d in zip(offsets, lengths_within_eof(fds[g], offsets, lengths),
                             dest_offsets):
            ranges.append((g, off, n, d))
            total += n
    # Every ring, where the work fills them: a lane per LANE_MIN bytes at most.
    lanes = max(1, min(workers, staging_bytes // (SLOTS_PER_LANE * STAGING_MIN),
                       total // LANE_MIN))
    chunk = min(CHUNK_MAX, staging_bytes // (lanes * SLOTS_PER_LANE))
    # A small call pins only what it uses.
    chunk = min(chunk, -(-total // (lanes * SLOTS_PER_LANE)))
    chunk = max(PAGE_SIZE, chunk // PAGE_SIZE * PAGE_SIZE)
    requests = _requests(ranges, chunk)
    loads = len(requests.load_first) - 1
    lanes = max(1, min(lanes, loads))
    slots = max(1, min(SLOTS_PER_LANE, -(-loads // lanes)))
    return Layout(lanes, slots, chunk, lanes * slots * chunk), requests


def _requests(ranges, chunk):
    """The ranges cut into read requests of at most REQUEST_BYTES, packed into loads
    of at most `chunk` bytes (a request never crosses a load's end)."""
    out = Requests(*(array.array("q") for _ in range(6)), array.array("q", [0]))
    used = 0
    for r, (g, off, n, d) in enumerate(ranges):
        done = 0
        while done < n:
            if used == chunk:
                out.load_first.append(len(out.offset))
                used = 0
            take = min(n - done, chunk - used, REQUEST_BYTES)
            for field, value in zip(out, (g, off + done, take, used, d + done, r)):
                field.append(value)
            used += take
            done += take
    if used:
        out.load_first.append(len(out.offset))
    return out


def run_pipeline(backend, layout, stages, staging, lanes, device=None):
    """Run the StagePlan `stages` on `layout.lanes` rings of `backend`, through
    `staging` (a Staging of at least layout.nbytes), copying with `lanes` (one per
    lane; a lane's slots are layout.slots slots of layout.chunk). With a `device`,
    each ring's thread makes its context current while it runs."""
    def lane_task(i, stage):
        old = device.make_current() if device is not None else None
        try:
            stage(stages, staging, i * layout.slots * layout.chunk, lanes[i])
        finally:
            if device is not None:
                device.restore(old)
    backend.run_lanes(layout.lanes, lane_task)


def _range_counts(groups, requests, got):
    """Bytes read per range (the sum of its requests), ranges in input order."""
    counts = [0] * sum(len(offsets) for _, offsets, *_ in groups)
    for r, n in zip(requests.range, got):
        counts[r] += n
    return counts


class Staging:
    """Page-aligned host memory, pinned for `device` (a _cuda.Device) when given.
    Unpinned and freed by close(), or when collected (a reader dropped unclosed)."""

    def __init__(self, nbytes, device=None):
        self.memory = alloc_buffer(nbytes)
        _huge_pages(self.memory)
        self.nbytes = len(self.memory)
        anchor = ctypes.c_char.from_buffer(self.memory)
        self.address = ctypes.addressof(anchor)
        del anchor                              # (an export: the mmap could not close)
        self.device = device
        pinned = [False]                        # the finalizer's: unpin before freeing
        self._free = weakref.finalize(self, _free_staging, self.memory, self.address,
                                      device, os.getpid(), pinned)
        if device is not None:
            try:
                device.pin(self.address, self.nbytes)
            except BaseException:
                self.close()
                raise
            pinned[0] = True

    def close(self):
        """Unpin and free. Only once no copy from it can be in flight."""
        self._free()


def _free_staging(memory, address, device, pid, pinned):
    if pinned[0] and pid == os.getpid():        # a forked child must not call CUDA
        try:
            device.unpin(address)
        except _cuda.CudaError:
            pass                                # the driver is shutting down: it frees it
    try:
        memory.close()
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
        self._lock = threading.Lock()

    def take(self, nbytes, device):
        with self._lock:
            kept, self._kept = self._kept, None
        if kept is not None and kept.nbytes >= nbytes and kept.device is device:
            return kept
        if kept is not None:
            kept.close()
        return Staging(nbytes, device)

    def give(self, staging):
        with self._lock:
            other, self._kept = self._kept, staging
            if other is not None and other.nbytes > staging.nbytes:
                self._kept, other = other, staging
        if other is not None:
            other.close()

    def close(self):
        with self._lock:
            kept, self._kept = self._kept, None
        if kept is not None:
            kept.close()
