"""Issue 9: the reader's hardening, as regression tests through the public API only.

Each scenario runs in a child interpreter (`sys.executable -c`, under a subprocess
timeout and a faulthandler watchdog that dumps every thread's stack before it exits):
a scenario that hangs, crashes or corrupts memory fails its own test and nothing else.
Interrupts are SIGALRM from setitimer, whose handler raises `Interrupted`, a
BaseException like KeyboardInterrupt (so no `except Exception` in the reader can
swallow it). No timing is asserted: delays only pick *when* to interrupt, and every
pass criterion is a property of the data, the fds or the process.
"""
import array
import errno
import gc
import json
import mmap
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from vyre_uring import BatchReader, RingClosedError, read_files

from conftest import evict, limit_leaving_free, open_fds, run_as_nobody

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SENTINEL = 0xA5             # fills every caller buffer before a read

BACKENDS = ["io_uring", "threads"]
WORKERS = [1, 2]
backend_and_workers = pytest.mark.parametrize(
    "backend,workers", [(b, w) for b in BACKENDS for w in WORKERS],
    ids=[f"{b}-w{w}" for b in BACKENDS for w in WORKERS])


# ---- running a scenario in a child ------------------------------------------------------

_CHILD = """
import faulthandler, json, os, sys, traceback
sys.path.insert(0, {tests!r})
faulthandler.dump_traceback_later({watchdog}, exit=True)
import test_reader_hardening as t
try:
    out = getattr(t, {name!r})(**json.loads(sys.argv[1]))
except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
print("RESULT:" + json.dumps(out), flush=True)
os._exit(0)      # what close() must do is checked explicitly, not at shutdown
"""


def run_scenario(name, timeout=20, **kwargs):
    """Run the module-level function `name`(**kwargs) in a child interpreter; returns
    what it returned (JSON). Fails the test when the child raises (its traceback
    is the message), crashes, or does not finish within `timeout` seconds."""
    code = _CHILD.format(tests=TESTS_DIR, watchdog=max(1, timeout - 3), name=name)
    try:
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)],
                              capture_output=True, timeout=timeout, text=True)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{name}{kwargs}: HANG, killed after {timeout} s\n"
                    f"{(exc.stderr or '')[-3000:]}", pytrace=False)
    tail = proc.stderr[-4000:]
    if "STALL:" in proc.stderr or ("Timeout (" in proc.stderr and "Thread 0x" in proc.stderr):
        pytest.fail(f"{name}{kwargs}: HANG (a watchdog fired); stacks:\n{tail}",
                    pytrace=False)
    if proc.returncode != 0:
        how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
               else f"exit status {proc.returncode}")
        pytest.fail(f"{name}{kwargs}: child failed ({how}):\n{tail}", pytrace=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT:"):
            return json.loads(line[len("RESULT:"):])
    pytest.fail(f"{name}: no result from the child\n{proc.stdout[-2000:]}\n{tail}",
                pytrace=False)


def skip_unless(result):
    """A scenario that could not exercise what it guards says so: skip, not pass."""
    if result and result.get("skip"):
        pytest.skip(result["skip"])
    return result


# ---- helpers the scenarios share (they run in the child) --------------------------------

class Interrupted(BaseException):
    """Raised by our SIGALRM handler: Ctrl-C, without Ctrl-C's other effects."""


_NOT_RETURNED = object()
_last_beat = [time.monotonic()]


def beat():
    """The scenario made progress (see stall_guard)."""
    _last_beat[0] = time.monotonic()


def call_durations(fns):
    """How long each call takes uninterrupted: where to aim the interrupts."""
    durations = []
    for fn in fns:
        t0 = time.monotonic()
        fn()
        durations.append(time.monotonic() - t0)
    return durations


def within(seconds, fn, hang_message):
    """fn()'s result, run in a thread that must finish within `seconds` (a hang is a
    failure, not a stuck suite); an exception it raised fails with its repr."""
    result = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as exc:
            result["error"] = repr(exc)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), hang_message
    assert "error" not in result, result["error"]
    return result["value"]


def stall_guard(limit=5.0):
    """A hang fails fast: with no beat() for `limit` seconds, dump every thread's
    stack and exit (the parent reports a HANG)."""
    import faulthandler

    def watch():
        while True:
            time.sleep(0.2)
            if time.monotonic() - _last_beat[0] > limit:
                sys.stderr.write(f"STALL: no progress for {limit} s\n")
                sys.stderr.flush()
                faulthandler.dump_traceback(all_threads=True)
                os._exit(3)
    beat()
    threading.Thread(target=watch, daemon=True).start()


class Interrupter:
    """Calls fn() with SIGALRM raising Interrupted after `delay` seconds and then,
    with `interval`, again every `interval` seconds (a second Ctrl-C arriving while
    the first is being handled) until the call has ended.

    The handler raises only where the signal lands outside this file, that is in
    the reader (and what it calls): the harness around the call is never split by
    an interrupt, so it always disarms the timer and accounts for the call."""

    def __init__(self):
        self.armed = False
        signal.signal(signal.SIGALRM, self._handler)

    def _handler(self, signum, frame):
        if self.armed and (frame is None or frame.f_code.co_filename != __file__):
            raise Interrupted

    def call(self, fn, delay, interval=0.0):
        """(True, None) when the call was interrupted, else (False, its result)."""
        result = _NOT_RETURNED
        try:
            self.armed = True
            signal.setitimer(signal.ITIMER_REAL, max(delay, 1e-6), interval)
            result = fn()
        except Interrupted:
            pass
        finally:
            self.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        beat()
        if result is _NOT_RETURNED:
            return True, None
        return False, result


def _fd_targets():
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass                        # listdir's own
    return sorted(out)


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def _pattern(size, seed):
    return random.Random(seed).randbytes(size)


