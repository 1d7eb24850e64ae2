"""Regressions of the engine's hardening: linked chains are never split by the
automatic submission a prep call makes when the SQ is full; a batch's argument
arrays are copied before the GIL is first released, so another thread rewriting
them cannot smuggle unchecked values into SQEs; a cancel prepared for a request
that has since completed never hits the request that reused its slot."""
import array
import errno
import os
import threading
import time

import pytest

import vyre_uring
from vyre_uring import SQE_IO_HARDLINK, SQE_IO_LINK, Ring, RingFullError

try:
    import numpy
except ImportError:
    numpy = None

MODES = {"plain": {}, "sqpoll": {"sqpoll": True}}


@pytest.fixture(params=list(MODES))
def ring8(request):
    try:
        r = Ring(8, **MODES[request.param])
    except vyre_uring.UringSyscallError as exc:
        if exc.errno in (errno.EINVAL, errno.EPERM):
            pytest.skip(f"this kernel or process cannot run {request.param}: {exc}")
        raise
    yield r
    r.close()


def _by_user_data(ring, n):
    got = {}
    deadline = time.monotonic() + 10
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {len(got)} of {n} completions came"
        for c in ring.wait(1, timeout=1):
            assert c.user_data not in got
            got[c.user_data] = c.res
    return got


@pytest.fixture
def write_only_fd():
    f = os.open("/dev/null", os.O_WRONLY)       # a read on it fails with EBADF
    yield f
    os.close(f)


# ---- 1. linked chains -----------------------------------------------------------------

@pytest.mark.parametrize("link", [SQE_IO_LINK, SQE_IO_HARDLINK], ids=["link", "hardlink"])
def test_chain_is_not_cut_when_its_next_prep_finds_the_sq_full(ring8, write_only_fd, link):
    for i in range(7):
        ring8.prep_nop(user_data=i)
    ring8.prep_read(write_only_fd, bytearray(8), user_data=100, flags=link)   # fills the SQ
    ring8.prep_nop(user_data=101)       # needs room: only the 7 NOPs may go first
    got = _by_user_data(ring8, 9)
    assert got[100] == -errno.EBADF
    # A hard link runs its next request whatever the first one returned.
    assert got[101] == (0 if link == SQE_IO_HARDLINK else -errno.ECANCELED)
    assert all(got[i] == 0 for i in range(7))


def test_linked_write_then_read_across_a_full_sq(ring8, tmp_path):
    path = tmp_path / "linked.bin"
    path.write_bytes(bytes(1 << 20))
    fd = os.open(path, os.O_RDWR)
    try:
        for it in range(40):
            data = bytes([it + 1]) * (1 << 20)
            out = bytearray(1 << 20)
            for i in range(7):
                ring8.prep_nop(user_data=i)
            ring8.prep_write(fd, data, 0, user_data=100, flags=SQE_IO_LINK)
            ring8.prep_read(fd, out, 0, user_data=101)
            got = _by_user_data(ring8, 9)
            assert (got[100], got[101]) == (1 << 20, 1 << 20)
            assert out == data, f"iteration {it}: the read ran before the linked write"
    finally:
        os.close(fd)


def test_batch_chain_stays_whole_when_the_sq_fills_mid_batch(ring8, fd, write_only_fd):
    for i in range(6):
        ring8.prep_nop(user_data=i)
    # Four linked reads, the first failing: the 3rd and 4th do not fit before the SQ
    # is full, and the NOP after them ends the chain. All must be cancelled.
    assert ring8.prep_reads([write_only_fd, fd, fd, fd], bytearray(64), [0, 0, 0, 0],
                            [16, 16, 16, 16], user_data=[100, 101, 102, 103],
                            flags=SQE_IO_LINK) == 4
    ring8.prep_nop(user_data=104)
    got = _by_user_data(ring8, 11)
    assert got[100] == -errno.EBADF
    assert [got[u] for u in (101, 102, 103, 104)] == [-errno.ECANCELED] * 4


