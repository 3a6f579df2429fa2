"""Shared helpers of the model loaders: safe file readers, checks, orientation, eos mappings.

Nothing here executes code from a file: ``.mat`` files go through ``scipy.io.loadmat`` (which
builds plain arrays), pickles go through :class:`RestrictedUnpickler` (an allow-list of the
classes the public face-model pickles use), and ``.npy`` files holding a pickled object are
opened with the same restricted unpickler instead of ``np.load(allow_pickle=True)``.
"""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jaxface.data import data_dir
from jaxface.errors import DataNotFoundError, ModelFormatError
from jaxface.models.morphable import ContourSet, LandmarkSet

PathLike = str | os.PathLike


def src_name(path: PathLike) -> str:
    return os.fspath(path)


def require_file(path: PathLike) -> Path:
    """``Path(path)``, raising ``FileNotFoundError`` (a DataNotFoundError) when it is missing."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataNotFoundError(f"model file {str(p)!r} does not exist")
    return p


# ------------------------------------------------------------------------------------------------
# .mat (MATLAB v5) files
# ------------------------------------------------------------------------------------------------

def read_mat(path: PathLike, *, what: str) -> dict[str, np.ndarray]:
    """The variables of a MATLAB v4/v5 ``.mat`` file (scipy.io; no code is executed).

    Raises ModelFormatError for anything that is not a readable .mat file (truncated files,
    MATLAB v7.3/HDF5 files, other formats), naming ``what`` was expected.
    """
    import scipy.io

    p = require_file(path)
    try:
        data = scipy.io.loadmat(str(p), squeeze_me=False, struct_as_record=True)
    except NotImplementedError as e:  # v7.3 (HDF5) files
        raise ModelFormatError(f"MATLAB v7.3 (HDF5) .mat files are not supported; expected the "
                               f"{what} v5 .mat file ({e})", source=str(p)) from e
    except Exception as e:  # truncated / not a .mat at all
        raise ModelFormatError(f"not a readable MATLAB .mat file, expected the {what} file "
                               f"({type(e).__name__}: {e})", source=str(p)) from e
    return {k: v for k, v in data.items() if not k.startswith("__")}


def get_array(data: Mapping[str, Any], key: str, src: str, *, what: str) -> np.ndarray:
    """``data[key]`` as a numeric ndarray, or ModelFormatError naming the keys that were found."""
    if key not in data:
        found = ", ".join(sorted(map(str, data))[:20])
        raise ModelFormatError(f"missing key {key!r}: this is not the {what} file (found keys: "
                               f"{found})", source=src, field=key)
    a = np.asarray(data[key])
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise ModelFormatError(f"expected a numeric array, found dtype {a.dtype}", source=src,
                               field=key)
    return a


def expect_shape(a: np.ndarray, shape: tuple[int | None, ...], src: str, key: str) -> None:
    """Raise ModelFormatError unless ``a.shape`` matches ``shape`` (None = any size)."""
    ok = a.ndim == len(shape) and all(
        s is None or s == d for s, d in zip(shape, a.shape, strict=False))
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ModelFormatError(f"expected shape {want}, found {a.shape}", source=src, field=key)


def check_finite(a: np.ndarray, src: str, key: str) -> None:
    if not np.all(np.isfinite(a)):
        raise ModelFormatError("contains NaN or inf values", source=src, field=key)


def as_index(a: np.ndarray, src: str, key: str, *, one_based: bool, n: int) -> np.ndarray:
    """Integer indices (``one_based`` -> shifted to 0-based), checked to lie in [0, n)."""
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.integer):
        if not (np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a))
                and np.all(a == np.round(a))):
            raise ModelFormatError(f"expected integer indices, found dtype {a.dtype}",
                                   source=src, field=key)
    a = a.astype(np.int64) - (1 if one_based else 0)
    if a.size and (a.min() < 0 or a.max() >= n):
        base = "1-based" if one_based else "0-based"
        raise ModelFormatError(f"{base} indices must lie in [{int(one_based)}, "
                               f"{n - 1 + int(one_based)}], found "
                               f"[{a.min() + one_based}, {a.max() + one_based}]",
                               source=src, field=key)
    return a


# ------------------------------------------------------------------------------------------------
# PCA bases
# ------------------------------------------------------------------------------------------------

def orthonormal_basis(basis: np.ndarray, std: np.ndarray, src: str, key: str,
                      *, atol: float = 2e-2) -> tuple[np.ndarray, np.ndarray, str]:
    """Decide whether a (3V, K) PCA basis is orthonormal or already scaled by ``std``.

    Returns ``(orthonormal basis, std, kind)`` with ``kind`` in ``{"orthonormal", "scaled"}``.
    The decision uses the column norms: ~1 means orthonormal; ~``std`` means ``U * std`` (the
    basis is then divided by ``std``). Anything else raises ModelFormatError.
    """
    norms = np.linalg.norm(basis.astype(np.float64), axis=0)
    std = np.asarray(std, np.float64).reshape(-1)
    if basis.shape[1] == 0 or np.allclose(norms, 1.0, atol=atol):
        return basis, std, "orthonormal"
    if np.all(std > 0) and np.allclose(norms / std, 1.0, atol=atol):
        return (basis / std[None, :].astype(basis.dtype)), std, "scaled"
    raise ModelFormatError(
        f"basis columns are neither unit-norm nor scaled by the standard deviations "
        f"(column norms in [{norms.min():.4g}, {norms.max():.4g}])", source=src, field=key)


def flat_basis_to_kv3(basis: np.ndarray, n_vertices: int) -> np.ndarray:
    """(3V, K) with xyz interleaved per vertex -> (K, V, 3)."""
    return np.ascontiguousarray(basis.T.reshape(basis.shape[1], n_vertices, 3))


# ------------------------------------------------------------------------------------------------
# Triangle orientation
# ------------------------------------------------------------------------------------------------

def outward_signed_volume(verts: np.ndarray, triangles: np.ndarray) -> float:
    """Sum over triangles of ``(c_t - c) . n_t`` (c: vertex centroid; n_t: area normal).

    Positive when the normals of the counter-clockwise triangles point away from the centroid
    (outward) on a closed mesh (6 x its volume) and on a bulging open surface such as a face.
    """
    v = np.asarray(verts, np.float64)
    t = np.asarray(triangles, np.int64)
    a, b, c = v[t[:, 0]], v[t[:, 1]], v[t[:, 2]]
    n = np.cross(b - a, c - a)
    centre = v[np.unique(t)].mean(axis=0)
    return float(np.sum(((a + b + c) / 3.0 - centre) * n))


def orient_outward(verts: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, bool]:
    """Triangles reordered (all of them, (0, 2, 1)) if their normals point inward.

    Returns ``(triangles, flipped)``.
    """
    if triangles.shape[0] and outward_signed_volume(verts, triangles) < 0:
        return np.ascontiguousarray(triangles[:, [0, 2, 1]]), True
    return triangles, False


# ------------------------------------------------------------------------------------------------
# Restricted unpickling (FLAME .pkl without chumpy, .npy dicts)
# ------------------------------------------------------------------------------------------------

class ChumpyArray:
    """Stand-in for ``chumpy.ch.Ch``: keeps the pickled state; ``.array`` is its ``x``."""

    state: dict[str, Any] = {}  # replaced (never mutated) by __setstate__

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = state[0]
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"chumpy.Ch state is a {type(state).__name__}, "
                                         "expected a dict")
        self.state = {str(k): v for k, v in state.items()}

    @property
    def array(self) -> np.ndarray:
        x = self.state.get("x")
        if isinstance(x, ChumpyArray):
            return x.array
        if not isinstance(x, np.ndarray):
            raise pickle.UnpicklingError(
                f"chumpy.Ch without an 'x' array (state keys: {sorted(self.state)})")
        return x


class SparseMatrix:
    """Stand-in for scipy's csc/csr matrices: keeps the pickled state; ``.to_scipy()``."""

    fmt = "csc"
    state: dict[str, Any] = {}  # replaced (never mutated) by __setstate__

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:
            state = state[0]
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("sparse matrix state is not a dict")
        self.state = {str(k): v for k, v in state.items()}

    def to_scipy(self):
        import scipy.sparse

        s = self.state
        try:
            shape = tuple(int(d) for d in s.get("_shape", s.get("shape")))
            args = (np.asarray(s["data"]), np.asarray(s["indices"]), np.asarray(s["indptr"]))
        except (KeyError, TypeError) as e:
            raise pickle.UnpicklingError(f"incomplete sparse matrix state ({e})") from e
        cls = scipy.sparse.csc_matrix if self.fmt == "csc" else scipy.sparse.csr_matrix
        return cls(args, shape=shape)


