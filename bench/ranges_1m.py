"""1M random 4 KiB ranges of a cached 4 GiB file in one read_ranges_into call: 1 ring
vs 16 rings vs the module-level default, 5 interleaved rounds; and an os.preadv loop
over the first 100k ranges; and, where liburing can be compiled against, the C
ceiling (bench/ranges_1m.c: the same number of random 4 KiB reads, each landing in
its own 4 KiB of a pre-faulted destination) on one thread and on one per core, in
the same rounds. Needs about 12 GiB of memory (the file cached, and a 4 GiB
destination on each side). Run: python bench/ranges_1m.py (it writes /tmp/big4g)."""
import array
import atexit
import os
import random
import shutil
import subprocess
import tempfile
import time

import vyre_uring
from vyre_uring import BatchReader

path = "/tmp/big4g"
size = 4 << 30
if not os.path.exists(path) or os.path.getsize(path) != size:
    with open(path, "wb") as f:
        blk = os.urandom(1 << 24)
        for _ in range(size >> 24):
            f.write(blk)
with open(path, "rb") as f:                      # warm the page cache
    while f.readinto(bytearray(1 << 26)):
        pass
n = 1_000_000
rnd = random.Random(1)
offsets = array.array("q", (rnd.randrange(size >> 12) << 12 for _ in range(n)))
lengths = array.array("q", [4096]) * n
boffs = array.array("q", range(0, n * 4096, 4096))
buf = vyre_uring.alloc_buffer(n * 4096)
readers = {"w1": BatchReader(workers=1, queue_depth=64), "w16": BatchReader(workers=16, queue_depth=64)}
def once(name):
    t = time.perf_counter()
    if name == "default":
        counts = vyre_uring.read_ranges_into(path, buf, offsets, lengths, boffs)
    else:
        counts = readers[name].read_ranges_into(path, buf, offsets, lengths, boffs)
    dt = time.perf_counter() - t
    assert sum(counts) == n * 4096
    return n / dt
def preadv_loop(k=100_000):
    fd = os.open(path, os.O_RDONLY)
    mv = memoryview(buf)
    t = time.perf_counter()
    for i in range(k):
        os.preadv(fd, [mv[i * 4096:(i + 1) * 4096]], offsets[i])
    dt = time.perf_counter() - t
    os.close(fd)
    return k / dt
def c_ceiling():
    """The compiled C program, or None (and why) where liburing is not found."""
    workdir = tempfile.mkdtemp(prefix="vyre-1m-")
    atexit.register(shutil.rmtree, workdir, True)
    binary = os.path.join(workdir, "ranges_1m")
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ranges_1m.c")
    proc = subprocess.run(["cc", "-O2", "-o", binary, source, "-luring", "-lpthread"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print("no C ceiling:", proc.stderr.strip().splitlines()[-1:])
        return None
    return binary
def c_run(binary, threads):
    out = subprocess.run([binary, path, str(n), str(threads)], capture_output=True,
                         text=True, check=True)
    return float(out.stdout)
binary = c_ceiling()
cores = len(os.sched_getaffinity(0))
once("default")
rates = {k: [] for k in ("w1", "w16", "default", "preadv loop")}
if binary:
    rates.update({"C w1": [], f"C w{cores}": []})
for r in range(5):
    for k in ("w1", "w16", "default"):
        rates[k].append(once(k))
    rates["preadv loop"].append(preadv_loop())
    if binary:
        rates["C w1"].append(c_run(binary, 1))
        rates[f"C w{cores}"].append(c_run(binary, cores))
    print(f"round {r}: " + "  ".join(f"{k} {v[-1]/1e6:.2f} M/s" for k, v in rates.items()), flush=True)
med = {k: sorted(v)[2] for k, v in rates.items()}
per_round = sorted(a / b for a, b in zip(rates["w16"], rates["w1"]))
print("medians M reads/s:", {k: round(v / 1e6, 3) for k, v in med.items()})
print(f"w16 / w1 per round min/med/max: {per_round[0]:.2f} / {per_round[2]:.2f} / {per_round[-1]:.2f}")
print(f"default / w1 median: {med['default'] / med['w1']:.2f}")
if binary:
    c_round = sorted(a / b for a, b in zip(rates[f"C w{cores}"], rates["C w1"]))
    print(f"C w{cores} / C w1 per round min/med/max: {c_round[0]:.2f} / {c_round[2]:.2f} / "
          f"{c_round[-1]:.2f}; w16 / C w{cores} median: "
          f"{med['w16'] / med[f'C w{cores}']:.2f}")
