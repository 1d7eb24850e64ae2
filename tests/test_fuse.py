"""Files on FUSE, served by tests/fusefs.py. Linux (6.18 here) gets io_uring reads of a
FUSE file opened with FOPEN_DIRECT_IO wrong: when the server answers short, at EOF or
before it, the kernel asks for the rest again at the first offset, and the read
completes full with the file's start repeated in it. The reader reads FUSE files
with pread instead: these tests read through every reader call a FUSE filesystem
that answers at most 100 bytes per read (and, separately, one that refuses statfs),
and compare with the files themselves. Before the reader did so, read_files,
read_ranges and read_ranges_into here returned the repeated bytes."""
import os
import random
import resource

import pytest

import vyre_uring
from vyre_uring import BatchReader, Ring, RingClosedError

from conftest import limit_leaving_free, open_fds
from fusefs import fuse_unavailable, served

pytestmark = pytest.mark.skipif(fuse_unavailable() is not None,
                                reason=fuse_unavailable() or "")

SIZES = [0, 1, 99, 100, 101, 4096, 70_000, 300_001]


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "source"
    folder.mkdir()
    rng = random.Random(5)
    for k, size in enumerate(SIZES):
        (folder / f"f{k}").write_bytes(rng.randbytes(size))
    return folder


@pytest.fixture(params=[{}, {"statfs": False}], ids=["fuse", "fuse without statfs"])
def mounted(request, source, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with served(mnt, source, short_reads=100, **request.param) as at:
        yield at


def _files(source, mounted):
    names = sorted(os.listdir(source), key=lambda n: int(n[1:]))
    want = [(source / n).read_bytes() for n in names]
    return [os.path.join(mounted, n) for n in names], want


def _routed(source, paths, route):
    """The call's paths: all on FUSE ("threads": the reader hands the call to its
    FUSE threads, seeing its first file there), or amid local files ("rings": its
    first file is local, so the rings read it, FUSE files with pread)."""
    if route == "threads":
        return paths
    local = [str(source / os.path.basename(p)) for p in paths]
    return [p for pair in zip(local, paths) for p in pair]


def _expected(source, call):
    return [(source / os.path.basename(p)).read_bytes() for p in call]


def _assert_route(r, before, route):
    stats = r.stats()
    if route == "threads":
        assert stats["fuse_calls"] > before["fuse_calls"]
        assert stats["sync_reads"] == before["sync_reads"]
    else:
        assert stats["fuse_calls"] == before["fuse_calls"]
        assert stats["sync_reads"] > before["sync_reads"]      # pread, not the ring


@pytest.mark.parametrize("route", ["threads", "rings"])
@pytest.mark.parametrize("workers", [1, 2])
def test_whole_files_on_fuse_come_back_whole(source, mounted, file_table, workers, route):
    paths, _ = _files(source, mounted)
    call = _routed(source, paths, route)
    want = _expected(source, call)
    with BatchReader(backend="io_uring", workers=workers) as r:
        before = r.stats()
        assert r.read_files(call) == want
        _assert_route(r, before, route)
        before = r.stats()
        packed = r.read_files_into(call, bytearray(sum(map(len, want)) + 4096))
        assert [bytes(packed[i]) for i in range(len(call))] == want
        _assert_route(r, before, route)
        # (iter_files reads in turns, each of the files the budget lets in: a
        # turn's route is its first file's.)
        got = {i: data for i, _, data in r.iter_files(call, max_bytes_in_flight=1 << 16)}
        assert [got[i] for i in range(len(call))] == want
        before = r.stats()
        assert r.read_files(paths[-1:]) == want[-1:]    # one file: the rings, always
        _assert_route(r, before, "rings")
    with pytest.raises(RingClosedError):
        r.read_files(call)                          # closed: on either route


def test_files_on_a_slow_fuse_are_read_many_at_once(source, tmp_path, file_table):
    # Each read waits 50 ms, as over a network: the call's FUSE threads keep many
    # waiting at once, where one ring's preads would wait one after another.
    mnt = tmp_path / "slow"
    mnt.mkdir()
    names = sorted(os.listdir(source))
    report = {}
    with served(mnt, source, report, read_delay=0.05, threads=16):
        paths = [str(mnt / n) for n in names] * 2
        with BatchReader(backend="io_uring", workers=1) as r:
            assert r.read_files(paths) == [(source / n).read_bytes() for n in names] * 2
    assert report["most_reads"] >= 4, report


@pytest.mark.parametrize("route", ["threads", "rings"])
def test_fuse_files_near_the_fd_limit(source, mounted, file_table, route):
    # Files on FUSE hold fds of the process (the rings' preads, or the FUSE
    # threads'): with room for 3, they are opened as the limit allows, again after
    # others close, and none fails.
    paths, _ = _files(source, mounted)
    call = _routed(source, paths * 5, route)
    want = _expected(source, call)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with BatchReader(backend="io_uring", workers=2) as r:
        r.read_files(call[:1] + call[-1:])          # rings (and threads) started
        before = open_fds()
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit_leaving_free(3), hard))
        try:
            out = r.read_files(call, on_error="return")
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert out == want
        assert open_fds() == before