def _small_tree(root, count=40, seed=0):
    """(paths, expected): small files, every fifth one empty, plus size-0 /proc files
    (expected None: checked by _check_file_result)."""
    os.makedirs(root, exist_ok=True)
    rnd = random.Random(seed)
    paths, expected = [], []
    for i in range(count):
        data = b"" if i % 5 == 0 else rnd.randbytes(rnd.randrange(1, 9000))
        paths.append(_write(os.path.join(root, f"s{seed}-{i}"), data))
        expected.append(data)
    # Both smaller than the budgets the scenarios use (a size-0 file holding more
    # than a whole budget fails with EFBIG: tested on its own).
    for p in ("/proc/self/status", "/proc/self/stat"):
        paths.insert(len(paths) // 2, p)
        expected.insert(len(expected) // 2, None)
    return paths, expected


def _check_file_result(path, got, want):
    """The right bytes for a regular file; for the /proc files, whole and plausible."""
    assert isinstance(got, bytes), f"{path}: {got!r}"
    if want is not None:
        assert got == want, f"{path}: {len(got)} bytes, want {len(want)}"
    elif path.endswith("status"):
        assert got.startswith(b"Name:") and got.endswith(b"\n") and b"\nPid:" in got, \
            f"{path}: {got[:80]!r}"
    else:
        assert got and got.endswith(b"\n"), f"{path}: {got[:80]!r}"


def _check_files(paths, expected, out):
    assert len(out) == len(paths)
    for p, got, want in zip(paths, out, expected):
        _check_file_result(p, got, want)


def _check_iterated(paths, expected, items):
    seen = {}
    for index, path, got in items:
        assert index not in seen, f"index {index} yielded twice"
        assert paths[index] == path
        seen[index] = got
    assert sorted(seen) == list(range(len(paths))), "some files were never yielded"
    _check_files(paths, expected, [seen[i] for i in range(len(paths))])


def _check_only_sentinel_or_data(buf, buffer_offsets, offsets, lengths, data, what):
    """Every byte of each range's destination is the sentinel or the file's byte
    for that position: nothing from another file, another offset or a reused fd."""
    view = memoryview(buf)
    block = 4096
    empty = bytes([SENTINEL]) * block
    for i, (b, o, n) in enumerate(zip(buffer_offsets, offsets, lengths)):
        if view[b:b + n] == data[o:o + n]:
            continue
        for s in range(0, n, block):        # pages are copied whole or not at all,
            m = min(block, n - s)           # but for the one being copied
            got = view[b + s:b + s + m].tobytes()
            want = data[o + s:o + s + m]
            if got == want or got == empty[:m]:
                continue
            for k, (g, w) in enumerate(zip(got, want)):
                assert g == SENTINEL or g == w, (
                    f"{what}: range {i} (file offset {o}) byte {s + k} is {g:#x}: neither "
                    f"the sentinel {SENTINEL:#x} nor the file's byte {w:#x}")


def _partly_filled(buf, buffer_offsets, lengths, data_offsets, data):
    """(ranges read whole, ranges untouched): did the interrupt land mid-call?"""
    view = memoryview(buf)
    whole = untouched = 0
    for b, o, n in zip(buffer_offsets, data_offsets, lengths):
        got = view[b:b + n].tobytes()
        if got == data[o:o + n]:
            whole += 1
        elif got == bytes([SENTINEL]) * n:
            untouched += 1
    return whole, untouched


# ---- item 3: values read twice, or changing under the call ------------------------------

GUARD = 64 << 10


class Fickle:
    """An int whose __index__ answers `first` once, then a different bad value on
    every later call."""

    def __init__(self, first, bad):
        self.first, self.bad, self.calls = first, bad, 0

    def __index__(self):
        self.calls += 1
        if self.calls == 1:
            return self.first
        return self.bad[self.calls % len(self.bad)]


def scenario_mutated_values(tmp, backend, workers, calls=3000):
    n, length = 64, 1024
    dest_len = n * length
    data = _pattern(1 << 20, 3)
    path = _write(os.path.join(tmp, "data"), data)
    rnd = random.Random(7)
    offsets = [rnd.randrange(0, len(data) - length) for _ in range(n)]
    good = list(range(0, dest_len, length))
    rnd.shuffle(good)
    # Into the guard after, across the end, into the guard before.
    bad_boffs = [dest_len + 4096, dest_len - length // 2, dest_len, -length, -1,
                 (1 << 40)]
    bad_lengths = [length * 40, GUARD, dest_len + 1, 1 << 40, -1]

    mm = mmap.mmap(-1, GUARD + dest_len + GUARD)
    fill = bytes([SENTINEL]) * len(mm)
    outcome = {"ok": 0, "ValueError": 0}

    def guards_intact(what):
        assert mm[:GUARD] == fill[:GUARD], f"{what}: bytes BEFORE the destination written"
        assert mm[GUARD + dest_len:] == fill[:GUARD], \
            f"{what}: bytes AFTER the destination written"

    def check_success(counts, boffs, lens, what):
        assert counts == lens, f"{what}: succeeded with counts {counts[:8]}..."
        view = mm[GUARD:GUARD + dest_len]
        for b, o, m in zip(boffs, offsets, lens):
            assert view[b:b + m] == data[o:o + m], \
                f"{what}: succeeded but a range is not where the validated values put it"

    def attempt(r, lens_arg, boffs_arg, what):
        """One read_ranges_into: it raises ValueError, or succeeds with the values
        that were all in range at once (the good ones); the guards stay intact."""
        mm[:] = fill
        dest = memoryview(mm)[GUARD:GUARD + dest_len]
        try:
            counts = r.read_ranges_into(path, dest, offsets, lens_arg, boffs_arg)
        except ValueError:
            outcome["ValueError"] += 1
            counts = None
        finally:
            dest.release()
        guards_intact(what)
        if counts is not None:
            outcome["ok"] += 1
            check_success(counts, good, [length] * n, what)

    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)          # hand the GIL over as often as possible
    try:
        with BatchReader(backend=backend, workers=workers) as r:
            # (a) the caller's array.array, rewritten by another thread meanwhile
            boffs = array.array("q", good)
            stop = threading.Event()

            def mutate():
                k = 0
                while not stop.is_set():
                    bad = bad_boffs[k % len(bad_boffs)]
                    for i in range(n):
                        boffs[i] = bad
                    for i in range(n):
                        boffs[i] = good[i]
                    k += 1
            t = threading.Thread(target=mutate, daemon=True)
            t.start()
            try:
                for c in range(calls):
                    attempt(r, [length] * n, boffs, f"array rewritten meanwhile, call {c}")
            finally:
                stop.set()
                t.join()

            # (b) buffer_offsets, then lengths, whose __index__ answers differently
            # on each call: the first answer is valid, every later one is not.
            for which in ("buffer_offsets", "lengths"):
                for c in range(50):
                    if which == "buffer_offsets":
                        boffs_arg = [Fickle(g, bad_boffs) for g in good]
                        lens_arg = [length] * n
                    else:
                        boffs_arg = good
                        lens_arg = [Fickle(length, bad_lengths) for _ in range(n)]
                    attempt(r, lens_arg, boffs_arg, f"fickle __index__ in {which}, call {c}")
    finally:
        sys.setswitchinterval(old_switch)
    mm.close()
    return outcome


@backend_and_workers
def test_values_changing_during_read_ranges_into_never_write_outside_the_buffer(
        tmp_path, backend, workers):
    """Guards item 3: buffer_offsets/lengths changing under the call (another thread
    rewriting the caller's array, or a fickle __index__) never write outside the
    destination, and a call that succeeds used the values it validated."""
    run_scenario("scenario_mutated_values", timeout=30, tmp=str(tmp_path), backend=backend,
                 workers=workers)


# ---- item 4: reads that continue after the call raised ----------------------------------

def scenario_interrupted_ranges_into(tmp, backend, workers, size_mib=64, wanted=5,
                                     attempts=20):
    stall_guard()
    size = size_mib << 20
    chunk = 512 << 10               # long ranges: a range being read when the call
    data_a = _pattern(size, 41)     # raised goes on for a while
    path_a = _write(os.path.join(tmp, "a"), data_a)
    # The same size, another pattern: a read through a reused fd number shows.
    path_b = _write(os.path.join(tmp, "b"), _pattern(size, 42))
    offsets = list(range(0, size, chunk))
    random.Random(4).shuffle(offsets)
    lengths = [chunk] * len(offsets)
    boffs = list(range(0, size, chunk))           # packed, in call order
    expected = b"".join(data_a[o:o + chunk] for o in offsets)
    fill = bytes([SENTINEL]) * size
    rnd = random.Random(8)
    intr = Interrupter()
    mid_call = interrupted_calls = 0
    try:
        # A shallow queue: most ranges have not begun when an interrupt lands.
        with BatchReader(backend=backend, workers=workers, queue_depth=4) as r:
            buf = bytearray(fill)
            evict(path_a)
            t0 = time.monotonic()
            assert r.read_ranges_into(path_a, buf, offsets, lengths) == lengths
            full = time.monotonic() - t0              # only to pick when to interrupt
            assert buf == expected
            for attempt in range(attempts):
                # The fd numbers the reader will take are warm: a reused one shows.
                os.close(os.open(path_b, os.O_RDONLY))
                buf = bytearray(fill)
                evict(path_a)
                delay = full * rnd.uniform(0.1, 0.8)
                interrupted, counts = intr.call(
                    lambda: r.read_ranges_into(path_a, buf, offsets, lengths), delay)
                if not interrupted:
                    assert counts == lengths and buf == expected, "completed call, wrong data"
                    continue
                interrupted_calls += 1
                fd_b = os.open(path_b, os.O_RDONLY)   # likely the number the call just used
                try:
                    # Reads copy a range from its start: a range whose first bytes are
                    # still the sentinel now had not begun when the call raised.
                    not_begun = [i for i, b in enumerate(boffs) if buf[b:b + 16] == fill[:16]]
                    snapshot = bytes(buf)
                    for _ in range(20):
                        os.pread(fd_b, 1 << 16, 0)
                        time.sleep(0.01)
                    after = bytes(buf)
                finally:
                    os.close(fd_b)
                late = [i for i in not_begun if buf[boffs[i]:boffs[i] + chunk] != fill[:chunk]]
                changed = [k // chunk for k in range(0, size, chunk)
                           if snapshot[k:k + chunk] != after[k:k + chunk]]
                assert not late and not changed, (
                    f"attempt {attempt}: the caller's buffer was written AFTER read_ranges_into "
                    f"raised (interrupted after {delay * 1e3:.1f} ms): {len(late)} ranges not "
                    f"begun at the raise were written later, {len(changed)} ranges changed "
                    f"after the snapshot")
                _check_only_sentinel_or_data(buf, boffs, offsets, lengths, data_a,
                                             f"attempt {attempt}, after the interrupt")
                if not_begun:                   # the interrupt landed before the end
                    mid_call += 1
                    if mid_call >= wanted:
                        break
                beat()
            # Still usable, and right.
            buf = bytearray(fill)
            assert r.read_ranges_into(path_a, buf, offsets, lengths) == lengths
            assert buf == expected
    finally:
        for p in (path_a, path_b):     # 128 MiB: never left behind
            os.unlink(p)
    if not mid_call:
        return {"skip": f"no interrupt landed mid-call in {attempts} attempts "
                        f"({interrupted_calls} interrupted)"}
    return {"mid_call": mid_call, "interrupted": interrupted_calls}


@backend_and_workers
def test_nothing_writes_into_the_callers_buffer_after_an_interrupted_call(
        tmp_path, backend, workers):
    """Guards item 4: when read_ranges_into raises (Ctrl-C), none of its reads still
    writes into the caller's buffer, and every byte written came from the file asked."""
    skip_unless(run_scenario("scenario_interrupted_ranges_into", timeout=40,
                             tmp=str(tmp_path), backend=backend, workers=workers))


# ---- item 5: a ring lost for ever ------------------------------------------------------

def scenario_ring_lost(tmp, calls=2400):
    stall_guard()
    paths, expected = _small_tree(os.path.join(tmp, "t"), count=12)
    big = _pattern(1 << 20, 5)
    big_path = _write(os.path.join(tmp, "big"), big)
    offs = list(range(0, 1 << 20, 8192))
    lens = [4096] * len(offs)
    want_ranges = [big[o:o + 4096] for o in offs]
    rnd = random.Random(9)
    intr = Interrupter()
    r = BatchReader(backend="io_uring", workers=1)
    fns = [lambda: r.read_files(paths, on_error="return"),
           lambda: r.read_ranges(big_path, offs, lens)]
    durations = call_durations(fns)
    interrupted_calls = 0
    for c in range(calls):
        k = c % 2
        # Every fourth call a storm: later signals land while the first unwinds.
        interval = rnd.uniform(10e-6, 50e-6) if c % 4 >= 2 else 0.0
        interrupted, out = intr.call(fns[k], rnd.uniform(0, 1.3) * durations[k], interval)
        interrupted_calls += interrupted
        if not interrupted:
            if k == 0:
                _check_files(paths, expected, out)
            else:
                assert out == want_ranges, f"call {c}: read_ranges returned wrong data"
    result = within(5, lambda: {"files": r.read_files(paths),
                                "ranges": r.read_ranges(big_path, offs, lens)},
                    f"after {calls} calls ({interrupted_calls} interrupted) a normal call "
                    f"HANGS: the ring was lost")
    _check_files(paths, expected, result["files"])
    assert result["ranges"] == want_ranges
    r.close()
    if interrupted_calls < calls // 10:
        return {"skip": f"only {interrupted_calls} of {calls} calls were interrupted"}
    return {"interrupted": interrupted_calls}


def test_a_ring_is_never_lost_to_an_interrupt(tmp_path):
    """Guards item 5: thousands of calls interrupted at random moments never leave
    BatchReader(workers=1) without its ring: the next normal call completes."""
    skip_unless(run_scenario("scenario_ring_lost", timeout=40, tmp=str(tmp_path)))


# ---- item 6: fds leaked by interrupted calls --------------------------------------------

def scenario_fd_leak(tmp, backend, workers, calls=300):
    stall_guard()
    paths, expected = _small_tree(os.path.join(tmp, "t"), count=30)
    rnd = random.Random(11)
    intr = Interrupter()
    gc.collect()
    before = open_fds()
    r = BatchReader(backend=backend, workers=workers, queue_depth=8)
    fns = [lambda: r.read_files(paths, on_error="return"),
           lambda: list(r.iter_files(paths, max_bytes_in_flight=16 << 10))]
    durations = call_durations(fns)
    interrupted_calls = 0
    for c in range(calls):
        k = c % 2
        interrupted, out = intr.call(fns[k], rnd.uniform(0, 1.2) * durations[k])
        interrupted_calls += interrupted
        if not interrupted:
            (_check_files if k == 0 else _check_iterated)(paths, expected, out)
    r.close()
    gc.collect()
    after = open_fds()
    assert after == before, (f"{after - before} fds leaked by {interrupted_calls} "
                             f"interrupted calls (open now: {_fd_targets()})")
    if interrupted_calls < calls // 10:
        return {"skip": f"only {interrupted_calls} of {calls} calls were interrupted"}
    return {"interrupted": interrupted_calls}


@backend_and_workers
def test_interrupted_calls_on_size_0_files_leak_no_fd(tmp_path, backend, workers):
    """Guards item 6: read_files/iter_files interrupted at random over empty files and
    /proc files leave no fd open once the reader is closed."""
    skip_unless(run_scenario("scenario_fd_leak", timeout=30, tmp=str(tmp_path),
                             backend=backend, workers=workers))


# ---- stress: items 4, 5, 6 and 15 together ----------------------------------------------

def scenario_stress(tmp, backend, workers, iterations=320, storm_every=2):
    stall_guard()
    paths, expected = _small_tree(os.path.join(tmp, "t"), count=24)
    big = _pattern(4 << 20, 13)
    big_path = _write(os.path.join(tmp, "big"), big)
    other = _write(os.path.join(tmp, "other"), _pattern(1 << 20, 14))
    rnd = random.Random(12)
    offs = [rnd.randrange(0, len(big) - 4096) for _ in range(256)]
    lens = [rnd.randrange(1, 4097) for _ in offs]
    boffs = [4096 * i for i in range(len(offs))]
    want_ranges = [big[o:o + n] for o, n in zip(offs, lens)]
    fill = bytes([SENTINEL]) * (4096 * len(offs))
    intr = Interrupter()
    gc.collect()
    before = open_fds()
    r = BatchReader(backend=backend, workers=workers, queue_depth=16)
    pending = []            # (buffer, snapshot, call) of interrupted read_ranges_into

    def check_pending(all_of_them):
        while pending and (all_of_them or len(pending) > 8):
            buf, snap, c = pending.pop(0)
            assert bytes(buf) == snap, \
                f"call {c}: the caller's buffer changed after read_ranges_into raised"
            _check_only_sentinel_or_data(buf, boffs, offs, lens, big, f"call {c}")

    def into():
        buf = bytearray(fill)
        current[0] = buf
        return r.read_ranges_into(big_path, buf, offs, lens, boffs), buf

    current = [None]
    fns = [lambda: r.read_files(paths, on_error="return"),
           lambda: list(r.iter_files(paths, max_bytes_in_flight=16 << 10)),
           lambda: r.read_ranges(big_path, offs, lens),
           into]

    def check(k, out, c):
        if k == 0:
            _check_files(paths, expected, out)
        elif k == 1:
            _check_iterated(paths, expected, out)
        elif k == 2:
            assert out == want_ranges, f"call {c}: read_ranges returned wrong data"
        else:
            counts, buf = out
            assert counts == lens, f"call {c}: read_ranges_into counts"
            _check_only_sentinel_or_data(buf, boffs, offs, lens, big, f"call {c}")
            assert all(buf[b:b + n] == w for b, n, w in zip(boffs, lens, want_ranges))

    durations = []
    for k, fn in enumerate(fns):
        t0 = time.monotonic()
        check(k, fn(), -1)
        durations.append(time.monotonic() - t0)
    counts = [0, 0]
    for c in range(iterations):
        k = c % 4
        current[0] = None
        interval = rnd.uniform(20e-6, 200e-6) if c % storm_every == 0 else 0.0
        interrupted, out = intr.call(fns[k], rnd.uniform(0, 1.2) * durations[k], interval)
        counts[interrupted] += 1
        if interrupted:
            if k == 3 and current[0] is not None:
                pending.append((current[0], bytes(current[0]), c))
                os.close(os.open(other, os.O_RDONLY))
        else:
            check(k, out, c)
        check_pending(False)
    time.sleep(0.1)
    check_pending(True)
    for k, fn in enumerate(fns):               # still usable, and right
        check(k, fn(), "final")
    r.close()
    gc.collect()
    after = open_fds()
    assert after == before, (f"{after - before} fds leaked by {counts[1]} interrupted calls "
                             f"(open now: {_fd_targets()})")
    if counts[1] < iterations // 10:
        return {"skip": f"only {counts[1]} of {iterations} calls were interrupted"}
    return {"completed": counts[0], "interrupted": counts[1]}


@backend_and_workers
def test_stress_interrupts_during_every_reader_call(tmp_path, backend, workers):
    """Guards items 4, 5, 6 and 15 together: every kind of call interrupted at random
    (some by signal storms) leaks no fd, returns right data when it completes, leaves
    the caller's buffer alone once it ended, and leaves the reader usable and closable."""
    skip_unless(run_scenario("scenario_stress", timeout=45, tmp=str(tmp_path),
                             backend=backend, workers=workers))


def scenario_repeated_interrupts(tmp, backend, workers, calls=200):
    stall_guard()
    paths, expected = _small_tree(os.path.join(tmp, "t"), count=60)
    rnd = random.Random(15)
    intr = Interrupter()
    r = BatchReader(backend=backend, workers=workers, queue_depth=8)
    t0 = time.monotonic()
    r.read_files(paths)
    full = time.monotonic() - t0
    interrupted_calls = 0
    for c in range(calls):
        # A signal every 10-50 us from a random moment on: the second arrives while
        # the first is still unwinding through the reader's cleanup.
        interrupted, out = intr.call(lambda: r.read_files(paths, on_error="return"),
                                     rnd.uniform(0, 1.0) * full, rnd.uniform(10e-6, 50e-6))
        interrupted_calls += interrupted
        if not interrupted:
            _check_files(paths, expected, out)
    _check_files(paths, expected, r.read_files(paths))
    done = threading.Event()

    def close():
        r.close()
        done.set()
    threading.Thread(target=close, daemon=True).start()
    assert done.wait(10), "close() HANGS after repeated interrupts"
    return {"interrupted": interrupted_calls}


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_interrupts_do_not_break_the_pool(tmp_path, backend):
    """Guards item 15: signals arriving while an interrupt is being handled never
    break the reader (no 'cannot release un-acquired lock'), and close() returns."""
    run_scenario("scenario_repeated_interrupts", timeout=30, tmp=str(tmp_path),
                 backend=backend, workers=2)


# ---- item 7: one reader shared by threads -----------------------------------------------

def scenario_shared(tmp, backend, workers, rounds=25, threads=4):
    paths, expected = _small_tree(os.path.join(tmp, "t"), count=40)
    big = _pattern(2 << 20, 17)
    big_path = _write(os.path.join(tmp, "big"), big)
    offs = list(range(0, len(big) - 8192, 5000))
    lens = [4096] * len(offs)
    want = [big[o:o + 4096] for o in offs]
    errors = []
    calls = [0]
    r = BatchReader(backend=backend, workers=workers, queue_depth=16)

    def worker(t):
        try:
            for k in range(rounds * 4):
                kind = (k + t) % 4
                if kind == 0:
                    _check_files(paths, expected, r.read_files(paths))
                elif kind == 1:
                    assert r.read_ranges(big_path, offs, lens) == want
                elif kind == 2:
                    buf = bytearray(4096 * len(offs))
                    assert r.read_ranges_into(big_path, buf, offs, lens) == lens
                    assert bytes(buf) == b"".join(want)
                else:
                    _check_iterated(paths, expected,
                                    list(r.iter_files(paths, max_bytes_in_flight=32 << 10)))
                calls[0] += 1
        except BaseException as exc:
            errors.append(f"thread {t}: {exc!r}")
    ts = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + 20
    for t in ts:
        t.join(max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in ts), f"shared reader HANGS ({calls[0]} calls done)"
    assert not errors, f"{len(errors)} of {threads} threads failed: {errors[:4]}"
    r.close()
    return {"calls": calls[0]}


@backend_and_workers
def test_one_reader_shared_by_four_threads(tmp_path, backend, workers):
    """Guards item 7: 4 threads calling every method of one BatchReader at once all
    get right data (no RingBusyError, no hang)."""
    run_scenario("scenario_shared", timeout=30, tmp=str(tmp_path), backend=backend,
                 workers=workers)


# ---- item 8: fork ----------------------------------------------------------------------

def _child_reads(r, paths, expected, big_path, offs, want):
    _check_files(paths, expected, r.read_files(paths))
    assert r.read_ranges(big_path, offs, [4096] * len(offs)) == want
    _check_iterated(paths, expected, list(r.iter_files(paths)))
    r.close()


def _mp_target(r, paths, expected, big_path, offs, want, conn):
    try:
        _child_reads(r, paths, expected, big_path, offs, want)
        conn.send("ok")
    except BaseException as exc:
        conn.send(f"the child failed: {exc!r}")


def scenario_fork(tmp, backend, workers):
    import multiprocessing
    paths, expected = _small_tree(os.path.join(tmp, "t"), count=30)
    big = _pattern(32 << 20, 19)
    big_path = _write(os.path.join(tmp, "big"), big)
    offs = list(range(0, len(big) - 4096, 1 << 16))
    want = [big[o:o + 4096] for o in offs]
    failures = []
    r = BatchReader(backend=backend, workers=workers)
    _check_files(paths, expected, r.read_files(paths))      # rings and threads in use

    def with_os_fork(case, child=lambda: _child_reads(r, paths, expected, big_path, offs,
                                                      want)):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.alarm(15)                # the parent kills it sooner anyway
                child()
                code = 0
            except BaseException as exc:
                os.write(2, f"{case}: the child failed: {exc!r}\n".encode())
            finally:
                os._exit(code)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                if os.waitstatus_to_exitcode(status) != 0:
                    failures.append(f"{case}: child exit {os.waitstatus_to_exitcode(status)}")
                return
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        failures.append(f"{case}: the child HANGS")

    def with_multiprocessing(case):
        ctx = multiprocessing.get_context("fork")
        ours, theirs = ctx.Pipe()
        p = ctx.Process(target=_mp_target,
                        args=(r, paths, expected, big_path, offs, want, theirs))
        p.start()
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()
            failures.append(f"{case}: the child HANGS")
        elif not ours.poll(1):
            failures.append(f"{case}: the child died, exit {p.exitcode}")
        else:
            msg = ours.recv()
            if msg != "ok":
                failures.append(f"{case}: {msg}")

    for fork in (with_os_fork, with_multiprocessing):
        fork(f"{fork.__name__}, reader idle")
        # A parent thread mid-read at the moment of fork.
        stop, started = threading.Event(), threading.Event()
        reads = [0]

        def loop():
            while not stop.is_set():
                r.read_ranges(big_path, list(range(0, len(big), 4096)),
                              [4096] * (len(big) // 4096))
                reads[0] += 1
                started.set()
        t = threading.Thread(target=loop, daemon=True)
        t.start()
        assert started.wait(10)
        fork(f"{fork.__name__}, a parent thread mid-read")
        stop.set()
        t.join(10)
        assert not t.is_alive(), "the parent's reading thread HANGS after the fork"
    # A child that closes the reader before using it: the parent's rings let go
    # there, and the reader stays closed, as in the parent.
    def close_then_read():
        r.close()
        try:
            r.read_files(paths)
        except (RingClosedError, RuntimeError):
            return
        raise AssertionError("a reader closed in the child read files")
    with_os_fork("with_os_fork, closed in the child before any use", close_then_read)
    _check_files(paths, expected, r.read_files(paths))      # the parent's still works
    r.close()
    assert not failures, failures
    return {}


@backend_and_workers
def test_a_reader_works_in_a_forked_child(tmp_path, backend, workers):
    """Guards item 8: a BatchReader created before os.fork/multiprocessing('fork')
    works in the child, also when a parent thread was mid-read at the fork."""
    run_scenario("scenario_fork", timeout=45, tmp=str(tmp_path), backend=backend,
                 workers=workers)


# ---- item 9: the byte budget for files that report size 0 --------------------------------

def scenario_budget_size0(tmp, backend, workers):
    import tracemalloc
    budget = 1 << 20
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) << 10 for line in f if line.startswith("VmSize:"))
    # A ceiling far above the budget keeps a runaway read from eating the machine.
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    ceiling = vm + (1536 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (ceiling if hard == resource.RLIM_INFINITY
                                            else min(ceiling, hard), hard))
    empty = _write(os.path.join(tmp, "empty"), b"")
    small = _write(os.path.join(tmp, "small"), b"x" * 5000)
    paths = ["/proc/self/pagemap", "/proc/self/status", empty, small]
    with BatchReader(backend=backend, workers=workers) as r:
        tracemalloc.start()
        try:
            got = {}
            for index, path, result in r.iter_files(paths, max_bytes_in_flight=budget):
                got[index] = result
                del result
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    err = got.get(0)
    assert isinstance(err, OSError) and err.errno == errno.EFBIG, \
        f"/proc/self/pagemap gave {type(err).__name__}: {str(err)[:200]}, not EFBIG"
    assert err.filename == "/proc/self/pagemap", err.filename
    _check_file_result(paths[1], got[1], None)
    assert got[2] == b"" and got[3] == b"x" * 5000
    assert peak < budget + (4 << 20), f"peak {peak >> 20} MiB for a 1 MiB budget"
    return {"peak": peak}


@pytest.mark.parametrize("backend", BACKENDS)
def test_iter_files_budget_holds_for_size_0_files(tmp_path, backend):
    """Guards item 9: a size-0 file holding more than the whole budget
    (/proc/self/pagemap) fails with EFBIG instead of growing memory; small size-0
    files are read whole."""
    run_scenario("scenario_budget_size0", timeout=30, tmp=str(tmp_path), backend=backend,
                 workers=2)


# ---- item 10: near the fd limit ---------------------------------------------------------

def scenario_fd_limit(tmp, backend, workers, free, count=300, table="fds", slow=False):
    import vyre_uring._uring_backend
    if slow:        # each thread holds its fd a while: they then meet the limit at once
        from vyre_uring._threads_backend import ThreadsBackend
        read_open = ThreadsBackend._read_open

        def held(*args):
            time.sleep(0.002)
            return read_open(*args)
        ThreadsBackend._read_open = held
    vyre_uring._uring_backend.DIRECT_TABLE_RINGS = 1 if table == "direct table" else None
    root = os.path.join(tmp, "t")
    os.makedirs(root)
    rnd = random.Random(21)
    expected = [rnd.randbytes(rnd.randrange(1, 5000)) for _ in range(count)]
    paths = [_write(os.path.join(root, f"f{i}"), d) for i, d in enumerate(expected)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with BatchReader(backend=backend, queue_depth=64, workers=workers) as r:
        assert r.read_files(paths) == expected        # threads and rings started
        gc.collect()
        before = open_fds()
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit_leaving_free(free), hard))
        try:
            out = r.read_files(paths, on_error="return")
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert open_fds() == before, "fds left open by the batch"
        failed = [(i, o) for i, o in enumerate(out) if isinstance(o, BaseException)]
        if free or r.stats()["direct_descriptors"]:     # (the ring's table: no fd)
            assert not failed, (f"{len(failed)} of {count} files failed with {free} fds "
                                f"free; first: {failed[0][1]!r}")
            assert out == expected
        else:
            assert len(failed) == count, f"{count - len(failed)} files read with no fd free?"
            for i, o in failed:
                assert isinstance(o, OSError) and o.errno == errno.EMFILE, repr(o)
                assert o.filename == paths[i]
        assert r.read_files(paths) == expected        # and the reader is still fine
    return {}


