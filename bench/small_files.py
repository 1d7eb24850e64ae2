"""Many small files, page cache warm or cold: files per second, vyre_uring against C
liburing and plain Python.

Contenders, interleaved round by round:
  C liburing         bench/c/small_files_liburing.c: batches of openat, read, close
  vyre io_uring w1   read_files through the io_uring backend, one ring
  vyre io_uring w2   the same with two rings in two threads
  vyre threads       the fallback backend (a thread pool of os.pread)
  os loop            os.open / os.fstat / os.read / os.close per file
  open().read()      the idiomatic loop

--cache warm (the default) reads every file once before each contender's run;
--cache cold drops the page cache, dentries and inodes before it (sync, then
3 > /proc/sys/vm/drop_caches: root only), and the table adds the ratio to the os
loop. The files are made in a temporary directory and removed afterwards.
Usage: python bench/small_files.py [--files N] [--size BYTES] [--rounds N]
                                   [--cache warm|cold] [--json F]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import vyre_uring
from _harness import HERE, REFERENCE, build_c, environment, table


def make_files(root, count, size):
    paths = [os.path.join(root, f"f{i:06d}") for i in range(count)]
    block = os.urandom(size)
    for p in paths:
        with open(p, "wb") as f:
            f.write(block)
    return paths


def timed(fn, count):
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


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


def c_files(binary, listing):
    proc = subprocess.run([binary, "64"], input=listing, capture_output=True, text=True,
                          check=True)
    return float(proc.stdout.strip())


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def run(count, size, rounds, cache):
    missing = {}
    with tempfile.TemporaryDirectory(prefix="vyre-bench-") as root:
        paths = make_files(root, count, size)
        listing = "\n".join(paths) + "\n"
        binary, why = build_c(os.path.join(HERE, "c", "small_files_liburing.c"), root)
        readers = {w: vyre_uring.BatchReader(backend="io_uring", workers=w, queue_depth=256)
                   for w in (1, 2)}
        threads = vyre_uring.BatchReader(backend="threads")
        contenders = [
            ("vyre io_uring w1", lambda: timed(lambda: readers[1].read_files(paths), count)),
            ("vyre io_uring w2", lambda: timed(lambda: readers[2].read_files(paths), count)),
            ("vyre threads", lambda: timed(lambda: threads.read_files(paths), count)),
            ("os loop", lambda: timed(lambda: os_loop(paths), count)),
            ("open().read()", lambda: timed(lambda: open_read(paths), count)),
        ]
        if binary:
            contenders.insert(0, (REFERENCE, lambda: c_files(binary, listing)))
        else:
            missing[REFERENCE] = why
        results = {count: {}}
        try:
            for r in range(rounds):
                for name, fn in contenders:
                    if cache == "warm":
                        open_read(paths)              # every file in the page cache
                    else:
                        drop_caches()
                    results[count].setdefault(name, []).append(fn())
                print(f"  round {r + 1}/{rounds} done", file=sys.stderr)
        finally:
            for reader in (*readers.values(), threads):
                reader.close()
    return results, missing


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=10_000, help="how many files (10000)")
    ap.add_argument("--size", type=int, default=4096, help="bytes per file (4096)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    ap.add_argument("--cache", choices=("warm", "cold"), default="warm",
                    help="page cache state before each run (warm)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.files < 1 or args.size < 0 or args.rounds < 1:
        ap.error("--files and --rounds must be >= 1, --size >= 0")
    if args.cache == "cold" and not os.access("/proc/sys/vm/drop_caches", os.W_OK):
        ap.error("--cache cold drops the page cache: it needs root "
                 "(/proc/sys/vm/drop_caches is not writable here)")
    env = {**environment(), "cache": args.cache}
    print(f"small files ({args.files} x {args.size} B, {args.cache}): files/s, "
          + ", ".join(f"{k} {v}" for k, v in env.items()))
    results, missing = run(args.files, args.size, args.rounds, args.cache)
    print(table(results, missing, key="files"))
    if args.cache == "cold":
        print(table(results, {}, key="files", reference="os loop"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rounds": args.rounds, "results": results,
                       "not_available": missing}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
