"""The GPU rows of `vyre-uring bench`, where torch sees a CUDA device: a synthetic
bf16 checkpoint shaped like Llama-3-8B (scaled to --gpu-gib), as one file and as
four shards, loaded onto cuda:0 warm, cold (page cache dropped and checked) and
from tmpfs, by vyre_uring.safetensors and by every loader installed here. The
ceilings of the same run: pinned host-to-device copy, and our read into host
memory (a reused buffer the size of the staging); cold, the disk's sequential
O_DIRECT rate (dd). Rates are GB/s (1e9), of the checkpoint's data. The checkpoint
is written the first time a selected GPU row runs, in the run's directory, and
removed with it."""
import gc
import importlib.util
import json
import os
import random
import shutil
import struct
import subprocess
import time

from . import cache
from .._staging import REQUEST_BYTES, STAGING_DEFAULT, _huge_pages
from .harness import Contender, Workload

REFERENCE = "safetensors load_file"
SHARDS = 4
# Llama-3-8B: (rows, cols) of each layer's matrices, and the model-wide ones.
HIDDEN, KV, FFN, VOCAB, LAYERS = 4096, 1024, 14336, 128256, 32
LAYER = {"self_attn.q_proj.weight": (HIDDEN, HIDDEN), "self_attn.k_proj.weight": (KV, HIDDEN),
         "self_attn.v_proj.weight": (KV, HIDDEN), "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
         "mlp.gate_proj.weight": (FFN, HIDDEN), "mlp.up_proj.weight": (FFN, HIDDEN),
         "mlp.down_proj.weight": (HIDDEN, FFN), "input_layernorm.weight": (HIDDEN,),
         "post_attention_layernorm.weight": (HIDDEN,)}


def gpu_workloads(ctx):
    why = _why_no_gpu()
    ckpt = Checkpoint(ctx.data.root, ctx.sizes.gpu_gib)
    ctx.owned.append(ckpt)                      # its tmpfs copy goes at the end
    rows = {"warm": _warm_rows, "cold": _cold_rows, "tmpfs": _tmpfs_rows}
    out = []
    for kind, make in rows.items():
        contenders = make(ckpt, why)
        before = None if why else getattr(ckpt, f"before_{kind}")
        drop_why = cache.can_drop() if kind == "cold" else None
        if drop_why:
            contenders = [Contender(c.name, why=drop_why) for c in contenders]
        out.append(Workload(f"gpu load {ctx.sizes.gpu_gib} GiB {kind}", "GB/s", contenders,
                            before, reference=REFERENCE))
    return out


def _why_no_gpu():
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (the GPU rows load into torch tensors)"
    import torch
    if not torch.cuda.is_available():
        return "no CUDA device here"
    return None


def _loaders(ckpt, why, names, tmpfs=False):
    """Contenders for `names` (from LOADERS), each timed on the checkpoint (its
    copy on /dev/shm with tmpfs=True)."""
    out = []
    for name in names:
        needs, fn = LOADERS[name]
        reason = why or (needs and _missing(needs))
        out.append(Contender(name, why=reason) if reason else
                   Contender(name, lambda fn=fn: ckpt.timed(fn, tmpfs)))
    return out


def _missing(module):
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed"
    return None


def _warm_rows(ckpt, why):
    ceilings = [Contender("pinned copy to GPU (ceiling)", why=why) if why else
                Contender("pinned copy to GPU (ceiling)", ckpt.copy_ceiling),
                Contender("vyre read to host (ceiling)", why=why) if why else
                Contender("vyre read to host (ceiling)", ckpt.read_ceiling)]
    return ceilings + _loaders(ckpt, why, list(LOADERS))


def _cold_rows(ckpt, why):
    disk = Contender("disk sequential, dd O_DIRECT", why=why) if why else \
        Contender("disk sequential, dd O_DIRECT", ckpt.disk_rate)
    return [disk] + _loaders(ckpt, why, ["vyre load_file", "vyre load_files (4 shards)",
                                         REFERENCE, "InstantTensor URING (O_DIRECT)",
                                         "InstantTensor URING_BUFFERED", "fastsafetensors"])


