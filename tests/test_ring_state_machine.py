"""A stateful property test: hypothesis drives one Ring through random interleavings
of reads, writes, fixed-buffer and fixed-file reads, NOPs, timeouts (expiring or
cancelled), linked write->read chains, submits, reaps, buffer and file
(un)registration, and finally close() with whatever is still in flight. A model
(the file's bytes, kept with os.pwrite semantics) says what every completion must
be: each arrives exactly once, with the right result and the right bytes."""
import errno
import os
import random
import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import vyre_uring
from vyre_uring import SQE_FIXED_FILE, SQE_IO_LINK

BLOCK = 4096
BLOCKS = 16
LONG = 60.0                   # a timeout that only a cancel or close() ends

blocks = st.integers(0, BLOCKS - 1)
spans = st.tuples(st.integers(0, BLOCK - 1), st.integers(1, BLOCK))


class RingMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="vyre-fsm-")
        path = os.path.join(self.dir, "data")
        self.model = bytearray(random.Random(0).randbytes(BLOCK * BLOCKS))
        with open(path, "wb") as f:
            f.write(self.model)
        self.fd = os.open(path, os.O_RDWR)
        self.ring = vyre_uring.Ring(8, cq_entries=32)
        self.expect = {}              # user_data -> check(res)
        self.busy = {}                # block -> requests in flight that touch it
        self.writing = {}             # block -> writes in flight to it
        self.next_ud = 1
        self.fixed_buf = None         # registered buffer 0, when registered
        self.fixed_slots = set()      # its 4 KiB slots in use by reads in flight
        self.files = False            # self.fd is registered file 0
        self.long_timeouts = []

    # ---- bookkeeping ------------------------------------------------------------------

    def ud(self):
        self.next_ud += 1
        return self.next_ud

    def room(self, n=1):
        return len(self.expect) + n <= self.ring.cq_entries

    def hold(self, block):
        self.busy[block] = self.busy.get(block, 0) + 1

    def release(self, block):
        self.busy[block] -= 1

    def expect_read(self, ud, block, start, n, view):
        # The block cannot change while the read is in flight (no write is
        # prepared to a busy block), so its bytes now are what the read must see.
        want = bytes(self.model[block * BLOCK + start:block * BLOCK + start + n])

        def check(res):
            assert res == n, (ud, res)
            assert bytes(view()) == want
            self.release(block)
        self.expect[ud] = check
        self.hold(block)

    def expect_write(self, ud, block, data):
        # The model takes the write now: no read of the block is prepared until it
        # completes, except the one linked after it.
        self.model[block * BLOCK:block * BLOCK + len(data)] = data

        def check(res):
            assert res == len(data), (ud, res)
            self.release(block)
            self.writing[block] -= 1
        self.expect[ud] = check
        self.hold(block)
        self.writing[block] = self.writing.get(block, 0) + 1

    # ---- rules ----------------------------------------------------------------------------

    @precondition(lambda self: self.room())
    @rule()
    def nop(self):
        ud = self.ud()
        self.ring.prep_nop(user_data=ud)
        self.expect[ud] = lambda res: res == 0 or _fail(res)

    @precondition(lambda self: self.room())
    @rule(block=blocks, span=spans)
    def read(self, block, span):
        if self.writing.get(block):
            return                    # unordered with the write: either bytes are right
        start, n = span[0], min(span[1], BLOCK - span[0])
        buf = bytearray(n)
        ud = self.ud()
        self.ring.prep_read(self.fd, buf, block * BLOCK + start, user_data=ud)
        self.expect_read(ud, block, start, n, lambda: buf)

    @precondition(lambda self: self.room())
    @rule(block=blocks, data=st.binary(min_size=1, max_size=BLOCK))
    def write(self, block, data):
        if self.busy.get(block):
            return                    # would race with what is in flight there
        ud = self.ud()
        self.ring.prep_write(self.fd, data, block * BLOCK, user_data=ud)
        self.expect_write(ud, block, data)

    @precondition(lambda self: self.room(2))
    @rule(block=blocks, data=st.binary(min_size=1, max_size=BLOCK))
    def linked_write_then_read(self, block, data):
        # IO_LINK: the read starts only after the write completed, so it sees it.
        if self.busy.get(block):
            return
        w, r = self.ud(), self.ud()
        buf = bytearray(len(data))
        self.ring.prep_write(self.fd, data, block * BLOCK, user_data=w, flags=SQE_IO_LINK)
        self.ring.prep_read(self.fd, buf, block * BLOCK, user_data=r)
        self.expect_write(w, block, data)
        self.expect_read(r, block, 0, len(data), lambda: buf)

    @precondition(lambda self: self.room() and self.fixed_buf is not None and
                  len(self.fixed_slots) < BLOCKS)
    @rule(block=blocks, span=spans)
    def read_fixed(self, block, span):
        if self.writing.get(block):
            return
        start, n = span[0], min(span[1], BLOCK - span[0])
        slot = min(set(range(BLOCKS)) - self.fixed_slots)
        self.fixed_slots.add(slot)
        ud = self.ud()
        self.ring.prep_read_fixed(self.fd, 0, block * BLOCK + start, n, slot * BLOCK,
                                  user_data=ud)
        buf = self.fixed_buf
        self.expect_read(ud, block, start, n, lambda: buf[slot * BLOCK:slot * BLOCK + n])
        check = self.expect[ud]

        def check_and_free(res):
            check(res)
            self.fixed_slots.discard(slot)
        self.expect[ud] = check_and_free

    @precondition(lambda self: self.room() and self.files)
    @rule(block=blocks, span=spans)
    def read_fixed_file(self, block, span):
        if self.writing.get(block):
            return
        start, n = span[0], min(span[1], BLOCK - span[0])
        buf = bytearray(n)
        ud = self.ud()
        self.ring.prep_read(0, buf, block * BLOCK + start, user_data=ud, flags=SQE_FIXED_FILE)
        self.expect_read(ud, block, start, n, lambda: buf)

    @precondition(lambda self: self.room())
    @rule()
    def timeout_expires(self):
        ud = self.ud()
        self.ring.prep_timeout(0.0005, user_data=ud)
        self.expect[ud] = lambda res: res == -errno.ETIME or _fail(res)

    @precondition(lambda self: self.room())
    @rule()
    def long_timeout(self):
        ud = self.ud()
        self.ring.prep_timeout(LONG, user_data=ud)
        self.long_timeouts.append(ud)
        self.expect[ud] = lambda res: res == -errno.ECANCELED or _fail(res)

    @precondition(lambda self: self.room() and self.long_timeouts)
    @rule()
    def cancel(self):
        target = self.long_timeouts.pop(0)
        ud = self.ud()
        self.ring.prep_cancel(target, user_data=ud)
        self.expect[ud] = lambda res: res == 0 or _fail(res)

    @rule()
    def submit(self):
        self.ring.submit()

    @rule(wait=st.booleans())
    def reap(self, wait):
        # Wait only for what can complete by itself (not the long timeouts).
        finite = len(self.expect) - len(self.long_timeouts)
        done = self.ring.wait(1, timeout=10) if wait and finite else self.ring.completions()
        for c in done:
            assert c.user_data in self.expect, f"completion {c.user_data} twice or unknown"
            self.expect.pop(c.user_data)(c.res)

    @precondition(lambda self: self.fixed_buf is None)
    @rule()
    def register_buffer(self):
        self.fixed_buf = vyre_uring.alloc_buffer(BLOCK * BLOCKS)
        self.ring.register_buffers([self.fixed_buf])

    @precondition(lambda self: self.fixed_buf is not None and not self.fixed_slots)
    @rule()
    def unregister_buffer(self):
        self.ring.unregister_buffers()
        self.fixed_buf.close()        # only possible once the ring let go of it
        self.fixed_buf = None

    @precondition(lambda self: not self.files)
    @rule()
    def register_file(self):
        self.ring.register_files([self.fd])
        self.files = True

    @precondition(lambda self: self.files)
    @rule()
    def unregister_file(self):
        # Reads prepared on the fixed file are submitted first (they find it), and
        # reads in flight keep their own reference to it.
        self.ring.unregister_files()
        self.files = False

    # ---- invariants and the end --------------------------------------------------------

    @invariant()
    def outstanding_matches_the_model(self):
        assert self.ring.pending + self.ring.in_flight == len(self.expect)

    def teardown(self):
        try:
            # close() cancels and drains what is in flight: no completion escapes
            # and no buffer stays exported.
            self.ring.close()
            assert self.ring.in_flight == 0
            if self.fixed_buf is not None:
                self.fixed_buf.close()
            with open(os.path.join(self.dir, "data"), "rb") as f:
                on_disk = f.read()
            if not self.busy or not any(self.busy.values()):
                assert on_disk == bytes(self.model)
        finally:
            os.close(self.fd)
            shutil.rmtree(self.dir)


def _fail(res):
    raise AssertionError(f"unexpected res {res}")


RingMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("VYRE_FSM_EXAMPLES", "60")), stateful_step_count=40,
    deadline=None, suppress_health_check=[HealthCheck.too_slow])
TestRingMachine = RingMachine.TestCase
