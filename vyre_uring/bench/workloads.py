"""The workloads of `vyre-uring bench` and their contenders, over data made for the
run in a temporary directory (removed afterwards, also on Ctrl-C or SIGTERM).

Every Python contender times only its own loop and checks what it read; the native
ones (C, fio) report their own rates. Rows that cannot run here say why."""
import array
import os
import random
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import vyre_uring
from vyre_uring.buffers import alloc_buffer
from vyre_uring.reader import default_workers

from . import cache, native
from .async_workloads import async_workloads
from .fsspec_workloads import fsspec_workloads
from .gpu_workloads import gpu_workloads
from .harness import REFERENCE, Contender, Workload

# The most the C small-file program reads of one file (its SLOT).
C_SMALL_SLOT = 64 << 10


@dataclass
class Sizes:
    """How much data and work: the defaults, or --quick's (about a minute here)."""
    file_mib: int = 1024
    files: int = 10_000
    file_size: int = 4096
    nops: tuple = (300_000, 1_500_000, 2_500_000)   # per run, at batch 1, 16, 256
    random_reads: int = 200_000                     # 4 KiB reads per run at QD 32/128
    qd1_reads: int = 100_000
    direct_reads: int = 20_000
    seq_passes: int = 2                             # 128 KiB reads: passes over the file
    tree_files: int = 50_000                        # of a real tree, for the checksums
    gpu_gib: int = 16                               # the GPU rows' checkpoint

    @classmethod
    def quick(cls):
        return cls(file_mib=256, files=2_000, nops=(60_000, 300_000, 500_000),
                   random_reads=40_000, qd1_reads=20_000, direct_reads=4_000,
                   tree_files=5_000, gpu_gib=2)


class DataSet:
    """The benchmark's files in a fresh temporary directory: one large file and
    many small ones. Removed on exit, including on Ctrl-C and SIGTERM."""

    def __init__(self, sizes, parent=None):
        self.sizes = sizes
        self.parent = parent
        self.root = None

    def __enter__(self):
        self._old_term = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        self.root = tempfile.mkdtemp(prefix="vyre-bench-", dir=self.parent)
        try:
            self.big = os.path.join(self.root, "large.bin")
            _write_random(self.big, self.sizes.file_mib << 20)
            self.small = _write_small_files(os.path.join(self.root, "small"),
                                            self.sizes.files, self.sizes.file_size)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.root, ignore_errors=True)
        signal.signal(signal.SIGTERM, self._old_term)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)          # unwinds through DataSet.__exit__


def _write_random(path, size):
    block = random.Random(11).randbytes(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size >> 20):
            f.write(block)


def _write_small_files(directory, count, size):
    os.mkdir(directory)
    data = random.Random(12).randbytes(size)
    paths = [os.path.join(directory, f"f{i:06d}") for i in range(count)]
    for p in paths:
        with open(p, "wb") as f:
            f.write(data)
    return paths


def worker_counts(spec=None, cores=None):
    """The worker counts (rings) of the `vyre io_uring wN` rows, ascending: by
    default 1 and the core count; "sweep" is 1, 2, 4, ... below the core count and
    the core count itself; else a comma list such as "1,2,4,8,16"."""
    cores = min(256, cores or os.cpu_count() or 1)     # BatchReader's limit
    if spec is None:
        return sorted({1, cores})
    if spec == "sweep":
        return [1 << k for k in range(cores.bit_length()) if 1 << k < cores] + [cores]
    try:
        counts = {int(part) for part in spec.split(",")}
    except ValueError:
        raise ValueError(f"--workers takes a comma list of counts (1,2,4) or 'sweep', "
                         f"not {spec!r}") from None
    bad = [n for n in counts if not 1 <= n <= 256]
    if bad:
        raise ValueError(f"--workers counts must be between 1 and 256, not {min(bad)}")
    return sorted(counts)