@backend_and_workers
def test_read_files_with_a_few_fds_free_reads_every_file(tmp_path, backend, workers):
    """Guards item 10: with only 8 fds free, 300 files at queue_depth=64 are all read
    right (the io_uring backend lowers its opens in flight): no spurious EMFILE."""
    run_scenario("scenario_fd_limit", timeout=30, tmp=str(tmp_path), backend=backend,
                 workers=workers, free=8)


def test_threads_outnumbering_the_free_fds_read_every_file(tmp_path):
    """32 threads (as files on FUSE get) with 3 fds free: an open at the limit waits
    for the other threads to close theirs, and no file fails."""
    run_scenario("scenario_fd_limit", timeout=30, tmp=str(tmp_path), backend="threads",
                 workers=32, free=3, slow=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("table", ["direct table", "fds"])
def test_read_files_with_no_fd_free_fails_each_file_alone(tmp_path, backend, table):
    """Guards item 10's limit: with not a single fd free, each file fails alone with
    EMFILE (naming it) and the batch still returns; as direct descriptors (no fd
    needed) every file is read."""
    run_scenario("scenario_fd_limit", timeout=30, tmp=str(tmp_path), backend=backend,
                 workers=1, free=0, table=table)


# ---- item 11: a small RLIMIT_MEMLOCK --------------------------------------------------

def _as_nobody(body, memlock):
    """run_as_nobody(body), with a watchdog: a body that hangs fails, never hangs the
    suite. (Python itself cannot be exec'd by nobody where it lives under /root, so
    everything runs in the forked child, imported beforehand.)"""
    # Import now what the body will need: nobody cannot read the stdlib here.
    import contextlib                     # noqa: F401
    import faulthandler
    import io                             # noqa: F401
    import queue                          # noqa: F401
    import warnings                       # noqa: F401
    import vyre_uring._workers            # noqa: F401
    import vyre_uring._threads_backend    # noqa: F401
    import vyre_uring._uring_backend      # noqa: F401
    import vyre_uring.cli                 # noqa: F401
    _quiet_cli(["read", __file__])        # and whatever the CLI imports lazily
    for backend in BACKENDS:
        with BatchReader(backend=backend) as r:
            r.read_files([__file__])

    def guarded():
        faulthandler.dump_traceback_later(20, exit=True)
        try:
            return body()
        finally:
            faulthandler.cancel_dump_traceback_later()
    try:
        out = run_as_nobody(guarded, memlock=memlock)
    except json.JSONDecodeError:
        pytest.fail("the child running as nobody HANGS or died without a result",
                    pytrace=False)
    if "setup" in out:
        pytest.skip(out["setup"])
    assert "error" not in out, out
    return out


def _quiet_cli(argv):
    """vyre-uring's exit status for argv, run in-process with its output discarded."""
    import contextlib
    import io
    from vyre_uring import cli
    out = io.TextIOWrapper(io.BytesIO(), write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), write_through=True)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(argv)
    return status, err.buffer.getvalue().decode(errors="replace")[-1000:]


