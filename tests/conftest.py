"""Shared fixtures for the vyre_uring tests."""
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import textwrap

import pytest

import vyre_uring

TMP_FILE_SIZE = 1 << 20

SYSCTL = "/proc/sys/kernel/io_uring_disabled"
# Flipping the sysctl disables io_uring for every process on the host while a test
# runs, so it is opt-in (.ci/run opts in); by default the seccomp tests of
# test_unavailable.py cover the same diagnosis inside one child process.
SYSCTL_OPT_IN = "VYRE_URING_TEST_SYSCTL"
# "<original value> <pid>" while a run has the sysctl changed: a run killed before it
# could restore the value leaves this behind, and the next run restores it. /run is
# cleared at boot, as is the sysctl.
SYSCTL_STATE = os.path.join("/run" if os.path.isdir("/run") else tempfile.gettempdir(),
                            "vyre_uring-tests-io_uring_disabled")


def read_sysctl(path=SYSCTL):
    with open(path) as f:
        return int(f.read().strip())


def write_sysctl(value, path=SYSCTL):
    with open(path, "w") as f:
        f.write(f"{value}\n")


def restore_sysctl_left_by_a_killed_run(state=SYSCTL_STATE, sysctl=SYSCTL):
    """Put back the value a run saved before changing the sysctl, unless that run
    is still going; returns the value restored, or None."""
    try:
        with open(state) as f:
            value, pid = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
        return None                    # still running: it restores the value itself
    except ProcessLookupError:
        pass
    except PermissionError:
        return None                    # alive, owned by another user
    write_sysctl(value, sysctl)
    os.unlink(state)
    return value


def pytest_sessionstart(session):
    if os.path.exists(SYSCTL_STATE):
        value = restore_sysctl_left_by_a_killed_run()
        if value is not None:
            print(f"\nrestored kernel.io_uring_disabled = {value}, left changed by a run "
                  f"that was killed")


@pytest.fixture
def io_uring_disabled():
    """set(value): write kernel.io_uring_disabled, machine-wide; the old value is
    restored after the test (or, should the run be killed, by the next run). Runs
    only when VYRE_URING_TEST_SYSCTL=1, as root, on Linux 6.6 or newer."""
    if os.environ.get(SYSCTL_OPT_IN) != "1":
        pytest.skip(f"changes kernel.io_uring_disabled for the whole machine: opt in with "
                    f"{SYSCTL_OPT_IN}=1 (the seccomp tests cover the same diagnosis)")
    if not os.path.exists(SYSCTL):
        pytest.skip(f"{SYSCTL} is missing (kernel older than 6.6)")
    if os.geteuid() != 0:
        pytest.skip("changing kernel.io_uring_disabled needs root")
    old = read_sysctl()
    try:
        write_sysctl(old)
    except OSError as e:
        pytest.skip(f"{SYSCTL} is not writable here: {e}")
    with open(SYSCTL_STATE, "w") as f:
        f.write(f"{old} {os.getpid()}\n")

    def set_value(value):
        write_sysctl(value)
        assert read_sysctl() == value

    try:
        yield set_value
    finally:
        write_sysctl(old)
        os.unlink(SYSCTL_STATE)


@pytest.fixture
def ring():
    """A Ring(64), closed after the test."""
    r = vyre_uring.Ring(64)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def tmp_file(tmp_path):
    """(path, data): a 1 MiB file of deterministic random bytes."""
    data = random.Random(1234).randbytes(TMP_FILE_SIZE)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    return str(path), data


@pytest.fixture
def fd(tmp_file):
    """tmp_file opened O_RDONLY, closed after the test."""
    path, _ = tmp_file
    f = os.open(path, os.O_RDONLY)
    try:
        yield f
    finally:
        os.close(f)


@pytest.fixture
def pipe():
    """(read_fd, write_fd) of a fresh pipe; both closed after the test if still open."""
    r, w = os.pipe()
    yield r, w
    for f in (r, w):
        try:
            os.close(f)
        except OSError:
            pass


@pytest.fixture(autouse=True, scope="session")
def _run_outside_the_source_tree(tmp_path_factory):
    """Child interpreters (`python -c`) put the working directory first on sys.path:
    run from the repository root, they would import the uncompiled source package
    instead of the installed one. Work from an empty directory instead."""
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(old)


