"""What the benchmarks share: compiling the C references, recording the machine,
and the table of min/median/max with ratios to the C figure of the same run."""
import os
import platform
import shutil
import statistics
import subprocess
import time

import vyre_uring

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = "C liburing"


def build_c(source, workdir):
    """Compile a liburing program; return (path, None) or (None, why it is not available)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None, "not available: no C compiler (cc) on PATH"
    if not os.path.exists("/usr/include/liburing.h"):
        return None, "not available: liburing.h missing (apt-get install liburing-dev)"
    out = os.path.join(workdir, os.path.splitext(os.path.basename(source))[0])
    proc = subprocess.run([cc, "-O2", "-o", out, source, "-luring"], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        return None, f"not available: cc failed: {proc.stderr.strip().splitlines()[-1]}"
    return out, None


def environment():
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "kernel": platform.release(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "cython": vyre_uring._ring.CYTHON_VERSION,
        "vyre_uring": vyre_uring.__version__,
    }


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def table(results, missing, key="batch", reference=REFERENCE):
    """min/median/max ops/s, and the ratio to the reference (C unless said): of the
    medians, of the best runs (closest to an unloaded machine), and per round (each
    round's contender against the reference run of the same round, so drift
    cancels). `results` maps each workload (named in the `key` column) to
    {contender: [ops/s per round]}."""
    w = max([12] + [len(name) for rows in results.values() for name in rows])
    k = max([len(key)] + [len(str(x)) for x in results])
    vs = f"vs {'C' if reference == REFERENCE else reference}: medians"
    v = max(13, len(vs))
    lines = [f"{key:>{k}}  {'contender':<{w}} {'min':>9} {'median':>9} {'max':>9}  "
             f"{vs:>{v}}  {'best/best':>9}  {'per round min/median/max':>24}"]
    for batch, rows in results.items():
        ref = rows.get(reference)
        for name, vals in rows.items():
            ratio = best = per_round = "n/a"
            if ref:
                ratio = f"{statistics.median(vals) / statistics.median(ref):.2f}x"
                best = f"{max(vals) / max(ref):.2f}x"
                r = [v / c for v, c in zip(vals, ref)]
                per_round = f"{min(r):.2f} / {statistics.median(r):.2f} / {max(r):.2f}"
            lines.append(f"{batch:>{k}}  {name:<{w}} {_m(min(vals))} "
                         f"{_m(statistics.median(vals))} {_m(max(vals))}  {ratio:>{v}}  "
                         f"{best:>9}  {per_round:>24}")
        for name, why in missing.items():
            lines.append(f"{batch:>{k}}  {name:<{w}} {why}")
    return "\n".join(lines)


def resident_fraction(path):
    """The share of the file's pages in the page cache (mincore(2)), 0.0 to 1.0."""
    import ctypes
    import mmap
    size = os.path.getsize(path)
    if size == 0:
        return 1.0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = ctypes.create_string_buffer(pages)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            if libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec.raw) / pages


def warm(path, chunk=8 << 20):
    """Read the whole file so it is in the page cache; returns the resident share
    measured right after (the VM here reclaims pages untouched for about a minute)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.read(fd, chunk):
            pass
    finally:
        os.close(fd)
    return resident_fraction(path)


def _m(ops_per_s):
    return f"{ops_per_s / 1e6:7.2f} M" if ops_per_s >= 1e6 else f"{ops_per_s / 1e3:7.1f} k"
