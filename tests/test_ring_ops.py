"""Each operation of Ring against the real kernel, compared with plain os calls."""
import array
import errno
import os
import re
import stat
import threading
import time

import pytest

import vyre_uring
from vyre_uring import (FILE_INDEX_ALLOC, SQE_FIXED_FILE, SQE_IO_LINK, Op, Ring, Statx,
                        alloc_buffer)

U64_MAX = 2**64 - 1


def collect(ring, n, timeout=10.0):
    """Submit and gather exactly `n` completions, as {user_data: Completion}; fails on
    duplicates or if they do not all arrive within `timeout` seconds."""
    got = {}
    deadline = time.monotonic() + timeout
    while len(got) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(got)} of {n} completions arrived: {got}"
        for c in ring.wait(min_complete=1, timeout=left):
            assert c.user_data not in got, f"user_data {c.user_data} completed twice"
            got[c.user_data] = c
    assert len(got) == n, got
    return got


def one(ring, timeout=10.0):
    (c,) = collect(ring, 1, timeout).values()
    return c


def need_ops(ring, *ops):
    missing = [op for op in ops if op not in ring.probe()]
    if missing:
        pytest.skip(f"kernel lacks io_uring ops {missing}")


# ---- NOP ---------------------------------------------------------------------------

@pytest.mark.parametrize("ud", [0, 1, 2**32, U64_MAX])
def test_nop_returns_user_data_exactly(ring, ud):
    ring.prep_nop(user_data=ud)
    c = one(ring)
    assert (c.user_data, c.res) == (ud, 0)


def test_completion_is_comparable_and_hashable(ring):
    ring.prep_nop(user_data=7)
    c = one(ring)
    assert c == c and hash(c) == hash(c)
    assert "user_data=7" in repr(c)


# ---- read / write ------------------------------------------------------------------

def test_read_whole_buffer_matches_pread(ring, fd, tmp_file):
    buf = bytearray(4096)
    ring.prep_read(fd, buf, 12345, user_data=1)
    c = one(ring)
    assert c.res == 4096
    assert bytes(buf) == os.pread(fd, 4096, 12345)


@pytest.mark.parametrize("offset,nbytes,buf_offset", [
    (0, 1, 0), (0, 100, 50), (777, 1000, 0), (65536, 4096, 4096), (1, 0, 10),
])
def test_read_offsets_nbytes_buf_offset(ring, fd, offset, nbytes, buf_offset):
    buf = bytearray(b"\xee" * 8192)
    ring.prep_read(fd, buf, offset, nbytes=nbytes, buf_offset=buf_offset)
    c = one(ring)
    expected = os.pread(fd, nbytes, offset)
    assert c.res == len(expected)
    assert bytes(buf[buf_offset:buf_offset + nbytes]) == expected
    # bytes outside the range are untouched
    assert buf[:buf_offset] == b"\xee" * buf_offset
    assert buf[buf_offset + nbytes:] == b"\xee" * (8192 - buf_offset - nbytes)


def test_read_past_eof_is_short(ring, fd, tmp_file):
    _, data = tmp_file
    size = len(data)
    buf = bytearray(4096)
    ring.prep_read(fd, buf, size - 100, user_data=1)
    ring.prep_read(fd, bytearray(10), size + 10, user_data=2)
    got = collect(ring, 2)
    assert got[1].res == 100 == len(os.pread(fd, 4096, size - 100))
    assert bytes(buf[:100]) == data[-100:]
    assert got[2].res == 0


def test_read_into_memoryview_and_mmap(ring, fd, tmp_file):
    _, data = tmp_file
    ba = bytearray(300)
    ring.prep_read(fd, memoryview(ba)[100:], 5, user_data=1)
    m = alloc_buffer(4096)
    ring.prep_read(fd, m, 9, nbytes=4096, user_data=2)
    got = collect(ring, 2)
    assert got[1].res == 200 and bytes(ba[100:]) == data[5:205]
    assert got[2].res == 4096 and m[:] == data[9:9 + 4096]
    m.close()


def test_read_at_file_position(ring, tmp_file):
    path, data = tmp_file
    f = os.open(path, os.O_RDONLY)
    try:
        os.lseek(f, 1000, os.SEEK_SET)
        buf = bytearray(50)
        ring.prep_read(f, buf, -1)
        assert one(ring).res == 50
        assert bytes(buf) == data[1000:1050]
    finally:
        os.close(f)


def test_write_then_pread(ring, tmp_path):
    path = tmp_path / "out.bin"
    f = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        payload = bytes(range(256)) * 8
        ring.prep_write(f, payload, 100, user_data=1)
        ring.prep_write(f, b"abcdefgh", 5000, nbytes=3, buf_offset=2, user_data=2)
        got = collect(ring, 2)
        assert got[1].res == len(payload)
        assert got[2].res == 3
        assert os.pread(f, len(payload), 100) == payload
        assert os.pread(f, 10, 5000) == b"cde"
        assert os.pread(f, 100, 0) == b"\0" * 100
    finally:
        os.close(f)


