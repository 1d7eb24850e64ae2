"""Signals during a wait: Ctrl-C and raising handlers interrupt it promptly with the
ring left consistent; handlers that return let the wait resume (EINTR is retried)."""
import array
import errno
import selectors
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from vyre_uring import Ring


class Alarm(Exception):
    """Raised by the test's SIGALRM handler."""


@pytest.fixture
def sigalrm():
    """install(handler, delay, interval): set a SIGALRM handler and ITIMER_REAL; both
    are restored after the test."""
    old = signal.getsignal(signal.SIGALRM)

    def install(handler, delay, interval=0.0):
        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, delay, interval)

    try:
        yield install
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)


def _read_line(proc, timeout):
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            return None
        return proc.stdout.readline()
    finally:
        sel.close()


CTRL_C_CHILD = textwrap.dedent("""
    import array
    import vyre_uring
    ring = vyre_uring.Ring(4)
    ring.prep_timeout(30, user_data=1)
    print("ready", flush=True)
    ring.{call}
    print("wait returned", flush=True)
""")


@pytest.mark.parametrize("call", ["wait()", "wait(timeout=60)", "submit_and_wait(1)",
                                  "submit_and_reap(array.array('Q', [0]), "
                                  "array.array('i', [0]), 1)"])
def test_ctrl_c_interrupts_a_blocking_wait(call):
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_CHILD.format(call=call)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = _read_line(proc, 60)
        assert line == "ready\n", (line, proc.poll())
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "KeyboardInterrupt" in err, err
    assert "wait returned" not in out
    assert proc.returncode != 0


def test_raising_signal_handler_interrupts_wait_and_ring_stays_consistent(sigalrm):
    def handler(signum, frame):
        raise Alarm()

    with Ring(4) as ring:
        ring.prep_timeout(30, user_data=7)
        sigalrm(handler, 0.2)
        t0 = time.monotonic()
        with pytest.raises(Alarm):
            ring.wait()
        assert time.monotonic() - t0 < 5
        # The timeout was submitted before the signal and is still in the kernel.
        assert ring.pending == 0
        assert ring.in_flight == 1
        assert ring.completions() == []
        ring.prep_cancel(7, user_data=8)
        got = {}
        deadline = time.monotonic() + 5
        while len(got) < 2:
            assert time.monotonic() < deadline
            got.update((c.user_data, c.res) for c in ring.wait(timeout=1))
        assert got == {7: -errno.ECANCELED, 8: 0}
        assert ring.in_flight == 0
        ring.prep_nop(user_data=9)                 # and it still works
        assert [(c.user_data, c.res) for c in ring.wait(timeout=5)] == [(9, 0)]


def test_raising_signal_handler_interrupts_wait_with_timeout(sigalrm):
    def handler(signum, frame):
        raise Alarm()

    with Ring(4) as ring:
        ring.prep_timeout(30, user_data=7)
        ring.submit()
        sigalrm(handler, 0.2)
        t0 = time.monotonic()
        with pytest.raises(Alarm):
            ring.wait(timeout=60)
        assert time.monotonic() - t0 < 5
        assert ring.in_flight == 1 and ring.pending == 0


# ---- EINTR: handlers that return let the wait resume --------------------------------

def _wait_modes():
    def wait_timeout(ring):
        return ring.wait(timeout=5)

    def wait_forever(ring):
        return ring.wait()

    def submit_and_wait(ring):
        assert ring.submit_and_wait(1, timeout=5) == 1
        return ring.completions()

    def reap(ring):
        ud, res = array.array("Q", [0] * 4), array.array("i", [0] * 4)
        n = ring.reap(ud, res, min_complete=1, timeout=5)
        return [_Pair(ud[i], res[i]) for i in range(n)]

    return [wait_timeout, wait_forever, submit_and_wait, reap]


class _Pair:
    def __init__(self, user_data, res):
        self.user_data, self.res = user_data, res


@pytest.mark.parametrize("wait", _wait_modes(), ids=lambda f: f.__name__)
def test_wait_resumes_after_signals_whose_handlers_return(sigalrm, wait):
    calls = []

    def handler(signum, frame):
        calls.append(signum)

    with Ring(4) as ring:
        ring.prep_timeout(0.3, user_data=3)
        sigalrm(handler, 0.01, 0.01)
        t0 = time.monotonic()
        got = wait(ring)
        elapsed = time.monotonic() - t0
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        assert [(c.user_data, c.res) for c in got] == [(3, -errno.ETIME)]
        assert elapsed >= 0.25                     # not cut short by the signals
        assert elapsed < 5
        assert len(calls) >= 3                     # signals did arrive during the wait
        assert ring.in_flight == 0 and ring.pending == 0


def test_wait_timeout_is_kept_across_signals(sigalrm):
    """A wait(timeout=0.3) with nothing completing returns empty after about 0.3 s
    even though signals keep interrupting the syscall (the deadline is absolute)."""
    calls = []
    with Ring(4) as ring:
        ring.prep_timeout(30, user_data=1)
        sigalrm(lambda s, f: calls.append(s), 0.01, 0.01)
        t0 = time.monotonic()
        got = ring.wait(timeout=0.3)
        elapsed = time.monotonic() - t0
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        assert got == []
        assert 0.25 <= elapsed < 5
        assert len(calls) >= 3
        assert ring.in_flight == 1

