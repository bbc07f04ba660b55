"""Reading and writing safetensors checkpoints with NumPy only (bf16 via ``ml_dtypes``).

``scan_checkpoint(dir)`` parses every header (and ``model.safetensors.index.json``) and checks the
files before a single tensor byte is read: headers parse, dtypes are supported, every tensor's
byte range lies inside its file, the index names no missing shard or tensor. ``read_tensor``
then reads one tensor at a time with ``readinto`` into a fresh array (no mmap, so the page cache
is not charged to the process and host memory holds one tensor at a time), and refuses one that
holds NaN or inf (``check_finite``, naming the tensor and file).

File format: 8-byte little-endian header length N, N bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the
data; offsets are relative to the end of the header.

Paths are local or ``gs://`` (``moe_jax.io.storage``: reads seek within the object).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
from typing import Any, Mapping

import fsspec
import ml_dtypes
import numpy as np

from moe_jax.io import storage
from moe_jax.io.storage import atomic_write

DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "U8": np.dtype(np.uint8),  # MXFP4 blocks and scales only (the loader refuses it elsewhere)
}
CODES = {v: k for k, v in DTYPES.items()}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_MAX_HEADER = 100 * 2**20  # sanity bound (the format caps headers at 100 MB)


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not match the model config."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    file: str  # absolute path (or URL) of the safetensors file
    dtype: str  # safetensors code: F32 | F16 | BF16
    shape: tuple[int, ...]
    start: int  # absolute byte offset of the data in the file
    nbytes: int

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]


@dataclasses.dataclass(frozen=True)
class HFCheckpoint:
    """A scanned HF checkpoint directory: tensor index and a hash of its headers."""

    path: str
    files: tuple[str, ...]  # safetensors files (absolute paths or URLs), sorted
    tensors: dict[str, TensorInfo]
    sha256: str  # over the index, every header and sampled data bytes (identifies the weights cheaply)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: t.shape for n, t in self.tensors.items()}


def read_header(path: str) -> tuple[dict[str, TensorInfo], bytes]:
    """Parses and checks one safetensors header; returns its tensors and the raw header bytes."""
    try:
        size = storage.size(path)
        with storage.open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise CheckpointError(f"{path}: file too short ({size} bytes) to be safetensors")
            (n,) = struct.unpack("<Q", raw_len)
            if n > min(size - 8, _MAX_HEADER):
                raise CheckpointError(f"{path}: corrupt header (declares {n} header bytes, file has {size})")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from e
    data_start = 8 + n
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = h["dtype"], tuple(int(d) for d in h["shape"]), h["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: corrupt header entry for tensor {name!r}: {h!r}") from e
        if dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype}; supported: {sorted(DTYPES)}")
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        if end - begin != nbytes or begin < 0:
            raise CheckpointError(f"{path}: corrupt header: tensor {name!r} of shape {list(shape)} {dtype} "
                                  f"needs {nbytes} bytes, header gives offsets [{begin}, {end}]")
        if data_start + end > size:
            raise CheckpointError(f"{path}: file is truncated: tensor {name!r} ends at byte {data_start + end} "
                                  f"but the file has {size} bytes")
        out[name] = TensorInfo(name, storage.absolute(path), dtype, shape, data_start + begin, nbytes)
    return out, raw_len + raw


def scan_checkpoint(path: str | os.PathLike) -> HFCheckpoint:
    """Indexes every tensor of an HF checkpoint dir (single file or sharded), checking all files."""
    path = storage.absolute(path)
    index_path = storage.join(path, INDEX_FILE)
    digest = hashlib.sha256()
    if storage.exists(index_path):
        raw_index = storage.read_bytes(index_path)
        digest.update(raw_index)
        try:
            weight_map = json.loads(raw_index)["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index_path}: not a valid safetensors index ({e})") from e
        by_file: dict[str, list[str]] = {}
        for name, file in weight_map.items():
            by_file.setdefault(file, []).append(name)
        for file, names in sorted(by_file.items()):
            if not storage.exists(storage.join(path, file)):
                raise CheckpointError(f"{index_path} names shard {file!r} (e.g. for tensor {names[0]!r}), "
                                      f"which does not exist in {path}")
    elif storage.exists(storage.join(path, SINGLE_FILE)):
        by_file = None
    else:
        raise CheckpointError(f"{path} has neither {SINGLE_FILE} nor {INDEX_FILE}")

    files = sorted(by_file) if by_file is not None else [SINGLE_FILE]
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        full = storage.join(path, file)
        infos, raw_header = read_header(full)
        digest.update(file.encode() + b"\0" + raw_header + _sample_data(full, 8 + len(raw_header)))
        if by_file is None:
            tensors.update(infos)
            continue
        for name in by_file[file]:
            if name not in infos:
                raise CheckpointError(f"{index_path} maps tensor {name!r} to {full}, whose header lacks it")
            tensors[name] = infos[name]
    return HFCheckpoint(path, tuple(storage.join(path, f) for f in files), tensors, digest.hexdigest())


def _sample_data(path: str, data_start: int, samples: int = 16, width: int = 256) -> bytes:
    """``samples`` evenly spaced slices of the data section: two checkpoints with the same headers
    but other weights (fine-tunes, seeds) hash differently, at the cost of a few reads per file."""
    size = storage.size(path) - data_start
    if size <= 0:
        return b""
    n = min(width, size)
    starts = [data_start + (size - n) * i // max(samples - 1, 1) for i in range(samples)]
    if storage.is_remote(path):  # exact ranges: a seek + read would fetch a 5 MB read-ahead block each
        fs, p = fsspec.core.url_to_fs(path)
        return b"".join(fs.cat_ranges([p] * samples, starts, [s + n for s in starts]))
    with storage.open(path, "rb") as f:
        out = []
        for start in starts:
            f.seek(start)
            out.append(f.read(width))
    return b"".join(out)


def read_tensor(info: TensorInfo) -> np.ndarray:
    """Reads one tensor into a new array of its stored dtype."""
    out = np.empty(info.shape, dtype=info.np_dtype)
    with storage.open(info.file, "rb") as f:
        f.seek(info.start)
        got = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
    if got != info.nbytes:
        raise CheckpointError(f"{info.file}: file is truncated: read {got} of {info.nbytes} bytes of tensor {info.name!r}")
    if info.dtype != "U8":
        check_finite(out, info.name, info.file)
    return out


def check_finite(x: np.ndarray, name: str, file: str, chunk: int = 1 << 24) -> None:
    """CheckpointError naming the tensor when ``x`` holds NaN or inf (checked in chunks of ``chunk``
    elements: the temporary mask stays small whatever the tensor's size)."""
    flat = x.reshape(-1)
    for start in range(0, flat.size, chunk):
        bad = ~np.isfinite(flat[start:start + chunk])
        if bad.any():
            i = start + int(np.argmax(bad))
            raise CheckpointError(f"{file}: tensor {name!r} holds non-finite values ({flat[i]} at index "
                                  f"{list(map(int, np.unravel_index(i, x.shape)))}); refusing broken weights")


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> int:
    """Writes a safetensors file atomically (temp file + rename); returns the data size in bytes."""
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    arrays = []
    for name, x in tensors.items():
        x = np.ascontiguousarray(x)
        if x.dtype not in CODES:
            raise ValueError(f"tensor {name!r}: dtype {x.dtype} cannot be written; supported: {sorted(CODES.values())}")
        header[name] = {"dtype": CODES[x.dtype], "shape": list(x.shape), "data_offsets": [offset, offset + x.nbytes]}
        offset += x.nbytes
        arrays.append(x)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data aligned to 8 bytes, as the reference writer does
    def write(f):
        f.write(struct.pack("<Q", len(raw)) + raw)
        for x in arrays:
            f.write(memoryview(x.reshape(-1).view(np.uint8)))
    atomic_write(path, write)
    return offset
