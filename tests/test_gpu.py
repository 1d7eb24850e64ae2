"""Reads into CUDA memory and the safetensors loader on a GPU (`pytest -m gpu`); every
test here skips, saying why, where there is no CUDA device, torch or safetensors."""
import os
import random
import subprocess
import sys

import pytest

import vyre_uring
from vyre_uring import BatchReader

pytestmark = pytest.mark.gpu


torch = pytest.importorskip("torch", reason="the GPU tests use torch tensors")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)


def _file(tmp_path, name, size, seed=0):
    data = random.Random(seed).randbytes(size)
    path = tmp_path / name
    path.write_bytes(data)
    return str(path), data


def _host(tensor):
    return tensor.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes()


def test_ranges_into_a_cuda_tensor_land_where_asked(tmp_path):
    path, data = _file(tmp_path, "f", (9 << 20) + 77)
    rng = random.Random(3)
    offsets = [rng.randrange(len(data)) for _ in range(200)]
    lengths = [rng.randrange(1, 300_000) for _ in range(200)]
    dest = torch.zeros(sum(lengths), dtype=torch.uint8, device="cuda")
    got = vyre_uring.read_ranges_into(path, dest, offsets, lengths)
    host = _host(dest)
    at = 0
    for off, n, g in zip(offsets, lengths, got):
        assert g == len(data[off:off + n])
        assert host[at:at + g] == data[off:off + n]
        at += n


