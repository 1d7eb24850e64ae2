"""The native contenders: C programs using liburing (compiled here, on the fly,
against Debian's liburing-dev) and fio. Each is found or explains why not."""
import json
import os
import shutil
import subprocess

C_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c-sources")
LIBURING_HEADER = "/usr/include/liburing.h"


def build_c(name, workdir):
    """Compile c/<name>.c against liburing; returns (path, None) or (None, why)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None, "no C compiler (cc) on PATH"
    if not os.path.exists(LIBURING_HEADER):
        return None, "liburing.h missing (apt-get install liburing-dev)"
    out = os.path.join(workdir, name)
    proc = subprocess.run([cc, "-O2", "-o", out, os.path.join(C_DIR, name + ".c"),
                           "-luring"], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"cc failed: {last}"
    return out, None


def run_c(binary, *args):
    """The rate a C program prints (it times its own loop, not its start-up)."""
    proc = subprocess.run([binary, *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{os.path.basename(binary)} failed: {proc.stderr.strip()}")
    return float(proc.stdout.strip())


def find_fio():
    """(path, None) or (None, why)."""
    fio = shutil.which("fio")
    if fio is None:
        return None, "fio is not installed (apt-get install fio)"
    proc = subprocess.run([fio, "--enghelp"], capture_output=True, text=True)
    if "io_uring" not in proc.stdout:
        return None, "this fio has no io_uring engine"
    return fio, None


def run_fio(fio, path, rw, bs, iodepth, count, direct=False):
    """fio's own IOPS for `count` reads of `bs` bytes with ioengine=io_uring, set up
    the way a careful C program runs: whole batches submitted and reaped, page-aligned
    buffers (fio's default malloc'd ones sit 16 bytes off a page, which halves large
    reads here), no per-I/O clock reads, no random-map bookkeeping, and the page cache
    left as the caller made it."""
    proc = subprocess.run(
        [fio, "--name=vyre", f"--filename={path}", "--ioengine=io_uring",
         f"--rw={rw}", f"--bs={bs}", f"--iodepth={iodepth}", f"--number_ios={count}",
         f"--iodepth_batch_submit={iodepth}", f"--iodepth_batch_complete_max={iodepth}",
         f"--direct={int(direct)}", "--invalidate=0", "--mem=mmap", "--gtod_reduce=1",
         "--norandommap", "--randrepeat=0", "--thread", "--output-format=json"],
        capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"fio failed: {proc.stderr.strip()}")
    return float(json.loads(proc.stdout)["jobs"][0]["read"]["iops"])
