"""Memory handed to the kernel stays alive and pinned until its request completes."""
import ctypes
import gc
import mmap
import os
import time
import warnings

import pytest

from vyre_uring import Ring, RingClosedError, alloc_buffer


def wait_one(ring, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        got = ring.wait(timeout=max(0.0, deadline - time.monotonic()))
        if got:
            assert len(got) == 1, got
            return got[0]
        assert time.monotonic() < deadline, "no completion arrived"


def read_in_flight(ring, pipe, buf, **kw):
    """A read of the pipe's empty read end: it stays in flight until data is written."""
    rfd, _ = pipe
    ring.prep_read(rfd, buf, -1, **kw)
    assert ring.submit() == 1
    assert ring.completions() == []
    assert ring.in_flight == 1


# ---- buffers held until completion -------------------------------------------------

def test_buffer_cannot_be_resized_while_read_in_flight(ring, pipe):
    buf = bytearray(16)
    read_in_flight(ring, pipe, buf, user_data=1)
    with pytest.raises(BufferError):
        buf.extend(b"x")
    with pytest.raises(BufferError):
        del buf[:4]
    os.write(pipe[1], b"hello")
    c = wait_one(ring)
    assert (c.user_data, c.res) == (1, 5)
    assert bytes(buf[:5]) == b"hello"
    buf.extend(b"x")                              # released with the completion
    assert len(buf) == 17


def test_buffer_released_after_reap_into_arrays(ring, pipe):
    import array
    buf = bytearray(8)
    read_in_flight(ring, pipe, buf, user_data=4)
    os.write(pipe[1], b"abc")
    ud, res = array.array("Q", [0]), array.array("i", [0])
    assert ring.reap(ud, res, min_complete=1, timeout=10) == 1
    assert (ud[0], res[0]) == (4, 3)
    buf.extend(b"x")


def test_dropped_buffer_survives_until_completion(ring, pipe):
    buf = bytearray(b"\xff" * 32)
    read_in_flight(ring, pipe, buf, user_data=2)
    del buf
    gc.collect()
    filler = [bytearray(b"\xaa" * 32) for _ in range(1000)]   # reuse freed memory, if any
    os.write(pipe[1], b"x" * 20)
    c = wait_one(ring)
    assert (c.user_data, c.res) == (2, 20)
    assert all(f == b"\xaa" * 32 for f in filler)


def test_dropped_memoryview_slice_keeps_base_alive(ring, pipe):
    base = bytearray(64)
    view = memoryview(base)[16:32]
    read_in_flight(ring, pipe, view)
    with pytest.raises(BufferError):
        base.extend(b"x")
    del view
    gc.collect()
    with pytest.raises(BufferError):              # the ring still holds its own export
        base.extend(b"x")
    os.write(pipe[1], b"0123456789")
    assert wait_one(ring).res == 10
    assert bytes(base[16:26]) == b"0123456789"
    base.extend(b"x")


def test_readv_buffers_held_until_completion(ring, pipe):
    a, b = bytearray(2), bytearray(8)
    ring.prep_readv(pipe[0], [a, b], -1)
    ring.submit()
    for buf in (a, b):
        with pytest.raises(BufferError):
            buf.extend(b"x")
    del a
    gc.collect()
    os.write(pipe[1], b"abcdef")
    assert wait_one(ring).res == 6
    assert bytes(b[:4]) == b"cdef"
    b.extend(b"x")


def test_batch_buffer_held_until_last_completion(ring, pipe, fd):
    buf = bytearray(8)
    # range 0 from the regular file completes at once; range 1 waits on the pipe
    # (a pipe ignores the offset)
    assert ring.prep_reads([fd, pipe[0]], buf, [0, 0], [4, 4]) == 2
    ring.submit()
    c = wait_one(ring)
    assert (c.user_data, c.res) == (0, 4)
    with pytest.raises(BufferError):
        buf.extend(b"x")
    os.write(pipe[1], b"WXYZ")
    c = wait_one(ring)
    assert (c.user_data, c.res) == (1, 4)
    assert bytes(buf[4:]) == b"WXYZ"
    buf.extend(b"x")


# ---- registered buffers ------------------------------------------------------------

def test_registered_buffer_cannot_be_resized(ring):
    buf = bytearray(64)
    ring.register_buffers([buf])
    with pytest.raises(BufferError):
        buf.extend(b"x")
    ring.unregister_buffers()
    buf.extend(b"x")


def test_unregister_buffers_with_fixed_read_in_flight(ring, pipe):
    buf = bytearray(32)
    ring.register_buffers([buf])
    ring.prep_read_fixed(pipe[0], 0, -1, 32, user_data=3)
    assert ring.submit() == 1
    assert ring.completions() == []
    ring.unregister_buffers()
    assert ring.registered_buffers == 0
    with pytest.raises(BufferError):              # the in-flight request keeps it
        buf.extend(b"x")
    os.write(pipe[1], b"fixed!")
    c = wait_one(ring)
    assert (c.user_data, c.res) == (3, 6)
    assert bytes(buf[:6]) == b"fixed!"
    buf.extend(b"x")                              # now it is free


def test_dropped_registered_buffer_survives_fixed_read(ring, pipe):
    buf = bytearray(32)
    ring.register_buffers([buf])
    ring.prep_read_fixed(pipe[0], 0, -1, 32, user_data=3)
    ring.submit()
    ring.unregister_buffers()
    del buf
    gc.collect()
    os.write(pipe[1], b"y" * 9)
    c = wait_one(ring)
    assert (c.user_data, c.res) == (3, 9)


def test_alloc_buffer_is_page_aligned_and_rounded():
    for n in (1, 4096, 4097, 1 << 20):
        m = alloc_buffer(n)
        try:
            assert len(m) % mmap.PAGESIZE == 0 and len(m) >= n
            addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
            assert addr % mmap.PAGESIZE == 0
            assert m[:16] == b"\0" * 16
        finally:
            # the ctypes export must be gone before close
            gc.collect()
            m.close()


@pytest.mark.parametrize("n", [0, -1])
def test_alloc_buffer_refuses_non_positive(n):
    with pytest.raises(ValueError):
        alloc_buffer(n)


def test_registered_mmap_cannot_be_closed(ring):
    m = alloc_buffer(8192)
    ring.register_buffers([m])
    with pytest.raises(BufferError):
        m.close()
    ring.unregister_buffers()
    m.close()


def test_mmap_cannot_be_closed_with_read_in_flight(ring, pipe):
    m = alloc_buffer(4096)
    read_in_flight(ring, pipe, m)
    with pytest.raises(BufferError):
        m.close()
    os.write(pipe[1], b"m")
    assert wait_one(ring).res == 1
    assert m[:1] == b"m"
    m.close()


def test_registered_buffers_released_by_close(pipe):
    buf = bytearray(16)
    r = Ring(8)
    r.register_buffers([buf])
    r.close()
    buf.extend(b"x")


# ---- paths -------------------------------------------------------------------------

def test_openat_path_held_by_ring(ring, tmp_file):
    path, data = tmp_file
    dirname, name = os.path.split(path)
    runtime_path = "".join([dirname, "/", name[:2], name[2:]])   # a fresh str object
    ring.prep_openat(runtime_path, user_data=8)
    del runtime_path
    gc.collect()
    c = wait_one(ring)
    assert c.user_data == 8 and c.res >= 0, c
    try:
        assert os.pread(c.res, 32, 0) == data[:32]
    finally:
        os.close(c.res)


def test_statx_buffer_held_by_ring(ring, tmp_file):
    from vyre_uring import Statx
    import weakref
    path, data = tmp_file
    sx = Statx()
    ring.prep_statx(os.fsencode(path) + b"", sx)
    try:
        ref = weakref.ref(sx)
    except TypeError:
        ref = None
    del sx
    gc.collect()
    if ref is not None:
        assert ref() is not None
    assert wait_one(ring).res == 0


# ---- close -------------------------------------------------------------------------

def test_close_cancels_and_drains_read_in_flight(pipe):
    r = Ring(8)
    buf = bytearray(16)
    read_in_flight(r, pipe, buf)
    t0 = time.monotonic()
    r.close()
    assert time.monotonic() - t0 < 5
    assert r.closed is True
    buf.extend(b"x")                              # released after the drain
    r.close()                                     # a no-op the second time
    assert r.closed is True
    with pytest.raises(RingClosedError):
        r.prep_nop()


def test_close_with_many_requests_in_flight(pipe):
    r = Ring(16)
    bufs = [bytearray(4) for _ in range(10)]
    for b in bufs:
        r.prep_read(pipe[0], b, -1)
    r.prep_timeout(30.0)
    r.submit()
    t0 = time.monotonic()
    r.close()
    assert time.monotonic() - t0 < 5
    for b in bufs:
        b.extend(b"x")


def test_context_manager_closes():
    with Ring(8) as r:
        assert r.closed is False
        r.prep_nop()
    assert r.closed is True


def test_context_manager_closes_on_exception(pipe):
    buf = bytearray(8)
    with pytest.raises(KeyError):
        with Ring(8) as r:
            read_in_flight(r, pipe, buf)
            raise KeyError("boom")
    assert r.closed is True
    buf.extend(b"x")


def test_unclosed_ring_garbage_collected_warns():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = Ring(8)
        r.prep_nop()
        del r
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) and "unclosed" in str(w.message)
               for w in caught), [str(w.message) for w in caught]


def test_unclosed_ring_with_read_in_flight_collected_safely(pipe):
    buf = bytearray(16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        r = Ring(8)
        read_in_flight(r, pipe, buf)
        del r
        gc.collect()
    buf.extend(b"x")                              # cancelled, drained and released


def test_closed_ring_collected_without_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = Ring(8)
        r.close()
        del r
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_close_discards_unsubmitted_and_releases_buffers(fd):
    r = Ring(8)
    buf = bytearray(16)
    r.prep_read(fd, buf, user_data=1)
    r.prep_reads(fd, buf, [0, 4], [4, 4])
    assert r.pending == 3
    with pytest.raises(BufferError):
        buf.extend(b"x")
    r.close()
    assert r.pending == 0 and r.in_flight == 0
    buf.extend(b"x")
    assert bytes(buf) == b"\0" * 16 + b"x"         # the discarded reads never ran


def test_close_discards_unsubmitted_path(tmp_path):
    r = Ring(8)
    target = tmp_path / "must-not-exist"
    r.prep_openat(str(target), os.O_WRONLY | os.O_CREAT)
    r.close()
    assert not target.exists()