@pytest.mark.parametrize("workers", [1, 2])
def test_ranges_on_fuse_are_preads(source, mounted, workers):
    paths, want = _files(source, mounted)
    data, path = want[-1], paths[-1]
    rng = random.Random(7)
    offsets = [rng.randrange(len(data) + 500) for _ in range(300)] + [0, len(data) - 10]
    lengths = [rng.randrange(1, 9000) for _ in range(300)] + [len(data) + 4096, 4096]
    expected = [data[o:o + n] for o, n in zip(offsets, lengths)]
    buf = bytearray(sum(lengths))
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    with BatchReader(backend="io_uring", workers=workers) as r:
        before = r.stats()                          # many ranges: the FUSE threads
        assert r.read_ranges(path, offsets, lengths) == expected
        counts = r.read_ranges_into(path, buf, offsets, lengths, starts)
        assert counts == [len(e) for e in expected]     # past EOF: short, as pread
        assert [bytes(buf[s:s + c]) for s, c in zip(starts, counts)] == expected
        assert r.stats()["fuse_calls"] == before["fuse_calls"] + 2
        before = r.stats()                          # one range: a ring, with pread
        assert r.read_ranges(path, [5], [len(data)]) == [data[5:]]
        assert r.read_ranges_into(path, buf, [len(data) - 10], [4096]) == [10]
        assert bytes(buf[:10]) == data[-10:]
        _assert_route(r, before, "rings")


def test_ranges_of_a_file_on_a_slow_fuse_are_read_many_at_once(source, tmp_path):
    mnt = tmp_path / "slow"
    mnt.mkdir()
    data = (source / "f7").read_bytes()
    offsets = list(range(0, 16 * 4096, 4096))
    report = {}
    with served(mnt, source, report, read_delay=0.05, threads=16):
        got = vyre_uring.read_ranges(str(mnt / "f7"), offsets, [4096] * len(offsets))
    assert got == [data[o:o + 4096] for o in offsets]
    assert report["most_reads"] >= 4, report


@pytest.mark.parametrize("route", ["threads", "rings"])
def test_ranges_over_many_fuse_files(source, mounted, route):
    pytest.importorskip("fsspec")
    from vyre_uring.fsspec import VyreFileSystem
    paths, _ = _files(source, mounted)
    call = _routed(source, paths, route)
    want = _expected(source, call)
    starts = ([0, 5, 50, 1000, 0, 60_000, 123, 299_000] * 3)[:len(call)]
    ends = ([None, 90, 10_000, 2000, 4096, 70_000, 200_000, 400_000] * 3)[:len(call)]
    got = VyreFileSystem().cat_ranges(call, starts, ends)
    assert got == [w[s:e] for w, s, e in zip(want, starts, ends)]


def test_path_ranges_of_one_fuse_file_stay_on_the_rings(source, mounted):
    # Threads take a call's files one each: one file's many ranges the rings share
    # out instead, each ring with pread.
    paths, want = _files(source, mounted)
    offsets = list(range(0, 300_000, 3000))
    with BatchReader(backend="io_uring", workers=2) as r:
        before = r.stats()
        got = r.read_path_ranges([paths[-1]] * len(offsets), offsets, [4000] * len(offsets))
        assert got == [want[-1][o:o + 4000] for o in offsets]
        _assert_route(r, before, "rings")
        before = r.stats()
        assert r.read_path_ranges(paths[-2:], [5, 7], [100, 100]) == \
            [want[-2][5:105], want[-1][7:107]]
        _assert_route(r, before, "threads")


def test_the_raw_ring_reads_what_the_kernel_gives(source, mounted):
    # Ring is the kernel's interface as it is: documented, not corrected. A read
    # within a file the server answers whole is right whatever the kernel.
    paths, want = _files(source, mounted)
    fd = os.open(paths[3], os.O_RDONLY)             # 100 bytes: one answer
    try:
        buf = bytearray(100)
        with Ring(4) as ring:
            ring.prep_read(fd, buf, 0, user_data=1)
            ring.submit_and_wait(1)
            assert [(c.user_data, c.res) for c in ring.completions()] == [(1, 100)]
        assert bytes(buf) == want[3]
    finally:
        os.close(fd)


def test_asyncio_reads_fuse_files_on_threads(source, mounted):
    import asyncio
    from vyre_uring import aio
    paths, want = _files(source, mounted)
    data, path = want[-1], paths[-1]

    async def main():
        assert await aio.read_files(paths) == want                  # < 64: the loop's
        assert [await aio.read_file(p) for p in paths] == want
        assert await aio.read_ranges(path, [0, 5000, len(data) - 3], [4096, 9000, 4096]) \
            == [data[:4096], data[5000:14000], data[-3:]]
        buf = bytearray(8192)
        assert await aio.read_ranges_into(path, buf, [len(data) - 50, 7], [4096, 4096],
                                          [0, 4096]) == [50, 4096]
        assert bytes(buf[:50]) == data[-50:] and bytes(buf[4096:]) == data[7:4103]
        async with aio.open(paths[4], "rb") as f:                   # 101 bytes
            assert await f.read(65536) == want[4]                   # past EOF: short
    asyncio.run(main())
