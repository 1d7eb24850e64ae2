"""read_path_ranges: byte ranges of many files in one call, both backends against
plain Python reads (open, seek, read), on the installed standard library."""
import errno
import gc
import os
import pathlib
import random
import resource
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vyre_uring import BatchReader, read_path_ranges

from conftest import direct_supported, evict, limit_leaving_free, open_fds, run_as_nobody

STDLIB = os.path.dirname(os.__file__)
STDLIB_FILES = sorted(os.path.join(STDLIB, f) for f in os.listdir(STDLIB)
                      if os.path.isfile(os.path.join(STDLIB, f)))


@pytest.fixture(params=["io_uring", "threads"])
def backend(request):
    return request.param


def plain_range(path, offset, length):
    """What read_path_ranges promises for one range, or the exception's
    (type, errno)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read() if length < 0 else f.read(length)
    except OSError as exc:
        return type(exc), exc.errno


def outcome(x):
    return (type(x), x.errno) if isinstance(x, OSError) else x


def random_ranges(files, count, seed):
    rnd = random.Random(seed)
    paths = [rnd.choice(files) for _ in range(count)]
    offsets = [rnd.choice([0, rnd.randrange(100_000), rnd.randrange(4096)]) for _ in paths]
    lengths = [rnd.choice([-1, 0, 1, 4096, rnd.randrange(70_000)]) for _ in paths]
    return paths, offsets, lengths


@pytest.mark.parametrize("workers", [1, 2])
def test_stdlib_ranges_match_plain_reads(backend, workers):
    # More files than one window holds (128), with repeated and interleaved paths.
    paths, offsets, lengths = random_ranges(STDLIB_FILES[:400], 3000, seed=workers)
    with BatchReader(backend=backend, workers=workers) as r:
        got = r.read_path_ranges(paths, offsets, lengths)
    assert got == [plain_range(*t) for t in zip(paths, offsets, lengths)]


@pytest.fixture
def spread_calls(monkeypatch):
    """The file entries of each _spread the reader makes, recorded."""
    import vyre_uring._uring_backend as ub
    calls = []
    spread = ub._spread

    def recorded(*args):
        files, first = spread(*args)
        calls.append(files)
        return files, first
    monkeypatch.setattr(ub, "_spread", recorded)
    return calls


@pytest.mark.parametrize("workers", [1, 3, 8])
def test_ranges_of_fewer_files_than_rings_are_shared_out(tmp_path, backend, workers,
                                                         spread_calls):
    """One or two files holding every range: the rings share a file's large ranges
    (small ones stay on one ring), and the results are the same."""
    entries = spread_calls
    data = random.Random(workers).randbytes(12 << 20)
    one, two = tmp_path / "one.bin", tmp_path / "two.bin"
    one.write_bytes(data)
    two.write_bytes(data[::-1])
    rnd = random.Random(7)

    def ranges(path, count, size):
        return [(str(path), rnd.randrange(len(data) - size), size) for _ in range(count)]
    small, large = ranges(one, 700, 4096), ranges(one, 20, 1 << 20)
    large2 = ranges(two, 12, 1 << 20)
    to_eof = [(str(one), len(data) - rnd.randrange(1, 5000), -1) for _ in range(5)]
    missing = [(str(tmp_path / "missing"), 0, 10)] * 90
    cases = {"small": small, "large": large, "two large": large + large2,
             "mixed": small + to_eof + large, "missing": missing + small}
    for name, ranges in cases.items():
        rnd.shuffle(ranges)
        entries.clear()
        paths, offsets, lengths = (list(x) for x in zip(*ranges))
        with BatchReader(backend=backend, workers=workers) as r:
            got = r.read_path_ranges(paths, offsets, lengths, on_error="return")
            rings = r.stats()["workers"]        # fewer than asked where memlock is low
        assert [outcome(g) for g in got] == [plain_range(*t) for t in ranges], name
        files = len({p for p, _, _ in ranges})
        if backend == "io_uring" and rings // files >= 2 and name in ("large", "two large"):
            assert len(entries) == 1 and len(entries[0]) > files, (name, entries)
        elif backend == "io_uring" and name in ("small", "missing"):
            assert all(len(e) == files for e in entries), (name, entries)


@pytest.mark.parametrize("workers", [1, 4])
def test_small_ranges_of_an_uncached_file_are_shared_out(tmp_path, backend, workers,
                                                        spread_calls):
    """Many small ranges of one file not in the page cache: the rings share them
    (the disk gets more in flight), and the results are the same as pread's."""
    entries = spread_calls
    path = tmp_path / "cold.bin"
    path.write_bytes(random.Random(workers).randbytes(8 << 20))
    rnd = random.Random(11)
    offsets = [rnd.randrange((8 << 20) - 4096) for _ in range(700)]
    evict(path)
    import vyre_uring._uring_backend as ub
    if not ub._uncached(str(path), offsets[::100]):
        pytest.skip(f"{tmp_path}'s filesystem kept the file cached (fadvise DONTNEED)")
    evict(path)
    with BatchReader(backend=backend, workers=workers) as r:
        got = r.read_path_ranges([str(path)] * 700, offsets, [4096] * 700)
        rings = r.stats()["workers"]
    assert got == [plain_range(str(path), o, 4096) for o in offsets]
    if backend == "io_uring" and rings >= 2:
        assert len(entries) == 1 and len(entries[0]) > 1, entries


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_ranges_and_bad_paths_match_plain_reads(tmp_path_factory, backend, data):
    root = tmp_path_factory.mktemp("bad")
    (root / "dir").mkdir()
    bad = [str(root / "missing"), str(root / "dir"), str(root / "missing" / "below")]
    files = STDLIB_FILES[:50] + bad
    n = data.draw(st.integers(0, 60))
    paths = data.draw(st.lists(st.sampled_from(files), min_size=n, max_size=n))
    offsets = data.draw(st.lists(st.integers(0, 200_000), min_size=n, max_size=n))
    lengths = data.draw(st.lists(st.integers(-3, 100_000), min_size=n, max_size=n))
    got = read_path_ranges(paths, offsets, lengths, on_error="return", backend=backend)
    assert [outcome(x) for x in got] == \
        [plain_range(*t) for t in zip(paths, offsets, lengths)]
    for x, p in zip(got, paths):
        if isinstance(x, OSError):
            assert x.filename == p


