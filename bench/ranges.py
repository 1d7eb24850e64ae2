"""Byte ranges of one page-cached file: reads per second, vyre_uring against C
liburing and plain Python, interleaved round by round in one run.

Workloads (a 1 GiB file made here, warmed and checked resident with mincore before
every contender's run):
  rand4k    4 KiB reads at random 4 KiB-aligned offsets, queue depth 32
  seq128k   128 KiB reads one after another through the file, queue depth 32

Contenders:
  C liburing         bench/c/ranges_liburing.c, QD reads in flight, one buffer slot each
  vyre into w1       BatchReader.read_ranges_into, one ring, into a page-aligned buffer
  vyre into w2       the same with two rings in two threads (seq128k)
  vyre bytes         BatchReader.read_ranges: a new bytes object per range
  vyre threads       the fallback backend's read_ranges_into
  os.preadv loop     os.preadv into the same buffer, one range after another
  os.pread list      a list of os.pread results: new bytes objects, as vyre bytes

Destinations cycle through QD page-aligned slots (per ring), as the C program's do.
Usage: python bench/ranges.py [--size-mib N] [--rounds N] [--workloads W..] [--json F]
"""
import argparse
import array
import json
import os
import random
import subprocess
import sys
import tempfile
import time

import vyre_uring
from _harness import HERE, REFERENCE, build_c, environment, table, warm
from vyre_uring.buffers import alloc_buffer

QD = 32
WORKLOADS = {"rand4k": (4096, "rand", 200_000), "seq128k": (128 << 10, "seq", 16_384)}


def make_file(root, size):
    path = os.path.join(root, "data")
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size >> 20):
            f.write(block)
    return path


def ranges(size, bs, mode, count, workers):
    """offsets, lengths and buffer offsets: each ring's share writes its own QD slots."""
    blocks = size // bs
    rnd = random.Random(1)
    offsets = array.array("q", [rnd.randrange(blocks) * bs for _ in range(count)]
                          if mode == "rand" else [(i % blocks) * bs for i in range(count)])
    share = -(-count // workers)
    boffs = array.array("q", [((i % QD) + (i // share) * QD) * bs for i in range(count)])
    return offsets, array.array("q", [bs]) * count, boffs


def timed(fn, count):
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def preadv_loop(path, buf, offsets, lengths, boffs):
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    try:
        for off, n, b in zip(offsets, lengths, boffs):
            os.preadv(fd, [view[b:b + n]], off)
    finally:
        os.close(fd)
        view.release()


def pread_list(path, offsets, lengths):
    fd = os.open(path, os.O_RDONLY)
    try:
        return [os.pread(fd, n, off) for off, n in zip(offsets, lengths)]
    finally:
        os.close(fd)


def c_reads(binary, path, bs, mode, count):
    proc = subprocess.run([binary, path, str(bs), str(QD), str(count), mode],
                          capture_output=True, text=True, check=True)
    return float(proc.stdout.strip())


def contenders(name, path, size, binary, readers, buf):
    bs, mode, count = WORKLOADS[name]
    o1, lens, b1 = ranges(size, bs, mode, count, 1)
    o2, _, b2 = ranges(size, bs, mode, count, 2)
    out = []
    if binary:
        out.append((REFERENCE, lambda: c_reads(binary, path, bs, mode, count)))
    out.append(("vyre into w1", lambda: timed(
        lambda: readers[1].read_ranges_into(path, buf, o1, lens, b1), count)))
    if mode == "seq":
        out.append(("vyre into w2", lambda: timed(
            lambda: readers[2].read_ranges_into(path, buf, o2, lens, b2), count)))
    out.append(("vyre bytes", lambda: timed(lambda: readers[1].read_ranges(path, o1, lens),
                                            count)))
    out.append(("vyre threads", lambda: timed(
        lambda: readers["threads"].read_ranges_into(path, buf, o1, lens, b1), count)))
    out.append(("os.preadv loop", lambda: timed(
        lambda: preadv_loop(path, buf, o1, lens, b1), count)))
    out.append(("os.pread list", lambda: timed(lambda: pread_list(path, o1, lens), count)))
    return out


def run(size, rounds, workloads):
    missing = {}
    results = {}
    with tempfile.TemporaryDirectory(prefix="vyre-bench-") as root:
        path = make_file(root, size)
        binary, why = build_c(os.path.join(HERE, "c", "ranges_liburing.c"), root)
        if not binary:
            missing[REFERENCE] = why
        readers = {w: vyre_uring.BatchReader(backend="io_uring", workers=w, queue_depth=QD)
                   for w in (1, 2)}
        readers["threads"] = vyre_uring.BatchReader(backend="threads")
        buf = alloc_buffer(2 * QD * max(bs for bs, _, _ in WORKLOADS.values()))
        try:
            work = {name: contenders(name, path, size, binary, readers, buf)
                    for name in workloads}
            for r in range(rounds):
                for name, fns in work.items():
                    for who, fn in fns:
                        resident = warm(path)
                        if resident < 0.99:
                            sys.exit(f"the file is only {resident:.0%} resident after "
                                     f"warming: not enough free memory for a cached run")
                        results.setdefault(name, {}).setdefault(who, []).append(fn())
                print(f"  round {r + 1}/{rounds} done", file=sys.stderr)
        finally:
            for reader in readers.values():
                reader.close()
            buf.close()
    return results, missing


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="file size in MiB (1024)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    ap.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS),
                    help="which workloads (all)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.size_mib < 1 or args.rounds < 1:
        ap.error("--size-mib and --rounds must be >= 1")
    env = environment()
    print(f"ranges of a {args.size_mib} MiB cached file, QD {QD}: reads/s, "
          + ", ".join(f"{k} {v}" for k, v in env.items()))
    results, missing = run(args.size_mib << 20, args.rounds, args.workloads)
    print(table(results, missing, key="workload"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rounds": args.rounds, "queue_depth": QD,
                       "results": results, "not_available": missing}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
