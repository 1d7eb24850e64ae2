"""VyreFileSystem against fsspec's LocalFileSystem, interleaved round by round in
one process: cat of many small cached files, cat_ranges of 4 KiB ranges over 100
cached files, and open_parquet_file with a column subset. Prints each workload's
rate ratio per round (min / median / max).

    python bench/fsspec_ratios.py [rounds]
"""
import os
import random
import statistics
import sys
import tempfile
import time

import fsspec
from fsspec.parquet import open_parquet_file

from vyre_uring.bench.harness import environment
from vyre_uring.fsspec import VyreFileSystem


def timed(fn):
    t = time.perf_counter()
    fn()
    return 1.0 / (time.perf_counter() - t)


def workloads(root):
    files = []
    for i in range(10_000):
        p = os.path.join(root, f"f{i}")
        with open(p, "wb") as f:
            f.write(os.urandom(4096))
        files.append(p)
    rnd = random.Random(1)
    big = files[:100]
    for p in big:
        with open(p, "ab") as f:
            f.write(os.urandom(1 << 20))
    paths = [rnd.choice(big) for _ in range(10_000)]
    starts = [rnd.randrange(0, (1 << 20) // 4096) * 4096 for _ in paths]
    ends = [s + 4096 for s in starts]
    out = {"cat 10,000 files of 4 KiB": lambda fs: fs.cat(files[100:]),
           "cat_ranges 10,000 x 4 KiB, 100 files": lambda fs: fs.cat_ranges(paths, starts,
                                                                            ends)}
    try:
        import pandas as pd
    except ImportError as exc:
        print(f"open_parquet_file: not available: {exc}")
        return out
    table = os.path.join(root, "t.parquet")
    n = 2_000_000
    pd.DataFrame({f"c{k}": range(k, n + k) for k in range(8)}).to_parquet(
        table, row_group_size=100_000)

    def parquet(fs):
        with open_parquet_file(table, fs=fs, columns=["c1", "c5"], engine="pyarrow") as f:
            f.read()
    out["open_parquet_file 20 row groups, 2 of 8 columns"] = parquet
    return out


def main(rounds=7):
    print(environment())
    ours, theirs = VyreFileSystem(), fsspec.filesystem("file")
    with tempfile.TemporaryDirectory() as root:
        for name, fn in workloads(root).items():
            assert fn(ours) == fn(theirs)           # same results, and caches warm
            ratios = [timed(lambda: fn(ours)) / timed(lambda: fn(theirs))
                      for _ in range(rounds)]
            print(f"{name:<50} vyre / local  min {min(ratios):.2f}x  median "
                  f"{statistics.median(ratios):.2f}x  max {max(ratios):.2f}x")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
