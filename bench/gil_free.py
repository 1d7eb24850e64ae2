"""How much of a reader call leaves the GIL to the caller's other threads, and what a
busy Python thread costs the call: a thread counting in a loop for 2 s, alone and
beside back-to-back read_files() (then read_files_into()) calls of 10,000 cached
4 KiB files with the default reader; it reports the thread's rate as a fraction of
its rate alone, and the reader's rate meanwhile against its rate with no such
thread. Three passes. Run: python bench/gil_free.py [--switch-interval S] (it
writes /tmp/vyre-gil, 40 MB, and leaves it for the next run). Each trip a reader's
thread makes to the GIL can wait up to the switch interval (sys.setswitchinterval,
5 ms by default) while the busy thread holds it."""
import argparse
import os
import sys
import threading
import time

import vyre_uring
from synthetic import uniform_files

FOLDER = "/tmp/vyre-gil"
COUNT, SIZE = 10_000, 4096
SECONDS = 2.0


def spin(seconds, rates):
    """Count loop iterations for `seconds`; append the rate to `rates`."""
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        n += 1
    rates.append(n / seconds)


def calls_for(work, seconds, beside=None):
    """files/s of back-to-back calls of `work` for `seconds`, or while `beside` (a
    started thread) runs."""
    done, start = 0, time.perf_counter()
    while (beside.is_alive() if beside else time.perf_counter() - start < seconds):
        work()
        done += COUNT
    return done / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switch-interval", type=float, metavar="S",
                        help="sys.setswitchinterval(S) first (default: leave it)")
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    paths = uniform_files(FOLDER, COUNT, SIZE)
    buf = bytearray(COUNT * SIZE)
    works = {"read_files()": lambda: vyre_uring.read_files(paths),
             "read_files_into()": lambda: vyre_uring.read_files_into(paths, buf)}
    for work in works.values():
        work()                                  # the shared reader, and the cache
    print(f"{os.cpu_count()} cores, {COUNT:,} files of {SIZE} bytes, cached, "
          f"{SECONDS:.0f} s per measurement, switch interval "
          f"{sys.getswitchinterval() * 1e3:g} ms")
    for name, work in works.items():
        for _ in range(3):
            solo = []
            spin(SECONDS, solo)
            alone = calls_for(work, SECONDS)
            rates = []
            thread = threading.Thread(target=spin, args=(SECONDS, rates))
            thread.start()
            beside = calls_for(work, SECONDS, thread)
            thread.join()
            print(f"{name:18s} the thread keeps {rates[0] / solo[0]:.2f} of its rate alone; "
                  f"the reader reads {beside / 1e3:.0f} k files/s beside it, "
                  f"{alone / 1e3:.0f} k alone ({beside / alone:.2f})")


if __name__ == "__main__":
    main()
