"""`vyre-uring bench`: vyre_uring side by side with the native ceiling (C programs
using liburing, fio) and the Python alternatives, on this machine, in one run.

It makes its own data in a temporary directory (removed afterwards, also when
interrupted), establishes and verifies the page-cache state each workload claims,
runs every contender interleaved round by round, and prints min/median/max with
ratios to the C figure of the same run."""
import importlib.util
import sys
import tempfile

from . import harness, native, workloads

__all__ = ["add_arguments", "run"]


def add_arguments(p):
    quick = workloads.Sizes.quick()
    p.add_argument("--quick", action="store_true",
                   help=f"small data and short runs, about a minute on a 2-core machine: "
                        f"{quick.files:,} small files, a {quick.file_mib} MiB file, "
                        f"{quick.tree_files:,} files of a real tree, fewer operations "
                        f"per run")
    p.add_argument("--rounds", type=int, default=5, metavar="N",
                   help="interleaved rounds, at least 5 (default 5)")
    p.add_argument("--file-mib", type=int, metavar="N",
                   help="size of the large file in MiB (1024; 256 with --quick)")
    p.add_argument("--files", type=int, metavar="N",
                   help="how many small files (10000; 2000 with --quick)")
    p.add_argument("--file-size", type=int, metavar="BYTES",
                   help="bytes per small file (4096)")
    p.add_argument("--gpu-gib", type=int, metavar="N",
                   help="size of the GPU rows' synthetic checkpoint in GiB, written twice "
                        f"(one file, four shards) and once to /dev/shm "
                        f"(16; {quick.gpu_gib} with --quick)")
    p.add_argument("--workers", metavar="N,N,...|sweep",
                   help="worker counts (rings) of the `vyre io_uring wN` rows: a comma "
                        "list such as 1,2,4,8,16, or 'sweep' for 1, 2, 4, ... up to the "
                        "core count (default: 1 and the core count)")
    p.add_argument("--only", nargs="+", metavar="TEXT",
                   help="run only the workloads whose names contain one of these "
                        "(e.g. nop, random, sequential, small, direct, aio, fsspec, gpu)")
    p.add_argument("--dir", metavar="DIR",
                   help="where to make the temporary data (default: the system's "
                        "temporary directory); its filesystem decides O_DIRECT")
    p.add_argument("--json", metavar="FILE", help="also write every run and summary as JSON")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw the ratios to C as a bar chart (needs matplotlib)")


def sizes_from(args):
    sizes = workloads.Sizes.quick() if args.quick else workloads.Sizes()
    for name in ("file_mib", "files", "file_size", "gpu_gib"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
            setattr(sizes, name, value)
    return sizes


def run(args, err):
    """The bench command; err(message) reports usage errors. Returns the status."""
    if args.rounds < 5:
        err("--rounds must be at least 5: fewer cannot show the spread")
    try:
        sizes = sizes_from(args)
        workers = workloads.worker_counts(args.workers)
    except ValueError as exc:
        err(str(exc))
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        # Said now, not after minutes of runs.
        err("--plot needs matplotlib: pip install 'vyre-uring[plot]'")
    env = harness.environment(_backend())
    liburing, why = native.find_liburing()
    env["liburing"] = liburing.describe() if liburing else why
    print("vyre-uring bench: " + ", ".join(f"{k} {v}" for k, v in env.items()),
          flush=True)
    with workloads.DataSet(sizes, args.dir) as data, \
            tempfile.TemporaryDirectory(prefix="vyre-bench-bin-") as bindir:
        found, ctx = workloads.build(data, sizes, bindir, args.only, workers)
        try:
            if not found:
                err(f"no workload matches --only {' '.join(args.only)}")
            total = args.rounds * sum(len(w.runnable) for w in found)
            with _Progress(total) as bar:
                results = harness.interleave(found, args.rounds, bar.tick)
        finally:
            ctx.close()
    summary = harness.summaries(results, found)
    env["cache"] = {w.name: sorted(w.cache) for w in found if w.cache}
    print(harness.legend(found))
    print(harness.table(summary, found))
    for w in found:
        if w.cache:
            print(f"  {w.name}: cache {', '.join(sorted(w.cache))}")
    if args.json:
        harness.to_json(args.json, env, args.rounds, results, summary, found)
    if args.plot:
        harness.plot(args.plot, summary, found, env)
    return 0


def _backend():
    """The reader backend that "auto" picks here, and why when it falls back."""
    from vyre_uring import check
    state = check()
    return "io_uring" if state.available else f"threads (io_uring: {state.reason})"


class _Progress:
    """A tqdm bar on stderr when tqdm is installed, else a line per 10%."""

    def __init__(self, total):
        self.total, self.done, self._bar = total, 0, None
        try:
            from tqdm import tqdm
            self._bar = tqdm(total=total, unit="run", file=sys.stderr, leave=False)
        except ImportError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()

    def tick(self):
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)
        elif self.done * 10 // self.total != (self.done - 1) * 10 // self.total:
            print(f"  {self.done}/{self.total} runs", file=sys.stderr, flush=True)
