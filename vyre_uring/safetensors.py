"""Load .safetensors checkpoints into torch tensors, on a GPU or the CPU, through the
reader's rings.

    load_file(path, device="cuda")            -> {name: tensor}
    load_files(paths, device="cuda")          -> {name: tensor}, a sharded checkpoint
    with safe_open(path, device="cuda") as f: f.keys(), f.get_tensor(name)

The header (an 8-byte little-endian length, then JSON) is parsed and checked here,
every file's before any byte of data is read: a malformed file (truncated, offsets
out of range, overlapping or leaving gaps, a header longer than the file, not JSON,
an unknown dtype, a shape that does not match its bytes) raises SafetensorsError
naming the file and the tensor. The data then goes into one device allocation per
call (all shards' selected tensors, each at an aligned offset), read by every ring
at once, and the tensors are views of it: dtype and shape exactly as the
`safetensors` package gives them. torch is needed only by the calls that make
tensors; nothing here needs CUDA unless a CUDA device is asked for.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Union

from ._staging import cuda_destination
from .reader import BatchReader, _path_list, _shared_reader

if TYPE_CHECKING:
    import torch

__all__ = ["SafetensorsError", "load_file", "load_files", "safe_open", "read_header"]

MAX_HEADER_BYTES = 100_000_000     # the limit the safetensors format sets
ALIGN = 256                        # each tensor's offset in the device allocation

# The format's dtype names: (bytes per element, torch dtype name).
DTYPES = {
    "BOOL": (1, "bool"), "U8": (1, "uint8"), "I8": (1, "int8"),
    "F8_E4M3": (1, "float8_e4m3fn"), "F8_E5M2": (1, "float8_e5m2"),
    "F8_E8M0": (1, "float8_e8m0fnu"),
    "I16": (2, "int16"), "U16": (2, "uint16"), "F16": (2, "float16"), "BF16": (2, "bfloat16"),
    "I32": (4, "int32"), "U32": (4, "uint32"), "F32": (4, "float32"),
    "I64": (8, "int64"), "U64": (8, "uint64"), "F64": (8, "float64"),
    "C64": (8, "complex64"),
}
PathArg = Union[str, "os.PathLike[str]"]


class SafetensorsError(ValueError):
    """A .safetensors file that cannot be loaded; the message names the file and,
    where one is at fault, the tensor."""


class TensorInfo(NamedTuple):
    name: str
    dtype: str                     # the format's name: "BF16"
    shape: tuple[int, ...]
    offset: int                    # where its bytes start, in the data section
    nbytes: int


class Header(NamedTuple):
    path: str
    tensors: dict[str, TensorInfo]
    metadata: Optional[dict[str, str]]
    data_start: int                # where the data section starts in the file
    identity: tuple[int, ...]      # (device, inode, size, mtime) when it was read


def read_header(path: PathArg) -> Header:
    """The file's header, checked against the file's size."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        size = st.st_size
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path}: not a safetensors file: {size} bytes, "
                                   f"shorter than the 8-byte header length")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES:
            raise SafetensorsError(f"{path}: header length {length} exceeds the format's "
                                   f"limit of {MAX_HEADER_BYTES} bytes")
        if 8 + length > size:
            raise SafetensorsError(f"{path}: header length {length} runs past the end "
                                   f"of the file ({size} bytes)")
        raw = f.read(length)
    return parse_header(path, raw, size)._replace(identity=_identity(st))


def _identity(st):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def parse_header(path: str, raw: bytes, file_size: int) -> Header:
    """Check a header's JSON against the format and the file's size."""
    try:
        table = json.loads(raw.decode("utf-8"))     # the format says UTF-8, nothing else
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsError(f"{path}: the header is not JSON: {exc}") from None
    if not isinstance(table, dict):
        raise SafetensorsError(f"{path}: the header is not a JSON object")
    metadata = table.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and
                                     all(isinstance(v, str) for v in metadata.values())):
        raise SafetensorsError(f"{path}: __metadata__ must map strings to strings")
    tensors = {name: _tensor_info(path, name, entry) for name, entry in table.items()}
    data_start = 8 + len(raw)
    _check_layout(path, tensors.values(), file_size - data_start)
    return Header(path, tensors, metadata, data_start, ())


