"""A small read-only FUSE filesystem for tests, served from Python over /dev/fuse (no
libfuse): files that the kernel reads only through us, so a test can make them
behave as remote or odd filesystems do. Its files are one flat directory of
{name: bytes}. Tests serve it from another process (`served`): a process that
reads its own FUSE mount cannot exit while the kernel waits on its answers. `short_reads=n`: every read answers at most n bytes (the files are
opened FOPEN_DIRECT_IO, so the caller sees short reads before EOF, as from some
network and FUSE filesystems). `lookup_delay`: seconds each name lookup and
attribute fetch waits, as on a network filesystem with nothing cached (names and
attributes are never cached here, so every path walk asks). `read_delay`: seconds
each read waits, as over a network; `most_reads` is then how many reads were ever
waiting at once (`served` reports it).

Mounting needs CAP_SYS_ADMIN and /dev/fuse: `fuse_unavailable()` says why not."""
import contextlib
import ctypes
import errno
import json
import os
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time

_IN_HEADER = struct.Struct("<IIQQIIIHH")       # fuse_in_header: 40 bytes
_OUT_HEADER = struct.Struct("<IiQ")            # fuse_out_header
_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")      # fuse_attr: 88 bytes
_ENTRY = struct.Struct("<QQQQII")              # fuse_entry_out before its attr
_ATTR_OUT = struct.Struct("<QII")              # fuse_attr_out before its attr
_INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")    # fuse_init_out: 64 bytes
_OPEN_OUT = struct.Struct("<QII")
_READ_IN = struct.Struct("<QQII")              # fh, offset, size, read_flags

LOOKUP, FORGET, GETATTR, OPEN, READ, STATFS, RELEASE = 1, 2, 3, 14, 15, 17, 18
FLUSH, INIT, OPENDIR, RELEASEDIR, INTERRUPT, DESTROY, BATCH_FORGET = 25, 26, 27, 29, 36, \
    38, 42
_NO_REPLY = {FORGET, BATCH_FORGET, INTERRUPT}
_FOPEN_DIRECT_IO = 1
_MS_NOSUID, _MS_NODEV, _MNT_DETACH = 2, 4, 2
_ROOT = 1


_why_not = []


def fuse_unavailable():
    """Why a FuseFS cannot be mounted here, or None: found once, by mounting one
    (with no server: the mount does not wait for one) and unmounting it."""
    if not _why_not:
        _why_not.append(_try_mount())
    return _why_not[0]


def _try_mount():
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/fuse: {exc.strerror}"
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        with tempfile.TemporaryDirectory() as mnt:
            options = f"fd={fd},rootmode=40000,user_id=0,group_id=0".encode()
            if libc.mount(b"vyre-test", mnt.encode(), b"fuse", _MS_NOSUID | _MS_NODEV,
                          options) != 0:
                return (f"mounting a FUSE filesystem here fails: "
                        f"{os.strerror(ctypes.get_errno())} (it needs CAP_SYS_ADMIN)")
            libc.umount2(mnt.encode(), _MNT_DETACH)
    finally:
        os.close(fd)
    return None


