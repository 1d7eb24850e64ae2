"""vyre_uring.aio: the asyncio layer, under the default loop and uvloop, through the
ring and (VYRE_URING_BACKEND=threads, or a seccomp filter) through threads."""
import asyncio
import errno
import gc
import os
import random
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import vyre_uring
from vyre_uring import aio

from conftest import UNDER_ASAN, open_fds as _open_fds, run_under_seccomp
from test_reader import make_tree

GUARD = 0xA5


def open_fds():
    gc.collect()            # loops of earlier tests close their fds when collected
    return _open_fds()


@pytest.fixture(params=["asyncio", "uvloop"])
def new_loop(request):
    """A factory of fresh event loops of the kind under test."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed "
                                                      "(pip install 'vyre-uring[test]')")
        # The first uvloop loop opens fds that libuv keeps for the process: open
        # them before any test counts fds.
        uvloop.new_event_loop().close()
        return uvloop.new_event_loop
    return asyncio.new_event_loop


@pytest.fixture(params=["io_uring", "threads"])
def backend(request, monkeypatch):
    monkeypatch.setenv("VYRE_URING_BACKEND", request.param)
    return request.param


@pytest.fixture(params=["ring", "reader"])
def whole_files(request, monkeypatch):
    """Which path a large read_files takes: the loop's ring state machine, or the
    synchronous reader in a thread (from READER_BATCH_FILES paths on)."""
    if request.param == "ring":
        monkeypatch.setattr(aio, "READER_BATCH_FILES", 1 << 62)
    return request.param


@pytest.fixture
def run(new_loop, backend):
    """run(coro): run it to completion in a fresh loop, closed afterwards."""
    def run(coro):
        loop = new_loop()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.close()
    return run


def test_10000_concurrent_read_file_equal_the_sync_reads(run, tmp_path):
    rnd = random.Random(5)
    paths = make_tree(tmp_path, [rnd.choice([0, 1, 4096, 5000, 70_000]) for _ in range(10_000)])
    before = open_fds()

    async def main():
        return await asyncio.gather(*(aio.read_file(p) for p in paths))
    got = run(main())
    assert open_fds() == before
    assert got == [open(p, "rb").read() for p in paths]


def test_read_files_in_order_with_per_file_errors(run, tmp_path):
    paths = make_tree(tmp_path, [10, 0, 9000])
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    bad = [str(tmp_path / "missing"), str(tmp_path), fifo, "nul\0byte"]

    async def main():
        mixed = await aio.read_files(paths + bad, on_error="return")
        with pytest.raises(FileNotFoundError) as ei:
            await aio.read_files(bad[:2] + paths)
        return mixed, ei.value
    mixed, raised = run(main())
    assert mixed[:3] == [open(p, "rb").read() for p in paths]
    errs = mixed[3:]
    assert [type(e) for e in errs] == [FileNotFoundError, IsADirectoryError, OSError, OSError]
    assert [e.errno for e in errs] == [errno.ENOENT, errno.EISDIR, errno.EINVAL, errno.EINVAL]
    assert [e.filename for e in errs[:3]] == bad[:3]
    assert raised.filename == bad[0]


def test_files_that_report_size_0_are_read_to_eof(run):
    async def main():
        return await aio.read_file("/proc/version"), await aio.read_file("/proc/self/stat")
    version, stat = run(main())
    assert version == open("/proc/version", "rb").read()
    assert stat.split()[0] == str(os.getpid()).encode()


def test_bad_arguments_raise_before_anything_is_opened(run, tmp_path):
    missing = str(tmp_path / "missing")   # opening it first would be FileNotFoundError

    async def main():
        with pytest.raises(TypeError):
            await aio.read_files([missing, 3.5])
        with pytest.raises(ValueError, match="on_error"):
            await aio.read_files([missing], on_error="ignore")
        with pytest.raises(TypeError, match="writable"):
            await aio.read_ranges_into(missing, b"read-only", [0], [4])
        with pytest.raises(ValueError):
            await aio.read_ranges_into(missing, bytearray(4), [0], [8])
        with pytest.raises(ValueError):
            await aio.read_ranges(missing, [0, -1], [1, 1])
        with pytest.raises(TypeError):
            await aio.write_file(missing, "text, not bytes")
        with pytest.raises(ValueError, match="binary mode"):
            aio.open(missing, "r")
        ring = aio.loop_ring()
        with pytest.raises(ValueError, match="fd"):
            await ring.read(-1, bytearray(4))
        with pytest.raises(ValueError, match="offset must be an int >= 0"):
            await ring.read(0, bytearray(4), 1 << 63)
        with pytest.raises(TypeError):
            await ring.read(0, bytearray(4), buf_offset=None)
        with pytest.raises(ValueError, match="nbytes"):
            await ring.read(0, bytearray(4), nbytes=5)
        with pytest.raises(TypeError, match="writable"):
            await ring.read(0, b"abcd")
    before = open_fds()
    run(main())
    assert not os.path.exists(missing)
    assert open_fds() == before


def test_read_ranges_and_into_a_buffer(run, tmp_file):
    path, data = tmp_file
    offsets, lengths = [0, 4096, len(data) - 10, len(data) + 5], [100, 8192, 100, 10]

    async def main():
        parts = await aio.read_ranges(path, offsets, lengths)
        buf = bytearray(sum(lengths) + 2)
        counts = await aio.read_ranges_into(path, buf, offsets, lengths, [1, 101, 8293, 8393])
        return parts, buf, counts
    parts, buf, counts = run(main())
    assert parts == [data[o:o + n] for o, n in zip(offsets, lengths)]
    assert counts == [100, 8192, 10, 0]
    assert buf[1:8303] == data[:100] + data[4096:4096 + 8192] + data[-10:]
    assert buf[0] == 0 and buf[8303:] == bytes(len(buf) - 8303)


def test_write_file_and_the_async_file_object(run, tmp_path):
    path = str(tmp_path / "out.bin")
    blob = os.urandom(300_000)

    async def main():
        assert await aio.write_file(path, memoryview(blob)) == len(blob)
        async with aio.open(path, "rb") as f:
            head = await f.read(10)
            assert f.tell() == 10
            f.seek(-5, os.SEEK_END)
            tail = await f.read()
            f.seek(100)
            buf = bytearray(50)
            n = await f.readinto(buf)
            assert await f.read(0) == b""
        assert f.closed
        for call in (f.read(10), f.readinto(bytearray(10)), f.readinto(bytearray())):
            with pytest.raises(ValueError, match="closed file"):
                await call              # as io's files do, whatever the buffer
        f = await aio.open(path, "ab")
        await f.write(b"more")
        await f.fsync()
        await f.close()
        with pytest.raises(FileExistsError) as ei:
            await aio.open(path, "xb")
        assert ei.value.filename == path
        async with aio.open(path, "rb+") as f:
            whole = await f.read()
        return head, tail, buf, n, whole
    head, tail, buf, n, whole = run(main())
    assert (head, tail, n) == (blob[:10], blob[-5:], 50)
    assert buf == blob[100:150]
    assert whole == blob + b"more"


def test_a_read_on_an_idle_ring_returns_without_suspending(run, tmp_file, backend):
    """A read on an idle ring is submitted at once: a page-cache hit completes inside
    the submit, so the await returns before the loop runs anything. Short reads at
    EOF and failures seen at once keep their usual results."""
    path, data = tmp_file

    async def main():
        ring = aio.loop_ring()
        ran = []
        asyncio.get_running_loop().call_soon(ran.append, "loop")
        fd = os.open(path, os.O_RDONLY)
        wfd = os.open(path, os.O_WRONLY)
        try:
            buf = bytearray(4096)
            n = await ring.read(fd, buf, 8192)
            ran.append("read")
            with pytest.raises(OSError) as ei:
                await ring.read(wfd, bytearray(8))
            assert ei.value.errno == errno.EBADF
        finally:
            os.close(fd)
            os.close(wfd)
        async with aio.open(path, "rb") as f:
            f.seek(len(data) - 10)
            tail = await f.read(100)
            assert await f.read(100) == b"" and f.tell() == len(data)
        async with aio.open(path, "r+b") as f:
            f.seek(len(data))
            await f.write(b"x")
        async with aio.open(path, "ab") as f:
            with pytest.raises(OSError) as ei:
                await f.read(10)
            assert ei.value.errno == errno.EBADF and f.tell() == len(data) + 1
        return n, buf, tail, ran
    n, buf, tail, ran = run(main())
    assert (n, bytes(buf), tail) == (4096, data[8192:12288], data[-10:])
    assert ran[0] == ("loop" if backend == "threads" else "read")


def test_low_level_ops_return_results_or_raise_oserror(run, tmp_file):
    path, data = tmp_file

    async def main():
        ring = aio.loop_ring()
        assert aio.loop_ring() is ring            # one per loop
        fd = await ring.openat(path)
        try:
            buf = bytearray(100)
            n = await ring.read(fd, buf, 1000, nbytes=50, buf_offset=10)
            with pytest.raises(OSError) as ei:
                await ring.write(fd, b"x")          # opened read-only
            assert ei.value.errno == errno.EBADF
        finally:
            os.close(fd)
        with pytest.raises(FileNotFoundError) as ei:
            await ring.openat(path + ".missing")
        assert ei.value.filename == path + ".missing"
        return n, buf, await ring.nop(), ring.backend
    n, buf, nop, name = run(main())
    assert (n, nop) == (50, 0)
    assert buf[10:60] == data[1000:1050] and buf[:10] == bytes(10)
    assert name == os.environ["VYRE_URING_BACKEND"]


def test_one_ring_per_loop_and_a_loop_in_another_thread_gets_its_own(new_loop, tmp_file):
    path, data = tmp_file
    found = {}

    def in_thread(name):
        loop = new_loop()
        try:
            async def main():
                found[name] = aio.loop_ring()
                return await aio.read_file(path)
            assert loop.run_until_complete(main()) == data
        finally:
            loop.close()
    threads = [threading.Thread(target=in_thread, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(found) == {"a", "b"} and found["a"] is not found["b"]


# ---- cancellation ---------------------------------------------------------------------------

def guarded(n):
    """A bytearray of n bytes with GUARD bytes on either side: (buffer, offset)."""
    return bytearray([GUARD]) * (n + 32), 16


def skip_if_a_pipe_read_cannot_be_cancelled():
    if os.environ["VYRE_URING_BACKEND"] == "threads":
        pytest.skip("a thread blocked in read(2) cannot be cancelled: covered by the "
                    "drain tests (a cancelled call waits for it)")


async def cancel_while_in_flight(read):
    """Start the awaitable `read`, let the loop submit it, cancel it, and see the
    cancel reach its caller."""
    task = asyncio.ensure_future(read)
    for _ in range(3):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_cancelled_pipe_read_is_cancelled_in_the_kernel(run, pipe):
    skip_if_a_pipe_read_cannot_be_cancelled()
    r, w = pipe
    buf, off = guarded(64)

    async def main():
        ring = aio.loop_ring()
        await cancel_while_in_flight(ring.read(r, buf, buf_offset=off, nbytes=64))
        os.write(w, b"late data")
        await asyncio.sleep(0.05)
    run(main())
    assert buf == bytearray([GUARD]) * len(buf)
    assert os.read(r, 100) == b"late data"        # the cancelled read took nothing


def test_a_whole_buffer_read_not_done_at_once_is_awaited_or_cancelled(run, pipe):
    """The one-read path (a whole bytearray, an idle ring): a read the kernel could
    not finish inside the submit is awaited as any other, and a cancel of it takes
    nothing from the pipe and writes nothing into the buffer."""
    skip_if_a_pipe_read_cannot_be_cancelled()
    r, w = pipe
    first, second = bytearray(5), bytearray([GUARD]) * 64

    async def main():
        ring = aio.loop_ring()
        asyncio.get_running_loop().call_later(0.02, os.write, w, b"hello")
        assert await ring.read(r, first) == 5
        await cancel_while_in_flight(ring.read(r, second))
        os.write(w, b"late data")
    run(main())
    assert first == b"hello" and second == bytearray([GUARD]) * 64
    assert os.read(r, 100) == b"late data"


def test_a_second_cancel_does_not_cut_the_drain_short(run, tmp_path, whole_files, caplog):
    paths = make_tree(tmp_path, [4096] * 300)

    async def main():
        aio.loop_ring()
        _make_shared_reader(paths)
        before = open_fds()
        task = asyncio.ensure_future(aio.read_files(paths))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert open_fds() == before
    run(main())
    gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_cancellation_at_random_moments_never_writes_after_cancelled_error(run, tmp_path):
    """Thousands of reads into guarded buffers, cancelled after 0..4 loop iterations:
    queued behind a full ring, prepared but not submitted, in flight, or completed
    but not reaped. A buffer seen at CancelledError is never written after; guard
    bytes are never written; every fd is closed."""
    size = 8192
    paths = make_tree(tmp_path, [size] * 64)
    rnd = random.Random(7)
    before = open_fds()
    seen = []

    async def one(f, buf, off, k):
        try:
            f.seek(k * 64)
            return await f.readinto(memoryview(buf)[off:off + 4096])
        except asyncio.CancelledError:
            seen.append((buf, bytes(buf)))
            raise

    async def whole(p):
        try:
            return await aio.read_file(p)
        except asyncio.CancelledError:
            seen.append((None, None))
            raise

    async def main():
        files = [await aio.open(p) for p in paths]
        jobs = []
        for k in range(3000):
            buf, off = guarded(4096)
            jobs.append((asyncio.ensure_future(one(files[k % 64], buf, off, k % 64)), buf))
        wholes = [asyncio.ensure_future(whole(p)) for p in paths * 20]
        pending = [t for t, _ in jobs] + wholes
        rnd.shuffle(pending)
        for t in pending:
            if rnd.random() < 0.5:
                t.cancel()
            if rnd.random() < 0.05:
                await asyncio.sleep(0)
        results = await asyncio.gather(*pending, return_exceptions=True)
        for _ in range(5):
            await asyncio.sleep(0.01)
        for f in files:
            await f.close()
        return jobs, wholes, results
    jobs, wholes, results = run(main())
    cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
    assert 0 < cancelled < len(results)
    assert len(seen) == cancelled
    for buf, snapshot in seen:
        if buf is not None:
            assert bytes(buf) == snapshot
    for task, buf in jobs:
        assert buf[:16] == bytearray([GUARD]) * 16 and buf[-16:] == bytearray([GUARD]) * 16
        if not task.cancelled():
            assert task.result() == 4096
    for t, p in zip(wholes, paths * 20):
        if not t.cancelled():
            assert t.result() == open(p, "rb").read()
    assert open_fds() == before


def test_loop_closed_with_io_in_flight_drains_it(new_loop, backend, tmp_path, pipe,
                                                 whole_files):
    r, w = pipe
    paths = make_tree(tmp_path, [4096] * 500)
    buf, off = guarded(64)
    _make_shared_reader(paths)
    before = open_fds()
    loop = new_loop()

    async def start():
        ring = aio.loop_ring()
        stuck = asyncio.ensure_future(ring.read(r, buf, buf_offset=off, nbytes=64))
        many = asyncio.ensure_future(aio.read_files(paths))
        await asyncio.sleep(0)
        return stuck, many
    if backend == "threads":
        pytest.skip("a thread blocked in read(2) on a pipe holds the loop's close: "
                    "only the ring can cancel it")
    stuck, many = loop.run_until_complete(start())
    loop.close()
    assert not stuck.done()
    os.write(w, b"after close")
    time.sleep(0.05)
    assert buf == bytearray([GUARD]) * len(buf)
    assert os.read(r, 100) == b"after close"
    assert open_fds() == before                   # fds, the ring and its eventfd closed
    del stuck, many


def test_asyncio_run_with_io_in_flight_at_exit_drains_it(backend, tmp_path, whole_files):
    paths = make_tree(tmp_path, [4096] * 500)
    _make_shared_reader(paths)
    before = open_fds()
    tasks = []

    async def main():
        tasks.append(asyncio.ensure_future(aio.read_files(paths)))
        await asyncio.sleep(0)
    asyncio.run(main())
    assert tasks[0].cancelled()
    assert open_fds() == before


# ---- the loop stays responsive ----------------------------------------------------------------

def test_the_loop_stays_responsive_while_10000_files_are_read(run, backend, tmp_path):
    if backend == "threads":
        # Measured: gather() starts 10,000 tasks in one loop iteration, and handing
        # each request to the thread pool there stalls the loop for ~1.3 s here.
        pytest.skip("the thread-pool fallback is not responsive under 10,000 calls at once")
    paths = make_tree(tmp_path, [4096] * 10_000)

    async def main():
        done = False
        worst = 0.0

        async def ticker():
            nonlocal worst
            ticks = 0
            while not done:
                t0 = time.perf_counter()
                await asyncio.sleep(0.001)
                worst = max(worst, time.perf_counter() - t0 - 0.001)
                ticks += 1
            return ticks
        tick = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        out = await aio.read_files(paths)
        out2 = await asyncio.gather(*(aio.read_file(p) for p in paths))
        done = True
        ticks = await tick
        return out, out2, worst, ticks
    out, out2, worst, ticks = run(main())
    assert len(out) == len(out2) == 10_000 and out == out2
    assert ticks >= 2
    # The longest stall is the loop iteration in which gather() starts 10,000 calls,
    # each running our code up to its first await: several times longer under ASan.
    limit = 3.0 if UNDER_ASAN else 1.0
    assert worst < limit, f"the loop stalled for {worst:.3f} s"


# ---- where io_uring is blocked -------------------------------------------------------------

SECCOMP_AIO = """
    out = {"setup": "ok"}
    import asyncio, os, sys, warnings
    from vyre_uring import aio
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        async def main():
            ring = aio.loop_ring()
            data = await aio.read_files([sys.executable, os.__file__])
            one = await aio.read_file(os.__file__)
            buf = bytearray(16)
            n = await aio.read_ranges_into(sys.executable, buf, [0], [16])
            try:
                await aio.read_file("/nonexistent/file")
            except FileNotFoundError as e:
                out["missing"] = [e.errno, e.filename]
            return ring.backend, data, one, bytes(buf[:n[0]])
        for _ in range(2):              # two loops: warned once
            backend, data, one, head = asyncio.run(main())
    with open(sys.executable, "rb") as f:
        exe = f.read()
    with open(os.__file__, "rb") as f:
        mod = f.read()
    out.update(backend=backend, same=data == [exe, mod] and one == mod and head == exe[:16],
               reason=aio.fallback_reason(), warnings=[str(w.message) for w in caught])
    print(json.dumps(out))
