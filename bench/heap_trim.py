"""What glibc's heap trim costs read_files(): 10,000 cached 4 KiB files read into
bytes, by one ring and by the default reader, each in a fresh process started with
GLIBC_TUNABLES unset, glibc.malloc.hugetlb=1, or glibc.malloc.trim_threshold=1 GiB;
the three alternate, three passes; each process reports its median and best of 7
rounds of 5 calls. Run: python bench/heap_trim.py (it writes /tmp/vyre-trim)."""
import os
import subprocess
import sys
import time

FOLDER = "/tmp/vyre-trim"
FILES = 10_000
TUNABLES = ["", "glibc.malloc.hugetlb=1", "glibc.malloc.trim_threshold=1073741824"]


def paths():
    os.makedirs(FOLDER, exist_ok=True)
    out = [f"{FOLDER}/f{i:05d}" for i in range(FILES)]
    for p in out:
        if not os.path.exists(p):
            with open(p, "wb") as f:
                f.write(os.urandom(4096))
    return out


def measure(workers):
    """In the child: the rates of this process's reader."""
    import vyre_uring
    files = paths()
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
        rates.append(5 * FILES / (time.perf_counter() - t))
    rates.sort()
    print(f"{rates[3] / 1e3:.0f} {rates[-1] / 1e3:.0f}")


def main():
    paths()
    print(f"{'rings':8s} {'GLIBC_TUNABLES':40s} {'median':>8s} {'best':>8s}  files/s")
    for _ in range(3):
        for workers in (1, 0):
            for tunables in TUNABLES:
                env = dict(os.environ, GLIBC_TUNABLES=tunables)
                out = subprocess.run([sys.executable, __file__, str(workers)], env=env,
                                     capture_output=True, text=True, check=True)
                median, best = out.stdout.split()
                print(f"{'1' if workers else 'default':8s} {tunables or '(none)':40s} "
                      f"{median:>7s}k {best:>7s}k", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        measure(int(sys.argv[1]))
    else:
        main()
