"""Ring overhead: IORING_OP_NOP operations per second, vyre_uring against C liburing.

A NOP does no I/O, so this measures what the engine itself costs per request: SQE
fill, tail publish, io_uring_enter, CQE reap. Contenders, at batch 1, 16 and 256:

  C liburing         bench/c/nop_liburing.c, compiled here with cc -O2 -luring
  vyre batch         Ring.prep_nops(user_data_array) + Ring.reap(arrays, min_complete=B)
  vyre per-op        B x Ring.prep_nop(user_data=u) + Ring.reap(arrays, min_complete=B)

Contenders run interleaved round by round (C, batch, per-op, C, ...) so machine drift
hits all alike. The table gives min/median/max ops/s and the ratio of medians to C
measured in the same run. Usage: python bench/ring_overhead.py [--rounds N] [--json F]
"""
import argparse
import array
import json
import os
import subprocess
import sys
import tempfile
import time

import vyre_uring
from _harness import HERE, build_c, environment, table
BATCHES = (1, 16, 256)
# Operations per timed run, per batch size: about 0.2 s each on the machine we measured.
OPS = {1: 300_000, 16: 1_500_000, 256: 2_500_000}
RING_ENTRIES = 256


def c_nops(binary, batch, ops):
    """ops/s of the C program (it times its own loop, not its start-up)."""
    out = subprocess.run([binary, str(batch), str(ops)], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip())


# The two vyre loops are written out in full, not through a shared helper taking a
# callback: a callback would add a Python call per batch to what is being timed.
def vyre_batch_nops(ring, batch, ops):
    user_data = array.array("Q", range(batch))
    ud_out = array.array("Q", bytes(8 * batch))
    res_out = array.array("i", bytes(4 * batch))
    prep, reap = ring.prep_nops, ring.reap
    done = 0
    start = time.perf_counter()
    while done < ops:
        prep(user_data)
        got = reap(ud_out, res_out, min_complete=batch)
        if got != batch:
            raise AssertionError(f"reaped {got} of {batch}")
        done += got
    elapsed = time.perf_counter() - start
    _check_batch(ud_out, res_out, batch)
    return done / elapsed


def vyre_perop_nops(ring, batch, ops):
    user_data = list(range(batch))
    ud_out = array.array("Q", bytes(8 * batch))
    res_out = array.array("i", bytes(4 * batch))
    prep, reap = ring.prep_nop, ring.reap
    done = 0
    start = time.perf_counter()
    while done < ops:
        for u in user_data:
            prep(user_data=u)
        got = reap(ud_out, res_out, min_complete=batch)
        if got != batch:
            raise AssertionError(f"reaped {got} of {batch}")
        done += got
    elapsed = time.perf_counter() - start
    _check_batch(ud_out, res_out, batch)
    return done / elapsed


def _check_batch(ud_out, res_out, batch):
    """The last batch came back whole: every user_data once, every res 0."""
    if sorted(ud_out[:batch]) != list(range(batch)) or any(res_out[:batch]):
        raise AssertionError("NOP completions came back wrong")


def run(rounds):
    """{batch: {contender: [ops/s per round]}} and {contender: why not available}."""
    results = {b: {} for b in BATCHES}
    missing = {}
    with tempfile.TemporaryDirectory(prefix="vyre-bench-") as workdir, \
            vyre_uring.Ring(RING_ENTRIES) as ring:
        binary, why = build_c(os.path.join(HERE, "c", "nop_liburing.c"), workdir)
        contenders = [("vyre batch", lambda b, n: vyre_batch_nops(ring, b, n)),
                      ("vyre per-op", lambda b, n: vyre_perop_nops(ring, b, n))]
        if binary:
            contenders.insert(0, ("C liburing", lambda b, n: c_nops(binary, b, n)))
        else:
            missing["C liburing"] = why
        for r in range(rounds):
            for batch in BATCHES:
                for name, fn in contenders:
                    results[batch].setdefault(name, []).append(fn(batch, OPS[batch]))
            print(f"  round {r + 1}/{rounds} done", file=sys.stderr)
    return results, missing


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (>= 5)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    env = environment()
    print("ring overhead: NOP ops/s, " + ", ".join(f"{k} {v}" for k, v in env.items()))
    results, missing = run(args.rounds)
    print(table(results, missing))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rounds": args.rounds,
                       "results": {str(b): r for b, r in results.items()},
                       "not_available": missing}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
