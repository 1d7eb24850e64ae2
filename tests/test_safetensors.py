"""vyre_uring.safetensors without a GPU: the header checks on malformed files (in
CI, no torch needed), and loads onto the CPU where torch is installed."""
import json
import os
import random
import struct

import pytest

from vyre_uring.safetensors import (SafetensorsError, load_file, load_files, read_header,
                                    safe_open)


def write_safetensors(path, tensors, metadata=None, header_patch=None, tail=b""):
    """A .safetensors file written by hand: tensors maps name -> (dtype, shape,
    bytes), laid out back to back in the given order. header_patch(header dict) may
    corrupt the header; tail is appended after the data."""
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    if header_patch is not None:
        header_patch(header)
    raw_header = json.dumps(header).encode()
    raw_header += b" " * (-len(raw_header) % 8)      # the format pads to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw_header)) + raw_header + data + tail)
    return str(path)


def sample(rng=None):
    rng = rng or random.Random(0)
    return {"w": ("F32", (3, 4), rng.randbytes(48)),
            "b": ("BF16", (5,), rng.randbytes(10)),
            "n": ("I64", (), rng.randbytes(8)),
            "e": ("F16", (0, 7), b""),
            "m": ("BOOL", (2, 2), bytes([0, 1, 1, 0]))}


def test_header_is_read_as_written(tmp_path):
    path = write_safetensors(tmp_path / "a.safetensors", sample(), {"format": "pt"})
    header = read_header(path)
    assert header.metadata == {"format": "pt"}
    assert set(header.tensors) == {"w", "b", "n", "e", "m"}
    assert header.tensors["w"].shape == (3, 4) and header.tensors["w"].nbytes == 48
    assert header.tensors["n"].shape == ()
    with open(path, "rb") as f:
        f.seek(header.data_start + header.tensors["b"].offset)
        assert f.read(10) == sample()["b"][2]


def _shift(name, by):
    def patch(header):
        header[name]["data_offsets"] = [x + by for x in header[name]["data_offsets"]]
    return patch


MALFORMED = {
    "not JSON": (lambda p: _raw(p, b"{not json"), "not JSON"),
    "JSON list": (lambda p: _raw(p, b"[1, 2]"), "not a JSON object"),
    "header past EOF": (lambda p: open(p, "wb").write(struct.pack("<Q", 1000) + b"{}"),
                        "runs past the end"),
    "shorter than 8 bytes": (lambda p: open(p, "wb").write(b"abc"), "shorter than the 8-byte"),
    "huge header length": (lambda p: open(p, "wb").write(struct.pack("<Q", 1 << 40)),
                           "exceeds the format's limit"),
    "unknown dtype": (lambda p: write_safetensors(
        p, {"t": ("F7", (1,), b"x")}), "tensor 't': unknown or unsupported dtype 'F7'"),
    "truncated data": (lambda p: _truncate(write_safetensors(p, sample()), 5),
                       "truncated"),
    "offset out of range": (lambda p: write_safetensors(p, sample(), header_patch=_shift(
        "m", 10**6)), "tensor 'm'"),
    "overlap": (lambda p: write_safetensors(p, sample(), header_patch=_overlap),
                "overlaps"),
    "shape does not match bytes": (lambda p: write_safetensors(
        p, {"t": ("F32", (3,), b"x" * 8)}), "tensor 't': 8 bytes of data"),
    "negative shape": (lambda p: write_safetensors(
        p, {"t": ("U8", (-1,), b"")}), "tensor 't': shape"),
    "begin after end": (lambda p: write_safetensors(p, {"t": ("U8", (0,), b"")},
                                                    header_patch=_reverse("t")),
                        "tensor 't': data_offsets"),
    "trailing bytes": (lambda p: write_safetensors(p, sample(), tail=b"zz"),
                       "2 bytes after the last tensor"),
    "bad metadata": (lambda p: write_safetensors(p, sample(), metadata={"a": 1}),
                     "__metadata__"),
    "dtype not a string": (lambda p: write_safetensors(
        p, {"t": ("U8", (1,), b"x")}, header_patch=_set("t", "dtype", ["U8"])),
        "tensor 't': unknown or unsupported dtype"),
    "UTF-16 header": (lambda p: _raw(p, json.dumps({}).encode("utf-16")), "not JSON"),
}