def _tensor_info(path, name, entry):
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise SafetensorsError(f"{where}: its entry is not a JSON object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise SafetensorsError(f"{where}: unknown or unsupported dtype {dtype!r} "
                               f"(supported: {', '.join(DTYPES)})")
    if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
        raise SafetensorsError(f"{where}: shape must be a list of ints >= 0, not {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and
            all(type(n) is int and n >= 0 for n in offsets) and offsets[0] <= offsets[1]):
        raise SafetensorsError(f"{where}: data_offsets must be [begin, end] with "
                               f"0 <= begin <= end, not {offsets!r}")
    count = 1
    for n in shape:
        count *= n
    nbytes = offsets[1] - offsets[0]
    if nbytes != count * DTYPES[dtype][0]:
        raise SafetensorsError(f"{where}: {nbytes} bytes of data for a {dtype} tensor of "
                               f"shape {shape}, which needs {count * DTYPES[dtype][0]}")
    return TensorInfo(name, dtype, tuple(shape), offsets[0], nbytes)


def _check_layout(path, tensors, data_bytes):
    """The tensors tile the data section exactly, as the format requires: no overlap,
    no gap, nothing past the end of the file."""
    end = 0
    for t in sorted(tensors, key=lambda t: (t.offset, t.nbytes)):
        if t.offset < end:
            raise SafetensorsError(f"{path}: tensor {t.name!r} overlaps the tensor before "
                                   f"it (its data starts at {t.offset}, the previous "
                                   f"ends at {end})")
        if t.offset > end:
            raise SafetensorsError(f"{path}: a gap of {t.offset - end} bytes before tensor "
                                   f"{t.name!r} (the format allows none)")
        end = t.offset + t.nbytes
    if end > data_bytes:
        raise SafetensorsError(f"{path}: truncated: the tensors need {end} bytes of data "
                               f"and the file holds {max(data_bytes, 0)}")
    if end < data_bytes:
        raise SafetensorsError(f"{path}: {data_bytes - end} bytes after the last tensor's "
                               f"data (the format allows none)")


def load_file(path: PathArg, device: Any = "cpu", *, tensors: Optional[Iterable[str]] = None,
              reader: Optional[BatchReader] = None) -> dict[str, torch.Tensor]:
    """{name: tensor} of the file's tensors (or of those named in `tensors`), on
    `device` ("cpu", "cuda", "cuda:1", a torch.device). `reader`: the BatchReader to
    read with (its rings, workers and staging_bytes); by default the shared one."""
    return load_files([path], device, tensors=tensors, reader=reader)


def load_files(paths: Iterable[PathArg], device: Any = "cpu", *,
               tensors: Optional[Iterable[str]] = None,
               reader: Optional[BatchReader] = None) -> dict[str, torch.Tensor]:
    """load_file for a sharded checkpoint: every shard's tensors (or those named in
    `tensors`, wherever they are) in one call, all rings reading across the shards
    at once. A name found in two shards is an error naming both."""
    headers = [read_header(p) for p in _path_list(paths)]
    chosen = _select(headers, tensors)
    groups, places, total = _placement(headers, chosen)
    torch = _torch()
    for path, t in chosen:
        _torch_dtype(torch, t, path)            # before any memory is taken
    buffer = torch.empty(total, dtype=torch.uint8, device=device)
    _read_groups(reader or _shared_reader(), groups, buffer, headers)
    return {t.name: _view(torch, buffer, place, t, path)
            for (path, t), place in zip(chosen, places)}


def _select(headers, names):
    """[(path, TensorInfo)] of the tensors asked for, in file order."""
    owner = {}
    if len({h.path for h in headers}) < len(headers):
        raise ValueError(f"a file is given twice: {[h.path for h in headers]}")
    for h in headers:
        for name in h.tensors:
            if name in owner:
                raise SafetensorsError(f"tensor {name!r} is in two shards: {owner[name]} "
                                       f"and {h.path}")
            owner[name] = h.path
    wanted = None if names is None else set(names) if not isinstance(names, str) else {names}
    missing = (wanted or set()) - owner.keys()
    if missing:
        raise KeyError(f"no tensor {sorted(missing)[0]!r} in "
                       f"{', '.join(h.path for h in headers)}")
    # In file order, as safetensors.torch.load_file gives them.
    return [(h.path, t) for h in headers
            for t in sorted(h.tensors.values(), key=lambda t: t.offset)
            if wanted is None or t.name in wanted]


