"""read_files_into: many files into one caller buffer (the arena result mode), on both
backends. The oracle is read_files of the same paths: every file read lies whole and
alone in the buffer, every failure is the same OSError, and a file that does not fit
fails alone (ENOBUFS)."""
import array
import errno
import gc
import os
import sysconfig

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vyre_uring
from vyre_uring import BatchReader, PackedFiles, read_files, read_files_into

from conftest import direct_supported, open_fds

# Every test twice: files as direct descriptors, and as plain fds.
pytestmark = pytest.mark.usefixtures("file_table")


@pytest.fixture(params=["io_uring", "threads"])
def backend(request):
    return request.param


@pytest.fixture(scope="module")
def stdlib_paths():
    """About a thousand real files of all sizes, and four paths that fail."""
    root = sysconfig.get_paths()["stdlib"]
    paths = [os.path.join(d, f) for d, _, files in os.walk(root) for f in files
             if f.endswith(".py")][:1000]
    return paths + ["/nonexistent/x", root, "/proc/self/cmdline", b"/etc/hostname\0x"]


def check_against_read_files(res, paths, reader, align=1):
    """res holds exactly what read_files returns, laid out without overlap, inside
    the buffer, each start aligned."""
    want = reader.read_files(paths, on_error="return")
    assert isinstance(res, PackedFiles) and len(res) == len(paths)
    spans = []
    for i, w in enumerate(want):
        got = res[i]
        if isinstance(w, OSError):
            assert type(got) is type(w) and got.errno == w.errno, (paths[i], got, w)
            assert res.offsets[i] == -1 and i in res.errors
            continue
        assert bytes(got) == w, paths[i]
        assert res.lengths[i] == len(w) and (res.offsets[i] % align == 0 or not w)
        spans.append((res.offsets[i], res.offsets[i] + len(w)))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), "files overlap"
    assert not spans or spans[-1][1] <= res.used <= len(res.buffer)


@pytest.mark.parametrize("workers", [1, 4])
def test_every_file_lies_whole_and_alone_in_the_buffer(backend, workers, stdlib_paths):
    with BatchReader(backend=backend, workers=workers) as r:
        total = sum(os.path.getsize(p) for p in stdlib_paths[:-4])
        buf = bytearray(total + (64 << 10))
        res = r.read_files_into(stdlib_paths, buf, on_error="return", align=64)
        check_against_read_files(res, stdlib_paths, r, align=64)
        assert set(res.errors) == {len(stdlib_paths) - 4, len(stdlib_paths) - 3,
                                   len(stdlib_paths) - 1}


def test_the_buffer_is_reused_across_calls(backend, stdlib_paths):
    paths = stdlib_paths[:200]
    buf = bytearray(sum(os.path.getsize(p) for p in paths))    # exactly enough
    with BatchReader(backend=backend, workers=2) as r:
        for _ in range(3):
            res = r.read_files_into(paths, buf)
            check_against_read_files(res, paths, r)
            assert res.used == len(buf)
            del res


def test_a_file_that_does_not_fit_fails_alone_with_enobufs(backend, tmp_path):
    paths = []
    for i, size in enumerate([3000, 3000, 3000, 10, 0]):
        p = tmp_path / f"f{i}"
        p.write_bytes(bytes([65 + i]) * size)
        paths.append(str(p))
    buf = bytearray(6100)              # two of the large ones fit, the third cannot
    with BatchReader(backend=backend, workers=1) as r:
        res = r.read_files_into(paths, buf, on_error="return")
        assert sorted(e.errno for e in res.errors.values()) == [errno.ENOBUFS]
        (i,) = res.errors
        assert res.errors[i].filename == paths[i] and res[i] is res.errors[i]
        for k in set(range(5)) - {i}:
            assert bytes(res[k]) == bytes([65 + k]) * [3000, 3000, 3000, 10, 0][k]
        del res
        with pytest.raises(OSError) as info:
            r.read_files_into(paths, bytearray(6100))
        assert info.value.errno == errno.ENOBUFS


def test_raise_gives_the_first_failure_in_input_order(backend, tmp_path):
    good = tmp_path / "good"
    good.write_bytes(b"x" * 100)
    paths = [str(good), str(tmp_path / "missing1"), str(tmp_path), str(tmp_path / "m2")]
    with pytest.raises(FileNotFoundError) as info:
        read_files_into(paths, bytearray(1000), backend=backend)
    assert info.value.filename == paths[1]