@pytest.fixture
def nobody_files():
    """Files nobody can read (pytest's tmp_path is root-only)."""
    root = tempfile.mkdtemp(prefix="vyre-hardening-")
    os.chmod(root, 0o755)
    rnd = random.Random(23)
    paths, expected = [], []
    for i in range(50):
        data = rnd.randbytes(rnd.randrange(0, 20_000))
        p = _write(os.path.join(root, f"f{i}"), data)
        os.chmod(p, 0o644)
        paths.append(p)
        expected.append(data)
    yield paths, expected
    shutil.rmtree(root)


@pytest.mark.parametrize("memlock", [0, 4096], ids=["memlock-0", "memlock-4KiB"])
def test_auto_and_the_cli_work_with_a_tiny_memlock(nobody_files, memlock):
    """Guards item 11: with RLIMIT_MEMLOCK 0 or 4 KiB, backend="auto" reads (io_uring,
    or threads with the reason in stats()) and `vyre-uring read FILE` exits 0."""
    import warnings
    paths, expected = nobody_files

    def body():
        out = {}
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with BatchReader(backend="auto") as r:
                    out["ok"] = r.read_files(paths) == expected
                    stats = r.stats()
            out.update(backend=stats["backend"], fallback_reason=stats["fallback_reason"],
                       warned=[str(w.message) for w in caught
                               if issubclass(w.category, RuntimeWarning)])
        except Exception as exc:
            out["ok"] = f"backend='auto' raised {exc!r}"
        try:
            out["cli"] = list(_quiet_cli(["read", paths[1]]))
        except Exception as exc:
            out["cli"] = [f"raised {exc!r}", ""]
        return out
    out = _as_nobody(body, memlock)
    assert out["cli"][0] == 0, f"vyre-uring read exited {out['cli'][0]}: {out['cli'][1]}"
    assert out["ok"] is True, out
    if out["backend"] == "threads":
        # (The RuntimeWarning comes once per process: this forked child may inherit
        # a process that has already warned, so only the reason is required here.)
        assert out["fallback_reason"], f"fell back to threads without saying why: {out}"
    else:
        assert out["fallback_reason"] is None, out


