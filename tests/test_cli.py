"""The vyre-uring command line: `read` prints what hashlib/zlib compute over the same
files, reports each failure and keeps going, walks trees without following symlinked
directories; `info` reports the kernel, the ring and the memlock limit."""
import errno
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import types
import zlib

import pytest

import vyre_uring
from vyre_uring import cli
from vyre_uring.availability import Availability, unavailable_error
from vyre_uring.reader import BACKEND_ENV

IO_URING = vyre_uring.check()
needs_io_uring = pytest.mark.skipif(not IO_URING.available,
                                    reason=f"io_uring unavailable: {IO_URING.reason}")

READ_OPTIONS = ["-r", "--recursive", "--checksum", "--backend", "--queue-depth",
                "--workers", "--direct", "--progress", "--json", "--files-from", "--null",
                "-q", "--quiet"]


@pytest.fixture(autouse=True)
def _no_backend_override(monkeypatch):
    # The environment variable would choose the backend of tests that give none.
    monkeypatch.delenv(BACKEND_ENV, raising=False)


def digest(algorithm, data):
    if algorithm == "crc32":
        return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"
    return hashlib.new(algorithm, data).hexdigest()


@pytest.fixture
def files(tmp_path):
    """{path: bytes} of files with awkward names and sizes, in sorted path order."""
    rnd = random.Random(7)
    contents = {
        "big.bin": rnd.randbytes(300_000),
        "empty": b"",
        "with space \u00fc\u00df\u65e5.txt": "gr\u00fc\u00dfe\n".encode(),
        "small": b"x",
    }
    out = {}
    for name, data in sorted(contents.items()):
        path = tmp_path / name
        path.write_bytes(data)
        out[str(path)] = data
    return out


@pytest.fixture
def tree(tmp_path):
    """(root, [(path, bytes)] in the order -r reads them, secret path never read)."""
    root = tmp_path / "root"
    (root / "b" / "deeper").mkdir(parents=True)
    (root / "a").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"must not be read through the dir link")
    data = {"top.txt": b"top\n", "a/one": b"1" * 5000, "b/two": b"",
            "b/deeper/three \u00e9": b"three\n"}
    for rel, content in data.items():
        (root / rel).write_bytes(content)
    os.symlink(root / "a" / "one", root / "b" / "link_to_one")     # a file link: read
    os.symlink(outside, root / "b" / "dirlink")                     # a dir link: skipped
    # Top-down: each directory's files by name, then its subdirectories by name.
    order = ["top.txt", "a/one", "b/link_to_one", "b/two", "b/deeper/three \u00e9"]
    expected = [(str(root / rel), (root / rel).read_bytes()) for rel in order]
    return str(root), expected, str(outside / "secret.txt")


def run(capsys, *argv):
    """(exit status, stdout, stderr) of the CLI run in-process."""
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def parse_lines(out):
    """[(digest, path)] from sha256sum-format lines."""
    pairs = []
    for line in out.splitlines():
        hexdigest, sep, path = line.partition("  ")
        assert sep, f"not in sha256sum format: {line!r}"
        pairs.append((hexdigest, path))
    return pairs


# ---- read: checksums -----------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["crc32", "blake2b", "sha256"])
def test_checksums_equal_hashlib_and_zlib(capsys, files, algorithm):
    status, out, err = run(capsys, "read", "--checksum", algorithm, *files)
    assert status == 0, err
    assert parse_lines(out) == [(digest(algorithm, d), p) for p, d in files.items()]


def test_checksum_lines_are_in_sha256sum_format(capsys, files):
    status, out, _ = run(capsys, "read", "--checksum", "crc32", *files)
    assert status == 0
    for line in out.splitlines():
        assert re.fullmatch(r"[0-9a-f]{8}  .+", line), line
    empty = [p for p, d in files.items() if not d][0]
    assert f"00000000  {empty}\n" in out               # crc32 of nothing, zero-padded


