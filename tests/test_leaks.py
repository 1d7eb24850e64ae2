"""Leaks: after a million operations, ten thousand ring create/close cycles and
hundreds of reader lifetimes, open fds, memory mappings and RSS are back where they
started (after a warm-up, so that allocator caches are already grown)."""
import array
import gc
import os

import pytest

import vyre_uring
from vyre_uring import BatchReader

from conftest import UNDER_ASAN, direct_supported, open_fds

RSS_SLACK = 16 << 20          # allocator arenas and caches: noise, not a leak
# Under AddressSanitizer freed memory sits in its quarantine and its allocator maps
# more regions as that grows, by design: RSS says nothing about leaks there, and
# mappings need more slack (a leak per cycle would still add hundreds).
MAPS_SLACK = 32 if UNDER_ASAN else 2


def snapshot():
    gc.collect()
    with open("/proc/self/maps") as f:
        maps = sum(1 for _ in f)
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return {"fds": open_fds(), "maps": maps, "rss": rss}


def assert_back_to(before, after):
    assert after["fds"] == before["fds"], (before, after)
    assert after["maps"] <= before["maps"] + MAPS_SLACK, (before, after)
    if not UNDER_ASAN:
        assert after["rss"] <= before["rss"] + RSS_SLACK, (before, after)


def test_a_million_operations_leave_nothing_behind(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(os.urandom(1 << 20))
    fd = os.open(path, os.O_RDONLY)
    buf = vyre_uring.alloc_buffer(64 * 4096)
    ud = array.array("Q", bytes(8 * 64))
    res = array.array("i", bytes(4 * 64))
    offsets = array.array("q", [(i * 4096) % (1 << 20) for i in range(64)])
    lengths = array.array("q", [4096]) * 64

    def work(ring, batches):
        for _ in range(batches):
            ring.prep_nops(array.array("Q", range(64)))
            assert ring.reap(ud, res, min_complete=64) == 64
            ring.prep_reads(fd, buf, offsets, lengths)
            assert ring.reap(ud, res, min_complete=64) == 64
            assert all(r == 4096 for r in res)
    try:
        with vyre_uring.Ring(64) as ring:
            work(ring, 500)                          # warm-up
            before = snapshot()
            work(ring, 1_000_000 // 128)             # 10^6 operations
            after = snapshot()
        assert_back_to(before, after)
    finally:
        os.close(fd)
        buf.close()


def test_ten_thousand_rings_created_and_closed_leave_nothing_behind():
    def cycle(n):
        for i in range(n):
            with vyre_uring.Ring(8) as ring:
                ring.prep_nop(user_data=i)
                assert [c.user_data for c in ring.wait(1, timeout=5)] == [i]
    cycle(200)
    before = snapshot()
    cycle(10_000)
    after = snapshot()
    assert_back_to(before, after)


def test_a_ring_closed_with_io_in_flight_leaves_nothing_behind():
    r, w = os.pipe()
    try:
        def cycle(n):
            for _ in range(n):
                ring = vyre_uring.Ring(8)
                ring.prep_read(r, bytearray(16))     # never completes: cancelled
                ring.prep_timeout(30)
                ring.submit()
                ring.close()
        cycle(50)
        before = snapshot()
        cycle(2_000)
        after = snapshot()
        assert_back_to(before, after)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "direct"])
def test_reader_lifetimes_leave_nothing_behind(tmp_path, direct):
    paths = []
    for i in range(50):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(i * 300))
        paths.append(str(p))
    paths.append(str(tmp_path / "missing"))
    if direct and not direct_supported(paths[1]):
        pytest.skip("no O_DIRECT on this filesystem")

    def cycle(n):
        for _ in range(n):
            with BatchReader(backend="io_uring", queue_depth=8, workers=2,
                             direct=direct) as reader:
                out = reader.read_files(paths, on_error="return")
                assert isinstance(out[-1], FileNotFoundError)
                reader.read_ranges(paths[-2], [0, 100], [50, 50])
                list(reader.iter_files(paths[:10], max_bytes_in_flight=5000))
    cycle(20)
    before = snapshot()
    cycle(300)
    after = snapshot()
    assert_back_to(before, after)


def test_ten_thousand_calls_of_each_module_function_leave_nothing_behind(tmp_path):
    # The module-level functions share a cached reader: calls reuse its rings, and
    # nothing a call made (fds, ring mappings, result memory) stays after it.
    paths = []
    for i in range(8):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(100 + i * 700))
        paths.append(str(p))
    buf = bytearray(1 << 16)
    offsets, lengths = [0, 50], [40, 40]
    calls = [
        lambda: vyre_uring.read_files(paths),
        lambda: vyre_uring.read_files_into(paths, buf),
        lambda: vyre_uring.read_ranges(paths[3], offsets, lengths),
        lambda: vyre_uring.read_ranges_into(paths[3], buf, offsets, lengths, [0, 40]),
        lambda: vyre_uring.read_path_ranges(paths[:2], offsets, lengths),
        lambda: list(vyre_uring.iter_files(paths)),
    ]

    def cycle(n):
        for call in calls:
            for _ in range(n):
                call()
    cycle(100)
    before = snapshot()
    cycle(10_000)
    after = snapshot()
    assert_back_to(before, after)