@pytest.mark.parametrize("staging", [1 << 20, 8 << 20, 256 << 20])
def test_a_large_file_into_a_typed_tensor_through_any_staging(tmp_path, staging):
    path, data = _file(tmp_path, "big", 96 << 20, seed=staging)
    dest = torch.empty(len(data) // 4, dtype=torch.float32, device="cuda")
    with BatchReader(staging_bytes=staging) as reader:
        assert reader.read_ranges_into(path, dest, [0], [len(data)]) == [len(data)]
        assert _host(dest) == data
        # again, through the staging the reader kept
        dest.zero_()
        reader.read_ranges_into(path, dest, [0], [len(data)])
        assert _host(dest) == data


def test_cupy_array_destination(tmp_path):
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    path, data = _file(tmp_path, "c", 3 << 20)
    dest = cupy.zeros(len(data), dtype=cupy.uint8)
    assert vyre_uring.read_ranges_into(path, dest, [0], [len(data)]) == [len(data)]
    assert dest.get().tobytes() == data


def test_bad_destinations_are_refused_before_reading(tmp_path):
    path, data = _file(tmp_path, "f", 1 << 20)
    dest = torch.zeros(1024, dtype=torch.uint8, device="cuda")
    with pytest.raises(ValueError):
        vyre_uring.read_ranges_into(path, dest, [0], [1025])
    strided = torch.zeros((64, 64), dtype=torch.uint8, device="cuda").t()
    with pytest.raises(TypeError, match="C-contiguous"):
        vyre_uring.read_ranges_into(path, strided, [0], [16])
    assert int(dest.sum()) == 0


def test_a_failure_mid_load_leaves_no_copy_running_and_the_reader_usable(tmp_path):
    """/proc/self/mem reads EIO at offset 0: the call fails naming it, after the
    good file's copies were drained; the next call through the same staging works."""
    path, data = _file(tmp_path, "good", 40 << 20)
    dest = torch.zeros(len(data) + 4096, dtype=torch.uint8, device="cuda")
    with BatchReader(staging_bytes=4 << 20) as reader:
        with pytest.raises(OSError) as info:
            reader._into_device([(path, [0], [len(data)], [0]),
                                 ("/proc/self/mem", [0], [4096], [len(data)])],
                                vyre_uring._staging.cuda_destination(dest))
        assert info.value.filename == "/proc/self/mem"
        torch.cuda.synchronize()
        dest.zero_()
        reader.read_ranges_into(path, dest, [0], [len(data)])
        assert _host(dest[:len(data)]) == data


def test_a_forked_child_is_told_cuda_does_not_survive_fork(tmp_path):
    path, _ = _file(tmp_path, "f", 4096)
    vyre_uring.read_ranges_into(path, torch.zeros(4096, dtype=torch.uint8, device="cuda"),
                                [0], [4096])
    code = f"""
import os, sys
sys.path[:0] = {sys.path!r}
import torch, vyre_uring
from vyre_uring._cuda import CudaUnavailableError
t = torch.zeros(16, dtype=torch.uint8, device="cuda")
vyre_uring.read_ranges_into({path!r}, t, [0], [16])
pid = os.fork()
if pid == 0:
    try:
        vyre_uring.read_ranges_into({path!r}, t, [0], [16])
        os._exit(1)
    except CudaUnavailableError as exc:
        os._exit(0 if "fork" in str(exc) else 2)
    except BaseException as exc:
        print(repr(exc), flush=True)
        os._exit(3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""
    child = subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True,
                           text=True)
    assert child.returncode == 0, child.stdout + child.stderr


# --- the safetensors loader against the safetensors package ---------------------------

from vyre_uring import safetensors as vst  # noqa: E402


@pytest.fixture
def st():
    return pytest.importorskip("safetensors.torch", reason="safetensors is not installed")


def _mixed_tensors(seed, scale=1):
    g = torch.Generator().manual_seed(seed)
    out = {
        "f32": torch.randn(37, 11, generator=g),
        "bf16": torch.randn(64 * scale, 129, generator=g).to(torch.bfloat16),
        "f16": torch.randn(5, 3, 2, generator=g).to(torch.float16),
        "i64": torch.randint(-2**62, 2**62, (17,), generator=g, dtype=torch.int64),
        "u8": torch.randint(0, 256, (1001,), generator=g, dtype=torch.uint8),
        "bool": torch.rand(13, generator=g) > 0.5,
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "large": torch.randn(1024 * scale, 1024, generator=g).to(torch.bfloat16),
    }
    for name in ("float8_e4m3fn", "float8_e5m2"):
        if hasattr(torch, name):
            out[name] = torch.randn(33, 7, generator=g).to(getattr(torch, name))
    return out


def _same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert _host(a) == _host(b)


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_load_file_equals_safetensors(tmp_path, device, st):
    path = str(tmp_path / "m.safetensors")
    st.save_file(_mixed_tensors(1, scale=8), path, metadata={"format": "pt"})
    ours = vst.load_file(path, device=device)
    theirs = st.load_file(path, device=device)
    assert list(ours) == list(theirs)
    for name in theirs:
        assert ours[name].device.type == device
        _same(ours[name], theirs[name])


def test_sharded_subset_and_lazy_loads_equal_safetensors(tmp_path, st):
    shards = []
    for k in range(4):
        tensors = {f"s{k}.{n}": t for n, t in _mixed_tensors(10 + k, scale=4).items()}
        shards.append(str(tmp_path / f"model-{k}.safetensors"))
        st.save_file(tensors, shards[-1])
    expect = {}
    for path in shards:
        expect.update(st.load_file(path, device="cuda"))
    ours = vst.load_files(shards, device="cuda")
    assert set(ours) == set(expect)
    for name in expect:
        _same(ours[name], expect[name])
    subset = vst.load_files(shards, device="cuda", tensors=["s0.bf16", "s3.large", "s2.empty"])
    assert set(subset) == {"s0.bf16", "s3.large", "s2.empty"}
    for name in subset:
        _same(subset[name], expect[name])
    with vst.safe_open(shards[1], framework="pt", device="cuda") as ours_f, \
            st.safe_open(shards[1], framework="pt", device="cuda") as theirs_f:
        assert ours_f.keys() == list(theirs_f.keys())
        for name in theirs_f.keys():
            _same(ours_f.get_tensor(name), theirs_f.get_tensor(name))


def test_malformed_file_fails_before_any_device_memory_is_taken(tmp_path, st):
    path = str(tmp_path / "bad.safetensors")
    st.save_file({"a": torch.ones(100), "b": torch.ones(10)}, path)
    os.truncate(path, os.path.getsize(path) - 4)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with pytest.raises(vst.SafetensorsError, match="truncated"):
        vst.load_file(path, device="cuda")
    assert torch.cuda.memory_allocated() == before
