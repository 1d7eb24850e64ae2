"""VyreFileSystem against fsspec's own LocalFileSystem, method by method, on the
installed standard library and on trees with bad paths: the same values, the same
exception types."""
import os
import pickle
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

fsspec = pytest.importorskip("fsspec")
from fsspec.implementations.local import LocalFileSystem  # noqa: E402

from vyre_uring.fsspec import VyreFile, VyreFileSystem, route_local_paths  # noqa: E402

STDLIB = os.path.dirname(os.__file__)
STDLIB_FILES = sorted(os.path.join(STDLIB, f) for f in os.listdir(STDLIB)
                      if os.path.isfile(os.path.join(STDLIB, f)))
ON_ERROR = ["raise", "omit", "return"]
BOUNDS = st.one_of(st.none(), st.integers(-70_000, 70_000))


@pytest.fixture(scope="module")
def both():
    return VyreFileSystem(), LocalFileSystem()


@pytest.fixture
def bad_paths(tmp_path):
    (tmp_path / "dir").mkdir()
    return [str(tmp_path / "missing"), str(tmp_path / "dir"),
            str(tmp_path / "missing" / "below")]


def call(fn, *args, **kwargs):
    """fn's value, or the type of what it raised."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        return type(exc)


def shape(value):
    """Values with each exception instance replaced by its type."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value) if isinstance(value, Exception) else value


def test_the_protocol_is_registered_through_the_entry_point():
    assert type(fsspec.filesystem("vyre")) is VyreFileSystem
    with fsspec.open(f"vyre://{STDLIB_FILES[0]}", "rb") as f:
        assert isinstance(f, VyreFile)
        with open(STDLIB_FILES[0], "rb") as g:
            assert f.read() == g.read()
    assert type(fsspec.filesystem("file")) is LocalFileSystem    # never by default


def test_route_local_paths_is_opt_in_and_undoable():
    try:
        route_local_paths()
        assert type(fsspec.filesystem("file")) is VyreFileSystem
        with fsspec.open(STDLIB_FILES[0], "rb") as f:            # a plain path
            assert isinstance(f, VyreFile)
    finally:
        for protocol in ("file", "local"):
            fsspec.register_implementation(protocol, LocalFileSystem, clobber=True)
    assert type(fsspec.filesystem("file")) is LocalFileSystem


@settings(max_examples=60, deadline=None)
@given(index=st.integers(0, len(STDLIB_FILES) - 1), start=BOUNDS, end=BOUNDS)
def test_cat_file_matches_local(both, index, start, end):
    ours, theirs = both
    path = STDLIB_FILES[index]
    assert shape(call(ours.cat_file, path, start, end)) == \
        shape(call(theirs.cat_file, path, start, end))


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_cat_ranges_matches_local(both, bad_paths, data):
    ours, theirs = both
    files = STDLIB_FILES[:40] + bad_paths + [f"file://{STDLIB_FILES[0]}",
                                             f"vyre://{STDLIB_FILES[1]}"]
    n = data.draw(st.integers(0, 40))
    paths = data.draw(st.lists(st.sampled_from(files), min_size=n, max_size=n))
    starts = data.draw(st.one_of(BOUNDS, st.lists(BOUNDS, min_size=n, max_size=n)))
    ends = data.draw(st.one_of(BOUNDS, st.lists(BOUNDS, min_size=n, max_size=n)))
    theirs_paths = [p.replace("vyre://", "file://") for p in paths]
    for on_error in ON_ERROR:
        assert shape(call(ours.cat_ranges, paths, starts, ends, on_error=on_error)) == \
            shape(call(theirs.cat_ranges, theirs_paths, starts, ends, on_error=on_error))


@pytest.fixture(scope="module")
def large_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("large")
    paths = [str(root / "a.bin"), str(root / "b.bin")]
    for k, path in enumerate(paths):
        with open(path, "wb") as f:
            f.write(random.Random(k).randbytes((8 << 20) + 12345))
    return paths


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_cat_ranges_of_large_ranges_in_few_files_match_local(large_files, data):
    """Large ranges of one or two files, on a reader of 4 rings: it shares each
    file's ranges out over its rings (_spread), and the values are fsspec's."""
    ours, theirs = VyreFileSystem(workers=4), LocalFileSystem()
    size = (8 << 20) + 12345
    bound = st.one_of(st.none(), st.integers(-size - 10, size + 10))
    n = data.draw(st.integers(1, 12))
    paths = data.draw(st.lists(st.sampled_from(large_files[:data.draw(st.integers(1, 2))]),
                               min_size=n, max_size=n))
    starts = data.draw(st.lists(bound, min_size=n, max_size=n))
    ends = data.draw(st.lists(bound, min_size=n, max_size=n))
    for on_error in ON_ERROR:
        assert shape(call(ours.cat_ranges, paths, starts, ends, on_error=on_error)) == \
            shape(call(theirs.cat_ranges, paths, starts, ends, on_error=on_error))


