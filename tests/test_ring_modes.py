"""The same workload through every setup mode: plain, SQPOLL (awake and asleep),
single issuer, DEFER_TASKRUN and COOP_TASKRUN. Each must return every completion
exactly once and cancel what is in flight on close."""
import array
import errno
import os
import time

import pytest

import vyre_uring

MODES = {
    "plain": {},
    "sqpoll": {"sqpoll": True},
    "sqpoll-sleepy": {"sqpoll": True, "sq_thread_idle_ms": 1},
    "single-issuer": {"single_issuer": True},
    "defer-taskrun": {"single_issuer": True, "defer_taskrun": True},
    "coop-taskrun": {"coop_taskrun": True},
}


@pytest.fixture(params=list(MODES))
def mode_ring(request):
    try:
        ring = vyre_uring.Ring(8, **MODES[request.param])
    except vyre_uring.UringSyscallError as exc:
        if exc.errno == errno.EINVAL:
            pytest.skip(f"this kernel does not support {request.param}: {exc}")
        raise
    yield ring
    ring.close()


def test_nops_exactly_once_through_a_small_ring(mode_ring):
    total = 5000
    user_data = array.array("Q", range(total))
    out = array.array("Q", bytes(8 * 16))
    res = array.array("i", bytes(4 * 16))
    seen = bytearray(total)
    done = reaped = 0
    # Counted here, not read back as in_flight + pending: under SQPOLL the kernel
    # thread moves requests from one to the other between the two reads.
    while reaped < total:
        if done < total:
            done += mode_ring.prep_nops(user_data[done:done + 16])
        n = mode_ring.reap(out, res, min_complete=1)
        reaped += n
        for u in out[:n]:
            seen[u] += 1
        assert not any(res[:n])
    assert seen == bytearray([1]) * total
    assert mode_ring.in_flight == mode_ring.pending == 0


def test_read_after_the_sq_thread_went_idle(mode_ring, tmp_file, fd):
    path, data = tmp_file
    time.sleep(0.05)                      # long past sq_thread_idle_ms=1
    buf = bytearray(4096)
    mode_ring.prep_read(fd, buf, 8192, user_data=5)
    (c,) = mode_ring.wait(1, timeout=10)
    assert (c.user_data, c.res) == (5, 4096)
    assert bytes(buf) == data[8192:8192 + 4096]


def test_close_cancels_a_long_timeout(mode_ring):
    mode_ring.prep_timeout(30, user_data=3)
    mode_ring.submit()
    start = time.monotonic()
    mode_ring.close()
    assert time.monotonic() - start < 5
    assert mode_ring.closed


def test_nonblocking_completions_see_a_finished_request(mode_ring):
    mode_ring.prep_nop(user_data=9)
    mode_ring.submit()
    deadline = time.monotonic() + 5
    got = []
    while not got and time.monotonic() < deadline:
        got = mode_ring.completions()
    assert [(c.user_data, c.res) for c in got] == [(9, 0)]



# ---- IORING_REGISTER_RESTRICTIONS ----------------------------------------------------

def test_allowed_ops_make_the_kernel_refuse_everything_else(tmp_file):
    path, data = tmp_file
    fd = os.open(path, os.O_RDONLY)
    try:
        with vyre_uring.Ring(8, allowed_ops={vyre_uring.Op.NOP, vyre_uring.Op.READ}) as ring:
            assert ring.allowed_ops == {vyre_uring.Op.NOP, vyre_uring.Op.READ,
                                        vyre_uring.Op.ASYNC_CANCEL}
            buf = bytearray(100)
            ring.prep_nop(user_data=1)
            ring.prep_read(fd, buf, user_data=2)
            ring.prep_timeout(0.001, user_data=3)
            ring.prep_fsync(fd, user_data=4)
            got = {c.user_data: c.res for c in ring.wait(4, timeout=5)}
            assert got == {1: 0, 2: 100, 3: -errno.EACCES, 4: -errno.EACCES}
            assert buf == data[:100]
            ring.register_buffers([bytearray(4096)])      # register ops it needs stay
            ring.unregister_buffers()
    finally:
        os.close(fd)


def test_a_restricted_ring_still_cancels_and_drains_on_close():
    r, w = os.pipe()
    try:
        ring = vyre_uring.Ring(8, allowed_ops={vyre_uring.Op.READ})
        buf = bytearray(16)
        ring.prep_read(r, buf)                   # waits for ever: close must cancel it
        ring.submit()
        ring.close()
        assert ring.closed and ring.in_flight == 0
        buf.extend(b"x")                         # no longer exported
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("bad", [300, -1, "READ", 2.0])
def test_allowed_ops_must_be_opcodes(bad):
    with pytest.raises(ValueError, match="allowed_ops"):
        vyre_uring.Ring(8, allowed_ops=[bad])


def test_the_readers_rings_run_only_the_readers_opcodes():
    from vyre_uring._uring_backend import READER_OPS
    with vyre_uring.BatchReader(backend="io_uring", workers=2) as reader:
        for r in reader._backend._rings:
            assert r.ring.allowed_ops == READER_OPS | {vyre_uring.Op.ASYNC_CANCEL}


def test_submit_read_returns_each_result_once_in_every_mode(mode_ring, tmp_file, fd):
    """submit_read's result comes from the call (the read completed inside it) or
    from a later reap, never both and never neither, with other requests around."""
    _, data = tmp_file
    out = array.array("Q", bytes(8 * 16))
    res = array.array("i", bytes(4 * 16))
    results = {}
    for k in range(200):
        if k % 3 == 0:
            mode_ring.prep_nop(user_data=10_000 + k)     # a completion ahead of some
            mode_ring.submit()
        buf = bytearray(512)
        got = mode_ring.submit_read(fd, buf, 4096 * k, user_data=k)
        if got is not None:
            assert k not in results
            results[k] = (got, bytes(buf))
        else:
            pending = (k, buf)
            while k not in results:
                n = mode_ring.reap(out, res, min_complete=1)
                for u, r in zip(out[:n], res[:n]):
                    if u == k:
                        results[k] = (r, bytes(pending[1]))
                    else:
                        assert u >= 10_000 and r == 0
    while mode_ring.in_flight or mode_ring.pending:
        n = mode_ring.reap(out, res, min_complete=1)
        assert all(u >= 10_000 for u in out[:n])
    assert sorted(results) == list(range(200))
    for k, (got, content) in results.items():
        assert got == 512 and content == data[4096 * k:4096 * k + 512]
