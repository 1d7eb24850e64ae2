"""The GPU staging pipeline's host side, in CI: the same pipeline (plan, lanes on the
reader's rings, slots, events) with copies into host memory that run only when
the pipeline waits for them, as a GPU's do. A slot refilled before its copies
completed would copy the new bytes, and the data would differ."""
import array
import ctypes
import os
import random
import signal
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vyre_uring
from vyre_uring import BatchReader
from vyre_uring._cuda import CudaUnavailableError
from vyre_uring.reader import DEFAULT_QUEUE_DEPTH
from vyre_uring._engine import CopyOps, StagePlan, run_stage_lane
from vyre_uring._staging import (STAGING_MIN, CudaTarget, Destination, Requests, Staging,
                                 StagingCache, check_staging_bytes, plan, read_into)

from conftest import open_fds

BACKENDS = ["io_uring", "threads"]

# The copy side's C signatures (cuEventSynchronize, cuMemcpyHtoDAsync_v2, cuEventRecord).
EVENT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
COPY_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t,
                           ctypes.c_void_p)
RECORD_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


class DeferredLane:
    """A copy lane whose copies happen late: at wait(slot) for that slot's copies, at
    finish() (a stream's synchronize) for all. Records the most slots it ever had
    copies pending on."""

    def __init__(self, slots, log):
        self.pending = {s: [] for s in range(slots)}
        self.current = []
        self.log = log
        self.closed = False
        self.errors = []

    def c_ops(self):
        """The same lane as C functions for the engine's lanes, an event being its
        slot + 1: an exception in one (a failed check) fails the call with code 1,
        and fail() raises it, as a CUDA error would be raised."""
        def guarded(method):
            def call(*args):
                try:
                    method(*args)
                    return 0
                except BaseException as exc:
                    self.errors.append(exc)
                    return 1
            return call

        def fail(code, call):
            raise self.errors.pop()
        fns = (EVENT_FN(guarded(lambda event: self.wait(event - 1))),
               COPY_FN(guarded(lambda dest, source, n, stream: self.copy(dest, source, n))),
               RECORD_FN(guarded(lambda event, stream: self.record(event - 1))))
        return (*(ctypes.cast(fn, ctypes.c_void_p).value for fn in fns), 0,
                list(range(1, len(self.pending) + 1)), fail, fns)

    def copy(self, dest, source, nbytes):
        self.current.append((dest, source, nbytes))

    def record(self, slot):
        assert not self.pending[slot], "a slot was refilled while its copies were pending"
        self.pending[slot], self.current = self.current, []
        self.log.append(sum(1 for copies in self.pending.values() if copies))

    def wait(self, slot):
        for dest, source, nbytes in self.pending[slot]:
            ctypes.memmove(dest, source, nbytes)
        self.pending[slot] = []

    def finish(self):
        for slot in self.pending:
            self.wait(slot)
        self.current = []           # queued after the last record: a failed load's

    def close(self):
        self.finish()
        self.closed = True


class FakeDevice:
    """What CudaTarget asks of a CUDA device, over host memory: deferred copy lanes,
    pinning, the current context. `lane` makes the lanes (DeferredLane)."""

    def __init__(self, lane=DeferredLane):
        self.lanes, self.log, self.pinned = [], [], set()
        self._threads = threading.local()       # a context is current per thread
        self._lane = lane

    @property
    def current(self):
        return getattr(self._threads, "current", False)

    def make_current(self):
        old, self._threads.current = self.current, True
        return old

    def restore(self, old):
        assert self.current
        self._threads.current = old

    def synchronize(self):
        for lane in self.lanes:
            lane.finish()

    def copy_lane(self, slots):
        assert self.current, "a stream made without the device's context"
        self.lanes.append(self._lane(slots, self.log))
        return self.lanes[-1]

    def pin(self, address, nbytes):
        assert self.current, "staging pinned without the device's context"
        self.pinned.add(address)
        self.pinned_bytes = nbytes

    def unpin(self, address):
        self.pinned.remove(address)


def _read_into(backend, groups, dest, staging_bytes, workers=4, device=None,
               queue_depth=DEFAULT_QUEUE_DEPTH):
    """read_into through the real CudaTarget, its CUDA device faked over `dest` (a
    bytearray); returns (counts, device, cache)."""
    device = device or FakeDevice()
    cache = StagingCache()
    anchor = ctypes.c_char.from_buffer(dest)
    target = CudaTarget(Destination(ctypes.addressof(anchor), len(dest), device), cache)
    try:
        with BatchReader(backend=backend, workers=workers,
                         queue_depth=queue_depth) as reader:
            return read_into(reader._current(), groups, target, staging_bytes), device, cache
    finally:
        del anchor, target