def test_cat_ranges_checks_its_arguments_as_local_does(both):
    for args, kwargs in [(([STDLIB_FILES[0]], [0], [1]), {"max_gap": 10}),
                         ((STDLIB_FILES[0], [0], [1]), {}),
                         (([STDLIB_FILES[0]], [0, 1], [1]), {}),
                         (([STDLIB_FILES[0]], ["x"], [1]), {})]:
        assert shape(call(both[0].cat_ranges, *args, **kwargs)) == \
            shape(call(both[1].cat_ranges, *args, **kwargs))


@pytest.mark.parametrize("on_error", ON_ERROR)
def test_cat_matches_local(both, bad_paths, on_error):
    ours, theirs = both
    rnd = random.Random(7)
    some = rnd.sample(STDLIB_FILES, 6)
    json_dir = os.path.join(STDLIB, "json")
    targets = [rnd.sample(STDLIB_FILES, 30), STDLIB_FILES[3], [STDLIB_FILES[3]],
               json_dir, os.path.join(STDLIB, "js*"),
               rnd.sample(STDLIB_FILES, 5) + bad_paths[:2],
               # lists of plain paths (cat's fast path) and what falls back from it:
               # repeats and order, a directory, a glob, a trailing slash, a protocol,
               # a relative path, an empty list
               some + some[:3][::-1], some[:2] + [json_dir], some[:2] + [json_dir + "/"],
               some[:2] + [os.path.join(STDLIB, "js*")], some[:2] + [f"file://{some[3]}"],
               some[:2] + [os.path.relpath(some[3])], []] + bad_paths
    for target in targets:
        for recursive in (False, True):
            got = shape(call(ours.cat, target, recursive=recursive, on_error=on_error))
            want = shape(call(theirs.cat, target, recursive=recursive, on_error=on_error))
            assert got == want
            if isinstance(want, dict):
                assert list(got) == list(want)          # the same order too


def test_get_matches_local(both, tmp_path, bad_paths):
    ours, theirs = both
    tree = os.path.join(STDLIB, "json")
    outcomes = {}
    for name, fs in (("ours", ours), ("theirs", theirs)):
        dest = tmp_path / name
        outcomes[name] = [
            call(fs.get, tree, str(dest / "tree"), recursive=True),
            call(fs.get, STDLIB_FILES[:20], str(dest / "flat") + "/"),   # no such dir
            call(fs.get, STDLIB_FILES[:20], str(dest) + "/"),
            call(fs.get, [STDLIB_FILES[0], bad_paths[0], STDLIB_FILES[1]],
                 [str(dest / f"b{i}") for i in range(3)]),
            call(fs.get, bad_paths[1], str(dest / "d")),
        ]
    assert outcomes["ours"] == outcomes["theirs"]
    assert FileNotFoundError in outcomes["ours"]
    assert snapshot(tmp_path / "ours") == snapshot(tmp_path / "theirs")
    assert len(snapshot(tmp_path / "ours")) > 20


def snapshot(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                out[os.path.relpath(os.path.join(d, f), root)] = fh.read()
    return out


@settings(max_examples=30, deadline=None)
@given(index=st.integers(0, len(STDLIB_FILES) - 1),
       ops=st.lists(st.tuples(st.sampled_from(["read", "seek", "readline"]),
                              st.integers(-5, 50_000)), max_size=12))
def test_open_rb_matches_local(both, index, ops):
    ours, theirs = both
    path = STDLIB_FILES[index]
    with ours.open(path, "rb") as a, theirs.open(path, "rb") as b:
        assert a.size == b.size
        for op, n in ops:
            if op == "seek":
                n = abs(n)
                assert a.seek(n) == b.seek(n)
            elif op == "read":
                assert shape(call(a.read, n)) == shape(call(b.read, n))
            else:
                assert a.readline() == b.readline()
            assert a.tell() == b.tell()


def test_open_fails_at_open_as_local_does(both, bad_paths):
    for path in bad_paths:
        assert call(both[0].open, path, "rb") == call(both[1].open, path, "rb")


def test_writes_and_listing_are_local_ones(tmp_path):
    fs = VyreFileSystem()
    target = str(tmp_path / "a" / "b.txt")
    fs.makedirs(str(tmp_path / "a"))
    with fs.open(target, "wb") as f:
        f.write(b"hello")
    assert fs.cat_file(target) == b"hello"
    assert fs.ls(str(tmp_path / "a")) == [target]
    fs.mv(target, target + ".2")
    assert fs.cat(target + ".2") == b"hello"
    fs.rm(target + ".2")
    assert not fs.exists(target + ".2")


def test_the_filesystem_pickles_without_its_reader():
    fs = VyreFileSystem(backend="threads")
    fs.cat_file(STDLIB_FILES[0])
    clone = pickle.loads(pickle.dumps(fs))
    assert clone._reader_args == ("threads", fs._reader_args[1], None)
    assert clone.cat_file(STDLIB_FILES[0], 0, 100) == fs.cat_file(STDLIB_FILES[0], 0, 100)
