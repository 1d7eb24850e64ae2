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
from vyre_uring import BatchReader, Ring

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


@pytest.mark.parametrize("workers", [1, 2])
def test_whole_files_on_fuse_come_back_whole(source, mounted, file_table, workers):
    paths, want = _files(source, mounted)
    with BatchReader(backend="io_uring", workers=workers) as r:
        assert r.read_files(paths) == want
        packed = r.read_files_into(paths, bytearray(sum(map(len, want)) + 4096))
        assert [bytes(packed[i]) for i in range(len(paths))] == want
        got = {i: data for i, _, data in r.iter_files(paths, max_bytes_in_flight=1 << 16)}
        assert [got[i] for i in range(len(paths))] == want
        assert r.stats()["sync_reads"] > 0          # pread, not the ring
        # FUSE and local files in turn: each device is told apart in one job.
        local = [str(source / os.path.basename(p)) for p in paths]
        mixed = [p for pair in zip(paths, local) for p in pair]
        assert r.read_files(mixed) == [w for w in want for _ in (0, 1)]


def test_fuse_files_near_the_fd_limit(source, mounted, file_table):
    # Files read with pread hold fds of the process: with room for 3, two rings
    # open them as the limit allows, retry, and fail none.
    paths, want = _files(source, mounted)
    paths, want = paths * 5, want * 5
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with BatchReader(backend="io_uring", workers=2) as r:
        r.read_files(paths[:1])
        before = open_fds()
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit_leaving_free(3), hard))
        try:
            out = r.read_files(paths, on_error="return")
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert out == want
        assert open_fds() == before


def test_ranges_on_fuse_are_preads(source, mounted):
    paths, want = _files(source, mounted)
    data, path = want[-1], paths[-1]
    rng = random.Random(7)
    offsets = [rng.randrange(len(data) + 500) for _ in range(300)] + [0, len(data) - 10]
    lengths = [rng.randrange(1, 9000) for _ in range(300)] + [len(data) + 4096, 4096]
    expected = [data[o:o + n] for o, n in zip(offsets, lengths)]
    assert vyre_uring.read_ranges(path, offsets, lengths) == expected
    buf = bytearray(sum(lengths))
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    counts = vyre_uring.read_ranges_into(path, buf, offsets, lengths, starts)
    assert counts == [len(e) for e in expected]     # past EOF: short, as pread
    assert [bytes(buf[s:s + c]) for s, c in zip(starts, counts)] == expected


def test_ranges_over_many_fuse_files(source, mounted):
    pytest.importorskip("fsspec")
    from vyre_uring.fsspec import VyreFileSystem
    paths, want = _files(source, mounted)
    fs = VyreFileSystem()
    starts = [0, 5, 50, 1000, 0, 60_000, 123, 299_000]
    ends = [None, 90, 10_000, 2000, 4096, 70_000, 200_000, 400_000]
    got = fs.cat_ranges(paths, starts, ends)
    assert got == [w[s:e] for w, s, e in zip(want, starts, ends)]


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