def test_failed_read_res_is_negative_errno(ring, tmp_path):
    d = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ring.prep_read(d, bytearray(10), 0)
        assert one(ring).res == -errno.EISDIR
    finally:
        os.close(d)


# ---- submit_read: one read, submitted and (when it completed inside) reaped --------

def test_submit_read_of_cached_data_returns_its_count_and_reaps_it(ring, fd, tmp_file):
    _, data = tmp_file
    buf = bytearray(b"\xee" * 6000)
    assert ring.submit_read(fd, buf, 777, nbytes=4096, buf_offset=100, user_data=5) == 4096
    assert bytes(buf[100:4196]) == data[777:777 + 4096]
    assert buf[:100] == b"\xee" * 100 and buf[4196:] == b"\xee" * (6000 - 4196)
    assert (ring.pending, ring.in_flight) == (0, 0)
    assert ring.completions() == []
    buf.extend(b"x")                    # reaped: the buffer is no longer held


def test_submit_read_failure_is_negative_errno(ring, tmp_path):
    closed = os.open(tmp_path, os.O_RDONLY)
    os.close(closed)                    # a bad fd fails as the kernel takes the request
    assert ring.submit_read(closed, bytearray(10)) == -errno.EBADF
    assert (ring.pending, ring.in_flight) == (0, 0)


def test_submit_read_not_done_inside_the_submit_stays_in_flight(ring):
    r, w = os.pipe()
    try:
        buf = bytearray(16)
        assert ring.submit_read(r, buf, -1, user_data=9) is None   # nothing to read yet
        assert ring.in_flight == 1
        with pytest.raises(BufferError):
            buf.extend(b"x")            # held until its completion is reaped
        os.write(w, b"hello")
        c = one(ring)
        assert (c.user_data, c.res, bytes(buf[:5])) == (9, 5, b"hello")
    finally:
        os.close(r)
        os.close(w)


def test_submit_read_behind_another_completion_is_left_for_reap(ring, fd, tmp_file):
    _, data = tmp_file
    ring.prep_nop(user_data=1)
    ring.submit()
    buf = bytearray(100)
    assert ring.submit_read(fd, buf, 10, user_data=2) is None
    got = collect(ring, 2)
    assert got[1].res == 0 and got[2].res == 100 and bytes(buf) == data[10:110]


@pytest.mark.parametrize("kwargs,exc", [
    (dict(buf=b"read-only"), TypeError),
    (dict(buf=bytearray(10), nbytes=11), ValueError),
    (dict(buf=bytearray(10), buf_offset=11), ValueError),
    (dict(buf=bytearray(10), offset=-2), ValueError),
    (dict(buf=bytearray(10), user_data=-1), ValueError),
])
def test_submit_read_bad_argument_prepares_nothing(ring, fd, kwargs, exc):
    with pytest.raises(exc):
        ring.submit_read(fd, **kwargs)
    assert (ring.pending, ring.in_flight) == (0, 0)


# ---- readv / writev ----------------------------------------------------------------

def test_readv_scatters_in_order(ring, fd, tmp_file):
    _, data = tmp_file
    bufs = [bytearray(10), bytearray(1), alloc_buffer(4096), bytearray(7)]
    ring.prep_readv(fd, bufs, 333)
    c = one(ring)
    total = 10 + 1 + 4096 + 7
    assert c.res == total
    assert b"".join(bytes(b) for b in bufs) == os.pread(fd, total, 333)


def test_readv_past_eof_is_short(ring, fd, tmp_file):
    _, data = tmp_file
    bufs = [bytearray(8), bytearray(8)]
    ring.prep_readv(fd, bufs, len(data) - 12)
    assert one(ring).res == 12
    assert bytes(bufs[0]) + bytes(bufs[1][:4]) == data[-12:]