def build(data, sizes, workdir, only=None, workers=None):
    """Every workload, with its contenders found or explained; `workers` as
    worker_counts() returns it (None: its default)."""
    binaries = {name: native.build_c(name, workdir)
                for name in ("nop_liburing", "ranges_liburing", "small_files_liburing")}
    fio, fio_why = native.find_fio()
    pypi, pypi_why = _probe_pypi_liburing()
    ctx = _Context(data, sizes, binaries, fio, fio_why, pypi, pypi_why,
                   workers or worker_counts(), [], {})
    workloads = (_nop_workloads(ctx) + _random_workloads(ctx) + _sequential_workloads(ctx)
                 + _per_call_workloads(ctx)
                 + _small_file_workloads(ctx) + _direct_workloads(ctx)
                 + _checksum_workloads(ctx) + async_workloads(ctx) + fsspec_workloads(ctx)
                 + gpu_workloads(ctx))
    if only:
        workloads = [w for w in workloads if any(o in w.name for o in only)]
    return workloads, ctx


@dataclass
class _Context:
    data: DataSet
    sizes: Sizes
    binaries: dict
    fio: str
    fio_why: str
    pypi: bool
    pypi_why: str
    workers: list               # of the `vyre io_uring wN` rows
    owned: list                 # readers and rings to close at the end
    readers: dict               # (settings) -> (reader, why): one per settings

    def close(self):
        for thing in self.owned:
            thing.close()

    def c(self, name, label, fn):
        """The C contender: fn(binary) -> rate, or why there is none."""
        binary, why = self.binaries[name]
        if binary is None:
            return Contender(label, why=why)
        return Contender(label, lambda: fn(binary))

    def reader(self, **kwargs):
        """A BatchReader, or the error that says why it cannot exist here. Workloads
        run one after another, so rows with the same settings share one (a sweep
        would otherwise hold hundreds of rings)."""
        key = tuple(sorted(kwargs.items()))
        if key not in self.readers:
            try:
                reader = vyre_uring.BatchReader(**kwargs)
            except OSError as exc:
                self.readers[key] = None, str(exc)
            else:
                self.owned.append(reader)
                self.readers[key] = reader, None
        return self.readers[key]


# ---- ring overhead -------------------------------------------------------------------

def _nop_workloads(ctx):
    try:
        ring = vyre_uring.Ring(256)
    except OSError as exc:
        ring, why = None, str(exc)
    else:
        ctx.owned.append(ring)
    out = []
    for batch, ops in zip((1, 16, 256), ctx.sizes.nops):
        out.append(Workload(f"nop batch {batch}", "ops/s", [
            ctx.c("nop_liburing", REFERENCE,
                  lambda b, batch=batch, ops=ops: native.run_c(b, batch, ops)),
            Contender("vyre Ring", lambda batch=batch, ops=ops: vyre_nops(ring, batch, ops))
            if ring else Contender("vyre Ring", why=why),
        ]))
    return out


def vyre_nops(ring, batch, ops):
    """NOPs through prep_nops + submit_and_reap, `batch` per round trip."""
    user_data = array.array("Q", range(batch))
    ud_out = array.array("Q", bytes(8 * batch))
    res_out = array.array("i", bytes(4 * batch))
    prep, round_trip = ring.prep_nops, ring.submit_and_reap
    done = 0
    start = time.perf_counter()
    while done < ops:
        prep(user_data)
        done += round_trip(ud_out, res_out, batch)
    elapsed = time.perf_counter() - start
    if sorted(ud_out[:batch]) != list(range(batch)) or any(res_out[:batch]):
        raise AssertionError("NOP completions came back wrong")
    return done / elapsed


# ---- ranges of the large file ----------------------------------------------------------

def _warm_big(ctx):
    return lambda: cache.warm([ctx.data.big])


def _offsets(size, bs, count, sequential=False, seed=1):
    blocks = size // bs
    if sequential:
        return array.array("q", [(i % blocks) * bs for i in range(count)])
    rnd = random.Random(seed)
    return array.array("q", [rnd.randrange(blocks) * bs for _ in range(count)])


def _random_workloads(ctx):
    size = ctx.sizes.file_mib << 20
    out = []
    for qd, count in ((1, ctx.sizes.qd1_reads), (32, ctx.sizes.random_reads),
                      (128, ctx.sizes.random_reads)):
        offsets = _offsets(size, 4096, count)
        # At qd1 the row is about latency: one ring, no sweep.
        contenders = _range_contenders(ctx, "rand", 4096, qd, offsets, python=qd == 32,
                                       sweep=qd > 1)
        out.append(Workload(f"4k random qd{qd}", "reads/s", contenders, _warm_big(ctx)))
    return out


