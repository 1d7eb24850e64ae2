"""The GPU path's own code (the ctypes bindings of _cuda.py, CudaTarget, CopyLane,
pinned staging and its cache) run in CI against tests/fake_libcuda.c, a stand-in
for libcuda.so.1 over host memory whose copies run late, as a GPU's may. Each test
runs in a child process that finds the fake through LD_LIBRARY_PATH. The fake
counts copies from unpinned memory, into memory outside a device allocation, or
left unrun when their stream was destroyed: every test checks that count is 0."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

SOURCE = os.path.join(os.path.dirname(__file__), "fake_libcuda.c")

PRELUDE = """
import ctypes, json, os, random, sys
import vyre_uring
from vyre_uring import BatchReader
from vyre_uring._staging import cuda_destination
fake = ctypes.CDLL("libcuda.so.1")
fake.fake_device_alloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

class DeviceArray:
    '''Host memory the fake driver treats as a device allocation.'''
    def __init__(self, n):
        self.mem = (ctypes.c_ubyte * n)()
        fake.fake_device_alloc(ctypes.addressof(self.mem), n)
        self.__cuda_array_interface__ = {
            "shape": (n,), "typestr": "|u1", "version": 3, "strides": None,
            "data": (ctypes.addressof(self.mem), False)}

def state():
    return {"bad": fake.fake_bad_copies(), "pending": fake.fake_pending_copies(),
            "pinned": fake.fake_registered()}

