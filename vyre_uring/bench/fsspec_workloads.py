"""The fsspec rows of `vyre-uring bench`: vyre_uring.fsspec.VyreFileSystem against
fsspec's own LocalFileSystem (the reference), on the run's data: cat of the small
files, cat_ranges of random 4 KiB ranges of the large file (warm and cold), and
fsspec.parquet.open_parquet_file of a parquet file with several row groups and a
column subset. Rows whose libraries are not installed say so."""
import os
import random
import time

from . import cache
from .harness import Contender, Workload, missing

LOCAL = "fsspec LocalFileSystem"
OURS = "vyre VyreFileSystem"
RANGES = 2_000                     # 4 KiB ranges per cat_ranges call


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
            _parquet(ctx, local, ours)]


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
    why = cache.can_drop()
    if why:
        cold = Workload("fsspec cat_ranges 4k cold", "ranges/s",
                        [Contender(c.name, why=why) for c in rows()], reference=LOCAL)
    else:
        cold = Workload("fsspec cat_ranges 4k cold", "ranges/s", rows(),
                        lambda: cache.drop([big]), reference=LOCAL)
    return [warm, cold]


def _parquet(ctx, local, ours):
    name = "fsspec open_parquet_file"
    why = missing("pandas", "test") or missing("pyarrow", "test")
    if why:
        return Workload(name, "files/s", [Contender(LOCAL, why=why), Contender(OURS, why=why)],
                        reference=LOCAL)
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
            made.append(len(read(local)))
        return cache.warm([path])

    def read(fs):
        with open_parquet_file(path, fs=fs, columns=["c1", "c5"], engine="pyarrow") as f:
            return f.read()

    def check(out):
        if len(out) != made[0]:
            raise AssertionError("open_parquet_file: wrong size")
    return Workload(name, "files/s", _pair(local, ours, 1, read, check), make,
                    reference=LOCAL)
