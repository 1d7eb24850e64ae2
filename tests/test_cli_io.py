"""`vyre-uring read` at its edges, through a real interpreter: bounded memory over
files larger than the budget, file lists on standard input, a reader that goes
away (| head), a full disk and a closed standard output, the flags that shape the
output."""
import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import sysconfig
import zlib

import pytest

from vyre_uring import _read_command
from vyre_uring.reader import BACKEND_ENV

from conftest import UNDER_ASAN

TIMEOUT = 300


def vyre(tmp_path, *argv, stdin=None, stdout=subprocess.PIPE, env=None, **kwargs):
    """The CLI in a child interpreter (cwd=tmp_path, so the installed package is
    imported, not the checkout's sources)."""
    environ = {k: v for k, v in os.environ.items() if k != BACKEND_ENV}
    return subprocess.run([sys.executable, "-m", "vyre_uring", *map(str, argv)],
                          cwd=tmp_path, input=stdin, stdout=stdout, stderr=subprocess.PIPE,
                          timeout=TIMEOUT, env={**environ, **(env or {})}, **kwargs)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def small_files(tmp_path):
    """{path: bytes} of 300 small files."""
    root = tmp_path / "small"
    root.mkdir()
    out = {}
    for i in range(300):
        p = root / f"{i:03d}"
        p.write_bytes(os.urandom(i * 37))
        out[str(p)] = p.read_bytes()
    return out


# ---- bounded memory ------------------------------------------------------------------

def _measure_in_child(argv):
    """(stdout, peak RSS in bytes) of `python -m vyre_uring argv` run from a child
    process whose only child it is."""
    code = ("import resource, subprocess, sys\n"
            "p = subprocess.run([sys.executable, '-m', 'vyre_uring', *sys.argv[1:]],"
            " stdout=subprocess.PIPE)\n"
            "sys.stdout.buffer.write(p.stdout)\n"
            "sys.stderr.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
            "sys.exit(p.returncode)\n")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True,
                          timeout=TIMEOUT, cwd="/")
    assert proc.returncode in (0, 1), proc.stderr.decode()
    return proc.stdout, int(proc.stderr.decode().split()[-1]) * 1024


# AddressSanitizer keeps freed memory in quarantine (256 MiB) and adds shadow memory:
# the RSS of an ASan build says nothing about the program's own.
not_under_asan = pytest.mark.skipif(
    UNDER_ASAN,
    reason="peak RSS under AddressSanitizer counts its quarantine and shadow memory")


