"""The reader's API as a careful user meets it: a single path where a sequence
belongs, lazy path iterables, the hard byte bound of iter_files, on_error="skip",
and ranges far past EOF. Every test runs against both backends."""
import errno
import itertools
import os
from pathlib import Path

import pytest

from vyre_uring import BatchReader, iter_files, read_files, read_ranges
from vyre_uring import reader as reader_module


@pytest.fixture(params=["io_uring", "threads"])
def backend(request):
    return request.param


@pytest.fixture
def tree(tmp_path):
    """Three small files, one missing path, one of 300 KiB."""
    paths = []
    for i, size in enumerate([10, 4096, 70_000]):
        p = tmp_path / f"f{i}"
        p.write_bytes(bytes([i + 1]) * size)
        paths.append(str(p))
    big = tmp_path / "big"
    big.write_bytes(os.urandom(300 << 10))
    return paths + [str(tmp_path / "missing"), str(big)]


@pytest.mark.parametrize("single", ["a.txt", b"a.txt", Path("a.txt")])
def test_a_single_path_where_a_sequence_belongs_is_a_type_error(backend, single):
    with BatchReader(backend=backend) as r:
        with pytest.raises(TypeError, match=r"sequence of paths.*\[path\]"):
            r.read_files(single)
        with pytest.raises(TypeError, match="sequence of paths"):
            r.iter_files(single)                # at the call, not at the first next()
    with pytest.raises(TypeError, match="sequence of paths"):
        read_files(single, backend=backend)


def test_on_error_skip_and_omit_leave_failed_paths_out(tree, backend):
    whole = read_files(tree, backend=backend, on_error="return")
    assert isinstance(whole[3], FileNotFoundError)
    expected = [r for r in whole if not isinstance(r, OSError)]
    assert read_files(tree, backend=backend, on_error="skip") == expected
    assert read_files(tree, backend=backend, on_error="omit") == expected
    with pytest.raises(ValueError, match='"skip"'):
        read_files(tree, backend=backend, on_error="ignore")


def test_iter_files_pulls_paths_a_batch_at_a_time(tmp_path, backend):
    p = tmp_path / "one"
    p.write_bytes(b"x" * 100)
    pulled = itertools.count()

    def endless():
        while True:
            next(pulled)
            yield str(p)

    it = iter_files(endless(), backend=backend)
    first = [next(it) for _ in range(3)]
    # One batch pulled, not the (endless) whole.
    assert next(pulled) <= reader_module.ITER_BATCH_FILES + 1
    assert all(data == b"x" * 100 for _, _, data in first)
    it.close()


def test_iter_files_indexes_a_generator_by_position(tree, backend):
    got = {i: (path, data) for i, path, data in iter_files(iter(tree), backend=backend)}
    assert sorted(got) == list(range(len(tree)))
    for i, path in enumerate(tree):
        assert got[i][0] == path


def test_max_file_bytes_leaves_larger_files_unread_with_efbig(tree, backend):
    got = {i: data for i, _, data in iter_files(tree, backend=backend,
                                                max_bytes_in_flight=256 << 10,
                                                max_file_bytes=64 << 10)}
    assert got[0] == b"\x01" * 10 and got[1] == b"\x02" * 4096
    for i in (2, 4):                            # 70,000 bytes and 300 KiB
        assert got[i].errno == errno.EFBIG
        assert got[i].filename == tree[i]
        assert "max_file_bytes (65536 bytes)" in got[i].strerror
    assert isinstance(got[3], FileNotFoundError)


def test_max_file_bytes_bounds_files_that_report_size_0(backend):
    # /proc/self/maps reports size 0 and holds more than 512 bytes.
    [(_, _, got)] = iter_files(["/proc/self/maps"], backend=backend,
                               max_bytes_in_flight=4096, max_file_bytes=512)
    assert got.errno == errno.EFBIG and "max_file_bytes (512 bytes)" in got.strerror


def test_max_file_bytes_must_fit_the_budget(tree):
    with pytest.raises(ValueError, match="max_file_bytes"):
        iter_files(tree, max_bytes_in_flight=100, max_file_bytes=101)
    with pytest.raises(ValueError, match="max_file_bytes"):
        iter_files(tree, max_file_bytes=0)


def test_a_range_far_past_eof_allocates_only_what_the_file_holds(tmp_path, backend):
    p = tmp_path / "f"
    p.write_bytes(b"0123456789")
    got = read_ranges(str(p), [0, 4, 20], [64 << 30, 1 << 40, 64 << 30], backend=backend)
    assert got == [b"0123456789", b"456789", b""]


def test_progress_is_checked_at_the_call(tree):
    with pytest.raises(TypeError, match="progress"):
        iter_files(tree, progress="yes")


def _int_arrays():
    """The kinds of integer arrays a caller passes: array('q') and a numpy int64
    array (copied whole), and what goes value by value (a list, a strided view, an
    array of another width)."""
    import array
    kinds = {"array q": lambda v: array.array("q", v), "list": list,
             "memoryview q": lambda v: memoryview(array.array("q", v)),
             "strided": lambda v: memoryview(array.array("q", [x for x in v
                                                               for _ in (0, 1)]))[::2],
             "array i": lambda v: array.array("i", v)}
    try:
        import numpy
    except ImportError:
        return kinds
    kinds["numpy int64"] = lambda v: numpy.array(v, dtype=numpy.int64)
    return kinds


@pytest.mark.parametrize("kind", sorted(_int_arrays()))
def test_ranges_read_the_same_from_every_kind_of_int_array(tree, backend, kind):
    # Each kind reaches the rings as the reader's own copy: the same bytes land, and
    # the caller's array is not held once the call returns (an array.array can grow).
    make = _int_arrays()[kind]
    data = Path(tree[-1]).read_bytes()
    offsets, lengths = [0, 5000, 299_000, 1 << 20], [100, 4096, 8192, 10]
    boffs = [0, 100, 4196, 12388]
    buf = bytearray(12398)
    args = [make(v) for v in (offsets, lengths, boffs)]
    with BatchReader(backend=backend, workers=2) as r:
        got = r.read_ranges_into(tree[-1], buf, *args)
        assert r.read_ranges(tree[-1], *args[:2]) == \
            [data[o:o + n] for o, n in zip(offsets, lengths)]
    want = [data[o:o + n] for o, n in zip(offsets, lengths)]
    assert got == [len(w) for w in want]
    assert all(buf[b:b + len(w)] == w for b, w in zip(boffs, want))
    for a in args:
        if hasattr(a, "append"):
            a.append(0)


@pytest.mark.parametrize("workers", [1, 2])
def test_no_ranges_read_nothing_but_the_path_must_exist(tree, backend, workers):
    with BatchReader(backend=backend, workers=workers) as r:
        assert r.read_ranges(tree[-1], [], []) == []
        assert r.read_ranges_into(tree[-1], bytearray(8), [], []) == []
        with pytest.raises(FileNotFoundError):
            r.read_ranges(tree[3], [], [])


def test_offsets_that_are_not_integers_are_a_type_error_naming_them(tree, backend):
    numpy = pytest.importorskip("numpy")
    dates = numpy.array([1, 2], dtype="datetime64[s]")
    with BatchReader(backend=backend) as r:
        with pytest.raises(TypeError, match="offsets"):
            r.read_ranges(tree[-1], dates, [1, 1])