def test_empty_file_has_the_empty_digest(capsys, tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    status, out, _ = run(capsys, "read", "--checksum", "sha256", path)
    assert (status, out) == (0, f"{hashlib.sha256(b'').hexdigest()}  {path}\n")


def test_a_name_with_a_newline_is_escaped_like_sha256sum(capsys, tmp_path):
    path = tmp_path / "two\nlines\\x"
    path.write_bytes(b"data")
    status, out, _ = run(capsys, "read", "--checksum", "sha256", path)
    escaped = str(path).replace("\\", "\\\\").replace("\n", "\\n")
    assert (status, out) == (0, f"\\{hashlib.sha256(b'data').hexdigest()}  {escaped}\n")


def test_summary_goes_to_stderr(capsys, files):
    status, out, err = run(capsys, "read", *files)
    assert status == 0
    assert out == ""                                    # no --checksum, no per-file lines
    total = sum(len(d) for d in files.values())
    assert f"files {len(files)}, bytes {total}, errors 0" in err
    assert "GB/s" in err and "backend " in err


# ---- read: failures ------------------------------------------------------------------

def test_a_missing_path_fails_with_exit_1_and_the_others_are_printed(capsys, files, tmp_path):
    missing = str(tmp_path / "does-not-exist")
    paths = list(files)
    status, out, err = run(capsys, "read", "--checksum", "sha256",
                           paths[0], missing, *paths[1:])
    assert status == 1
    assert f"vyre-uring: {missing}: No such file or directory\n" in err
    assert parse_lines(out) == [(digest("sha256", d), p) for p, d in files.items()]
    assert "errors 1" in err


def test_a_directory_without_r_is_an_error(capsys, tree):
    root, _, _ = tree
    status, out, err = run(capsys, "read", "--checksum", "sha256", root)
    assert status == 1
    assert out == ""
    assert f"vyre-uring: {root}: Is a directory\n" in err


def test_an_unlistable_directory_under_r_is_reported_and_the_rest_read(
        capsys, monkeypatch, tree):
    root, expected, _ = tree
    locked = os.path.join(root, "a")
    real_scandir = os.scandir

    def scandir(path="."):
        # As chmod 0 would, but root (which these tests may run as) ignores modes.
        if os.fspath(path) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), locked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    status, out, err = run(capsys, "read", "-r", "--checksum", "sha256", root)
    assert status == 1
    assert f"vyre-uring: {locked}: Permission denied\n" in err
    assert [p for _, p in parse_lines(out)] == [p for p, _ in expected if "/a/" not in p]


# ---- read: recursion -----------------------------------------------------------------

def test_recursive_reads_nested_files_in_a_deterministic_order(capsys, tree):
    root, expected, secret = tree
    status, out, err = run(capsys, "read", "-r", "--checksum", "sha256", root)
    assert status == 0, err
    assert parse_lines(out) == [(digest("sha256", d), p) for p, d in expected]
    assert "dirlink" not in out and secret not in out   # the symlinked dir is not entered
    assert os.path.join(root, "b", "link_to_one") in out   # the symlinked file is read


def test_recursive_mixes_files_and_directories(capsys, tree, files):
    root, expected, _ = tree
    first = list(files)[0]
    status, out, _ = run(capsys, "read", "-r", "--checksum", "crc32", first, root)
    assert status == 0
    assert [p for _, p in parse_lines(out)] == [first] + [p for p, _ in expected]


# ---- read: --json --------------------------------------------------------------------

def test_json_output_structure(capsys, files, tmp_path):
    missing = str(tmp_path / "nope")
    status, out, err = run(capsys, "read", "--json", "--checksum", "blake2b", *files, missing)
    assert status == 1
    doc = json.loads(out)
    assert set(doc) == {"files", "summary"}
    records = doc["files"]
    assert [r["path"] for r in records] == list(files) + [missing]
    for rec, data in zip(records, files.values()):
        assert rec == {"path": rec["path"], "bytes": len(data),
                       "checksum": digest("blake2b", data)}
    assert records[-1] == {"path": missing, "bytes": None,
                           "error": "No such file or directory"}
    summary = doc["summary"]
    assert summary["files"] == len(files)
    assert summary["bytes"] == sum(len(d) for d in files.values())
    assert summary["errors"] == 1
    assert summary["backend"] in ("io_uring", "threads")
    for key in ("seconds", "gb_per_s", "fallback_reason"):
        assert key in summary
    assert "GB/s" not in err                            # no text summary with --json
    assert f"vyre-uring: {missing}: No such file or directory" in err


def test_json_without_checksum_has_no_checksum_key(capsys, files):
    status, out, _ = run(capsys, "read", "--json", *files)
    assert status == 0
    records = json.loads(out)["files"]
    assert all(set(r) == {"path", "bytes"} for r in records)


# ---- read: backends and reader options -----------------------------------------------

@needs_io_uring
def test_threads_and_io_uring_give_identical_checksums(capsys, tree, files):
    root, _, _ = tree
    outputs = {}
    for backend in ("threads", "io_uring"):
        status, out, _ = run(capsys, "read", "-r", "--json", "--checksum", "sha256",
                             "--backend", backend, root, *files)
        assert status == 0
        doc = json.loads(out)
        assert doc["summary"]["backend"] == backend
        outputs[backend] = doc["files"]
    assert outputs["threads"] == outputs["io_uring"]


def test_threads_backend_with_workers_and_queue_depth(capsys, files):
    status, out, err = run(capsys, "read", "--backend", "threads", "--workers", "2",
                           "--queue-depth", "8", "--checksum", "sha256", *files)
    assert status == 0, err
    assert parse_lines(out) == [(digest("sha256", d), p) for p, d in files.items()]
    assert "backend threads" in err


