"""Faults injected on purpose: signal storms during waits, the fd limit reached in
the middle of a batch, files deleted while a batch reads them. (Registration refused
by RLIMIT_MEMLOCK, io_uring blocked by seccomp or the sysctl: test_reader.py and
test_unavailable.py.)"""
import array
import errno
import os
import random
import resource
import signal
import threading
import time

import pytest

import vyre_uring
from vyre_uring import BatchReader

from conftest import limit_leaving_free, open_fds


@pytest.fixture(params=["io_uring", "threads"])
def backend(request):
    return request.param


def make_files(root, count, size=3000, seed=0):
    rnd = random.Random(seed)
    paths = []
    for i in range(count):
        p = root / f"f{i}"
        p.write_bytes(rnd.randbytes(size))
        paths.append(str(p))
    return paths


class SignalStorm:
    """SIGALRM every `interval` seconds while active; counts the signals handled."""

    def __init__(self, interval=100e-6):
        self.interval = interval
        self.count = 0

    def _handler(self, signum, frame):
        self.count += 1

    def __enter__(self):
        self._old = signal.signal(signal.SIGALRM, self._handler)
        signal.setitimer(signal.ITIMER_REAL, self.interval, self.interval)
        return self

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._old)


def test_a_signal_every_100_us_does_not_break_long_waits():
    # Each signal interrupts io_uring_enter with EINTR; the wait must resume and
    # return exactly what completed, no sooner and no later than it should.
    with vyre_uring.Ring(8) as ring, SignalStorm() as storm:
        for round_ in range(5):
            ring.prep_timeout(0.2, user_data=round_)
            start = time.monotonic()
            done = ring.wait(1, timeout=10)
            elapsed = time.monotonic() - start
            assert [(c.user_data, c.res) for c in done] == [(round_, -errno.ETIME)]
            assert elapsed >= 0.19
    assert storm.count > 100            # the storm really ran through the waits


def test_a_signal_storm_during_batch_reads_loses_nothing(tmp_path, backend):
    paths = make_files(tmp_path, 2000)
    expected = [open(p, "rb").read() for p in paths]
    with BatchReader(backend=backend, queue_depth=16) as r, SignalStorm() as storm:
        for _ in range(3):
            assert r.read_files(paths) == expected
    assert storm.count > 0


@pytest.fixture
def fd_limit():
    """Lower RLIMIT_NOFILE's soft limit for the test; restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def lower(n):
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
    yield lower
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_fd_limit_reached_mid_batch_fails_no_file(tmp_path, backend, fd_limit):
    # 64 opens in flight with room for 20 fds: the reader opens fewer at a time and
    # retries (issue 9); no readable file fails with EMFILE.
    paths = make_files(tmp_path, 300)
    expected = [open(p, "rb").read() for p in paths]
    with BatchReader(backend=backend, queue_depth=64, workers=1) as r:
        r.read_files(paths[:1])
        before = open_fds()
        fd_limit(limit_leaving_free(20))
        try:
            out = r.read_files(paths, on_error="return")
        finally:
            fd_limit(4096)
        failed = [o for o in out if isinstance(o, OSError)]
        assert not failed, f"{len(failed)} files failed, first: {failed[0]!r}"
        assert out == expected
        assert open_fds() == before     # every fd the batch opened is closed again
        assert r.read_files(paths) == expected


NO_FD_FREE = """
import errno, json, os, resource, sys
from vyre_uring import BatchReader
import vyre_uring._uring_backend
backend, paths, table = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
vyre_uring._uring_backend.DIRECT_TABLE_RINGS = 1 if table == "direct table" else None
expected = [open(p, "rb").read() for p in paths]
with BatchReader(backend=backend, queue_depth=64, workers=1) as r:
    r.read_files(paths[:1])
    before = len(os.listdir("/proc/self/fd"))
    lowest = os.open("/dev/null", os.O_RDONLY)
    os.close(lowest)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, hard))    # not one fd free
    try:
        out = r.read_files(paths, on_error="return")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if r.stats()["direct_descriptors"]:
        assert out == expected          # the ring's file table needs no fd
    for p, o in zip(paths, out if not r.stats()["direct_descriptors"] else []):
        assert isinstance(o, OSError) and o.errno == errno.EMFILE, (p, o)
        assert o.filename == p, (p, o.filename)
    assert len(os.listdir("/proc/self/fd")) == before
    assert r.read_files(paths) == expected
print("ok")
"""


@pytest.mark.parametrize("table", ["direct table", "fds"])
def test_with_no_fd_free_each_file_fails_alone_with_emfile(tmp_path, backend, table):
    # EMFILE only when not a single fd can be opened: then each file fails alone and
    # the batch returns (a child process: a retry loop that never ends must fail
    # this test, not hang the suite). Files opened as direct descriptors need no fd:
    # they are all read.
    import json
    import subprocess
    import sys
    paths = make_files(tmp_path, 100)
    try:
        p = subprocess.run([sys.executable, "-c", NO_FD_FREE, backend, json.dumps(paths),
                            table],
                           capture_output=True, text=True, timeout=30, cwd=str(tmp_path))
    except subprocess.TimeoutExpired:
        pytest.fail("read_files with no fd free HANGS", pytrace=False)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-3000:]


def test_files_deleted_while_a_batch_reads_them(tmp_path, backend):
    # A file deleted before its open fails with ENOENT; one deleted after it still
    # reads whole (the open fd keeps it). Nothing else is possible.
    paths = make_files(tmp_path, 3000)
    expected = {p: open(p, "rb").read() for p in paths}
    order = list(paths)
    random.Random(5).shuffle(order)

    def delete():
        for p in order:
            os.unlink(p)
    t = threading.Thread(target=delete)
    with BatchReader(backend=backend) as r:
        t.start()
        out = r.read_files(paths, on_error="return")
        t.join()
    for p, o in zip(paths, out):
        if isinstance(o, OSError):
            assert o.errno == errno.ENOENT and o.filename == p
        else:
            assert o == expected[p]


def test_ring_waits_under_a_storm_reap_every_completion_once():
    batches = 300
    with vyre_uring.Ring(64) as ring, SignalStorm():
        seen = array.array("Q")
        ud = array.array("Q", bytes(8 * 64))
        res = array.array("i", bytes(4 * 64))
        for b in range(batches):
            ring.prep_nops(array.array("Q", range(b * 64, (b + 1) * 64)))
            got = 0
            while got < 64:
                n = ring.reap(ud, res, min_complete=1, timeout=5)
                assert not any(res[:n])
                seen.extend(ud[:n])
                got += n
        assert sorted(seen) == list(range(batches * 64))
