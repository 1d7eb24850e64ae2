"""The fsspec rows of `vyre-uring bench`: vyre_uring.fsspec.VyreFileSystem against
fsspec's own LocalFileSystem (the reference), on the run's data: cat of the small
files, cat_ranges of random 4 KiB ranges of the large file (warm, and cold beside the
C program's reads of the same file: what the disk gives) and of 100 files of 1 MiB
(10,000 ranges, warm), and
fsspec.parquet.open_parquet_file of a parquet file with several row groups and a
column subset. Rows whose libraries are not installed say so."""
import os
import random
import time

from . import cache, native
from .harness import Contender, Workload, missing

LOCAL = "fsspec LocalFileSystem"
OURS = "vyre VyreFileSystem"
RANGES = 2_000                     # 4 KiB ranges per cat_ranges call
RANGE_FILES = 100                  # ...and over many files: MANY_RANGES over these
MANY_RANGES = 10_000
DASK_FILES = 1_000                 # a task each: the scheduler needs ~3 ms per task
DISK_QD = 256                      # the C program's reads in flight in the cold row


def fsspec_workloads(ctx):
    why = missing("fsspec", "fsspec")
    if why:
        return [Workload("fsspec cat files warm", "files/s",
                         [Contender(LOCAL, why=why), Contender(OURS, why=why)],
                         reference=LOCAL)]
    import fsspec
    from vyre_uring.fsspec import VyreFileSystem
    local, ours = fsspec.filesystem("file"), VyreFileSystem()
    return [_cat_files(ctx, local, ours), *_cat_ranges(ctx, local, ours),
            _cat_ranges_many_files(ctx, local, ours), *_parquet(ctx, local, ours),
            _dask_read_bytes(ctx)]


def _rate(count, fn, check):
    start = time.perf_counter()
    out = fn()
    rate = count / (time.perf_counter() - start)
    check(out)
    return rate


def _pair(local, ours, count, call, check):
    return [Contender(LOCAL, lambda: _rate(count, lambda: call(local), check)),
            Contender(OURS, lambda: _rate(count, lambda: call(ours), check))]


def _cat_files(ctx, local, ours):
    paths, size = ctx.data.small, ctx.sizes.file_size

    def check(out):
        if len(out) != len(paths) or any(len(d) != size for d in out.values()):
            raise AssertionError("cat: wrong results")
    return Workload("fsspec cat files warm", "files/s",
                    _pair(local, ours, len(paths), lambda fs: fs.cat(paths), check),
                    lambda: cache.warm(paths, 200), reference=LOCAL)


