"""The batch reader, every test run against both backends and compared with plain
Python reads (the differential oracle)."""
import array
import errno
import mmap
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vyre_uring
from vyre_uring import BatchReader, UringUnavailableError, iter_files, read_files, read_ranges, \
    read_ranges_into
from vyre_uring import reader as reader_module

from conftest import UNDER_ASAN, direct_supported, open_fds, run_as_nobody

# Every test twice: files as direct descriptors, and as plain fds.
pytestmark = pytest.mark.usefixtures("file_table")


@pytest.fixture(params=["io_uring", "threads"])
def backend(request):
    return request.param


def plain_read(path):
    with open(path, "rb") as f:
        return f.read()


def make_tree(root, sizes, seed=0):
    rnd = random.Random(seed)
    paths = []
    for i, size in enumerate(sizes):
        p = root / f"f {i} ñ.bin"
        p.write_bytes(rnd.randbytes(size))
        paths.append(str(p))
    return paths


def test_small_tree_matches_plain_reads(tmp_path, backend):
    paths = make_tree(tmp_path, [0, 1, 4095, 4096, 4097, 100_000, 3 << 20])
    assert read_files(paths, backend=backend) == [plain_read(p) for p in paths]


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.one_of(st.integers(0, 8192), st.integers(0, 8 << 20)),
                      min_size=0, max_size=40),
       queue_depth=st.sampled_from([1, 3, 64]))
def test_generated_trees_match_plain_reads(tmp_path_factory, backend, sizes, queue_depth):
    root = tmp_path_factory.mktemp("tree")
    paths = make_tree(root, sizes)
    got = read_files(paths, backend=backend, queue_depth=queue_depth)
    assert got == [plain_read(p) for p in paths]


def test_thousands_of_files(tmp_path, backend):
    paths = make_tree(tmp_path, [random.Random(i).randrange(0, 3000) for i in range(3000)])
    assert read_files(paths, backend=backend) == [plain_read(p) for p in paths]


def test_the_python_standard_library(backend):
    # A real tree nobody here wrote.
    root = sysconfig.get_paths()["stdlib"]
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root)
                   for f in fs if f.endswith(".py"))[:4000]
    assert len(paths) > 500
    assert read_files(paths, backend=backend) == [plain_read(p) for p in paths]


def test_paths_may_be_str_bytes_or_pathlike(tmp_path, backend):
    p = make_tree(tmp_path, [10])[0]
    got = read_files([p, os.fsencode(p), tmp_path / os.path.basename(p)], backend=backend)
    assert got == [plain_read(p)] * 3


def test_non_ascii_and_undecodable_names_are_read_by_their_encoded_path(tmp_path, backend):
    # ASCII str paths go to the kernel as the str's own buffer; the others are
    # encoded as os.fsencode does (a name that is not UTF-8 comes as surrogates).
    names = ["plain.txt", "café.txt", "数据.bin", os.fsdecode(b"raw-\xff\xfe.bin")]
    paths = []
    for k, name in enumerate(names):
        (tmp_path / name).write_bytes(bytes([k]) * (100 + k))
        paths.append(str(tmp_path / name))

    class Str(str):
        pass
    got = read_files(paths + [Str(paths[0]), paths[0] + "\0x"], backend=backend,
                     workers=1, on_error="return")
    assert got[:-1] == [plain_read(p) for p in paths] + [plain_read(paths[0])]
    assert isinstance(got[-1], OSError) and got[-1].errno == errno.EINVAL   # (ASCII)