"""


def test_where_seccomp_blocks_io_uring_the_same_api_runs_on_threads():
    out = run_under_seccomp(SECCOMP_AIO, errno.EPERM)
    assert out["backend"] == "threads" and out["same"] is True
    assert out["missing"] == [errno.ENOENT, "/nonexistent/file"]
    assert "seccomp" in out["reason"]
    assert len(out["warnings"]) == 1 and "seccomp" in out["warnings"][0]


def test_a_single_path_and_ranges_far_past_eof_behave_as_the_sync_reader(run, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"0123456789")
    with pytest.raises(TypeError, match="sequence of paths"):
        run(aio.read_files(str(p)))
    # 64 GiB asked of a 10-byte file: only what it holds is allocated.
    got = run(aio.read_ranges(str(p), [0, 4, 20], [64 << 30, 1 << 40, 64 << 30]))
    assert got == [b"0123456789", b"456789", b""]


def _make_shared_reader(paths):
    """read_files of READER_BATCH_FILES paths or more runs on the process's shared
    reader, made on first use and kept (its rings' fds are not a leak): made here,
    before a test counts fds."""
    vyre_uring.read_files(paths[:1])


@pytest.mark.parametrize("backend", ["io_uring", "threads"])
def test_thousands_of_files_under_a_small_fd_limit(tmp_path, backend):
    """RLIMIT_NOFILE 64 (and 1,500 files): the calls hold at most a quarter of it,
    so every file reads, on io_uring and on the thread fallback alike."""
    for i in range(1500):
        (tmp_path / f"f{i}").write_bytes(b"%d" % i)
    code = textwrap.dedent(f"""
        import asyncio, os, resource, sys, warnings
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        os.environ["VYRE_URING_BACKEND"] = {backend!r}
        warnings.simplefilter("ignore")
        from vyre_uring import aio
        paths = [os.path.join({str(tmp_path)!r}, f"f{{i}}") for i in range(1500)]
        async def main():
            many = await aio.read_files(paths)
            one_each = await asyncio.gather(*(aio.read_file(p) for p in paths))
            return many, one_each
        many, one_each = asyncio.run(main())
        want = [b"%d" % i for i in range(1500)]
        assert many == want and one_each == want, "wrong or failed reads"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.stdout.strip() == "ok", out.stderr


def test_a_large_read_files_runs_on_the_reader_with_the_same_results(run, tmp_path):
    """From READER_BATCH_FILES paths on, read_files runs on the synchronous reader:
    the same bytes, per-file errors and first error as the ring's path gives."""
    paths = make_tree(tmp_path, [0, 1, 4096, 70_000] * 40)
    bad = [str(tmp_path / "missing"), str(tmp_path)]
    mixed = paths + bad
    assert len(mixed) >= aio.READER_BATCH_FILES

    async def main():
        small = [await aio.read_files(mixed[i:i + 8], on_error="return")
                 for i in range(0, len(mixed), 8)]
        big = await aio.read_files(mixed, on_error="return")
        with pytest.raises(FileNotFoundError) as info:
            await aio.read_files(bad + paths)
        return [x for part in small for x in part], big, info.value
    small, big, first = run(main())
    assert [type(x) for x in big] == [type(x) for x in small]
    assert [x for x in big if isinstance(x, bytes)] == [open(p, "rb").read() for p in paths]
    assert [(e.errno, e.filename) for e in big[-2:]] == \
        [(e.errno, e.filename) for e in small[-2:]]
    assert first.filename == bad[0]


def test_a_large_read_files_reads_the_paths_as_they_were_when_called(run, tmp_path):
    paths = make_tree(tmp_path, [100] * 3000)
    want = [open(p, "rb").read() for p in paths]

    async def main():
        task = asyncio.ensure_future(aio.read_files(paths))
        await asyncio.sleep(0)
        paths.clear()                       # the caller's list, changed meanwhile
        return await task
    assert run(main()) == want


def test_a_bad_backend_variable_is_refused_whatever_the_call(monkeypatch, tmp_path):
    monkeypatch.setenv("VYRE_URING_BACKEND", "bogus")
    paths = make_tree(tmp_path, [10, 10])
    with pytest.raises(ValueError, match="bogus"):
        asyncio.run(aio.read_files(paths))


def test_a_fork_during_a_large_read_files_does_not_hang_the_child(tmp_path):
    """The child inherits the awaiting task but not the reader's thread: its await
    fails at once (RuntimeError, saying so), and the child exits."""
    make_tree(tmp_path, [4096] * 3000)
    code = textwrap.dedent(f"""
        import asyncio, os, sys, warnings
        warnings.simplefilter("ignore")
        from vyre_uring import aio
        top = {str(tmp_path)!r}
        paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(top) for f in fs)
        async def main():
            task = asyncio.ensure_future(aio.read_files(paths))
            await asyncio.sleep(0)
            pid = os.fork()
            if pid == 0:
                try:
                    await task
                    os._exit(3)             # it finished before the fork: inconclusive
                except RuntimeError as exc:
                    os._exit(0 if "forked" in str(exc) else 2)
            await task
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        sys.exit(asyncio.run(main()))
    """)
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=60, cwd=tmp_path)
    if child.returncode == 3:
        pytest.skip("the read finished before the fork on this machine")
    assert child.returncode == 0, child.stdout + child.stderr
