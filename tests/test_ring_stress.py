"""Many requests through small rings: free-running indices wrap the masks many times,
outstanding requests never exceed the CQ, an overflowed CQ is recovered, and
completions arriving out of order map to their own user_data."""
import array
import errno
import random
import time

import pytest

import vyre_uring
from vyre_uring import Ring, RingFullError
from vyre_uring._ring import _test_set_overcommit


def mark(seen, user_data):
    """Count each user_data in the bytearray `seen` (a ValueError past 255 is a
    failure anyway)."""
    for ud in user_data:
        seen[ud] += 1


# ---- wraparound ------------------------------------------------------------------

def test_two_million_nops_through_an_8_entry_ring_each_complete_once():
    n = 2_000_000
    seen = bytearray(n)
    all_ud = memoryview(array.array("Q", range(n)))
    with Ring(8) as ring:
        assert ring.sq_entries == 8 and ring.cq_entries == 16
        ud_out = array.array("Q", bytes(8 * 16))
        res_out = array.array("i", bytes(4 * 16))
        sent = reaped = bad_res = 0
        deadline = time.monotonic() + 600
        while reaped < n:
            if sent < n:
                sent += ring.prep_nops(all_ud[sent:sent + 16])
            k = ring.reap(ud_out, res_out, min_complete=1, timeout=10)
            assert k > 0 or time.monotonic() < deadline, "no progress"
            mark(seen, ud_out[:k])
            bad_res += k - res_out[:k].count(0)
            reaped += k
            assert ring.pending + ring.in_flight == sent - reaped
        assert sent == reaped == n
        assert ring.pending == 0 and ring.in_flight == 0
    assert bad_res == 0
    assert seen.count(1) == n                     # every one exactly once, none twice


def test_two_hundred_thousand_per_op_nops_through_a_2_entry_ring():
    n = 200_000
    seen = bytearray(n)
    with Ring(2) as ring:
        cap = ring.cq_entries
        assert ring.sq_entries == 2 and cap == 4
        sent = reaped = 0
        while reaped < n:
            while sent < n and ring.pending + ring.in_flight < cap:
                ring.prep_nop(user_data=sent)
                sent += 1
            got = ring.wait(timeout=10)
            assert got, "no completion arrived"
            for c in got:
                assert c.res == 0
                seen[c.user_data] += 1
            reaped += len(got)
        assert ring.in_flight == 0 and ring.pending == 0
    assert seen.count(1) == n


# ---- outstanding requests are bounded by the CQ ------------------------------------

def test_prep_nops_stops_at_cq_capacity():
    with Ring(4, cq_entries=8) as ring:
        assert ring.cq_entries == 8
        assert ring.prep_nops(array.array("Q", range(100))) == 8
        assert ring.pending + ring.in_flight == 8
        assert ring.prep_nops(array.array("Q", range(100, 110))) == 0
        with pytest.raises(RingFullError):
            ring.prep_nop(user_data=999)
        got = []
        while len(got) < 8:
            got += ring.wait(timeout=5)
        assert sorted(c.user_data for c in got) == list(range(8))


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_mix_never_exceeds_cq_capacity(seed):
    rng = random.Random(seed)
    next_ud = 0
    seen = {}
    with Ring(4, cq_entries=8) as ring:
        cap = ring.cq_entries

        def take(completions):
            for ud, res in completions:
                assert ud not in seen, f"user_data {ud} came back twice"
                seen[ud] = res

        for _ in range(3000):
            op = rng.randrange(7)
            if op == 0:
                k = rng.randint(1, 12)
                got = ring.prep_nops(array.array("Q", range(next_ud, next_ud + k)))
                assert got <= k
                next_ud += got
            elif op == 1:
                try:
                    ring.prep_nop(user_data=next_ud)
                    next_ud += 1
                except RingFullError:
                    assert ring.pending + ring.in_flight == cap
            elif op == 2:
                try:
                    ring.prep_timeout(rng.choice([0, 0.0005, 0.002]), user_data=next_ud)
                    next_ud += 1
                except RingFullError:
                    assert ring.pending + ring.in_flight == cap
            elif op == 3:
                ring.submit()
            elif op == 4:
                take((c.user_data, c.res) for c in ring.completions())
            elif op == 5:
                m = rng.randint(1, 5)
                ud, res = array.array("Q", bytes(8 * m)), array.array("i", bytes(4 * m))
                k = ring.reap(ud, res)
                take(zip(ud[:k], res[:k]))
            else:
                outstanding = ring.pending + ring.in_flight
                want = rng.randint(0, outstanding)
                take((c.user_data, c.res) for c in ring.wait(min_complete=want, timeout=5))
            assert ring.pending + ring.in_flight <= cap
            assert ring.pending + ring.in_flight == next_ud - len(seen)
        deadline = time.monotonic() + 10
        while len(seen) < next_ud:
            assert time.monotonic() < deadline
            take((c.user_data, c.res) for c in ring.wait(timeout=1))
    assert sorted(seen) == list(range(next_ud))
    assert set(seen.values()) <= {0, -errno.ETIME}


