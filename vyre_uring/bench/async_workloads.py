"""The asyncio rows of `vyre-uring bench`: vyre_uring.aio against aiofiles, anyio
and asyncio.to_thread (each run in a fresh default event loop, timing only its own
coroutine), with the synchronous read_files as the ceiling. A contender that is not
installed says so (pip install 'vyre-uring[bench]')."""
import asyncio
import os
import pathlib
import random
import time

import vyre_uring
from vyre_uring import aio

from . import cache
from .harness import Contender, Workload, missing


def async_workloads(ctx):
    paths, size = ctx.data.small, ctx.sizes.file_size
    sample = min(len(paths), 200)
    warm = Workload("aio files warm", "files/s", _files_contenders(paths, size),
                    lambda: cache.warm(paths, sample), reference="aiofiles")
    why = cache.can_drop()
    cold_rows = _files_contenders(paths, size, cold=True)
    if why:
        cold = Workload("aio files cold", "files/s",
                        [Contender(c.name, why=why) for c in cold_rows], reference="aiofiles")
    else:
        cold = Workload("aio files cold", "files/s", cold_rows,
                        lambda: cache.drop(paths, sample), reference="aiofiles")
    return [warm, cold, _latency_workload(ctx)]


def _in_loop(count, body):
    """Run body() in a fresh event loop; `count` operations per second of body alone."""
    async def timed():
        start = time.perf_counter()
        await body()
        return count / (time.perf_counter() - start)
    return asyncio.run(timed())


def _files_contenders(paths, size, cold=False):
    n = len(paths)

    def checked(label, read_all):
        async def body():
            out = await read_all()
            if any(len(d) != size for d in out):
                raise AssertionError(f"{label}: wrong sizes")
        return Contender(label, lambda: _in_loop(n, body))

    async def aiofiles_all():
        import aiofiles

        async def one(p):
            async with aiofiles.open(p, "rb") as f:
                return await f.read()
        return await asyncio.gather(*map(one, paths))

    async def anyio_all():
        import anyio
        return await asyncio.gather(*(anyio.Path(p).read_bytes() for p in paths))

    async def to_thread_all():
        return await asyncio.gather(*(asyncio.to_thread(pathlib.Path(p).read_bytes)
                                      for p in paths))

    def sync():
        start = time.perf_counter()
        out = vyre_uring.read_files(paths)
        rate = n / (time.perf_counter() - start)
        if any(len(d) != size for d in out):
            raise AssertionError("read_files: wrong sizes")
        return rate
    rows = [checked("vyre aio read_files()", lambda: aio.read_files(paths)),
            checked("vyre aio gather(read_file)",
                    lambda: asyncio.gather(*map(aio.read_file, paths))),
            _optional("aiofiles", checked("aiofiles", aiofiles_all))]
    if not cold:
        rows += [_optional("anyio", checked("anyio Path.read_bytes", anyio_all)),
                 checked("asyncio.to_thread", to_thread_all),
                 Contender("vyre read_files() sync", sync)]
    return rows


def _optional(module, contender):
    why = missing(module, "bench")
    return Contender(contender.name, why=why) if why else contender


def _latency_workload(ctx):
    """One awaited 4 KiB read at a time, at random offsets of the cached large file."""
    path, bs = ctx.data.big, 4096
    count = max(1000, ctx.sizes.qd1_reads // 4)
    rnd = random.Random(4)
    blocks = (ctx.sizes.file_mib << 20) // bs
    offsets = [rnd.randrange(blocks) * bs for _ in range(count)]

    def pread():
        fd = os.open(path, os.O_RDONLY)
        try:
            start = time.perf_counter()
            for off in offsets:
                if len(os.pread(fd, bs, off)) != bs:
                    raise AssertionError("os.pread: short read")
            return count / (time.perf_counter() - start)
        finally:
            os.close(fd)

    async def vyre_file():
        async with aio.open(path, "rb") as f:
            for off in offsets:
                f.seek(off)
                if len(await f.read(bs)) != bs:
                    raise AssertionError("AsyncFile.read: short read")

    async def vyre_ring():
        ring = aio.loop_ring()
        buf = bytearray(bs)
        fd = os.open(path, os.O_RDONLY)
        try:
            for off in offsets:
                if await ring.read(fd, buf, off) != bs:
                    raise AssertionError("LoopRing.read: short read")
        finally:
            os.close(fd)

    async def aiofiles_read():
        import aiofiles
        async with aiofiles.open(path, "rb") as f:
            for off in offsets:
                await f.seek(off)
                if len(await f.read(bs)) != bs:
                    raise AssertionError("aiofiles: short read")
    return Workload("aio 4k read latency", "reads/s", [
        Contender("os.pread", pread),
        Contender("vyre aio AsyncFile.read", lambda: _in_loop(count, vyre_file)),
        Contender("vyre aio LoopRing.read", lambda: _in_loop(count, vyre_ring)),
        _optional("aiofiles", Contender("aiofiles seek+read",
                                        lambda: _in_loop(count, aiofiles_read))),
    ], lambda: cache.warm([path]), reference="os.pread")
