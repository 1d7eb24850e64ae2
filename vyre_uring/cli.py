"""The vyre-uring command line.

    vyre-uring read [PATH...] [--files-from FILE [-0]] [-r] [--checksum ALGO] [--json] ...
    vyre-uring info [--json]
    vyre-uring bench [--quick] [--json FILE] [--plot FILE.png] ...

`read` reads files through vyre_uring.BatchReader and prints checksums in
sha256sum's format; `info` says whether io_uring works here and what it offers.
main() returns the exit status (it never calls sys.exit), so tests can run it
in-process; the console script passes that status to sys.exit.
"""
import argparse
import base64
import json
import os
import resource
import sys
import textwrap
import time
import warnings

import vyre_uring

from ._read_command import READ_RINGS, ReadPipeline

PROG = "vyre-uring"
CHECKSUMS = ("crc32", "blake2b", "sha256")
BACKENDS = ("auto", "io_uring", "threads")

# Exit statuses, as coreutils tools use them.
EXIT_OK = 0
EXIT_FILE_FAILED = 1        # some file could not be read (the others were)
EXIT_USAGE = 2              # bad arguments
EXIT_WRITE_ERROR = 3        # standard output could not be written (a full disk, closed)
EXIT_INTERRUPTED = 130      # Ctrl-C (128 + SIGINT)
EXIT_BROKEN_PIPE = 141      # the reader of our output went away (128 + SIGPIPE), quietly
EXIT_STATUSES = f"""exit status:
  {EXIT_OK}    every file was read
  {EXIT_FILE_FAILED}    some file could not be read (each is reported; the others were read)
  {EXIT_USAGE}    bad arguments
  {EXIT_WRITE_ERROR}    standard output could not be written (e.g. no space left)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
  {EXIT_BROKEN_PIPE}  standard output was closed by its reader (e.g. | head); nothing is printed"""

# IORING_FEAT_* bits (include/uapi/linux/io_uring.h). The package exports only three
# of them; the rest are named here so `info` can decode what newer kernels report.
FEATURE_NAMES = {
    vyre_uring.FEAT_SINGLE_MMAP: "SINGLE_MMAP", vyre_uring.FEAT_NODROP: "NODROP",
    1 << 2: "SUBMIT_STABLE", 1 << 3: "RW_CUR_POS", 1 << 4: "CUR_PERSONALITY",
    1 << 5: "FAST_POLL", 1 << 6: "POLL_32BITS", 1 << 7: "SQPOLL_NONFIXED",
    vyre_uring.FEAT_EXT_ARG: "EXT_ARG", 1 << 9: "NATIVE_WORKERS", 1 << 10: "RSRC_TAGS",
    1 << 11: "CQE_SKIP", 1 << 12: "LINKED_FILE", 1 << 13: "REG_REG_RING",
    1 << 14: "RECVSEND_BUNDLE", 1 << 15: "MIN_TIMEOUT", 1 << 16: "RW_ATTR",
    1 << 17: "NO_IOWAIT",
}

# Ring.probe() returns plain ints for opcodes newer than the engine's Op enum (which
# stops at MSG_RING = 40); these are their names in the kernel's enum io_uring_op.
NEWER_OPCODES = dict(enumerate((
    "FSETXATTR", "SETXATTR", "FGETXATTR", "GETXATTR", "SOCKET", "URING_CMD", "SEND_ZC",
    "SENDMSG_ZC", "READ_MULTISHOT", "WAITID", "FUTEX_WAIT", "FUTEX_WAKE", "FUTEX_WAITV",
    "FIXED_FD_INSTALL", "FTRUNCATE", "BIND", "LISTEN", "RECV_ZC", "EPOLL_WAIT",
    "READV_FIXED", "WRITEV_FIXED", "PIPE"), start=41))


# ---- argument parsing ----------------------------------------------------------------