path = sys.argv[1]
data = open(path, "rb").read()
out = {}
"""


@pytest.fixture(scope="module")
def fake_cuda(tmp_path_factory):
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler to build the fake libcuda.so.1")
    folder = tmp_path_factory.mktemp("fake-cuda")
    subprocess.run([gcc, "-shared", "-fPIC", "-O1", "-o", str(folder / "libcuda.so.1"),
                    SOURCE, "-lpthread"], check=True)
    data = folder / "data.bin"
    data.write_bytes(os.urandom(40 << 20))
    return folder


def run_child(folder, body, **env):
    environ = dict(os.environ, **env)
    environ["LD_LIBRARY_PATH"] = f"{folder}:{os.environ.get('LD_LIBRARY_PATH', '')}"
    code = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    child = subprocess.run([sys.executable, "-c", code, str(folder / "data.bin")],
                           env=environ, capture_output=True, text=True, timeout=120,
                           cwd=folder)
    assert child.returncode == 0, child.stdout + child.stderr
    return json.loads(child.stdout.splitlines()[-1])


def test_reads_land_in_device_memory_through_every_lane(fake_cuda):
    out = run_child(fake_cuda, """
        reader = BatchReader(workers=4, staging_bytes=12 << 20)
        dest = DeviceArray(len(data))
        got = reader.read_ranges_into(path, dest, [0], [len(data)])
        out["whole"] = got == [len(data)] and bytes(dest.mem) == data
        rng = random.Random(1)
        offsets = [rng.randrange(len(data)) for _ in range(300)]
        lengths = [rng.randrange(1, 400_000) for _ in range(300)]
        dest2 = DeviceArray(sum(lengths))
        got = reader.read_ranges_into(path, dest2, offsets, lengths)  # staging reused
        at, same = 0, True
        for o, n, g in zip(offsets, lengths, got):
            same &= g == len(data[o:o + n]) and bytes(dest2.mem[at:at + g]) == data[o:o + n]
            at += n
        out["ranges"] = same
        out["after_calls"] = state()
        reader.close()
        out["after_close"] = state()
    """)
    assert out["whole"] and out["ranges"]
    assert out["after_calls"]["bad"] == 0 and out["after_calls"]["pending"] == 0
    assert out["after_calls"]["pinned"] == 1            # the reader keeps its staging
    assert out["after_close"] == {"bad": 0, "pending": 0, "pinned": 0}


def test_a_failure_mid_load_leaves_no_copy_and_frees_the_staging(fake_cuda):
    out = run_child(fake_cuda, """
        reader = BatchReader(workers=4, staging_bytes=12 << 20)
        dest = DeviceArray(len(data) + 4096)
        try:
            reader._into_device([(path, [0], [len(data)], [0]),
                                 ("/proc/self/mem", [0], [4096], [len(data)])],
                                cuda_destination(dest))
        except OSError as exc:
            out["error"] = exc.filename
        out["after"] = state()
        got = reader.read_ranges_into(path, dest, [0], [len(data)])
        out["next_call"] = got == [len(data)] and bytes(dest.mem[:len(data)]) == data
        reader.close()
        out["closed"] = state()
    """)
    assert out["error"] == "/proc/self/mem"
    assert out["after"] == {"bad": 0, "pending": 0, "pinned": 0}   # freed, not kept
    assert out["next_call"]
    assert out["closed"] == {"bad": 0, "pending": 0, "pinned": 0}


def test_a_reader_dropped_unclosed_unpins_its_staging(fake_cuda):
    out = run_child(fake_cuda, """
        import gc
        reader = BatchReader(workers=2, staging_bytes=4 << 20)
        reader.read_ranges_into(path, DeviceArray(4096), [0], [4096])
        out["kept"] = state()["pinned"]
        del reader
        gc.collect()
        out["dropped"] = state()
    """)
    assert out["kept"] == 1
    assert out["dropped"] == {"bad": 0, "pending": 0, "pinned": 0}


def test_memory_that_is_not_the_devices_is_refused_by_name(fake_cuda):
    out = run_child(fake_cuda, """
        class NotDevice:
            __cuda_array_interface__ = {"shape": (16,), "typestr": "|u1", "version": 3,
                                        "strides": None, "data": (0x1000, False)}
        try:
            vyre_uring.read_ranges_into(path, NotDevice(), [0], [16])
        except ValueError as exc:
            out["error"] = str(exc)
    """)
    assert "not CUDA device memory" in out["error"] and "NotDevice" in out["error"]


def test_no_device_says_so(fake_cuda):
    out = run_child(fake_cuda, """
        try:
            vyre_uring.read_ranges_into(path, DeviceArray(16), [0], [16])
        except vyre_uring._cuda.CudaUnavailableError as exc:
            out["error"] = str(exc)
    """, FAKE_CUDA_DEVICES="0")
    assert "CUDA device 0 does not exist: the driver sees 0 devices" in out["error"]


def test_a_child_forked_during_cuda_init_is_told_so_and_does_not_hang(fake_cuda):
    # The fork lands while a parent thread is inside cuInit (made slow here), holding
    # the driver's lock: the child must neither wait for that lock forever nor begin
    # CUDA again on the parent's half-made state.
    out = run_child(fake_cuda, """
        import signal, threading, time
        dest = DeviceArray(4096)
        loaded = []
        t = threading.Thread(target=lambda: loaded.append(
            vyre_uring.read_ranges_into(path, dest, [0], [4096])))
        t.start()
        while vyre_uring._cuda._began_in is None:   # the start is marked: fork
            time.sleep(0.001)
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)                # a hang ends the child with SIGALRM
            try:
                vyre_uring.read_ranges_into(path, DeviceArray(4096), [0], [4096])
                os._exit(3)
            except vyre_uring._cuda.CudaUnavailableError as exc:
                os._exit(0 if "forked child" in str(exc) else 2)
        _, status = os.waitpid(pid, 0)
        t.join()
        out["child"] = os.waitstatus_to_exitcode(status)
        out["parent"] = loaded == [[4096]] and bytes(dest.mem) == data[:4096]
    """, FAKE_CUDA_INIT_MS="1500")
    assert out["child"] == 0
    assert out["parent"]


def test_a_load_from_fuse_is_read_with_pread(fake_cuda, tmp_path):
    # The staging lanes read FUSE files with pread, as the reader does (test_fuse.py):
    # the kernel repeats io_uring reads that such a server answers short.
    from fusefs import fuse_unavailable, served
    if fuse_unavailable():
        pytest.skip(fuse_unavailable())
    source = tmp_path / "source"
    source.mkdir()
    (source / "data.bin").write_bytes((fake_cuda / "data.bin").read_bytes()[:3 << 20])
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with served(mnt, source, short_reads=100_000):
        out = run_child(fake_cuda, """
            fuse_path = os.environ["FUSE_PATH"]
            n = os.path.getsize(fuse_path)
            reader = BatchReader(workers=2, staging_bytes=1 << 20)
            dest = DeviceArray(n + 4096)
            got = reader.read_ranges_into(fuse_path, dest, [0, n - 10], [n, 4096], [0, n])
            out["same"] = got == [n, 10] and bytes(dest.mem[:n + 10]) == data[:n] + data[n - 10:n]
            reader.close()
            out["after"] = state()
        """, FUSE_PATH=str(mnt / "data.bin"))
    assert out["same"]
    assert out["after"] == {"bad": 0, "pending": 0, "pinned": 0}