@pytest.mark.parametrize("memlock,times,depth", [(64 << 10, 30, None), (8 << 20, 100, 4096)],
                         ids=["memlock-64KiB-30-calls", "memlock-8MiB-100-calls-depth-4096"])
def test_back_to_back_reads_with_a_small_memlock(nobody_files, memlock, times, depth):
    """Guards item 11: back-to-back module-level read_files() calls never run out of
    locked memory (30 calls at 64 KiB; 100 at queue_depth=4096 under 8 MiB)."""
    paths, expected = nobody_files

    def body():
        kw = {} if depth is None else {"queue_depth": depth}
        for i in range(times):
            try:
                got = read_files(paths, **kw)
            except Exception as exc:
                return {"failed_at": i, "error_": repr(exc)}
            if got != expected:
                return {"failed_at": i, "error_": "wrong data"}
        return {"ok": times}
    out = _as_nobody(body, memlock)
    assert out == {"ok": times}, out


# ---- item 14: re-entrancy ---------------------------------------------------------------

def scenario_reentrant(tmp, backend, workers):
    paths, expected = _small_tree(os.path.join(tmp, "t"), count=200)
    other = _write(os.path.join(tmp, "other"), b"inner read\n" * 100)
    r = BatchReader(backend=backend, workers=workers, queue_depth=8)
    inner = []

    def progress(done, total, nbytes):
        inner.append(r.read_files([other]))
    result = within(6, lambda: {
        "files": r.read_files(paths, progress=progress),
        "iter": list(r.iter_files(paths, progress=progress, max_bytes_in_flight=64 << 10))},
        "DEADLOCK: a progress callback calling the same reader never returned")
    _check_files(paths, expected, result["files"])
    _check_iterated(paths, expected, result["iter"])
    assert inner and all(x == [b"inner read\n" * 100] for x in inner)
    r.close()
    return {"inner_calls": len(inner)}