class _CsrMatrix(SparseMatrix):
    fmt = "csr"


def _numpy_attr(*paths: str) -> Any:
    import importlib

    for p in paths:
        mod, _, name = p.rpartition(".")
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(paths[0])


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = _numpy_attr("numpy._core.multiarray._reconstruct",
                              "numpy.core.multiarray._reconstruct")
    scalar = _numpy_attr("numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar")
    allowed: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = reconstruct
        allowed[(mod, "scalar")] = scalar
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    allowed[("numpy.core.numeric", "_frombuffer")] = _numpy_attr(
        "numpy._core.numeric._frombuffer", "numpy.core.numeric._frombuffer")
    allowed[("numpy._core.numeric", "_frombuffer")] = allowed[("numpy.core.numeric",
                                                               "_frombuffer")]
    for mod in ("chumpy.ch", "chumpy"):
        allowed[(mod, "Ch")] = ChumpyArray
    for mod in ("scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse"):
        allowed[(mod, "csc_matrix")] = SparseMatrix
    for mod in ("scipy.sparse.csr", "scipy.sparse._csr", "scipy.sparse"):
        allowed[(mod, "csr_matrix")] = _CsrMatrix
    # Protocol 0/1 pickles of new-style objects call copy_reg._reconstructor(cls, object, None).
    for mod in ("copy_reg", "copyreg"):
        allowed[(mod, "_reconstructor")] = _safe_reconstructor
    allowed[("_codecs", "encode")] = _latin1_encode  # bytes in protocol-2 pickles from Python 3
    # chumpy.Ch's pickled __dict__ holds ``_dirty_vars = set()``; sets/object are inert.
    for mod in ("__builtin__", "builtins"):
        allowed[(mod, "set")] = set
        allowed[(mod, "frozenset")] = frozenset
        allowed[(mod, "object")] = object
    # torch tensors pickled inside a plain pickle (DECA's landmark_embedding.npy): rebuilt as
    # numpy arrays from their legacy-format storage bytes, without torch.
    allowed[("torch._utils", "_rebuild_tensor_v2")] = _rebuild_tensor_v2
    allowed[("torch.storage", "_load_from_bytes")] = _torch_storage_from_bytes
    allowed[("collections", "OrderedDict")] = _empty_ordered_dict  # the tensors' backward hooks
    return allowed


