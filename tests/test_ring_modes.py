"""The same workload through every setup mode: plain, SQPOLL (awake and asleep),
single issuer, DEFER_TASKRUN and COOP_TASKRUN. Each must return every completion
exactly once and cancel what is in flight on close."""
import array
import errno
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
    done = 0
    while done < total or mode_ring.in_flight + mode_ring.pending:
        if done < total:
            done += mode_ring.prep_nops(user_data[done:done + 16])
        n = mode_ring.reap(out, res, min_complete=1)
        for u in out[:n]:
            seen[u] += 1
        assert not any(res[:n])
    assert seen == bytearray([1]) * total


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