def _file(tmp_path, name, size, seed=0):
    data = random.Random(seed).randbytes(size)
    path = tmp_path / name
    path.write_bytes(data)
    return str(path), data


def _read(backend, groups, size, staging_bytes, workers=4):
    dest = bytearray(max(size, 1))           # ctypes needs a byte to point at
    got, device, cache = _read_into(backend, groups, dest, staging_bytes, workers)
    assert all(lane.closed for lane in device.lanes) and not device.current
    cache.close()
    assert not device.pinned                 # unpinned when freed
    return got, dest[:size], device


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.usefixtures("file_table")   # registered files: table or own
def test_a_file_through_small_staging_equals_the_file(tmp_path, backend):
    path, data = _file(tmp_path, "a", (5 << 20) + 123)
    got, dest, device = _read(backend, [(path, [0], [len(data)], [0])], len(data),
                              STAGING_MIN)
    assert got == [len(data)]
    assert bytes(dest) == data
    assert device.pinned_bytes <= STAGING_MIN      # staging stays within its bound
    assert max(device.log) > 1                     # copies overlapped the next read


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.usefixtures("file_table")   # registered files: table or own
def test_ranges_of_several_files_land_where_asked(tmp_path, backend):
    files = [_file(tmp_path, f"f{k}", size, seed=k)
             for k, size in enumerate([1 << 20, 3 << 20, 4096, 7, 0, (2 << 20) + 1])]
    rng = random.Random(1)
    groups, expect, where = [], [], 0
    for path, data in files:
        offsets, lengths, dests = [], [], []
        for _ in range(rng.randint(0, 12)):
            off = rng.randint(0, len(data) + 10)
            n = rng.randint(0, 600_000)
            offsets.append(off)
            lengths.append(n)
            dests.append(where)
            expect.append((where, data[off:off + n]))
            where += n
        groups.append((path, offsets, lengths, dests))
    got, dest, _ = _read(backend, groups, where, 2 * STAGING_MIN)
    assert got == [len(chunk) for _, chunk in expect]     # short past EOF, as pread
    for start, chunk in expect:
        assert dest[start:start + len(chunk)] == chunk


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 3 << 20), staging=st.integers(STAGING_MIN, 8 * STAGING_MIN),
       workers=st.integers(1, 6), cuts=st.lists(st.integers(0, 3 << 20), max_size=8))
def test_any_split_of_a_file_reassembles_it(tmp_path_factory, size, staging, workers, cuts):
    path, data = _file(tmp_path_factory.mktemp("p"), "x", size, seed=size)
    bounds = sorted({0, size, *(c for c in cuts if c < size)})
    offsets = bounds[:-1]
    lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    order = list(range(len(offsets)))
    random.Random(size).shuffle(order)               # destinations in another order
    dests, where = [0] * len(order), 0
    for k in order:
        dests[k] = where
        where += lengths[k]
    got, dest, _ = _read("io_uring", [(path, offsets, lengths, dests)], size, staging,
                         workers)
    assert got == lengths
    for k in range(len(offsets)):
        assert dest[dests[k]:dests[k] + lengths[k]] == data[offsets[k]:offsets[k] + lengths[k]]


def test_plan_is_bounded_by_staging_and_workers(tmp_path):
    path, data = _file(tmp_path, "big", 64 << 20)
    fds = [os.open(path, os.O_RDONLY)]
    try:
        for staging in (STAGING_MIN, 32 << 20, 256 << 20):
            for workers in (1, 3, 16):
                layout, req = plan([(path, [0], [len(data)], [0])], fds, workers, staging)
                assert layout.nbytes <= staging
                assert layout.lanes <= workers
                loads = zip(req.load_first, req.load_first[1:])
                assert all(sum(req.length[a:b]) <= layout.chunk for a, b in loads)
                assert all(o + n <= layout.chunk
                           for o, n in zip(req.slot_offset, req.length))
                assert sum(req.length) == len(data)
    finally:
        os.close(fds[0])


