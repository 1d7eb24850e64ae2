"""1M random 4 KiB ranges of a cached 4 GiB file in one read_ranges_into call: 1 ring
vs 16 rings vs the module-level default, 5 interleaved rounds; and an os.preadv loop
over the first 100k ranges. Needs about 8 GiB of memory (the file cached, and the
4 GiB destination). Run: python bench/ranges_1m.py (it writes /tmp/big4g)."""
import array
import os
import random
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
once("default")
rates = {k: [] for k in ("w1", "w16", "default", "preadv loop")}
for r in range(5):
    for k in ("w1", "w16", "default"):
        rates[k].append(once(k))
    rates["preadv loop"].append(preadv_loop())
    print(f"round {r}: " + "  ".join(f"{k} {v[-1]/1e6:.2f} M/s" for k, v in rates.items()), flush=True)
med = {k: sorted(v)[2] for k, v in rates.items()}
per_round = sorted(a / b for a, b in zip(rates["w16"], rates["w1"]))
print("medians M reads/s:", {k: round(v / 1e6, 3) for k, v in med.items()})
print(f"w16 / w1 per round min/med/max: {per_round[0]:.2f} / {per_round[2]:.2f} / {per_round[-1]:.2f}")
print(f"default / w1 median: {med['default'] / med['w1']:.2f}")