# ------------------------------------------------------------------------------------------------
# torch tensors inside plain pickles, without torch
# ------------------------------------------------------------------------------------------------
#
# A torch tensor pickled with the plain pickle module (not torch.save) reduces to
# ``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
# backward_hooks[, metadata])`` and its storage to ``torch.storage._load_from_bytes(b)``, where
# ``b`` is ``torch.save(storage, _use_new_zipfile_serialization=False)``: the legacy format, a
# run of pickles (magic number, protocol version 1001, sys-info dict, the object with each
# storage as the persistent id ('storage', torch.<T>Storage, key, location, numel, view),
# the sorted storage keys) followed by, per key, int64 little-endian numel and the raw
# little-endian elements (torch/serialization.py ``_legacy_save``, torch/storage.py
# ``__reduce__``, ``writeFileRaw`` in torch/csrc/serialization.cpp).

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_LEGACY_PROTOCOL = 1001
_TORCH_STORAGE_DTYPES = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2", "LongStorage": "<i8",
    "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "?",
}


class _TorchStorageType:
    """Stand-in for a ``torch.<T>Storage`` class named in a persistent id."""

    def __init__(self, name: str):
        self.dtype = np.dtype(_TORCH_STORAGE_DTYPES[name])
        self.name = name


def _empty_ordered_dict(*args: Any) -> dict:
    if args:
        raise pickle.UnpicklingError("refusing collections.OrderedDict with arguments")
    return {}


class _TorchLegacyUnpickler(pickle.Unpickler):
    """One pickle of a legacy torch.save stream: only storage types and inert builtins."""

    def __init__(self, stream: io.BytesIO, refs: dict[str, Any]):
        super().__init__(stream, encoding="latin1")
        self.refs = refs

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return _TorchStorageType(name)
        if (module, name) in (("collections", "OrderedDict"),):
            return _empty_ordered_dict
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} inside a torch "
                                     "storage")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"
                and isinstance(pid[1], _TorchStorageType)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        _, stype, key, _location, numel, view = pid
        if view is not None:
            raise pickle.UnpicklingError("storage views (torch < 0.4 files) are not supported")
        self.refs[str(key)] = (stype.dtype, int(numel))
        return ("storage-ref", str(key))