def _tmpfs_rows(ckpt, why):
    return _loaders(ckpt, why, ["vyre load_file", REFERENCE, "InstantTensor MMAP"],
                    tmpfs=True)


class Checkpoint:
    """The synthetic checkpoint: made on first use, timed loads of it."""

    def __init__(self, root, gib):
        self.root, self.gib = root, gib
        self.single = os.path.join(root, "model.safetensors")
        self.shards = [os.path.join(root, f"model-{k + 1:05d}-of-{SHARDS:05d}.safetensors")
                       for k in range(SHARDS)]
        self.shm = os.path.join("/dev/shm", f"vyre-bench-{os.getpid()}.safetensors")
        self.nbytes = None

    # --- the file -----------------------------------------------------------------
    def make(self):
        if self.nbytes is not None:
            return
        tensors = _tensors(self.gib << 30)
        self.nbytes = sum(_nbytes(shape) for shape in tensors.values())
        block = random.Random(7).randbytes(64 << 20)
        _write(self.single, tensors, block)
        names = list(tensors)
        per = -(-len(names) // SHARDS)
        for k, path in enumerate(self.shards):
            _write(path, {n: tensors[n] for n in names[k * per:(k + 1) * per]}, block)

    def files(self):
        return [self.single, *self.shards]

    def before_warm(self):
        self.make()
        return _warm(self.files())

    def before_cold(self):
        self.make()
        gc.collect()        # a loader's lingering mmap would keep its pages cached
        return cache.drop(self.files(), sample=None)

    def before_tmpfs(self):
        self.make()
        if not os.path.exists(self.shm):
            shutil.copyfile(self.single, self.shm)
        return "tmpfs (/dev/shm)"

    def close(self):
        if os.path.exists(self.shm):
            os.unlink(self.shm)

    # --- the rows -----------------------------------------------------------------
    def timed(self, load, tmpfs=False):
        """GB/s of load(path, shards) -> bytes it placed on the GPU, checked against
        the data."""
        import torch
        torch.cuda.synchronize()
        start = time.perf_counter()
        placed = load(self.shm if tmpfs else self.single, self.shards)
        torch.cuda.synchronize()
        rate = self.nbytes / (time.perf_counter() - start) / 1e9
        if placed != self.nbytes:
            raise AssertionError(f"a loader placed {placed} bytes of {self.nbytes}")
        return rate

    def copy_ceiling(self):
        import torch
        piece = 1 << 30
        host = getattr(self, "_pinned", None)
        if host is None:
            host = self._pinned = torch.empty(piece, dtype=torch.uint8, pin_memory=True)
        dest = torch.empty(self.nbytes, dtype=torch.uint8, device="cuda")
        torch.cuda.synchronize()
        start = time.perf_counter()
        for at in range(0, self.nbytes, piece):
            n = min(piece, self.nbytes - at)
            dest[at:at + n].copy_(host[:n], non_blocking=True)
        torch.cuda.synchronize()
        return self.nbytes / (time.perf_counter() - start) / 1e9

    def read_ceiling(self):
        """Our reads of the whole file without the copies, in the pipeline's memory
        footprint: every ring reads REQUEST_BYTES pieces into one reused buffer of
        the default staging's size, on huge pages, as the pipeline's slots are (a
        reused buffer stays in the CPU's cache: a file-sized one would measure DRAM
        instead)."""
        import vyre_uring
        size = os.path.getsize(self.single)
        host = getattr(self, "_host", None)
        if host is None:
            host = self._host = vyre_uring.alloc_buffer(STAGING_DEFAULT)
            _huge_pages(host)
            for at in range(0, len(host), 1 << 20):
                host[at] = 1
        piece, slots = REQUEST_BYTES, STAGING_DEFAULT // REQUEST_BYTES
        offsets = range(0, size, piece)
        lengths = [min(piece, size - o) for o in offsets]
        into = [(k % slots) * piece for k in range(len(offsets))]
        start = time.perf_counter()
        got = vyre_uring.read_ranges_into(self.single, host, offsets, lengths, into)
        rate = size / (time.perf_counter() - start) / 1e9
        if sum(got) != size:
            raise AssertionError(f"short read: {sum(got)} of {size} bytes")
        return rate

    def disk_rate(self):
        start = time.perf_counter()
        subprocess.run(["dd", f"if={self.single}", "of=/dev/null", "bs=64M", "iflag=direct"],
                       check=True, capture_output=True)
        return os.path.getsize(self.single) / (time.perf_counter() - start) / 1e9


def _warm(paths):
    """Warm unless already resident: reading 2 x gpu_gib before every run would
    double the bench's time and evict nothing new."""
    if min(cache.resident_fraction(p) for p in paths) >= cache.WARM_AT_LEAST:
        return "warm (resident)"
    return cache.warm(paths)


def _tensors(target):
    """{name: shape} of a Llama-3-8B-shaped model with as many layers as fit `target`
    bytes of bf16 (at least one)."""
    per_layer = sum(_nbytes(s) for s in LAYER.values())
    edges = 2 * _nbytes((VOCAB, HIDDEN)) + _nbytes((HIDDEN,))
    layers = max(1, min(LAYERS * 4, (target - edges) // per_layer))
    out = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        for name, shape in LAYER.items():
            out[f"model.layers.{i}.{name}"] = shape
    out["model.norm.weight"] = (HIDDEN,)
    out["lm_head.weight"] = (VOCAB, HIDDEN)
    return out


def _nbytes(shape):
    n = 2
    for d in shape:
        n *= d
    return n


def _write(path, tensors, block):
    header, at = {}, 0
    for name, shape in tensors.items():
        header[name] = {"dtype": "BF16", "shape": list(shape),
                        "data_offsets": [at, at + _nbytes(shape)]}
        at += _nbytes(shape)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        left = at
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n


# --- the loaders: fn(checkpoint) -> bytes placed on cuda:0 -----------------------------

def _sum_bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def _vyre_file(path, shards):
    from vyre_uring import safetensors
    return _sum_bytes(safetensors.load_file(path, device="cuda").values())


def _vyre_shards(path, shards):
    from vyre_uring import safetensors
    return _sum_bytes(safetensors.load_files(shards, device="cuda").values())


def _safetensors(path, shards):
    from safetensors.torch import load_file
    return _sum_bytes(load_file(path, device="cuda").values())


def _safe_open_to(path, shards):
    from safetensors import safe_open
    with safe_open(path, framework="pt", device="cpu") as f:
        return _sum_bytes([f.get_tensor(k).to("cuda") for k in f.keys()])


def _fastsafetensors(path, shards):
    from fastsafetensors import fastsafe_open
    with fastsafe_open(filenames=[path], nogds=True, device="cuda:0") as f:
        return _sum_bytes([f.get_tensor(k) for k in f.keys()])


def _instanttensor(backend):
    def load(path, shards):
        from instanttensor import Backend, safe_open
        with safe_open(path, framework="pt", device=0,
                       backend=getattr(Backend, backend)) as f:
            return _sum_bytes([t for _, t in f.tensors()])
    return load


def _kvikio(path, shards):
    """The data section into one device buffer (no tensors made): kvikio's part."""
    os.environ.setdefault("KVIKIO_COMPAT_MODE", "ON")   # POSIX reads, no GDS
    import kvikio
    import torch
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
    data = os.path.getsize(path) - 8 - length
    dest = torch.empty(data, dtype=torch.uint8, device="cuda")
    with kvikio.CuFile(path, "r") as f:
        return f.pread(dest, data, 8 + length).get()


LOADERS = {
    "vyre load_file": (None, _vyre_file),
    "vyre load_files (4 shards)": (None, _vyre_shards),
    REFERENCE: ("safetensors", _safetensors),
    "safe_open + .to(cuda)": ("safetensors", _safe_open_to),
    "fastsafetensors": ("fastsafetensors", _fastsafetensors),
    "InstantTensor MMAP": ("instanttensor", _instanttensor("MMAP")),
    "InstantTensor URING_BUFFERED": ("instanttensor", _instanttensor("URING_BUFFERED")),
    "InstantTensor URING (O_DIRECT)": ("instanttensor", _instanttensor("URING")),
    "kvikio CuFile (compat), data only": ("kvikio", _kvikio),
}