def _cat_ranges(ctx, local, ours):
    big, bs = ctx.data.big, 4096
    rnd = random.Random(5)
    starts = [rnd.randrange((ctx.sizes.file_mib << 20) // bs) * bs for _ in range(RANGES)]
    ends = [s + bs for s in starts]
    paths = [big] * RANGES

    def check(out):
        if len(out) != RANGES or any(len(d) != bs for d in out):
            raise AssertionError("cat_ranges: wrong results")

    def rows():
        return _pair(local, ours, RANGES, lambda fs: fs.cat_ranges(paths, starts, ends),
                     check)
    warm = Workload("fsspec cat_ranges 4k warm", "ranges/s", rows(),
                    lambda: cache.warm([big]), reference=LOCAL)
    # Cold, what the disk gives: the C program's random 4 KiB reads of the same file,
    # as many, DISK_QD in flight from one thread.
    disk = ctx.c("ranges_liburing", f"C liburing qd{DISK_QD} (the disk)",
                 lambda b: native.run_c(b, big, bs, DISK_QD, RANGES, "rand"))
    why = cache.can_drop()
    if why:
        cold = Workload("fsspec cat_ranges 4k cold", "ranges/s",
                        [Contender(c.name, why=why) for c in rows() + [disk]],
                        reference=LOCAL)
    else:
        cold = Workload("fsspec cat_ranges 4k cold", "ranges/s", rows() + [disk],
                        lambda: cache.drop([big]), reference=LOCAL)
    return [warm, cold]


def _cat_ranges_many_files(ctx, local, ours):
    bs, size = 4096, 1 << 20
    names = [os.path.join(ctx.data.root, f"ranges{k}.bin") for k in range(RANGE_FILES)]
    rnd = random.Random(6)
    picks = [(names[rnd.randrange(RANGE_FILES)], rnd.randrange(size // bs) * bs)
             for _ in range(MANY_RANGES)]
    paths = [name for name, _ in picks]
    starts = [offset for _, offset in picks]
    ends = [offset + bs for offset in starts]

    def make():
        """Made on first use, so that runs without this workload skip it."""
        for name in names:
            if not os.path.exists(name):
                with open(name, "wb") as f:
                    f.write(os.urandom(size))
        return cache.warm(names)

    def check(out):
        if len(out) != MANY_RANGES or any(len(d) != bs for d in out):
            raise AssertionError("cat_ranges: wrong results")
    return Workload(f"fsspec cat_ranges {RANGE_FILES} files warm", "ranges/s",
                    _pair(local, ours, MANY_RANGES,
                          lambda fs: fs.cat_ranges(paths, starts, ends), check),
                    make, reference=LOCAL)


def _parquet(ctx, local, ours):
    """open_parquet_file then read_table (what pandas does), and the open alone."""
    name = "fsspec open_parquet_file"
    why = missing("pandas", "test") or missing("pyarrow", "test")
    if why:
        return [Workload(n, "files/s", [Contender(LOCAL, why=why), Contender(OURS, why=why)],
                         reference=LOCAL) for n in (name, f"{name} fetch")]
    from fsspec.parquet import open_parquet_file
    path = os.path.join(ctx.data.root, "table.parquet")
    made = []                          # the file and its expected size, once

    def make():
        """Made on first use, so that runs without this workload skip it."""
        if not made:
            import pandas as pd
            rows = 2_000_000
            pd.DataFrame({f"c{k}": range(k, rows + k) for k in range(8)}).to_parquet(
                path, row_group_size=100_000)
            made.append(rows)
        return cache.warm([path])

    def read(fs):
        # What pandas and pyarrow do with it: open (the footer, then the chosen
        # columns' chunks fetched by cat_ranges), then read those columns. (Reading
        # the whole file back through fsspec's parts cache would time that cache.)
        import pyarrow.parquet as pq
        with open_parquet_file(path, fs=fs, columns=["c1", "c5"], engine="pyarrow") as f:
            return pq.read_table(f, columns=["c1", "c5"])

    def check(out):
        import pyarrow.compute as pc
        rows = made[0]
        if out.column_names != ["c1", "c5"] or out.num_rows != rows or \
                pc.sum(out["c1"]).as_py() != rows * (rows + 1) // 2:
            raise AssertionError("open_parquet_file: wrong table")
    def fetch(fs):
        # The fsspec part alone: the footer, then the chosen columns' chunks by
        # cat_ranges, held in memory by the file object it returns; the end of the
        # file, as the footer holds it, comes back from there.
        with open_parquet_file(path, fs=fs, columns=["c1", "c5"], engine="pyarrow") as f:
            f.seek(-8, os.SEEK_END)
            return f.read(8)

    def check_fetched(out):
        with open(path, "rb") as f:
            f.seek(-8, os.SEEK_END)
            if out != f.read(8):
                raise AssertionError("open_parquet_file: wrong footer")
    return [Workload(name, "files/s", _pair(local, ours, 1, read, check), make,
                     reference=LOCAL),
            Workload(f"{name} fetch", "files/s", _pair(local, ours, 1, fetch, check_fetched),
                     make, reference=LOCAL)]


def _dask_read_bytes(ctx):
    """dask.bytes.read_bytes of DASK_FILES small files (one block each) on a 2-worker
    distributed.LocalCluster, file:// against vyre://: the scheduler's own work is
    in both. The cluster starts on first use and stops with the run."""
    name = "fsspec dask read_bytes"
    rows = ["dask read_bytes file://", "dask read_bytes vyre://"]
    why = missing("distributed", "test")
    if why:
        return Workload(name, "files/s", [Contender(r, why=why) for r in rows],
                        reference=rows[0])
    paths = ctx.data.small[:DASK_FILES]
    cluster = _Cluster()
    ctx.owned.append(cluster)

    def read(protocol):
        import dask
        from dask.bytes import read_bytes
        _, blocks = read_bytes([protocol + p for p in paths], blocksize=None)
        out = dask.compute(*blocks)
        return sum(len(b) for part in out for b in part)

    def row(protocol):
        def run():
            start = time.perf_counter()
            got = read(protocol)
            rate = len(paths) / (time.perf_counter() - start)
            if got != len(paths) * ctx.sizes.file_size:
                raise AssertionError("dask read_bytes: wrong total")
            return rate
        return run
    return Workload(name, "files/s", [Contender(rows[0], row("file://")),
                                      Contender(rows[1], row("vyre://"))],
                    lambda: cluster.start() or cache.warm(paths, 200), reference=rows[0])


class _Cluster:
    """A distributed.LocalCluster of 2 worker processes and its client, the default
    scheduler while it lives."""

    def __init__(self):
        self.client = self.cluster = None

    def start(self):
        if self.client is None:
            from distributed import Client, LocalCluster
            self.cluster = LocalCluster(n_workers=2, threads_per_worker=1,
                                        processes=True, dashboard_address=None)
            self.client = Client(self.cluster)

    def close(self):
        if self.client is not None:
            self.client.close()
            self.cluster.close()