def _placement(headers, chosen):
    """(groups for the reader, each tensor's offset in the allocation, its size).
    A file whose tensors are all wanted is read as one range, its layout kept
    (one large copy); otherwise each tensor is read to an ALIGN-ed offset."""
    by_path = {}
    for path, t in chosen:
        by_path.setdefault(path, []).append(t)
    groups, where, total = [], {}, 0
    for h in headers:
        wanted = by_path.get(h.path, [])
        if not wanted:
            continue
        if len(wanted) == len(h.tensors):
            data = sum(t.nbytes for t in wanted)
            groups.append((h.path, [h.data_start], [data], [total]))
            for t in wanted:
                where[h.path, t.name] = total + t.offset
            total = _aligned(total + data)
            continue
        offsets, lengths, dests = [], [], []
        for t in wanted:
            offsets.append(h.data_start + t.offset)
            lengths.append(t.nbytes)
            dests.append(total)
            where[h.path, t.name] = total
            total = _aligned(total + t.nbytes)
        groups.append((h.path, offsets, lengths, dests))
    return groups, [where[path, t.name] for path, t in chosen], total


def _aligned(n):
    return -(-n // ALIGN) * ALIGN


def _read_groups(reader, groups, buffer, headers):
    """Read the groups into `buffer` (a uint8 torch tensor, CPU or CUDA); a file
    that was replaced or changed since its header was read raises, before (by its
    size, inode and mtime) or after (a short read) the read."""
    for h in headers:
        try:
            changed = _identity(os.stat(h.path)) != h.identity
        except OSError:
            changed = True
        if changed:
            raise SafetensorsError(f"{h.path}: the file changed (or was replaced) since "
                                   f"its header was read")
    if buffer.is_cuda:
        got = reader._into_device(groups, cuda_destination(buffer))
    else:
        host = buffer.numpy()
        got = [n for path, offsets, lengths, dests in groups
               for n in reader.read_ranges_into(path, host, offsets, lengths, dests)]
    asked = [n for _, _, lengths, _ in groups for n in lengths]
    if got != asked:
        k = next(i for i, (a, b) in enumerate(zip(got, asked)) if a != b)
        path = _group_of(groups, k)
        raise SafetensorsError(f"{path}: read {got[k]} bytes where its header promised "
                               f"{asked[k]}: the file changed while it was loaded")


def _group_of(groups, k):
    for path, offsets, *_ in groups:
        if k < len(offsets):
            return path
        k -= len(offsets)
    raise IndexError(k)


def _view(torch, buffer, offset, t, path):
    """Tensor t as a view of buffer[offset:]; a copy where its offset does not suit
    its dtype's alignment (a file whose tensors are not aligned)."""
    raw = buffer[offset:offset + t.nbytes]
    if offset % DTYPES[t.dtype][0]:
        raw = raw.clone()
    return raw.view(_torch_dtype(torch, t, path)).reshape(t.shape)


def _torch_dtype(torch, t, path):
    dtype = getattr(torch, DTYPES[t.dtype][1], None)
    if dtype is None:
        raise SafetensorsError(f"{path}: tensor {t.name!r}: dtype {t.dtype} needs "
                               f"torch.{DTYPES[t.dtype][1]}, which this torch "
                               f"({torch.__version__}) lacks")
    return dtype


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("vyre_uring.safetensors makes torch tensors: it needs torch "
                          "(pip install torch)") from None
    return torch


class safe_open:
    """Lazy access in the style of safetensors.safe_open: the header now, each tensor
    when asked for.

        with safe_open("model.safetensors", framework="pt", device="cuda") as f:
            for name in f.keys():
                tensor = f.get_tensor(name)
    """

    def __init__(self, filename: PathArg, framework: str = "pt", device: Any = "cpu", *,
                 reader: Optional[BatchReader] = None) -> None:
        if framework not in ("pt", "torch"):
            raise ValueError(f'framework must be "pt" (torch), not {framework!r}')
        self._header = read_header(filename)
        self._device = device
        self._reader = reader

    def __enter__(self) -> safe_open:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def keys(self) -> list[str]:
        return sorted(self._header.tensors)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def metadata(self) -> Optional[dict[str, str]]:
        return self._header.metadata

    def get_tensor(self, name: str) -> torch.Tensor:
        t = self._header.tensors.get(name)
        if t is None:
            raise KeyError(f"no tensor {name!r} in {self._header.path}")
        torch = _torch()
        _torch_dtype(torch, t, self._header.path)
        buffer = torch.empty(t.nbytes, dtype=torch.uint8, device=self._device)
        _read_groups(self._reader or _shared_reader(),
                     [(self._header.path, [self._header.data_start + t.offset], [t.nbytes],
                       [0])], buffer, [self._header])
        return _view(torch, buffer, 0, t, self._header.path)
