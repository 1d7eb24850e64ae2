"""Soak: a mixed random workload on several rings in several threads for a while,
verifying every byte read and written against a model. Not part of the test run
(pytest collects test_*.py only); CI runs it for 60 seconds.

Each thread owns a Ring, a BatchReader and a region of one shared file, and loops
over random operations: writes and reads through the ring (single, vectored,
batched), NOP batches, timeouts cancelled or expiring, fsync, whole-file and range
reads through the reader. A read is compared with the thread's model of its region.
Usage: python tests/soak.py [--seconds N] [--threads N] [--seed N]
Exits 1 with the first mismatch, else prints what it verified.
"""
import argparse
import array
import errno
import os
import random
import sys
import tempfile
import threading
import time

import vyre_uring

REGION = 4 << 20              # bytes of the shared file each thread owns
SMALL_FILES = 200


class Mismatch(Exception):
    pass


class Worker:
    def __init__(self, index, path, small, seed, deadline):
        self.index = index
        self.base = index * REGION
        self.path = path
        self.small = small                      # {path: bytes} nobody writes
        self.rnd = random.Random(seed)
        self.deadline = deadline
        self.model = bytearray(REGION)
        self.ops = 0
        self.bytes = 0
        self.error = None

    def run(self):
        fd = os.open(self.path, os.O_RDWR)
        try:
            with vyre_uring.Ring(64) as ring, \
                    vyre_uring.BatchReader(backend="io_uring", queue_depth=16,
                                           workers=1) as reader:
                self.ring, self.reader, self.fd = ring, reader, fd
                actions = [self.write, self.write, self.read, self.read, self.writev,
                           self.readv, self.batch_reads, self.nops, self.timeouts,
                           self.fsync, self.reader_ranges, self.reader_files]
                while time.monotonic() < self.deadline:
                    self.rnd.choice(actions)()
        except BaseException as exc:
            self.error = exc
        finally:
            os.close(fd)

    # ---- helpers ----------------------------------------------------------------------

    def span(self, most=65536):
        n = self.rnd.randrange(1, most)
        off = self.rnd.randrange(0, REGION - n)
        return off, n

    def one(self, user_data):
        """Wait for the single outstanding request; return its res."""
        done = self.ring.wait(1, timeout=30)
        if [c.user_data for c in done] != [user_data]:
            raise Mismatch(f"expected completion {user_data}, got {done}")
        self.ops += 1
        return done[0].res

    def check(self, what, off, data):
        want = bytes(self.model[off:off + len(data)])
        if bytes(data) != want:
            first = next(i for i, (a, b) in enumerate(zip(data, want)) if a != b)
            raise Mismatch(f"thread {self.index}: {what} at {off}+{len(data)}: first "
                           f"difference at byte {first}")
        self.bytes += len(data)

    # ---- actions ------------------------------------------------------------------------

    def write(self):
        off, n = self.span()
        data = self.rnd.randbytes(n)
        self.ring.prep_write(self.fd, data, self.base + off, user_data=1)
        res = self.one(1)
        if res != n:
            raise Mismatch(f"write of {n} returned {res}")
        self.model[off:off + n] = data

    def read(self):
        off, n = self.span()
        buf = bytearray(n)
        self.ring.prep_read(self.fd, buf, self.base + off, user_data=2)
        res = self.one(2)
        if res != n:
            raise Mismatch(f"read of {n} returned {res}")
        self.check("read", off, buf)

    def writev(self):
        off, n = self.span()
        data = self.rnd.randbytes(n)
        cut = self.rnd.randrange(0, n + 1)
        self.ring.prep_writev(self.fd, [data[:cut], data[cut:]], self.base + off,
                              user_data=3)
        if self.one(3) != n:
            raise Mismatch("writev came back short")
        self.model[off:off + n] = data

    def readv(self):
        off, n = self.span()
        cut = self.rnd.randrange(0, n + 1)
        a, b = bytearray(cut), bytearray(n - cut)
        self.ring.prep_readv(self.fd, [a, b], self.base + off, user_data=4)
        if self.one(4) != n:
            raise Mismatch("readv came back short")
        self.check("readv", off, a + b)

    def batch_reads(self):
        count = self.rnd.randrange(1, 48)
        spans = [self.span(8192) for _ in range(count)]
        lengths = array.array("q", [n for _, n in spans])
        buf = vyre_uring.alloc_buffer(sum(lengths))
        try:
            got = self.ring.prep_reads(self.fd, buf, array.array(
                "q", [self.base + o for o, _ in spans]), lengths)
            if got != count:
                raise Mismatch(f"prep_reads prepared {got} of {count}")
            ud = array.array("Q", bytes(8 * count))
            res = array.array("i", bytes(4 * count))
            n = 0
            while n < count:
                n += self.ring.reap(memoryview(ud)[n:], memoryview(res)[n:],
                                    min_complete=1, timeout=30)
            pos = 0
            starts = []
            for length in lengths:
                starts.append(pos)
                pos += length
            for u, r in zip(ud, res):
                o, length = spans[u]
                if r != length:
                    raise Mismatch(f"batched read {u} returned {r}, not {length}")
                self.check("batched read", o, buf[starts[u]:starts[u] + length])
            self.ops += count
        finally:
            buf.close()

    def nops(self):
        count = self.rnd.randrange(1, 64)
        self.ring.prep_nops(array.array("Q", range(100, 100 + count)))
        seen = []
        while len(seen) < count:
            seen += [c.user_data for c in self.ring.wait(1, timeout=30)]
        if sorted(seen) != list(range(100, 100 + count)):
            raise Mismatch(f"NOP batch came back as {sorted(seen)}")
        self.ops += count

    def timeouts(self):
        if self.rnd.random() < 0.5:                  # expires
            self.ring.prep_timeout(0.001, user_data=5)
            if self.one(5) != -errno.ETIME:
                raise Mismatch("timeout did not expire with ETIME")
            return
        self.ring.prep_timeout(30, user_data=6)       # cancelled
        self.ring.prep_cancel(6, user_data=7)
        got = {}
        while len(got) < 2:
            for c in self.ring.wait(1, timeout=30):
                got[c.user_data] = c.res
        if got != {6: -errno.ECANCELED, 7: 0}:
            raise Mismatch(f"timeout cancel gave {got}")
        self.ops += 2

    def fsync(self):
        self.ring.prep_fsync(self.fd, datasync=True, user_data=8)
        if self.one(8) != 0:
            raise Mismatch("fsync failed")

    def reader_ranges(self):
        spans = [self.span(16384) for _ in range(self.rnd.randrange(1, 32))]
        out = self.reader.read_ranges(self.path, [self.base + o for o, _ in spans],
                                      [n for _, n in spans])
        for (o, _), data in zip(spans, out):
            self.check("read_ranges", o, data)
        self.ops += len(spans)

    def reader_files(self):
        paths = self.rnd.sample(list(self.small), self.rnd.randrange(1, 50))
        for p, data in zip(paths, self.reader.read_files(paths)):
            if data != self.small[p]:
                raise Mismatch(f"read_files gave wrong bytes for {p}")
            self.bytes += len(data)
        self.ops += len(paths)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=600, help="how long (600)")
    ap.add_argument("--threads", type=int, default=4, help="threads, one ring each (4)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (from the clock)")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time())
    with tempfile.TemporaryDirectory(prefix="vyre-soak-") as root:
        path = os.path.join(root, "shared")
        with open(path, "wb") as f:
            f.truncate(args.threads * REGION)
        rnd = random.Random(seed)
        small = {}
        for i in range(SMALL_FILES):
            p = os.path.join(root, f"small{i}")
            small[p] = rnd.randbytes(rnd.randrange(0, 20000))
            with open(p, "wb") as f:
                f.write(small[p])
        deadline = time.monotonic() + args.seconds
        workers = [Worker(i, path, small, seed + i, deadline) for i in range(args.threads)]
        threads = [threading.Thread(target=w.run) for w in workers]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
    for w in workers:
        if w.error is not None:
            print(f"soak FAILED (seed {seed}): thread {w.index}: {w.error!r}", file=sys.stderr)
            return 1
    ops = sum(w.ops for w in workers)
    verified = sum(w.bytes for w in workers)
    print(f"soak ok: {elapsed:.0f} s, {args.threads} threads/rings, seed {seed}, "
          f"{ops} operations, {verified / 2**20:.0f} MiB read and verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
