"""fork(): a child must not touch its parent's Ring (RingForkedError), closing the
inherited copy must not cancel the parent's requests, and a Ring made in the child
works normally."""
import array
import errno
import os
import subprocess
import sys
import textwrap
import time

import pytest

from vyre_uring import Ring, RingForkedError


def in_child(fn):
    """Run fn() in a forked child; returns its exit code (fn's int result, 0 for None;
    70 when it raised). The child never returns into pytest."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            code = fn() or 0
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while True:
        wpid, status = os.waitpid(pid, os.WNOHANG)
        if wpid:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("forked child hung")
        time.sleep(0.01)
    assert os.WIFEXITED(status), status
    return os.WEXITSTATUS(status)


CALLS = {
    "prep_nop": lambda r: r.prep_nop(user_data=1),
    "prep_timeout": lambda r: r.prep_timeout(0.1, user_data=1),
    "prep_nops": lambda r: r.prep_nops(array.array("Q", [1, 2])),
    "submit": lambda r: r.submit(),
    "submit_and_wait": lambda r: r.submit_and_wait(0),
    "wait": lambda r: r.wait(timeout=0),
    "completions": lambda r: r.completions(),
    "reap": lambda r: r.reap(array.array("Q", [0]), array.array("i", [0])),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_parent_ring_in_forked_child_raises_ring_forked_error(name):
    with Ring(4) as ring:
        def child():
            try:
                CALLS[name](ring)
            except RingForkedError as e:
                return 0 if isinstance(e, RuntimeError) else 2
            return 1                       # the call went through: wrong
        assert in_child(child) == 0
        # The parent's ring is untouched and works.
        ring.prep_nop(user_data=4)
        assert [(c.user_data, c.res) for c in ring.wait(timeout=5)] == [(4, 0)]


def test_child_closing_inherited_ring_does_not_cancel_parent_requests():
    with Ring(4) as ring:
        ring.prep_timeout(0.5, user_data=3)
        assert ring.submit() == 1

        def child():
            ring.close()
            return 0 if ring.closed else 1
        assert in_child(child) == 0
        assert ring.in_flight == 1
        got = []
        deadline = time.monotonic() + 5
        while not got:
            assert time.monotonic() < deadline, "the timeout never completed"
            got = ring.wait(timeout=1)
        assert [(c.user_data, c.res) for c in got] == [(3, -errno.ETIME)]


def test_child_dropping_inherited_ring_does_not_cancel_parent_requests():
    holder = [Ring(4)]                     # the only reference, so the child can drop it
    try:
        holder[0].prep_timeout(0.5, user_data=3)
        assert holder[0].submit() == 1

        def child():
            import gc
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                holder.clear()             # __del__ / dealloc run here, in the child
                gc.collect()
            return 0
        assert in_child(child) == 0
        got = holder[0].wait(timeout=5)
        assert [(c.user_data, c.res) for c in got] == [(3, -errno.ETIME)]
    finally:
        for r in holder:
            r.close()


def test_ring_created_in_child_works():
    parent_ring = Ring(4)                  # exists across the fork, unused by the child
    try:
        def child():
            with Ring(8) as r:
                r.prep_nop(user_data=42)
                r.prep_timeout(0.01, user_data=43)
                got = {}
                deadline = time.monotonic() + 5
                while len(got) < 2 and time.monotonic() < deadline:
                    got.update((c.user_data, c.res) for c in r.wait(timeout=1))
                if got != {42: 0, 43: -errno.ETIME}:
                    return 1
            return 0
        assert in_child(child) == 0
    finally:
        parent_ring.close()


def test_ring_created_in_child_works_in_grandchild_only_when_made_there():
    def child():
        with Ring(4) as r:
            def grandchild():
                try:
                    r.prep_nop()
                except RingForkedError:
                    pass
                else:
                    return 1
                with Ring(4) as g:
                    g.prep_nop(user_data=5)
                    return 0 if [c.user_data for c in g.wait(timeout=5)] == [5] else 2
            code = in_child(grandchild)
            if code:
                return 10 + code
            r.prep_nop(user_data=6)        # the child's own ring still works
            return 0 if [c.user_data for c in r.wait(timeout=5)] == [6] else 20
    assert in_child(child) == 0


CHILD_CLOSES_PARENT_RING = textwrap.dedent("""
    import os, sys
    import vyre_uring
    parent_ring = vyre_uring.Ring(4)      # registered ring fd: index 0 of this thread
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            own = vyre_uring.Ring(4)      # the child's own ring: index 0 of the child's table
            parent_ring.close()           # must not touch the child's registrations
            own.prep_nop(user_data=1)
            got = own.wait(timeout=5)
            code = 0 if [(c.user_data, c.res) for c in got] == [(1, 0)] else 1
        except BaseException as e:
            print(type(e).__name__, e, file=sys.stderr, flush=True)
            code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    parent_ring.close()
    sys.exit(os.waitstatus_to_exitcode(status))
""")


def test_child_closing_parent_ring_leaves_its_own_ring_working():
    # A fresh interpreter, so the registered-ring indices are known (both 0).
    r = subprocess.run([sys.executable, "-c", CHILD_CLOSES_PARENT_RING],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