def _positive_int(text):
    """argparse type: an int >= 1 (the reader checks upper bounds itself)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description="Read files through io_uring (vyre_uring), or report "
                               "what io_uring offers on this machine.",
        epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {vyre_uring.__version__}",
                        help="print the vyre_uring version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_read_parser(sub)
    _add_info_parser(sub)
    _add_bench_parser(sub)
    return parser


def _add_read_parser(sub):
    p = sub.add_parser(
        "read", help="read files and print checksums and throughput",
        description="Read every PATH whole with vyre_uring.BatchReader. Failures are "
                    "reported on stderr as 'vyre-uring: PATH: REASON' and the others are "
                    "still read. Without --checksum or --json only failures and the "
                    "summary are printed. Memory stays bounded (about 50 MiB of file "
                    "contents) whatever the files: large files are read and hashed in "
                    "pieces, and hashing runs on every core while the next files are read.",
        epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="files to read (directories need -r)")
    p.add_argument("--files-from", metavar="FILE",
                   help="also read the paths listed in FILE, one per line ('-': standard "
                        "input), after any PATH arguments; e.g. find ... -print0 | "
                        "vyre-uring read --files-from - -0")
    p.add_argument("-0", "--null", action="store_true",
                   help="--files-from names end with a NUL byte, not a newline")
    p.add_argument("-r", "--recursive", action="store_true",
                   help="read the files under directory arguments, recursively (top-down: "
                        "a directory's files by name, then its subdirectories); symlinks "
                        "to files are read, symlinked directories below an argument are "
                        "not entered")
    p.add_argument("--checksum", choices=CHECKSUMS,
                   help="print one line per file in sha256sum's format: hex digest, two "
                        "spaces, path (crc32: 8 hex digits of zlib.crc32)")
    p.add_argument("--backend", choices=BACKENDS,
                   help="reader backend (default: auto, i.e. io_uring, falling back to "
                        "threads where io_uring is blocked, unless the environment "
                        f"variable {_backend_env()} names one); --backend wins over it")
    p.add_argument("--queue-depth", type=_positive_int, metavar="N",
                   help="io_uring queue depth per ring (the reader's default if not given)")
    p.add_argument("--workers", type=_positive_int, metavar="N",
                   help="how many reads run in parallel: io_uring rings (each with its "
                        "thread) for the io_uring backend, pool threads for the threads "
                        f"backend (default: one per core, at most {READ_RINGS}: hashing "
                        "runs on every core regardless)")
    p.add_argument("--direct", action="store_true",
                   help="read with O_DIRECT, bypassing the page cache (files on "
                        "filesystems that refuse it are read buffered; the summary "
                        "counts them)")
    p.add_argument("--progress", action="store_true",
                   help="show a progress bar over files on stderr (needs tqdm)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no summary line on stderr (failures are still reported)")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object on stdout: {"files": [{"path", "bytes", '
                        '"checksum"?, "error"?}...], "summary": {...}}. A file name that '
                        'is not valid UTF-8 has U+FFFD for its bad bytes in "path" and '
                        'its exact bytes, base64-encoded, in "path_bytes" (jq: '
                        '.path_bytes | @base64d)')
    # The subparser rides along so that errors found later show `read`'s usage.
    p.set_defaults(func=cmd_read, subparser=p)


def _add_info_parser(sub):
    p = sub.add_parser(
        "info", help="report whether io_uring works here and what the kernel offers",
        description="Kernel version, whether io_uring works in this process (and if not, "
                    "why), ring features, supported opcodes and RLIMIT_MEMLOCK. Exits 0 "
                    "even when io_uring is unavailable.")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_info, subparser=p)


def _add_bench_parser(sub):
    from . import bench
    p = sub.add_parser(
        "bench", help="measure vyre_uring against C liburing, fio and plain Python here",
        description=bench.__doc__.split("\n\n")[0].replace("\n", " ") + " It makes its "
                    "own data in a temporary directory and removes it afterwards.")
    bench.add_arguments(p)
    p.set_defaults(func=cmd_bench, subparser=p)


def cmd_bench(args, parser):
    from . import bench
    return bench.run(args, parser.error)


def _backend_env():
    # Imported lazily from the reader so the name stays defined in one place.
    from .reader import BACKEND_ENV
    return BACKEND_ENV


def main(argv=None):
    """Run the command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            # A bare `vyre-uring` is a usage error: show what there is to run.
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        status = args.func(args, args.subparser)
        _flush_stdout()
        return status
    except SystemExit as exc:
        # argparse exits on --help and on bad arguments; return its status instead so
        # that callers (tests, the console script) see one way out.
        return exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `vyre-uring read ... | head`: the reader went away; that is not our failure,
        # and not worth a message (coreutils tools die of SIGPIPE there, silently).
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except WriteError as exc:
        _silence_stdout()
        _err(f"write error: {_reason(exc.__cause__)}")
        return EXIT_WRITE_ERROR


class WriteError(Exception):
    """Standard output could not be written; the OSError is the cause."""