def run_as_nobody(body, memlock=None):
    """Run body() in a forked child that has dropped to uid/gid 65534 (and, with
    `memlock`, RLIMIT_MEMLOCK to that many bytes); returns the dict body returned,
    {"setup": why} when the child could not drop, or {"error": repr} when body raised.
    Import what body needs first: nobody may not be able to read Python's own files."""
    import json
    import resource
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        out = {}
        try:
            os.close(rfd)
            try:
                if memlock is not None:
                    resource.setrlimit(resource.RLIMIT_MEMLOCK, (memlock, memlock))
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            except OSError as exc:
                out = {"setup": f"cannot become nobody: {exc}"}
            else:
                out = body()
        except BaseException as exc:
            out = {"error": repr(exc)}
        finally:
            os.write(wfd, json.dumps(out).encode())
            os._exit(0)
    os.close(wfd)
    try:
        with os.fdopen(rfd, "rb") as f:
            data = f.read()
    finally:
        os.waitpid(pid, 0)
    return json.loads(data)


@pytest.fixture(params=["direct table", "fds"])
def file_table(request, monkeypatch):
    """Runs a test twice: with whole files opened as direct descriptors in each
    ring's file table (where the kernel can), and as plain fds. The shared readers
    of the module-level functions are made again for each."""
    from vyre_uring import _uring_backend, reader
    monkeypatch.setattr(_uring_backend, "DIRECT_TABLE_RINGS",
                        1 if request.param == "direct table" else None)
    reader._close_shared()
    yield request.param
    reader._close_shared()


def evict(path):
    """Drop this one file's pages from the page cache (fadvise, nothing machine-wide),
    so that its reads wait for the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# AddressSanitizer's build (the second half of .ci/run) runs every C call several
# times slower, and its allocator quarantines freed memory.
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")


def open_fds():
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def direct_supported(path):
    """Whether the filesystem holding `path` lets it be opened O_DIRECT."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
        return True
    except OSError:
        return False


def limit_leaving_free(free):
    """The RLIMIT_NOFILE soft limit that leaves exactly `free` fd numbers usable (a
    new fd takes the lowest free number: the (free+1)-th lowest is the limit)."""
    probes = []
    try:
        for _ in range(free + 1):
            probes.append(os.open("/dev/null", os.O_RDONLY))
    finally:
        for f in probes:
            os.close(f)
    return probes[-1]


# Installs a seccomp filter that fails io_uring_setup with errno sys.argv[1]; the
# body run after it prints a JSON object whose "setup" is "ok".
SECCOMP_FILTER = textwrap.dedent("""
    import ctypes, json, sys
    ERR = int(sys.argv[1])

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8),
                    ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
    prog = [
        (BPF_LD_W_ABS, 0, 0, 4),              # seccomp_data.arch
        (BPF_JEQ_K, 0, 3, 0xC000003E),        # AUDIT_ARCH_X86_64, else allow
        (BPF_LD_W_ABS, 0, 0, 0),              # seccomp_data.nr
        (BPF_JEQ_K, 0, 1, 425),               # io_uring_setup
        (BPF_RET_K, 0, 0, 0x00050000 | ERR),  # SECCOMP_RET_ERRNO | ERR
        (BPF_RET_K, 0, 0, 0x7FFF0000),        # SECCOMP_RET_ALLOW
    ]
    filters = (SockFilter * len(prog))(*[SockFilter(*i) for i in prog])
    fprog = SockFprog(len(prog), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]
    if libc.prctl(38, 1, 0, 0, 0) != 0:                       # PR_SET_NO_NEW_PRIVS
        print(json.dumps({"setup": "no_new_privs errno %d" % ctypes.get_errno()}))
        sys.exit(0)
    if libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0) != 0:  # SECCOMP_MODE_FILTER
        print(json.dumps({"setup": "seccomp errno %d" % ctypes.get_errno()}))
        sys.exit(0)
""")


def run_under_seccomp(body, err):
    """Run the Python source `body` in a child whose io_uring_setup fails with `err`
    (a seccomp filter); returns the JSON object it printed. Skips where no filter
    can be installed."""
    if platform.machine() != "x86_64":
        pytest.skip("the seccomp filter is written for x86_64 (io_uring_setup = 425)")
    r = subprocess.run([sys.executable, "-c", SECCOMP_FILTER + textwrap.dedent(body),
                        str(err)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    if out["setup"] != "ok":
        pytest.skip(f"cannot install a seccomp filter here: {out['setup']}")
    return out