def _set(name, key, value):
    def patch(header):
        header[name][key] = value
    return patch


def _raw(path, header):
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)


def _truncate(path, by):
    os.truncate(path, os.path.getsize(path) - by)


def _overlap(header):
    header["b"]["data_offsets"] = [x - 4 for x in header["b"]["data_offsets"]]


def _reverse(name):
    def patch(header):
        header[name]["data_offsets"] = [4, 2]
    return patch


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_name_the_file_and_the_tensor(tmp_path, case):
    make, message = MALFORMED[case]
    path = str(tmp_path / "bad.safetensors")
    make(path)
    with pytest.raises(SafetensorsError) as info:
        read_header(path)
    assert path in str(info.value)
    assert message in str(info.value)


def test_a_malformed_shard_fails_before_any_shard_is_read(tmp_path):
    """Every header is checked first; torch is not even needed to see the error."""
    good = write_safetensors(tmp_path / "a.safetensors", sample())
    bad = str(tmp_path / "b.safetensors")
    _raw(bad, b"{oops")
    with pytest.raises(SafetensorsError, match="b.safetensors"):
        load_files([good, bad], device="cuda:0")


def test_one_path_where_a_list_belongs_and_a_path_twice_are_refused(tmp_path):
    path = write_safetensors(tmp_path / "a.safetensors", sample())
    with pytest.raises(TypeError, match="sequence of paths"):
        load_files(path)
    with pytest.raises(ValueError, match="given twice"):
        load_files([path, path])


def test_a_name_in_two_shards_is_refused(tmp_path):
    a = write_safetensors(tmp_path / "a.safetensors", {"x": ("U8", (1,), b"1")})
    b = write_safetensors(tmp_path / "b.safetensors", {"x": ("U8", (1,), b"2")})
    with pytest.raises(SafetensorsError, match="two shards"):
        load_files([a, b])


# --- loads onto the CPU: need torch ---------------------------------------------------

def _torch():
    return pytest.importorskip("torch", reason="loading tensors needs torch")


def test_cpu_load_equals_the_bytes_written(tmp_path):
    torch = _torch()
    tensors = sample()
    path = write_safetensors(tmp_path / "a.safetensors", tensors)
    loaded = load_file(path)
    assert list(loaded) == list(tensors)           # file order, as safetensors gives
    for name, (dtype, shape, raw) in tensors.items():
        assert tuple(loaded[name].shape) == shape
        assert loaded[name].reshape(-1).view(torch.uint8).numpy().tobytes() == raw


def test_subset_and_lazy_loads(tmp_path):
    torch = _torch()
    tensors = sample()
    path = write_safetensors(tmp_path / "a.safetensors", tensors)
    subset = load_file(path, tensors=["b", "e"])
    assert set(subset) == {"b", "e"}
    with safe_open(path, framework="pt") as f:
        assert f.keys() == sorted(tensors)
        assert torch.equal(f.get_tensor("w"), load_file(path)["w"])
    with pytest.raises(KeyError, match="nope"):
        load_file(path, tensors=["nope"])


def test_a_file_replaced_after_its_header_was_read_is_refused(tmp_path):
    _torch()
    path = write_safetensors(tmp_path / "a.safetensors", sample())
    with safe_open(path) as f:
        os.unlink(path)
        write_safetensors(tmp_path / "a.safetensors", sample(random.Random(9)))
        # The same size, and the inode may be reused: a new mtime marks it as changed.
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        with pytest.raises(SafetensorsError, match="changed"):
            f.get_tensor("w")
