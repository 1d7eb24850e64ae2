"""iter_files memory: how much the peak RSS grows while streaming through far more
data than the byte budget allows in memory at once.

Makes --total-mib of files in a temporary directory (sizes from 64 KiB to half the
budget, shuffled, so small and large files mix; a file larger than the budget would
have to come whole, as one bytes object), then in a fresh Python process per backend
resets the peak-RSS mark (/proc/self/clear_refs), streams every file through
iter_files(max_bytes_in_flight=--budget-mib), checks each file's length, and reports
the peak RSS growth over the RSS before streaming. The files are removed afterwards.
Usage: python bench/iter_files_rss.py [--total-mib N] [--budget-mib N] [--json F]
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

from vyre_uring.bench.harness import environment

CHILD = r"""
import json, os, sys, time
import vyre_uring

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

listing, budget, backend, workers = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
with open(listing) as f:
    entries = [line.rsplit(" ", 1) for line in f.read().splitlines()]
paths = [p for p, _ in entries]
sizes = [int(n) for _, n in entries]
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                      # the peak RSS mark starts again from here
before = status("VmRSS")
start = time.perf_counter()
total = 0
for index, path, data in vyre_uring.iter_files(paths, backend=backend, workers=workers,
                                               max_bytes_in_flight=budget):
    if isinstance(data, BaseException) or len(data) != sizes[index]:
        sys.exit(f"{path}: wrong result {data!r:.80}")
    total += len(data)
    del data
seconds = time.perf_counter() - start
print(json.dumps({"rss_before": before, "peak_rss": status("VmHWM"), "bytes": total,
                  "seconds": seconds}))
"""


def make_files(root, total, largest):
    """Shuffled sizes, 64 KiB to `largest`, adding up to about `total` bytes."""
    rnd = random.Random(5)
    sizes, left = [], total
    while left > 0:
        size = min(left, 1 << rnd.randrange(16, largest.bit_length()))
        sizes.append(size)
        left -= size
    rnd.shuffle(sizes)
    block = os.urandom(1 << 20)
    entries = []
    for i, size in enumerate(sizes):
        path = os.path.join(root, f"f{i:05d}")
        with open(path, "wb") as f:
            for _ in range(size >> 20):
                f.write(block)
            f.write(block[:size & ((1 << 20) - 1)])
        entries.append(f"{path} {size}")
    listing = os.path.join(root, "listing")
    with open(listing, "w") as f:
        f.write("\n".join(entries) + "\n")
    return listing, len(sizes)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--total-mib", type=int, default=4096, help="data to stream (4096)")
    ap.add_argument("--budget-mib", type=int, default=64, help="max_bytes_in_flight (64)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.total_mib < 1 or args.budget_mib < 1:
        ap.error("--total-mib and --budget-mib must be >= 1")
    env = environment()
    print(f"iter_files over {args.total_mib} MiB, max_bytes_in_flight {args.budget_mib} MiB: "
          + ", ".join(f"{k} {v}" for k, v in env.items()))
    results = {}
    with tempfile.TemporaryDirectory(prefix="vyre-bench-") as root:
        listing, count = make_files(root, args.total_mib << 20, args.budget_mib << 19)
        print(f"{count} files")
        for backend, workers in (("io_uring", 1), ("io_uring", 2), ("threads", 2)):
            proc = subprocess.run([sys.executable, "-c", CHILD, listing,
                                   str(args.budget_mib << 20), backend, str(workers)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{backend}: {proc.stderr.strip()}")
            r = json.loads(proc.stdout)
            growth = r["peak_rss"] - r["rss_before"]
            name = f"{backend} w{workers}"
            results[name] = {**r, "growth": growth}
            print(f"{name:<12} peak RSS growth {growth / 2**20:7.1f} MiB "
                  f"(budget {args.budget_mib} MiB), {r['bytes'] / r['seconds'] / 1e9:.2f} GB/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "total_mib": args.total_mib,
                       "budget_mib": args.budget_mib, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
