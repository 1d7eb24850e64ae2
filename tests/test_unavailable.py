"""Where io_uring is blocked (sysctl, seccomp), Ring() raises UringUnavailableError
saying why and what to do, and check() reports it; every syscall error names the
syscall, the errno and a fix."""
import errno
import os
import pickle
import subprocess
import sys
import textwrap

import pytest

import vyre_uring
from vyre_uring import Ring, UringSyscallError, UringUnavailableError

from conftest import (read_sysctl, restore_sysctl_left_by_a_killed_run, run_as_nobody,
                      run_under_seccomp)


# ---- kernel.io_uring_disabled (opt-in: VYRE_URING_TEST_SYSCTL=1) ---------------------

def test_a_killed_runs_sysctl_value_is_restored_by_the_next_run(tmp_path):
    sysctl, state = tmp_path / "io_uring_disabled", tmp_path / "state"
    sysctl.write_text("2\n")
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    state.write_text(f"1 {os.getpid()}\n")          # a run still going: left alone
    assert restore_sysctl_left_by_a_killed_run(state, sysctl) is None
    assert sysctl.read_text() == "2\n" and state.exists()
    state.write_text(f"0 {dead.pid}\n")             # a killed run: restored
    assert restore_sysctl_left_by_a_killed_run(state, sysctl) == 0
    assert sysctl.read_text() == "0\n" and not state.exists()
    assert restore_sysctl_left_by_a_killed_run(state, sysctl) is None


def test_disabled_2_makes_ring_raise_unavailable_with_the_fix(io_uring_disabled):
    io_uring_disabled(2)
    with pytest.raises(UringUnavailableError) as ei:
        Ring(4)
    e = ei.value
    assert isinstance(e, OSError) and isinstance(e, UringSyscallError)
    assert e.errno == errno.EPERM
    assert e.syscall == "io_uring_setup"
    text = str(e)
    assert "io_uring_disabled" in text and "= 2" in text
    assert "fix:" in text and "sysctl kernel.io_uring_disabled=0" in text


def test_disabled_2_check_reports_unavailable_with_reason(io_uring_disabled):
    io_uring_disabled(2)
    a = vyre_uring.check()
    assert a.available is False
    assert "io_uring_disabled" in a.reason and "2" in a.reason
    assert "Fix:" in a.reason
    assert a.sysctl == 2


def test_ring_works_again_after_restoring_sysctl(io_uring_disabled):
    old = read_sysctl()
    io_uring_disabled(2)
    with pytest.raises(UringUnavailableError):
        Ring(4)
    io_uring_disabled(old)
    with Ring(4) as ring:
        ring.prep_nop(user_data=1)
        assert [c.user_data for c in ring.wait(timeout=5)] == [1]
    assert vyre_uring.check().available


def test_ring_created_before_disabling_keeps_working(io_uring_disabled):
    with Ring(4) as ring:
        io_uring_disabled(2)
        ring.prep_nop(user_data=2)
        assert [(c.user_data, c.res) for c in ring.wait(timeout=5)] == [(2, 0)]


def test_disabled_1_still_allows_root(io_uring_disabled):
    io_uring_disabled(1)
    with Ring(4) as ring:
        ring.prep_nop(user_data=3)
        assert [c.user_data for c in ring.wait(timeout=5)] == [3]
    assert vyre_uring.check().available


def _probe_as_nobody():
    """As uid/gid 65534 (nobody): try Ring() and check(); returns the findings."""
    def body():
        out = {"setup": "ok", "euid": os.geteuid()}
        try:
            Ring(4).close()
            out["ring"] = "ok"
        except UringUnavailableError as e:
            out.update(ring="unavailable", errno=e.errno, text=str(e),
                       is_oserror=isinstance(e, OSError))
        except Exception as e:
            out["ring"] = repr(e)
        a = vyre_uring.check()
        out.update(available=a.available, reason=a.reason)
        return out
    return run_as_nobody(body)


def test_disabled_1_refuses_unprivileged_user_and_names_io_uring_group(io_uring_disabled):
    with open("/proc/sys/kernel/io_uring_group") as f:
        group = int(f.read().strip())
    if group == 65534:
        pytest.skip("nobody's group is the io_uring_group here")
    io_uring_disabled(1)
    out = _probe_as_nobody()
    if out["setup"] != "ok":
        pytest.skip(out["setup"])
    assert out["euid"] == 65534
    assert out["ring"] == "unavailable", out
    assert out["errno"] == errno.EPERM and out["is_oserror"]
    assert "io_uring_group" in out["text"] and "io_uring_disabled" in out["text"]
    assert "fix:" in out["text"]
    assert out["available"] is False and "io_uring_group" in out["reason"]