def _silence_stdout():
    """Point fd 1 at /dev/null, so that the interpreter's final flush of what is
    still buffered fails no more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    except OSError:
        pass


def _flush_stdout():
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise WriteError() from exc


# ---- output helpers ------------------------------------------------------------------

def _write(stream, text):
    """Write text; a file name that is not valid in the stream's encoding (it carries
    surrogate escapes from os.walk) goes out as its original bytes, as sha256sum would
    print it, rather than crashing the run. A failed write to standard output (closed,
    full disk) raises WriteError; BrokenPipeError passes through."""
    if stream is None:                   # started with fd 1 (or 2) closed
        if text and stream is sys.stdout:
            raise WriteError() from OSError(9, os.strerror(9))
        return
    try:
        _write_text(stream, text)
    except BrokenPipeError:
        raise
    except OSError as exc:
        if stream is sys.stdout:
            raise WriteError() from exc
        # stderr itself failing: nowhere left to say so.


def _write_text(stream, text):
    try:
        stream.write(text)
    except UnicodeEncodeError:
        buffer = getattr(stream, "buffer", None)
        if buffer is None:
            stream.write(text.encode("ascii", "backslashreplace").decode("ascii"))
            return
        stream.flush()
        buffer.write(os.fsencode(text))
        buffer.flush()


def _err(message):
    _write(sys.stderr, f"{PROG}: {message}\n")


def _checksum_line(digest, path):
    """sha256sum's line: a name with a backslash or newline is escaped and the line
    starts with a backslash, so `sha256sum -c` reads it back."""
    if any(c in path for c in "\\\n\r"):
        escaped = path.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return f"\\{digest}  {escaped}\n"
    return f"{digest}  {path}\n"


def _reason(exc):
    """The strerror of an OSError ("No such file or directory"), else its text."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# ---- read: which paths ---------------------------------------------------------------

def iter_paths(args_paths, recursive):
    """(path, None) for every file to read, or (path, OSError) for a directory that
    could not be listed; lazily, so a huge tree is never held whole."""
    for path in args_paths:
        # An argument that names a directory (even through a symlink) is walked, as
        # grep -r does; only links found below it are not followed.
        if recursive and os.path.isdir(path):
            yield from _walk(path)
        else:
            # Without -r a directory goes to the reader, which reports IsADirectoryError.
            yield path, None


def _walk(top):
    listing_errors = []
    # followlinks=False: a symlinked directory shows up in dirnames but is not entered
    # (it may loop or leave the tree); a symlink to a file is in filenames and is read.
    for dirpath, dirnames, filenames in os.walk(top, onerror=listing_errors.append,
                                                followlinks=False):
        yield from _drain(listing_errors)
        dirnames.sort()                      # walk order is directory order otherwise
        for name in sorted(filenames):
            yield os.path.join(dirpath, name), None
    yield from _drain(listing_errors)


def _drain(errors):
    for exc in errors:
        yield exc.filename, exc
    errors.clear()


def listed_paths(source, null):
    """The names in a --files-from stream (binary), one per line or NUL-ended, as
    str (undecodable bytes as surrogate escapes, as os.walk gives them); read in
    blocks, so a list of millions starts at once. Empty names are skipped."""
    end = b"\0" if null else b"\n"
    rest = b""
    while True:
        block = source.read(1 << 16)
        if not block:
            break
        *names, rest = (rest + block).split(end)
        yield from (os.fsdecode(n) for n in names if n)
    if rest:
        yield os.fsdecode(rest)


def _arguments(args, listing):
    """The paths to read: the PATH arguments, then those of `listing` (the open
    --files-from stream, or None)."""
    yield from args.paths
    if listing is not None:
        yield from listed_paths(listing, args.null)


def _open_listing(args, parser):
    """The --files-from stream (binary), or None; a list that cannot be opened is a
    usage error."""
    if args.files_from is None:
        return None
    if args.files_from == "-":
        return sys.stdin.buffer
    try:
        return open(args.files_from, "rb")
    except OSError as exc:
        parser.error(f"cannot open --files-from {args.files_from}: {_reason(exc)}")


# ---- read: the reader ----------------------------------------------------------------

def reader_options(args, parser):
    """BatchReader keyword arguments for the options given (the rest keep the
    reader's defaults, but for at most READ_RINGS workers)."""
    workers = args.workers or min(READ_RINGS, vyre_uring.reader.default_workers())
    wanted = {"backend": args.backend, "queue_depth": args.queue_depth,
              "workers": workers, "direct": args.direct or None}
    return {k: v for k, v in wanted.items() if v is not None}


