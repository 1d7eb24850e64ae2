"""The benchmark harness's own logic: interleaving, statistics, discovery of the
contenders, the table, and clean-up of its data. No timing is asserted."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from vyre_uring import cli
from vyre_uring.bench import cache, harness, native, workloads
from vyre_uring.bench.harness import REFERENCE, Contender, Workload


def counting(log, name, rates):
    """A contender whose run() logs its name and returns the next rate."""
    it = iter(rates)

    def run():
        log.append(name)
        return next(it)
    return Contender(name, run)


def test_contenders_run_interleaved_round_by_round():
    log = []
    w1 = Workload("w1", "ops/s", [counting(log, "A", [1, 2, 3]), counting(log, "B", [4, 5, 6]),
                                  Contender("X", why="not here")])
    w2 = Workload("w2", "ops/s", [counting(log, "C", [7, 8, 9])],
                  before=lambda: log.append("before") or "warm (100.0% resident)")
    ticks = []
    results = harness.interleave([w1, w2], 3, lambda: ticks.append(1))
    assert log == ["A", "B", "before", "C"] * 3
    assert results == {"w1": {"A": [1, 2, 3], "B": [4, 5, 6]}, "w2": {"C": [7, 8, 9]}}
    assert len(ticks) == 9
    assert w2.cache == {"warm (100.0% resident)"} and w1.cache == set()


def test_statistics_against_the_reference_of_the_same_rounds():
    s = harness.summarize([2.0, 9.0, 4.0], reference=[1.0, 10.0, 2.0])
    assert (s["min"], s["median"], s["max"]) == (2.0, 4.0, 9.0)
    assert s["ratio"] == 4.0 / 2.0                     # medians
    assert s["best_ratio"] == 9.0 / 10.0               # best runs
    assert s["per_round"] == (0.9, 2.0, 2.0)           # 2/1, 9/10, 4/2
    assert "ratio" not in harness.summarize([1.0, 2.0])


def test_table_shows_ratios_and_why_a_contender_is_missing():
    w = Workload("rand", "reads/s", [Contender(REFERENCE, lambda: 0), Contender("vyre", lambda: 0),
                                     Contender("fio io_uring", why="fio is not installed")])
    results = {"rand": {REFERENCE: [100.0, 200.0, 300.0], "vyre": [90.0, 180.0, 330.0]}}
    summary = harness.summaries(results, [w])
    assert summary["rand"]["fio io_uring"] == {"not_available": "fio is not installed"}
    cold = Workload("cold", "reads/s", [Contender(REFERENCE, why="needs root"),
                                        Contender("vyre", why="needs root")])
    summary.update(harness.summaries({}, [cold]))
    text = harness.table(summary, [w, cold])
    # Contenders that cannot run are listed once at the end, grouped by the reason.
    assert "fio" not in text.split("Not run here:")[0]
    assert text.split("Not run here:")[1].splitlines()[1:] == [
        "  fio is not installed:", "    fio io_uring (rand)",
        "  needs root:", f"    {REFERENCE} (cold), vyre (cold)"]
    vyre = next(line for line in text.splitlines() if "vyre" in line)
    assert "0.90x" in vyre and "1.10x" in vyre          # medians 180/200, best 330/300
    ref = next(line for line in text.splitlines() if REFERENCE in line)
    assert "1.00x" in ref


def test_ratios_are_to_the_workloads_own_reference_and_the_legend_names_it():
    w = Workload("sums", "files/s", [Contender("xargs", lambda: 0), Contender("vyre", lambda: 0)],
                 reference="xargs")
    summary = harness.summaries({"sums": {"xargs": [10.0, 20.0], "vyre": [30.0, 30.0]}}, [w])
    assert summary["sums"]["vyre"]["ratio"] == 30.0 / 15.0
    legend = harness.legend([w])
    assert "higher is better" in legend and "best/best" in legend and "per round" in legend
    assert "sums: xargs" in legend


def test_json_records_every_run_the_summary_and_the_cache_state(tmp_path):
    w = Workload("w", "ops/s", [Contender(REFERENCE, lambda: 1.0)])
    w.cache.add("cold (0.0% resident)")
    results = {"w": {REFERENCE: [1.0, 2.0]}}
    out = tmp_path / "r.json"
    harness.to_json(out, {"kernel": "x"}, 2, results, harness.summaries(results, [w]), [w])
    doc = json.loads(out.read_text())
    assert doc["workloads"]["w"]["runs"] == {REFERENCE: [1.0, 2.0]}
    assert doc["workloads"]["w"]["cache"] == ["cold (0.0% resident)"]
    assert doc["workloads"]["w"]["summary"][REFERENCE]["median"] == 1.5
    assert doc["environment"] == {"kernel": "x"} and doc["rounds"] == 2


def test_c_programs_are_explained_when_they_cannot_be_built(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "SYSTEM_INCLUDE", str(tmp_path / "no-include"))
    monkeypatch.setenv("CPATH", str(tmp_path))
    monkeypatch.delenv("C_INCLUDE_PATH", raising=False)
    assert native.build_c("nop_liburing", str(tmp_path)) == (None, (
        f"liburing.h is in none of {tmp_path} (CPATH), {tmp_path / 'no-include'} "
        f"(apt-get install liburing-dev, or unpack its .deb with dpkg -x and set "
        f"C_INCLUDE_PATH to its usr/include)"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert native.build_c("nop_liburing", str(tmp_path))[1] == "no C compiler (cc) on PATH"


def fake_liburing(prefix, header="/* liburing */\n"):
    """A tree laid out as `dpkg -x` leaves liburing-dev and liburing2."""
    (prefix / "usr/include").mkdir(parents=True)
    (prefix / "usr/include/liburing.h").write_text(header)
    libs = prefix / "usr/lib/x86_64-linux-gnu"
    libs.mkdir(parents=True)
    (libs / "liburing.so.2").write_bytes(b"")
    return prefix / "usr/include", libs


def test_liburing_is_searched_as_gcc_does_cpath_then_c_include_path_then_system(
        monkeypatch, tmp_path):
    system, _ = fake_liburing(tmp_path / "system")
    monkeypatch.setattr(native, "SYSTEM_INCLUDE", str(system))
    cpath, cpath_libs = fake_liburing(tmp_path / "cpath")
    c_include, c_include_libs = fake_liburing(tmp_path / "c_include")
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"CPATH": f"{empty}::{tmp_path / 'missing'}:{cpath}",
           "C_INCLUDE_PATH": str(c_include), "LIBRARY_PATH": str(empty)}
    found, why = native.find_liburing(env)
    assert why is None
    assert (found.include, found.source) == (str(cpath), "CPATH")
    assert found.lib_dirs == [str(empty), str(cpath_libs)]
    assert found.flags() == ["-I", str(cpath), "-L", str(empty), f"-Wl,-rpath,{empty}",
                             "-L", str(cpath_libs), f"-Wl,-rpath,{cpath_libs}"]
    assert found.describe() == (f"liburing.h in {cpath} (from CPATH), libraries from "
                                f"{empty}:{cpath_libs}")
    del env["CPATH"]
    found, _ = native.find_liburing(env)
    assert (found.source, found.lib_dirs) == ("C_INCLUDE_PATH", [str(empty), str(c_include_libs)])
    found, _ = native.find_liburing({})
    assert (found.include, found.source, found.flags()) == (str(system), "system", [])
    assert found.describe() == f"liburing.h in {system}"


def test_the_c_programs_are_compiled_with_the_folder_found_not_the_environment(tmp_path):
    # Passed as an argument, not set in the environment: only an explicit -I lets
    # the compiler see this header, and it must win over an installed one.
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler (cc) on PATH")
    include, _ = fake_liburing(tmp_path / "unpacked", "#error the unpacked header\n")
    binary, why = native.build_c("nop_liburing", str(tmp_path),
                                 {"C_INCLUDE_PATH": str(include)})
    assert binary is None
    assert why.startswith(f"cc failed (liburing.h in {include} (from C_INCLUDE_PATH), ")
    assert why.endswith("#error the unpacked header")


def test_the_c_programs_build_where_liburing_is_installed(tmp_path):
    found, why = native.find_liburing()
    if found is None:
        pytest.skip(why)
    for name in ("nop_liburing", "ranges_liburing", "small_files_liburing"):
        binary, why = native.build_c(name, str(tmp_path))
        assert why is None and os.access(binary, os.X_OK), (name, why)


def test_fio_is_explained_when_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert native.find_fio() == (None, "fio is not installed (apt-get install fio)")


def test_pypi_liburing_is_explained_when_missing_or_crashing(monkeypatch, tmp_path):
    import importlib.util
    with monkeypatch.context() as m:
        m.setattr(importlib.util, "find_spec", lambda name: None)
        assert workloads._probe_pypi_liburing() == (
            False, "the PyPI liburing binding is not installed (pip install liburing)")
    # A binding that dies of SIGILL (as a build for another CPU does) is reported,
    # not run in-process.
    fake = tmp_path / "liburing"
    fake.mkdir()
    (fake / "__init__.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert workloads._probe_pypi_liburing() == \
        (False, "the PyPI liburing binding crashed here with SIGILL")


def test_cold_cache_is_refused_clearly_without_root(monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert cache.can_drop() == "a cold cache needs root (writing /proc/sys/vm/drop_caches)"


def test_warm_and_cold_are_verified_with_mincore(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(os.urandom(1 << 20))
    assert cache.warm([str(path)]) == "warm (100.0% resident)"
    if cache.can_drop():
        pytest.skip(cache.can_drop())
    assert cache.drop([str(path)]) == "cold (0.0% resident)"
    assert cache.resident_fraction(str(path)) <= cache.COLD_AT_MOST


def test_data_is_removed_after_an_exception(tmp_path):
    sizes = workloads.Sizes(file_mib=1, files=3)
    with pytest.raises(KeyboardInterrupt):
        with workloads.DataSet(sizes, str(tmp_path)) as data:
            assert os.path.getsize(data.big) == 1 << 20 and len(data.small) == 3
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_data_is_removed_when_the_process_is_interrupted(tmp_path, sig):
    child = textwrap.dedent(f"""
        import sys, time
        from vyre_uring.bench import workloads
        with workloads.DataSet(workloads.Sizes(file_mib=1, files=3), {str(tmp_path)!r}):
            print("ready", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert len(os.listdir(tmp_path)) == 1
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert os.listdir(tmp_path) == []


def test_bench_command_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    status = cli.main(["bench", "--quick", "--only", "nop batch 256", "--file-mib", "1",
                       "--files", "4", "--dir", str(tmp_path), "--json", str(out)])
    text = capsys.readouterr().out
    assert status == 0
    assert "nop batch 256" in text and "vyre Ring" in text
    doc = json.loads(out.read_text())
    runs = doc["workloads"]["nop batch 256"]["runs"]["vyre Ring"]
    assert len(runs) == 5 and all(r > 0 for r in runs)
    assert doc["environment"]["vyre_uring"] and doc["environment"]["kernel"]
    assert os.listdir(tmp_path) == ["bench.json"]         # its data is gone


@pytest.mark.parametrize("spec, cores, counts", [
    (None, 1, [1]), (None, 16, [1, 16]),
    ("sweep", 1, [1]), ("sweep", 2, [1, 2]), ("sweep", 16, [1, 2, 4, 8, 16]),
    ("sweep", 12, [1, 2, 4, 8, 12]), ("sweep", 1024, [1, 2, 4, 8, 16, 32, 64, 128, 256]),
    ("8,1,2,2", 4, [1, 2, 8]),
])
def test_worker_counts(spec, cores, counts):
    assert workloads.worker_counts(spec, cores) == counts


def test_each_worker_count_is_a_row_beside_the_default_calls(tmp_path, capsys):
    out = tmp_path / "bench.json"
    status = cli.main(["bench", "--quick", "--only", "small files warm", "sequential",
                       "--workers", "1,3", "--file-mib", "1", "--files", "4",
                       "--dir", str(tmp_path), "--json", str(out)])
    capsys.readouterr()
    assert status == 0
    doc = json.loads(out.read_text())["workloads"]
    assert set(doc) == {"small files warm", "128k sequential"}
    for name, default in (("small files warm", "vyre read_files()"),
                          ("128k sequential", "vyre read_ranges_into()")):
        rows = list(doc[name]["summary"])
        assert rows.index("vyre io_uring w1") + 1 == rows.index("vyre io_uring w3")
        assert rows.index("vyre io_uring w3") + 1 == rows.index(default)
        assert len(doc[name]["runs"][default]) == 5


@pytest.mark.parametrize("argv, message", [
    (["--rounds", "3"], "--rounds must be at least 5"),
    (["--files", "0"], "--files must be >= 1"),
    (["--workers", "1,x"], "--workers takes a comma list of counts (1,2,4) or 'sweep'"),
    (["--workers", "0,2"], "--workers counts must be between 1 and 256, not 0"),
])
def test_bench_command_refuses_bad_arguments(capsys, argv, message):
    assert cli.main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err


def test_plot_without_matplotlib_fails_before_running(capsys, monkeypatch, tmp_path):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert cli.main(["bench", "--quick", "--dir", str(tmp_path), "--plot",
                     str(tmp_path / "p.png")]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []                          # nothing was made


def test_plot_draws_the_ratios(tmp_path):
    pytest.importorskip("matplotlib")
    w = Workload("rand", "reads/s", [Contender(REFERENCE, lambda: 0), Contender("vyre", lambda: 0)])
    results = {"rand": {REFERENCE: [1.0, 2.0, 3.0], "vyre": [1.0, 2.0, 4.0]}}
    out = tmp_path / "p.png"
    harness.plot(out, harness.summaries(results, [w]), [w], harness.environment())
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_real_tree_lists_readable_regular_files_only(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("a1", "a2", "b/c"):
        (tmp_path / name).write_bytes(b"x")
    os.symlink(tmp_path / "a1", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    assert workloads.real_tree(10, [str(tmp_path)]) == [
        str(tmp_path / n) for n in ("a1", "a2", "b/c")]
    assert len(workloads.real_tree(2, [str(tmp_path)])) == 2


def test_gpu_read_ceiling_reads_a_checkpoint_of_any_length(tmp_path):
    """The host-only contender of the GPU rows, on a file whose length is not whole
    pages (a checkpoint's header makes it so; the buffer is rounded up to pages)."""
    from vyre_uring.bench.gpu_workloads import Checkpoint
    checkpoint = Checkpoint(str(tmp_path), 1)
    with open(checkpoint.single, "wb") as f:
        f.write(os.urandom(3 * 4096 + 123))
    assert checkpoint.read_ceiling() > 0
    with open(checkpoint.single, "rb") as f:
        assert bytes(checkpoint._host[:3 * 4096 + 123]) == f.read()