@pytest.mark.parametrize("value", [STAGING_MIN - 1, (4 << 30) + 1, 0, -1])
def test_staging_bytes_out_of_bounds_is_refused(value):
    with pytest.raises(ValueError, match="staging_bytes"):
        check_staging_bytes(value)
    with pytest.raises(ValueError, match="staging_bytes"):
        BatchReader(staging_bytes=value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unreadable_file_fails_the_call_with_its_name_and_nothing_pending(
        tmp_path, backend):
    good, data = _file(tmp_path, "good", 3 << 20)
    missing = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError) as info:
        _read(backend, [(good, [0], [len(data)], [0]), (missing, [0], [10], [0])],
              len(data), STAGING_MIN)
    assert info.value.filename == missing


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_read_error_mid_load_stops_every_lane_and_drains_its_copies(tmp_path, backend):
    """A read that fails in the middle of a load, as a failing disk's would (EIO):
    /proc/self/mem at offset 0, never mapped in a process. Four lanes: the call fails
    naming that file once every lane's copies completed, with the context restored
    and the staging freed, not kept for the next call."""
    path, data = _file(tmp_path, "good", 24 << 20)
    dest = bytearray(len(data) + 4096)
    # /proc/self/mem reports size 0, so its length is read as asked.
    groups = [(path, [0], [len(data)], [0]), ("/proc/self/mem", [0], [4096], [len(data)])]
    device = FakeDevice()
    with pytest.raises(OSError) as info:
        _read_into(backend, groups, dest, 12 * STAGING_MIN, device=device)
    assert info.value.filename == "/proc/self/mem"
    assert len(device.lanes) == 4
    for lane in device.lanes:
        assert lane.closed and not any(lane.pending.values())
    assert not device.current and not device.pinned


def test_a_file_that_shrinks_reports_what_was_read(tmp_path):
    """Lengths are cut to the size when the call opens the file; a file cut shorter
    while the call runs reads short, and the count says so (pread semantics)."""
    path, data = _file(tmp_path, "s", 4 << 20)
    os.truncate(path, 1 << 20)
    got, dest, _ = _read("io_uring", [(path, [0], [len(data)], [0])], len(data), STAGING_MIN)
    assert got == [1 << 20]
    assert dest[:1 << 20] == data[:1 << 20]


def _has_libcuda():
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


class FakeCudaArray:
    """Claims to be CUDA memory: what a CPU-only machine must refuse clearly."""
    __cuda_array_interface__ = {"shape": (16,), "typestr": "|u1", "data": (1 << 40, False),
                                "version": 3, "strides": None}