def open_reader(args, parser):
    options = reader_options(args, parser)
    try:
        with warnings.catch_warnings():
            # "auto" warns when it falls back to threads; the summary reports the
            # fallback and its reason, so the warning would only say it twice.
            warnings.simplefilter("ignore", RuntimeWarning)
            return vyre_uring.BatchReader(**options)
    except ValueError as exc:                # out-of-range queue depth and the like
        parser.error(str(exc))


def _progress_bar(args):
    """A tqdm bar on stderr, or None (with a note when tqdm is missing)."""
    if not args.progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        _err("note: --progress needs tqdm, which is not installed (pip install tqdm); "
             "continuing without a progress bar")
        return None
    # The total is known only when nothing is walked or listed (both are lazy).
    total = None if args.recursive or args.files_from is not None else len(args.paths)
    return tqdm(total=total, unit="file", file=sys.stderr, desc=PROG)


# ---- read: the command ---------------------------------------------------------------

class ReadRun:
    """Counts and output of one `read`: one record per path, in input order."""

    def __init__(self, args, bar):
        self.args = args
        self.bar = bar
        self.files = self.bytes = self.errors = 0
        self.first_record = True

    def start(self):
        if self.args.json:
            # Streamed: records go out as they are made, so memory stays bounded.
            _write(sys.stdout, '{"files": [')

    def record(self, path, result):
        """One path's outcome: (bytes, digest or None), or its OSError."""
        if isinstance(result, BaseException):
            self.errors += 1
            _err(f"{path}: {_reason(result)}")
            rec = {"bytes": None, "error": _reason(result)}
        else:
            nbytes, digest = result
            self.files += 1
            self.bytes += nbytes
            rec = {"bytes": nbytes}
            if digest is not None:
                rec["checksum"] = digest
                if not self.args.json:
                    _write(sys.stdout, _checksum_line(digest, path))
        if self.args.json:
            rec = {**_json_path(path), **rec}
            _write(sys.stdout, ("" if self.first_record else ", ") + json.dumps(rec))
            self.first_record = False
        if self.bar is not None:
            self.bar.update(1)

    def finish(self, reader, elapsed):
        summary = self.summary(reader, elapsed)
        if self.args.json:
            _write(sys.stdout, '], "summary": ' + json.dumps(summary) + "}\n")
        elif not self.args.quiet:
            _write(sys.stderr, _summary_text(summary) + "\n")

    def summary(self, reader, elapsed):
        stats = reader.stats()
        return {
            "files": self.files, "bytes": self.bytes, "errors": self.errors,
            "seconds": round(elapsed, 6),
            # Over the whole run's wall time: what the user waited for.
            "gb_per_s": round(self.bytes / elapsed / 1e9, 4) if elapsed > 0 else 0.0,
            "backend": stats.get("backend", reader.backend),
            "fallback_reason": stats.get("fallback_reason"),
            # The backend's own counters (None where it does not count them).
            **{k: stats.get(k) for k in ("syscalls", "operations", "short_reads",
                                         "direct_fallbacks")},
        }


def _json_path(path):
    """{"path": name} for a UTF-8 name; for one that is not, U+FFFD in "path" and its
    exact bytes in "path_bytes" (base64), so that no JSON tool mangles it."""
    raw = os.fsencode(path)
    try:
        return {"path": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"path": raw.decode("utf-8", "replace"),
                "path_bytes": base64.b64encode(raw).decode("ascii")}


def _summary_text(s):
    text = (f"{PROG}: files {s['files']}, bytes {s['bytes']}, errors {s['errors']}, "
            f"{s['seconds']:.3f} s, {s['gb_per_s']:.2f} GB/s, backend {s['backend']}")
    if s["fallback_reason"]:
        text += f" (io_uring unavailable, fell back to threads: {s['fallback_reason']})"
    if s["direct_fallbacks"]:
        text += (f"; O_DIRECT refused by the filesystem for {s['direct_fallbacks']} "
                 f"file(s), read buffered")
    return text