def test_writev_gathers(ring, tmp_path):
    f = os.open(tmp_path / "w", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        parts = [b"hello ", bytearray(b"vectored "), memoryview(b"world")]
        ring.prep_writev(f, parts, 3)
        assert one(ring).res == 20
        assert os.pread(f, 100, 0) == b"\0\0\0hello vectored world"
    finally:
        os.close(f)


# ---- fixed buffers -----------------------------------------------------------------

def test_read_fixed_into_registered_buffers(ring, fd, tmp_file):
    bufs = [alloc_buffer(8192), alloc_buffer(4096)]
    ring.register_buffers(bufs)
    assert ring.registered_buffers == 2
    ring.prep_read_fixed(fd, 0, 100, 8192, user_data=1)
    ring.prep_read_fixed(fd, 1, 50000, 1000, 96, user_data=2)
    got = collect(ring, 2)
    assert got[1].res == 8192 and bufs[0][:] == os.pread(fd, 8192, 100)
    assert got[2].res == 1000 and bufs[1][96:1096] == os.pread(fd, 1000, 50000)
    ring.unregister_buffers()
    assert ring.registered_buffers == 0


def test_write_fixed_from_registered_buffer(ring, tmp_path):
    buf = alloc_buffer(4096)
    buf[:] = bytes(range(256)) * 16
    ring.register_buffers([buf])
    f = os.open(tmp_path / "wf", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        ring.prep_write_fixed(f, 0, 10, 300, 256)
        assert one(ring).res == 300
        assert os.pread(f, 1000, 0) == b"\0" * 10 + bytes(buf[256:556])
    finally:
        os.close(f)


def test_read_fixed_past_eof_is_short(ring, fd, tmp_file):
    _, data = tmp_file
    buf = bytearray(4096)
    ring.register_buffers([buf])
    ring.prep_read_fixed(fd, 0, len(data) - 5, 4096)
    assert one(ring).res == 5
    assert bytes(buf[:5]) == data[-5:]


def test_unregister_buffers_then_fixed_read_is_refused(ring, fd):
    ring.register_buffers([bytearray(64)])
    ring.unregister_buffers()
    with pytest.raises(ValueError, match="buf_index"):
        ring.prep_read_fixed(fd, 0, 0, 10)
    assert ring.pending == 0


def test_buffers_can_be_registered_again_after_unregister(ring, fd):
    ring.register_buffers([bytearray(64)])
    ring.unregister_buffers()
    b = bytearray(32)
    ring.register_buffers([b])
    ring.prep_read_fixed(fd, 0, 0, 32)
    assert one(ring).res == 32
    assert bytes(b) == os.pread(fd, 32, 0)


# ---- openat / close ----------------------------------------------------------------

def test_openat_returns_fd_that_reads_the_file(ring, tmp_file):
    path, data = tmp_file
    ring.prep_openat(path, user_data=3)
    c = one(ring)
    assert c.user_data == 3 and c.res >= 0
    try:
        assert os.pread(c.res, 100, 500) == data[500:600]
        assert os.get_inheritable(c.res) is False          # O_CLOEXEC is added
        assert os.fstat(c.res).st_ino == os.stat(path).st_ino
    finally:
        os.close(c.res)


def test_openat_relative_to_dir_fd(ring, tmp_file):
    path, data = tmp_file
    d = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        ring.prep_openat(os.path.basename(path), dir_fd=d)
        res = one(ring).res
        assert res >= 0
        assert os.pread(res, 10, 0) == data[:10]
        os.close(res)
    finally:
        os.close(d)


def test_openat_creates_with_mode(ring, tmp_path):
    path = tmp_path / "new.txt"
    ring.prep_openat(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    res = one(ring).res
    assert res >= 0
    os.close(res)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 & ~_umask()


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_openat_missing_path_is_enoent(ring, tmp_path):
    ring.prep_openat(tmp_path / "does-not-exist")
    assert one(ring).res == -errno.ENOENT


def _kernel_at_least(major, minor):
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return m is not None and (int(m.group(1)), int(m.group(2))) >= (major, minor)


def test_openat_into_fixed_file_slot_then_fixed_read(ring, tmp_file):
    if not _kernel_at_least(5, 15):
        pytest.skip("direct descriptors for openat need Linux 5.15")
    path, data = tmp_file
    ring.register_files([-1] * 4)
    assert ring.registered_files == 4
    ring.prep_openat(path, file_index=2)
    assert one(ring).res == 0
    buf = bytearray(256)
    ring.prep_read(2, buf, 4096, flags=SQE_FIXED_FILE)
    assert one(ring).res == 256
    assert bytes(buf) == data[4096:4096 + 256]


def test_openat_file_index_alloc_returns_slot(ring, tmp_file):
    if not _kernel_at_least(5, 19):
        pytest.skip("IORING_FILE_INDEX_ALLOC needs Linux 5.19")
    path, data = tmp_file
    ring.register_files([-1] * 4)
    ring.prep_openat(path, file_index=FILE_INDEX_ALLOC)
    slot = one(ring).res
    assert 0 <= slot < 4
    buf = bytearray(64)
    ring.prep_read(slot, buf, 10, flags=SQE_FIXED_FILE)
    assert one(ring).res == 64 and bytes(buf) == data[10:74]
    ring.prep_openat(path, file_index=FILE_INDEX_ALLOC)
    slot2 = one(ring).res
    assert 0 <= slot2 < 4 and slot2 != slot


def test_openat_file_index_without_table_is_refused(ring, tmp_file):
    path, _ = tmp_file
    with pytest.raises(ValueError, match="register_files"):
        ring.prep_openat(path, file_index=0)
    assert ring.pending == 0


def test_close_fixed_slot(ring, fd, tmp_file):
    _, data = tmp_file
    dup = os.dup(fd)
    try:
        ring.register_files([-1, dup])
    finally:
        os.close(dup)                       # the table keeps its own reference
    buf = bytearray(8)
    ring.prep_read(1, buf, 0, flags=SQE_FIXED_FILE)
    assert one(ring).res == 8 and bytes(buf) == data[:8]
    ring.prep_close(1, fixed=True, user_data=5)
    c = one(ring)
    if c.res == -errno.EINVAL and not _kernel_at_least(5, 15):
        pytest.skip("closing direct descriptors needs Linux 5.15")
    assert (c.user_data, c.res) == (5, 0)
    ring.prep_read(1, buf, 0, flags=SQE_FIXED_FILE)
    assert one(ring).res == -errno.EBADF


def test_close_plain_fd(ring, tmp_file):
    path, _ = tmp_file
    f = os.open(path, os.O_RDONLY)
    ring.prep_close(f)
    c = one(ring)
    if c.res < 0:
        os.close(f)
    assert c.res == 0
    with pytest.raises(OSError) as info:
        os.fstat(f)
    assert info.value.errno == errno.EBADF


def test_fixed_read_from_registered_regular_fd(ring, fd, tmp_file):
    _, data = tmp_file
    ring.register_files([-1, fd])
    buf = bytearray(100)
    ring.prep_read(1, buf, 200, flags=SQE_FIXED_FILE)
    assert one(ring).res == 100
    assert bytes(buf) == data[200:300]


def test_update_files_and_unregister_files(ring, fd, tmp_file):
    _, data = tmp_file
    ring.register_files([-1, -1, -1])
    assert ring.update_files(1, [fd]) == 1
    buf = bytearray(16)
    ring.prep_read(1, buf, 0, flags=SQE_FIXED_FILE)
    assert one(ring).res == 16 and bytes(buf) == data[:16]
    assert ring.update_files(1, [-1]) == 1
    ring.prep_read(1, buf, 0, flags=SQE_FIXED_FILE)
    assert one(ring).res == -errno.EBADF
    ring.unregister_files()
    assert ring.registered_files == 0
    with pytest.raises(ValueError):
        ring.prep_read(1, buf, 0, flags=SQE_FIXED_FILE)
    assert ring.pending == 0


def test_update_files_outside_table_is_refused(ring, fd):
    ring.register_files([-1, -1])
    with pytest.raises(ValueError, match="outside"):
        ring.update_files(1, [fd, fd])


# ---- statx / fsync -----------------------------------------------------------------

def test_statx_matches_os_stat(ring, tmp_file):
    path, data = tmp_file
    sx = Statx()
    ring.prep_statx(path, sx, user_data=9)
    c = one(ring)
    assert (c.user_data, c.res) == (9, 0)
    st = os.stat(path)
    assert sx.size == st.st_size == len(data)
    assert sx.mode == st.st_mode
    assert sx.ino == st.st_ino
    assert sx.nlink == st.st_nlink
    assert sx.uid == st.st_uid and sx.gid == st.st_gid
    assert sx.mtime_ns == st.st_mtime_ns


def test_statx_missing_path_is_enoent(ring, tmp_path):
    ring.prep_statx(tmp_path / "nope", Statx())
    assert one(ring).res == -errno.ENOENT


@pytest.mark.parametrize("datasync", [False, True])
def test_fsync(ring, tmp_path, datasync):
    f = os.open(tmp_path / "s", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(f, b"x" * 100)
        ring.prep_fsync(f, datasync, user_data=4)
        c = one(ring)
        assert (c.user_data, c.res) == (4, 0)
    finally:
        os.close(f)


# ---- timeout / cancel / link -------------------------------------------------------

def test_timeout_expires_with_etime(ring):
    t0 = time.monotonic()
    ring.prep_timeout(0.05, user_data=5)
    c = one(ring)
    assert (c.user_data, c.res) == (5, -errno.ETIME)
    assert time.monotonic() - t0 < 5


def test_timeout_with_count_completes_after_count_requests(ring):
    ring.prep_timeout(10.0, count=2, user_data=100)
    ring.submit()
    ring.prep_nop(user_data=1)
    ring.prep_nop(user_data=2)
    got = collect(ring, 3)
    assert got[100].res == 0
    assert got[1].res == got[2].res == 0


def test_cancel_a_pending_timeout(ring):
    ring.prep_timeout(10.0, user_data=77)
    ring.submit()
    ring.prep_cancel(77, user_data=78)
    t0 = time.monotonic()
    got = collect(ring, 2)
    assert got[77].res == -errno.ECANCELED
    assert got[78].res == 0
    assert time.monotonic() - t0 < 5


def test_cancel_unknown_user_data_is_enoent(ring):
    ring.prep_cancel(123456, user_data=1)
    assert one(ring).res == -errno.ENOENT


def test_cancel_picks_the_oldest_of_equal_user_data(ring, pipe):
    ring.prep_nops([0, 1, 2, 3])                 # cycle slots through the free list
    collect(ring, 4)
    buf = bytearray(4)
    ring.prep_read(pipe[0], buf, -1, user_data=7)        # older
    ring.prep_timeout(10.0, user_data=7)                 # newer
    ring.submit()
    ring.prep_cancel(7, user_data=1)
    got = collect(ring, 2)
    assert got[1].res == 0 and got[7].res == -errno.ECANCELED
    buf.extend(b"x")          # BufferError unless the older read was the one cancelled


def test_failing_linked_read_cancels_the_next(ring, tmp_path):
    d = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ring.prep_read(d, bytearray(8), 0, user_data=1, flags=SQE_IO_LINK)
        ring.prep_nop(user_data=2)
        got = collect(ring, 2)
        assert got[1].res == -errno.EISDIR
        assert got[2].res == -errno.ECANCELED
    finally:
        os.close(d)


def test_successful_link_runs_in_order(ring, tmp_path):
    f = os.open(tmp_path / "l", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        buf = bytearray(5)
        ring.prep_write(f, b"hello", 0, user_data=1, flags=SQE_IO_LINK)
        ring.prep_read(f, buf, 0, user_data=2)
        got = collect(ring, 2)
        assert got[1].res == 5 and got[2].res == 5
        assert bytes(buf) == b"hello"
    finally:
        os.close(f)


# ---- probe -------------------------------------------------------------------------

def test_probe_contains_basic_ops(ring):
    ops = ring.probe()
    assert isinstance(ops, frozenset)
    assert {Op.NOP, Op.READ, Op.READ_FIXED} <= ops


def test_op_numbers_match_kernel_abi():
    assert Op.NOP == 0
    assert Op.READ_FIXED == 4
    assert Op.READ == 22
    assert Op.OPENAT == 18 and Op.CLOSE == 19 and Op.STATX == 21


# ---- batch reads -------------------------------------------------------------------

OFFSETS = [0, 4096, 100, 999_999, 500_000, 12345]
LENGTHS = [4096, 1, 300, 1000, 65536, 0]


def _as(typecode, values):
    return array.array(typecode, values)


def _check_packed(buf, fd_of, offsets, lengths, got):
    pos = 0
    for i, (off, n) in enumerate(zip(offsets, lengths)):
        expected = os.pread(fd_of(i), n, off)
        assert got[i].res == len(expected), (i, got[i])
        assert bytes(buf[pos:pos + len(expected)]) == expected, i
        pos += n


@pytest.mark.parametrize("kind", ["list", "q", "Q", "i", "I", "l", "memoryview"])
def test_prep_reads_one_fd_packed(ring, fd, kind):
    if kind == "list":
        offs, lens = list(OFFSETS), list(LENGTHS)
    elif kind == "memoryview":
        offs, lens = memoryview(_as("q", OFFSETS)), memoryview(_as("i", LENGTHS))
    else:
        offs, lens = _as(kind, OFFSETS), _as(kind, LENGTHS)
    buf = bytearray(sum(LENGTHS))
    assert ring.prep_reads(fd, buf, offs, lens) == len(OFFSETS)
    got = collect(ring, len(OFFSETS))
    assert sorted(got) == list(range(len(OFFSETS)))     # user_data=None numbers 0..n-1
    _check_packed(buf, lambda i: fd, OFFSETS, LENGTHS, got)


def test_prep_reads_short_read_past_eof(ring, fd, tmp_file):
    _, data = tmp_file
    size = len(data)
    buf = bytearray(200)
    ring.prep_reads(fd, buf, [size - 50, size + 1], [100, 100])
    got = collect(ring, 2)
    assert got[0].res == 50 and bytes(buf[:50]) == data[-50:]
    assert got[1].res == 0


@pytest.mark.parametrize("typecode", ["q", "i", "I", "l"])
def test_prep_reads_array_of_fds(ring, tmp_file, tmp_path, typecode):
    path, data = tmp_file
    other = tmp_path / "other.bin"
    other_data = bytes(reversed(data[:100_000]))
    other.write_bytes(other_data)
    fa = os.open(path, os.O_RDONLY)
    fb = os.open(other, os.O_RDONLY)
    try:
        fds = [fa, fb, fa, fb]
        offs = [0, 0, 5000, 99_000]
        lens = [100, 100, 2000, 5000]
        buf = bytearray(sum(lens))
        n = ring.prep_reads(array.array(typecode, fds), buf, offs, lens)
        assert n == 4
        got = collect(ring, 4)
        _check_packed(buf, lambda i: fds[i], offs, lens, got)
        assert got[3].res == 1000           # short: the other file has 100_000 bytes
    finally:
        os.close(fa)
        os.close(fb)


def test_prep_reads_explicit_buffer_offsets_and_user_data(ring, fd):
    buf = bytearray(b"\x55" * 10000)
    offs = _as("Q", [10, 20, 30])
    lens = _as("I", [100, 200, 300])
    boffs = _as("q", [9000, 0, 5000])
    uds = _as("Q", [2**64 - 1, 0, 2**63])
    assert ring.prep_reads(fd, buf, offs, lens, boffs, uds) == 3
    got = collect(ring, 3)
    assert set(got) == {2**64 - 1, 0, 2**63}
    for ud, off, n, bo in zip(uds, offs, lens, boffs):
        assert got[ud].res == n
        assert bytes(buf[bo:bo + n]) == os.pread(fd, n, off)
    assert buf[200:5000] == b"\x55" * 4800
    assert buf[5300:9000] == b"\x55" * 3700


def test_prep_reads_user_data_list(ring, fd):
    buf = bytearray(30)
    ring.prep_reads(fd, buf, [0, 10, 20], [10, 10, 10], None, [7, 8, 9])
    got = collect(ring, 3)
    assert sorted(got) == [7, 8, 9]
    assert bytes(buf) == os.pread(fd, 30, 0)


def test_prep_reads_into_mmap_large_batch(ring, fd, tmp_file):
    _, data = tmp_file
    n = 200                                   # more than the CQ holds: prepared in parts
    offs = [i * 4096 for i in range(n)]
    lens = [4096] * n
    buf = alloc_buffer(n * 4096)
    done = 0
    results = {}
    while done < n:
        k = ring.prep_reads(fd, buf, offs[done:], lens[done:], [o for o in offs[done:]],
                            list(range(done, n)))
        assert k > 0
        results.update(collect(ring, k))
        done += k
    assert sorted(results) == list(range(n))
    assert all(c.res == 4096 for c in results.values())
    assert buf[:] == data[:n * 4096]


def test_prep_read_fixed_batch(ring, fd, tmp_file):
    _, data = tmp_file
    bufs = [bytearray(4096), bytearray(8192)]
    ring.register_buffers(bufs)
    offs = _as("q", [0, 1000, 50_000, 70_000])
    lens = _as("i", [4096, 100, 200, 300])
    idx = _as("I", [0, 1, 1, 1])
    boffs = _as("l", [0, 0, 100, 1000])
    assert ring.prep_read_fixed_batch(fd, idx, offs, lens, boffs) == 4
    got = collect(ring, 4)
    assert sorted(got) == [0, 1, 2, 3]
    assert all(got[i].res == lens[i] for i in range(4))
    assert bytes(bufs[0]) == data[:4096]
    assert bytes(bufs[1][:100]) == data[1000:1100]
    assert bytes(bufs[1][100:300]) == data[50_000:50_200]
    assert bytes(bufs[1][1000:1300]) == data[70_000:70_300]


def test_prep_read_fixed_batch_scalar_index_defaults_to_buffer_start(ring, fd, tmp_file):
    _, data = tmp_file
    bufs = [bytearray(64), bytearray(64)]
    ring.register_buffers(bufs)
    # buffer_offsets=None: each fixed read goes to the start of its buffer
    assert ring.prep_read_fixed_batch(fd, 1, [300], [64], user_data=[42]) == 1
    c = one(ring)
    assert (c.user_data, c.res) == (42, 64)
    assert bytes(bufs[1]) == data[300:364]
    assert bytes(bufs[0]) == b"\0" * 64


# ---- nops, reap --------------------------------------------------------------------

@pytest.mark.parametrize("res_code,flags_code", [("i", None), ("i", "I"), ("q", "Q")])
def test_prep_nops_and_reap_each_user_data_once(ring, res_code, flags_code):
    uds = array.array("Q", [3 * i + 1 for i in range(50)] + [2**64 - 1])
    assert ring.prep_nops(uds) == len(uds)
    assert ring.pending == len(uds)
    out_ud = array.array("Q", [0] * 64)
    out_res = array.array(res_code, [-1] * 64)
    out_flags = array.array(flags_code, [9] * 64) if flags_code else None
    seen = []
    deadline = time.monotonic() + 10
    while len(seen) < len(uds):
        assert time.monotonic() < deadline
        n = ring.reap(out_ud, out_res, out_flags, min_complete=1, timeout=5)
        seen.extend(out_ud[:n])
        assert list(out_res[:n]) == [0] * n
        if out_flags is not None:
            assert list(out_flags[:n]) == [0] * n
    assert sorted(seen) == sorted(uds)
    assert ring.in_flight == 0 and ring.pending == 0


def test_prep_nops_from_list_and_memoryview(ring):
    assert ring.prep_nops([5, 6, 7]) == 3
    assert ring.prep_nops(memoryview(array.array("q", [8, 9]))) == 2
    assert sorted(collect(ring, 5)) == [5, 6, 7, 8, 9]


def test_reap_returns_zero_when_nothing_done(ring):
    out_ud, out_res = array.array("Q", [0] * 4), array.array("i", [0] * 4)
    assert ring.reap(out_ud, out_res) == 0


def test_reap_respects_array_length(ring):
    ring.prep_nops(array.array("Q", range(10)))
    ring.submit_and_wait(10, timeout=5)
    out_ud, out_res = array.array("Q", [0] * 3), array.array("i", [0] * 3)
    first = ring.reap(out_ud, out_res)
    assert first == 3
    seen = list(out_ud)
    rest = [c.user_data for c in ring.completions()]
    assert sorted(seen + rest) == list(range(10))


# ---- submit_and_reap -----------------------------------------------------------------

def test_submit_and_reap_round_trips_one_nop_at_a_time(ring):
    uds, out_ud, out_res = array.array("Q", [0]), array.array("Q", [9]), array.array("i", [9])
    for k in range(1000):
        uds[0] = k
        assert ring.prep_nops(uds) == 1
        assert ring.submit_and_reap(out_ud, out_res, 1) == 1
        assert (out_ud[0], out_res[0]) == (k, 0)
    assert ring.in_flight == 0 and ring.pending == 0


def test_submit_and_reap_reads_cached_data_and_releases_the_buffer(ring, fd, tmp_file):
    _, data = tmp_file
    buf = bytearray(4096)
    ring.prep_read(fd, buf, 8192, user_data=5)
    out_ud, out_res, out_flags = (array.array("Q", [0] * 2), array.array("i", [0] * 2),
                                  array.array("I", [7] * 2))
    assert ring.submit_and_reap(out_ud, out_res, 1, out_flags) == 1
    assert (out_ud[0], out_res[0], out_flags[0]) == (5, 4096, 0)
    assert bytes(buf) == data[8192:12288]
    buf.extend(b"x")                   # the read's export of buf was released


def test_submit_and_reap_waits_for_what_the_submit_did_not_complete(ring):
    ring.prep_timeout(0.05, user_data=3)
    ring.prep_nop(user_data=4)
    out_ud, out_res = array.array("Q", [0] * 4), array.array("i", [0] * 4)
    assert ring.submit_and_reap(out_ud, out_res, 2) == 2
    assert dict(zip(out_ud[:2], out_res[:2])) == {3: -errno.ETIME, 4: 0}


def test_submit_and_reap_releases_the_gil_while_it_waits(ring):
    # A thread counting beside the wait advances: the wait does not hold the GIL.
    ticks, stop = [0], threading.Event()

    def count():
        while not stop.is_set():
            ticks[0] += 1

    ring.prep_timeout(0.3, user_data=1)
    t = threading.Thread(target=count)
    t.start()
    try:
        before = ticks[0]
        assert ring.submit_and_reap(array.array("Q", [0]), array.array("i", [0]), 1) == 1
        during = ticks[0] - before
    finally:
        stop.set()
        t.join()
    assert during > 1000


def test_submit_and_reap_into_exported_arrays(ring):
    # Arrays that are not array.array are exported, not borrowed: the same results.
    out_ud, out_res = array.array("Q", [0] * 4), array.array("q", [9] * 4)
    ring.prep_nops(array.array("Q", [7, 8]))
    assert ring.submit_and_reap(memoryview(out_ud), memoryview(out_res), 2) == 2
    assert sorted(out_ud[:2]) == [7, 8] and list(out_res[:2]) == [0, 0]


def test_submit_and_reap_with_zero_min_complete_never_waits(ring):
    ring.prep_timeout(10.0, user_data=1)
    out_ud, out_res = array.array("Q", [0]), array.array("i", [0])
    t0 = time.monotonic()
    assert ring.submit_and_reap(out_ud, out_res, 0) == 0
    assert time.monotonic() - t0 < 5
    assert ring.in_flight == 1 and ring.pending == 0     # submitted, not waited for


def test_submit_and_reap_on_an_sqpoll_ring():
    try:
        r = Ring(8, sqpoll=True)
    except OSError as exc:
        pytest.skip(f"SQPOLL rings are refused here: {exc}")
    with r:
        out_ud, out_res = array.array("Q", [0]), array.array("i", [0])
        for k in range(50):
            r.prep_nop(user_data=k)
            assert r.submit_and_reap(out_ud, out_res, 1) == 1
            assert (out_ud[0], out_res[0]) == (k, 0)


@pytest.mark.parametrize("args,exc,match", [
    ((array.array("Q", [0]), array.array("i", [0]), 2), ValueError, "exceeds the output"),
    ((array.array("Q", [0] * 4), array.array("i", [0] * 4), 2), ValueError,
     "only 1 requests are outstanding"),
    ((array.array("I", [0]), array.array("i", [0]), 1), TypeError, "user_data_out"),
    ((array.array("Q", [0]), array.array("i", [0]), -1), OverflowError, "min_complete"),
    ((array.array("Q", [0]), array.array("i", [0]), 1.0), TypeError, "min_complete"),
])
def test_submit_and_reap_refuses_bad_arguments_before_submitting(ring, args, exc, match):
    ring.prep_nop(user_data=1)
    with pytest.raises(exc, match=match):
        ring.submit_and_reap(*args)
    assert ring.pending == 1           # nothing was submitted
    assert ring.submit_and_reap(array.array("Q", [0]), array.array("i", [0]), 1) == 1


def test_completions_is_non_blocking(ring):
    assert ring.completions() == []
    ring.prep_timeout(10.0)
    ring.submit()
    t0 = time.monotonic()
    assert ring.completions() == []
    assert time.monotonic() - t0 < 5


def test_completions_after_submit_and_wait(ring):
    ring.prep_nop(user_data=11)
    assert ring.submit_and_wait(1, timeout=5) == 1
    (c,) = ring.completions()
    assert (c.user_data, c.res) == (11, 0)


def test_wait_timeout_returns_empty(ring):
    ring.prep_timeout(10.0, user_data=1)
    t0 = time.monotonic()
    assert ring.wait(timeout=0.2) == []
    assert time.monotonic() - t0 < 5
    assert ring.in_flight == 1


def test_submit_and_wait_timeout_returns(ring):
    ring.prep_timeout(10.0, user_data=1)
    t0 = time.monotonic()
    assert ring.submit_and_wait(1, timeout=0.2) == 1
    assert time.monotonic() - t0 < 5
    assert ring.completions() == []


def test_wait_zero_timeout_does_not_block(ring):
    ring.prep_timeout(10.0)
    t0 = time.monotonic()
    assert ring.wait(timeout=0) == []
    assert time.monotonic() - t0 < 5


def test_reap_timeout_returns_zero(ring):
    ring.prep_timeout(10.0)
    out_ud, out_res = array.array("Q", [0]), array.array("i", [0])
    t0 = time.monotonic()
    assert ring.reap(out_ud, out_res, min_complete=1, timeout=0.2) == 0
    assert time.monotonic() - t0 < 5


def test_pending_and_in_flight(ring):
    assert (ring.pending, ring.in_flight) == (0, 0)
    ring.prep_nop(user_data=1)
    ring.prep_timeout(10.0, user_data=2)
    assert (ring.pending, ring.in_flight) == (2, 0)
    assert ring.submit() == 2
    assert ring.pending == 0
    assert ring.in_flight in (1, 2)              # the NOP may or may not be reaped yet
    got = collect(ring, 1)
    assert 1 in got
    assert (ring.pending, ring.in_flight) == (0, 1)
    ring.prep_cancel(2, user_data=3)
    assert (ring.pending, ring.in_flight) == (1, 1)
    collect(ring, 2)
    assert (ring.pending, ring.in_flight) == (0, 0)


def test_out_of_order_completion_maps_user_data(ring):
    ring.prep_timeout(0.3, user_data=1)
    ring.prep_nop(user_data=2)
    order = []
    deadline = time.monotonic() + 10
    results = {}
    while len(order) < 2:
        assert time.monotonic() < deadline
        for c in ring.wait(timeout=5):
            order.append(c.user_data)
            results[c.user_data] = c.res
    assert order == [2, 1]
    assert results == {1: -errno.ETIME, 2: 0}


def test_ring_properties(ring):
    assert ring.sq_entries == 64
    assert ring.cq_entries == 128
    assert ring.fileno() >= 0
    assert ring.features & vyre_uring.FEAT_NODROP
    assert ring.closed is False
    assert "Ring fd=" in repr(ring)


def test_cq_entries_bounds_outstanding(fd):
    with Ring(4, cq_entries=16) as r:
        assert r.sq_entries == 4 and r.cq_entries == 16
        assert r.prep_nops(array.array("Q", range(40))) == 16
        assert sorted(collect(r, 16)) == list(range(16))


def test_register_eventfd_signals_completions_and_refuses_a_second(ring):
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        ring.register_eventfd(efd)
        with pytest.raises(vyre_uring.UringSyscallError, match="EBUSY"):
            ring.register_eventfd(efd)
        ring.prep_nop(user_data=7)
        ring.submit()
        assert os.eventfd_read(efd) >= 1
        assert [c.user_data for c in ring.completions()] == [7]
        ring.unregister_eventfd()
        ring.prep_nop(user_data=8)
        ring.submit()
        assert [c.user_data for c in ring.wait(timeout=5)] == [8]
        with pytest.raises(BlockingIOError):
            os.eventfd_read(efd)        # no longer signalled
    finally:
        os.close(efd)


def test_register_eventfd_refuses_what_is_not_an_eventfd(ring, fd):
    with pytest.raises(vyre_uring.UringSyscallError, match="must be an open eventfd"):
        ring.register_eventfd(fd)
    with pytest.raises(OverflowError):
        ring.register_eventfd(-1)