def test_disabled_0_allows_unprivileged_user(io_uring_disabled):
    io_uring_disabled(0)
    out = _probe_as_nobody()
    if out["setup"] != "ok":
        pytest.skip(out["setup"])
    assert out["ring"] == "ok", out
    assert out["available"] is True


# ---- seccomp -----------------------------------------------------------------------

SECCOMP_CHILD = textwrap.dedent("""
    out = {"setup": "ok"}
    import vyre_uring
    try:
        vyre_uring.Ring(4).close()
        out["ring"] = "ok"
    except vyre_uring.UringUnavailableError as e:
        out.update(ring="unavailable", errno=e.errno, text=str(e),
                   is_oserror=isinstance(e, OSError), syscall=e.syscall)
    except Exception as e:
        out["ring"] = repr(e)
    a = vyre_uring.check()
    out.update(available=a.available, reason=a.reason, seccomp=a.seccomp)
    # The reader falls back to threads, warns once with the diagnosis, reads right.
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with vyre_uring.BatchReader() as r:
            with open(sys.executable, "rb") as f:
                out["reader_same"] = r.read_files([sys.executable]) == [f.read()]
            out["reader_backend"] = r.backend
            out["fallback_reason"] = r.stats()["fallback_reason"]
    out["warnings"] = [str(w.message) for w in caught]
    try:
        vyre_uring.BatchReader(backend="io_uring").close()
        out["explicit_io_uring"] = "ok"
    except vyre_uring.UringUnavailableError as e:
        out["explicit_io_uring"] = str(e)
    print(json.dumps(out))
""")


def _run_seccomp_child(err):
    return run_under_seccomp(SECCOMP_CHILD, err)


@pytest.mark.parametrize("err", [errno.EPERM, errno.ENOSYS], ids=["EPERM", "ENOSYS"])
def test_seccomp_blocking_io_uring_setup_is_diagnosed(err):
    out = _run_seccomp_child(err)
    assert out["ring"] == "unavailable", out
    assert out["errno"] == err and out["is_oserror"]
    assert out["syscall"] == "io_uring_setup"
    assert "seccomp" in out["text"] and "Seccomp:" in out["text"]
    assert "fix:" in out["text"] and "seccomp profile" in out["text"]
    assert out["available"] is False
    assert "seccomp" in out["reason"] and "Seccomp:" in out["reason"]
    assert out["seccomp"].startswith("Seccomp:") and not out["seccomp"].endswith("0")
    assert out["reader_backend"] == "threads" and out["reader_same"] is True
    assert "seccomp" in out["fallback_reason"]
    assert len(out["warnings"]) == 1 and "seccomp" in out["warnings"][0]
    assert "seccomp" in out["explicit_io_uring"]        # an explicit backend never falls back


# ---- every syscall error names syscall, errno and a fix ----------------------------

def test_unregister_buffers_without_registration_is_a_syscall_error_with_a_hint(ring):
    with pytest.raises(UringSyscallError) as ei:
        ring.unregister_buffers()
    e = ei.value
    assert isinstance(e, OSError)
    assert not isinstance(e, UringUnavailableError)
    assert e.errno == errno.ENXIO
    assert e.strerror == os.strerror(errno.ENXIO)
    assert "io_uring_register" in e.syscall
    assert e.hint and e.hint.strip()
    text = str(e)
    assert e.syscall in text and "ENXIO" in text and "fix:" in text and e.hint in text
    # The ring is fine afterwards.
    ring.prep_nop(user_data=1)
    assert [c.user_data for c in ring.wait(timeout=5)] == [1]


def test_unregister_files_without_registration_is_a_syscall_error_with_a_hint(ring):
    with pytest.raises(UringSyscallError) as ei:
        ring.unregister_files()
    assert ei.value.errno == errno.ENXIO
    assert "io_uring_register" in ei.value.syscall
    assert "fix:" in str(ei.value) and ei.value.hint


def test_syscall_error_survives_pickling(ring):
    with pytest.raises(UringSyscallError) as ei:
        ring.unregister_buffers()
    e2 = pickle.loads(pickle.dumps(ei.value))
    assert type(e2) is type(ei.value)
    assert (e2.errno, e2.syscall, e2.hint, str(e2)) == \
        (ei.value.errno, ei.value.syscall, ei.value.hint, str(ei.value))