def non_regular_paths(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "broken"
    link.symlink_to(tmp_path / "nowhere")
    return {str(tmp_path): errno.EISDIR, str(fifo): errno.EINVAL,
            "/dev/null": errno.EINVAL, str(link): errno.ENOENT,
            str(tmp_path / "missing"): errno.ENOENT}


def test_bad_paths_fail_alone_with_errno_and_filename(tmp_path, backend):
    good = make_tree(tmp_path, [100, 200])
    bad = non_regular_paths(tmp_path)
    paths = [good[0], *bad, good[1]]
    out = read_files(paths, backend=backend, on_error="return")   # a FIFO must not hang
    assert out[0] == plain_read(good[0]) and out[-1] == plain_read(good[1])
    for result, (path, err) in zip(out[1:-1], bad.items()):
        assert isinstance(result, OSError), (path, result)
        assert result.errno == err and result.filename == path


def test_a_nul_byte_in_a_path_fails_that_path_alone(tmp_path, backend):
    good = make_tree(tmp_path, [10])[0]
    out = read_files([good, good + "\0x", os.fsencode(good) + b"\0"], backend=backend,
                     on_error="return")
    assert out[0] == plain_read(good)
    for result in out[1:]:
        assert isinstance(result, OSError) and result.errno == errno.EINVAL
        assert "null byte" in str(result)


def test_files_whose_size_says_nothing_are_read_to_eof(backend):
    # /proc files report size 0 and sysfs files 4096, whatever they hold: the
    # result is what read() returns, not what the size promised.
    paths = [p for p in ("/proc/version", "/proc/self/mounts", "/proc/filesystems",
                         "/sys/kernel/profiling") if os.path.exists(p)]
    assert os.stat("/proc/version").st_size == 0
    out = read_files(paths, backend=backend)
    for path, data in zip(paths, out):
        assert len(data) > 0, path
        if "self" not in path:
            assert data == plain_read(path), path


def test_on_error_raise_raises_the_first_failure(tmp_path, backend):
    good = make_tree(tmp_path, [10])
    with pytest.raises(FileNotFoundError) as err:
        read_files([good[0], str(tmp_path / "a"), str(tmp_path / "b")], backend=backend)
    assert err.value.filename == str(tmp_path / "a")


def test_read_ranges_has_pread_semantics(tmp_path, backend):
    path = make_tree(tmp_path, [10_000])[0]
    data = plain_read(path)
    offsets = [0, 5, 9_990, 10_000, 20_000, 0]
    lengths = [5, 100, 100, 10, 10, 0]
    got = read_ranges(path, offsets, lengths, backend=backend)
    assert got == [data[o:o + n] for o, n in zip(offsets, lengths)]


@pytest.mark.parametrize("make_buffer", [bytearray, lambda n: mmap.mmap(-1, n),
                                         vyre_uring.alloc_buffer])
def test_read_ranges_into_a_callers_buffer(tmp_path, backend, make_buffer):
    path = make_tree(tmp_path, [50_000])[0]
    data = plain_read(path)
    buf = make_buffer(8192)
    got = read_ranges_into(path, buf, [100, 49_990, 7], [1000, 100, 10],
                           [0, 4096, 2000], backend=backend)
    assert got == [1000, 10, 10]
    view = bytes(memoryview(buf)[:8192])
    assert view[:1000] == data[100:1100]
    assert view[4096:4106] == data[49_990:]
    assert view[2000:2010] == data[7:17]


def test_read_ranges_into_checks_ranges_first(tmp_path, backend):
    path = make_tree(tmp_path, [100])[0]
    with pytest.raises(ValueError, match="range 1"):
        read_ranges_into(path, bytearray(10), [0, 0], [5, 20], backend=backend)
    with pytest.raises(ValueError, match="equal lengths"):
        read_ranges_into(path, bytearray(10), [0, 0], [5], backend=backend)
    with pytest.raises(TypeError):
        read_ranges_into(path, bytes(10), [0], [5], backend=backend)


def test_read_ranges_of_a_bad_path_raise_with_filename(tmp_path, backend):
    with pytest.raises(IsADirectoryError) as err:
        read_ranges(str(tmp_path), [0], [1], backend=backend)
    assert err.value.filename == str(tmp_path)


def test_a_reader_is_reusable_and_counts(tmp_path, backend):
    paths = make_tree(tmp_path, [10, 20, 30])
    with BatchReader(backend=backend) as r:
        assert r.read_files(paths) == [plain_read(p) for p in paths]
        assert r.read_files(paths[:1]) == [plain_read(paths[0])]
        s = r.stats()
    assert (s["files"], s["bytes"], s["backend"]) == (4, 70, backend)
    assert s["fallback_reason"] is None


def test_the_environment_variable_chooses_for_auto_and_an_explicit_backend_wins(monkeypatch):
    monkeypatch.setenv(reader_module.BACKEND_ENV, "threads")
    with BatchReader() as r:
        assert r.backend == "threads"
    with BatchReader(backend="io_uring") as r:
        assert r.backend == "io_uring"
    monkeypatch.setenv(reader_module.BACKEND_ENV, "bogus")
    with pytest.raises(ValueError, match="VYRE_URING_BACKEND"):
        BatchReader()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="backend"):
        BatchReader(backend="fast")
    with pytest.raises(ValueError, match="queue_depth"):
        BatchReader(queue_depth=0)
    with pytest.raises(ValueError, match="on_error"):
        read_files([], on_error="ignore")


