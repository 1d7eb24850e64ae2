"""Bad input is refused with a clear exception before anything reaches the kernel."""
import array
import os
import subprocess
import sys
import textwrap

import pytest

import vyre_uring
from vyre_uring import (SQE_FIXED_FILE, ArgumentRangeError, RingClosedError, RingFullError,
                        Ring, Statx, StatxArray, UringError)

IOSQE_BUFFER_SELECT = 1 << 5
IOSQE_CQE_SKIP_SUCCESS = 1 << 6


def assert_ring_still_works(ring):
    assert ring.pending == 0
    ring.prep_nop(user_data=99)
    (c,) = ring.wait(timeout=5)
    assert (c.user_data, c.res) == (99, 0)


# ---- closed ring -------------------------------------------------------------------

def _closed_ring_calls(fd):
    buf = bytearray(16)
    return {
        "prep_nop": lambda r: r.prep_nop(),
        "prep_read": lambda r: r.prep_read(fd, buf),
        "prep_write": lambda r: r.prep_write(fd, b"x"),
        "prep_readv": lambda r: r.prep_readv(fd, [buf]),
        "prep_writev": lambda r: r.prep_writev(fd, [b"x"]),
        "prep_read_fixed": lambda r: r.prep_read_fixed(fd, 0, 0, 1),
        "prep_write_fixed": lambda r: r.prep_write_fixed(fd, 0, 0, 1),
        "prep_openat": lambda r: r.prep_openat("/"),
        "prep_close": lambda r: r.prep_close(fd),
        "prep_statx": lambda r: r.prep_statx("/", Statx()),
        "prep_fsync": lambda r: r.prep_fsync(fd),
        "prep_timeout": lambda r: r.prep_timeout(1.0),
        "prep_nops": lambda r: r.prep_nops([1, 2]),
        "prep_reads": lambda r: r.prep_reads(fd, buf, [0], [1]),
        "prep_read_fixed_batch": lambda r: r.prep_read_fixed_batch(fd, 0, [0], [1]),
        "submit": lambda r: r.submit(),
        "submit_and_wait": lambda r: r.submit_and_wait(0),
        "wait": lambda r: r.wait(0, timeout=0),
        "completions": lambda r: r.completions(),
        "reap": lambda r: r.reap(array.array("Q", [0]), array.array("i", [0])),
        "probe": lambda r: r.probe(),
        "register_buffers": lambda r: r.register_buffers([bytearray(16)]),
        "unregister_buffers": lambda r: r.unregister_buffers(),
        "register_files": lambda r: r.register_files([fd]),
        "update_files": lambda r: r.update_files(0, [fd]),
        "unregister_files": lambda r: r.unregister_files(),
        "fileno": lambda r: r.fileno(),
        "__enter__": lambda r: r.__enter__(),
    }


CLOSED_METHODS = sorted(_closed_ring_calls(0))


@pytest.mark.parametrize("method", CLOSED_METHODS)
def test_closed_ring_raises_ring_closed_error(fd, method):
    r = Ring(8)
    r.close()
    call = _closed_ring_calls(fd)[method]
    with pytest.raises(RingClosedError, match="closed") as info:
        call(r)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, UringError)
    assert r.pending == 0 and r.in_flight == 0 and r.closed