def test_backends_agree_on_every_bad_path_kind(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    good = STDLIB_FILES[0]
    paths = [good, str(tmp_path / "missing"), str(tmp_path), str(fifo), "a\0b", "/dev/null",
             good]
    results = {}
    for backend in ("io_uring", "threads"):
        with BatchReader(backend=backend) as r:
            results[backend] = r.read_path_ranges(paths, [0] * 7, [10] * 7,
                                                  on_error="return")
    uring, threads = results["io_uring"], results["threads"]
    assert [outcome(x) for x in uring] == [outcome(x) for x in threads]
    assert [str(x) for x in uring[1:6]] == [str(x) for x in threads[1:6]]
    assert uring[0] == uring[6] == plain_range(good, 0, 10)
    assert isinstance(uring[1], FileNotFoundError)
    assert isinstance(uring[2], IsADirectoryError)
    for fails in (uring[3], uring[5]):              # a FIFO is never waited on
        assert fails.errno == errno.EINVAL and "not a regular file" in str(fails)
    assert uring[4].errno == errno.EINVAL and "null byte" in str(uring[4])


def test_on_error_raise_raises_the_first_failure_in_input_order(tmp_path, backend):
    paths = [STDLIB_FILES[0], str(tmp_path), str(tmp_path / "missing")]
    with pytest.raises(IsADirectoryError) as info:
        read_path_ranges(paths, [0, 0, 0], [1, 1, 1], backend=backend)
    assert info.value.filename == str(tmp_path)


@pytest.fixture
def nobody_dir():
    """A directory that uid nobody may enter (pytest's tmp_path is root's alone)."""
    root = tempfile.mkdtemp(prefix="vyre-ranges-")
    os.chmod(root, 0o755)
    yield pathlib.Path(root)
    shutil.rmtree(root)


def test_permission_denied_fails_that_file_only(nobody_dir):
    import vyre_uring._threads_backend  # noqa: F401 (nobody may not read the stdlib)
    import vyre_uring._uring_backend  # noqa: F401
    secret, public = nobody_dir / "secret", nobody_dir / "public"
    secret.write_bytes(b"s" * 100)
    public.write_bytes(b"p" * 100)
    secret.chmod(0o600)
    public.chmod(0o644)

    def body():
        out = {}
        for backend in ("io_uring", "threads"):
            got = read_path_ranges([str(secret), str(public)], [0, 10], [5, 5],
                                   on_error="return", backend=backend)
            out[backend] = [repr(x) if isinstance(x, Exception) else x.decode() for x in got]
        return out
    out = run_as_nobody(body)
    if "setup" in out:
        pytest.skip(out["setup"])
    for backend in ("io_uring", "threads"):
        assert out[backend][1] == "ppppp", out
        assert out[backend][0].startswith("PermissionError(13"), out


def test_arguments_are_checked_before_any_read(backend):
    with BatchReader(backend=backend) as r:
        with pytest.raises(ValueError, match="one value per range"):
            r.read_path_ranges([STDLIB_FILES[0]], [0, 1], [1])
        with pytest.raises(ValueError, match="range 1: offset -1"):
            r.read_path_ranges([STDLIB_FILES[0]] * 2, [0, -1], [1, 1])
        with pytest.raises(TypeError, match="offsets"):
            r.read_path_ranges([STDLIB_FILES[0]], [0.5], [1])
        with pytest.raises(ValueError, match="on_error"):
            r.read_path_ranges([], [], [], on_error="omit")
        assert r.read_path_ranges([], [], []) == []


def test_direct_reads_match_buffered_ones(tmp_path, backend):
    paths = [str(tmp_path / f"f{i}") for i in range(5)]
    rnd = random.Random(5)
    for p in paths:
        with open(p, "wb") as f:
            f.write(rnd.randbytes(rnd.randrange(1, 600_000)))
    if not direct_supported(paths[0]):
        pytest.skip(f"{tmp_path} is on a filesystem without O_DIRECT")
    paths, offsets, lengths = random_ranges(paths, 300, seed=6)
    with BatchReader(backend=backend, direct=True) as r:
        got = r.read_path_ranges(paths, offsets, lengths)
    assert got == [plain_range(*t) for t in zip(paths, offsets, lengths)]


@pytest.mark.parametrize("free", [0, 8])
def test_near_the_fd_limit(tmp_path, backend, free):
    """With 8 fds free, 300 files are all read (a window ends where the fds end);
    with none, each file fails alone with EMFILE; no fd is left open."""
    paths = [str(tmp_path / f"f{i}") for i in range(300)]
    for i, p in enumerate(paths):
        with open(p, "wb") as f:
            f.write(bytes([i % 256]) * 100)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with BatchReader(backend=backend, workers=2) as r:
        expected = r.read_path_ranges(paths, [10] * 300, [5] * 300)
        gc.collect()
        before = open_fds()
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit_leaving_free(free), hard))
        try:
            got = r.read_path_ranges(paths, [10] * 300, [5] * 300, on_error="return")
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert open_fds() == before
    if free:
        assert got == expected
    else:
        assert all(isinstance(x, OSError) and x.errno == errno.EMFILE for x in got)


def test_files_whose_size_says_nothing_are_read_as_asked_or_to_eof(backend):
    # /proc reports size 0 and holds more: a range is read as asked, or to EOF.
    with BatchReader(backend=backend) as r:
        whole, part = r.read_path_ranges(["/proc/self/cmdline"] * 2, [0, 1], [-1, 3])
    with open("/proc/self/cmdline", "rb") as f:
        expected = f.read()
    assert whole == expected and part == expected[1:4]


def test_a_single_path_and_offsets_past_any_file_are_refused_on_both_backends(backend):
    with BatchReader(backend=backend) as r:
        with pytest.raises(TypeError, match="sequence of paths"):
            r.read_path_ranges(STDLIB_FILES[0], [0], [1])
        with pytest.raises(ValueError, match="range 0: offset"):
            r.read_path_ranges([STDLIB_FILES[0]], [(1 << 63) - 1], [1])