def _torch_storage_from_bytes(b: Any) -> np.ndarray:
    """A 1-D array holding the elements of a legacy torch.save'd storage (``b``)."""
    if not isinstance(b, bytes):
        raise pickle.UnpicklingError("torch storage bytes expected")
    if b[:2] == b"PK":
        raise pickle.UnpicklingError("zip-format torch storages are not supported")
    f = io.BytesIO(b)
    refs: dict[str, Any] = {}

    def load() -> Any:
        return _TorchLegacyUnpickler(f, refs).load()

    if load() != TORCH_LEGACY_MAGIC or load() != TORCH_LEGACY_PROTOCOL:
        raise pickle.UnpicklingError("not a legacy torch.save stream (bad magic or protocol)")
    info = load()
    if not isinstance(info, dict) or not info.get("little_endian", False):
        raise pickle.UnpicklingError("only little-endian torch storages are supported")
    obj = load()
    keys = load()
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise pickle.UnpicklingError("bad storage key list")
    data: dict[str, np.ndarray] = {}
    for k in keys:
        if k not in refs:
            raise pickle.UnpicklingError(f"storage key {k!r} was never referenced")
        dtype, numel = refs[k]
        head = f.read(8)
        if len(head) != 8 or int.from_bytes(head, "little", signed=True) != numel:
            raise pickle.UnpicklingError("storage size does not match its persistent id")
        raw = f.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise pickle.UnpicklingError("truncated torch storage data")
        data[k] = np.frombuffer(raw, dtype=dtype).copy()
    if not (isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "storage-ref"
            and obj[1] in data):
        raise pickle.UnpicklingError("the torch stream does not hold a single storage")
    return data[obj[1]]


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
                       backward_hooks: Any, metadata: Any = None) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` without torch: a numpy copy of the strided view."""
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise pickle.UnpicklingError("tensor storage is not a rebuilt torch storage")
    try:
        offset = int(offset)
        size = tuple(int(s) for s in size)
        stride = tuple(int(s) for s in stride)
    except (TypeError, ValueError) as e:
        raise pickle.UnpicklingError(f"bad tensor geometry ({e})") from e
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise pickle.UnpicklingError("bad tensor size/stride")
    n = int(np.prod(size, dtype=np.int64))
    if n == 0:
        return np.zeros(size, storage.dtype)
    last = offset + sum((s - 1) * st for s, st in zip(size, stride, strict=True))
    if last >= storage.shape[0]:
        raise pickle.UnpicklingError("tensor extends past the end of its storage")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(st * storage.itemsize for st in stride))
    return np.array(view)


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    allowed = (ChumpyArray, SparseMatrix, _CsrMatrix)
    if cls not in allowed or base is not object or state is not None:
        raise pickle.UnpicklingError("refusing copy_reg._reconstructor for a class that is not "
                                     "on the allow-list")
    return cls()


def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refusing _codecs.encode with unexpected arguments")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the allow-listed globals (numpy arrays and dtypes, chumpy
    ``Ch`` -> :class:`ChumpyArray`, scipy csc/csr -> :class:`SparseMatrix`); any other global
    (``os.system``, ``builtins.eval``, other chumpy classes, ...) raises UnpicklingError."""

    _ALLOWED: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if RestrictedUnpickler._ALLOWED is None:
            RestrictedUnpickler._ALLOWED = _allowed_globals()
        obj = RestrictedUnpickler._ALLOWED.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: not on the "
                                         "allow-list of model-file classes")
        return obj


def safe_unpickle(stream: io.BufferedIOBase | io.BytesIO, src: str, *, what: str) -> Any:
    """Unpickle ``stream`` with :class:`RestrictedUnpickler` (Python 2 strings as latin1)."""
    try:
        return RestrictedUnpickler(stream, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise ModelFormatError(f"unsafe or unreadable pickle, expected the {what} file ({e})",
                               source=src) from e
    except Exception as e:  # EOFError, ValueError, struct.error...: truncated / corrupt streams
        # (no code from the file can have run: only allow-listed constructors are reachable)
        raise ModelFormatError(f"truncated or corrupt pickle, expected the {what} file "
                               f"({type(e).__name__}: {e})", source=src) from e


def safe_load_pickle(path: PathLike, *, what: str) -> Any:
    p = require_file(path)
    with open(p, "rb") as f:
        return safe_unpickle(f, str(p), what=what)


def safe_load_npy(path: PathLike, *, what: str) -> Any:
    """Read a ``.npy`` file; an object array (a pickled dict) goes through the safe unpickler.

    Returns the array, or for a 0-d object array its single element (``np.load(...)[()]``).
    """
    p = require_file(path)
    src = str(p)
    with open(p, "rb") as f:
        raw = f.read()
    if raw[:6] != b"\x93NUMPY" or len(raw) < 10:
        raise ModelFormatError(f"not a .npy file (bad magic), expected the {what} file",
                               source=src)
    major = raw[6]
    if major == 1:
        hlen, start = int.from_bytes(raw[8:10], "little"), 10
    elif major in (2, 3):
        hlen, start = int.from_bytes(raw[8:12], "little"), 12
    else:
        raise ModelFormatError(f"unknown .npy version {major}", source=src)
    try:
        header = ast.literal_eval(raw[start:start + hlen].decode("latin1"))
        descr, fortran, shape = header["descr"], header["fortran_order"], tuple(header["shape"])
    except Exception as e:
        raise ModelFormatError(f"corrupt .npy header ({e})", source=src) from e
    body = raw[start + hlen:]
    if descr == "|O":
        obj = safe_unpickle(io.BytesIO(body), src, what=what)
        if isinstance(obj, np.ndarray) and obj.shape == () and obj.dtype == object:
            return obj[()]
        return obj
    try:
        dt = np.dtype(descr)
        n = int(np.prod(shape, dtype=np.int64))
        arr = np.frombuffer(body, dtype=dt, count=n)
    except (TypeError, ValueError) as e:
        raise ModelFormatError(f"truncated or corrupt .npy data ({e})", source=src) from e
    return arr.reshape(shape, order="F" if fortran else "C")


# ------------------------------------------------------------------------------------------------
# eos landmark mappings and model contours
# ------------------------------------------------------------------------------------------------

EOS_MAPPINGS_DIR = "eos-landmark-mappings"


def eos_mapping_path(name: str, root: PathLike | None = None) -> Path:
    """Path of an eos mapping/contour file under ``$JAXFACE_DATA/eos-landmark-mappings``.

    ``name`` is a file name such as ``"ibug_to_bfm2009.txt"`` or ``"bfm2009_model_contours.json"``.
    Raises DataNotFoundError when the data folder or the file is missing.
    """
    p = data_dir(root) / EOS_MAPPINGS_DIR / name
    if not p.is_file():
        raise DataNotFoundError(f"{str(p)!r} not found (eos landmark mappings)")
    return p


@dataclass(frozen=True)
class EosMapping:
    """An eos landmark mapping file.

    Attributes:
      vertex_of: 1-based iBUG landmark number -> 0-based model vertex id.
      right_contour: 1-based iBUG numbers of the right contour landmarks (default 1..8).
      left_contour: the left ones (default 10..17).
    """

    vertex_of: dict[int, int]
    right_contour: tuple[int, ...]
    left_contour: tuple[int, ...]


def read_eos_mapping(path: PathLike) -> EosMapping:
    """Parse an eos ``ibug_to_*.txt`` TOML mapping (``[landmark_mappings] ibug = vertex``).

    eos's own mapping files use 1-based iBUG numbers on the left and 0-based vertex ids on the
    right (see the README of the staged folder).
    """
    p = require_file(path)
    src = str(p)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"not a TOML landmark mapping ({e})", source=src) from e
    table = doc.get("landmark_mappings")
    if not isinstance(table, dict) or not table:
        raise ModelFormatError("missing or empty [landmark_mappings] table", source=src,
                               field="landmark_mappings")
    vertex_of: dict[int, int] = {}
    for k, v in table.items():
        try:
            lm, vid = int(k), int(v)
        except (TypeError, ValueError) as e:
            raise ModelFormatError(f"entry {k!r} = {v!r} is not 'int = int'", source=src,
                                   field="landmark_mappings") from e
        if lm < 1 or vid < 0:
            raise ModelFormatError(f"entry {k} = {v}: landmark numbers start at 1 and vertex "
                                   "ids at 0", source=src, field="landmark_mappings")
        vertex_of[lm] = vid
    cont = doc.get("contour_landmarks", {})
    right = tuple(int(i) for i in cont.get("right", range(1, 9)))
    left = tuple(int(i) for i in cont.get("left", range(10, 18)))
    return EosMapping(dict(sorted(vertex_of.items())), right, left)


def read_eos_contours(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Parse an eos ``*_model_contours.json``: (right_contour, left_contour) 0-based vertex ids."""
    p = require_file(path)
    src = str(p)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        mc = doc["model_contour"]
        right = np.asarray(mc["right_contour"], np.int64).reshape(-1)
        left = np.asarray(mc["left_contour"], np.int64).reshape(-1)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ModelFormatError(f"not an eos model-contour JSON file ({type(e).__name__}: {e})",
                               source=src, field="model_contour") from e
    return right, left


IBUG68 = 68  # number of points of the iBUG-68 scheme


def eos_landmarks(n_vertices: int, mapping: PathLike, contours: PathLike | None = None
                  ) -> tuple[LandmarkSet, ContourSet | None, tuple[int, ...]]:
    """Build the full iBUG-68 landmark set of an eos mapping (and its contour set).

    The set always has 68 rows in iBUG order (row ``i`` is iBUG point ``i + 1``). Rows the
    mapping (plus, with ``contours``, the contour landmarks) defines are ``valid``; the others
    (e.g. BFM 2009's chin and inner mouth, the SFM's inner mouth corners 61/65) are marked
    ``valid = False`` and fitting ignores them. A contour landmark's row is only an initial
    guess: the candidate vertex at the same relative position along its side's contour; the
    fitter re-matches it among ``ContourSet.candidates`` (all vertices of that side), whose
    ``landmark_index`` rows index into this 68-row set.

    Mapping origin: eos's ``share/ibug_to_*.txt`` (1-based iBUG numbers -> 0-based vertex
    ids) and ``*_model_contours.json`` (Apache-2.0, see the staged folder's README).

    Returns:
      (68-row landmark set, contour set or None, the 1-based iBUG numbers of the valid rows).
    """
    m = read_eos_mapping(mapping)
    src = os.fspath(mapping)
    rows: dict[int, int] = dict(m.vertex_of)
    sides: list[tuple[tuple[int, ...], np.ndarray]] = []
    if contours is not None:
        right, left = read_eos_contours(contours)
        sides = [(m.right_contour, right), (m.left_contour, left)]
        for lms, cand in sides:
            if cand.size == 0:
                raise ModelFormatError("empty contour", source=os.fspath(contours),
                                       field="model_contour")
            for i, lm in enumerate(lms):
                if lm not in rows:
                    pos = 0 if len(lms) == 1 else round(i * (cand.size - 1) / (len(lms) - 1))
                    rows[lm] = int(cand[pos])
    outside = sorted(i for i in rows if not 1 <= i <= IBUG68)
    if outside:
        raise ModelFormatError(f"iBUG landmark number {outside[0]} outside 1..{IBUG68}: not an "
                               "iBUG-68 mapping", source=src, field="landmark_mappings")
    ids = tuple(sorted(rows))
    vids = np.asarray([rows[i] for i in ids], np.int64)
    bad = vids[(vids < 0) | (vids >= n_vertices)]
    if bad.size:
        raise ModelFormatError(f"vertex id {int(bad[0])} out of range for a model with "
                               f"{n_vertices} vertices: wrong mapping for this model",
                               source=src, field="landmark_mappings")
    full = np.zeros(IBUG68, np.int64)
    valid = np.zeros(IBUG68, bool)
    full[np.asarray(ids, np.int64) - 1] = vids
    valid[np.asarray(ids, np.int64) - 1] = True
    lms = LandmarkSet.from_vertex_ids(full, valid=None if valid.all() else valid)
    cset = None
    if sides:
        li, cands = [], []
        width = max(c.size for _, c in sides)
        for lm_ids, cand in sides:
            if cand.min() < 0 or cand.max() >= n_vertices:
                raise ModelFormatError(f"contour vertex ids out of range for {n_vertices} "
                                       "vertices: wrong contour file for this model",
                                       source=os.fspath(contours), field="model_contour")
            padded = np.full(width, -1, np.int64)
            padded[:cand.size] = cand
            for lm in lm_ids:
                li.append(lm - 1)
                cands.append(padded)
        cset = ContourSet(np.asarray(li, np.int32), np.asarray(cands, np.int32))
    return lms, cset, ids


def call_checked(fn: Callable[..., Any], src: str, field: str, *args: Any) -> Any:
    """Run ``fn(*args)`` turning ValueError/IndexError into ModelFormatError."""
    try:
        return fn(*args)
    except (ValueError, IndexError) as e:
        raise ModelFormatError(str(e), source=src, field=field) from e