def test_closed_ring_prep_cancel_raises_ring_closed_error():
    # In a child process: a regression here is a segfault, which would kill the run.
    code = textwrap.dedent("""
        import vyre_uring
        r = vyre_uring.Ring(8)
        r.close()
        try:
            r.prep_cancel(5)
        except vyre_uring.RingClosedError:
            raise SystemExit(0)
        raise SystemExit(3)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])


def test_closed_ring_properties_are_safe():
    r = Ring(8)
    r.close()
    assert r.closed is True
    assert r.pending == 0 and r.in_flight == 0
    assert repr(r) == "<Ring closed>"
    r.close()                                    # idempotent


# ---- read/write argument checks ----------------------------------------------------

@pytest.mark.parametrize("nbytes", [-1, 17, 2**32, 2**40])
def test_bad_nbytes_is_refused(ring, fd, nbytes):
    buf = bytearray(16)
    with pytest.raises(ValueError, match="nbytes"):
        ring.prep_read(fd, buf, nbytes=nbytes)
    assert ring.pending == 0
    buf.extend(b"x")                             # the failed prep released its export
    assert_ring_still_works(ring)


@pytest.mark.parametrize("buf_offset,nbytes", [(10, 7), (16, 1), (15, 2)])
def test_range_outside_buffer_is_refused(ring, fd, buf_offset, nbytes):
    with pytest.raises(ValueError, match="past the end|outside"):
        ring.prep_read(fd, bytearray(16), buf_offset=buf_offset, nbytes=nbytes)
    assert ring.pending == 0


@pytest.mark.parametrize("buf_offset", [-1, 17, 2**40])
def test_buf_offset_outside_buffer_is_refused(ring, fd, buf_offset):
    with pytest.raises(ValueError, match="buf_offset"):
        ring.prep_read(fd, bytearray(16), buf_offset=buf_offset)
    with pytest.raises(ValueError, match="buf_offset"):
        ring.prep_write(fd, bytes(16), buf_offset=buf_offset)
    assert ring.pending == 0


def test_empty_range_at_end_is_allowed(ring, fd):
    ring.prep_read(fd, bytearray(16), buf_offset=16)
    assert ring.pending == 1
    (c,) = ring.wait(timeout=5)
    assert c.res == 0


@pytest.mark.parametrize("buf", [b"read-only bytes", memoryview(b"ro"), "a str", None, 5])
def test_prep_read_needs_a_writable_buffer(ring, fd, buf):
    with pytest.raises(TypeError, match="buf"):
        ring.prep_read(fd, buf)
    assert ring.pending == 0


def test_prep_read_refuses_non_contiguous_buffer(ring, fd):
    with pytest.raises(TypeError):
        ring.prep_read(fd, memoryview(bytearray(16))[::2])
    assert ring.pending == 0


def test_prep_write_refuses_non_buffer(ring, fd):
    with pytest.raises(TypeError, match="buf"):
        ring.prep_write(fd, "text is not bytes")
    assert ring.pending == 0


def test_bad_offset_is_refused(ring, fd):
    with pytest.raises(ValueError, match="offset"):
        ring.prep_read(fd, bytearray(4), -2)
    with pytest.raises(ValueError, match="offset"):
        ring.prep_readv(fd, [bytearray(4)], -5)
    assert ring.pending == 0


# ---- offset -1: the file position, for every op that takes an offset ---------------------

def _position_reads(ring, fd, buf):
    """Each op that takes an offset, given -1: (name, prepare), reading 4 bytes."""
    ring.register_buffers([buf])
    return [
        ("prep_read", lambda: ring.prep_read(fd, buf, -1, nbytes=4)),
        ("prep_readv", lambda: ring.prep_readv(fd, [memoryview(buf)[:4]], -1)),
        ("prep_read_fixed", lambda: ring.prep_read_fixed(fd, 0, -1, 4)),
        ("prep_reads", lambda: ring.prep_reads(fd, buf, [-1], [4])),
        ("prep_read_fixed_batch", lambda: ring.prep_read_fixed_batch(fd, 0, [-1], [4])),
    ]


def test_offset_minus_one_reads_at_the_file_position_and_advances_it(ring, tmp_file):
    path, data = tmp_file
    buf = bytearray(8)
    f = os.open(path, os.O_RDONLY)
    try:
        os.lseek(f, 100, os.SEEK_SET)
        for i, (name, prepare) in enumerate(_position_reads(ring, f, buf)):
            start = 100 + 4 * i
            prepare()
            (c,) = ring.wait(timeout=5)
            assert c.res == 4, name
            assert buf[:4] == data[start:start + 4], name
            assert os.lseek(f, 0, os.SEEK_CUR) == start + 4, name
    finally:
        os.close(f)


def test_offset_minus_one_writes_at_the_file_position(ring, tmp_path):
    f = os.open(tmp_path / "w", os.O_RDWR | os.O_CREAT)
    try:
        os.write(f, b"ab")
        ring.prep_write(f, b"cd", -1)
        ring.prep_writev(f, [b"ef"], -1)
        assert [c.res for c in ring.wait(2, timeout=5)] == [2, 2]
        assert os.pread(f, 16, 0) == b"abcdef"
    finally:
        os.close(f)


@pytest.mark.parametrize("offset", [-2, -4096, -2**63])
def test_offsets_below_minus_one_are_refused_by_every_op(ring, fd, offset):
    buf = bytearray(8)
    ring.register_buffers([buf])
    single = [lambda: ring.prep_read(fd, buf, offset),
              lambda: ring.prep_write(fd, b"x", offset),
              lambda: ring.prep_readv(fd, [buf], offset),
              lambda: ring.prep_writev(fd, [b"x"], offset),
              lambda: ring.prep_read_fixed(fd, 0, offset, 1),
              lambda: ring.prep_write_fixed(fd, 0, offset, 1)]
    for call in single:
        with pytest.raises(ArgumentRangeError,
                           match="offset must be >= 0, or -1 for the file position"):
            call()
    for call in [lambda: ring.prep_reads(fd, buf, [0, offset], [1, 1]),
                 lambda: ring.prep_read_fixed_batch(fd, 0, [0, offset], [1, 1])]:
        with pytest.raises(ArgumentRangeError,
                           match=r"offsets\[1\] must be >= 0, or -1 for the file position"):
            call()
    assert ring.pending == 0


def test_readv_bad_buffers_are_refused(ring, fd):
    ok = bytearray(8)
    with pytest.raises(TypeError, match=r"buffers\[1\]"):
        ring.prep_readv(fd, [ok, b"read-only"])
    with pytest.raises(ValueError, match="1 to 1024"):
        ring.prep_readv(fd, [])
    with pytest.raises(ValueError, match="1 to 1024"):
        ring.prep_readv(fd, [bytearray(1)] * 1025)
    assert ring.pending == 0
    ok.extend(b"x")                              # the failed prep released buffers[0]


@pytest.mark.parametrize("bad_fd", [
    "3", None, b"3", [3],
    1.5,
])
def test_non_integer_fd_is_type_error(ring, bad_fd):
    with pytest.raises(TypeError):
        ring.prep_read(bad_fd, bytearray(4))
    with pytest.raises(TypeError):
        ring.prep_fsync(bad_fd)
    assert ring.pending == 0


@pytest.mark.parametrize("bad_fd", [-1, -100, 2**31])
def test_negative_or_huge_fd_is_value_error(ring, bad_fd):
    for call in (lambda: ring.prep_read(bad_fd, bytearray(4)),
                 lambda: ring.prep_write(bad_fd, b"x"),
                 lambda: ring.prep_readv(bad_fd, [bytearray(4)]),
                 lambda: ring.prep_fsync(bad_fd),
                 lambda: ring.prep_close(bad_fd)):
        with pytest.raises(ValueError, match="fd"):
            call()
    assert ring.pending == 0


# ---- registered buffers and files --------------------------------------------------

def test_buf_index_outside_registered_set(ring, fd):
    with pytest.raises(ValueError, match="buf_index"):
        ring.prep_read_fixed(fd, 0, 0, 1)         # nothing registered
    ring.register_buffers([bytearray(64), bytearray(64)])
    with pytest.raises(ValueError, match="buf_index 2"):
        ring.prep_read_fixed(fd, 2, 0, 1)
    with pytest.raises(ValueError, match="buf_index"):
        ring.prep_write_fixed(fd, 7, 0, 1)
    with pytest.raises(ValueError, match="nbytes"):
        ring.prep_read_fixed(fd, 1, 0, 65)
    with pytest.raises(ValueError, match="buf_offset"):
        ring.prep_read_fixed(fd, 1, 0, 1, 65)
    assert ring.pending == 0
    assert_ring_still_works(ring)


def test_fixed_file_outside_registered_table(ring, fd):
    with pytest.raises(ValueError, match="registered file table"):
        ring.prep_read(0, bytearray(4), flags=SQE_FIXED_FILE)  # no table
    ring.register_files([fd, -1])
    for slot in (2, 100, -1):
        with pytest.raises(ValueError, match="registered file table"):
            ring.prep_read(slot, bytearray(4), flags=SQE_FIXED_FILE)
    with pytest.raises(ValueError, match="registered file table"):
        ring.prep_close(2, fixed=True)
    with pytest.raises(ValueError, match="file_index"):
        ring.prep_openat("/", file_index=2)
    assert ring.pending == 0


def test_register_buffers_bad_input(ring):
    with pytest.raises(ValueError):
        ring.register_buffers([])
    with pytest.raises(TypeError, match=r"buffers\[0\]"):
        ring.register_buffers([b"read-only"])
    keep = bytearray(8)
    with pytest.raises(ValueError, match="empty"):
        ring.register_buffers([keep, bytearray()])
    keep.extend(b"x")                            # released after the failure
    assert ring.registered_buffers == 0


def test_update_files_without_table(ring, fd):
    with pytest.raises(ValueError, match="outside"):
        ring.update_files(0, [fd])


def test_path_with_nul_is_refused(ring):
    with pytest.raises(ValueError, match="NUL"):
        ring.prep_openat("a\0b")
    with pytest.raises(ValueError, match="NUL"):
        ring.prep_statx(b"a\0b", Statx())
    assert ring.pending == 0


def test_statx_needs_a_statx_buffer(ring):
    with pytest.raises(TypeError):
        ring.prep_statx("/", None)
    with pytest.raises(TypeError):
        ring.prep_statx("/", bytearray(256))
    assert ring.pending == 0


@pytest.mark.parametrize("seconds", [-1.0, float("nan")])
def test_bad_timeout_seconds(ring, seconds):
    with pytest.raises(ValueError, match="seconds"):
        ring.prep_timeout(seconds)
    assert ring.pending == 0


# ---- batch checks ------------------------------------------------------------------

@pytest.mark.parametrize("which", ["lengths", "buffer_offsets", "user_data", "fd"])
def test_batch_unequal_lengths_names_the_array(ring, fd, which):
    args = {"fd": fd, "offsets": [0, 1, 2], "lengths": [1, 1, 1],
            "buffer_offsets": [0, 1, 2], "user_data": [1, 2, 3]}
    args[which] = [fd, fd] if which == "fd" else [0, 1]
    with pytest.raises(ValueError, match=which):
        ring.prep_reads(args["fd"], bytearray(16), args["offsets"], args["lengths"],
                        args["buffer_offsets"], args["user_data"])
    assert ring.pending == 0


def test_fixed_batch_unequal_buf_index(ring, fd):
    ring.register_buffers([bytearray(16)])
    with pytest.raises(ValueError, match="buf_index"):
        ring.prep_read_fixed_batch(fd, [0, 0], [0, 1, 2], [1, 1, 1])
    assert ring.pending == 0


@pytest.mark.parametrize("bad,match", [
    ({"lengths": [4, 4, 100, 4]}, "does not fit"),
    ({"lengths": [4, 4, -1, 4]}, "length"),
    ({"offsets": [0, 0, -2, 0]}, "offsets[2] must be >= 0, or -1 for the file position"),
    ({"buffer_offsets": [0, 4, -8, 12]}, "buffer offset"),
    ({"buffer_offsets": [0, 4, 14, 12]}, "does not fit"),
    ({"fd": "bad"}, "fd"),
])
def test_bad_range_in_middle_of_batch_prepares_nothing(ring, fd, bad, match):
    args = {"fd": fd, "offsets": [0, 0, 0, 0], "lengths": [4, 4, 4, 4],
            "buffer_offsets": [0, 4, 8, 12]}
    args.update(bad)
    if args["fd"] == "bad":
        args["fd"] = [fd, fd, -1, fd]
    buf = bytearray(16)
    offs = array.array("q", args["offsets"])
    with pytest.raises(ValueError, match="range 2") as info:
        ring.prep_reads(args["fd"], buf, offs, args["lengths"], args["buffer_offsets"])
    assert match in str(info.value)
    assert ring.pending == 0 and ring.in_flight == 0
    buf.extend(b"x")                              # the buffer's export was released
    offs.append(1)                                # and so was the offsets array's
    assert_ring_still_works(ring)


@pytest.mark.parametrize("n", [1, 3, 4, 5, 9])
@pytest.mark.parametrize("kind", ["array", "list", "memoryview"])
def test_short_and_long_batches_copy_their_arguments_whole(ring, fd, n, kind):
    # Batches of a few values are copied into the call's own small buffer, longer ones
    # into allocated memory: every value lands either way, a bad value in the last
    # place refuses the whole batch, and the ring then still works (under ASan this
    # also catches a copy freed that was never allocated).
    make = {"array": lambda v: array.array("q", v), "list": list,
            "memoryview": lambda v: memoryview(array.array("q", v))}[kind]
    uds = make([1000 + i for i in range(n)])
    assert ring.prep_nops(uds) == n
    assert sorted(c.user_data for c in ring.wait(n, timeout=5)) == list(uds)
    buf = bytearray(8 * n)
    with pytest.raises(ValueError, match=f"range {n - 1}"):
        ring.prep_reads(fd, buf, make([0] * n), make([8] * (n - 1) + [9]))
    assert ring.pending == 0
    assert_ring_still_works(ring)


def test_bad_range_in_packed_batch_names_index(ring, fd):
    # packed (buffer_offsets=None): range 3 runs past the 16-byte buffer
    with pytest.raises(ValueError, match="range 3"):
        ring.prep_reads(fd, bytearray(16), [0, 0, 0, 0], [4, 4, 4, 5])
    assert ring.pending == 0


def test_bad_fixed_fd_in_batch(ring, fd):
    ring.register_files([fd])
    with pytest.raises(ValueError, match="range 1.*registered file table"):
        ring.prep_reads([0, 1], bytearray(8), [0, 0], [4, 4], flags=SQE_FIXED_FILE)
    assert ring.pending == 0


def test_bad_buf_index_in_fixed_batch(ring, fd):
    ring.register_buffers([bytearray(16), bytearray(16)])
    with pytest.raises(ValueError, match="range 2.*buf_index 5"):
        ring.prep_read_fixed_batch(fd, [0, 1, 5], [0, 0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="range 1.*does not fit"):
        ring.prep_read_fixed_batch(fd, [0, 1], [0, 0], [16, 17])
    assert ring.pending == 0


def test_fixed_batch_without_registered_buffers(ring, fd):
    with pytest.raises(ValueError, match="range 0.*buf_index"):
        ring.prep_read_fixed_batch(fd, 0, [0], [1])
    assert ring.pending == 0


def test_batch_read_only_buffer_is_type_error(ring, fd):
    with pytest.raises(TypeError, match="buffer"):
        ring.prep_reads(fd, b"read-only", [0], [1])
    assert ring.pending == 0


def _two_d():
    return memoryview(array.array("q", [0, 0, 0, 0])).cast("B").cast("q", [2, 2])


@pytest.mark.parametrize("make", [
    _two_d, lambda: array.array("d", [0.0, 1.0]), lambda: array.array("f", [0.0, 1.0]),
    lambda: [0.5, 1.0], lambda: "01", lambda: None,
], ids=["2d", "double", "float", "float-list", "str", "none"])
def test_batch_rejects_non_integer_or_2d_arrays(ring, fd, make):
    with pytest.raises(TypeError, match="offsets"):
        ring.prep_reads(fd, bytearray(16), make(), [1, 1])
    with pytest.raises(TypeError, match="user_data"):
        ring.prep_nops(make())
    assert ring.pending == 0


@pytest.mark.parametrize("flag", [IOSQE_CQE_SKIP_SUCCESS, IOSQE_BUFFER_SELECT, 1 << 7])
def test_disallowed_sqe_flags_are_refused(ring, fd, flag):
    calls = [
        lambda: ring.prep_nop(flags=flag),
        lambda: ring.prep_read(fd, bytearray(4), flags=flag),
        lambda: ring.prep_write(fd, b"x", flags=flag),
        lambda: ring.prep_readv(fd, [bytearray(4)], flags=flag),
        lambda: ring.prep_fsync(fd, flags=flag),
        lambda: ring.prep_timeout(1.0, flags=flag),
        lambda: ring.prep_cancel(1, flags=flag),
        lambda: ring.prep_close(fd, flags=flag),
        lambda: ring.prep_openat("/", sqe_flags=flag),
        lambda: ring.prep_statx("/", Statx(), sqe_flags=flag),
        lambda: ring.prep_nops([1], flags=flag),
        lambda: ring.prep_reads(fd, bytearray(4), [0], [4], flags=flag),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="flags"):
            call()
    assert ring.pending == 0


# ---- Ring() arguments --------------------------------------------------------------

@pytest.mark.parametrize("entries", [0, 32769, 65536])
def test_ring_entries_out_of_range(entries):
    with pytest.raises(ValueError, match="entries"):
        Ring(entries)


def test_ring_negative_entries():
    with pytest.raises((ValueError, OverflowError)):
        Ring(-1)


def test_cq_entries_below_entries():
    with pytest.raises(ValueError, match="cq_entries"):
        Ring(8, cq_entries=4)


def test_defer_taskrun_needs_single_issuer():
    with pytest.raises(ValueError, match="single_issuer"):
        Ring(8, defer_taskrun=True)


def test_sq_thread_cpu_needs_sqpoll():
    with pytest.raises(ValueError, match="sqpoll"):
        Ring(8, sq_thread_cpu=0)


# ---- waiting and reaping -----------------------------------------------------------

def test_wait_for_more_than_outstanding(ring):
    with pytest.raises(ValueError, match="5"):
        ring.wait(min_complete=5)
    with pytest.raises(ValueError):
        ring.submit_and_wait(5)
    ring.prep_nop()
    with pytest.raises(ValueError):
        ring.wait(min_complete=2, timeout=1)
    assert ring.pending == 1
    assert len(ring.wait(min_complete=1, timeout=5)) == 1


@pytest.mark.parametrize("timeout", [-1, -0.5, float("nan")])
def test_negative_wait_timeout(ring, timeout):
    ring.prep_nop()
    with pytest.raises(ValueError, match="timeout"):
        ring.wait(timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        ring.submit_and_wait(timeout=timeout)
    assert ring.pending == 1


def test_reap_min_complete_larger_than_arrays(ring):
    ring.prep_nops([1, 2, 3])
    with pytest.raises(ValueError, match="min_complete"):
        ring.reap(array.array("Q", [0, 0]), array.array("i", [0, 0]), min_complete=3)
    assert ring.pending == 3


def test_reap_user_data_out_needs_8_byte_items(ring):
    for code in ("i", "I", "h", "b"):
        with pytest.raises(TypeError, match="user_data_out"):
            ring.reap(array.array(code, [0]), array.array("i", [0]))


def test_reap_res_out_must_be_signed_4_or_8_bytes(ring):
    for code in ("I", "Q", "h"):
        with pytest.raises(TypeError, match="res_out"):
            ring.reap(array.array("Q", [0]), array.array(code, [0]))


def test_reap_flags_out_too_narrow(ring):
    with pytest.raises(TypeError, match="flags_out"):
        ring.reap(array.array("Q", [0]), array.array("i", [0]), array.array("H", [0]))


def test_reap_unequal_lengths(ring):
    with pytest.raises(ValueError, match="res_out"):
        ring.reap(array.array("Q", [0, 0]), array.array("i", [0]))
    with pytest.raises(ValueError, match="flags_out"):
        ring.reap(array.array("Q", [0]), array.array("i", [0]), array.array("I", [0, 0]))


def test_reap_needs_buffer_arrays(ring):
    with pytest.raises(TypeError, match="user_data_out"):
        ring.reap([0], array.array("i", [0]))
    with pytest.raises(TypeError, match="res_out"):
        ring.reap(array.array("Q", [0]), None)


def test_reap_refuses_read_only_output_array(ring):
    with pytest.raises(TypeError, match="user_data_out"):
        ring.reap(memoryview(bytes(8)).cast("Q"), array.array("i", [0]))


def test_batch_refuses_non_contiguous_int_array(ring, fd):
    strided = memoryview(array.array("q", [0, 0, 0, 0]))[::2]
    with pytest.raises(TypeError, match="offsets"):
        ring.prep_reads(fd, bytearray(16), strided, [1, 1])
    assert ring.pending == 0


def test_reap_failure_releases_arrays(ring):
    ud, res = array.array("Q", [0, 0]), array.array("i", [0])
    with pytest.raises(ValueError):
        ring.reap(ud, res)
    ud.append(0)                                  # no export left behind
    res.append(0)


# ---- ring full ---------------------------------------------------------------------

def test_ring_full_per_op():
    with Ring(4, cq_entries=8) as r:
        for i in range(8):
            r.prep_nop(user_data=i)
        assert r.pending + r.in_flight == 8
        with pytest.raises(RingFullError) as info:
            r.prep_nop(user_data=8)
        assert isinstance(info.value, RuntimeError)
        buf = bytearray(4)
        with pytest.raises(RingFullError):
            r.prep_read(0, buf)
        buf.extend(b"x")                          # the refused read released its buffer
        r.submit_and_wait(8, timeout=5)
        got = r.completions()
        assert sorted(c.user_data for c in got) == list(range(8))
        r.prep_nop(user_data=8)                   # room again after reaping
        assert [c.user_data for c in r.wait(timeout=5)] == [8]


def test_ring_full_batch_returns_count():
    with Ring(4, cq_entries=8) as r:
        assert r.prep_nops(array.array("Q", range(20))) == 8
        assert r.prep_nops([100]) == 0
        with pytest.raises(RingFullError):
            r.prep_nop()
        r.submit_and_wait(8, timeout=5)
        assert sorted(c.user_data for c in r.completions()) == list(range(8))


def test_ring_full_prep_reads_returns_count(fd):
    with Ring(4, cq_entries=8) as r:
        buf = bytearray(20)
        assert r.prep_reads(fd, buf, list(range(20)), [1] * 20) == 8
        r.submit_and_wait(8, timeout=5)
        got = r.completions()
        assert sorted(c.user_data for c in got) == list(range(8))
        assert bytes(buf[:8]) == os.pread(fd, 8, 0)
        assert buf[8:] == bytearray(12)


# ---- every integer argument: no truncation, no rounding, errors that name it -------------

try:
    import numpy
except ImportError:
    numpy = None

# What each kind of argument refuses as out of range.
OUT_OF_RANGE = {
    "u64": [-1, 2**64],
    "u32": [-1, 2**32, 2**32 + 3],
    "u8": [-1, 256, 2**32 + 1],
    "fd": [-1, 2**31, 2**32 + 3, 2**64],
    "dir_fd": [-1, -101, 2**31, 2**32 + 3],
    "offset": [-2, 2**63, 2**64],
    "size": [-1, 2**63, 2**64],
    "int64": [2**63, -2**63 - 1],
    "entries": [0, 32769, 2**32 + 8],
    "seconds": [-1, -0.5, float("inf"), float("nan"), 10**400],
    "timeout": [-1, float("nan")],
}
NOT_INTEGERS = [1.5, 2.0, "3", b"3", bytearray(b"3"), [3]]
NOT_SECONDS = ["3", b"3", [1]]


def _int_args(fd):
    """(call, argument name, kind): call(ring, v) passes v as that argument, every
    other argument valid. The ring has one registered buffer of 64 bytes and a file
    table of two slots."""
    buf = bytearray(64)
    st = Statx()
    rows = [
        (lambda r, v: r.prep_nop(user_data=v), "user_data", "u64"),
        (lambda r, v: r.prep_nop(flags=v), "flags", "u8"),
        (lambda r, v: r.prep_read(v, buf), "fd", "fd"),
        (lambda r, v: r.prep_read(fd, buf, v), "offset", "offset"),
        (lambda r, v: r.prep_read(fd, buf, nbytes=v), "nbytes", "size"),
        (lambda r, v: r.prep_read(fd, buf, buf_offset=v), "buf_offset", "size"),
        (lambda r, v: r.prep_read(fd, buf, user_data=v), "user_data", "u64"),
        (lambda r, v: r.prep_read(fd, buf, flags=v), "flags", "u8"),
        (lambda r, v: r.prep_write(v, b"x"), "fd", "fd"),
        (lambda r, v: r.prep_write(fd, b"x", v), "offset", "offset"),
        (lambda r, v: r.prep_write(fd, b"x", nbytes=v), "nbytes", "size"),
        (lambda r, v: r.prep_write(fd, b"x", buf_offset=v), "buf_offset", "size"),
        (lambda r, v: r.prep_write(fd, b"x", user_data=v), "user_data", "u64"),
        (lambda r, v: r.prep_write(fd, b"x", flags=v), "flags", "u8"),
        (lambda r, v: r.prep_readv(v, [buf]), "fd", "fd"),
        (lambda r, v: r.prep_readv(fd, [buf], v), "offset", "offset"),
        (lambda r, v: r.prep_readv(fd, [buf], user_data=v), "user_data", "u64"),
        (lambda r, v: r.prep_writev(fd, [b"x"], flags=v), "flags", "u8"),
        (lambda r, v: r.prep_read_fixed(v, 0, 0, 1), "fd", "fd"),
        (lambda r, v: r.prep_read_fixed(fd, v, 0, 1), "buf_index", "int64"),
        (lambda r, v: r.prep_read_fixed(fd, 0, v, 1), "offset", "offset"),
        (lambda r, v: r.prep_read_fixed(fd, 0, 0, v), "nbytes", "size"),
        (lambda r, v: r.prep_read_fixed(fd, 0, 0, 1, v), "buf_offset", "size"),
        (lambda r, v: r.prep_write_fixed(fd, 0, 0, 1, user_data=v), "user_data", "u64"),
        (lambda r, v: r.prep_write_fixed(fd, 0, 0, 1, flags=v), "flags", "u8"),
        (lambda r, v: r.prep_openat("/", v), "flags", "u32"),
        (lambda r, v: r.prep_openat("/", 0, v), "mode", "u32"),
        (lambda r, v: r.prep_openat("/", dir_fd=v), "dir_fd", "dir_fd"),
        (lambda r, v: r.prep_openat("/", file_index=v), "file_index", "int64"),
        (lambda r, v: r.prep_openat("/", user_data=v), "user_data", "u64"),
        (lambda r, v: r.prep_openat("/", sqe_flags=v), "sqe_flags", "u8"),
        (lambda r, v: r.prep_close(v), "fd", "fd"),
        (lambda r, v: r.prep_close(fd, user_data=v), "user_data", "u64"),
        (lambda r, v: r.prep_close(fd, flags=v), "flags", "u8"),
        (lambda r, v: r.prep_statx("/", st, flags=v), "flags", "u32"),
        (lambda r, v: r.prep_statx("/", st, mask=v), "mask", "u32"),
        (lambda r, v: r.prep_statx("/", st, dir_fd=v), "dir_fd", "dir_fd"),
        (lambda r, v: r.prep_statx("/", st, user_data=v), "user_data", "u64"),
        (lambda r, v: r.prep_statx("/", st, sqe_flags=v), "sqe_flags", "u8"),
        (lambda r, v: r.prep_fsync(v), "fd", "fd"),
        (lambda r, v: r.prep_fsync(fd, user_data=v), "user_data", "u64"),
        (lambda r, v: r.prep_fsync(fd, flags=v), "flags", "u8"),
        (lambda r, v: r.prep_timeout(v), "seconds", "seconds"),
        (lambda r, v: r.prep_timeout(1.0, v), "count", "u32"),
        (lambda r, v: r.prep_timeout(1.0, user_data=v), "user_data", "u64"),
        (lambda r, v: r.prep_timeout(1.0, flags=v), "flags", "u8"),
        (lambda r, v: r.prep_cancel(v), "target_user_data", "u64"),
        (lambda r, v: r.prep_cancel(1, user_data=v), "user_data", "u64"),
        (lambda r, v: r.prep_cancel(1, flags=v), "flags", "u8"),
        (lambda r, v: r.prep_nops([1], flags=v), "flags", "u8"),
        (lambda r, v: r.prep_reads(v, buf, [0], [1]), "fd", "int64|array"),
        (lambda r, v: r.prep_reads(fd, buf, [0], [1], flags=v), "flags", "u8"),
        (lambda r, v: r.prep_read_fixed_batch(fd, v, [0], [1]), "buf_index", "int64|array"),
        (lambda r, v: r.prep_read_fixed_batch(fd, 0, [0], [1], flags=v), "flags", "u8"),
        (lambda r, v: r.prep_openat_batch(["/"], v), "flags", "u32"),
        (lambda r, v: r.prep_openat_batch(["/"], 0, v), "mode", "u32"),
        (lambda r, v: r.prep_openat_batch(["/"], dir_fd=v), "dir_fd", "dir_fd"),
        (lambda r, v: r.prep_openat_batch(["/"], file_indexes=v), "file_indexes",
         "int64|array"),
        (lambda r, v: r.prep_openat_batch(["/"], sqe_flags=v), "sqe_flags", "u8"),
        (lambda r, v: r.prep_statx_batch(["/"], StatxArray(1), flags=v), "flags", "u32"),
        (lambda r, v: r.prep_statx_batch(["/"], StatxArray(1), mask=v), "mask", "u32"),
        (lambda r, v: r.prep_statx_batch(["/"], StatxArray(1), dir_fd=v), "dir_fd",
         "dir_fd"),
        (lambda r, v: r.prep_statx_batch(["/"], StatxArray(1), sqe_flags=v), "sqe_flags",
         "u8"),
        (lambda r, v: r.prep_close_batch([fd], sqe_flags=v), "sqe_flags", "u8"),
        (lambda r, v: r.submit_and_wait(v), "min_complete", "u32"),
        (lambda r, v: r.submit_and_wait(0, v), "timeout", "timeout"),
        (lambda r, v: r.wait(v, timeout=0), "min_complete", "u32"),
        (lambda r, v: r.wait(0, v), "timeout", "timeout"),
        (lambda r, v: r.reap(array.array("Q", [0]), array.array("i", [0]), min_complete=v),
         "min_complete", "u32"),
        (lambda r, v: r.reap(array.array("Q", [0]), array.array("i", [0]), timeout=v),
         "timeout", "timeout"),
        (lambda r, v: r.update_files(v, [-1]), "offset", "u32"),
    ]
    # Elements of integer arrays, given as lists: named with their index.
    for call, name, kind in [
        (lambda r, v: r.prep_nops([1, v]), "user_data", "u64"),
        (lambda r, v: r.prep_reads(fd, buf, [0, v], [1, 1]), "offsets", "int64"),
        (lambda r, v: r.prep_reads(fd, buf, [0, 0], [1, v]), "lengths", "int64"),
        (lambda r, v: r.prep_reads(fd, buf, [0, 0], [1, 1], [0, v]), "buffer_offsets",
         "int64"),
        (lambda r, v: r.prep_reads(fd, buf, [0, 0], [1, 1], None, [0, v]), "user_data",
         "u64"),
        (lambda r, v: r.prep_reads([fd, v], buf, [0, 0], [1, 1]), "fd", "int64"),
        (lambda r, v: r.prep_read_fixed_batch(fd, [0, v], [0, 0], [1, 1]), "buf_index",
         "int64"),
        (lambda r, v: r.prep_openat_batch(["/", "/"], file_indexes=[0, v]), "file_indexes",
         "int64"),
        (lambda r, v: r.prep_close_batch([fd, v]), "fds", "int64"),
        (lambda r, v: r.prep_close_batch([fd, fd], user_data=[0, v]), "user_data", "u64"),
        (lambda r, v: r.register_files([fd, v]), "fds", "fd_table"),
        (lambda r, v: r.update_files(0, [fd, v]), "fds", "fd_table"),
    ]:
        rows.append((call, name + "[1]", kind))
    return rows


OUT_OF_RANGE["fd_table"] = [-2, 2**31, 2**32 - 1]


def _row_ids():
    return [f"{i}-{name}" for i, (_, name, _) in enumerate(_int_args(0))]


@pytest.fixture
def reg_ring(fd):
    r = Ring(8)
    r.register_buffers([bytearray(64)])
    r.register_files([-1, -1])
    try:
        yield r
    finally:
        r.close()


def _check_refused(ring, call, value, exc, name):
    with pytest.raises(exc) as info:
        call(ring, value)
    assert name in str(info.value), (value, str(info.value))
    assert ring.pending == 0
    return info.value


@pytest.mark.parametrize("row", range(len(_row_ids())), ids=_row_ids())
def test_out_of_range_integer_is_overflow_error_naming_it(reg_ring, fd, row):
    call, name, kind = _int_args(fd)[row]
    for value in OUT_OF_RANGE[kind.split("|")[0]]:
        err = _check_refused(reg_ring, call, value, OverflowError, name)
        assert isinstance(err, ArgumentRangeError)
        assert isinstance(err, ValueError)             # as these were refused before


@pytest.mark.parametrize("row", range(len(_row_ids())), ids=_row_ids())
def test_non_integer_is_type_error_naming_it(reg_ring, fd, row):
    call, name, kind = _int_args(fd)[row]
    for value in NOT_SECONDS if kind in ("seconds", "timeout") else NOT_INTEGERS:
        if isinstance(value, list) and (name.endswith("[1]") or kind.endswith("|array")):
            continue                                  # an array where one is accepted
        _check_refused(reg_ring, call, value, TypeError, name)


RING_ARGS = [
    (lambda v: Ring(v), "entries", [0, 32769, 2**32 + 8]),
    (lambda v: Ring(8, cq_entries=v), "cq_entries", [4, 65537, 2**32 + 8]),
    (lambda v: Ring(8, sq_thread_idle_ms=v), "sq_thread_idle_ms", [-1, 2**32]),
    (lambda v: StatxArray(v), "n", [0, -1, 2**63]),
]


@pytest.mark.parametrize("row", range(len(RING_ARGS)), ids=[n for _, n, _ in RING_ARGS])
def test_constructor_integer_arguments(row):
    make, name, out_of_range = RING_ARGS[row]
    for value in out_of_range:
        with pytest.raises(OverflowError, match=name):
            make(value)
    for value in NOT_INTEGERS:
        with pytest.raises(TypeError, match=name):
            make(value)


def test_sq_thread_cpu_is_checked_before_the_ring_is_created():
    with pytest.raises(OverflowError, match="sq_thread_cpu"):
        Ring(8, sqpoll=True, sq_thread_cpu=2**32)
    with pytest.raises(TypeError, match="sq_thread_cpu"):
        Ring(8, sqpoll=True, sq_thread_cpu=1.5)


def test_dir_fd_is_not_truncated_to_an_open_fd(ring, tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    d = os.open(tmp_path, os.O_RDONLY)
    try:
        with pytest.raises(OverflowError, match="dir_fd"):
            ring.prep_openat("f", dir_fd=2**32 + d)   # was: opened relative to d
        assert ring.pending == 0
        ring.prep_openat("f", dir_fd=d, user_data=1)
        (c,) = ring.wait(timeout=5)
        assert c.res >= 0
        os.close(c.res)
    finally:
        os.close(d)


def test_fractional_nbytes_is_refused_not_rounded(ring, fd):
    with pytest.raises(TypeError, match="nbytes"):
        ring.prep_read(fd, bytearray(4), nbytes=1.5)  # was: a 1-byte read
    assert ring.pending == 0


@pytest.mark.parametrize("text", [b"\x00\x01", bytearray(b"\x00\x01"), "01"],
                         ids=["bytes", "bytearray", "str"])
def test_bytes_and_str_are_not_integer_arrays(ring, fd, text):
    for call, name in [
        (lambda: ring.prep_nops(text), "user_data"),
        (lambda: ring.prep_reads(fd, bytearray(4), text, [1, 1]), "offsets"),
        (lambda: ring.prep_reads(fd, bytearray(4), [0, 0], text), "lengths"),
        (lambda: ring.prep_reads(fd, bytearray(4), [0, 0], [1, 1], text), "buffer_offsets"),
        (lambda: ring.prep_close_batch(text), "fds"),
        (lambda: ring.register_files(text), "fds"),
    ]:
        with pytest.raises(TypeError, match=name):
            call()
    assert ring.pending == 0


@pytest.mark.skipif(numpy is None, reason="numpy is not installed")
def test_numpy_integers_are_integers(ring, fd):
    assert ring.prep_nops(numpy.array([1, 2], dtype=numpy.uint8)) == 2
    ring.prep_nop(user_data=numpy.uint64(2**64 - 1), flags=numpy.int8(0))
    buf = bytearray(8)
    ring.prep_reads(numpy.int32(fd), buf, numpy.array([0, 4]), numpy.array([4, 4]),
                    user_data=numpy.array([10, 11], dtype=numpy.uint64))
    ring.prep_read(numpy.int64(fd), bytearray(4), numpy.int64(0), nbytes=numpy.uint32(4),
                   user_data=9)
    got = {c.user_data: c.res for c in ring.wait(6, timeout=5)}
    assert got == {1: 0, 2: 0, 2**64 - 1: 0, 10: 4, 11: 4, 9: 4}
    assert bytes(buf) == os.pread(fd, 8, 0)


def test_user_data_takes_every_64_bit_value_in_arrays_too(ring):
    assert ring.prep_nops([0, 2**64 - 1, 2**63]) == 3
    assert sorted(c.user_data for c in ring.wait(3, timeout=5)) == [0, 2**63, 2**64 - 1]