@not_under_asan
def test_checksums_of_files_larger_than_memory_budget_stay_within_64_mib(tmp_path):
    # Four 256 MiB sparse files (no disk used) and small files among them: read
    # whole, as before, they took over 1 GiB; hashed in pieces, a few MiB.
    root = tmp_path / "tree"
    root.mkdir()
    big = 256 << 20
    for i in range(4):
        with open(root / f"big{i}", "wb") as f:
            f.truncate(big)
        (root / f"small{i}").write_bytes(b"s" * 1000 * i)
    zeros = 0
    for _ in range(big // (1 << 20)):
        zeros = zlib.crc32(bytes(1 << 20), zeros)
    out, peak = _measure_in_child(["read", "-r", "--checksum", "crc32", str(root)])
    _, baseline = _measure_in_child(["read", str(root / "small0")])
    assert out.decode().splitlines() == (
        [f"{zeros:08x}  {root / f'big{i}'}" for i in range(4)] +
        [f"{zlib.crc32(b's' * 1000 * i):08x}  {root / f'small{i}'}" for i in range(4)])
    growth = peak - baseline
    assert growth <= 64 << 20, f"peak RSS grew by {growth >> 20} MiB"


@not_under_asan
def test_checksums_of_a_real_tree_stay_within_64_mib():
    # Thousands of small files: what is read, handed on and hashed stays bounded too.
    stdlib = sysconfig.get_paths()["stdlib"]
    out, peak = _measure_in_child(["read", "-r", "--checksum", "sha256", stdlib])
    _, baseline = _measure_in_child(["read", os.path.join(stdlib, "os.py")])
    assert len(out.splitlines()) > 1000
    growth = peak - baseline
    assert growth <= 64 << 20, f"peak RSS grew by {growth >> 20} MiB"


def test_large_files_hashed_in_pieces_equal_hashlib(tmp_path):
    # Above THREAD_BUDGET: streamed through read_ranges_into, piece by piece.
    sizes = [_read_command.THREAD_BUDGET + 1, 3 * _read_command.THREAD_BUDGET, 8 << 20]
    paths = []
    for i, size in enumerate(sizes):
        p = tmp_path / f"large{i}"
        p.write_bytes(os.urandom(size))
        paths.append(p)
    proc = vyre(tmp_path, "read", "--checksum", "sha256", *paths, tmp_path / "missing")
    assert proc.returncode == 1
    assert proc.stdout.decode().splitlines() == [f"{sha256(p.read_bytes())}  {p}"
                                                 for p in paths]
    assert "missing: No such file or directory" in proc.stderr.decode()


# ---- --files-from --------------------------------------------------------------------

def test_files_from_stdin_with_nul_separators(tmp_path, small_files):
    odd = tmp_path / "a\nname"
    odd.write_bytes(b"newline in the name")
    names = list(small_files) + [str(odd)]
    stdin = b"\0".join(os.fsencode(n) for n in names) + b"\0"
    proc = vyre(tmp_path, "read", "--files-from", "-", "-0", "--checksum", "sha256",
                stdin=stdin)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    assert lines[:-1] == [f"{sha256(d)}  {p}" for p, d in small_files.items()]
    assert lines[-1] == f"\\{sha256(b'newline in the name')}  {tmp_path}/a\\nname"


def test_more_files_than_one_reader_batch_come_out_in_input_order(tmp_path):
    # Past iter_files' batch size, with failures among them: every path once, in order.
    root = tmp_path / "many"
    root.mkdir()
    names = []
    for i in range(5000):
        p = root / f"{i}"
        if i % 997:
            p.write_bytes(b"%d" % i)
        names.append(str(p))
    listing = tmp_path / "list"
    listing.write_text("\n".join(reversed(names)) + "\n")
    proc = vyre(tmp_path, "read", "--json", "--checksum", "crc32", "--files-from", listing)
    assert proc.returncode == 1
    files = json.loads(proc.stdout)["files"]
    assert [f["path"] for f in files] == names[::-1]
    for f in files:
        i = int(os.path.basename(f["path"]))
        if i % 997:
            assert f["checksum"] == f"{zlib.crc32(b'%d' % i):08x}"
        else:
            assert f["error"] == "No such file or directory"


def test_files_from_a_file_after_the_path_arguments(tmp_path, small_files):
    names = list(small_files)
    listing = tmp_path / "list"
    listing.write_bytes(b"\n".join(os.fsencode(n) for n in names[1:]) + b"\n\n")
    proc = vyre(tmp_path, "read", "--json", names[0], "--files-from", listing)
    assert proc.returncode == 0, proc.stderr.decode()
    doc = json.loads(proc.stdout)
    assert [f["path"] for f in doc["files"]] == names          # one document, in order
    assert doc["summary"]["files"] == len(names)


def test_files_from_a_missing_list_is_an_error_naming_it(tmp_path):
    proc = vyre(tmp_path, "read", "--files-from", tmp_path / "no-list")
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines()[-1].endswith(
        f"cannot open --files-from {tmp_path / 'no-list'}: No such file or directory")


# ---- pipes and write errors ----------------------------------------------------------

def test_a_reader_that_goes_away_ends_the_run_quietly(tmp_path, small_files):
    # 30 times the files: far more output than a pipe holds, so writes must fail.
    listing = tmp_path / "list"
    listing.write_text("\n".join(list(small_files) * 30))
    proc = subprocess.Popen([sys.executable, "-m", "vyre_uring", "read", "--checksum",
                             "crc32", "--files-from", listing], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()                           # as `| head -1` does
    err = proc.stderr.read()
    assert proc.wait(TIMEOUT) == 141
    assert err == b""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_a_full_disk_is_a_write_error_with_status_3(tmp_path, small_files):
    with open("/dev/full", "wb") as full:
        proc = vyre(tmp_path, "read", "--checksum", "sha256", *small_files, stdout=full)
    assert proc.returncode == 3
    assert proc.stderr.decode().splitlines()[-1] == \
        "vyre-uring: write error: No space left on device"
    assert "Traceback" not in proc.stderr.decode()


def test_a_closed_stdout_is_a_write_error_with_status_3(tmp_path, small_files):
    proc = subprocess.run([sys.executable, "-m", "vyre_uring", "read", "--checksum",
                           "sha256", *small_files], cwd=tmp_path, stderr=subprocess.PIPE,
                          timeout=TIMEOUT, preexec_fn=lambda: os.close(1))
    assert proc.returncode == 3
    assert proc.stderr.decode().splitlines()[-1] == \
        "vyre-uring: write error: Bad file descriptor"


# ---- output and flags ----------------------------------------------------------------

def test_quiet_drops_the_summary(tmp_path, small_files):
    proc = vyre(tmp_path, "read", "-q", *small_files)
    assert proc.returncode == 0 and proc.stderr == b"" and proc.stdout == b""
    proc = vyre(tmp_path, "read", *small_files)
    assert proc.stderr.decode().startswith("vyre-uring: files 300,")


def test_summary_rate_is_over_wall_time(tmp_path, small_files):
    proc = vyre(tmp_path, "read", "--json", *small_files)
    s = json.loads(proc.stdout)["summary"]
    assert s["bytes"] == sum(map(len, small_files.values()))
    # Both are rounded in the summary (seconds to 6 digits, the rate to 4).
    assert s["gb_per_s"] == pytest.approx(s["bytes"] / s["seconds"] / 1e9, rel=1e-3, abs=1e-4)


def test_an_explicit_backend_wins_over_the_environment(tmp_path, small_files):
    proc = vyre(tmp_path, "read", "--json", "--backend", "threads", *small_files,
                env={BACKEND_ENV: "io_uring"})
    assert json.loads(proc.stdout)["summary"]["backend"] == "threads"
    proc = vyre(tmp_path, "read", "--json", *small_files, env={BACKEND_ENV: "threads"})
    assert json.loads(proc.stdout)["summary"]["backend"] == "threads"


def test_json_keeps_non_utf8_names_recoverable(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9 \xff.txt"
    with open(raw, "wb") as f:
        f.write(b"latin-1 name")
    proc = vyre(tmp_path, "read", "--json", "--checksum", "sha256", "-r", tmp_path)
    [rec] = json.loads(proc.stdout)["files"]
    assert base64.b64decode(rec["path_bytes"]) == raw
    assert rec["path"].endswith("caf\ufffd \ufffd.txt")
    assert rec["checksum"] == sha256(b"latin-1 name")


def test_ctrl_c_mid_file_exits_130_promptly_without_a_traceback(tmp_path):
    # A 64 GiB sparse file would take minutes to hash: the run must stop between
    # pieces, not finish the file.
    (tmp_path / "a").write_bytes(b"first")
    with open(tmp_path / "b", "wb") as f:
        f.truncate(64 << 30)
    proc = subprocess.Popen([sys.executable, "-m", "vyre_uring", "read", "--checksum",
                             "sha256", tmp_path / "a", tmp_path / "b"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().endswith(b"a\n")   # the big file is being read now
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.decode().splitlines() == ["vyre-uring: interrupted"]