# ---- CQ overflow ------------------------------------------------------------------

def _overcommitted_ring():
    old = _test_set_overcommit(24)
    try:
        ring = Ring(4, cq_entries=8)
    finally:
        _test_set_overcommit(old)
    if not ring.features & vyre_uring.FEAT_NODROP:
        ring.close()
        pytest.skip("the kernel lacks IORING_FEAT_NODROP: overflowed CQEs are dropped")
    return ring


def _prep_and_submit_32(ring):
    uds = array.array("Q", range(500, 532))
    done = 0
    while done < 32:
        k = ring.prep_nops(uds[done:done + 5])
        assert k > 0
        done += k
    ring.submit()
    assert ring.pending == 0 and ring.in_flight == 32


def test_cq_overflow_is_recovered_by_completions():
    """NOPs complete during the submit, so every CQE exists already (8 in the ring, 24
    on the kernel's overflow list): completions() alone, never waiting, returns all."""
    ring = _overcommitted_ring()
    try:
        _prep_and_submit_32(ring)
        got = []
        for _ in range(4):
            got += ring.completions()
        assert sorted(c.user_data for c in got) == list(range(500, 532))
        assert all(c.res == 0 for c in got)
        assert ring.in_flight == 0
        ring.prep_nop(user_data=1)                 # the ring still works afterwards
        assert [c.user_data for c in ring.wait(timeout=5)] == [1]
    finally:
        ring.close()


@pytest.mark.parametrize("array_len, calls", [(40, 4), (3, 40)])
def test_cq_overflow_is_recovered_by_reap(array_len, calls):
    ring = _overcommitted_ring()
    try:
        _prep_and_submit_32(ring)
        ud = array.array("Q", bytes(8 * array_len))
        res = array.array("i", bytes(4 * array_len))
        total = []
        for _ in range(calls):
            k = ring.reap(ud, res)
            total += zip(ud[:k], res[:k])
        assert sorted(u for u, _ in total) == list(range(500, 532))
        assert {r for _, r in total} == {0}
        assert ring.in_flight == 0
    finally:
        ring.close()


def test_cq_overflow_is_recovered_by_wait():
    ring = _overcommitted_ring()
    try:
        _prep_and_submit_32(ring)
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 32:
            assert time.monotonic() < deadline, f"only {len(got)} of 32 came back"
            got += ring.wait(timeout=1)
        assert sorted(c.user_data for c in got) == list(range(500, 532))
        assert all(c.res == 0 for c in got)
    finally:
        ring.close()


def test_close_with_overflowed_cq_drains_cleanly():
    ring = _overcommitted_ring()
    _prep_and_submit_32(ring)
    ring.close()
    assert ring.closed and ring.in_flight == 0


# ---- out-of-order completions -------------------------------------------------------

def test_out_of_order_completions_map_to_their_own_user_data():
    with Ring(8) as ring:
        ring.prep_timeout(0.3, user_data=1)
        ring.prep_timeout(0.2, user_data=2)
        ring.prep_timeout(0.1, user_data=3)
        ring.prep_nop(user_data=4)
        ring.prep_timeout(0.0, count=1, user_data=5)   # completes with the NOP or on time
        ring.prep_nop(user_data=6)
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 6:
            assert time.monotonic() < deadline
            got += ring.wait(timeout=1)
        res = {c.user_data: c.res for c in got}
        assert len(res) == 6
        assert res[1] == res[2] == res[3] == -errno.ETIME
        assert res[4] == res[6] == 0
        assert res[5] in (0, -errno.ETIME)
        order = [c.user_data for c in got if c.user_data in (1, 2, 3)]
        assert order == [3, 2, 1]                      # each timer kept its own duration
        assert ring.in_flight == 0


def test_many_interleaved_timers_and_nops_map_correctly():
    rng = random.Random(7)
    with Ring(64) as ring:
        durations = {}
        for ud in range(40):
            if ud % 2:
                durations[ud] = rng.choice([0.01, 0.05, 0.1, 0.15])
                ring.prep_timeout(durations[ud], user_data=ud)
            else:
                ring.prep_nop(user_data=ud)
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 40:
            assert time.monotonic() < deadline
            got += ring.wait(timeout=1)
        assert sorted(c.user_data for c in got) == list(range(40))
        for c in got:
            assert c.res == (-errno.ETIME if c.user_data in durations else 0), c
        # Timers come back in the order of their durations (ties in any order).
        timer_order = [durations[c.user_data] for c in got if c.user_data in durations]
        assert timer_order == sorted(timer_order)
