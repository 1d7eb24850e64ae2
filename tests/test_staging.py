"""The GPU staging pipeline's host side, in CI: the same pipeline (plan, lanes on the
reader's rings, slots, events) with copies into host memory that run only when
the pipeline waits for them, as a GPU's do. A slot refilled before its copies
completed would copy the new bytes, and the data would differ."""
import contextlib
import ctypes
import os
import random
import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vyre_uring
from vyre_uring import BatchReader
from vyre_uring._cuda import CudaUnavailableError
from vyre_uring._staging import (STAGING_MIN, Staging, StagingCache, _open_files,
                                 check_staging_bytes, plan, read_into)

BACKENDS = ["io_uring", "threads"]


class DeferredLane:
    """A copy lane whose copies happen late: at wait(slot) for that slot's copies, at
    finish() for all. Records the most slots it ever had copies pending on."""

    def __init__(self, slots, log):
        self.pending = {s: [] for s in range(slots)}
        self.current = []
        self.log = log

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
        assert not self.current, "copies queued after the slot's last record"
        for slot in self.pending:
            self.wait(slot)

    close = finish


class HostTarget:
    """A bytearray as the destination, staging that is not pinned, deferred lanes."""

    def __init__(self, dest):
        self._anchor = ctypes.c_char.from_buffer(dest)
        self.address = ctypes.addressof(self._anchor)
        self.device = None
        self.layouts, self.pending, self.lanes = [], [], []

    @contextlib.contextmanager
    def session(self, layout):
        self.layouts.append(layout)
        staging = Staging(layout.nbytes)
        self.lanes = [DeferredLane(layout.slots, self.pending) for _ in range(layout.lanes)]
        try:
            yield staging, self.lanes
        finally:
            for lane in self.lanes:
                lane.close()
            staging.close()


def _file(tmp_path, name, size, seed=0):
    data = random.Random(seed).randbytes(size)
    path = tmp_path / name
    path.write_bytes(data)
    return str(path), data


def _read(backend, groups, size, staging_bytes, workers=4):
    dest = bytearray(max(size, 1))           # ctypes needs a byte to point at
    target = HostTarget(dest)
    with BatchReader(backend=backend, workers=workers) as reader:
        got = read_into(reader._current(), groups, target, staging_bytes)
    del target._anchor
    return got, dest[:size], target


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_file_through_small_staging_equals_the_file(tmp_path, backend):
    path, data = _file(tmp_path, "a", (5 << 20) + 123)
    got, dest, target = _read(backend, [(path, [0], [len(data)], [0])], len(data),
                              STAGING_MIN)
    assert got == [len(data)]
    assert bytes(dest) == data
    layout = target.layouts[0]
    assert layout.nbytes <= STAGING_MIN            # staging stays within its bound
    assert layout.slots * layout.lanes * layout.chunk == layout.nbytes
    assert max(target.pending) > 1                 # copies overlapped the next read


@pytest.mark.parametrize("backend", BACKENDS)
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
    with _open_files([path]) as fds:
        for staging in (STAGING_MIN, 32 << 20, 256 << 20):
            for workers in (1, 3, 16):
                layout, loads, _ = plan([(path, [0], [len(data)], [0])], fds, workers,
                                        staging)
                assert layout.nbytes <= staging
                assert layout.lanes <= workers
                assert all(sum(n for n in f.lengths) <= layout.chunk
                           for load in loads for f in load.reads)


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
    """A directory opened as a file reads EISDIR: here a file whose reads fail in the
    middle, as a failing disk's would (EIO), through /proc/self/mem at a hole."""
    path, data = _file(tmp_path, "good", 6 << 20)
    dest = bytearray(len(data) + 4096)
    target = HostTarget(dest)
    with BatchReader(backend=backend, workers=3) as reader:
        # /proc/self/mem reports size 0, so its length is read as asked; offset 0 is
        # never mapped in a process, so that read fails with EIO.
        groups = [(path, [0], [len(data)], [0]), ("/proc/self/mem", [0], [4096],
                                                   [len(data)])]
        with pytest.raises(OSError) as info:
            read_into(reader._current(), groups, target, STAGING_MIN)
    del target._anchor
    assert info.value.filename == "/proc/self/mem"
    for lane in target.lanes:                     # every lane finished its copies
        assert not lane.current and not any(lane.pending.values())


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


class InterruptingLane(DeferredLane):
    """Sends the process Ctrl-C at its `at`-th record (from a worker thread: Python
    delivers it to the main thread, waiting in the call)."""

    def __init__(self, slots, log, counter, at):
        super().__init__(slots, log)
        self.counter, self.at = counter, at

    def record(self, slot):
        super().record(slot)
        self.counter.append(slot)
        if len(self.counter) == self.at:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_mid_load_stops_every_lane_with_its_copies_done(tmp_path, backend):
    path, data = _file(tmp_path, "big", 24 << 20)
    dest = bytearray(len(data))
    target = HostTarget(dest)
    records = []
    real_session = target.session

    @contextlib.contextmanager
    def session(layout):
        with real_session(layout) as (staging, lanes):
            lanes[:] = [InterruptingLane(layout.slots, target.pending, records, 5)
                        for _ in lanes]
            target.lanes = lanes
            yield staging, lanes
    target.session = session
    fds_before = len(os.listdir("/proc/self/fd"))
    with BatchReader(backend=backend, workers=4) as reader:
        with pytest.raises(KeyboardInterrupt):
            read_into(reader._current(), [(path, [0], [len(data)], [0])], target,
                      STAGING_MIN)
    del target._anchor
    assert 5 <= len(records) < len(data) // (STAGING_MIN // 3)   # it stopped early
    for lane in target.lanes:
        assert not lane.current and not any(lane.pending.values())
    assert len(os.listdir("/proc/self/fd")) == fds_before       # the file was closed


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