def _sequential_workloads(ctx):
    size = ctx.sizes.file_mib << 20
    bs = 128 << 10
    count = ctx.sizes.seq_passes * (size // bs)
    offsets = _offsets(size, bs, count, sequential=True)
    contenders = _range_contenders(ctx, "seq", bs, 32, offsets, python=True, sweep=True)
    return [Workload("128k sequential", "reads/s", contenders, _warm_big(ctx))]


# Many small calls: what the module-level functions pay per call for their shared
# reader, against a reader the caller keeps.
PER_CALL_RANGES = 512
PER_CALL_REFERENCE = "vyre BatchReader, kept"


def _per_call_workloads(ctx):
    size = ctx.sizes.file_mib << 20
    calls = max(1, ctx.sizes.random_reads // (4 * PER_CALL_RANGES))
    offsets = _offsets(size, 4096, calls * PER_CALL_RANGES, seed=7)
    reader, why = ctx.reader()
    kept = (Contender(PER_CALL_REFERENCE, lambda: _per_call(reader.read_ranges_into, ctx,
                                                             offsets))
            if reader else Contender(PER_CALL_REFERENCE, why=why))
    return [Workload(f"4k random, {PER_CALL_RANGES} per call", "reads/s", [
        kept,
        Contender("vyre read_ranges_into()",
                  lambda: _per_call(vyre_uring.read_ranges_into, ctx, offsets)),
    ], _warm_big(ctx), reference=PER_CALL_REFERENCE)]


def _per_call(read, ctx, offsets):
    """read(path, buffer, offsets, lengths, buffer_offsets) once per 512 ranges, each
    call into the same 2 MiB buffer; reads per second, the counts checked."""
    k = PER_CALL_RANGES
    buf = alloc_buffer(k * 4096)
    lengths = array.array("q", [4096]) * k
    boffs = array.array("q", range(0, k * 4096, 4096))
    chunks = [offsets[i:i + k] for i in range(0, len(offsets), k)]
    start = time.perf_counter()
    for chunk in chunks:
        if sum(read(ctx.data.big, buf, chunk, lengths, boffs)) != k * 4096:
            raise AssertionError("short reads")
    return len(offsets) / (time.perf_counter() - start)


def _range_contenders(ctx, mode, bs, qd, offsets, python, direct=False, sweep=False):
    """C, fio, the PyPI binding and vyre at queue depth `qd`; with `sweep`, vyre
    once per worker count and through the module-level call with its defaults;
    with `python`, the plain-Python loops too (they have no queue depth: one row is
    enough)."""
    path, count = ctx.data.big, len(offsets)
    tail = ("direct",) if direct else ()
    rw = "randread" if mode == "rand" else "read"
    out = [
        ctx.c("ranges_liburing", REFERENCE,
              lambda b: native.run_c(b, path, bs, qd, count, mode, *tail)),
        Contender("fio io_uring", lambda: native.run_fio(ctx.fio, path, rw, bs, qd, count,
                                                         direct))
        if ctx.fio else Contender("fio io_uring", why=ctx.fio_why),
        _pypi_contender(ctx, path, bs, qd, offsets, direct),
    ]
    if sweep:
        out += [_vyre_ranges(ctx, f"vyre io_uring w{w}", bs, qd, offsets, workers=w,
                             direct=direct) for w in ctx.workers]
        out.append(_default_ranges(ctx, bs, qd, offsets, direct))
    else:
        out.append(_vyre_ranges(ctx, "vyre io_uring", bs, qd, offsets, direct=direct))
    if python:
        out += [
            _vyre_ranges(ctx, "vyre threads", bs, qd, offsets, backend="threads",
                         direct=direct),
            Contender("os.preadv loop", lambda: preadv_loop(path, bs, offsets, direct)),
            Contender("ThreadPoolExecutor", lambda: preadv_pool(path, bs, offsets, direct)),
        ]
    return out


def _vyre_ranges(ctx, label, bs, qd, offsets, workers=1, backend="io_uring", direct=False):
    reader, why = ctx.reader(backend=backend, queue_depth=qd, workers=workers,
                             direct=direct)
    if reader is None:
        return Contender(label, why=why)
    n = len(offsets)
    share = -(-n // workers)
    # Destinations cycle through qd page-aligned slots per ring, as C's do.
    boffs = array.array("q", [((i % qd) + (i // share) * qd) * bs for i in range(n)])
    buf = alloc_buffer(workers * qd * bs)
    return _ranges_contender(label, reader.read_ranges_into, ctx.data.big, buf, offsets,
                             bs, boffs)


def _default_ranges(ctx, bs, qd, offsets, direct):
    """vyre_uring.read_ranges_into() with its own defaults (depth, rings, backend).
    Destinations are laid out as the sweep rows' are, for as many rings as the
    default takes (one per core): each ring's contiguous share of the ranges cycles
    through qd slots of its own. (Cycling all ranges through one pool of slots had
    rings on different cores writing into the same pages at once.)"""
    label = "vyre read_ranges_into()"
    rings = default_workers()
    n = len(offsets)
    share = -(-n // rings)
    boffs = array.array("q", [((i % qd) + (i // share) * qd) * bs for i in range(n)])
    buf = alloc_buffer(rings * qd * bs)

    def read(path, buffer, offsets, lengths, buffer_offsets):
        return vyre_uring.read_ranges_into(path, buffer, offsets, lengths, buffer_offsets,
                                           direct=direct)
    try:
        # Makes the process's shared reader now, not in the first timed run.
        read(ctx.data.big, buf, offsets[:1], [bs], boffs[:1])
    except OSError as exc:
        return Contender(label, why=str(exc))
    return _ranges_contender(label, read, ctx.data.big, buf, offsets, bs, boffs)


def _ranges_contender(label, read, path, buf, offsets, bs, boffs):
    """read(path, buf, offsets, lengths, boffs) timed, its byte counts checked."""
    n = len(offsets)
    lengths = array.array("q", [bs]) * n

    def run():
        start = time.perf_counter()
        got = read(path, buf, offsets, lengths, boffs)
        rate = n / (time.perf_counter() - start)
        if sum(got) != n * bs:
            raise AssertionError(f"{label}: short reads")
        return rate
    return Contender(label, run)


def preadv_loop(path, bs, offsets, direct=False):
    """One os.preadv after another into one page-aligned buffer."""
    buf = alloc_buffer(bs)
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    try:
        start = time.perf_counter()
        for off in offsets:
            if os.preadv(fd, [buf], off) != bs:
                raise AssertionError("os.preadv: short read")
        return len(offsets) / (time.perf_counter() - start)
    finally:
        os.close(fd)
        buf.close()


def preadv_pool(path, bs, offsets, direct=False):
    """A ThreadPoolExecutor of os.preadv, 2 threads per core, each task a run of
    256 reads into its own buffer (a task per read costs more than the read)."""
    workers = 2 * (os.cpu_count() or 1)
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    runs = [offsets[i:i + 256] for i in range(0, len(offsets), 256)]

    def task(run):
        buf = alloc_buffer(bs)
        try:
            for off in run:
                if os.preadv(fd, [buf], off) != bs:
                    raise AssertionError("os.preadv: short read")
        finally:
            buf.close()
    try:
        with ThreadPoolExecutor(workers) as pool:
            start = time.perf_counter()
            list(pool.map(task, runs))
            return len(offsets) / (time.perf_counter() - start)
    finally:
        os.close(fd)


# ---- the PyPI `liburing` binding ---------------------------------------------------------

_PYPI_PROBE = ("import liburing as L; r = L.Ring(); L.io_uring_queue_init(8, r); "
               "L.io_uring_queue_exit(r)")


def _probe_pypi_liburing():
    """(True, None) when the PyPI binding is installed and works here. Probed in a
    child process: a build for another CPU dies of SIGILL."""
    import importlib.util
    if importlib.util.find_spec("liburing") is None:
        return False, "the PyPI liburing binding is not installed (pip install liburing)"
    proc = subprocess.run([sys.executable, "-c", _PYPI_PROBE], capture_output=True,
                          text=True)
    if proc.returncode < 0:
        return False, (f"the PyPI liburing binding crashed here with "
                       f"{signal.Signals(-proc.returncode).name}")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return False, f"the PyPI liburing binding failed here: {last}"
    return True, None


def _pypi_contender(ctx, path, bs, qd, offsets, direct):
    if not ctx.pypi:
        return Contender("PyPI liburing", why=ctx.pypi_why)

    def run():
        listing = os.path.join(ctx.data.root, "offsets.bin")
        with open(listing, "wb") as f:
            offsets.tofile(f)
        proc = subprocess.run(
            [sys.executable, "-m", "vyre_uring.bench.pypi_liburing", path, str(bs),
             str(qd), listing, "direct" if direct else "buffered"],
            capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"PyPI liburing run failed: {proc.stderr.strip()}")
        return float(proc.stdout)
    return Contender("PyPI liburing", run)


# ---- many small files ----------------------------------------------------------------------

def _small_file_workloads(ctx):
    paths = ctx.data.small
    n = len(paths)
    listing = "\n".join(paths) + "\n"

    most = max(ctx.workers)
    # The C side keeps every file's bytes too: file i lands in slot i of an arena
    # (as read_files_into's buffer holds them all), pre-faulted as that reused buffer is.
    slot = min(-(-ctx.sizes.file_size // 4096) * 4096, C_SMALL_SLOT)

    def contenders():
        out = [ctx.c("small_files_liburing", REFERENCE,
                     lambda b: _c_small_files(b, listing, arena_slot=slot)),
               ctx.c("small_files_liburing", "C liburing, one reused buffer",
                     lambda b: _c_small_files(b, listing)),
               ctx.c("small_files_liburing", "C liburing, fstat each",
                     lambda b: _c_small_files(b, listing, mode="sized", arena_slot=slot))]
        if most > 1:            # the C ceiling on as many threads, plain fds and direct
            out += [ctx.c("small_files_liburing", f"C liburing w{most}{mode}",
                          lambda b, mode=mode: _c_small_files(b, listing, most, mode,
                                                              slot))
                    for mode in ("", " direct")]
        out += [_vyre_files(ctx, f"vyre io_uring w{w}", paths, workers=w)
                for w in ctx.workers]
        out += [_default_files(ctx, paths),
                _files_into(ctx, "vyre read_files_into() w1", paths, workers=1),
                _files_into(ctx, "vyre read_files_into()", paths),
                _vyre_files(ctx, "vyre threads", paths, backend="threads"),
                Contender("os loop", lambda: _timed_files(os_loop, paths)),
                Contender("open().read()", lambda: _timed_files(open_read, paths))]
        return out
    sample = min(n, 200)
    warm = Workload("small files warm", "files/s", contenders(),
                    lambda: cache.warm(paths, sample))
    why = cache.can_drop()
    if why:
        cold = Workload("small files cold", "files/s",
                        [Contender(c.name, why=why) for c in contenders()])
    else:
        cold = Workload("small files cold", "files/s", contenders(),
                        lambda: cache.drop(paths, sample))
    return [warm, cold]


def _c_small_files(binary, listing, threads=1, mode="", arena_slot=0):
    proc = subprocess.run([binary, "64", str(threads), mode.strip() or "plain",
                           str(arena_slot)], input=listing, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"small_files_liburing failed: {proc.stderr.strip()}")
    return float(proc.stdout)


def _vyre_files(ctx, label, paths, workers=None, backend="io_uring"):
    reader, why = ctx.reader(backend=backend, workers=workers, queue_depth=256)
    if reader is None:
        return Contender(label, why=why)
    return _files_contender(label, reader.read_files, paths, ctx.sizes.file_size)


def _default_files(ctx, paths):
    """vyre_uring.read_files(paths): whatever its defaults are."""
    label = "vyre read_files()"
    try:
        vyre_uring.read_files(paths[:1])    # makes the shared reader, untimed
    except OSError as exc:
        return Contender(label, why=str(exc))
    return _files_contender(label, vyre_uring.read_files, paths, ctx.sizes.file_size)


def _files_into(ctx, label, paths, workers=None):
    """read_files_into(paths, buffer) with one buffer reused round after round, as
    the C program's arena is; None workers: the module-level call's defaults."""
    read = vyre_uring.read_files_into
    if workers is not None:
        reader, why = ctx.reader(workers=workers, queue_depth=256)
        if reader is None:
            return Contender(label, why=why)
        read = reader.read_files_into
    size = ctx.sizes.file_size
    buf = bytearray(len(paths) * size)

    def run():
        start = time.perf_counter()
        files = read(paths, buf)
        rate = len(paths) / (time.perf_counter() - start)
        if any(n != size for n in files.lengths):
            raise AssertionError(f"{label}: wrong sizes")
        return rate
    return Contender(label, run)


def _files_contender(label, read, paths, size):
    """read(paths) timed, the sizes of what it returns checked."""
    def run():
        start = time.perf_counter()
        out = read(paths)
        rate = len(paths) / (time.perf_counter() - start)
        if any(len(d) != size for d in out):
            raise AssertionError(f"{label}: wrong sizes")
        return rate
    return Contender(label, run)


def _timed_files(fn, paths):
    start = time.perf_counter()
    fn(paths)
    return len(paths) / (time.perf_counter() - start)


def os_loop(paths):
    out = []
    for p in paths:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        out.append(os.read(fd, os.fstat(fd).st_size))
        os.close(fd)
    return out


def open_read(paths):
    out = []
    for p in paths:
        with open(p, "rb") as f:
            out.append(f.read())
    return out


# ---- O_DIRECT --------------------------------------------------------------------------------

def _direct_workloads(ctx):
    name = "4k random direct qd32"
    try:
        os.close(os.open(ctx.data.big, os.O_RDONLY | os.O_DIRECT))
    except OSError as exc:
        why = f"the filesystem refuses O_DIRECT: {exc.strerror}"
        return [Workload(name, "reads/s", [Contender(REFERENCE, why=why)])]
    offsets = _offsets(ctx.sizes.file_mib << 20, 4096, ctx.sizes.direct_reads, seed=2)
    return [Workload(name, "reads/s",
                     _range_contenders(ctx, "rand", 4096, 32, offsets, python=True,
                                       direct=True))]


# ---- checksums of a real tree ----------------------------------------------------------------

# Where real trees are: the Python standard library and /usr/share, then (where those
# hold fewer files than asked for) headers and libraries.
TREES = (sysconfig.get_paths()["stdlib"], "/usr/share", "/usr/include", "/usr/lib")
SHA256_LINES = "xargs -P{n} sha256sum"


def real_tree(count, roots=TREES):
    """Up to `count` regular files (not links) under `roots`, readable by us."""
    out = []
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in sorted(names):
                path = os.path.join(dirpath, name)
                if os.path.isfile(path) and not os.path.islink(path) and \
                        os.access(path, os.R_OK):
                    out.append(path)
                    if len(out) == count:
                        return out
    return out


def _checksum_workloads(ctx):
    """`vyre-uring read --checksum sha256` against coreutils' sha256sum run on every
    core by xargs, over the same list of real files (both get it NUL-separated). The
    tree is listed on first use, so that runs without this workload skip it."""
    n = len(os.sched_getaffinity(0))
    reference = SHA256_LINES.format(n=n)
    listing = os.path.join(ctx.data.root, "tree.list")
    paths = []

    def before():
        if not paths:
            paths.extend(real_tree(ctx.sizes.tree_files))
            with open(listing, "wb") as f:
                f.write(b"".join(os.fsencode(p) + b"\0" for p in paths))
        return cache.warm(paths, 200)
    missing = [tool for tool in ("xargs", "sha256sum") if shutil.which(tool) is None]
    if missing:
        ref = Contender(reference, why=f"{' and '.join(missing)} not found")
    else:
        ref = Contender(reference, lambda: _timed_command(
            ["xargs", "-0", f"-P{n}", "sha256sum"], listing, len(paths)))
    ours = Contender("vyre-uring read --checksum", lambda: _timed_command(
        [sys.executable, "-m", "vyre_uring", "read", "--files-from", "-", "-0",
         "--checksum", "sha256", "-q"], listing, len(paths)))
    name = f"sha256 of {ctx.sizes.tree_files:,} real files (at most)"
    return [Workload(name, "files/s", [ref, ours], before, reference=reference)]


def _timed_command(argv, stdin_path, count):
    """`count` / the wall time of argv run with stdin_path as its input (output
    discarded); a failed run raises."""
    with open(stdin_path, "rb") as stdin:
        start = time.perf_counter()
        proc = subprocess.run(argv, stdin=stdin, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, cwd="/")
        elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {proc.stderr.decode()[-500:]}")
    return count / elapsed