def cmd_read(args, parser):
    started = time.perf_counter()
    if not args.paths and args.files_from is None:
        parser.error("no PATH given (and no --files-from)")
    if args.null and args.files_from is None:
        parser.error("-0/--null applies to --files-from, which is not given")
    listing = _open_listing(args, parser)
    try:
        reader = open_reader(args, parser)
    except OSError as exc:                   # --backend io_uring where it is blocked
        _err(f"cannot use the {args.backend or 'auto'} backend: {exc}")
        return EXIT_FILE_FAILED
    bar = _progress_bar(args)
    run = ReadRun(args, bar)
    pipeline = ReadPipeline(reader, args.checksum)
    try:
        run.start()
        pipeline.run(iter_paths(_arguments(args, listing), args.recursive), run.record)
        if bar is not None:
            bar.close()                      # before the summary, so it is not overdrawn
        run.finish(reader, time.perf_counter() - started)
    finally:
        pipeline.close()
        reader.close()
        if listing is not None and listing is not sys.stdin.buffer:
            listing.close()
    return EXIT_FILE_FAILED if run.errors else EXIT_OK


# ---- info ----------------------------------------------------------------------------

def feature_names(bits):
    """(names of the set FEAT_* bits, [numbers of set bits we cannot name])."""
    names = [name for bit, name in sorted(FEATURE_NAMES.items()) if bits & bit]
    unknown = [i for i in range(32) if bits & (1 << i) and (1 << i) not in FEATURE_NAMES]
    return names, unknown


def opcode_name(op):
    if isinstance(op, vyre_uring.Op):
        return op.name
    return NEWER_OPCODES.get(int(op), f"OPCODE_{int(op)}")


def _memlock():
    def fmt(value):
        return "unlimited" if value == resource.RLIM_INFINITY else value
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return {"soft": fmt(soft), "hard": fmt(hard)}


def gather_info():
    avail = vyre_uring.check()
    info = {
        "vyre_uring": vyre_uring.__version__,
        "kernel": avail.kernel,
        "io_uring": {"available": avail.available, "reason": avail.reason,
                     "sysctl_io_uring_disabled": avail.sysctl,
                     "seccomp": _seccomp_mode(avail.seccomp)},
        "features": None, "opcodes": None,
        "rlimit_memlock": _memlock(),
    }
    if avail.available:
        _add_ring_info(info)
    return info


def _seccomp_mode(line):
    """The number in /proc/self/status's "Seccomp:\t2" line (0 none, 1 strict,
    2 filter), or None where the kernel does not say."""
    try:
        return int(line.split(":")[1])
    except (AttributeError, IndexError, ValueError):
        return None


def _add_ring_info(info):
    try:
        with vyre_uring.Ring(4) as ring:
            bits, ops = ring.features, ring.probe()
    except (OSError, vyre_uring.UringError) as exc:
        # check() made a 1-entry ring; a 4-entry one failing (memlock, say) is news.
        info["io_uring"]["ring_error"] = str(exc)
        return
    names, unknown = feature_names(bits)
    info["features"] = {"value": bits, "hex": f"{bits:#x}", "names": names,
                        "unknown_bits": unknown}
    info["opcodes"] = sorted(opcode_name(op) for op in ops)


def cmd_info(args, parser):
    info = gather_info()
    if args.json:
        _write(sys.stdout, json.dumps(info, indent=2) + "\n")
    else:
        _write(sys.stdout, _info_text(info))
    return 0                                 # a report, even of "unavailable"


def _info_text(info):
    uring = info["io_uring"]
    lines = [f"vyre_uring      {info['vyre_uring']}", f"kernel          {info['kernel']}"]
    if uring["available"]:
        lines.append("io_uring        available")
    else:
        lines.append("io_uring        NOT AVAILABLE in this process")
        lines += _wrapped("why", uring["reason"])
    if uring.get("ring_error"):
        lines += _wrapped("ring error", uring["ring_error"])
    features, opcodes = info["features"], info["opcodes"]
    if features is not None:
        extra = [f"bit{i}" for i in features["unknown_bits"]]
        lines += _wrapped("features", " ".join([features["hex"]] + features["names"] + extra))
    if opcodes is not None:
        lines += _wrapped(f"opcodes ({len(opcodes)})", " ".join(opcodes))
    if features is None and opcodes is None:
        lines.append("features        n/a (no ring)")
        lines.append("opcodes         n/a (no ring)")
    mem = info["rlimit_memlock"]
    lines.append(f"RLIMIT_MEMLOCK  soft {_bytes_text(mem['soft'])}, "
                 f"hard {_bytes_text(mem['hard'])}")
    return "\n".join(lines) + "\n"


def _wrapped(label, text):
    return textwrap.wrap(text, width=88, initial_indent=f"{label:<16}",
                         subsequent_indent=" " * 16, break_on_hyphens=False) or [label]


def _bytes_text(value):
    if value == "unlimited":
        return value
    return f"{value} bytes ({value / 1024:g} KiB)"