def _recording_reader(monkeypatch):
    """Replace vyre_uring.BatchReader with one that records its keyword arguments."""
    seen = {}
    real = vyre_uring.BatchReader

    class Recording(real):
        def __init__(self, *, backend="auto", queue_depth=64, workers=None, direct=False):
            seen.update(backend=backend, queue_depth=queue_depth, workers=workers,
                         direct=direct)
            super().__init__(backend=backend, queue_depth=queue_depth, workers=workers,
                             direct=direct)

    monkeypatch.setattr(vyre_uring, "BatchReader", Recording)
    return seen


@pytest.mark.parametrize("backend", ["io_uring", "threads"])
def test_direct_reads_the_same_bytes(capsys, files, backend):
    status, out, err = run(capsys, "read", "--direct", "--backend", backend,
                           "--checksum", "sha256", *files)
    assert status == 0, err
    assert parse_lines(out) == [(digest("sha256", d), p) for p, d in files.items()]


def test_direct_refused_by_the_filesystem_is_said_in_the_summary(capsys):
    # sysfs refuses O_DIRECT at open: the file is read buffered, and counted.
    path = "/sys/kernel/mm/transparent_hugepage/enabled"
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist here")
    status, _, err = run(capsys, "read", "--direct", path)
    assert status == 0, err
    assert "O_DIRECT refused by the filesystem for 1 file(s), read buffered" in err


def test_options_not_given_are_left_to_the_reader(capsys, monkeypatch, files):
    seen = _recording_reader(monkeypatch)
    status, _, _ = run(capsys, "read", *files)
    assert status == 0
    # Workers: the reader's default, at most the command's own cap.
    workers = min(cli.READ_RINGS, vyre_uring.reader.default_workers())
    assert seen == {"backend": "auto", "queue_depth": 64, "workers": workers, "direct": False}


def test_an_unavailable_io_uring_backend_exits_1_with_the_reason(capsys, monkeypatch, files):
    def refuse(**kwargs):
        raise unavailable_error(errno.EPERM)
    monkeypatch.setattr(vyre_uring, "BatchReader", refuse)
    status, out, err = run(capsys, "read", "--backend", "io_uring", *files)
    assert status == 1
    assert out == ""
    assert "cannot use the io_uring backend" in err and "EPERM" in err


def test_summary_names_the_fallback_reason(capsys, monkeypatch, files):
    real = vyre_uring.BatchReader

    class FellBack(real):
        def __init__(self, **kwargs):
            super().__init__(backend="threads")
            self.fallback_reason = "blocked by seccomp (test)"

    monkeypatch.setattr(vyre_uring, "BatchReader", FellBack)
    status, _, err = run(capsys, "read", *files)
    assert status == 0
    assert "backend threads" in err and "blocked by seccomp (test)" in err


# ---- read: --progress ----------------------------------------------------------------

def test_progress_without_tqdm_notes_it_and_continues(capsys, monkeypatch, files):
    monkeypatch.setitem(sys.modules, "tqdm", None)      # makes `import tqdm` fail
    status, out, err = run(capsys, "read", "--progress", "--checksum", "sha256", *files)
    assert status == 0
    assert "tqdm" in err and "not installed" in err
    assert len(parse_lines(out)) == len(files)


def test_progress_with_tqdm_counts_every_file(capsys, monkeypatch, tree):
    bars = []

    class FakeBar:
        def __init__(self, total=None, file=None, **kwargs):
            self.total, self.file, self.n, self.closed = total, file, 0, False
            bars.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            self.closed = True

    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=FakeBar))
    root, expected, _ = tree
    status, _, _ = run(capsys, "read", "-r", "--progress", root)
    assert status == 0
    (bar,) = bars
    assert (bar.n, bar.closed, bar.file) == (len(expected), True, sys.stderr)


# ---- arguments -----------------------------------------------------------------------

def test_read_help_mentions_every_option(capsys):
    status, out, _ = run(capsys, "read", "--help")
    assert status == 0
    for option in READ_OPTIONS:
        assert option in out, option
    for choice in ("crc32", "blake2b", "sha256", "auto", "io_uring", "threads"):
        assert choice in out
    assert "path_bytes" in out and "@base64d" in out     # how to get a name back


@pytest.mark.parametrize("argv", [["--help"], ["read", "--help"]])
def test_help_lists_the_exit_statuses(capsys, argv):
    status, out, _ = run(capsys, *argv)
    assert status == 0
    for code in (cli.EXIT_FILE_FAILED, cli.EXIT_USAGE, cli.EXIT_WRITE_ERROR,
                 cli.EXIT_INTERRUPTED, cli.EXIT_BROKEN_PIPE):
        assert re.search(rf"^  {code} ", out, re.M), code


