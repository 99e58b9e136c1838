"""Writing PyTorch-format ``.pt`` state dicts without torch, for tests.

Hand-written pickle protocol-2 opcodes with the global names torch uses
(``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``, ``torch.<X>Storage``) and
the zip layout of ``torch.save``: ``archive/data.pkl``, one raw little-endian record per
storage ``archive/data/<key>``, ``archive/version``. So the tests need neither torch nor a fake
torch module, and the restricted reader sees exactly what a real file holds.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

#: Storage class of each dtype torch would save.
STORAGE_OF_DTYPE = {
    "float64": "DoubleStorage",
    "float32": "FloatStorage",
    "float16": "HalfStorage",
    "int64": "LongStorage",
    "int32": "IntStorage",
    "bool": "BoolStorage",
}


def op_str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def op_int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def op_global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def op_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


EMPTY_ORDERED_DICT = op_global("collections", "OrderedDict") + b")R"


def tensor(storage_type, key, numel, offset, size, stride, location="cpu") -> bytes:
    """Opcodes for ``torch._utils._rebuild_tensor_v2(<storage key>, offset, size, stride, ...)``."""
    pid = op_tuple(
        op_str("storage"),
        op_global("torch", storage_type),
        op_str(key),
        op_str(location),
        op_int(numel),
    )
    args = op_tuple(
        pid + b"Q",  # BINPERSID: the unpickler's persistent_load turns the id into a storage
        op_int(offset),
        op_tuple(*map(op_int, size)),
        op_tuple(*map(op_int, stride)),
        b"\x89",  # requires_grad=False
        EMPTY_ORDERED_DICT,  # backward_hooks
    )
    return op_global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def state_dict(entries: dict[str, bytes], metadata: bool = False) -> bytes:
    """A pickled OrderedDict of ``entries``; ``metadata`` adds torch's ``_metadata`` BUILD."""
    body = b"".join(op_str(k) + v for k, v in entries.items())
    build = b""
    if metadata:  # state_dict._metadata = OrderedDict({"": {"version": 1}}), as torch writes
        inner = b"}" + op_str("version") + b"K\x01s"
        build = b"}" + op_str("_metadata") + EMPTY_ORDERED_DICT + op_str("") + inner + b"ss" + b"b"
    return b"\x80\x02" + EMPTY_ORDERED_DICT + b"(" + body + b"u" + build + b"."


def write_pt(path: Path, pkl: bytes, records: dict[str, bytes], prefix: str = "archive") -> Path:
    """The zip layout of ``torch.save``, uncompressed like torch's."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", pkl)
        for key, data in records.items():
            zf.writestr(f"{prefix}/data/{key}", data)
        zf.writestr(f"{prefix}/version", "3\n")
    return path


def write_state_dict(path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """``torch.save(OrderedDict(arrays))`` as the original code's GPU clones were saved:
    one contiguous little-endian storage per tensor (location ``cuda:0``), in key order."""
    entries, records = {}, {}
    for i, (name, value) in enumerate(arrays.items()):
        a = np.array(value, order="C")  # ascontiguousarray would make 0-d arrays 1-d
        stride = tuple(s // a.itemsize for s in a.strides) if a.ndim else ()
        storage = STORAGE_OF_DTYPE[a.dtype.name]
        entries[name] = tensor(storage, str(i), a.size, 0, a.shape, stride, "cuda:0")
        records[str(i)] = a.astype(a.dtype.newbyteorder("<")).tobytes()
    return write_pt(Path(path), state_dict(entries, metadata=True), records)
