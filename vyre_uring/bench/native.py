"""The native contenders: C programs using liburing (compiled here, on the fly,
against liburing-dev wherever its headers are) and fio. Each is found or explains
why not."""
import glob
import json
import os
import shutil
import subprocess
from dataclasses import dataclass

C_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c-sources")
SYSTEM_INCLUDE = "/usr/include"
# Searched before SYSTEM_INCLUDE, in gcc's order (CPATH is as -I, C_INCLUDE_PATH as
# -isystem): where liburing comes from .debs unpacked with `dpkg -x` into a folder.
INCLUDE_VARS = ("CPATH", "C_INCLUDE_PATH")


@dataclass
class Liburing:
    """Where liburing.h was found, and the library folders to link and run with."""
    include: str
    source: str                 # the variable that named `include`, or "system"
    lib_dirs: list

    def flags(self):
        """-I/-L (and an rpath, so the program runs without LD_LIBRARY_PATH) for
        folders outside the system's: the build does not rely on gcc reading the
        environment."""
        out = [] if self.source == "system" else ["-I", self.include]
        for d in self.lib_dirs:
            out += ["-L", d, f"-Wl,-rpath,{d}"]
        return out

    def describe(self):
        where = (self.include if self.source == "system"
                 else f"{self.include} (from {self.source})")
        libs = f", libraries from {':'.join(self.lib_dirs)}" if self.lib_dirs else ""
        return f"liburing.h in {where}{libs}"


def find_liburing(environ=None):
    """(Liburing, None), or (None, why) naming every folder searched."""
    environ = os.environ if environ is None else environ
    searched = [(d, var) for var in INCLUDE_VARS for d in _path_list(environ.get(var))]
    searched.append((SYSTEM_INCLUDE, "system"))
    for include, source in searched:
        if os.path.isfile(os.path.join(include, "liburing.h")):
            lib_dirs = _path_list(environ.get("LIBRARY_PATH"))
            if source != "system":
                lib_dirs += _libs_beside(include)
            return Liburing(include, source, list(dict.fromkeys(lib_dirs))), None
    places = ", ".join(d if s == "system" else f"{d} ({s})" for d, s in searched)
    return None, (f"liburing.h is in none of {places} (apt-get install liburing-dev, or "
                  f"unpack its .deb with dpkg -x and set C_INCLUDE_PATH to its usr/include)")


def _path_list(value):
    """The existing folders of a colon-separated list, absolute."""
    return [os.path.abspath(d) for d in (value or "").split(":") if d and os.path.isdir(d)]


def _libs_beside(include):
    """The folders holding liburing.so under the same prefix as `include` (PREFIX/lib,
    PREFIX/lib64 or a multiarch PREFIX/lib/<triplet>, as a .deb lays them out)."""
    prefix = os.path.dirname(include)
    found = []
    for pattern in ("lib", "lib64", "lib/*"):
        for d in sorted(glob.glob(os.path.join(prefix, pattern))):
            if glob.glob(os.path.join(d, "liburing.so*")):
                found.append(d)
    return found


def build_c(name, workdir, environ=None):
    """Compile c-sources/<name>.c against liburing; returns (path, None) or (None, why)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None, "no C compiler (cc) on PATH"
    liburing, why = find_liburing(environ)
    if liburing is None:
        return None, why
    out = os.path.join(workdir, name)
    proc = subprocess.run([cc, "-O2", *liburing.flags(), "-o", out,
                           os.path.join(C_DIR, name + ".c"), "-luring", "-lpthread"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return None, f"cc failed ({liburing.describe()}): {_first_error(proc.stderr)}"
    return out, None


def _first_error(stderr):
    """The line that says what went wrong (collect2's summary line says nothing)."""
    lines = stderr.strip().splitlines() or ["no output"]
    return next((line for line in lines if not line.startswith("collect2")
                 and ("error" in line or "cannot find" in line)), lines[-1])


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