def test_top_level_and_info_help(capsys):
    status, out, _ = run(capsys, "--help")
    assert status == 0
    assert "read" in out and "info" in out and "--version" in out
    status, out, _ = run(capsys, "info", "--help")
    assert status == 0 and "--json" in out


def test_no_subcommand_prints_help_and_exits_2(capsys):
    status, out, err = run(capsys)
    assert status == 2
    assert "usage:" in err and "read" in err and "info" in err


@pytest.mark.parametrize("argv, message", [
    (["read", "--checksum", "md5", "x"], "invalid choice: 'md5'"),
    (["read", "--backend", "aio", "x"], "invalid choice: 'aio'"),
    (["read", "--queue-depth", "0", "x"], "must be at least 1"),
    (["read", "--queue-depth", "many", "x"], "not an integer"),
    (["read", "--queue-depth", "100000", "x"], "queue_depth must be between 1 and 4096"),
    # "-3" alone would read as an option: the parser has -0 (--null).
    (["read", "--workers=-3", "x"], "must be at least 1"),
    (["read"], "no PATH given (and no --files-from)"),
    (["read", "-0", "x"], "-0/--null applies to --files-from"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_arguments_exit_2_with_a_clear_message(capsys, argv, message):
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert out == ""
    assert message in err


# ---- info ----------------------------------------------------------------------------

def test_info_text(capsys):
    status, out, _ = run(capsys, "info")
    assert status == 0
    assert os.uname().release in out
    assert "RLIMIT_MEMLOCK" in out
    if IO_URING.available:
        assert re.search(r"^io_uring\s+available$", out, re.M)
        assert re.search(r"\bREAD\b", out) and "SINGLE_MMAP" in out
    else:
        assert "NOT AVAILABLE" in out and IO_URING.reason.split()[0] in out


def test_info_json(capsys):
    status, out, _ = run(capsys, "info", "--json")
    assert status == 0
    info = json.loads(out)
    assert info["kernel"] == os.uname().release
    assert info["io_uring"]["available"] is IO_URING.available
    assert info["io_uring"]["reason"] == IO_URING.reason
    assert info["io_uring"]["seccomp"] in (0, 1, 2)          # a number, as the kernel says
    memlock = info["rlimit_memlock"]
    assert set(memlock) == {"soft", "hard"}
    assert all(v == "unlimited" or isinstance(v, int) for v in memlock.values())
    if IO_URING.available:
        assert "READ" in info["opcodes"] and "NOP" in info["opcodes"]
        assert info["opcodes"] == sorted(info["opcodes"])
        assert "SINGLE_MMAP" in info["features"]["names"]
        assert info["features"]["value"] & vyre_uring.FEAT_SINGLE_MMAP


def test_info_says_clearly_when_io_uring_is_unavailable(capsys, monkeypatch):
    why = "a seccomp filter blocks io_uring_setup (test). Fix: allow it."
    monkeypatch.setattr(vyre_uring, "check", lambda: Availability(
        False, why, os.uname().release, 0, "Seccomp:\t2"))
    status, out, _ = run(capsys, "info")
    assert status == 0
    assert "NOT AVAILABLE" in out
    assert " ".join(why.split()) in " ".join(out.split())   # wrapped, but all there
    status, out, _ = run(capsys, "info", "--json")
    info = json.loads(out)
    assert status == 0
    assert info["io_uring"]["available"] is False and info["io_uring"]["reason"] == why
    assert info["opcodes"] is None and info["features"] is None


def test_feature_and_opcode_names():
    names, unknown = cli.feature_names(vyre_uring.FEAT_NODROP | vyre_uring.FEAT_EXT_ARG
                                       | (1 << 30))
    assert (names, unknown) == (["NODROP", "EXT_ARG"], [30])
    assert cli.opcode_name(vyre_uring.Op.READ) == "READ"
    assert cli.opcode_name(45) == "SOCKET"
    assert cli.opcode_name(200) == "OPCODE_200"


# ---- through a real interpreter ------------------------------------------------------

def _python_m(tmp_path, *argv):
    # cwd=tmp_path: run from the repository, `-m vyre_uring` would import the source
    # tree (without its compiled extension) instead of the installed package.
    return subprocess.run([sys.executable, "-m", "vyre_uring", *argv], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})


def test_python_m_read(tmp_path, files):
    missing = str(tmp_path / "missing file")
    proc = _python_m(tmp_path, "read", "--checksum", "sha256", *files, missing)
    assert proc.returncode == 1, proc.stderr
    assert parse_lines(proc.stdout) == [(digest("sha256", d), p) for p, d in files.items()]
    assert f"vyre-uring: {missing}: No such file or directory" in proc.stderr
    assert "errors 1" in proc.stderr


def test_python_m_info_and_no_command(tmp_path):
    proc = _python_m(tmp_path, "info", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["kernel"] == os.uname().release
    proc = _python_m(tmp_path)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr
