"""The package's type information: mypy --strict accepts a program using the public
API (and refuses misuses of it, so the types are not Any), and stubtest finds the
stub of the compiled module in agreement with the module."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import vyre_uring

pytest.importorskip("mypy", reason="mypy is not installed (pip install 'vyre-uring[test]')")

# Runs too: it reads itself, so the program type-checked is also one that works.
USAGE = textwrap.dedent('''\
    import array
    import errno

    import vyre_uring
    from vyre_uring import (SQE_IO_LINK, ArgumentRangeError, BatchReader, Completion, Op,
                            Ring, Statx, StatxArray, UringSyscallError, UringUnavailableError)

    PATH = __file__


    def ring_ops(fd: int) -> int:
        buf = vyre_uring.alloc_buffer(8192)
        with Ring(64, single_issuer=True) as ring:
            ring.prep_read(fd, buf, 0, nbytes=16, user_data=1)
            ring.prep_read(fd, bytearray(4), -1, flags=SQE_IO_LINK)
            ring.prep_nop(user_data=2)
            done: list[Completion] = ring.wait(3, timeout=5.0)
            total = sum(c.res for c in done if c.user_data == 1)
            n: int = ring.prep_reads(fd, buf, array.array("q", [0, 4096]), [4096, 4096])
            ud, res = array.array("Q", [0] * n), array.array("i", [0] * n)
            got = ring.reap(ud, res, min_complete=n, timeout=None)
            st, many = Statx(), StatxArray(2)
            ring.prep_statx(PATH, st)
            ring.prep_statx_batch([PATH, PATH.encode()], many)
            ring.wait(3)
            sizes = many.sizes()
            ring.register_buffers([buf])
            ring.prep_read_fixed_batch(fd, 0, [0], [16])
            ring.completions()
            supported = Op.READ in ring.probe()
            return total + got + st.size + len(sizes) + int(supported) + ring.in_flight


    def reader() -> int:
        data: list[bytes] = vyre_uring.read_files([PATH], queue_depth=8)
        mixed = vyre_uring.read_files([PATH, "/nonexistent"], on_error="return")
        failures = [r.errno for r in mixed if isinstance(r, OSError)]
        count = sum(len(d) for _, _, d in vyre_uring.iter_files(iter([PATH]))
                    if isinstance(d, bytes))
        parts: list[bytes] = vyre_uring.read_ranges(PATH, [0, 10], [5, 5])
        buf = bytearray(10)
        counts: list[int] = vyre_uring.read_ranges_into(PATH, buf, [0, 5], [5, 5])
        with BatchReader(backend="threads", workers=2) as r:
            r.read_files([PATH], on_error="skip", progress=lambda done, total, nbytes: None)
            files: int = r.stats()["files"]
        return len(data) + len(failures) + count + len(parts) + sum(counts) + files


    def errors() -> str:
        message = ""
        try:
            with Ring(8) as ring:
                ring.prep_read(0, bytearray(1), -2)
        except ArgumentRangeError as e:
            message = str(e)
        try:
            Ring(8).close()
        except UringUnavailableError as e:
            return e.hint
        except UringSyscallError as e:
            return e.syscall + (e.detail or "")
        a = vyre_uring.check()
        return message + a.reason + str(a.sysctl) + errno.errorcode[errno.EPERM]


    with open(PATH, "rb") as f:
        print(ring_ops(f.fileno()), reader(), errors())
''')

# Each line a misuse mypy must refuse.
MISUSES = textwrap.dedent('''\
    import vyre_uring
    ring = vyre_uring.Ring(8)
    n: str = ring.prep_reads(0, bytearray(8), [0], [8])
    vyre_uring.read_files(["a"])[0].errno
    vyre_uring.read_files(["a"], on_error="return")[0].decode()
    vyre_uring.read_files(["a"], on_error="ignore")
    ring.prep_read(0, bytearray(8), offset="0")
    ring.wait()[0].res.upper()
    vyre_uring.check().available.lower()
''')


def _mypy_env():
    """Where an editable or in-place install hides the package behind an import hook,
    which mypy does not run, point mypy at the folder that holds it."""
    env = dict(os.environ)
    holder = Path(vyre_uring.__file__).parent.parent
    if holder.name not in ("site-packages", "dist-packages"):
        env["MYPYPATH"] = str(holder)
    return env


def _mypy(tmp_path, *args):
    # follow_imports=silent: the package's own modules are read for their types, and
    # only the program checked is judged.
    return subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent",
                           "--cache-dir", str(tmp_path / "cache"), *args],
                          capture_output=True, text=True, cwd=tmp_path, env=_mypy_env(),
                          timeout=300)


def test_mypy_strict_accepts_a_program_using_the_public_api(tmp_path):
    (tmp_path / "usage.py").write_text(USAGE)
    r = _mypy(tmp_path, "--strict", "usage.py")
    assert r.returncode == 0, r.stdout + r.stderr
    run = subprocess.run([sys.executable, "usage.py"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert run.returncode == 0, run.stderr


def test_mypy_refuses_misuses_of_the_public_api(tmp_path):
    (tmp_path / "misuse.py").write_text(MISUSES)
    r = _mypy(tmp_path, "--strict", "misuse.py")
    flagged = {int(m) for m in re.findall(r"^misuse\.py:(\d+): error", r.stdout, re.M)}
    assert flagged == set(range(3, len(MISUSES.splitlines()) + 1)), r.stdout


def _stubtest(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "mypy.stubtest", *args],
                          capture_output=True, text=True, cwd=tmp_path, env=_mypy_env(),
                          timeout=300)


def test_stubtest_finds_the_stubs_in_agreement_with_the_compiled_modules(tmp_path):
    # Cython's pickling helpers are not API. The stub leaves out PEP 800's
    # @disjoint_base, which older mypy versions cannot read; newer stubtests check it.
    (tmp_path / "allowlist").write_text(".*\\.__(reduce|setstate)_cython__\n")
    (tmp_path / "mypy.ini").write_text("[mypy]\nfollow_imports = silent\n"
                                       "ignore_missing_imports = True\n")
    args = ["--allowlist", "allowlist", "--mypy-config-file", "mypy.ini"]
    if "--ignore-disjoint-bases" in _stubtest(tmp_path, "--help").stdout:
        args.append("--ignore-disjoint-bases")
    r = _stubtest(tmp_path, *args, "vyre_uring._ring", "vyre_uring._engine")
    assert r.returncode == 0, r.stdout + r.stderr
