"""What glibc's heap trim costs read_files(): cached files read into bytes, by one
ring and by the default reader, each measurement in a fresh process started with
GLIBC_TUNABLES unset or set as in TUNABLES; they alternate, three passes, and each
process reports its median and best of 7 rounds of 5 calls. Two sets of files:
10,000 of 4 KiB, and 200 of 1 MiB (results that glibc gives their own mmap unless
told otherwise). Run: python bench/heap_trim.py (it writes /tmp/vyre-trim, 240 MB,
and leaves it for the next run)."""
import os
import subprocess
import sys
import time

from synthetic import uniform_files

FOLDER = "/tmp/vyre-trim"
SETS = {"10,000 x 4 KiB": (10_000, 4096), "200 x 1 MiB": (200, 1 << 20)}
TRIM = "glibc.malloc.trim_threshold=1073741824"
TUNABLES = ["", "glibc.malloc.hugetlb=1", TRIM, TRIM + ":glibc.malloc.mmap_threshold=33554432"]


def paths(name):
    count, size = SETS[name]
    return uniform_files(os.path.join(FOLDER, f"{count}x{size}"), count, size)


def measure(name, workers):
    """In the child: the rates of this process's reader, files/s."""
    import vyre_uring
    files = paths(name)
    for p in files:
        with open(p, "rb") as f:
            f.read()                    # cached
    reader = vyre_uring.BatchReader(workers=workers or None)
    reader.read_files(files)
    rates = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(5):
            reader.read_files(files)
        rates.append(5 * len(files) / (time.perf_counter() - t))
    rates.sort()
    print(f"{rates[3]:.0f} {rates[-1]:.0f}")


def main():
    for name in SETS:
        paths(name)
    print(f"{'files':15s} {'rings':8s} {'GLIBC_TUNABLES':75s} {'median':>9s} {'best':>9s}"
          f"  files/s")
    for _ in range(3):
        for name in SETS:
            for workers in (1, 0):
                for tunables in TUNABLES:
                    env = dict(os.environ, GLIBC_TUNABLES=tunables)
                    out = subprocess.run([sys.executable, __file__, name, str(workers)],
                                         env=env, capture_output=True, text=True)
                    if out.returncode:
                        sys.exit(f"heap_trim: the measurement failed:\n{out.stderr}")
                    median, best = (float(x) for x in out.stdout.split())
                    print(f"{name:15s} {'1' if workers else 'default':8s} "
                          f"{tunables or '(none)':75s} {median / 1e3:8.1f}k "
                          f"{best / 1e3:8.1f}k", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        measure(sys.argv[1], int(sys.argv[2]))
    else:
        main()