def test_chain_that_fills_the_whole_sq_cannot_be_extended(ring8):
    for i in range(8):
        ring8.prep_nop(user_data=i, flags=SQE_IO_LINK)
    buf = bytearray(4)
    with pytest.raises(RingFullError, match=r"chain of 8 .*8 entries.*larger Ring or a "
                                            r"shorter chain"):
        ring8.prep_read(0, buf)
    buf.extend(b"x")                               # the refused prep let go of buf
    with pytest.raises(RingFullError, match="chain"):
        ring8.prep_nop(user_data=8)
    assert ring8.pending == 8
    # submit() hands the open chain over whole; the kernel ends it there.
    assert sorted(_by_user_data(ring8, 8).items()) == [(i, 0) for i in range(8)]
    ring8.prep_nop(user_data=9)
    assert [(c.user_data, c.res) for c in ring8.wait(1, timeout=5)] == [(9, 0)]


def test_batch_whose_chain_cannot_fit_is_refused_before_anything_is_prepared(ring8, fd):
    with pytest.raises(RingFullError, match="chain of 9"):
        ring8.prep_nops(array.array("Q", range(9)), flags=SQE_IO_LINK)
    assert ring8.pending == 0
    ring8.prep_nop(user_data=50, flags=SQE_IO_LINK)
    ring8.prep_nop(user_data=51, flags=SQE_IO_HARDLINK)
    with pytest.raises(RingFullError, match="chain of 9"):
        ring8.prep_reads(fd, bytearray(70), list(range(7)), [10] * 7, flags=SQE_IO_LINK)
    with pytest.raises(RingFullError, match="chain of 9"):
        ring8.prep_close_batch([0] * 7, sqe_flags=SQE_IO_LINK)
    assert ring8.pending == 2
    # A batch that fits whole, with the open chain, is accepted; so is one without links.
    assert ring8.prep_nops([52, 53, 54], flags=SQE_IO_LINK) == 3
    assert ring8.prep_nops([55, 56, 57, 58]) == 4
    assert sorted(_by_user_data(ring8, 9).items()) == [(u, 0) for u in range(50, 59)]


def test_discarding_unsubmitted_requests_forgets_the_open_chain():
    r = Ring(8)
    for i in range(8):
        r.prep_nop(user_data=i, flags=SQE_IO_LINK)
    r.close()                                      # discards the 8 without submitting
    with Ring(8) as r:                             # and a fresh ring has no chain
        for i in range(9):
            r.prep_nop(user_data=i)
        assert len(_by_user_data(r, 9)) == 9


# ---- 2. caller arrays rewritten while the GIL is released -------------------------------

GOOD_LEN = 1 << 16
RANGES = 8                   # twice the SQ of Ring(4): every batch submits mid-fill
DEST = RANGES * GOOD_LEN     # the destination: a slice of a larger mapping
GUARD = 2 << 20              # after it: guard bytes a rogue range would reach


def _int_array(values):
    if numpy is not None:
        return numpy.array(values, dtype=numpy.int64)
    return array.array("q", values)


def _pause():
    """A call: the interpreter may hand the GIL over here, with either value in place
    (a loop hands it over only at its back edge, always after the same statement)."""


def _rewrite(arr, good, bad, stop):
    """Flip `arr` between the valid values and out-of-range ones, as fast as it can."""
    good, bad = _int_array(good), _int_array(bad)
    while not stop.is_set():
        arr[:] = bad
        _pause()
        arr[:] = good
        _pause()


def _race(ring, prep, arrays, seconds=2.0):
    """Call prep() over and over while threads rewrite `arrays` ({array: (good, bad)});
    return the completions of the batches that were accepted."""
    stop = threading.Event()
    threads = [threading.Thread(target=_rewrite, args=(a, g, b, stop), daemon=True)
               for a, (g, b) in arrays]
    ud = array.array("Q", bytes(8 * RANGES))
    res = array.array("i", bytes(4 * RANGES))
    results, accepted, refused = [], 0, 0
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                n = prep()
            except ValueError:
                refused += 1                       # validated while the values were bad
                continue
            accepted += 1
            got = 0
            while got < n:
                k = ring.reap(ud, res, min_complete=1, timeout=10)
                assert k > 0, "a completion never came"
                results.extend(zip(ud[:k], res[:k]))
                got += k
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert accepted > 0
    return results


@pytest.fixture
def big_file(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"\x11" * (GUARD + DEST))
    fd = os.open(path, os.O_RDONLY)
    yield fd
    os.close(fd)


def test_prep_reads_uses_only_validated_ranges_while_another_thread_rewrites_them(big_file):
    mem = vyre_uring.alloc_buffer(DEST + GUARD)
    mem[:] = b"\xee" * len(mem)
    dest = memoryview(mem)[:DEST]
    lengths = _int_array([GOOD_LEN] * RANGES)
    boffs = _int_array([i * GOOD_LEN for i in range(RANGES)])
    offsets = _int_array([0] * RANGES)
    with Ring(4, cq_entries=8) as ring:
        results = _race(ring, lambda: ring.prep_reads(big_file, dest, offsets, lengths, boffs),
                        [(lengths, ([GOOD_LEN] * RANGES, [GUARD] * RANGES)),
                         (boffs, ([i * GOOD_LEN for i in range(RANGES)], [DEST] * RANGES))])
    dest.release()
    assert mem[DEST:] == b"\xee" * GUARD, "a read wrote past the destination"
    assert all(r == GOOD_LEN for _, r in results), {r for _, r in results}
    mem.close()


def test_prep_read_fixed_batch_uses_only_validated_values_while_rewritten(big_file):
    mem = vyre_uring.alloc_buffer(2 * DEST + GUARD)
    mem[:] = b"\xee" * len(mem)
    view = memoryview(mem)
    regs = [view[:DEST], view[DEST:2 * DEST]]
    index = _int_array([i % 2 for i in range(RANGES)])
    lengths = _int_array([GOOD_LEN] * RANGES)
    boffs = _int_array([i * GOOD_LEN for i in range(RANGES)])
    offsets = _int_array([0] * RANGES)
    with Ring(4, cq_entries=8) as ring:
        ring.register_buffers(regs)
        results = _race(
            ring, lambda: ring.prep_read_fixed_batch(big_file, index, offsets, lengths, boffs),
            [(index, ([i % 2 for i in range(RANGES)], [2] * RANGES)),
             (lengths, ([GOOD_LEN] * RANGES, [GUARD] * RANGES)),
             (boffs, ([i * GOOD_LEN for i in range(RANGES)], [DEST] * RANGES))])
        ring.unregister_buffers()
    for r in regs:
        r.release()
    view.release()
    assert mem[2 * DEST:] == b"\xee" * GUARD, "a read wrote past the registered buffers"
    assert all(r == GOOD_LEN for _, r in results), {r for _, r in results}
    mem.close()


# ---- 3. a cancel prepared for a request that completed meanwhile ------------------------

def test_cancel_of_a_completed_request_does_not_hit_the_request_in_its_slot(pipe):
    rfd, wfd = pipe
    # Four slots, taken in a fixed order: A gets the first, and B, prepared right
    # after A is reaped, gets A's slot back.
    with Ring(2, cq_entries=4) as ring:
        a_buf, b_buf = bytearray(1), bytearray(1)
        ring.prep_read(rfd, a_buf, -1, user_data=1)
        ring.submit()
        # The cancel, aimed at A while A is in flight, runs only once the timeout
        # has seen two completions: A's and the NOP's below, after B is in flight.
        ring.prep_timeout(60, count=2, user_data=2, flags=SQE_IO_LINK)
        ring.prep_cancel(1, user_data=3)
        ring.submit()
        os.write(wfd, b"a")
        got = _by_user_data(ring, 1)
        assert got == {1: 1}
        ring.prep_read(rfd, b_buf, -1, user_data=4)
        ring.submit()
        ring.prep_nop(user_data=5)
        got = _by_user_data(ring, 3)
        assert got[2] == 0 and got[5] == 0
        assert got[3] == -errno.ENOENT, "the cancel found a request other than A"
        os.write(wfd, b"b")
        assert _by_user_data(ring, 1) == {4: 1}, "B was cancelled in A's place"
        assert bytes(b_buf) == b"b"


def test_cancel_still_finds_its_target(pipe):
    rfd, _ = pipe
    with Ring(2, cq_entries=4) as ring:
        for _ in range(3):                         # slots and generations move on
            ring.prep_read(rfd, bytearray(1), -1, user_data=7)
            ring.submit()
            ring.prep_cancel(7, user_data=8)
            got = _by_user_data(ring, 2)
            assert got == {7: -errno.ECANCELED, 8: 0}