# Opt-in, as they disable io_uring machine-wide (see conftest.py); by default
# test_unavailable.py checks the same through a seccomp filter in a child process.
def test_auto_falls_back_to_threads_and_says_why(tmp_path, io_uring_disabled, monkeypatch):
    io_uring_disabled(2)
    paths = make_tree(tmp_path, [100, 0, 5000])
    monkeypatch.setattr(reader_module, "_warned", threading.Event())
    with pytest.warns(RuntimeWarning, match="io_uring_disabled"):
        r = BatchReader(backend="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # warned once, not again
        BatchReader(backend="auto").close()
    with r:
        assert r.backend == "threads"
        assert "io_uring_disabled" in r.stats()["fallback_reason"]
        assert r.read_files(paths) == [plain_read(p) for p in paths]


def test_io_uring_backend_refuses_to_fall_back(io_uring_disabled):
    io_uring_disabled(2)
    with pytest.raises(UringUnavailableError, match="io_uring_disabled"):
        BatchReader(backend="io_uring")


def test_io_uring_counts_syscalls_in_batches(tmp_path):
    paths = make_tree(tmp_path, [100] * 200)
    with BatchReader(backend="io_uring", queue_depth=64) as r:
        r.read_files(paths)
    s = r.stats()            # after close: the last closes are reaped (counted) there
    assert s["operations"] >= 3 * 200              # open, read, close per file
    assert s["syscalls"] < 200                     # batched: far fewer than one per file


@pytest.fixture
def small_pieces():
    """One read request carries at most 4 KiB (1 GiB in use: too slow to test)."""
    from vyre_uring._engine import DIRECT_ALIGN, _test_set_limits
    old = _test_set_limits(4096, DIRECT_ALIGN)
    yield 4096
    _test_set_limits(*old)


def test_huge_read_ranges_use_pieces(tmp_path, small_pieces):
    # A range longer than one request may carry comes back whole, as bytes and into
    # a buffer.
    path = make_tree(tmp_path, [300_000])[0]
    with BatchReader(backend="io_uring") as r:
        assert r.read_ranges(path, [10], [299_990]) == [plain_read(path)[10:]]
        buf = bytearray(300_000)
        assert r.read_ranges_into(path, buf, [0], [300_000]) == [300_000]
        assert buf == plain_read(path)
        assert r.stats()["operations"] >= 2 * 300_000 // small_pieces


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_workers_give_identical_results(tmp_path, backend, workers):
    paths = make_tree(tmp_path, [random.Random(i).randrange(0, 20_000) for i in range(500)])
    expected = [plain_read(p) for p in paths]
    with BatchReader(backend=backend, workers=workers, queue_depth=16) as r:
        assert r.read_files(paths) == expected
        big = make_tree(tmp_path, [1 << 20], seed=9)[0]
        offsets = list(range(0, 1 << 20, 4096))
        assert r.read_ranges(big, offsets, [4096] * len(offsets)) == \
            [plain_read(big)[o:o + 4096] for o in offsets]


def test_iter_files_yields_everything_once(tmp_path, backend):
    paths = make_tree(tmp_path, [random.Random(i).randrange(0, 5000) for i in range(300)])
    paths.insert(7, str(tmp_path / "missing"))
    seen = {}
    for index, path, result in vyre_uring.iter_files(paths, backend=backend,
                                                     max_bytes_in_flight=20_000,
                                                     queue_depth=8):
        assert index not in seen and paths[index] == path
        seen[index] = result
    assert sorted(seen) == list(range(len(paths)))
    assert isinstance(seen[7], FileNotFoundError)
    assert all(seen[i] == plain_read(p) for i, p in enumerate(paths) if i != 7)


@pytest.mark.parametrize("workers", [1, 2])
def test_iter_files_stays_within_the_byte_budget(tmp_path, backend, workers):
    # Small files first, then large ones, then one larger than the budget: a window
    # sized by the sizes seen so far would overshoot; the budget is kept per batch.
    import tracemalloc
    budget = 1 << 20
    sizes = [1000] * 50 + [300_000] * 30 + [2 << 20] + [5000] * 20
    paths = make_tree(tmp_path, sizes)
    tracemalloc.start()
    try:
        seen = 0
        for index, path, data in vyre_uring.iter_files(
                paths, backend=backend, workers=workers, max_bytes_in_flight=budget):
            assert len(data) == sizes[index]
            seen += 1
            del data
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen == len(paths)
    # The rings share the budget; a file larger than it comes alone.
    assert peak <= max(budget, 2 << 20) + (256 << 10), peak


def test_progress_callable_sees_every_file(tmp_path, backend):
    # Called once per batch of files (one per file would cost a Python call per
    # file), with running totals that end at every file and byte.
    sizes = [i % 50 for i in range(1000)]
    paths = make_tree(tmp_path, sizes)
    calls = []
    read_files(paths, backend=backend, workers=2, queue_depth=16,
               progress=lambda *a: calls.append(a))
    assert len(calls) > 1
    assert calls[-1] == (1000, 1000, sum(sizes))
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert all(c[1] == 1000 for c in calls)


def test_progress_must_be_true_or_callable(tmp_path):
    with pytest.raises(TypeError, match="progress"):
        read_files([], progress="yes")


def test_files_changing_size_while_read_give_no_garbage(tmp_path, backend):
    # A writer truncates and rewrites files while they are read: no crash, no error,
    # and no result longer than any version of the file (at most 2999 bytes).
    paths = [str(tmp_path / f"moving{i}") for i in range(8)]
    for p in paths:
        with open(p, "wb") as f:
            f.write(b"\1" * 1000)
    stop = threading.Event()

    def writer():
        rnd = random.Random(5)
        while not stop.is_set():
            p = rnd.choice(paths)
            value = rnd.randrange(1, 200)
            with open(p, "r+b") as f:
                f.truncate(rnd.randrange(0, 3000))
                f.seek(0)
                f.write(bytes([value]) * rnd.randrange(0, 3000))

    t = threading.Thread(target=writer)
    t.start()
    try:
        with BatchReader(backend=backend, queue_depth=4) as r:
            for _ in range(200):
                for result in r.read_files(paths, on_error="return"):
                    assert isinstance(result, bytes)
                    assert len(result) < 3000
    finally:
        stop.set()
        t.join()


def test_large_files_are_read_in_pieces(tmp_path, small_pieces):
    # Files longer than one request may carry are read piece after piece.
    paths = make_tree(tmp_path, [9_999, 10_001, 100_000, 0, 123_457])
    with BatchReader(backend="io_uring") as r:
        assert r.read_files(paths) == [plain_read(p) for p in paths]
        assert r.stats()["operations"] > (9_999 + 10_001 + 100_000 + 123_457) // 4096


def test_a_job_interrupted_mid_wait_cancels_its_reads_before_raising():
    # Ctrl-C (here: an exception from a signal handler) while a job waits: the read
    # still in flight is cancelled and reaped before the exception leaves, so nothing
    # writes into the job's memory afterwards, and the ring serves the next job.
    import signal
    from vyre_uring import Ring
    from vyre_uring._engine import read_ranges_job

    class Interrupted(Exception):
        pass

    def interrupt(signum, frame):
        raise Interrupted

    stats = array.array("q", [0] * 5)
    r, w = os.pipe()                       # a read that waits until we write
    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        with Ring(8) as ring:
            dest = bytearray(100)
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(Interrupted):
                read_ranges_job(ring, r, [0], [100], dest, [0], 8, stats, "pipe", pread=False)
            assert ring.in_flight == 0
            os.write(w, b"x" * 100)        # nobody reads it any more
            assert dest == bytearray(100)
            fd = os.open(__file__, os.O_RDONLY)
            try:
                got = read_ranges_job(ring, fd, [0, 5], [5, 5], None, None, 8, stats, __file__,
                                      pread=False)
            finally:
                os.close(fd)
            assert got == [plain_read(__file__)[:5], plain_read(__file__)[5:10]]
            assert os.read(r, 100) == b"x" * 100
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        os.close(r)
        os.close(w)


def test_a_shared_counts_list_is_checked_before_anything_is_read(tmp_path):
    # Rings sharing one call write their byte counts into one list, each at its own
    # start: a list without room for a share is refused before a read lands in the
    # buffer, and so is one given for bytes results, which have no counts.
    from vyre_uring import Ring
    from vyre_uring._engine import read_ranges_job
    path = make_tree(tmp_path, [100])[0]
    stats = array.array("q", [0] * 5)
    fd = os.open(path, os.O_RDONLY)
    try:
        with Ring(8) as ring:
            dest = bytearray(20)
            for out, start in (([None] * 3, 2), ([None] * 3, -1), ([None] * 1, 0)):
                with pytest.raises(ValueError, match="no room"):
                    read_ranges_job(ring, fd, [0, 10], [10, 10], dest, [0, 10], 8, stats,
                                    path, out=out, out_start=start, pread=False)
                assert dest == bytearray(20) and out[-1] is None
            with pytest.raises(ValueError, match="byte counts only"):
                read_ranges_job(ring, fd, [0], [10], None, None, 8, stats, path,
                                out=[None], out_start=0, pread=False)
            out = [None] * 4
            assert read_ranges_job(ring, fd, [0, 10], [10, 10], dest, [0, 10], 8, stats,
                                   path, out=out, out_start=1, pread=False) is out
            assert out == [None, 10, 10, None] and dest == plain_read(path)[:20]
    finally:
        os.close(fd)


def test_drain_closes_the_fds_of_abandoned_opens(tmp_path):
    # An open whose job was abandoned completes with nobody to own its fd: the reap
    # that sees it closes it.
    from vyre_uring import Ring
    from vyre_uring._engine import drain_jobs
    path = make_tree(tmp_path, [10])[0]
    before = len(os.listdir("/proc/self/fd"))
    with Ring(8) as ring:
        for _ in range(5):
            ring.prep_openat(path, user_data=(1 << 56) | (0xABCDEF << 32))  # KIND_OPEN
        drain_jobs(ring, array.array("q", [0] * 5))
        assert len(os.listdir("/proc/self/fd")) == before + 1       # the ring's own fd


DIRECT_SIZES = [0, 1, 511, 4095, 4096, 4097, 100_000, 256 << 10, (256 << 10) + 1, 3 << 20]


def test_direct_reads_match_plain_reads(tmp_path, backend):
    # O_DIRECT needs aligned offsets, lengths and memory: the reader handles that
    # for any size and any range.
    paths = make_tree(tmp_path, DIRECT_SIZES)
    if not direct_supported(paths[0]):
        pytest.skip(f"{tmp_path} is on a filesystem without O_DIRECT")
    expected = [plain_read(p) for p in paths]
    with BatchReader(backend=backend, direct=True, queue_depth=4) as r:
        assert r.read_files(paths) == expected
        big, data = paths[-1], expected[-1]
        offsets = [0, 1, 4095, 5000, 100_000, (3 << 20) - 10, (3 << 20) + 5]
        lengths = [10, 4096, 3, 70_000, 1 << 20, 100, 10]
        assert r.read_ranges(big, offsets, lengths) == \
            [data[o:o + n] for o, n in zip(offsets, lengths)]
        buf = bytearray(sum(lengths))
        counts = r.read_ranges_into(big, buf, offsets, lengths)
        assert counts == [len(data[o:o + n]) for o, n in zip(offsets, lengths)]
        assert r.stats()["direct_fallbacks"] == 0
        if backend == "io_uring":     # O_DIRECT reads through a registered bounce
            assert r.stats()["buffer_registration"] == "registered"


@pytest.fixture
def ramfs(tmp_path):
    """A ramfs mount (it refuses O_DIRECT at open), or a skip when we cannot mount."""
    import subprocess
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "ramfs", "none", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount ramfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_direct_falls_back_where_open_is_refused(ramfs, backend):
    paths = make_tree(ramfs, [1, 5000, 300_000])
    assert not direct_supported(paths[0])
    with BatchReader(backend=backend, direct=True) as r:
        assert r.read_files(paths) == [plain_read(p) for p in paths]
        assert r.read_ranges(paths[2], [3, 7000], [10, 5000]) == \
            [plain_read(paths[2])[3:13], plain_read(paths[2])[7000:12000]]
        assert r.stats()["direct_fallbacks"] == len(paths) + 1


def test_direct_falls_back_where_reads_are_refused(tmp_path, backend, monkeypatch):
    # Open succeeds but the filesystem refuses the read (here: reads aligned to 256
    # bytes, finer than any block device takes): the file is read buffered instead.
    from vyre_uring import _threads_backend
    from vyre_uring._engine import _test_set_limits
    # Each size rounds up to an odd multiple of 256: a length no block device takes.
    paths = make_tree(tmp_path, [100, 600, 70_300])
    if not direct_supported(paths[0]):
        pytest.skip(f"{tmp_path} is on a filesystem without O_DIRECT")
    monkeypatch.setattr(_threads_backend, "DIRECT_ALIGN", 256)
    old = _test_set_limits(1 << 30, 256)
    try:
        with BatchReader(backend=backend, direct=True) as r:
            assert r.read_files(paths) == [plain_read(p) for p in paths]
            assert r.stats()["direct_fallbacks"] == len(paths)
    finally:
        _test_set_limits(*old)


def test_direct_reads_degrade_when_buffer_registration_is_refused():
    # As an unprivileged user with RLIMIT_MEMLOCK at 64 KiB, registering the 1 MiB
    # bounce buffer fails: the reader reads unregistered, correctly, and says why.
    import shutil
    import vyre_uring._uring_backend   # noqa: F401 (nobody may not read the stdlib's home)
    root = tempfile.mkdtemp(prefix="vyre-memlock-")
    try:
        os.chmod(root, 0o755)
        path = os.path.join(root, "data")
        data = random.Random(3).randbytes(300_000)
        with open(path, "wb") as f:
            f.write(data)
        if not direct_supported(path):
            pytest.skip(f"{root} is on a filesystem without O_DIRECT")

        def body():
            try:
                vyre_uring.Ring(2).close()
            except OSError as exc:
                return {"setup": f"no io_uring for nobody here: {exc}"}
            with BatchReader(backend="io_uring", direct=True, queue_depth=4) as r:
                return {"same": r.read_files([path]) == [data], "stats": r.stats()}
        out = run_as_nobody(body, memlock=64 << 10)
    finally:
        shutil.rmtree(root)
    if "setup" in out:
        pytest.skip(out["setup"])
    assert "error" not in out, out
    assert out["same"] is True
    assert out["stats"]["buffer_registration"].startswith("refused:"), out
    assert "ENOMEM" in out["stats"]["buffer_registration"], out
    assert out["stats"]["direct_fallbacks"] == 0


def test_a_3_gib_file_comes_back_whole(tmp_path, backend):
    # Linux caps one read near 2 GiB: the reader reads on until the file is whole.
    # A sparse file (its holes read as zeros) with marks around the 1 and 2 GiB
    # boundaries keeps the disk out of it; any piece out of place would move a mark
    # or a zero. On tmpfs the holes are not even page cache.
    size = 3 << 30
    shm = "/dev/shm"
    path = tmp_path / "huge"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        fd, name = tempfile.mkstemp(dir=shm, prefix="vyre-test-")
        os.close(fd)
        path = Path(name)
    marks = {0: b"start", (1 << 30) - 2: b"one-GiB", (2 << 30) - 3: b"two-GiB",
             (2 << 30) - 4096 + 1: b"cap", size - 3: b"end"}
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, mark in marks.items():
            f.seek(offset)
            f.write(mark)
    try:
        data = read_files([path], backend=backend)[0]
    finally:
        path.unlink()
    assert len(data) == size
    for offset, mark in marks.items():
        assert data[offset:offset + len(mark)] == mark
    assert data.count(0) == size - sum(map(len, marks.values()))



def test_files_too_large_for_memory_fail_alone(backend):
    # Sparse files of 2**63-1 bytes (no bytes object can hold them) and of 1 TiB
    # (no memory for it): each fails with its own error; nothing else is lost and
    # no fd is left open.
    shm = "/dev/shm"
    if not os.access(shm, os.W_OK):
        pytest.skip("no writable tmpfs at /dev/shm")
    with open("/proc/sys/vm/overcommit_memory") as f:
        if f.read().strip() == "1":
            pytest.skip("vm.overcommit_memory=1: a 1 TiB allocation succeeds here, and "
                        "reading the file into it would exhaust memory")
    paths = []
    try:
        for size in ((1 << 63) - 1, 1 << 40):
            fd, name = tempfile.mkstemp(dir=shm, prefix="vyre-test-")
            os.ftruncate(fd, size)
            os.close(fd)
            paths.append(name)
        read_files([__file__], backend=backend)     # the shared reader's rings, made
        before = open_fds()
        out = read_files([paths[0], __file__, paths[1]], backend=backend, on_error="return")
        assert out[1] == plain_read(__file__)
        assert isinstance(out[0], OSError) and out[0].errno == errno.EFBIG
        assert out[0].filename == paths[0]
        assert isinstance(out[2], OSError) and out[2].errno == errno.ENOMEM
        assert open_fds() == before
    finally:
        for p in paths:
            os.unlink(p)


def test_closing_the_reader_closes_the_fds_an_interrupted_job_left(tmp_path):
    # Opens whose job was interrupted complete with nobody to own their fds:
    # closing the reader reaps them and closes the fds (the ring's own close would
    # only cancel and discard).
    path = make_tree(tmp_path, [10])[0]
    before = open_fds()
    reader = BatchReader(backend="io_uring", workers=1)
    ring = reader._backend._rings[0].ring
    for _ in range(5):
        ring.prep_openat(path, user_data=(1 << 56) | (0xABCDEF << 32))   # KIND_OPEN
    ring.submit()
    reader.close()
    assert open_fds() == before


def test_size_0_files_larger_than_the_first_piece_are_read_whole(backend):
    # /proc/self/smaps reports size 0 and holds far more than the 64 KiB a size-0
    # file is first given: it grows, within the budget when there is one.
    with open("/proc/self/smaps", "rb") as f:
        plain = f.read()
    if len(plain) <= 64 << 10:
        pytest.skip(f"/proc/self/smaps holds only {len(plain)} bytes here")
    whole = read_files(["/proc/self/smaps"], backend=backend)[0]
    (_, _, within), = iter_files(["/proc/self/smaps"], backend=backend,
                                 max_bytes_in_flight=4 << 20)
    for got in (whole, within):
        assert len(got) > 64 << 10 and got.endswith(b"\n")
        assert got.split(b"\n", 1)[0] == plain.split(b"\n", 1)[0]   # the first mapping


def test_an_exception_among_size_0_files_leaks_no_fd(tmp_path, backend):
    # Size-0 files are read to EOF by the jobs themselves: no fd is ever handed to
    # code that an exception (here from the progress callback) could skip.
    paths = make_tree(tmp_path, [0, 0, 0, 0]) + ["/proc/self/status"] * 4

    def interrupted(done, total, nbytes):
        raise KeyboardInterrupt
    before = open_fds()
    with BatchReader(backend=backend, workers=1) as r:
        with pytest.raises(KeyboardInterrupt):
            r.read_files(paths, progress=interrupted)
        assert r.read_files(paths)[:4] == [b""] * 4
    assert open_fds() == before


def test_when_one_ring_fails_the_others_finish_before_the_error_is_raised():
    # The caller's fd and buffer must outlive every read of every ring.
    import time
    finished = []

    def fails(ring, stop):
        raise OSError(errno.EIO, "boom")

    def slow(ring, stop):
        time.sleep(0.3)
        finished.append(True)
    with BatchReader(backend="io_uring", workers=2) as r:
        with pytest.raises(OSError, match="boom"):
            r._backend._run([fails, slow])
        assert finished == [True]


def test_ranges_past_the_largest_file_offset_are_refused(tmp_path, backend):
    path = make_tree(tmp_path, [10])[0]
    with pytest.raises(ValueError, match="largest file offset"):
        read_ranges(path, [(1 << 63) - 4096], [10], backend=backend)


def test_a_job_leaves_the_gil_to_other_threads(tmp_path):
    # A Python thread spinning beside read_files: with a job holding the GIL per
    # file, the reader got ~2% of its solo rate here (it waited for the GIL at every
    # completion) while the spinner kept ~95%; with the job's loop free of the GIL,
    # both run: ~50% and ~70% on 2 cores. Generous bounds, in one process.
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: the reader and the spinner share it whatever the GIL does")
    import time
    paths = make_tree(tmp_path, [4096] * 10_000)
    reader = BatchReader(backend="io_uring", workers=1)

    def read(rounds=5):
        t0 = time.perf_counter()
        for _ in range(rounds):
            reader.read_files(paths)
        return time.perf_counter() - t0

    def spinning(during):
        stop = threading.Event()
        count = [0]

        def spin():
            n = 0
            while not stop.is_set():
                n += 1
            count[0] = n
        t = threading.Thread(target=spin)
        t0 = time.perf_counter()
        t.start()
        result = during()
        stop.set()
        t.join()
        return count[0] / (time.perf_counter() - t0), result

    with reader:
        read(1)                                  # page cache and arena warm
        solo_read = read()
        solo_spin, _ = spinning(lambda: time.sleep(solo_read))
        both_spin, both_read = spinning(read)
    assert solo_read / both_read > 0.2, "the reader starves beside a Python thread"
    assert both_spin / solo_spin > 0.4, "the spinner starves beside the reader"


def test_a_few_large_ranges_are_read_by_every_worker(tmp_path, backend):
    """Fewer ranges than workers: the reader cuts them into pieces for all workers;
    the caller sees one count per range, pread's (short at EOF)."""
    data = random.Random(4).randbytes((20 << 20) + 123)
    path = tmp_path / "big"
    path.write_bytes(data)
    offsets = [0, 5 << 20, len(data) - 1000, 7]
    lengths = [len(data), 9 << 20, 50 << 20, 0]
    buf = bytearray(sum(lengths))
    with BatchReader(backend=backend, workers=4) as reader:
        got = reader.read_ranges_into(path, buf, offsets, lengths)
    assert got == [len(data), 9 << 20, 1000, 0]
    at = 0
    for o, n, g in zip(offsets, lengths, got):
        assert buf[at:at + g] == data[o:o + g]
        at += n


def test_pieces_of_a_range_count_up_to_the_first_short_one():
    split = reader_module._split_for_workers([0], [40 << 20], [0], 4)
    assert split is not None and len(split[0]) > 4 and set(split[3]) == {0}
    assert sum(split[1]) == 40 << 20 and list(split[2]) == list(split[0])
    counts = [n for n in split[1]]
    counts[2] = 100                       # EOF inside piece 2: what follows is not the range's
    assert reader_module._joined(counts, split[1], split[3], 1) == \
        [split[1][0] + split[1][1] + 100]
    assert reader_module._split_for_workers([0] * 4, [40 << 20] * 4, [0] * 4, 4) is None
    assert reader_module._split_for_workers([0], [1 << 20], [0], 4) is None


def test_a_ring_sharing_a_file_reads_it_through_its_own_reopened_fd(tmp_path):
    # Rings reading one file at once each reopen it through /proc/self/fd (their own
    # file description: no readahead state to fight over); where that cannot be
    # done, they read the shared fd; a read that fails is not retried.
    from vyre_uring._uring_backend import _own_fds
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    r, w = os.pipe()
    try:
        seen = []
        assert _own_fds([fd], lambda fds: seen.append((fds, os.fstat(fds[0])))) is None
        (own,), stat = seen[0]
        assert own != fd and os.path.samestat(stat, os.fstat(fd))     # the same file
        with pytest.raises(OSError):
            os.fstat(own)                               # closed after the call
        assert _own_fds([r], lambda fds: fds) == [r]    # a pipe does not reopen: shared
        calls = []

        def failing(fds):
            calls.append(fds)
            raise OSError(errno.EIO, "a read failed")
        with pytest.raises(OSError, match="a read failed"):
            _own_fds([fd], failing)
        assert len(calls) == 1 and calls[0] != [fd]
    finally:
        for f in (fd, r, w):
            os.close(f)


def test_many_ranges_shared_by_rings_read_through_their_own_fds(tmp_path, backend):
    # Enough ranges per ring that each reopens the file for itself: every byte right.
    data = random.Random(5).randbytes(1 << 20)
    path = tmp_path / "f"
    path.write_bytes(data)
    rnd = random.Random(6)
    offsets = [rnd.randrange(len(data) - 100) for _ in range(2_000)]
    with BatchReader(backend=backend, workers=2) as r:
        got = r.read_ranges(path, offsets, [100] * len(offsets))
    assert got == [data[o:o + 100] for o in offsets]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or UNDER_ASAN,
                    reason="measures glibc's malloc handing freed memory back (ASan "
                           "replaces malloc)")
@pytest.mark.parametrize("workers", [1, 2])
def test_a_call_reuses_the_memory_of_the_last_calls_dropped_results(tmp_path, workers):
    # glibc hands the free top of its heap back to the kernel, so a call's new
    # results would page-fault on fresh memory, holding the GIL, once the caller
    # dropped the last call's. Each thread that ran a call's jobs keeps its topmost
    # small result (for RETAIN_S, after a call of at most RETAIN_BYTES): the memory
    # below it stays, and is reused. An empty and a 100-byte file (b"" is static, and
    # results of up to 512 bytes come from pymalloc's own mappings, above the heap)
    # do not take the top's place.
    paths = []
    for i in range(2000):
        paths.append(str(tmp_path / f"f{i}"))
        with open(paths[-1], "wb") as f:
            f.write(os.urandom(4096 if i > 1 else 100 * i))
    # With two rings, jobs go to whichever worker thread is free, and each thread's
    # results come from a heap of its own: a thread whose share of a call is larger
    # than in the calls just before faults on the difference. So the median call.
    faults = []
    with BatchReader(backend="io_uring", workers=workers) as r:
        for _ in range(3):
            assert len(r.read_files(paths)) == len(paths)     # dropped at once
        for _ in range(5):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            out = r.read_files(paths)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            assert [len(d) for d in out] == [0, 100] + [4096] * (len(paths) - 2)
            del out                                         # dropped before the next
    assert statistics.median(faults) < len(paths) // 4, \
        f"{faults} page faults for {len(paths)} results, call by call"


_IDLE_CHILD = """
import os, resource, sys, time
from vyre_uring import BatchReader
paths, idle = sys.argv[1:-1], float(sys.argv[-1])
with BatchReader(backend="io_uring", workers=1) as r:
    for _ in range(3):
        r.read_files(paths)                         # dropped at once
    time.sleep(idle)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    r.read_files(paths)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or UNDER_ASAN,
                    reason="measures glibc's malloc handing freed memory back (ASan "
                           "replaces malloc)")
def test_the_kept_memory_goes_back_once_the_calls_stop(tmp_path):
    # RETAIN_S after its last call the reader lets its tops go, and glibc hands the
    # memory below them back: the next call's results page-fault again. In a child,
    # where nothing of the test's is allocated above them.
    from vyre_uring._uring_backend import RETAIN_S
    paths = []
    for i in range(2000):
        paths.append(str(tmp_path / f"f{i}"))
        with open(paths[-1], "wb") as f:
            f.write(os.urandom(4096))

    def faults(idle):
        out = subprocess.run([sys.executable, "-c", _IDLE_CHILD, *paths, str(idle)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return int(out.stdout)
    assert faults(0) < len(paths) // 4                 # kept
    assert faults(RETAIN_S + 1.0) > len(paths) // 2    # given back