@pytest.mark.skipif(_has_libcuda(), reason="this machine has the CUDA driver library")
def test_cpu_only_machine_says_which_library_is_missing(tmp_path):
    """A CUDA destination where there is no NVIDIA driver: the error says so."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * 16)
    with pytest.raises(CudaUnavailableError, match="libcuda.so.1"):
        vyre_uring.read_ranges_into(path, FakeCudaArray(), [0], [16])


@pytest.mark.usefixtures("file_table")
def test_a_load_of_more_files_than_a_small_ring_registers(tmp_path):
    # queue_depth 4: a direct table of 8 slots, fewer than the load's 12 files, which
    # the rings then read through the call's fds.
    files = [_file(tmp_path, f"f{k}", (256 << 10) + k, seed=k) for k in range(12)]
    dest = bytearray(sum(len(d) for _, d in files))
    groups, at = [], 0
    for path, data in files:
        groups.append((path, [0], [len(data)], [at]))
        at += len(data)
    got, _, cache = _read_into("io_uring", groups, dest, 6 * STAGING_MIN, workers=2,
                               queue_depth=4)
    cache.close()
    assert got == [len(d) for _, d in files]
    assert bytes(dest) == b"".join(d for _, d in files)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.usefixtures("file_table")   # registered files: table or own
def test_a_load_of_many_files_opens_them_in_a_loop_and_closes_them(tmp_path, backend):
    """600 files in one device load (a checkpoint of many shards): every one is
    opened (not one nested call per file, which ran out of Python's stack) and all
    are closed after."""
    files = [_file(tmp_path, f"s{k}", 100, seed=k) for k in range(600)]
    groups = [(path, [0], [100], [100 * k]) for k, (path, _) in enumerate(files)]
    fds_before = open_fds()
    got, dest, _ = _read(backend, groups, 100 * len(files), 12 * STAGING_MIN)
    assert got == [100] * len(files)
    assert bytes(dest) == b"".join(data for _, data in files)
    assert open_fds() == fds_before


class InterruptingLane(DeferredLane):
    """Sends the process Ctrl-C at its `at`-th record (from a worker thread: Python
    delivers it to the main thread, waiting in the call). Later records wait until
    the main thread has run the handler (`handled`, at most 10 s), so that however
    loaded the machine, the lanes cannot finish the whole load first: once the
    handler ran, the call sets its Stop before it lets go of the GIL, which every
    record needs."""

    def __init__(self, slots, log, counter, at, handled):
        super().__init__(slots, log)
        self.counter, self.at, self.handled = counter, at, handled

    def record(self, slot):
        super().record(slot)
        self.counter.append(slot)
        if len(self.counter) == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        elif len(self.counter) > self.at:
            self.handled.wait(10)


@pytest.fixture
def ctrl_c_seen():
    """An Event set by a SIGINT handler that raises KeyboardInterrupt, as Python's
    own does; the old handler is restored after the test."""
    seen = threading.Event()

    def handler(signum, frame):
        seen.set()
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGINT, handler)
    yield seen
    signal.signal(signal.SIGINT, old)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_mid_load_stops_every_lane_with_its_copies_done(tmp_path, backend,
                                                                ctrl_c_seen):
    path, data = _file(tmp_path, "big", 48 << 20)
    records = []
    device = FakeDevice(lambda slots, log: InterruptingLane(slots, log, records, 5,
                                                            ctrl_c_seen))
    fds_before = open_fds()
    with pytest.raises(KeyboardInterrupt):
        _read_into(backend, [(path, [0], [len(data)], [0])], bytearray(len(data)),
                   12 * STAGING_MIN, device=device)
    assert ctrl_c_seen.is_set()
    assert len(device.lanes) == 4
    assert 5 <= len(records) < len(data) // STAGING_MIN       # it stopped early
    for lane in device.lanes:
        assert lane.closed and not any(lane.pending.values())
    assert not device.current and not device.pinned
    assert open_fds() == fds_before                             # the file was closed


def test_staging_cache_keeps_the_largest_and_reuses_it():
    cache = StagingCache()
    first = cache.take(1 << 20, None)
    cache.give(first)
    assert cache.take(4096, None) is first          # large enough: reused
    cache.give(first)
    bigger = cache.take(2 << 20, None)              # too small: replaced
    assert bigger is not first and first.memory.closed
    other = Staging(1 << 20)                        # a concurrent call's own
    cache.give(bigger)
    cache.give(other)
    assert other.memory.closed and not bigger.memory.closed
    cache.close()
    assert bigger.memory.closed


# ---- the engine's StagePlan refuses what its lanes must not read or copy -------------

def _stage_plan(fds=(0,), slot_bytes=1 << 20, slots=3, dest_nbytes=1 << 20, **fields):
    req = dict(file=[0], offset=[0], length=[4096], slot_offset=[0], dest_offset=[0],
               range=[0], load_first=[0, 1])
    req.update(fields)
    requests = Requests(**{k: array.array("q", v) for k, v in req.items()})
    got = array.array("q", bytes(8 * len(requests.offset)))
    return StagePlan(requests, list(fds), ["f"] * len(fds), got, slot_bytes, slots, 0,
                     dest_nbytes)


@pytest.mark.parametrize("kwargs,match", [
    (dict(slot_bytes=(1 << 61) + 1, slots=8), "address space"),     # slots * bytes wraps
    (dict(slots=9), "slots"),
    (dict(fds=((1 << 32) + 3,)), "not a file descriptor"),
    (dict(fds=(-1,)), "not a file descriptor"),
    (dict(slot_offset=[(1 << 20) - 100]), "outside"),                # past its slot
    (dict(dest_offset=[(1 << 20) - 100]), "outside"),                # past the destination
    (dict(file=[1]), "outside"),                                     # no such file
    (dict(offset=[-1]), "outside"),
    (dict(load_first=[0, 2]), "load_first"),
    (dict(load_first=[1, 1]), "load_first"),
])
def test_a_stage_plan_refuses_requests_outside_what_was_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _stage_plan(**kwargs)


def test_a_stage_lane_refuses_slots_past_its_staging():
    fns = (EVENT_FN(lambda event: 0), COPY_FN(lambda dest, source, n, stream: 0),
           RECORD_FN(lambda event, stream: 0))
    ops = CopyOps(*(ctypes.cast(fn, ctypes.c_void_p).value for fn in fns), 0, [1, 2, 3],
                  lambda code, call: None, fns)
    with vyre_uring.Ring(8) as ring, pytest.raises(ValueError, match="do not fit"):
        run_stage_lane(ring, _stage_plan(), bytearray(3 << 20), 4096, ops, 4,
                       array.array("q", bytes(40)))
