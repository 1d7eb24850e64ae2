"""The PyPI `liburing` binding as a contender, run in its own process (a build for
another CPU can die of SIGILL): reads of BS bytes at the offsets in OFFSETS_FILE
(int64s), QD in flight, each into its own buffer. Prints reads per second.
Usage: python -m vyre_uring.bench.pypi_liburing FILE BS QD OFFSETS_FILE direct|buffered
"""
import array
import os
import sys
import time

import liburing as L

from vyre_uring.buffers import alloc_buffer


def main(path, bs, qd, offsets_file, mode):
    bs, qd = int(bs), int(qd)
    offsets = array.array("q")
    with open(offsets_file, "rb") as f:
        offsets.frombytes(f.read())
    ring, cqe = L.Ring(), L.Cqe()
    L.io_uring_queue_init(qd, ring)
    bufs = [alloc_buffer(bs) for _ in range(qd)]
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if mode == "direct" else 0))
    free, n, submitted, done = list(range(qd)), len(offsets), 0, 0
    start = time.perf_counter()
    while done < n:
        while free and submitted < n:
            slot = free.pop()
            sqe = L.io_uring_get_sqe(ring)
            L.io_uring_prep_read(sqe, fd, bufs[slot], offsets[submitted])
            sqe.user_data = slot
            submitted += 1
        L.io_uring_submit_and_wait(ring, 1)
        L.io_uring_wait_cqe(ring, cqe)
        ready = L.io_uring_cq_ready(ring)
        for i in range(ready):
            c = cqe[i]
            if c.res != bs:
                sys.exit(f"read returned {c.res}")
            free.append(c.user_data)
        L.io_uring_cq_advance(ring, ready)
        done += ready
    rate = n / (time.perf_counter() - start)
    L.io_uring_queue_exit(ring)
    os.close(fd)
    print(rate)


if __name__ == "__main__":
    main(*sys.argv[1:])