def test_files_that_report_size_zero_are_read_to_eof(backend, tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    paths = ["/proc/self/cmdline", str(empty), "/proc/self/cmdline"]
    res = read_files_into(paths, bytearray(1 << 16), backend=backend)
    cmdline = open("/proc/self/cmdline", "rb").read()
    assert bytes(res[0]) == bytes(res[2]) == cmdline and len(cmdline) > 0
    assert bytes(res[1]) == b"" and res.offsets[1] >= 0


@pytest.mark.parametrize("bad", [b"bytes are read-only", "text", 42, memoryview(b"ro")])
def test_a_buffer_that_cannot_be_written_is_a_type_error_naming_it(backend, bad):
    with pytest.raises(TypeError, match="writable contiguous buffer.*" + type(bad).__name__):
        read_files_into(["/etc/hostname"], bad, backend=backend)


@pytest.mark.parametrize("align", [0, 3, -8])
def test_align_must_be_a_power_of_two(align):
    with pytest.raises(ValueError, match="align must be a power of two"):
        read_files_into(["/etc/hostname"], bytearray(10), align=align)


def test_on_error_must_be_raise_or_return():
    with pytest.raises(ValueError, match='on_error must be "raise" or "return"'):
        read_files_into(["/etc/hostname"], bytearray(10), on_error="skip")


def test_the_buffer_is_released_when_the_result_goes(backend, tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    buf = bytearray(100)
    res = read_files_into([str(tmp_path / "a"), str(tmp_path / "missing")], buf,
                          backend=backend, on_error="return")
    with pytest.raises(BufferError):
        buf.extend(b"x")               # the result's memoryview holds it
    del res
    gc.collect()
    buf.extend(b"x")                   # and only the result did


def test_numpy_and_array_buffers_take_bytes(backend, tmp_path):
    (tmp_path / "a").write_bytes(bytes(range(16)))
    target = array.array("d", [0.0]) * 4
    res = read_files_into([str(tmp_path / "a")], target, backend=backend)
    assert bytes(res[0]) == bytes(range(16)) and target.tobytes()[:16] == bytes(range(16))


def test_o_direct_reads_land_in_the_buffer(tmp_path):
    data = os.urandom(3 * 4096 + 100)
    (tmp_path / "a").write_bytes(data)
    if not direct_supported(str(tmp_path / "a")):
        pytest.skip(f"{tmp_path}'s filesystem refuses O_DIRECT")
    for backend in ("io_uring", "threads"):
        res = read_files_into([str(tmp_path / "a")], bytearray(len(data)), backend=backend,
                              direct=True)
        assert bytes(res[0]) == data


def test_an_interrupted_call_leaves_no_fd_and_nothing_writing(backend, stdlib_paths):
    # Ctrl-C (here: a progress callback raising) mid-call: the call raises only when
    # nothing it started is still in flight, every fd is closed, and the buffer is
    # the caller's again.
    paths = stdlib_paths[:-4] * 3
    buf = bytearray(sum(os.path.getsize(p) for p in paths))

    def progress(done, total, nbytes):
        if done:
            raise KeyboardInterrupt

    with BatchReader(backend=backend, workers=2) as r:
        before = open_fds()
        with pytest.raises(KeyboardInterrupt):
            r.read_files_into(paths, buf, progress=progress)
        gc.collect()
        assert open_fds() == before
        buf.extend(b"x")               # not exported any more
        check_against_read_files(r.read_files_into(paths[:50], buf), paths[:50], r)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 20000), min_size=1, max_size=40),
       room=st.integers(0, 200000), align=st.sampled_from([1, 8, 4096]))
def test_property_each_file_fits_whole_or_fails_alone(tmp_path_factory, sizes, room, align):
    d = tmp_path_factory.mktemp("p")
    paths = []
    for i, size in enumerate(sizes):
        p = d / f"f{i}"
        p.write_bytes(os.urandom(size))
        paths.append(str(p))
    for backend in ("io_uring", "threads"):
        res = read_files_into(paths, bytearray(room), backend=backend, align=align,
                              on_error="return", workers=2)
        assert {e.errno for e in res.errors.values()} <= {errno.ENOBUFS}
        placed = 0
        for i, p in enumerate(paths):
            if i not in res.errors:
                assert bytes(res[i]) == open(p, "rb").read()
                placed += 1
        # Whatever was refused could not fit what was left when it was sized.
        if res.errors:
            assert min(sizes[i] for i in res.errors) > room - res.used - align


def test_module_function_and_package_export():
    assert vyre_uring.read_files_into is read_files_into
    assert "read_files_into" in vyre_uring.__all__ and "PackedFiles" in vyre_uring.__all__
    res = read_files_into(["/etc/hostname"], bytearray(4096))
    assert bytes(res[0]) == read_files(["/etc/hostname"])[0] and repr(res).startswith(
        "<PackedFiles 1 files, 0 failed")


def test_a_file_that_cannot_be_opened_takes_no_room(backend, file_table):
    # As nobody: an unreadable file (statx succeeds, the open fails EACCES) fails
    # alone with EACCES and reserves nothing, so the readable files still fit.
    import shutil
    import tempfile
    import vyre_uring._threads_backend      # noqa: F401 (nobody may not read the stdlib)
    import vyre_uring._uring_backend        # noqa: F401
    from conftest import run_as_nobody
    root = tempfile.mkdtemp(prefix="vyre-eacces-")
    try:
        os.chmod(root, 0o755)
        paths = []
        for i, size in enumerate([10_000, 1000, 1000, 1000, 1000]):
            path = os.path.join(root, f"f{i}")
            with open(path, "wb") as f:
                f.write(bytes([65 + i]) * size)
            os.chmod(path, 0o000 if i == 0 else 0o644)
            paths.append(path)

        def body():
            try:
                vyre_uring.Ring(2).close()
            except OSError as exc:
                return {"setup": f"no io_uring for nobody here: {exc}"}
            res = read_files_into(paths, bytearray(4000), backend=backend,
                                  on_error="return", workers=1)
            return {"errors": {str(i): e.errno for i, e in res.errors.items()},
                    "used": res.used, "data": [bytes(res[i]).decode() for i in range(1, 5)]}
        out = run_as_nobody(body)
    finally:
        shutil.rmtree(root)
    if "setup" in out:
        pytest.skip(out["setup"])
    assert "error" not in out, out
    assert out["errors"] == {"0": errno.EACCES}, out
    assert out["used"] == 4000 and out["data"] == [chr(66 + i) * 1000 for i in range(4)]