class FuseFS:
    """Mounted at `mountpoint` by start(), unmounted by close() (also as a context
    manager). `requests` counts the requests of each opcode served."""

    def __init__(self, mountpoint, files, short_reads=None, lookup_delay=0.0, read_delay=0.0,
                 threads=8, direct_io=True, statfs=True):
        self.mountpoint = str(mountpoint)
        self.names = sorted(files)
        self.data = [files[n] for n in self.names]
        self.short_reads = short_reads
        self.direct_io = direct_io
        self.statfs = statfs
        self.lookup_delay = lookup_delay
        self.read_delay = read_delay
        self.requests = {}
        self.most_reads = 0
        self._reads = 0
        self._count = threading.Lock()
        self._threads = threads
        self._fd = -1
        self._workers = []

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self):
        self._fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        libc = ctypes.CDLL(None, use_errno=True)
        options = f"fd={self._fd},rootmode=40000,user_id=0,group_id=0".encode()
        if libc.mount(b"vyre-test", self.mountpoint.encode(), b"fuse",
                      _MS_NOSUID | _MS_NODEV, options) != 0:
            err = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(err, f"mount fuse: {os.strerror(err)}", self.mountpoint)
        for _ in range(self._threads):
            t = threading.Thread(target=self._serve, daemon=True)
            t.start()
            self._workers.append(t)

    def close(self):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.umount2(self.mountpoint.encode(), _MNT_DETACH)
        for t in self._workers:
            t.join(5)           # their reads end with ENODEV once unmounted
        os.close(self._fd)

    # ---- serving --------------------------------------------------------------------

    def _serve(self):
        while True:
            try:
                request = os.read(self._fd, (1 << 20) + 4096)
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue        # ENOENT: a request interrupted before we read it
                return              # ENODEV: unmounted
            _, opcode, unique, node, *_ = _IN_HEADER.unpack_from(request)
            self.requests[opcode] = self.requests.get(opcode, 0) + 1
            if opcode in _NO_REPLY:
                continue
            try:
                error, body = 0, self._answer(opcode, node, request[_IN_HEADER.size:])
            except OSError as exc:
                error, body = -exc.errno, b""
            try:
                os.write(self._fd, _OUT_HEADER.pack(_OUT_HEADER.size + len(body), error,
                                                    unique) + body)
            except OSError:
                pass                # the request was interrupted meanwhile

    def _answer(self, opcode, node, body):
        if opcode == INIT:
            major, minor = struct.unpack_from("<II", body)
            return _INIT_OUT.pack(7, min(minor, 31), 0, 0, 16, 12, 1 << 20, 1, 256, 0, 0,
                                  *[0] * 7)
        if opcode == LOOKUP:
            time.sleep(self.lookup_delay)
            name = body.split(b"\0", 1)[0].decode()
            if node != _ROOT or name not in self.names:
                raise OSError(errno.ENOENT, name)
            ino = self.names.index(name) + 2
            return _ENTRY.pack(ino, 1, 0, 0, 0, 0) + self._attr(ino)
        if opcode == GETATTR:
            time.sleep(self.lookup_delay)
            return _ATTR_OUT.pack(0, 0, 0) + self._attr(node)
        if opcode in (OPEN, OPENDIR):
            return _OPEN_OUT.pack(0, _FOPEN_DIRECT_IO if opcode == OPEN and self.direct_io else 0,
                                  0)
        if opcode == READ:
            self._waiting(self.read_delay)
            _, offset, size, _ = _READ_IN.unpack_from(body)
            if self.short_reads:
                size = min(size, self.short_reads)
            return self.data[node - 2][offset:offset + size]
        if opcode == STATFS and self.statfs:
            return bytes(80)                # fuse_statfs_out: all zeros will do
        if opcode in (RELEASE, RELEASEDIR, FLUSH, DESTROY):
            return b""
        raise OSError(errno.ENOSYS, "not served")

    def _waiting(self, seconds):
        with self._count:
            self._reads += 1
            self.most_reads = max(self.most_reads, self._reads)
        time.sleep(seconds)
        with self._count:
            self._reads -= 1

    def _attr(self, ino):
        if ino == _ROOT:
            mode, size = stat.S_IFDIR | 0o555, 0
        else:
            mode, size = stat.S_IFREG | 0o444, len(self.data[ino - 2])
        return _ATTR.pack(ino, size, (size + 511) // 512, 0, 0, 0, 0, 0, 0, mode, 1, 0, 0,
                          0, 4096, 0)


@contextlib.contextmanager
def served(mountpoint, source, report=None, **options):
    """The regular files of the folder `source`, served at `mountpoint` by a FuseFS
    in a child process (options as FuseFS takes them), until the block ends. Then
    the server unmounts and ends, and `report` (a dict) gets its `most_reads`; if it
    cannot end (a file on it is still open: the kernel keeps a lazily unmounted
    filesystem while one is), it is killed and this raises."""
    child = subprocess.Popen([sys.executable, __file__, str(mountpoint), str(source),
                              json.dumps(options)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if child.stdout.readline().strip() != "mounted":
            raise RuntimeError("the FUSE server did not start")
        yield str(mountpoint)
    finally:
        child.stdin.close()                 # it unmounts and ends
        try:
            code = child.wait(10)
            if report is not None and code == 0:
                report.update(json.loads(child.stdout.readline()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            ctypes.CDLL(None).umount2(str(mountpoint).encode(), _MNT_DETACH)
            code = None
    if code != 0:
        raise RuntimeError(f"the FUSE server did not end cleanly (exit {code}): is a "
                           f"file on it still open?")


def _serve_folder(mountpoint, source, options):
    files = {}
    for name in sorted(os.listdir(source)):
        with open(os.path.join(source, name), "rb") as f:
            files[name] = f.read()
    fs = FuseFS(mountpoint, files, **options)
    fs.start()
    print("mounted", flush=True)
    sys.stdin.read()                        # until the test closes our stdin
    fs.close()
    print(json.dumps({"most_reads": fs.most_reads}), flush=True)


if __name__ == "__main__":
    _serve_folder(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
