"""Regressions from the engine review: each test is a scenario that once crashed,
hung or misreported, run in a child process where a crash or hang is possible."""
import array
import os
import pickle
import subprocess
import sys
import textwrap
import threading

import pytest

import vyre_uring


def run_child(code, timeout=30):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-3000:])
    return proc.stdout


def test_zero_timeout_still_submits(ring):
    ring.prep_nop(user_data=7)
    got = ring.wait(1, timeout=0)
    assert ring.pending == 0
    got += ring.wait(1, timeout=5) if not got else []
    assert [c.user_data for c in got] == [7]


def test_infinite_timeout_means_no_limit(ring):
    ring.prep_nop(user_data=8)
    assert [c.user_data for c in ring.wait(1, timeout=float("inf"))] == [8]


def test_sqpoll_submit_counts_only_new_requests():
    with vyre_uring.Ring(8, sqpoll=True) as ring:
        for u in range(3):
            ring.prep_nop(user_data=u)
        assert ring.submit() == 3
        assert ring.submit() == 0
        assert len(ring.wait(3, timeout=5)) == 3


def test_signal_interrupts_a_wait_that_also_submits():
    out = run_child("""
        import os, signal, time, vyre_uring
        r = vyre_uring.Ring(8)
        rd, wr = os.pipe()
        class Stop(Exception): pass
        def stop(*a): raise Stop()
        signal.signal(signal.SIGALRM, stop)
        r.prep_read(rd, bytearray(10), -1, user_data=1)   # unsubmitted: wait submits it
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        try:
            r.wait(1)
        except Stop:
            print("stopped", r.in_flight)
    """, timeout=20)
    assert out.split() == ["stopped", "1"]


def test_registered_ring_fd_is_not_confused_by_reused_thread_ids():
    # glibc reuses a finished thread's pthread_t; the ring must not take the new
    # thread's registered ring index for its own.
    run_child("""
        import threading, vyre_uring
        box = {}
        def make():
            box["r1"] = vyre_uring.Ring(8)
        t = threading.Thread(target=make); t.start(); t.join()
        def use():
            r3 = vyre_uring.Ring(8)          # registers its fd in this thread
            r3.prep_nop(user_data=333)
            r1 = box["r1"]
            r1.prep_nop(user_data=111)
            assert r1.submit() == 1
            assert [c.user_data for c in r1.wait(1, timeout=5)] == [111]
            assert r3.pending == 1           # r1's submit did not submit r3's request
            box["ok"] = True
        t = threading.Thread(target=use); t.start(); t.join(10)
        assert box.get("ok"), "thread failed or hung"
    """)


def test_reap_survives_its_arrays_shrinking_when_a_hold_is_freed():
    run_child("""
        import os, array, vyre_uring
        ud = array.array("Q", [0] * 64)
        res = array.array("i", [0] * 64)
        class Buf(bytearray):
            def __del__(self):
                del ud[:]; del res[:]
        r = vyre_uring.Ring(8, single_issuer=True, defer_taskrun=True)
        rd, wr = os.pipe()
        rd2, wr2 = os.pipe()
        r.prep_read(rd, bytearray(8), -1, user_data=1)
        r.prep_write(wr2, Buf(b"hello"), -1, user_data=2)
        r.submit()
        os.write(wr, b"x")
        n = r.reap(ud, res)
        assert n >= 1
    """)


def test_interrupted_close_of_a_foreign_single_issuer_ring_can_be_retried():
    run_child("""
        import os, signal, threading, warnings, vyre_uring
        warnings.simplefilter("ignore", ResourceWarning)
        box = {}
        rd, wr = os.pipe()
        def worker():
            r = vyre_uring.Ring(8, single_issuer=True)
            r.prep_read(rd, bytearray(8), -1, user_data=1)
            r.submit()
            box["r"] = r
        t = threading.Thread(target=worker); t.start(); t.join()
        class Stop(Exception): pass
        def stop(*a): raise Stop()
        signal.signal(signal.SIGALRM, stop)
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        try:
            box["r"].close()
        except Stop:
            pass
        signal.setitimer(signal.ITIMER_REAL, 0)
        box["r"].close()
        assert box["r"].closed
    """)


def test_closing_a_defer_taskrun_ring_from_another_thread_does_not_spin():
    with pytest.warns(ResourceWarning, match="kept alive for ever"):
        rd, wr = os.pipe()
        box = {}

        def worker():
            r = vyre_uring.Ring(8, single_issuer=True, defer_taskrun=True)
            r.prep_read(rd, bytearray(8), -1, user_data=1)
            r.submit()
            box["r"] = r

        t = threading.Thread(target=worker)
        t.start()
        t.join()
        start = os.times()
        box["r"].close()
        spent = os.times()
        assert (spent.user + spent.system) - (start.user + start.system) < 5
        assert box["r"].closed
        os.close(rd)
        os.close(wr)


def test_cancel_skips_a_request_that_already_completed(ring, pipe):
    rd, wr = pipe
    os.write(wr, b"a")
    first, second = bytearray(1), bytearray(1)
    ring.prep_read(rd, first, -1, user_data=5)
    ring.submit()
    ring.prep_read(rd, second, -1, user_data=5)
    ring.submit()
    ring.prep_cancel(5, user_data=99)
    got = {(c.user_data, c.res) for c in ring.wait(3, timeout=5)}
    assert got == {(5, 1), (99, 0), (5, -125)}
    assert ring.in_flight == 0


def test_syscall_errors_pickle():
    err = vyre_uring.UringSyscallError(22, "io_uring_enter", "a hint", "detail")
    back = pickle.loads(pickle.dumps(err))
    assert (back.errno, back.syscall, back.hint, back.detail) == (22, "io_uring_enter",
                                                                  "a hint", "detail")
    assert str(back) == str(err)


def test_timeout_count_beyond_32_bits_is_refused(ring):
    with pytest.raises(ValueError, match="count"):
        ring.prep_timeout(1.0, count=2**32)
    with pytest.raises(ValueError, match="finite"):
        ring.prep_timeout(float("inf"))
    assert ring.pending == 0


def test_reap_into_mixed_array_types_widens(ring):
    ring.prep_nops(array.array("Q", [1, 2, 3]))
    ud = array.array("Q", [0] * 3)
    res = array.array("q", [7] * 3)          # 8-byte res: the widening path
    assert ring.reap(ud, res, min_complete=3) == 3
    assert sorted(ud) == [1, 2, 3] and list(res) == [0, 0, 0]


@pytest.mark.parametrize("typecode", ["b", "h", "i", "l", "q"])
def test_negative_values_in_signed_arrays_stay_negative(ring, typecode):
    # A C ternary of int32 and uint32 once turned int32 -5 into 4294967291.
    with pytest.raises(ValueError, match="offset -5"):
        ring.prep_reads(0, bytearray(10), array.array(typecode, [-5]),
                        array.array(typecode, [1]))
    assert ring.pending == 0
