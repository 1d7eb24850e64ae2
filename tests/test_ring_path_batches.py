"""The path batch methods: prep_openat_batch, prep_statx_batch, prep_close_batch —
one Python call for many files, the loop in C, checked whole before anything is queued."""
import array
import errno
import gc
import os
import stat

import pytest

import vyre_uring


@pytest.fixture
def tree(tmp_path):
    """Ten files of different sizes and contents, and their expected bytes."""
    files = {}
    for i in range(10):
        p = tmp_path / f"file {i} é.bin"
        data = bytes([i]) * (i * 1000 + 1)
        p.write_bytes(data)
        files[str(p)] = data
    return files


def by_user_data(completions):
    return {c.user_data: c.res for c in completions}


def test_openat_batch_opens_every_path_in_order(ring, tree):
    paths = list(tree)
    assert ring.prep_openat_batch(paths) == len(paths)
    res = by_user_data(ring.wait(len(paths), timeout=10))
    try:
        for i, p in enumerate(paths):
            assert res[i] >= 0
            assert os.pread(res[i], 1 << 20, 0) == tree[p]
            assert os.get_inheritable(res[i]) is False          # O_CLOEXEC
    finally:
        for fd in res.values():
            if fd >= 0:
                os.close(fd)


def test_openat_batch_fails_only_the_bad_path(ring, tree, tmp_path):
    paths = list(tree)[:3] + [str(tmp_path / "missing")] + list(tree)[3:5]
    ring.prep_openat_batch(paths, user_data=array.array("Q", range(100, 106)))
    res = by_user_data(ring.wait(6, timeout=10))
    assert res[103] == -errno.ENOENT
    good = [fd for u, fd in res.items() if u != 103]
    assert all(fd >= 0 for fd in good)
    for fd in good:
        os.close(fd)


def test_statx_batch_matches_os_stat(ring, tree, tmp_path):
    paths = list(tree) + [str(tmp_path)]
    results = vyre_uring.StatxArray(len(paths))
    ring.prep_statx_batch(paths, results)
    res = by_user_data(ring.wait(len(paths), timeout=10))
    assert set(res.values()) == {0}
    sizes, modes = results.sizes(), results.modes()
    for i, p in enumerate(paths):
        st = os.stat(p)
        assert sizes[i] == st.st_size
        assert modes[i] == st.st_mode
    assert stat.S_ISDIR(modes[-1])


def test_close_batch_closes_every_fd(ring, tree):
    fds = array.array("i", [os.open(p, os.O_RDONLY) for p in tree])
    ring.prep_close_batch(fds)
    assert set(by_user_data(ring.wait(len(fds), timeout=10)).values()) == {0}
    for fd in fds:
        with pytest.raises(OSError) as err:
            os.fstat(fd)
        assert err.value.errno == errno.EBADF


def test_direct_descriptors_open_read_close(ring, tree):
    paths = list(tree)
    n = len(paths)
    ring.register_files([-1] * n)
    ring.prep_openat_batch(paths, file_indexes=array.array("i", range(n)))
    res = by_user_data(ring.wait(n, timeout=10))
    if any(r == -errno.EINVAL for r in res.values()):
        pytest.skip("this kernel has no direct descriptors for openat (5.15)")
    assert set(res.values()) == {0}
    sizes = [len(tree[p]) for p in paths]
    buf = bytearray(sum(sizes))
    ring.prep_reads(array.array("i", range(n)), buf, [0] * n, sizes,
                    flags=vyre_uring.SQE_FIXED_FILE)
    res = by_user_data(ring.wait(n, timeout=10))
    assert [res[i] for i in range(n)] == sizes
    assert bytes(buf) == b"".join(tree[p] for p in paths)
    ring.prep_close_batch(array.array("i", range(n)), fixed=True)
    assert set(by_user_data(ring.wait(n, timeout=10)).values()) == {0}


def test_direct_descriptors_into_any_free_slot(ring, tree):
    paths = list(tree)[:4]
    ring.register_files([-1] * 8)
    alloc = vyre_uring.FILE_INDEX_ALLOC
    ring.prep_openat_batch(paths, file_indexes=array.array("i", [alloc] * 4))
    slots = sorted(by_user_data(ring.wait(4, timeout=10)).values())
    if any(s == -errno.EINVAL for s in slots):
        pytest.skip("this kernel cannot allocate direct descriptors (5.19)")
    assert len(set(slots)) == 4 and all(0 <= s < 8 for s in slots)


def test_paths_stay_alive_until_completion(ring, tree):
    paths = [os.fsencode(p).decode() + "" for p in tree]   # built here, held only by the ring
    n = ring.prep_openat_batch(paths)
    del paths
    gc.collect()
    res = by_user_data(ring.wait(n, timeout=10))
    assert all(fd >= 0 for fd in res.values())
    for fd in res.values():
        os.close(fd)


def test_a_nul_byte_fails_the_whole_batch_before_the_kernel(ring, tree):
    paths = list(tree)[:3] + ["bad\0path"]
    with pytest.raises(ValueError, match=r"paths\[3\].*NUL"):
        ring.prep_openat_batch(paths)
    assert ring.pending == 0


def test_statx_results_too_short_is_refused(ring, tree):
    with pytest.raises(ValueError, match="results holds 2"):
        ring.prep_statx_batch(list(tree), vyre_uring.StatxArray(2))
    assert ring.pending == 0


@pytest.mark.parametrize("fds, message", [
    (array.array("i", [3, -1]), "entry 1: fd must be a non-negative"),
    (5, "fds must be an array"),
])
def test_close_batch_bad_fds(ring, fds, message):
    with pytest.raises((ValueError, TypeError), match=message):
        ring.prep_close_batch(fds)
    assert ring.pending == 0


def test_direct_slots_outside_the_table_are_refused(ring, tree):
    ring.register_files([-1] * 2)
    with pytest.raises(ValueError, match="entry 2: slot 2 is outside"):
        ring.prep_openat_batch(list(tree)[:3], file_indexes=array.array("i", [0, 1, 2]))
    with pytest.raises(ValueError, match="slot 5 is outside"):
        ring.prep_close_batch(array.array("i", [5]), fixed=True)
    assert ring.pending == 0


def test_unequal_user_data_is_refused(ring, tree):
    with pytest.raises(ValueError, match="user_data has 2 elements but paths has 10"):
        ring.prep_openat_batch(list(tree), user_data=array.array("Q", [1, 2]))
    assert ring.pending == 0


def test_batch_stops_at_cq_capacity(tree):
    with vyre_uring.Ring(4, cq_entries=8) as ring:
        assert ring.prep_openat_batch(list(tree)) == 8
        fds = [c.res for c in ring.wait(8, timeout=10)]
        assert all(fd >= 0 for fd in fds)
        ring.prep_close_batch(array.array("i", fds))
        ring.wait(8, timeout=10)