@backend_and_workers
def test_a_progress_callback_may_call_the_same_reader(tmp_path, backend, workers):
    """Guards item 14: a progress callback that reads through the same reader gets
    right data and deadlocks nothing."""
    run_scenario("scenario_reentrant", timeout=20, tmp=str(tmp_path), backend=backend,
                 workers=workers)


@pytest.mark.parametrize("call", ["read_files", "read_ranges", "read_path_ranges"])
def test_results_being_read_into_are_not_reachable_through_gc(tmp_path, call):
    # A bytes result the kernel is still writing must not be reachable by Python
    # code while a call runs: another thread walking gc.get_objects() and their
    # referents (a debugger, a memory profiler) would see it half-written, and
    # could hash it (bytes cache their hash). Files of 4 MiB of 0xAB each are read
    # into their bytes directly, over and over; a thread looks at every bytes
    # object of that size it can reach and checks it is whole.
    size, files = 4 << 20, 4
    paths = []
    for k in range(files):
        paths.append(str(tmp_path / f"f{k}"))
        with open(paths[-1], "wb") as f:
            f.write(b"\xab" * size)
    seen, torn, stop = [0], [], threading.Event()

    def look():
        while not stop.is_set():
            for obj in gc.get_objects():
                for ref in gc.get_referents(obj):
                    if type(ref) is bytes and len(ref) == size:
                        seen[0] += 1
                        if ref.count(0xAB) != size:
                            torn.append(type(obj).__name__)     # (not obj: kept alive)
    with BatchReader(backend="io_uring", workers=2) as r:
        reads = {"read_files": lambda: r.read_files(paths),
                 "read_ranges": lambda: r.read_ranges(paths[0], [0, 0], [size, size]),
                 "read_path_ranges": lambda: r.read_path_ranges(paths, [0] * files,
                                                                [size] * files)}
        looker = threading.Thread(target=look)
        looker.start()
        try:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                out = reads[call]()
                assert all(d == b"\xab" * size for d in out)
                del out
        finally:
            stop.set()
            looker.join()
    assert seen[0], "the looking thread never saw a result: it looked at nothing"
    assert not torn, f"{len(torn)} half-read results reachable, from {set(torn)}"
